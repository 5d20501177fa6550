"""scVI with AnnData in and out, gene selection and the estimate of a run's work.

- ``zoo.fit("scvi", data=...)`` takes an ``AnnData`` (the ``counts`` layer, else ``X``; the
  labels from ``obs``) and a scipy sparse matrix, kept sparse, with the count checks and the
  one-line errors of the file readers; the numbers equal those of the same counts read from a
  file;
- a run writes ``latent.h5ad`` beside ``latent_means.csv``: the same means in
  ``obsm["X_scvi"]``, cells as ``obs_names``, genes as ``var_names``; without anndata the run
  writes no ``.h5ad``, the h5py reader reads ``.h5ad`` files and asking for an AnnData is a
  one-line error naming the pip command;
- ``n_top_genes`` keeps the genes scanpy 1.11.5's ``highly_variable_genes(flavor="seurat")``
  keeps (its answer on the bundled PBMC counts is written below, with the command that made
  it), computed in blocks (a backed file is never read whole) on the training cells only;
- the estimate of the work: one line, from the first timed steps.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import zoo
import zoo.models.scvi.counts as counts_module
import zoo.models.scvi.model as scvi_model
import zoo.models.scvi.work as scvi_work
from zoo.errors import DataError, ZooError
from zoo.models.scvi import (
    InMemoryCounts,
    SingleCellVI,
    highly_variable_genes,
    import_anndata,
    load_pbmc68k_reduced,
    pbmc68k_reduced_path,
    read_h5ad,
    write_h5ad,
)

anndata = pytest.importorskip("anndata")

#: tiny networks and few particles: these tests check plumbing and equalities, not fits
OPTIONS = {"latent_dim": 2, "hidden": 8, "test_particles": 30}
RUN = {"steps": 6, "eval_particles": 30, "trace_particles": 4, "seed": 0}
SMALL = {**OPTIONS, **RUN}

#: scanpy 1.11.5's highly variable genes of the bundled PBMC counts (700 cells x 765 genes,
#: ``load_pbmc68k_reduced()``), made by
#: ``a = AnnData(counts); sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a);
#: sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=50)``: the kept genes' indices,
#: and ``dispersions_norm`` of the first five genes, ``means`` and ``dispersions`` of the first
#: three (rounded to 6 decimals)
SCANPY_PBMC_TOP50 = [
    *(12, 13, 16, 52, 53, 65, 75, 83, 102, 104, 165, 167, 171, 175, 176, 178, 187, 189, 192),
    *(193, 206, 227, 274, 340, 348, 369, 373, 390, 426, 435, 476, 519, 520, 538, 573, 577),
    *(592, 611, 619, 623, 629, 642, 658, 671, 707, 709, 736, 737, 743, 762),
]
SCANPY_PBMC_NORM = [0.798639, -0.036599, -0.527644, -0.644041, -0.028448]
SCANPY_PBMC_MEANS = [1.557355, 0.63601, 2.37061]
SCANPY_PBMC_DISPERSIONS = [3.440395, 3.261463, 3.002496]


def _counts(n: int = 60, g: int = 30, seed: int = 0) -> np.ndarray:
    """Over-dispersed counts with genes of varied means, no empty cell."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 2.0, size=(1, g)) * rng.lognormal(0.0, 0.5, size=(n, 1))
    m = rng.poisson(rate).astype(np.float32)
    m[:, 0] += 1
    return m


def _adata(m: np.ndarray, *, layer: bool = False, sparse: bool = True):
    labels = np.array(["T", "B", "NK"], dtype=object)[np.arange(len(m)) % 3]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels)},
        index=pd.Index([f"c{i}" for i in range(len(m))], dtype=object),
    )
    var = pd.DataFrame(index=pd.Index([f"g{j}" for j in range(m.shape[1])], dtype=object))
    x = sp.csr_matrix(m) if sparse else m
    if not layer:
        return anndata.AnnData(X=x, obs=obs, var=var)
    a = anndata.AnnData(X=np.log1p(m), obs=obs, var=var)  # X log-normalised: not counts
    a.layers["counts"] = x
    return a


@pytest.fixture(scope="module")
def pbmc():
    try:
        pbmc68k_reduced_path()
    except DataError as exc:
        pytest.skip(str(exc))
    return load_pbmc68k_reduced()


# --------------------------------------------------------------------------------------------
# AnnData and sparse matrices in
# --------------------------------------------------------------------------------------------
def test_anndata_in_equals_the_same_counts_from_a_file(tmp_path):
    m = _counts()
    labels = np.array(["T", "B", "NK"], dtype=object)[np.arange(len(m)) % 3]
    path = write_h5ad(
        tmp_path / "c.h5ad",
        m,
        cell_names=[f"c{i}" for i in range(len(m))],
        gene_names=[f"g{j}" for j in range(m.shape[1])],
        obs={"cell_type": labels},
    )
    from_file = zoo.fit("scvi", str(path), **SMALL)
    from_layer = zoo.fit("scvi", _adata(m, layer=True), **SMALL)  # layers["counts"], not X
    from_x = zoo.fit(SingleCellVI(_adata(m, sparse=False), **OPTIONS), **RUN)
    for result in (from_layer, from_x):
        model = result.model
        assert model.dataset.label_key == "cell_type"
        np.testing.assert_array_equal(model.dataset.labels, labels)
        np.testing.assert_array_equal(model.gene_names, [f"g{j}" for j in range(m.shape[1])])
        np.testing.assert_array_equal(model.source.to_csr().toarray(), m[model.train_index])
        assert result.diagnostics.elbo == from_file.diagnostics.elbo
        assert (
            result.summary["test"]["marginal_log_likelihood"]
            == (from_file.summary["test"]["marginal_log_likelihood"])
        )
    assert from_layer.model.dataset.description == "AnnData [layers/counts]"
    assert from_x.model.dataset.description == "AnnData [X]"


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_matrix_in_stays_sparse_and_equals_dense(fmt):
    m = _counts()
    matrix = sp.csr_matrix(m).asformat(fmt)
    model = SingleCellVI(matrix, test_fraction=0.0, latent_dim=2, hidden=8)
    held = model.dataset.source
    assert isinstance(held, InMemoryCounts) and held.matrix.nnz == np.count_nonzero(m)
    np.testing.assert_array_equal(held.to_csr().toarray(), m)
    dense = zoo.fit("scvi", m, **SMALL)
    sparse = zoo.fit("scvi", matrix, **SMALL)
    assert sparse.diagnostics.elbo == dense.diagnostics.elbo


def test_backed_anndata_reads_its_file(tmp_path):
    m = _counts()
    path = write_h5ad(tmp_path / "c.h5ad", m, obs={"cell_type": ["a", "b"] * 30})
    backed = anndata.read_h5ad(path, backed="r")
    model = SingleCellVI(backed, test_fraction=0.0)
    assert model.dataset.source.backed and model.dataset.label_key == "cell_type"
    np.testing.assert_array_equal(model.source.rows(np.arange(60)), m)
    backed.file.close()


def test_anndata_count_checks_are_one_line():
    m = _counts()
    cases = [
        (m + 0.5, "not integers"),
        (m - 3, "negative"),
        (np.where(np.arange(m.size).reshape(m.shape) == 7, np.nan, m), "NaN"),
    ]
    for values, fragment in cases:
        with pytest.raises(DataError, match=fragment) as exc:
            SingleCellVI(_adata(values.astype(np.float64), sparse=False))
        assert "\n" not in str(exc.value) and "AnnData" in str(exc.value)
    empty = m.copy()
    empty[4] = 0
    with pytest.raises(DataError, match=r"1 cell\(s\) with no counts"):
        SingleCellVI(_adata(empty))
    with pytest.raises(DataError, match="no layer 'spliced'; available: X"):
        SingleCellVI(_adata(m), layer="spliced")
    with pytest.raises(DataError, match="obs has no column 'tissue'"):
        SingleCellVI(_adata(m), label_key="tissue")
    bad = sp.csr_matrix(m)
    bad.indices = bad.indices.copy()
    bad.indices[3] = 99  # a column outside the matrix: refused before any use
    with pytest.raises(DataError, match="column index 99") as exc:
        SingleCellVI(bad)
    assert "\n" not in str(exc.value)


def test_h5ad_reading_falls_back_to_h5py_without_anndata(tmp_path, monkeypatch):
    m = _counts()
    path = write_h5ad(tmp_path / "c.h5ad", m, obs={"cell_type": ["a", "b", "c"] * 20})
    with_anndata = read_h5ad(path)
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata now fails
    without = read_h5ad(path)
    for a, b in ((with_anndata, without),):
        np.testing.assert_array_equal(a.source.to_csr().toarray(), b.source.to_csr().toarray())
        np.testing.assert_array_equal(a.cell_names, b.cell_names)
        np.testing.assert_array_equal(a.gene_names, b.gene_names)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.description == b.description == "c.h5ad [X]"
    with pytest.raises(ZooError, match="pip install anndata==") as exc:
        import_anndata("an AnnData of the latent means")
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------
# AnnData out
# --------------------------------------------------------------------------------------------
def test_run_writes_latent_h5ad_beside_the_csv(tmp_path):
    m = _counts()
    result = zoo.fit(SingleCellVI(_adata(m), **OPTIONS), run_dir=tmp_path / "run", **RUN)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {"latent.h5ad", "latent_means.csv"} <= set(report["files"])
    table = pd.read_csv(tmp_path / "run" / "latent_means.csv")
    out = anndata.read_h5ad(tmp_path / "run" / "latent.h5ad")
    assert out.shape == m.shape and out.X is None
    assert list(out.obs_names) == [f"c{i}" for i in range(len(m))]  # the data's order
    assert list(out.var_names) == [f"g{j}" for j in range(m.shape[1])]
    by_cell = table.set_index("cell").loc[list(out.obs_names)]
    np.testing.assert_allclose(out.obsm["X_scvi"], by_cell[["z1", "z2"]].to_numpy(), rtol=1e-6)
    assert list(out.obs["split"]) == list(by_cell["split"])
    assert list(out.obs["cell_type"]) == list(by_cell["cell_type"])
    theta = out.var["inverse_dispersion"].to_numpy()
    assert np.isfinite(theta).all() and (theta > 0).all()
    assert set(result.tables()) == {"latent_means", "latent"}


def test_without_anndata_the_run_saves_no_h5ad(monkeypatch):
    monkeypatch.setattr(scvi_model, "anndata_available", lambda: False)
    result = zoo.fit("scvi", _counts(), **SMALL)
    assert set(result.tables()) == {"latent_means"}  # what the run saves: latent_means.csv


# --------------------------------------------------------------------------------------------
# Gene selection
# --------------------------------------------------------------------------------------------
def test_highly_variable_genes_are_scanpys(pbmc):
    source = pbmc.source
    selection = highly_variable_genes(source, source.totals(), 50)
    assert selection.kept.tolist() == SCANPY_PBMC_TOP50
    np.testing.assert_allclose(selection.dispersions_norm[:5], SCANPY_PBMC_NORM, atol=2e-6)
    np.testing.assert_allclose(selection.means[:3], SCANPY_PBMC_MEANS, atol=1e-6)
    np.testing.assert_allclose(selection.dispersions[:3], SCANPY_PBMC_DISPERSIONS, atol=1e-6)


def test_gene_selection_in_blocks_of_a_backed_file(tmp_path, monkeypatch):
    m = _counts(200, 80, seed=3)
    path = write_h5ad(tmp_path / "c.h5ad", m)
    whole = InMemoryCounts(m)
    expected = highly_variable_genes(whole, whole.totals(), 20)
    monkeypatch.setattr(counts_module, "BLOCK_VALUES", 80 * 7)  # blocks of 7 cells
    import zoo.models.scvi.genes as genes_module

    monkeypatch.setattr(genes_module, "BLOCK_VALUES", 80 * 7)
    backed = read_h5ad(path, backed=True).source
    reads: list[int] = []
    rows = backed.rows
    monkeypatch.setattr(backed, "rows", lambda idx: reads.append(len(idx)) or rows(idx))
    got = highly_variable_genes(backed, m.sum(1).astype(np.float64), 20)
    assert max(reads) <= 7 and sum(reads) == 200
    np.testing.assert_array_equal(got.highly_variable, expected.highly_variable)
    np.testing.assert_allclose(got.dispersions_norm, expected.dispersions_norm, rtol=1e-12)
    # and the model reading that file backed keeps the same genes, read through the file
    monkeypatch.undo()
    model = SingleCellVI(str(path), backed=True, n_top_genes=20, test_fraction=0.0)
    assert model.num_genes == 20 and model.source.backed
    np.testing.assert_array_equal(model.gene_names, [f"gene{j}" for j in expected.kept])
    np.testing.assert_array_equal(model.source.rows(np.arange(5)), m[:5][:, expected.kept])


def test_n_top_genes_on_training_cells(tmp_path):
    m = _counts(90, 40, seed=1)
    model = SingleCellVI(m, n_top_genes=12, **OPTIONS)
    train = m[model.train_index]
    source = InMemoryCounts(train)
    expected = highly_variable_genes(source, source.totals(), 12).kept
    assert model.num_genes == len(expected) == 12
    np.testing.assert_array_equal(model.gene_names, [f"gene{j + 1}" for j in expected])
    np.testing.assert_array_equal(model.source.to_csr().toarray(), train[:, expected])
    # the library of a cell is its total over the genes the model sees
    np.testing.assert_allclose(
        model.log_library.numpy(), np.log(train[:, expected].sum(1)), rtol=1e-6
    )
    held = model.held_out.source.to_csr().toarray()
    np.testing.assert_array_equal(held, m[model.test_index][:, expected])
    result = zoo.fit(model, **RUN)
    record = result.summary["gene_selection"]
    assert record["n_top_genes"] == 12 and record["num_genes_kept"] == 12
    assert record["num_genes_input"] == 40
    assert result.report()["model"]["options"]["n_top_genes"] == 12


def test_n_top_genes_errors_are_one_line(capsys):
    m = _counts()
    with pytest.raises(DataError, match="--n-top-genes 31 is more than the 30 genes") as exc:
        SingleCellVI(m, n_top_genes=31)
    assert "\n" not in str(exc.value)
    with pytest.raises(ZooError, match="n-top-genes"):
        SingleCellVI(m, n_top_genes=0)
    from zoo.run import main

    with pytest.raises(SystemExit) as code:  # argparse's usage error
        main(["scvi", "--n-top-genes", "0", "--quick"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-top-genes" in err[0]


# --------------------------------------------------------------------------------------------
# The work before it starts, and the held-out likelihood in the summary
# --------------------------------------------------------------------------------------------
def test_work_estimate_is_one_line_from_the_first_steps(monkeypatch, capsys):
    monkeypatch.setattr(scvi_work, "ANNOUNCE_SECONDS", 0.0)  # announce even this tiny run
    m = _counts(60, 30)
    result = zoo.fit("scvi", m, n_top_genes=10, **SMALL)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scvi:")]
    assert len(lines) == 1
    assert lines[0].startswith("scvi: 60 cells x 30 genes (10 kept), ~")
    assert "s per step" in lines[0] and "for 6 steps + ~" in lines[0]
    estimate = result.summary["work_estimate"]
    assert estimate["steps"] == 6 and estimate["seconds_per_step"] > 0
    assert estimate["total_seconds"] == pytest.approx(
        estimate["training_seconds"] + estimate["evaluation_seconds"]
    )


def test_cli_summary_shows_held_out_likelihood(tmp_path, capsys):
    from zoo.run import main

    args = ["scvi", "--dataset", "simulated", "--num-cells", "60", "--num-genes", "20"]
    args += ["--latent-dim", "2", "--hidden", "8", "--steps", "5", "--eval-particles", "30"]
    assert main([*args, "--test-particles", "30", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.strip().startswith("held out (6 points)"))
    iwae = lines[head + 2]
    assert iwae.split()[0:2] == ["IWAE", "(K=30)"] and "±" in iwae
    (run_dir,) = [p for p in tmp_path.glob("scvi/*") if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    per_cell = report["summary"]["test"]["per_cell"]
    assert float(iwae.split()[2]) == pytest.approx(per_cell["marginal_log_likelihood"], abs=1e-4)
    se = float(iwae.split("±")[1])
    assert se == pytest.approx(per_cell["marginal_log_likelihood_se"], rel=0.05)


@pytest.mark.slow
def test_full_transcriptome_file_with_gene_selection_is_quick():
    """celltypist's sample file (559 cells x 32,786 genes of raw UMIs, a CSV of cells x genes):
    with 2,000 highly variable genes a --quick run takes about a minute and a half on one
    thread, where every gene took many times longer; the estimate printed before training
    is within a factor of 4 of the time the run then took."""
    import importlib.util
    import time
    from pathlib import Path

    spec = importlib.util.find_spec("celltypist")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("celltypist is not installed (pip install --no-deps celltypist)")
    path = Path(spec.submodule_search_locations[0]) / "data/samples/sample_cell_by_gene.csv"
    tic = time.perf_counter()
    model = SingleCellVI(str(path), n_top_genes=2000)
    assert model.dataset.source.shape == (559, 32786) and model.num_genes == 2000
    assert model.dataset.cell_names[0] == "Cell_1"  # rows are cells, columns genes
    start = time.perf_counter()
    result = zoo.fit(model, quick=True, seed=0)
    seconds = time.perf_counter() - start
    assert time.perf_counter() - tic < 600
    estimate = result.summary["work_estimate"]
    assert estimate["line"].startswith("scvi: 559 cells x 32,786 genes (2,000 kept), ~")
    assert 0.25 < seconds / estimate["total_seconds"] < 4
