"""The data plate as one object (:mod:`zoo.data_plate`): its checks, its per-instance copies,
and the contract's refusal of anything else."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch

from zoo.contract import ContractError, build, check_declaration
from zoo.data_blocks import data_blocks
from zoo.data_plate import DataPlate
from zoo.model import DataPlate as ExportedDataPlate
from zoo.model import ZooModel
from zoo.registry import get_model, model_names


# -- the object -------------------------------------------------------------------------------
def test_defaults_and_fields():
    plate = DataPlate("cells")
    assert (plate.name, plate.block_size, plate.chunk_budget) == ("cells", None, None)
    plate = DataPlate("cells", block_size=4096, chunk_budget=100_000)
    assert (plate.block_size, plate.chunk_budget) == (4096, 100_000)
    assert ExportedDataPlate is DataPlate


def test_frozen_and_compared_by_value():
    plate = DataPlate("data", block_size=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plate.block_size = 128  # type: ignore[misc]
    assert plate == DataPlate("data", block_size=64)
    assert hash(plate) == hash(DataPlate("data", block_size=64))
    assert plate != DataPlate("data")


@pytest.mark.parametrize("name", ["", None, 3, b"data"])
def test_the_name_is_a_non_empty_string(name):
    with pytest.raises(ValueError, match="DataPlate name must be a non-empty string"):
        DataPlate(name)


@pytest.mark.parametrize("field", ["block_size", "chunk_budget"])
@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, "64", True])
def test_sizes_are_none_or_positive_ints(field, value):
    with pytest.raises(ValueError, match=f"DataPlate {field} must be None or an int >= 1"):
        DataPlate("data", **{field: value})


@pytest.mark.parametrize("field", ["block_size", "chunk_budget"])
def test_sizes_of_one_are_allowed(field):
    assert getattr(DataPlate("data", **{field: 1}), field) == 1


def test_with_sizes_returns_a_copy():
    plate = DataPlate("data", block_size=8192, chunk_budget=1000)
    smaller = plate.with_sizes(block_size=128)
    assert smaller == DataPlate("data", block_size=128, chunk_budget=1000)
    assert plate == DataPlate("data", block_size=8192, chunk_budget=1000)  # unchanged
    assert plate.with_sizes(chunk_budget=50) == DataPlate("data", block_size=8192, chunk_budget=50)
    assert plate.with_sizes(block_size=None, chunk_budget=None) == DataPlate("data")
    assert plate.with_sizes() == plate
    with pytest.raises(ValueError, match="block_size must be None or an int >= 1"):
        plate.with_sizes(block_size=0)
    with pytest.raises(TypeError):
        plate.with_sizes(128)  # type: ignore[misc]


# -- the registered models ----------------------------------------------------------------------
@pytest.mark.parametrize("name", model_names())
def test_every_model_declares_a_data_plate_or_none(name):
    plate = get_model(name).data_plate
    assert plate is None or isinstance(plate, DataPlate), f"{name}: {plate!r}"


@pytest.mark.parametrize("name", ["gmm", "lda", "diffusion"])
def test_sizes_set_per_instance_leave_the_class_alone(name):
    cls = get_model(name)
    declared = cls.data_plate
    model = build(name)
    assert isinstance(model.data_plate, DataPlate)
    assert model.data_plate.name == declared.name
    assert model.data_plate.chunk_budget is not None
    assert cls.data_plate is declared and vars(model)["data_plate"] is model.data_plate


# -- the contract -----------------------------------------------------------------------------
class _LocalMeans(ZooModel):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1): one latent per point in the plate ``data``."""

    name = "planted-local-means"
    title = "planted"
    application = "Mean-field variational Bayes"
    reference = "none"
    data_plate = DataPlate("data", block_size=4)

    def setup(self, data, **options):
        self.x = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
        self.num_data = 10

    def create_plates(self, subsample_size=None):
        return pyro.plate(self.data_plate.name, self.num_data, subsample_size=subsample_size)

    def model(self, subsample_size=None):
        with self.create_plates(subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=torch.float64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=self.x[idx])


def test_a_data_plate_object_is_accepted():
    check_declaration(_LocalMeans)
    model = build(_LocalMeans)
    assert [len(b) for b in data_blocks(model)] == [4, 4, 2]


def test_a_bare_string_is_refused_by_the_contract():
    bad = type("Bad", (_LocalMeans,), {"data_plate": "data"})
    with pytest.raises(
        ContractError,
        match=r"data_plate is 'data', not a zoo\.data_plate\.DataPlate or None: "
        r"declare data_plate = DataPlate\('data'\)",
    ):
        check_declaration(bad)
    bad = type("Bad", (_LocalMeans,), {"data_plate": 3})
    with pytest.raises(ContractError, match=r"data_plate is 3, not a zoo\.data_plate\.DataPlate"):
        check_declaration(bad)


def test_a_bare_string_set_in_setup_is_refused():
    class Sized(_LocalMeans):
        def setup(self, data, **options):
            super().setup(data, **options)
            self.data_plate = "data"

    check_declaration(Sized)
    with pytest.raises(ContractError, match="model 'planted-local-means': data_plate is 'data'"):
        build(Sized)
