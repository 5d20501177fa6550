"""A model's data plate: the plate over data points, and how passes over it are sized.

A model whose data points each carry latents of their own (local latents) declares one
:class:`DataPlate` as :attr:`ZooModel.data_plate <zoo.model.ZooModel.data_plate>`; a model
whose latents are all global declares None. The plate's name is what the model passes to
``pyro.plate``; its two sizes say how the runner and the diagnostics walk over all the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["DataPlate"]

_UNSET: Any = object()


def _check_size(field: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DataPlate {field} must be None or an int >= 1, not {value!r}")


@dataclass(frozen=True)
class DataPlate:
    """The plate over a model's data points (the model's local latents live in it).

    :param name: the plate's name in the model (``pyro.plate(data_plate.name, num_data, ...)``):
        mini-batches subsample it (``--batch-size``), autoguides receive it through
        :meth:`ZooModel.create_plates <zoo.model.ZooModel.create_plates>`, and the diagnostics
        read the per-point importance weights along it.
    :param block_size: data points per block when the runner and the diagnostics pass over all
        the data (the initial trace, history records, final diagnostics): memory then does not
        grow with the data (:mod:`zoo.data_blocks`). None: all the data at once. Only for models
        whose latents all live in the data plate.
    :param chunk_budget: (particle, data point) pairs per chunk of the diagnostics; None for the
        diagnostics' default. Lower it where one pair costs a network pass (an amortized
        decoder) rather than a few numbers.
    :param dim: the plate's batch dim (-1 unless a model nests a plate inside it, as LDA's
        words inside its documents).
    """

    name: str
    block_size: int | None = None
    chunk_budget: int | None = None
    dim: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataPlate name must be a non-empty string, not {self.name!r}")
        _check_size("block_size", self.block_size)
        _check_size("chunk_budget", self.chunk_budget)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim > -1:
            raise ValueError(f"DataPlate dim must be a negative int, not {self.dim!r}")

    def plate(self, size: int, subsample_size: int | None = None) -> Any:
        """``pyro.plate(name, size, subsample_size=..., dim=dim)``: the plate the model and
        its autoguides both use (:meth:`ZooModel.create_plates
        <zoo.model.ZooModel.create_plates>`)."""
        import pyro  # torch-free to import: the registry's catalogue reads declarations

        return pyro.plate(self.name, size, subsample_size=subsample_size, dim=self.dim)

    def with_sizes(self, *, block_size: Any = _UNSET, chunk_budget: Any = _UNSET) -> DataPlate:
        """A copy with ``block_size`` and/or ``chunk_budget`` replaced (the plate's name kept),
        for models that size their passes per instance (from their data or options); a size
        left out keeps its value, None clears it."""
        changes: dict[str, int | None] = {}
        if block_size is not _UNSET:
            changes["block_size"] = block_size
        if chunk_budget is not _UNSET:
            changes["chunk_budget"] = chunk_budget
        return dataclasses.replace(self, **changes)
