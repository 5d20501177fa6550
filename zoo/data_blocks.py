"""A model's data plate, a block of points at a time: memory that does not grow with the data.

When every latent of a model lives in its data plate (one z per data point, as in an amortized
autoencoder), the points are independent given the parameters: the log densities of a point
depend on that point alone, and any total over the data (the ELBO of each particle, the per-point
importance weights) is the sum of its totals over blocks of points. A model opts in by giving
its :class:`~zoo.data_plate.DataPlate` a ``block_size``; the runner and the diagnostics then
trace it on one block of consecutive points at a time, so a data set read from disk (a backed
``.h5ad``) is never held in memory at once.

A block is given to the model through Pyro's own subsampling: the data plate's subsample site
receives the block's indices (as a mini-batch would receive random ones) and the plate's
``size / subsample_size`` scaling is undone, so each block's log densities are the unscaled
terms of the full-data total.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

if TYPE_CHECKING:  # pragma: no cover
    from zoo.model import ZooModel

__all__ = ["data_blocks", "index_blocks", "on_block"]


class _PlateIndices(Messenger):
    """Hand the plate called ``plate`` the subsample ``indices`` instead of drawing them."""

    def __init__(self, plate: str, indices: torch.Tensor) -> None:
        super().__init__()
        self.plate = plate
        self.indices = indices

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] == self.plate and site_is_subsample(msg):
            msg["value"] = self.indices


def index_blocks(n: int, size: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """``0 .. n - 1`` as consecutive blocks of at most ``size`` indices."""
    return [torch.arange(start, min(start + size, n), device=device) for start in range(0, n, size)]


def data_blocks(zoo_model: ZooModel) -> list[torch.Tensor | None]:
    """Index blocks covering the data plate, in order; ``[None]`` (all the data at once) for a
    model whose data plate sets no ``block_size`` or whose data fit in one block."""
    plate = zoo_model.data_plate
    size = None if plate is None else plate.block_size
    n = zoo_model.num_data
    if size is None or n <= size:
        return [None]
    return index_blocks(n, size, zoo_model.device)


def on_block(
    fn: Callable[..., Any], zoo_model: ZooModel, indices: torch.Tensor | None
) -> Callable[[], Any]:
    """``fn`` (the model or a guide, called as ``fn(subsample_size=...)``) restricted to the data
    points ``indices``, with unscaled log densities; all the data for None."""
    if zoo_model.data_plate is None:
        return fn
    if indices is None:
        return lambda: fn(subsample_size=None)
    size = len(indices)

    def block() -> Any:
        # the plate scales log densities by num_data / size; this undoes it
        with (
            _PlateIndices(zoo_model.data_plate.name, indices),
            poutine.scale(scale=size / zoo_model.num_data),
        ):
            return fn(subsample_size=size)

    return block
