"""What the two VAEs share: their data (digits or the user's array, split once), the encoder's
view of it, the held-out report and the figures.

Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR, section 3 (the VAE);
Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR, section 5 (the
test-set IWAE_K and the active units). The held-out numbers and figures are the model's own
methods on ``self.on_test_split()``, the model bound to its test split
(:meth:`zoo.models.amortized.AmortizedModel.with_data`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoo.data import FLOAT32_LIMIT, FLOAT64_LIMIT
from zoo.errors import DataError
from zoo.model import DataPlate
from zoo.models.amortized import (
    AmortizedModel,
    CollapseReport,
    collapse_report,
    plot_kl_per_dim,
    plot_training,
    split_indices,
)
from zoo.models.vae.data import Points, check_array, load_digits_data, read_array_file
from zoo.models.vae.figures import plot_latent_map, plot_prior_samples, plot_reconstructions

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from guides.amortized import AmortizedGuide
    from zoo.run_view import RunView


class ArrayVAE(AmortizedModel):
    """Data, split, data plate and the reporting of a VAE on rows of an array, one latent z_n
    per row. Subclasses provide ``model``, ``build_networks`` and ``decode_mean``."""

    #: (particle, data point) pairs per chunk of the diagnostics: a pair costs a decoder pass
    #: (hidden activations of 256 floats), not a few numbers as in the default budget
    data_plate = DataPlate("data", chunk_budget=250_000)
    data_help = (
        ".npy/.npz/.csv array file, one data point per row ((N, H, W) images are flattened); "
        "a CSV column named label is used to colour the latent map"
    )

    data: Points
    held_out: Points
    test_particles: int

    # -- data -----------------------------------------------------------------------------------
    def _load(self, data: Any, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw values of every data point and their labels (None without)."""
        if data is None:
            values, labels = load_digits_data()
            self.image_shape: tuple[int, int] = (8, 8)
            self.source = "digits"
            return values, labels
        max_abs = FLOAT32_LIMIT if self.dtype == torch.float32 else FLOAT64_LIMIT
        if isinstance(data, str | Path):
            values, labels, shape = read_array_file(data, max_abs)
            self.source = str(data)
        else:
            values, shape = check_array(np.asarray(data), "the data array", max_abs)
            labels, self.source = None, "array"
        d = values.shape[1]
        side = math.isqrt(d)
        self.image_shape = shape if shape is not None else (side, side) if side**2 == d else (1, d)
        return values, labels

    def _split(
        self, values: np.ndarray, labels: np.ndarray | None, opts: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray | None, np.ndarray | None]]:
        """(training rows, test rows, (their labels)) of a seeded, stratified split."""
        train, test = split_indices(len(values), labels, opts["test_fraction"], opts["split_seed"])
        if len(train) < 2 or len(test) < 2:
            raise DataError(
                f"{len(values)} data points leave {len(train)} for training and {len(test)} "
                "for testing; at least 2 each are needed"
            )
        self.train_index, self.test_index = train, test
        split_labels = (None, None) if labels is None else (labels[train], labels[test])
        return values[train], values[test], split_labels

    def _set_data(
        self,
        train: np.ndarray,
        test: np.ndarray,
        labels: tuple[np.ndarray | None, np.ndarray | None],
    ) -> None:
        """Bind the training split and keep the test split as :attr:`held_out`."""
        self.held_out = Points(self.tensor(test, self.dtype), labels[1])
        self.bind(Points(self.tensor(train, self.dtype), labels[0]))
        self.data_dim = self.x.shape[1]

    @property
    def x(self) -> torch.Tensor:
        """The bound data points, one per row."""
        return self.data.x

    @property
    def labels(self) -> np.ndarray | None:
        return self.data.labels

    @property
    def x_test(self) -> torch.Tensor:
        """The held-out data points."""
        return self.held_out.x

    @property
    def labels_test(self) -> np.ndarray | None:
        return self.held_out.labels

    # -- the encoder's and the likelihood's view of the data --------------------------------------
    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.x if idx is None else self.x[idx]

    def observed(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.x if idx is None else self.x[idx]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] at the param store's current values (for pictures)."""
        raise NotImplementedError

    # -- reporting --------------------------------------------------------------------------------
    @torch.no_grad()
    def posterior_means(self, guide: AmortizedGuide, x: torch.Tensor) -> torch.Tensor:
        q = guide.posterior(x)
        if isinstance(q, torch.distributions.Independent | torch.distributions.MultivariateNormal):
            return q.mean
        return q.sample((256,)).mean(0)

    @torch.no_grad()
    def collapse(self, guide: AmortizedGuide) -> CollapseReport:
        """Posterior-collapse diagnostics of q(z | x) over the bound data points."""
        return collapse_report(guide.posterior(self.x))

    @torch.no_grad()
    def test_diagnostics(self, guide: AmortizedGuide, num_particles: int) -> dict[str, Any]:
        """ELBO, IWAE (per point, K = ``num_particles``) and their standard errors on the test
        split, with the same trained networks."""
        d = self.evaluate_held_out(guide, num_particles)
        n = d.num_data
        out = {
            "num_data": n,
            "num_particles": d.num_particles,
            "elbo": d.elbo,
            "elbo_se": d.elbo_se,
            "iwae": d.iwae,
            "iwae_se": d.iwae_se,
            "iwae_minus_elbo": d.iwae - d.elbo,
            "expected_log_likelihood": d.expected_log_likelihood,
            "kl": d.kl,
            "log_evidence": d.log_evidence,
            "per_point": {
                "elbo": d.elbo / n,
                "elbo_se": d.elbo_se / n,
                "iwae": d.iwae / n,
                "iwae_se": d.iwae_se / n,
                "iwae_minus_elbo": (d.iwae - d.elbo) / n,
                "expected_log_likelihood": d.expected_log_likelihood / n,
                "kl": d.kl / n,
            },
        }
        if d.log_evidence is not None:
            out["per_point"]["log_evidence"] = d.log_evidence / n
            out["gap"] = d.log_evidence - d.elbo
            out["per_point"]["gap"] = out["gap"] / n
        return out

    def _collapse_summary(self, guide: AmortizedGuide) -> dict[str, Any]:
        train = self.collapse(guide)
        test = self.on_test_split().collapse(guide)
        return {
            "kl_per_dim": train.kl_per_dim,
            "kl_method": train.kl_method,
            "activity": train.activity,
            "active_units": train.active_units,
            "active_units_test": test.active_units,
            "activity_threshold": train.threshold,
            "latent_dim": train.latent_dim,
        }

    @torch.no_grad()
    def prior_sample_means(self, count: int = 64, seed: int = 0) -> np.ndarray:
        """Decoder means E[x | z] at ``count`` seeded draws z ~ N(0, I)."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(count, self.latent_dim, generator=gen, dtype=self.dtype).to(self.device)
        return self.decode_mean(z).cpu().numpy()

    def plots(self, run: RunView) -> dict[str, Figure]:
        guide: AmortizedGuide = run.guide
        guide.sync()
        self.ensure_networks()
        test = self.on_test_split()
        shown = test.x[:12]
        recon = test.decode_mean(test.posterior_means(guide, shown))
        means = self.posterior_means(guide, self.x).double().cpu().numpy()
        figures = {
            "reconstructions": plot_reconstructions(
                shown.cpu().numpy(), recon.cpu().numpy(), self.image_shape, self.title
            ),
            "prior_samples": plot_prior_samples(
                self.prior_sample_means(64), self.image_shape, self.title
            ),
            "latent_map": plot_latent_map(means, self.labels, self.title),
            "kl_per_dim": plot_kl_per_dim(self.collapse(guide), self.title),
        }
        if "kl_weight" in run.history:
            figures["training"] = plot_training(run.history, self.title)
        return figures
