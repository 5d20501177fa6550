"""Bad data files give one-line DataErrors, never tracebacks, crashes or silent acceptance.

One test per kind of bad input a user can pass with ``--data`` (too few columns, complex or
boolean values, constant columns, overflowing magnitudes, empty or damaged NumPy files, h5ad
files with a corrupt sparse structure, no ``X`` or non-UTF-8 names, damaged gzip files and
out-of-range coordinates in a 10x directory), the command line's answer to a few of them (exit
status 2, one line on stderr, no run directory with a report left behind), and property-based
tests: random CSV text, random bytes and random sparse structures are either read correctly or
refused with a DataError, never any other exception.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from zoo.data import (
    npz_keys,
    read_npy,
    read_npz_member,
    read_numeric_table,
    validate_csr,
)
from zoo.errors import DataError
from zoo.models.bayes_linreg import BayesianLinearRegression
from zoo.models.diffusion import Diffusion
from zoo.models.free_energy import PredictiveCoding
from zoo.models.gmm import GaussianMixture
from zoo.models.normal_gamma import NormalGamma
from zoo.models.scvi import (
    load_counts,
    read_10x_mtx,
    read_count_csv,
    read_h5ad,
    write_h5ad,
)
from zoo.models.vae import read_array_file
from zoo.run import main

#: property tests: few examples, no deadline (file systems and h5py vary in speed)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _counts(n: int = 20, g: int = 6, seed: int = 0) -> np.ndarray:
    """A small count matrix with no empty cell."""
    m = np.random.default_rng(seed).poisson(2.0, size=(n, g)).astype(np.float32)
    m[:, 0] += 1
    return m


def _points(n: int = 40, d: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _write_csv(path: Path, values: np.ndarray, names: list[str]) -> Path:
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in values)
    path.write_text(",".join(names) + "\n" + rows + "\n")
    return path


def _replace(path: Path, name: str, values: np.ndarray) -> None:
    """Overwrite the dataset ``name`` of an HDF5 file with ``values``."""
    with h5py.File(path, "r+") as f:
        del f[name]
        f[name] = values


def _h5ad_with(tmp_path: Path, fmt: str, name: str, change) -> Path:
    """An h5ad file of :func:`_counts` whose ``X/<name>`` array is replaced by change(array)."""
    path = write_h5ad(tmp_path / f"{fmt}-{name}.h5ad", _counts(), fmt=fmt)
    with h5py.File(path, "r") as f:
        array = f[f"X/{name}"][:]
    _replace(path, f"X/{name}", change(array.copy()))
    return path


def _write_10x(directory: Path, m: np.ndarray, *, gz: bool = False, mtx: bytes | None = None):
    """A Cell Ranger directory of the cells x genes counts ``m`` (optionally gzipped)."""
    directory.mkdir()
    if mtx is None:
        buffer = io.BytesIO()
        scipy.io.mmwrite(buffer, sp.coo_matrix(m.T.astype(np.int64)))
        mtx = buffer.getvalue()
    files = {
        "matrix.mtx": mtx,
        "features.tsv": "".join(
            f"ENSG{j:05d}\tG{j}\tGene Expression\n" for j in range(m.shape[1])
        ).encode(),
        "barcodes.tsv": "".join(f"AAAC{i}-1\n" for i in range(m.shape[0])).encode(),
    }
    for name, raw in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return directory


def _mtx_text(m: np.ndarray, entries: list[tuple[int, int, float]] | None = None) -> bytes:
    """Matrix Market text of genes x cells for the cells x genes ``m``; ``entries`` (1-based
    row, column, value) replace the real ones when given."""
    genes, cells = m.shape[1], m.shape[0]
    if entries is None:
        coo = sp.coo_matrix(m.T)
        entries = list(zip(coo.row + 1, coo.col + 1, coo.data, strict=True))
    lines = ["%%MatrixMarket matrix coordinate integer general", f"{genes} {cells} {len(entries)}"]
    lines += [f"{r} {c} {v:g}" for r, c, v in entries]
    return ("\n".join(lines) + "\n").encode()


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------------
# CSV tables: columns, dtypes, constants, magnitudes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "options", "fragment"),
    [
        (BayesianLinearRegression, {}, "feature column and a target column"),
        (Diffusion, {}, "at least 2 dimensions"),
        (PredictiveCoding, {}, "--obs-dim is 8"),
    ],
)
def test_one_column_csv_is_refused_where_the_model_needs_more(tmp_path, model, options, fragment):
    path = _write_csv(tmp_path / "one.csv", _points(40, 1), ["x"])
    with pytest.raises(DataError) as exc:
        model(str(path), **options)
    _one_line(exc, fragment)


def test_one_column_csv_is_accepted_where_the_model_is_one_dimensional(tmp_path):
    path = _write_csv(tmp_path / "one.csv", _points(40, 1), ["x"])
    assert GaussianMixture(str(path), components=2).dim == 1
    assert NormalGamma(str(path)).num_data == 40


def test_boolean_csv_column_is_refused(tmp_path):
    path = tmp_path / "bool.csv"
    path.write_text("a,b\n" + "True,1.5\nFalse,2.5\n" * 10)
    with pytest.raises(DataError) as exc:
        read_numeric_table(path)
    _one_line(exc, "column 'a' holds true/false values")
    with pytest.raises(DataError) as exc:
        read_count_csv(path)
    _one_line(exc, "column 'a' holds true/false values")


def test_complex_csv_column_is_refused(tmp_path):
    path = tmp_path / "complex.csv"
    path.write_text("a,z\n" + "".join(f"{i},{i}+{i + 1}j\n" for i in range(10)))
    with pytest.raises(DataError) as exc:
        read_numeric_table(path)
    _one_line(exc, "column 'z' holds complex numbers")


def test_constant_column_is_refused_where_it_has_no_spread(tmp_path):
    values = _points(40, 3)
    values[:, 1] = 7.0
    path = _write_csv(tmp_path / "const.csv", values, ["a", "b", "c"])
    for model in (GaussianMixture, Diffusion):
        with pytest.raises(DataError) as exc:
            model(str(path))
        _one_line(exc, "column 'b' is constant (every row is 7)")
    with pytest.raises(DataError) as exc:
        BayesianLinearRegression(str(path))  # a constant feature cannot be standardised
    _one_line(exc, "constant")
    single = _write_csv(tmp_path / "same.csv", np.full((10, 1), 2.0), ["x"])
    assert NormalGamma(str(single)).num_data == 10  # the prior keeps the posterior proper


def test_huge_values_are_refused_with_the_figure(tmp_path):
    values = _points(40, 2)
    values[4, 1] = 1e300
    path = _write_csv(tmp_path / "huge.csv", values, ["a", "b"])
    for model in (GaussianMixture, BayesianLinearRegression, Diffusion):
        with pytest.raises(DataError) as exc:
            model(str(path))
        _one_line(exc, "a value of 1e+300 (data row 5, column 'b')", "1e+20", "rescale")
    np.save(tmp_path / "huge.npy", np.where(values > 1e10, 1e20, values))
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "huge.npy", 1e15)
    _one_line(exc, "a value of 1e+20", "1e+15")


def test_header_only_csv_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError) as exc:
        read_numeric_table(path)
    _one_line(exc)


# --------------------------------------------------------------------------------------------
# NumPy files
# --------------------------------------------------------------------------------------------
def test_complex_npy_is_refused(tmp_path):
    np.save(tmp_path / "c.npy", (_points(10, 3) + 1j).astype(np.complex128))
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "c.npy")
    _one_line(exc, "complex-valued (dtype complex128)")
    np.savez(tmp_path / "c.npz", x=np.ones((10, 3), dtype=np.complex64))
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "c.npz")
    _one_line(exc, "complex-valued (dtype complex64)")


def test_object_text_and_boolean_arrays(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[1, None]] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as exc:
        read_npy(tmp_path / "o.npy")
    _one_line(exc, "Python objects")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]] * 5))
    with pytest.raises(DataError) as exc:
        read_npy(tmp_path / "s.npy")
    _one_line(exc, "holds text")
    np.save(tmp_path / "b.npy", np.ones((5, 2), dtype=bool))
    with pytest.raises(DataError) as exc:
        read_npy(tmp_path / "b.npy", allow_bool=False)
    _one_line(exc, "booleans")
    values, _, _ = read_array_file(tmp_path / "b.npy")  # binary images are data for a VAE
    assert values.dtype == np.float64 and values.shape == (5, 2)


def test_zero_row_npy_is_refused(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((0, 4)))
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "z.npy")
    _one_line(exc, "shape (0, 4)", "at least 4 rows")


def test_truncated_npy_is_refused_before_allocating(tmp_path):
    np.save(tmp_path / "t.npy", _points(100, 8))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "t.npy")
    _one_line(exc, "truncated", "(100, 8)")
    # a header that declares an enormous array, with a few bytes behind it
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 10**6)}
    )
    (tmp_path / "big.npy").write_bytes(header.getvalue() + b"x" * 64)
    with pytest.raises(DataError) as exc:
        read_npy(tmp_path / "big.npy")
    _one_line(exc, "truncated")


def test_truncated_and_corrupt_npz_are_refused(tmp_path):
    np.savez_compressed(tmp_path / "a.npz", x=_points(200, 8), y=np.arange(200) % 3)
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "t.npz")
    _one_line(exc, "cannot read")
    # flip bytes inside the first member's compressed data (the directory stays intact)
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        info = archive.getinfo("x.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    corrupt = bytearray(raw)
    corrupt[start : start + 200] = bytes(b ^ 0xFF for b in corrupt[start : start + 200])
    (tmp_path / "c.npz").write_bytes(bytes(corrupt))
    with pytest.raises(DataError) as exc:
        read_array_file(tmp_path / "c.npz")
    _one_line(exc, "cannot read", "c.npz' [x]")


# --------------------------------------------------------------------------------------------
# h5ad files
# --------------------------------------------------------------------------------------------
BAD_INDPTR = {
    "decreasing": (lambda p: np.concatenate([p[:5], [p[7] + 3], p[6:]]), "decreases at row 5"),
    "short": (lambda p: p[:-3], "18 entries for 20 rows"),
    "past the end": (lambda p: p + np.r_[np.zeros(len(p) - 1, int), 5], "but there are"),
    "not from 0": (lambda p: p + 1, "starts at 1"),
    "floats": (lambda p: p.astype(np.float64), "integer"),
}


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("kind", list(BAD_INDPTR))
def test_h5ad_with_a_bad_indptr_is_refused(tmp_path, kind, backed):
    change, fragment = BAD_INDPTR[kind]
    path = _h5ad_with(tmp_path, "csr", "indptr", change)
    with pytest.raises(DataError) as exc:
        read_h5ad(path, backed=backed)
    _one_line(exc, "indptr", fragment)


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("bad", [100, -1, 6])
def test_h5ad_with_out_of_range_indices_is_refused(tmp_path, fmt, bad, backed):
    def change(indices: np.ndarray) -> np.ndarray:
        indices[3] = bad if fmt == "csr" or bad < 0 else bad + 14  # csc: rows 0..19
        return indices

    path = _h5ad_with(tmp_path, fmt, "indices", change)
    with pytest.raises(DataError) as exc:
        read_h5ad(path, backed=backed)
    minor = "column" if fmt == "csr" else "row"
    _one_line(exc, f"{minor} index", "(stored value 3,", "corrupt")


def test_h5ad_indices_are_validated_in_blocks():
    """A backed matrix's indices are read a block at a time, never whole."""
    reads: list[int] = []

    class Recorded:
        dtype = np.dtype(np.int32)

        def __init__(self, values: np.ndarray) -> None:
            self.values = values
            self.shape = values.shape

        def __getitem__(self, key: slice) -> np.ndarray:
            part = self.values[key]
            reads.append(len(part))
            return part

    m = sp.csr_matrix(_counts(50, 9))
    validate_csr(m.indptr, Recorded(m.indices), m.shape, "m", block=16)
    assert max(reads) <= 16 and sum(reads) == m.nnz
    m.indices[-1] = 9
    with pytest.raises(DataError, match="column index 9"):
        validate_csr(m.indptr, Recorded(m.indices), m.shape, "m", block=16)


def test_h5ad_without_x_is_refused(tmp_path):
    path = write_h5ad(tmp_path / "nox.h5ad", _counts(), layers={"spliced": _counts(seed=1)})
    with h5py.File(path, "r+") as f:
        del f["X"]
    with pytest.raises(DataError) as exc:
        read_h5ad(path)
    _one_line(exc, "has no matrix X", "spliced")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["data"] = np.zeros(3)
    (tmp_path / "plain.h5").rename(tmp_path / "plain.h5ad")
    with pytest.raises(DataError) as exc:
        load_counts(tmp_path / "plain.h5ad", backed=True)
    _one_line(exc, "has no matrix X")


def test_h5ad_complex_boolean_and_huge_counts_are_refused(tmp_path):
    m = _counts()
    for name, matrix, fmt, fragment in (
        ("complex", m.astype(np.complex64), "csr", "complex-valued"),
        ("bool", m > 0, "dense", "booleans"),
        ("huge", m.astype(np.float64) * 1e300, "csr", "2^24 = 16777216"),
    ):
        path = write_h5ad(tmp_path / f"{name}.h5ad", matrix, fmt=fmt)
        for backed in (False, True):
            with pytest.raises(DataError) as exc:
                read_h5ad(path, backed=backed)
            _one_line(exc, fragment)


def test_h5ad_latin1_gene_names_are_refused(tmp_path):
    path = write_h5ad(tmp_path / "latin.h5ad", _counts())
    names = [f"g\xe9ne{j}".encode("latin-1") for j in range(6)]
    with h5py.File(path, "r+") as f:
        del f["var/_index"]
        ds = f["var"].create_dataset("_index", (6,), dtype=h5py.string_dtype())
        ds[...] = names
    with pytest.raises(DataError) as exc:
        read_h5ad(path)
    _one_line(exc, "var names", "not UTF-8", "0xe9")


def test_truncated_h5ad_is_refused(tmp_path):
    path = write_h5ad(tmp_path / "x.h5ad", _counts())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as exc:
        read_h5ad(path)
    _one_line(exc, "cannot read")


# --------------------------------------------------------------------------------------------
# 10x matrix directories
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("name", ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"])
def test_10x_corrupt_gz_is_refused(tmp_path, name, damage):
    directory = _write_10x(tmp_path / "tenx", _counts(), gz=True)
    raw = (directory / name).read_bytes()
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # flip the deflate stream, keep the gzip header and trailer
        raw = raw[:12] + bytes(b ^ 0x5A for b in raw[12:-8]) + raw[-8:]
    (directory / name).write_bytes(raw)
    with pytest.raises(DataError) as exc:
        load_counts(directory)
    _one_line(exc, name, "corrupt or truncated gzip file")


def test_10x_latin1_gene_names_are_refused(tmp_path):
    m = _counts()
    directory = _write_10x(tmp_path / "tenx", m)
    text = "".join(f"ENSG{j}\tg\xe9ne{j}\tGene Expression\n" for j in range(m.shape[1]))
    (directory / "features.tsv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_10x_mtx(directory)
    _one_line(exc, "features.tsv': line 1 is not UTF-8 text (byte 0xe9")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ((7, 1, 3), "row 7, outside 1..6"),
        ((0, 1, 3), "row 0, outside 1..6"),
        ((1, 21, 3), "column 21, outside 1..20"),
        ((-2, 1, 3), "row -2"),
    ],
)
def test_10x_coordinates_outside_the_shape_are_refused(tmp_path, entry, fragment):
    m = _counts()
    coo = sp.coo_matrix(m.T)
    entries = [entry, *list(zip(coo.row + 1, coo.col + 1, coo.data, strict=True))[1:]]
    directory = _write_10x(tmp_path / "tenx", m, mtx=_mtx_text(m, entries))
    with pytest.raises(DataError) as exc:
        read_10x_mtx(directory)
    _one_line(exc, "entry 1 has", fragment)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda t: t.replace(b"integer", b"complex"), "complex Matrix Market matrix"),
        (lambda t: t.replace(b"6 20 ", b"6 20 99999", 1), "declares 99999"),
        (lambda t: t.replace(b"\n1 1 ", b"\n1 1 x", 1), "cannot read"),
        (lambda t: t.replace(b"6 20 ", b"600000000 20 ", 1), "600000000 rows"),
    ],
)
def test_10x_malformed_matrix_market_is_refused(tmp_path, change, fragment):
    m = _counts()
    directory = _write_10x(tmp_path / "tenx", m, mtx=change(_mtx_text(m)))
    with pytest.raises(DataError) as exc:
        read_10x_mtx(directory)
    _one_line(exc, fragment)


# --------------------------------------------------------------------------------------------
# the command line: exit status 2, one line on stderr, no report left behind
# --------------------------------------------------------------------------------------------
def _bad_h5ad(tmp_path: Path) -> Path:
    def change(indices: np.ndarray) -> np.ndarray:
        indices[3] = 10_000
        return indices

    return _h5ad_with(tmp_path, "csr", "indices", change)


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    huge = _points(40, 2)
    huge[2, 0] = 1e300
    _write_csv(tmp_path / "huge.csv", huge, ["a", "b"])
    np.save(tmp_path / "complex.npy", np.ones((10, 4), dtype=np.complex128))
    _write_csv(tmp_path / "one.csv", _points(40, 1), ["x"])
    h5ad = str(_bad_h5ad(tmp_path))
    return {
        "scvi-in-memory": ["scvi", "--data", h5ad],
        "scvi-backed": ["scvi", "--data", h5ad, "--backed", "true"],
        "gmm-huge": ["gmm", "--data", str(tmp_path / "huge.csv")],
        "vae-complex": ["vae", "--data", str(tmp_path / "complex.npy")],
        "diffusion-one-column": ["diffusion", "--data", str(tmp_path / "one.csv")],
    }


@pytest.mark.parametrize(
    "case", ["scvi-in-memory", "scvi-backed", "gmm-huge", "vae-complex", "diffusion-one-column"]
)
def test_cli_bad_data_is_one_line_and_exit_2(tmp_path, capsys, case):
    argv = _bad_inputs(tmp_path)[case]
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        code = main([*argv, "--quick", "--quiet", "--run-dir", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m zoo.run: error: "), captured.err
    assert captured.out == ""
    assert not run_dir.exists()
    assert not list(tmp_path.rglob("report.json"))


def test_cli_corrupt_sparse_h5ad_in_a_process(tmp_path, cli):
    """The out-of-range indices that used to be written out of bounds (a segfault or a report
    on wrong counts): exit status 2 and one line, in a real process."""
    path = _bad_h5ad(tmp_path)
    out = cli("scvi", "--data", str(path), "--quick", "--quiet", "--out", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "column index 10000" in out.stderr
    assert not list((tmp_path / "runs").rglob("report.json"))


# --------------------------------------------------------------------------------------------
# properties: accept valid data or raise DataError, never anything else
# --------------------------------------------------------------------------------------------
CSV_TOKENS = st.sampled_from(
    ["1", "-2.5", "0", "1e300", "nan", "inf", "", "x", "True", "1+2j", '"', "é", " ", "1e-320"]
)
CSV_TEXT = st.lists(
    st.lists(CSV_TOKENS, min_size=1, max_size=4).map(",".join), min_size=0, max_size=8
).map("\n".join)


@PROPERTY
@given(header=st.sampled_from(["a,b", "a", "cell,g1,g2", "label,x,y", ""]), body=CSV_TEXT)
def test_random_csv_is_read_or_refused(tmp_path, header, body):
    path = tmp_path / "random.csv"
    path.write_text(header + "\n" + body, encoding="utf-8")
    try:
        values, names = read_numeric_table(path)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.isfinite(values).all() and values.shape[1] == len(names)
        assert np.abs(values).max() <= 1e20
    try:
        data = read_count_csv(path)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        dense = data.source.to_csr().toarray()
        assert (dense >= 0).all() and (dense == np.round(dense)).all()


#: first-column names and labels of both orientations of a count CSV
CSV_LABELS = st.sampled_from(
    ["", "gene", "cell", "ENSG00000141510", "AAACCTGAGAAGGCCT-1", "Cell_1", "CD3E", "g1", "7"]
)


@PROPERTY
@given(
    labels=st.lists(CSV_LABELS, min_size=1, max_size=4),
    body=CSV_TEXT,
    genes_in_rows=st.booleans(),
)
def test_random_csv_of_either_orientation_is_read_or_refused(tmp_path, labels, body, genes_in_rows):
    """Random labels (gene IDs, barcodes, cell and gene names) in the header and the first
    column, random values: read (as many names as cells and genes) or one line."""
    path = tmp_path / "oriented.csv"
    rows = [f"{labels[i % len(labels)]},{line}" for i, line in enumerate(body.splitlines())]
    path.write_text(",".join(labels) + "\n" + "\n".join(rows), encoding="utf-8")
    try:
        data = read_count_csv(path, genes_in_rows=genes_in_rows)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        n, g = data.source.shape
        assert len(data.cell_names) == n and len(data.gene_names) == g


@PROPERTY
@given(raw=st.binary(max_size=400), cut=st.integers(0, 400), suffix=st.sampled_from([0, 1, 2]))
def test_random_or_damaged_bytes_are_read_or_refused(tmp_path, raw, cut, suffix):
    """Random bytes, and valid .npy/.npz/.csv.gz files cut short or with random bytes spliced
    in, as every kind of file a loader opens."""
    good = io.BytesIO()
    if suffix == 0:
        np.save(good, _points(10, 3))
    elif suffix == 1:
        np.savez_compressed(good, x=_points(10, 3))
    else:
        good.write(gzip.compress(b"a,b\n1,2\n3,4\n5,6\n"))
    damaged = good.getvalue()[:cut] + raw + good.getvalue()[cut + len(raw) :]
    for content in (raw, damaged):
        for name in ("f.npy", "f.npz", "f.h5ad", "f.csv.gz"):
            path = tmp_path / name
            path.write_bytes(content)
            loaders = {
                "f.npy": lambda p: read_array_file(p),
                "f.npz": lambda p: read_array_file(p),
                "f.h5ad": lambda p: read_h5ad(p, backed=True),
                "f.csv.gz": lambda p: read_count_csv(p),
            }
            try:
                loaders[name](path)
            except DataError as exc:
                assert "\n" not in str(exc)
        tenx = tmp_path / "tenx"
        if not tenx.exists():
            _write_10x(tenx, _counts(), gz=True)
        (tenx / "matrix.mtx.gz").write_bytes(content)
        try:
            read_10x_mtx(tenx)
        except DataError as exc:
            assert "\n" not in str(exc)


@st.composite
def sparse_structures(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """(indices, indptr, rows) of a CSR matrix with 6 columns: valid, or with one random defect
    (an index out of range, a row pointer entry moved, the row pointer cut or extended)."""
    lengths = draw(st.lists(st.integers(0, 4), min_size=1, max_size=6))
    nnz = sum(lengths)
    indices = draw(st.lists(st.integers(0, 5), min_size=nnz, max_size=nnz))
    indptr = [0, *np.cumsum(lengths).tolist()]
    damage = draw(st.sampled_from(["none", "index", "indptr", "length"]))
    if damage == "index" and nnz:
        bad = draw(st.sampled_from([-1, 6, 100, -(2**31), 2**40]))
        indices[draw(st.integers(0, nnz - 1))] = bad
    elif damage == "indptr":
        indptr[draw(st.integers(0, len(indptr) - 1))] = draw(st.integers(-3, nnz + 3))
    elif damage == "length":
        indptr = indptr[:-1] if draw(st.booleans()) else [*indptr, nnz]
    return indices, indptr, len(lengths)


@PROPERTY
@given(structure=sparse_structures(), backed=st.booleans())
def test_random_sparse_structure_is_read_correctly_or_refused(tmp_path, structure, backed):
    """An h5ad whose X has a random row pointer and column indices: either refused, or every
    row read equals what scipy builds from a structure it checks fully itself."""
    indices, pointer = np.array(structure[0], dtype=np.int64), np.array(structure[1])
    data = np.ones(len(indices), dtype=np.float32)
    path = write_h5ad(tmp_path / "r.h5ad", sp.csr_matrix(np.ones((structure[2], 6))))
    for name, values in (("data", data), ("indices", indices), ("indptr", pointer)):
        _replace(path, f"X/{name}", values)
    try:
        loaded = read_h5ad(path, backed=backed)
    except DataError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return
    event("accepted")
    reference = sp.csr_matrix((data, indices, pointer), shape=loaded.source.shape)
    reference.check_format(full_check=True)  # what was accepted is a valid CSR matrix
    got = loaded.source.rows(np.arange(loaded.num_cells))
    np.testing.assert_array_equal(got, reference.toarray())


@PROPERTY
@given(
    entries=st.lists(
        st.tuples(st.integers(-1, 8), st.integers(-1, 22), st.integers(0, 5)), max_size=12
    ),
    declared=st.integers(0, 14),
)
def test_random_mtx_coordinates_are_read_or_refused(tmp_path, entries, declared):
    m = _counts()
    text = _mtx_text(m, entries)
    lines = text.split(b"\n")
    lines[1] = f"6 20 {declared}".encode()
    directory = tmp_path / "tenx"
    if not directory.exists():
        _write_10x(directory, m)
    (directory / "matrix.mtx").write_bytes(b"\n".join(lines))
    try:
        data = read_10x_mtx(directory)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert declared == len(entries)
    assert all(1 <= r <= 6 and 1 <= c <= 20 for r, c, _ in entries)
    expected = np.zeros((20, 6))
    for r, c, v in entries:
        expected[c - 1, r - 1] += v
    np.testing.assert_array_equal(data.source.to_csr().toarray(), expected)


def test_npz_helpers_list_and_read_members(tmp_path):
    np.savez(tmp_path / "a.npz", x=_points(5, 2), labels=np.array(["a", "b", "a", "b", "a"]))
    assert sorted(npz_keys(tmp_path / "a.npz")) == ["labels", "x"]
    assert read_npz_member(tmp_path / "a.npz", "x").shape == (5, 2)
    with pytest.raises(DataError, match="holds text"):
        read_npz_member(tmp_path / "a.npz", "labels")
    assert read_npz_member(tmp_path / "a.npz", "labels", allow_text=True)[1] == "b"
