"""``vae``: the variational autoencoder with MLP encoder and decoder, on binarised or
dequantised digits.

Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR, sections 2-3 and appendix
C.2 (the Gaussian encoder, the analytic KL of estimator B); Rezende, Mohamed & Wierstra (2014),
ICML; Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR (IWAE_K on
the test split); Kingma et al. (2016), "Improved variational inference with inverse
autoregressive flow", NeurIPS (the ``iaf`` guide); Theis, van den Oord & Bethge (2016), "A note
on the evaluation of generative models", ICLR (uniform dequantisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from guides.amortized import AmortizedGuide, GaussianEncoder, IAFEncoder, MLPDecoder
from zoo.errors import DataError
from zoo.model import Guide, Option, Training, positive_int, seed_value
from zoo.models.vae.base import ArrayVAE
from zoo.models.vae.data import strict_fraction
from zoo.registry import register

#: the smallest standard deviation of a pixel under the Gaussian likelihood
MIN_PIXEL_SCALE = 1e-3


@register
class VariationalAutoencoder(ArrayVAE):
    """p(x | z) an MLP decoder (Bernoulli logits or Gaussian means with one learned standard
    deviation per pixel), q(z | x) a Gaussian MLP encoder or IAF layers on top of one (Kingma &
    Welling 2014, section 3 and appendix C; Kingma et al. 2016, section 4)."""

    name = "vae"
    title = "Variational autoencoder"
    application = "Variational autoencoders"
    smoke_options = {"hidden": 32, "test_particles": 30}
    reference = (
        "Kingma & Welling (2014); Rezende et al. (2014); Burda et al. (2016); Kingma et al. (2016)"
    )
    options = (
        Option("latent_dim", positive_int, 8, "size q of the latent z"),
        Option("hidden", positive_int, 256, "width of the encoder's and decoder's hidden layers"),
        Option("depth", positive_int, 1, "hidden layers in the encoder and in the decoder"),
        Option(
            "likelihood",
            str,
            "bernoulli",
            "bernoulli (binarised pixels) or gaussian (dequantised intensities, learned sd)",
            choices=("bernoulli", "gaussian"),
        ),
        Option("flows", positive_int, 4, "IAF layers of the iaf guide"),
        Option(
            "test_fraction", strict_fraction, 0.2, "fraction of the data held out as the test set"
        ),
        Option(
            "split_seed", seed_value, 0, "seed of the train/test split (and the dequantisation)"
        ),
        Option("test_particles", positive_int, 1000, "K of the test-set IWAE in the summary"),
    )
    guides = {"mean-field": Guide(elbo="meanfield"), "iaf": Guide()}
    default_guide = "mean-field"
    training = Training(
        steps=6000,
        lr=2e-3,
        quick_steps=600,
        lr_final_factor=0.1,
        particles=1,
        batch_size=128,
        kl_warmup_fraction=1 / 6,
    )
    # a history record scores 16 particles of every training image: keep them few
    leaderboard = ({"record_every": 30}, {"guide": "iaf", "record_every": 30})
    dtype = torch.float32

    def setup(self, data: Any, **opts: Any) -> None:
        values, labels = self._load(data, opts)
        train, test, split_labels = self._split(values, labels, opts)
        self.likelihood_name = opts["likelihood"]
        if self.likelihood_name == "bernoulli":
            if self.source == "digits":
                train, test = (train / 16.0 > 0.5) * 1.0, (test / 16.0 > 0.5) * 1.0
            else:
                lo, hi = min(train.min(), test.min()), max(train.max(), test.max())
                if lo < 0.0 or hi > 1.0:
                    raise DataError(
                        f"the bernoulli likelihood needs values in [0, 1] (binarised at 0.5); "
                        f"the data range from {lo:g} to {hi:g}"
                    )
                train, test = (train > 0.5) * 1.0, (test > 0.5) * 1.0
        elif self.source == "digits":  # uniform dequantisation of the 17 intensity levels
            rng = np.random.default_rng(opts["split_seed"])
            train = (train + rng.uniform(size=train.shape)) / 17.0
            test = (test + rng.uniform(size=test.shape)) / 17.0
        self._set_data(train, test, split_labels)
        self.latent_dim = opts["latent_dim"]
        self.hidden = [opts["hidden"]] * opts["depth"]
        self.num_flows = opts["flows"]
        self.test_particles = opts["test_particles"]
        self.encoder = self.decoder = None

    # -- networks, model, guides -----------------------------------------------------------------
    def build_networks(self) -> None:
        """Fresh encoder and decoder (from torch's RNG: the runner seeds it first)."""
        head = "logits" if self.likelihood_name == "bernoulli" else "loc"
        self.encoder = GaussianEncoder(
            self.data_dim, self.latent_dim, self.hidden, dtype=self.dtype
        ).to(self.device)
        self.decoder = MLPDecoder(
            self.latent_dim, {head: self.data_dim}, self.hidden, dtype=self.dtype
        ).to(self.device)

    def pixel_scale(self) -> torch.Tensor:
        init = torch.full((self.data_dim,), 0.2, dtype=self.dtype, device=self.device)
        positive = constraints.greater_than(MIN_PIXEL_SCALE)
        return pyro.param("pixel_scale", lambda: init.clone(), constraint=positive)

    def likelihood(self, out: dict[str, torch.Tensor], scale: torch.Tensor | None):
        if self.likelihood_name == "bernoulli":
            return dist.Bernoulli(logits=out["logits"], validate_args=False).to_event(1)
        return dist.Normal(out["loc"], scale, validate_args=False).to_event(1)

    def model(self, subsample_size: int | None = None) -> None:
        self.ensure_networks()
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        scale = self.pixel_scale() if self.likelihood_name == "gaussian" else None
        with self.plate(subsample_size) as idx:
            z = pyro.sample("z", self.prior())
            x = self.observed(None if subsample_size is None else idx)
            pyro.sample("x", self.likelihood(decoder(z), scale), obs=x)

    def build_guide(self, name: str) -> AmortizedGuide:
        if name not in self.guides:
            return super().build_guide(name)  # raises the usual error
        self.build_networks()
        encoder = self.encoder
        if name == "iaf":
            encoder = IAFEncoder(self.encoder, num_flows=self.num_flows).to(self.device)
        return AmortizedGuide(self, encoder)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        out = decoder(z.to(self.dtype))
        if self.likelihood_name == "bernoulli":
            return torch.sigmoid(out["logits"])
        return out["loc"]

    # -- reporting ---------------------------------------------------------------------------------
    def summary(self, guide: AmortizedGuide, guide_name: str) -> dict[str, Any]:
        return {
            "likelihood": self.likelihood_name,
            "num_train": self.num_data,
            "num_test": int(self.x_test.shape[0]),
            "test": self.test_diagnostics(guide, self.test_particles),
            "collapse": self._collapse_summary(guide),
        }
