"""scVI: the ZINB likelihood against hand formulas and its limits, the count loaders (bundled
PBMC data, h5ad, 10x mtx, CSV) and their errors, backed reading against in-memory reading, the
simulator and what training recovers from it, the bounds ELBO <= IWAE_K <= IWAE_K' <= log p(x)
against a grid integral, and the model end to end on the bundled data."""

from __future__ import annotations

import gzip
import json
import math
import os

import h5py
import numpy as np
import pyro
import pytest
import scipy.io
import scipy.sparse as sp
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import ClippedAdam
from scipy import stats

import zoo
import zoo.models.scvi.hdf5 as hdf5
from zoo.diagnostics import evaluate
from zoo.errors import DataError
from zoo.models.scvi import (
    NonCountWarning,
    ScviCounts,
    SingleCellVI,
    gene_statistics,
    grid_log_likelihood,
    load_counts,
    load_pbmc68k_reduced,
    pbmc68k_reduced_path,
    read_10x_mtx,
    read_count_csv,
    read_h5ad,
    simulate_scvi,
    write_h5ad,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pbmc_path():
    """scanpy's bundled file; skipped where scanpy is not installed (an error on CI)."""
    try:
        return pbmc68k_reduced_path()
    except DataError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def pbmc(pbmc_path):
    return load_pbmc68k_reduced()


def _counts(n=40, g=12, seed=0, density=0.4):
    rng = np.random.default_rng(seed)
    m = sp.random(
        n, g, density=density, random_state=seed, data_rvs=lambda k: rng.integers(1, 30, k)
    ).toarray()
    m[:, 0] += 1  # no empty cell
    return m.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The bundled PBMC data
# --------------------------------------------------------------------------------------------
def test_pbmc_counts_are_recovered_exactly(pbmc_path, pbmc):
    with h5py.File(pbmc_path, "r") as f:
        g = f["raw.X"]
        assert g.attrs["h5sparse_format"] in (b"csr", "csr")  # stored CSR, not dense
        raw = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(700, 765))
        n_counts = f["obs"]["n_counts"].astype(np.float64)
    values = np.expm1(raw.toarray().astype(np.float64)) * n_counts[:, None] / 1e4
    assert np.abs(values - np.round(values)).max() < 0.09  # every value is near an integer
    counts = pbmc.source.to_csr().toarray()
    assert counts.shape == (700, 765)
    np.testing.assert_array_equal(counts, np.round(values))
    assert counts.min() == 0 and (counts == np.round(counts)).all()
    # n_counts is the total over all genes before the 765 were selected: an upper bound here,
    # and the normalised values of a cell add up to at most 1e4
    totals = pbmc.source.totals()
    assert (totals <= n_counts + 1e-6).all() and (totals > 0).all()
    assert (np.expm1(raw.toarray().astype(np.float64)).sum(1) <= 1e4 * (1 + 1e-5)).all()
    assert pbmc.label_key == "bulk_labels"
    names, sizes = np.unique(pbmc.labels, return_counts=True)
    assert len(names) == 10 and sizes.sum() == 700 and "CD14+ Monocyte" in names
    assert pbmc.gene_names[0] == "HES4" and pbmc.cell_names[0] == "AAAGCCTGGCTAAC-1"


def test_pbmc_other_matrices_are_refused(pbmc_path):
    with pytest.raises(DataError, match="negative") as err:
        read_h5ad(pbmc_path, layer="X")  # scaled values
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"not integers.*allow_non_counts"):
        read_h5ad(pbmc_path, layer="raw")  # log-normalised values
    with pytest.warns(NonCountWarning):
        data = read_h5ad(pbmc_path, layer="raw", allow_non_counts=True)
    assert data.source.shape == (700, 765)


def test_backed_reader_equals_dense_reader(pbmc, monkeypatch):
    backed = load_pbmc68k_reduced(backed=True)
    assert backed.source.backed and not pbmc.source.backed
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(backed.source.totals(), pbmc.source.totals())
    for gap in (hdf5._MERGE_GAP, 0):  # one merged read, and one read per row
        monkeypatch.setattr(hdf5, "_MERGE_GAP", gap)
        for _ in range(3):
            idx = rng.choice(700, 128, replace=False)
            np.testing.assert_array_equal(backed.source.rows(idx), pbmc.source.rows(idx))
        idx = np.array([5, 3, 5, 699, 0])  # repeats and any order
        np.testing.assert_array_equal(backed.source.rows(idx), pbmc.source.rows(idx))
    train = rng.choice(700, 300, replace=False)
    sub_b, sub_d = backed.source.subset(train), pbmc.source.subset(train)
    np.testing.assert_array_equal(sub_b.totals(), sub_d.totals())
    np.testing.assert_array_equal(sub_b.rows([7, 1, 299]), sub_d.rows([7, 1, 299]))
    # the backed source never read the whole matrix: it holds only the row pointer
    assert not hasattr(backed.source, "matrix")


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_backed_h5ad_equals_in_memory(tmp_path, fmt):
    m = _counts(60, 9)
    path = write_h5ad(tmp_path / "x.h5ad", m, fmt=fmt)
    mem, backed = read_h5ad(path), read_h5ad(path, backed=True)
    assert backed.source.backed
    idx = np.array([59, 0, 13, 13, 2])
    np.testing.assert_array_equal(backed.source.rows(idx), m[idx])
    np.testing.assert_array_equal(mem.source.rows(idx), m[idx])
    np.testing.assert_allclose(backed.source.totals(), m.sum(1))
    np.testing.assert_array_equal(backed.source.to_csr().toarray(), m)


# --------------------------------------------------------------------------------------------
# The ZINB likelihood
# --------------------------------------------------------------------------------------------
class _Direct(torch.nn.Module):
    """A 'decoder' whose latent is its output: z = [softmax logits, gate logits]."""

    def __init__(self, genes: int) -> None:
        super().__init__()
        self.genes = genes

    def forward(self, z):
        return {"scale": z[..., : self.genes], "gate": z[..., self.genes :]}


def _direct(mu, theta, gate_logits, likelihood="zinb"):
    """ScviCounts with means mu (..., G): logits log mu, library log sum mu."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    g = mu.shape[-1]
    gate = torch.as_tensor(gate_logits, dtype=torch.float64).expand_as(mu)
    z = torch.cat([mu.log(), gate], -1)
    log_l = mu.sum(-1, keepdim=True).log()
    log_theta = torch.as_tensor(theta, dtype=torch.float64).log()
    return ScviCounts(_Direct(g), z, log_l, log_theta, likelihood, num_genes=g)


def _hand_zinb(x, mu, theta, gate_logits):
    """log ZINB(x) from scipy's negative binomial: n = theta, p = theta / (theta + mu)."""
    pi = 1.0 / (1.0 + np.exp(-gate_logits))
    nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    return np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)


def test_zinb_log_prob_matches_hand_formula_and_pyro():
    rng = np.random.default_rng(0)
    g = 30
    mu = rng.gamma(1.0, 4.0, size=(3, 5, g)) + 1e-3
    theta = rng.uniform(0.2, 8.0, size=g)
    gate = rng.normal(-1.0, 1.5, size=(3, 5, g))
    x = rng.poisson(mu[0] * rng.gamma(0.7, 1.0, size=(5, g))).astype(np.float64)
    x[rng.random(x.shape) < 0.3] = 0
    d = _direct(mu, theta, gate)
    got = d.log_prob(torch.as_tensor(x)).numpy()
    want = _hand_zinb(x[None], mu, theta, gate).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
    pyro_lp = d.elementwise().log_prob(torch.as_tensor(x)).sum(-1).numpy()
    np.testing.assert_allclose(got, pyro_lp, rtol=1e-10, atol=1e-9)
    # Pyro's parameterisation: total_count theta, logits log mu - log theta
    ref = pyro.distributions.ZeroInflatedNegativeBinomial(
        total_count=torch.as_tensor(theta),
        logits=torch.as_tensor(np.log(mu) - np.log(theta)),
        gate_logits=torch.as_tensor(gate),
    )
    np.testing.assert_allclose(got, ref.log_prob(torch.as_tensor(x)).sum(-1).numpy(), rtol=1e-10)
    # the chunked evaluation gives the same numbers
    d.chunk_budget = g * 5
    np.testing.assert_allclose(d.log_prob(torch.as_tensor(x)).numpy(), got, rtol=1e-12)


def test_zinb_gradients_match_pyro():
    rng = np.random.default_rng(1)
    g = 20
    x = torch.as_tensor(rng.poisson(3.0, size=(6, g)), dtype=torch.float64)
    params = [
        torch.tensor(rng.normal(size=(2, 6, 2 * g)), requires_grad=True),
        torch.tensor(rng.normal(size=g) * 0.5, requires_grad=True),
    ]
    for likelihood in ("zinb", "nb", "poisson"):
        z, log_theta = params
        d = ScviCounts(
            _Direct(g),
            z,
            torch.zeros(6, 1, dtype=torch.float64) + 3.0,
            log_theta,
            likelihood,
            num_genes=g,
        )
        ours = torch.autograd.grad(d.log_prob(x).sum(), params, allow_unused=True)
        theirs = torch.autograd.grad(d.elementwise().log_prob(x).sum(), params, allow_unused=True)
        for a, b in zip(ours, theirs, strict=True):
            if b is None:
                assert a is None or a.abs().max() == 0
            else:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_zinb_limits_are_nb_and_poisson():
    rng = np.random.default_rng(2)
    g = 25
    mu = rng.gamma(2.0, 3.0, size=(4, g))
    theta = rng.uniform(0.5, 5.0, size=g)
    x = torch.as_tensor(rng.poisson(mu), dtype=torch.float64)
    # gate -> -inf: the zero inflation vanishes, ZINB -> NB
    zinb = _direct(mu, theta, -60.0).log_prob(x)
    nb = _direct(mu, theta, 0.0, "nb").log_prob(x)
    torch.testing.assert_close(zinb, nb, rtol=1e-12, atol=1e-12)
    want = stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu)).sum(-1)
    np.testing.assert_allclose(nb.numpy(), want, rtol=1e-10)
    # theta -> infinity: NB -> Poisson(mu), the difference shrinking like 1 / theta
    poisson = _direct(mu, theta, 0.0, "poisson").log_prob(x)
    np.testing.assert_allclose(poisson.numpy(), stats.poisson.logpmf(x.numpy(), mu).sum(-1))
    gaps = [
        (_direct(mu, np.full(g, t), -60.0).log_prob(x) - poisson).abs().max().item()
        for t in (1e3, 1e5, 1e7)
    ]
    assert gaps[2] < 1e-4 and gaps[1] < gaps[0] / 50


# --------------------------------------------------------------------------------------------
# Loaders and their errors
# --------------------------------------------------------------------------------------------
def test_h5ad_x_and_counts_layer(tmp_path):
    m = _counts()
    labels = np.array(["T", "B", "NK", "T"] * 10)
    lognorm = np.log1p(m / m.sum(1, keepdims=True) * 1e4)
    path = write_h5ad(tmp_path / "a.h5ad", lognorm, obs={"cell_type": labels}, layers={"counts": m})
    data = read_h5ad(path)  # auto: the counts layer, not the log-normalised X
    np.testing.assert_array_equal(data.source.to_csr().toarray(), m)
    assert data.label_key == "cell_type" and list(data.labels[:3]) == ["T", "B", "NK"]
    assert data.cell_names[1] == "cell1" and data.gene_names[2] == "gene2"
    with pytest.raises(DataError, match="not integers"):
        read_h5ad(path, layer="X")
    with pytest.raises(DataError, match="no layer 'spliced'; available: X, counts"):
        read_h5ad(path, layer="spliced")
    with pytest.raises(DataError, match="no column 'tissue'"):
        read_h5ad(path, label_key="tissue")
    for fmt in ("dense", "csc"):
        other = write_h5ad(tmp_path / f"{fmt}.h5ad", m, fmt=fmt)
        np.testing.assert_array_equal(load_counts(other).source.to_csr().toarray(), m)


def _write_mtx(directory, m, gz=False, features=False):
    directory.mkdir()
    genes = [
        f"ENSG{j:05d}\tG{j}" + ("\tGene Expression" if features else "") for j in range(m.shape[1])
    ]
    barcodes = [f"AAAC{i}-1" for i in range(m.shape[0])]
    scipy.io.mmwrite(directory / "matrix.mtx", sp.coo_matrix(m.T.astype(np.int64)))
    files = {
        "features.tsv" if features else "genes.tsv": "\n".join(genes) + "\n",
        "barcodes.tsv": "\n".join(barcodes) + "\n",
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    if gz:
        for name in ["matrix.mtx", *files]:
            raw = (directory / name).read_bytes()
            with gzip.open(directory / f"{name}.gz", "wb") as handle:
                handle.write(raw)
            (directory / name).unlink()


@pytest.mark.parametrize("gz", [False, True])
def test_10x_mtx_round_trip(tmp_path, gz):
    m = _counts(30, 8)
    _write_mtx(tmp_path / "mtx", m, gz=gz, features=gz)
    data = load_counts(tmp_path / "mtx")
    np.testing.assert_array_equal(data.source.to_csr().toarray(), m)
    assert data.gene_names[3] == "G3" and data.cell_names[2] == "AAAC2-1"
    ids = read_10x_mtx(tmp_path / "mtx", gene_symbols=False)
    assert ids.gene_names[3] == "ENSG00003"


def test_10x_mtx_errors(tmp_path):
    m = _counts(30, 8)
    _write_mtx(tmp_path / "mtx", m)
    (tmp_path / "mtx" / "barcodes.tsv").write_text("A-1\nB-1\n")
    with pytest.raises(DataError, match=r"2 barcodes in barcodes.tsv but 30 columns"):
        read_10x_mtx(tmp_path / "mtx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"not a 10x matrix directory: no matrix.mtx"):
        read_10x_mtx(tmp_path / "empty")


def test_csv_round_trip_and_errors(tmp_path):
    import pandas as pd

    m = _counts(20, 5)
    frame = pd.DataFrame(m.astype(int), columns=[f"g{j}" for j in range(5)])
    frame.insert(0, "barcode", [f"c{i}" for i in range(20)])
    frame["cell_type"] = ["x", "y"] * 10
    frame.to_csv(tmp_path / "c.csv", index=False)
    data = read_count_csv(tmp_path / "c.csv")
    np.testing.assert_array_equal(data.source.to_csr().toarray(), m)
    assert list(data.gene_names) == [f"g{j}" for j in range(5)]
    assert data.cell_names[3] == "c3" and data.label_key == "cell_type"
    frame.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    np.testing.assert_array_equal(load_counts(tmp_path / "t.tsv").source.to_csr().toarray(), m)
    bad = frame.copy()
    bad["g2"] = bad["g2"] + 0.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as err:
        load_counts(tmp_path / "bad.csv")
    message = str(err.value)
    assert "\n" not in message and "not integers" in message and "allow_non_counts" in message
    with pytest.warns(NonCountWarning, match="proceeding"):
        kept = load_counts(tmp_path / "bad.csv", allow_non_counts=True)
    assert kept.source.to_csr().toarray()[0, 2] % 1 == 0.5
    neg = frame.copy()
    neg.loc[3, "g1"] = -2
    neg.to_csv(tmp_path / "neg.csv", index=False)
    with pytest.raises(DataError, match="negative"):
        load_counts(tmp_path / "neg.csv", allow_non_counts=True)
    text = frame.copy()
    text["batch"] = "b1"
    text.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(DataError, match="column 'batch' is not numeric"):
        load_counts(tmp_path / "text.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_counts(tmp_path / "missing.csv")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match=r"use an .h5ad file"):
        load_counts(tmp_path / "x.parquet")


def test_model_refuses_empty_cells_and_bad_files(tmp_path):
    m = _counts(30, 6)
    m[4] = 0
    with pytest.raises(DataError, match="1 cell\\(s\\) with no counts"):
        SingleCellVI(m)
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(DataError, match=r"cannot read .* as h5ad"):
        SingleCellVI(str(tmp_path / "junk.h5ad"))


# --------------------------------------------------------------------------------------------
# Which way round a count CSV is: cells x genes, or genes x cells with genes_in_rows
# --------------------------------------------------------------------------------------------
#: a few 10x barcodes, Ensembl gene IDs and gene symbols
BARCODES = [f"{a}{b}{c}AACCTGAGAAGGC-1" for a in "ACGT" for b in "ACGT" for c in "ACGT"]
ENSEMBL = [f"ENSG{j:011d}" for j in range(1000, 1100)]
SYMBOLS = ["CD3E", "MS4A1", "LYZ", "GAPDH", "NKG7", "RPL13A", "MT-CO1", "HLA-DRA", "S100A8"]


def _table(m, cells, genes):
    import pandas as pd

    return pd.DataFrame(m.astype(int), index=list(cells), columns=list(genes))


def _fitted_inputs(model):
    """What a fit of ``model`` reads: the counts, names, split and log library sizes."""
    return {
        "counts": model.dataset.source.to_csr().toarray(),
        "cells": list(model.dataset.cell_names),
        "genes": list(model.gene_names),
        "train": model.train_index,
        "test": model.test_index,
        "log_library": model.data.log_library.numpy(),
        "names": list(model.data.names),
        "held_out": model.held_out.log_library.numpy(),
    }


def test_a_genes_by_cells_csv_reads_as_its_transpose(tmp_path):
    """The same matrix written cells x genes and genes x cells (R's write.csv of a count
    matrix: an empty first header field, gene names down the first column) gives the same
    counts, names, split and fit with ``genes_in_rows``; so does a genes x cells TSV."""
    m = _counts(30, 12)
    table = _table(m, BARCODES[:30], ENSEMBL[:12])
    table.to_csv(tmp_path / "cells.csv")
    table.T.to_csv(tmp_path / "genes.csv")
    table.T.to_csv(tmp_path / "genes.tsv", sep="\t")
    assert (tmp_path / "genes.csv").read_text().startswith(",AAAAACCTGAGAAGGC-1,")
    cells = read_count_csv(tmp_path / "cells.csv")
    for name in ("genes.csv", "genes.tsv"):
        genes = load_counts(tmp_path / name, genes_in_rows=True)
        np.testing.assert_array_equal(genes.source.to_csr().toarray(), m)
        assert list(genes.cell_names) == list(cells.cell_names) == BARCODES[:30]
        assert list(genes.gene_names) == list(cells.gene_names) == ENSEMBL[:12]
    one = SingleCellVI(str(tmp_path / "cells.csv"), test_fraction=0.2)
    other = SingleCellVI(str(tmp_path / "genes.csv"), test_fraction=0.2, genes_in_rows=True)
    a, b = _fitted_inputs(one), _fitted_inputs(other)
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(b[key], value, err_msg=key)
    fits = [
        zoo.fit(model, steps=4, eval_particles=30, record_every=2, progress=False, seed=1)
        for model in (one, other)
    ]
    assert fits[0].diagnostics.elbo == fits[1].diagnostics.elbo
    np.testing.assert_array_equal(fits[0].history["elbo"], fits[1].history["elbo"])


def _refused(path, **options):
    with pytest.raises(DataError) as err:
        read_count_csv(path, **options)
    message = str(err.value)
    assert "\n" not in message and "--genes-in-rows true" in message, message
    return message


def test_a_csv_whose_labels_say_it_is_the_other_way_round_is_refused(tmp_path):
    """A genes x cells file read as cells x genes, or the reverse with ``genes_in_rows``, is
    refused in one line naming the option, never read transposed: its labels say so (gene IDs
    down the first column, barcodes or cell names across the header, a first column named
    like a gene column), with more genes than cells or more cells than genes."""
    for n, g in ((12, 40), (40, 12)):
        m = _counts(n, g)
        cases = {
            "ids_and_barcodes": _table(m, BARCODES[:n], ENSEMBL[:g]),
            "symbols_and_cell_names": _table(
                m, [f"Cell_{i + 1}" for i in range(n)], [f"{SYMBOLS[j % 9]}.{j}" for j in range(g)]
            ),
            "ids_and_plain_names": _table(m, [f"s{i}" for i in range(n)], ENSEMBL[:g]),
        }
        for case, table in cases.items():
            path = tmp_path / f"{case}_{n}.csv"
            table.T.to_csv(path)  # genes x cells, read as cells x genes
            message = _refused(path)
            assert "looks like genes x cells" in message and "genes_in_rows=True" in message
            path = tmp_path / f"{case}_{n}_cells.csv"
            table.to_csv(path)  # cells x genes, read with genes_in_rows
            assert "looks like cells x genes" in _refused(path, genes_in_rows=True), case
        unnamed = tmp_path / f"no_gene_names_{n}.csv"
        _table(m, BARCODES[:n], ENSEMBL[:g]).T.to_csv(unnamed, index=False)
        assert "its header holds cell names ('AAAAACCTGAGAAGGC-1')" in _refused(unnamed)
        named = tmp_path / f"gene_column_{n}.csv"
        symbols = _table(m, [f"c{i}" for i in range(n)], [f"{SYMBOLS[j % 9]}{j}" for j in range(g)])
        symbols.T.rename_axis("gene_symbol").to_csv(named)
        assert "its first column is named 'gene_symbol'" in _refused(named)
        named = tmp_path / f"cell_column_{n}.csv"
        symbols.rename_axis("cell_barcode").to_csv(named)
        assert "its first column is named 'cell_barcode'" in _refused(named, genes_in_rows=True)


def test_a_cells_by_genes_csv_is_never_refused(tmp_path):
    """Whatever its shape (more cells than genes or more genes than cells), a cells x genes
    file is read as it is, with labels of every usual kind or none; read with
    ``genes_in_rows``, its transpose gives the same counts."""
    for n, g in ((60, 5), (5, 60), (9, 9)):
        m = _counts(n, g)
        labels = {
            "barcodes_and_symbols": (BARCODES[:n], [f"{SYMBOLS[j % 9]}-{j}" for j in range(g)]),
            "cell_names_and_ids": ([f"Cell_{i + 1}" for i in range(n)], ENSEMBL[:g]),
            "plain": ([f"c{i}" for i in range(n)], [f"g{j}" for j in range(g)]),
            "generic": ([f"cell{i + 1}" for i in range(n)], [f"gene{j + 1}" for j in range(g)]),
            "symbols_as_cells": ([f"A{i}" for i in range(n)], [f"G{j}" for j in range(g)]),
        }
        for case, (cells, genes) in labels.items():
            table = _table(m, cells, genes)
            for index, key in ((True, "barcode"), (True, None), (False, None)):
                path = tmp_path / f"{case}_{n}_{index}_{key}.csv"
                table.rename_axis(key).to_csv(path, index=index)
                data = read_count_csv(path)
                np.testing.assert_array_equal(data.source.to_csr().toarray(), m)
                assert list(data.gene_names) == genes, case
            path = tmp_path / f"{case}_{n}_genes.csv"
            table.T.to_csv(path)
            back = read_count_csv(path, genes_in_rows=True)
            np.testing.assert_array_equal(back.source.to_csr().toarray(), m)
            assert list(back.cell_names) == cells and list(back.gene_names) == genes
        labelled = _table(m, BARCODES[:n], ENSEMBL[:g])
        labelled["cell_type"] = ["T", "B", "NK"] * (n // 3) + ["T"] * (n % 3)
        labelled.to_csv(tmp_path / f"labelled_{n}.csv")
        assert read_count_csv(tmp_path / f"labelled_{n}.csv").label_key == "cell_type"


def test_genes_in_rows_is_refused_where_it_cannot_apply(tmp_path):
    """``genes_in_rows`` is about a CSV file: with an h5ad file, a 10x directory, an array or
    the bundled data it is one line; a genes x cells CSV has no column of cell labels."""
    m = _counts(20, 6)
    write_h5ad(tmp_path / "c.h5ad", sp.csr_matrix(m))
    for data in (str(tmp_path / "c.h5ad"), m, None):
        with pytest.raises(DataError, match=r"genes_in_rows \(--genes-in-rows\) applies to a CSV"):
            SingleCellVI(data, genes_in_rows=True)
    _table(m, BARCODES[:20], ENSEMBL[:6]).T.to_csv(tmp_path / "genes.csv")
    with pytest.raises(DataError, match="holds no cell labels"):
        read_count_csv(tmp_path / "genes.csv", genes_in_rows=True, label_key="cell_type")
    table = _table(m, BARCODES[:20], ENSEMBL[:6]).T
    table.insert(0, "description", "protein coding")
    table.to_csv(tmp_path / "annotated.csv")
    with pytest.raises(DataError, match=r"column 'description' is not numeric.*one row per gene"):
        read_count_csv(tmp_path / "annotated.csv", genes_in_rows=True)


def test_the_command_line_names_the_option_for_a_genes_by_cells_csv(tmp_path, capsys):
    m = _counts(30, 12)
    _table(m, BARCODES[:30], ENSEMBL[:12]).T.to_csv(tmp_path / "genes.csv")
    from zoo.run import main

    run = ["scvi", "--data", str(tmp_path / "genes.csv"), "--quick", "--quiet"]
    code = main([*run, "--run-dir", str(tmp_path / "refused")])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and "--genes-in-rows true" in lines[0], lines
    assert not (tmp_path / "refused").exists()
    help_text = SingleCellVI.data_help + " ".join(o.help for o in SingleCellVI.options)
    assert "--genes-in-rows" in help_text and "one row per gene" in help_text


# --------------------------------------------------------------------------------------------
# The simulator and what training recovers
# --------------------------------------------------------------------------------------------
def test_simulator_is_seeded_and_draws_counts():
    a, b = simulate_scvi(50, 20, seed=3), simulate_scvi(50, 20, seed=3)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, simulate_scvi(50, 20, seed=4).counts)
    assert a.counts.shape == (50, 20) and (a.counts == np.round(a.counts)).all()
    assert (a.counts >= 0).all() and a.z.shape == (50, 2)
    assert a.inverse_dispersion.min() >= 0.5 and a.inverse_dispersion.max() <= 8.0


def test_library_prior_is_recovered():
    """The latent library's log-normal prior takes the mean and variance of log total counts
    (scVI); on NB data from the model the total count is l up to NB noise (a CV of about 0.06
    with 2000 genes), so the prior recovers the simulation's (mu_l, sigma_l): the mean within 4
    standard errors (+ 0.01 for the noise's Jensen bias), the scale within 5%."""
    m = SingleCellVI(
        dataset="simulated",
        library="latent",
        likelihood="nb",
        num_cells=2000,
        num_genes=2000,
        latent_dim=2,
        hidden=16,
        test_fraction=0.0,
    )
    sim = m.simulation
    assert m.library_log_mean == pytest.approx(np.log(sim.counts.sum(1)).mean(), rel=1e-6)
    se = sim.library_log_scale / math.sqrt(2000)
    assert abs(m.library_log_mean - sim.library_log_mean) < 4 * se + 0.01
    assert m.library_log_scale == pytest.approx(sim.library_log_scale, rel=0.05)
    # the library encoder starts at the prior
    m.build_networks()
    q = m.library_encoder.distribution(torch.zeros(1, 2000))
    assert float(q.mean.detach()) == pytest.approx(m.library_log_mean, abs=0.5)


def _dispersion_recovery(likelihood: str, cells: int, genes: int, steps: int) -> dict:
    m = SingleCellVI(
        dataset="simulated",
        likelihood=likelihood,
        num_cells=cells,
        num_genes=genes,
        latent_dim=2,
        hidden=32,
        test_fraction=0.0,
    )
    result = zoo.fit(
        m,
        steps=steps,
        lr=1e-2,
        lr_final_factor=0.05,
        batch_size=250,
        eval_particles=30,
        record_every=steps,
        progress=False,
    )
    return result.summary["simulation"]


def test_inverse_dispersions_are_recovered():
    """NB data from the model (1000 cells, 40 genes, q = 2, theta_g log-uniform on [0.5, 8]),
    trained by the runner from scratch (decoder included): log theta_g correlates with the
    truth (r > 0.95; 0.98 seen) and is off by less than 0.25 (median |error|; 0.10-0.13)."""
    s = _dispersion_recovery("nb", 1000, 40, 1000)
    assert s["corr_log_inverse_dispersion"] > 0.95
    assert s["median_abs_error_log_inverse_dispersion"] < 0.25


@pytest.mark.slow
@pytest.mark.parametrize("likelihood,tolerance", [("nb", 0.12), ("zinb", 0.2)])
def test_inverse_dispersions_are_recovered_closely(likelihood, tolerance):
    """2000 cells, 60 genes, 3000 steps: r > 0.98 and median |error of log theta| below 0.12
    for NB (0.06 seen), 0.2 for ZINB (0.11 seen: zero inflation and dispersion trade off)."""
    s = _dispersion_recovery(likelihood, 2000, 60, 3000)
    assert s["corr_log_inverse_dispersion"] > 0.98
    assert s["median_abs_error_log_inverse_dispersion"] < tolerance


def _train_encoder_only(model, steps, lr=0.02):
    """A fresh encoder trained against the true decoder (the decoder's learning rate is 0)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = model.build_guide("mean-field")
    model.set_true_parameters()
    optim = ClippedAdam(lambda name: {"lr": lr if name.startswith("encoder") else 0.0})
    svi = SVI(
        model.model,
        guide,
        optim,
        TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
    )
    for _ in range(steps):
        svi.step()
    return guide


@pytest.fixture(scope="module")
def simulated_fit():
    """30 simulated cells (40 genes, q = 2, small libraries: broad posteriors), the true
    decoder, an encoder trained against it, and log p(x_n | l_n) on a 201 x 201 grid
    (accurate to 1e-3 nats: the 301 x 301 grid agrees to 3e-4)."""
    sim = simulate_scvi(30, 40, latent_dim=2, hidden=16, seed=1, library_log_mean=math.log(150.0))
    m = SingleCellVI(sim.counts, latent_dim=2, hidden=16, test_fraction=0.0)
    m.simulation = sim
    guide = _train_encoder_only(m, 400)
    log_px = grid_log_likelihood(
        sim.decoder,
        torch.as_tensor(sim.log_inverse_dispersion),
        "zinb",
        torch.as_tensor(sim.counts),
        m.log_library,
        points=201,
    )
    return m, guide, log_px.double()


def test_grid_evidence_bounds_elbo_and_iwae(simulated_fit):
    m, guide, log_px = simulated_fit
    exact = float(log_px.sum())
    d = evaluate(m, guide, num_particles=2000, with_khat=False)
    assert d.iwae_scope.startswith("per data point")
    assert d.elbo <= exact + 3 * d.elbo_se  # the ELBO is a lower bound
    assert d.elbo < d.iwae  # the importance-weighted bound is tighter
    # IWAE with K = 2000 per cell reaches the grid value within its error
    assert abs(d.iwae - exact) < 3 * d.iwae_se + 0.02 * m.num_data
    assert d.iwae <= exact + 3 * d.iwae_se


def test_iwae_increases_with_k(simulated_fit):
    m, guide, log_px = simulated_fit
    pyro.set_rng_seed(1)
    bounds = {k: evaluate(m, guide, num_particles=k, with_khat=False) for k in (2, 20, 200, 2000)}
    elbo = bounds[2000]
    values = [elbo.elbo] + [bounds[k].iwae for k in (2, 20, 200, 2000)]
    errors = [elbo.elbo_se] + [bounds[k].iwae_se for k in (2, 20, 200, 2000)]
    for i in range(len(values) - 1):
        assert values[i] <= values[i + 1] + 3 * math.hypot(errors[i], errors[i + 1])
    assert values[-1] - values[0] > 0.5  # a visible climb from the ELBO to IWAE_2000
    assert values[-1] <= float(log_px.sum()) + 3 * errors[-1]


# --------------------------------------------------------------------------------------------
# The model end to end
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pbmc_fit(pbmc):
    model = SingleCellVI(test_particles=50)
    result = zoo.fit(
        model, steps=40, kl_warmup=20, eval_particles=30, record_every=20, progress=False
    )
    return model, result


def test_fit_reports_held_out_likelihood(pbmc_fit):
    model, result = pbmc_fit
    assert model.num_data == 630 and len(model.test_index) == 70 and model.num_genes == 765
    assert result.config.batch_size == 128
    s = result.summary
    test = s["test"]["per_cell"]
    assert test["marginal_log_likelihood"] >= test["elbo"] - 3 * test["elbo_se"]
    assert test["reconstruction_error"] > 0 and test["kl"] > 0
    assert s["test"]["num_particles"] == 50 and s["num_test"] == 70
    assert set(s["inverse_dispersion"]) == {"median", "q10", "q90"}
    assert s["collapse"]["latent_dim"] == 10
    assert 0 < s["generated_vs_real"]["zero_fraction_real"] < 1
    history = result.history
    assert history["kl_weight"].iloc[1] == pytest.approx(1.0)  # step 20 of a 20-step warm-up
    assert json.dumps(result.report(), default=str)  # JSON-serialisable


def test_latent_means_table(pbmc_fit, tmp_path):
    model, result = pbmc_fit
    result.activate()
    table = model.latent_means_table(result.guide)
    assert len(table) == 700 and list(table.columns[:3]) == ["cell", "split", "bulk_labels"]
    assert (table["split"] == "held-out").sum() == 70
    assert [f"z{d}" for d in range(1, 11)] == list(table.columns[3:13])
    path = model.save_latent_means(result.guide, tmp_path / "z.csv")
    import pandas as pd

    back = pd.read_csv(path)
    np.testing.assert_allclose(back["z1"].to_numpy(), table["z1"].to_numpy(), rtol=1e-6)
    # and, with anndata installed, the same means as an AnnData (tests/test_scvi_anndata.py)
    assert set(result.tables()) - {"latent"} == {"latent_means"}


def test_held_out_report_is_the_model_on_held_out_cells(pbmc_fit):
    """The held-out numbers are the same model's evaluation with the held-out cells bound
    (``with_data``, as scvi-tools' ``get_marginal_ll(adata=...)``); the model keeps its own."""
    model, result = pbmc_fit
    result.activate()
    guide = result.guide
    test = model.with_data(model.held_out)
    assert test.num_data == 70 and model.num_data == 630 and test.decoder is model.decoder
    assert list(test.cell_names) == list(model.cell_names_test)
    pyro.set_rng_seed(4)
    by_hand = evaluate(test, guide.bind(test), num_particles=30, with_khat=False)
    pyro.set_rng_seed(4)
    report = model.held_out_diagnostics(guide, 30)
    assert report["num_cells"] == 70
    assert report["marginal_log_likelihood"] == by_hand.iwae and report["elbo"] == by_hand.elbo
    np.testing.assert_array_equal(
        model.posterior_means(guide, held_out=True)["z"], test.posterior_means(guide)["z"]
    )


def test_figures(pbmc_fit):
    import matplotlib.pyplot as plt

    _, result = pbmc_fit
    figures = result.figures()
    assert {"latent_embedding", "generated_vs_real", "kl_per_dim", "training"} <= set(figures)
    for fig in figures.values():
        plt.close(fig)


@pytest.mark.parametrize(
    "options",
    [
        {"library": "latent"},
        {"likelihood": "nb"},
        {"likelihood": "poisson", "depth": 2},
    ],
)
def test_model_variants_train(options):
    m = SingleCellVI(
        dataset="simulated",
        num_cells=120,
        num_genes=30,
        latent_dim=3,
        hidden=16,
        test_particles=30,
        **options,
    )
    result = zoo.fit(m, steps=30, eval_particles=30, record_every=30, progress=False)
    d = result.diagnostics
    assert math.isfinite(d.elbo) and d.elbo < d.iwae + 3 * d.iwae_se
    assert set(d.kl_by_site) == ({"z", "library"} if "library" in options else {"z"})
    test = result.summary["test"]
    assert math.isfinite(test["per_cell"]["marginal_log_likelihood"])


def test_backed_training_reads_batches_from_disk(tmp_path, monkeypatch):
    """A backed file is never read whole: mini-batches read their rows, and every full pass
    (initial trace, history records, diagnostics, held-out evaluation, report, tables and
    figures) reads a block of cells at a time."""
    m = _counts(300, 20, density=0.5)
    path = write_h5ad(tmp_path / "b.h5ad", m, obs={"cell_type": ["a", "b", "c"] * 100})
    model = SingleCellVI(str(path), backed=True, latent_dim=2, hidden=8, test_particles=30)
    # 270 training cells: blocks of 100, 100, 70
    model.data_plate = model.data_plate.with_sizes(block_size=100)
    assert model.source.backed and model._dense is None

    read_all = SingleCellVI._read_all

    def at_most_a_block(self):
        assert self.num_data <= 100, f"{self.num_data} cells read at once"
        return read_all(self)

    monkeypatch.setattr(SingleCellVI, "_read_all", at_most_a_block)
    calls = []
    rows = model.source.rows

    def counting(idx):
        calls.append(len(idx))
        return rows(idx)

    model.source.rows = counting
    result = zoo.fit(
        model, steps=5, batch_size=64, eval_particles=30, record_every=5, progress=False
    )
    assert max(calls) == 100
    # one read per mini-batch, shared by the guide and the model
    assert [c for c in calls if c == 64] == [64] * 5
    # two records (steps 0 and 5) and the final diagnostics at least, each a whole pass of
    # three blocks (100, 100, 70): no pass reads a part of the cells
    assert calls.count(70) >= 3 and calls.count(100) == 2 * calls.count(70)
    result.save(tmp_path / "run")
    assert (tmp_path / "run" / "latent_means.csv").exists()
    assert max(calls) == 100 and calls.count(100) == 2 * calls.count(70)
    monkeypatch.undo()
    memory = SingleCellVI(str(path), latent_dim=2, hidden=8)
    np.testing.assert_array_equal(model.training_counts(), memory.training_counts())


def test_gene_statistics_by_blocks():
    counts = _counts(301, 12, density=0.4)
    whole = gene_statistics(counts)
    np.testing.assert_allclose(whole["variance"], counts.astype(np.float64).var(0), rtol=1e-13)
    blocks = gene_statistics(counts[i : i + 37] for i in range(0, 301, 37))
    for key in ("mean", "variance", "zero_fraction"):
        np.testing.assert_allclose(blocks[key], whole[key], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="no cells"):
        gene_statistics(iter([]))


def test_blocked_passes_equal_whole_ones(pbmc_fit):
    """Block by block (200 of the 630 training cells at a time) the deterministic summaries
    are the same numbers, and the Monte Carlo ones agree within their standard errors."""
    model, result = pbmc_fit
    guide = result.guide
    result.activate()
    whole = {
        "genes": model.gene_statistics(),
        "means": model.posterior_means(guide)["z"],
        "collapse": model.collapse(guide).kl_per_dim,
        "diagnostics": evaluate(model, guide, num_particles=500, with_khat=False),
    }
    model.data_plate = model.data_plate.with_sizes(block_size=200)
    try:
        blocked = {
            "genes": model.gene_statistics(),
            "means": model.posterior_means(guide)["z"],
            "collapse": model.collapse(guide).kl_per_dim,
            "diagnostics": evaluate(model, guide, num_particles=500, with_khat=False),
        }
    finally:
        del model.data_plate  # back to the class's value
    # the real cells' statistics, accumulated block by block (the generated cells differ: each
    # block draws its own)
    for key in ("mean", "variance", "zero_fraction"):
        np.testing.assert_allclose(blocked["genes"][0][key], whole["genes"][0][key], rtol=1e-12)
    np.testing.assert_allclose(blocked["means"], whole["means"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(blocked["collapse"], whole["collapse"], rtol=1e-5, atol=1e-6)
    dw, db = whole["diagnostics"], blocked["diagnostics"]
    assert db.num_data == dw.num_data == 630 and db.iwae_scope == dw.iwae_scope
    for value, se in (("elbo", "elbo_se"), ("iwae", "iwae_se")):
        spread = 4 * math.hypot(getattr(dw, se), getattr(db, se))
        assert abs(getattr(db, value) - getattr(dw, value)) < spread, value
    # one draw of every cell per particle: the standard errors are the same size
    assert db.elbo_se == pytest.approx(dw.elbo_se, rel=0.3)


def test_cli_runs_scvi(tmp_path):
    from zoo.run import main

    code = main(
        [
            "scvi",
            "--dataset",
            "simulated",
            "--num-cells",
            "150",
            "--num-genes",
            "30",
            "--latent-dim",
            "2",
            "--hidden",
            "16",
            "--steps",
            "20",
            "--eval-particles",
            "30",
            "--test-particles",
            "30",
            "--kl-warmup",
            "10",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    (run_dir,) = [p for p in tmp_path.glob("scvi/*") if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["summary"]["test"]["per_cell"]["marginal_log_likelihood"] is not None
    assert "latent_embedding.png" in report["files"]
