"""What the amortized models share: one latent per data point, an encoder as the guide, a
train/held-out split, and the data a model reads held as one value.

Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR, section 2.3 (the encoder
q_phi(z | x) shared by every data point, trained on mini-batches of the data plate); Burda,
Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR, section 5 (the
held-out importance-weighted bound); Lopez et al. (2018), Nature Methods 15, 1053-1058, and
scvi-tools' ``get_marginal_ll(adata=...)`` (the same trained model scoring other cells).

A model reads its data from one value, :attr:`AmortizedModel.data` (the training split once
set up), and keeps its held-out split as another, :attr:`AmortizedModel.held_out`; a data value
is anything with ``len()``, the number of data points (rows of images, cells). The networks
read a point's inputs through the model (``encoder_input``), so :meth:`AmortizedModel.with_data`
gives the same model, with the same networks and the same Pyro parameters (they live in the
param store), reading other data: every held-out metric and figure is the model's own method
run on ``model.with_data(model.held_out)`` (:meth:`AmortizedModel.on_test_split`).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from zoo.diagnostics import Diagnostics, evaluate
from zoo.errors import DataError
from zoo.model import DataPlate, ZooModel

if TYPE_CHECKING:  # pragma: no cover
    from guides.amortized import AmortizedGuide


def split_indices(
    num: int, labels: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of ``num`` rows, stratified by label where that is possible."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(num)
    stratify = None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        n_test = math.ceil(test_fraction * num)
        if counts.min() >= 2 and n_test >= len(counts) and num - n_test >= len(counts):
            stratify = labels
    train, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(train), np.sort(test)


class AmortizedModel(ZooModel):
    """A model with one latent z_n per data point in the data plate and an amortized guide,
    bound to a data value (see the module's docstring).

    Subclasses set ``latent_dim`` and bind their training split with :meth:`bind` in
    ``setup`` (and ``held_out``), and provide ``model``, ``build_networks`` and
    ``encoder_input``; :meth:`data_bound` drops what they cache of the data.
    """

    data_plate: ClassVar[DataPlate] = DataPlate("data")
    max_plate_nesting: ClassVar[int] = 1
    dtype: torch.dtype = torch.float32

    latent_dim: int
    #: the data the model reads: the training split after ``setup``
    data: Any
    #: the held-out split, the same kind of value (None: nothing held out)
    held_out: Any = None
    decoder: Any = None

    # -- the data as a value --------------------------------------------------------------------
    def bind(self, data: Any) -> None:
        """Read ``data`` from now on: the data plate has ``len(data)`` points."""
        self.data = data
        self.num_data = len(data)
        self.data_bound()

    def data_bound(self) -> None:
        """Called after :meth:`bind`: drop whatever is cached of the data bound before."""

    def with_data(self, data: Any) -> Self:
        """The same model, with the same networks and the same Pyro parameters (they live in
        the param store), reading ``data`` (a value of the kind of :attr:`data`)."""
        other = copy.copy(self)
        other.bind(data)
        return other

    def on_test_split(self) -> Self:
        """The same model on its held-out split: ``self.with_data(self.held_out)``."""
        if self.held_out is None:
            raise DataError(
                f"model {self.name!r} has no held-out data: it was built with test_fraction=0"
            )
        return self.with_data(self.held_out)

    # -- the data plate ---------------------------------------------------------------------------
    def plate(self, subsample_size: int | None = None) -> pyro.plate:
        return self.create_plates(subsample_size)

    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor:
        """What the encoder reads of the points ``idx`` (every bound point for None)."""
        raise NotImplementedError

    # -- the networks -----------------------------------------------------------------------------
    def build_networks(self) -> None:
        """Fresh networks (from torch's RNG: the runner seeds it first)."""
        raise NotImplementedError

    def ensure_networks(self) -> None:
        if self.decoder is None:
            self.build_networks()

    def prior(self) -> dist.TorchDistribution:
        """p(z) = N(0, I_q)."""
        zeros = torch.zeros(self.latent_dim, dtype=self.dtype, device=self.device)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    # -- held-out evaluation ----------------------------------------------------------------------
    def on_held_out(self, guide: AmortizedGuide) -> tuple[Self, AmortizedGuide]:
        """The model and its encoder's guide on the held-out split (same networks)."""
        test = self.on_test_split()
        return test, guide.bind(test)

    @torch.no_grad()
    def evaluate_held_out(self, guide: AmortizedGuide, num_particles: int) -> Diagnostics:
        """The trained networks on the held-out split: ELBO and IWAE_K (K = ``num_particles``
        per point) with their standard errors, from :func:`zoo.diagnostics.evaluate`."""
        test = self.on_test_split()
        return evaluate(test, guide.bind(test), num_particles=num_particles, with_khat=False)
