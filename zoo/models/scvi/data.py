"""Single-cell count data for ``scvi``: scanpy's bundled PBMC data, 10x ``.mtx`` directories,
CSV files, and :func:`load_counts`, which picks the reader by the path.

- :func:`load_pbmc68k_reduced`: scanpy's ``10x_pbmc68k_reduced.h5ad`` (700 cells x 765 genes,
  10 ``bulk_labels`` cell types), which ships inside scanpy's wheel: no download. Its ``raw.X``
  is log-normalised, ``log1p(1e4 * count / n_counts)`` with ``n_counts`` the cell's total over
  *all* genes before the 765 were selected, so the integer counts are recovered exactly as
  ``round(expm1(raw.X) * n_counts / 1e4)`` (every value lies within 0.09 of an integer). The
  file is found with :func:`importlib.util.find_spec`, which does not execute scanpy: installing
  scanpy with ``pip install --no-deps scanpy`` is enough, and only h5py reads the file.
- :func:`read_h5ad`: the anndata on-disk format
  (:mod:`~zoo.models.scvi.h5ad`; backed reading in :mod:`~zoo.models.scvi.hdf5`).
- :func:`read_10x_mtx`: a Cell Ranger matrix directory (Zheng et al. 2017, "Massively parallel
  digital transcriptional profiling of single cells", Nat. Commun.): ``matrix.mtx``
  (genes x cells), ``genes.tsv``/``features.tsv`` and ``barcodes.tsv``, each optionally gzipped.
- :func:`read_count_csv`: one row per cell, one numeric column per gene; a first text column
  is the cell name and a column named like a label (``cell_type``, ``label``...) the labels.
  With ``genes_in_rows`` (``--genes-in-rows true``), one row per gene and one column per cell,
  as R's ``write.csv`` of a count matrix writes it (scanpy reads such a file with
  ``sc.read_csv(path).T``). A file whose own labels say it is the other way round (gene IDs
  or names down its first column, cell barcodes or names across its header, a first column
  named ``gene``...) is refused in one line naming the option, never read transposed.

Everything a user can get wrong (a missing file, an unknown layer, values that are not counts,
a damaged file) is a one-line :class:`~zoo.errors.DataError`: every sparse matrix's structure
(row pointer, column indices, or 10x coordinates) is validated before any of it is used
(:func:`zoo.data.validate_csr`).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from zoo.data import READ_ERRORS, check_header
from zoo.errors import DataError, first_line
from zoo.models.scvi.anndata_io import (
    anndata_available,
    count_data_from_anndata,
    in_memory_counts,
    read_h5ad_with_anndata,
)
from zoo.models.scvi.counts import (
    LABEL_KEYS,
    CountData,
    CountSource,
    InMemoryCounts,
    check_counts,
    check_shape,
    finish_count_data,
)
from zoo.models.scvi.h5ad import frame_index, frame_numeric, labels_from_frame, read_h5ad_h5py
from zoo.models.scvi.hdf5 import BackedCSRCounts, matrix_shape, read_sparse
from zoo.outputs import is_anndata

#: the refusal of ``genes_in_rows`` for data other than a CSV file
GENES_IN_ROWS_CSV_ONLY = (
    "genes_in_rows (--genes-in-rows) applies to a CSV or TSV --data file, not {data}: "
    "an h5ad file and a 10x matrix say themselves which axis is cells"
)
PBMC_FILE = "10x_pbmc68k_reduced.h5ad"
#: pip command that makes the bundled data available without scanpy's dependencies
PBMC_INSTALL = "pip install --no-deps scanpy==1.11.5"


# --------------------------------------------------------------------------------------------
# scanpy's bundled PBMC data
# --------------------------------------------------------------------------------------------
def pbmc68k_reduced_path() -> Path:
    """Where scanpy's wheel put ``10x_pbmc68k_reduced.h5ad`` (scanpy is located, not run)."""
    try:
        spec = importlib.util.find_spec("scanpy")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "datasets" / PBMC_FILE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"the bundled PBMC data ({PBMC_FILE}) ships inside scanpy's wheel, which is not "
        f"installed; `{PBMC_INSTALL}` installs the file alone (or pass your own --data)"
    )


def recover_pbmc_counts(
    log_normalised: np.ndarray, total_counts: np.ndarray, *, tolerance: float = 0.25
) -> np.ndarray:
    """Counts from log1p(1e4 * count / total) values: ``round(expm1(v) * total / 1e4)``.

    ``total_counts`` has one entry per value (the value's cell total). A value further than
    ``tolerance`` from an integer before rounding means the data were not made this way.
    """
    raw = np.expm1(np.asarray(log_normalised, dtype=np.float64)) * total_counts / 1e4
    counts = np.round(raw)
    if raw.size and np.abs(raw - counts).max() > tolerance:
        worst = float(np.abs(raw - counts).max())
        raise DataError(
            f"recovered counts are up to {worst:.3f} from an integer: not log1p(1e4 x / n_counts)"
        )
    return counts


def load_pbmc68k_reduced(*, backed: bool = False, path: str | Path | None = None) -> CountData:
    """scanpy's ``pbmc68k_reduced``: 700 cells x 765 genes, UMI counts recovered from its
    log-normalised ``raw.X`` (CSR in the file) and ``obs.n_counts``; labels ``bulk_labels``
    (10 cell types). ``backed=True`` reads rows from the file on demand, recovering each
    mini-batch's counts as it is read."""
    import h5py

    path = Path(path) if path is not None else pbmc68k_reduced_path()
    with h5py.File(path, "r") as f:
        node_path = "raw.X" if "raw.X" in f else "raw/X"
        node = f[node_path]
        num_cells, num_genes = matrix_shape(node)
        totals = np.asarray(frame_numeric(f, "obs", "n_counts"), dtype=np.float64)
        cells = frame_index(f, "obs")
        genes = frame_index(f, "raw.var" if "raw.var" in f else "raw/var")
        labels, key = labels_from_frame(f, "obs", "bulk_labels", repr(str(path)))

        def transform(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return recover_pbmc_counts(values, totals[rows]).astype(np.float32)

        source: CountSource
        if backed:
            source = BackedCSRCounts(path, node_path, num_genes, value_transform=transform)
        else:
            csr = read_sparse(node, "csr_matrix")
            rows = np.repeat(np.arange(num_cells), np.diff(csr.indptr))
            csr.data = transform(csr.data, rows)
            csr.eliminate_zeros()
            source = InMemoryCounts(csr)
    return finish_count_data(
        source, cells, genes, labels, key, "pbmc68k_reduced (scanpy) raw counts"
    )


# --------------------------------------------------------------------------------------------
# 10x matrix directories and CSV files
# --------------------------------------------------------------------------------------------
def _find(directory: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_binary(path: Path) -> Any:
    """A file opened for reading bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_failure(path: Path, exc: BaseException) -> DataError:
    """A one-line error for a file that could not be read or decompressed."""
    damaged = isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile)
    if path.suffix == ".gz" and damaged:
        return DataError(
            f"cannot read {str(path)!r}: corrupt or truncated gzip file ({first_line(exc)})"
        )
    return DataError(f"cannot read {str(path)!r}: {first_line(exc)}")


def _read_tsv(path: Path) -> list[list[str]]:
    """The tab-separated fields of every non-blank line; text must be UTF-8."""
    rows = []
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{str(path)!r}: line {number} is not UTF-8 text (byte "
                        f"0x{raw[exc.start]:02x} in {raw[:40]!r}); re-save the file as UTF-8"
                    ) from None
                if line.strip():
                    rows.append(line.rstrip("\r\n").split("\t"))
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(path, exc) from None
    return rows


#: Matrix Market fields that can hold counts
_MTX_FIELDS = ("integer", "real", "double")


def _mtx_header(handle: Any, where: str) -> tuple[str, str, list[int]]:
    """(format, field, sizes) from a Matrix Market header: ``coordinate`` sizes are (rows,
    columns, entries), ``array`` sizes (rows, columns)."""
    header = handle.readline()
    tokens = header.decode("ascii", "replace").split()
    if len(tokens) != 5 or tokens[0].lower() != "%%matrixmarket" or tokens[1].lower() != "matrix":
        raise DataError(f"{where} is not a Matrix Market matrix (first line {header[:60]!r})")
    fmt, field, symmetry = (t.lower() for t in tokens[2:])
    if fmt not in ("coordinate", "array"):
        raise DataError(f"{where}: unknown Matrix Market format {fmt!r}")
    if field not in _MTX_FIELDS:
        raise DataError(
            f"{where}: a {field} Matrix Market matrix holds no counts (integer or real needed)"
        )
    if symmetry != "general":
        raise DataError(f"{where}: a {symmetry} Matrix Market matrix is not genes x cells counts")
    line = handle.readline()
    while line and (not line.strip() or line.lstrip().startswith(b"%")):
        line = handle.readline()
    size = line.decode("ascii", "replace").split()
    expected = 3 if fmt == "coordinate" else 2
    if len(size) != expected or not all(t.isdigit() for t in size):
        raise DataError(
            f"{where}: the size line {line[:60]!r} is not {expected} non-negative integers"
        )
    return fmt, field, [int(t) for t in size]


def _mtx_entries(handle: Any, columns: int, count: int, where: str) -> list[np.ndarray]:
    """The ``count`` entries after a Matrix Market header: ``columns`` numbers per line (two
    1-based coordinates as integers, then the value), one array per column."""
    import pandas as pd

    dtypes = {j: np.int64 for j in range(columns - 1)} | {columns - 1: np.float64}
    try:
        frame = pd.read_csv(handle, sep=r"\s+", header=None, comment="%", dtype=dtypes)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame({j: np.zeros(0, dtype=dtypes[j]) for j in range(columns)})
    except (EOFError, zlib.error, OSError):
        raise  # a damaged file, not a malformed entry: the caller names it
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as Matrix Market: {first_line(exc)}") from None
    if frame.shape[1] != columns:
        raise DataError(
            f"{where}: Matrix Market entries have {frame.shape[1]} numbers per line, not {columns}"
        )
    if len(frame) != count:
        raise DataError(f"{where}: the header declares {count} entries but {len(frame)} follow")
    return [frame[j].to_numpy() for j in range(columns)]


def read_mtx_counts(path: Path, num_genes: int, num_cells: int) -> sp.csr_matrix:
    """A Matrix Market file of genes x cells as a cells x genes CSR matrix.

    The header must declare ``num_genes`` rows and ``num_cells`` columns (checked before any
    entry is read); coordinate entries must be 1-based within that shape (checked before the
    matrix is built) and their number must match the header's. Integer or real values,
    ``general`` symmetry, ``coordinate`` or ``array`` layout; optionally gzipped."""
    where = repr(str(path))
    try:
        with _open_binary(path) as handle:
            fmt, _, sizes = _mtx_header(handle, where)
            rows, cols = sizes[0], sizes[1]
            if (rows, cols) != (num_genes, num_cells):
                raise DataError(
                    f"{where} declares {rows} rows x {cols} columns but the directory names "
                    f"{num_genes} genes and {num_cells} barcodes"
                )
            if fmt == "array":
                (values,) = _mtx_entries(handle, 1, rows * cols, where)
                return sp.csr_matrix(values.reshape(cols, rows))
            row, col, values = _mtx_entries(handle, 3, sizes[2], where)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(path, exc) from None
    for name, index, size in (("row", row, rows), ("column", col, cols)):
        bad = (index < 1) | (index > size)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: entry {k + 1} has {name} {int(index[k])}, outside 1..{size} "
                "(coordinates are 1-based within the declared shape)"
            )
    return sp.csr_matrix(sp.coo_matrix((values, (col - 1, row - 1)), shape=(cols, rows)))


def read_10x_mtx(
    directory: str | Path, *, allow_non_counts: bool = False, gene_symbols: bool = True
) -> CountData:
    """A Cell Ranger matrix directory: ``matrix.mtx`` (genes x cells, Matrix Market),
    ``genes.tsv`` (v2) or ``features.tsv`` (v3; only "Gene Expression" features are kept) and
    ``barcodes.tsv``, each optionally ``.gz``. Gene names are the symbols (second column)
    unless ``gene_symbols=False`` (the IDs). Text must be UTF-8; a corrupt or truncated
    ``.gz``, coordinates outside the declared shape, or a shape that disagrees with the gene
    and barcode lists is a one-line :class:`DataError`."""
    directory = Path(directory)
    where = repr(str(directory))
    if not directory.is_dir():
        raise DataError(f"10x matrix directory {where} does not exist")
    matrix_path = _find(directory, ["matrix.mtx"])
    genes_path = _find(directory, ["features.tsv", "genes.tsv"])
    barcodes_path = _find(directory, ["barcodes.tsv"])
    missing = [
        name
        for name, found in (
            ("matrix.mtx", matrix_path),
            ("genes.tsv or features.tsv", genes_path),
            ("barcodes.tsv", barcodes_path),
        )
        if found is None
    ]
    if missing or matrix_path is None or genes_path is None or barcodes_path is None:
        raise DataError(f"{where} is not a 10x matrix directory: no {', '.join(missing)}")
    genes = _read_tsv(genes_path)
    barcodes = [row[0] for row in _read_tsv(barcodes_path)]
    try:
        with _open_binary(matrix_path) as handle:
            _, _, sizes = _mtx_header(handle, repr(str(matrix_path)))
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise _read_failure(matrix_path, exc) from None
    if len(genes) != sizes[0]:
        raise DataError(
            f"{where}: {len(genes)} genes in {genes_path.name} but {sizes[0]} rows in "
            f"{matrix_path.name}"
        )
    if len(barcodes) != sizes[1]:
        raise DataError(
            f"{where}: {len(barcodes)} barcodes in {barcodes_path.name} but "
            f"{sizes[1]} columns in {matrix_path.name}"
        )
    matrix = read_mtx_counts(matrix_path, len(genes), len(barcodes))  # cells x genes
    keep = np.array([len(row) < 3 or row[2] == "Gene Expression" for row in genes])
    if not keep.all():
        matrix = matrix[:, np.flatnonzero(keep)]
        genes = [row for row, k in zip(genes, keep, strict=True) if k]
    names = [row[1] if gene_symbols and len(row) > 1 else row[0] for row in genes]
    check_shape(*matrix.shape, where)
    check_counts(matrix.data, where, allow_non_counts=allow_non_counts)
    return finish_count_data(
        InMemoryCounts(matrix),
        np.array(barcodes, dtype=object),
        np.array(names, dtype=object),
        None,
        None,
        f"10x matrix {directory.name}",
    )


def read_count_csv(
    path: str | Path,
    *,
    label_key: str | None = None,
    allow_non_counts: bool = False,
    genes_in_rows: bool = False,
) -> CountData:
    """A CSV (or TSV) with one row per cell and one numeric column per gene. A first column of
    text is the cell names; a text column named ``label_key`` (or one of :data:`LABEL_KEYS`)
    holds the labels. Any other text column is an error.

    ``genes_in_rows``: one row per gene and one numeric column per cell instead (a first column
    of text is the gene names, the header the cell names; such a file holds no labels). Where
    the file's labels say it is the other way round from what ``genes_in_rows`` says
    (:func:`orientation_clue`), a one-line :class:`DataError` names the option."""
    import pandas as pd

    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {where} does not exist")
    sep = "\t" if path.name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
    try:
        frame = pd.read_csv(path, sep=sep)
    except READ_ERRORS as exc:
        raise DataError(f"cannot read {where} as CSV: {first_line(exc)}") from None
    check_header(frame, where)
    if frame.shape[1] == 0 or len(frame) == 0:
        raise DataError(f"{where} has no data rows")
    for name in frame.columns:
        if pd.api.types.is_bool_dtype(frame[name]):
            raise DataError(
                f"{where}: column {str(name)!r} holds true/false values, not counts "
                "(write them as 1 and 0)"
            )
    if genes_in_rows:
        return _read_genes_by_cells(frame, path, label_key, allow_non_counts)
    numeric = set(frame.select_dtypes(include="number").columns)
    cells = None
    first = frame.columns[0]
    if label_key is not None:
        is_label = first == label_key
    else:
        is_label = str(first).strip().lower() in LABEL_KEYS
    if first not in numeric and not is_label:
        cells = frame[first].astype(str).to_numpy(dtype=object)
        frame = frame.drop(columns=first)
    labels, key = None, None
    wanted = (
        [label_key]
        if label_key is not None
        else [c for c in frame.columns if str(c).strip().lower() in LABEL_KEYS]
    )
    if label_key is not None and label_key not in frame.columns:
        raise DataError(f"{where} has no column {label_key!r}")
    if wanted:
        key = wanted[0]
        labels = frame[key].astype(str).to_numpy(dtype=object)
        frame = frame.drop(columns=key)
    row_key = None if cells is None else first
    columns = [c for c in frame.columns if c in numeric]
    clue = orientation_clue(row_key, cells, columns, genes_in_rows=False)
    if clue is not None:
        raise DataError(
            f"{where} looks like genes x cells: {clue}; if each row is a gene and each column "
            "a cell (R's write.csv of a count matrix), pass genes_in_rows=True "
            "(--genes-in-rows true)"
        )
    _check_numeric(
        frame,
        numeric,
        where,
        "a count CSV has one row per cell, a first column of cell names and one numeric "
        "column per gene",
        "gene",
    )
    values = frame.to_numpy(dtype=np.float64)
    check_shape(*values.shape, where)
    check_counts(values, where, allow_non_counts=allow_non_counts)
    return finish_count_data(
        InMemoryCounts(values),
        cells,
        np.array(frame.columns, dtype=object),
        labels,
        key,
        f"CSV {path.name}",
    )


def _check_numeric(frame: Any, numeric: set, where: str, layout: str, unit: str) -> None:
    """A one-line :class:`DataError` naming the first column of ``frame`` that is not numeric
    (with its first unparsable value and the ``layout`` expected), or where none is left."""
    import pandas as pd

    text = [c for c in frame.columns if c not in numeric]
    if text:
        column = frame[text[0]]
        unparsed = column[pd.to_numeric(column, errors="coerce").isna()]
        bad = unparsed.iloc[0] if len(unparsed) else column.iloc[0]
        raise DataError(f"{where}: column {text[0]!r} is not numeric (value {bad!r}); {layout}")
    if frame.shape[1] == 0:
        raise DataError(f"{where} has no {unit} (numeric) column")


def _read_genes_by_cells(
    frame: Any, path: Path, label_key: str | None, allow_non_counts: bool
) -> CountData:
    """:func:`read_count_csv` of a genes x cells table (``genes_in_rows``), as cells x genes."""

    where = repr(str(path))
    if label_key is not None:
        raise DataError(
            f"{where}: label_key {label_key!r} names a column, but with genes_in_rows the "
            "columns are cells: a genes x cells CSV holds no cell labels"
        )
    numeric = set(frame.select_dtypes(include="number").columns)
    genes = None
    first = frame.columns[0]
    if first not in numeric:
        genes = frame[first].astype(str).to_numpy(dtype=object)
        frame = frame.drop(columns=first)
    columns = [c for c in frame.columns if c in numeric]
    clue = orientation_clue(None if genes is None else first, genes, columns, genes_in_rows=True)
    if clue is not None:
        raise DataError(
            f"{where} looks like cells x genes: {clue}; genes_in_rows=True "
            "(--genes-in-rows true) reads each row as a gene: leave it out to read one row "
            "per cell"
        )
    _check_numeric(
        frame,
        numeric,
        where,
        "with genes_in_rows a count CSV has one row per gene, a first column of gene names "
        "and one numeric column per cell",
        "cell",
    )
    values = np.ascontiguousarray(frame.to_numpy(dtype=np.float64).T)
    check_shape(*values.shape, where)
    check_counts(values, where, allow_non_counts=allow_non_counts)
    cells = np.array([str(c) for c in frame.columns], dtype=object)
    return finish_count_data(InMemoryCounts(values), cells, genes, None, None, f"CSV {path.name}")


# --------------------------------------------------------------------------------------------
# Which way round a count CSV is
# --------------------------------------------------------------------------------------------
#: a label that names a gene: an Ensembl gene ID (``ENSG00000141510``, ``ENSMUSG...``, with or
#: without its version) or a generic gene name (``gene12``, ``Gene_12``, ``feature3``)
_GENE_LABEL = re.compile(r"ENS[A-Z]*G\d{6,}(\.\d+)?|(?i:(gene|feature)s?[\W_]*\d+)")
#: a label that names a cell: a sequenced barcode (8 or more bases, as 10x's 16 with its "-1"
#: suffix, with any sample prefix or suffix) or a generic cell name (``cell12``, ``Cell_12``,
#: ``barcode3``)
_CELL_LABEL = re.compile(
    r"([\w.]*[_:.-])?[ACGTN]{8,}([_:.-][\w.]*)?|(?i:(cell|barcode)s?[\W_]*\d+)"
)
#: first-column names that say the rows are genes (``gene``, ``gene_id``, ``symbol``,
#: ``ensembl_gene_id``...), and those that say they are cells (``cell``, ``barcode``...)
_GENE_KEY = re.compile(r"(ensembl_)?(gene|feature)s?(_?(id|name|symbol)s?)?|symbols?|ensembl(_id)?")
_CELL_KEY = re.compile(r"(cell|barcode)s?(_?(id|name|barcode)s?)?|obs_names")
#: the labels of each side that are looked at (the first ones)
_LABELS_READ = 2000


def _label_lean(labels: Sequence[Any] | None) -> tuple[float, str | None, str | None]:
    """How far ``labels`` lean to genes: (gene-like - cell-like) / labels, in [-1, 1] (0 for
    none), with the first gene-like and the first cell-like label (None where none is)."""
    if labels is None or len(labels) == 0:
        return 0.0, None, None
    seen = [str(label).strip() for label in list(labels[:_LABELS_READ])]
    genes = [label for label in seen if _GENE_LABEL.fullmatch(label)]
    cells = [label for label in seen if _CELL_LABEL.fullmatch(label)]
    lean = (len(genes) - len(cells)) / len(seen)
    return lean, genes[0] if genes else None, cells[0] if cells else None


def _key(name: Any) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def orientation_clue(
    row_key: Any,
    row_labels: Sequence[Any] | None,
    column_names: Sequence[Any],
    *,
    genes_in_rows: bool,
) -> str | None:
    """What in a count table's labels says it is the other way round from ``genes_in_rows``
    (None: nothing does). ``row_labels`` are its first column's text (None without one),
    ``row_key`` that column's name, ``column_names`` the names of its numeric columns.

    Only the labels speak, never the shape (a data set can have more cells than genes or more
    genes than cells): the first column's name where it is one of the usual names of a gene
    (``gene``, ``gene_id``, ``symbol``...) or of a cell (``cell``, ``barcode``...) column; or
    the two sides' labels leaning the other way by more than half of them, a label's lean being
    +1 for a gene (an Ensembl ID, ``gene12``), -1 for a cell (a sequenced barcode, ``cell12``)
    and 0 for anything else (a gene symbol, which a cell's name can look like)."""
    wrong_key, other = (_CELL_KEY, "cell") if genes_in_rows else (_GENE_KEY, "gene")
    if row_key is not None and wrong_key.fullmatch(_key(row_key)):
        return f"its first column is named {str(row_key)!r}, as a {other} column is"
    row_lean, row_gene, row_cell = _label_lean(row_labels)
    column_lean, column_gene, column_cell = _label_lean(column_names)
    towards_genes = row_lean - column_lean  # how far the rows lean to genes past the columns
    if genes_in_rows:
        if -towards_genes <= 0.5:
            return None
        clues = [
            f"its first column holds cell names ({row_cell!r})" if row_cell else None,
            f"its header holds gene names ({column_gene!r})" if column_gene else None,
        ]
    else:
        if towards_genes <= 0.5:
            return None
        clues = [
            f"its first column holds gene names ({row_gene!r})" if row_gene else None,
            f"its header holds cell names ({column_cell!r})" if column_cell else None,
        ]
    return " and ".join(clue for clue in clues if clue)


def read_h5ad(
    path: str | Path,
    *,
    layer: str = "auto",
    backed: bool = False,
    label_key: str | None = None,
    allow_non_counts: bool = False,
) -> CountData:
    """An ``.h5ad`` file's counts (``layer``: ``"auto"``, ``"X"``, ``"raw"`` or a layer's
    name; see :func:`~zoo.models.scvi.h5ad.read_h5ad_h5py`). In memory the anndata package
    reads it where it is installed and can (:func:`~zoo.models.scvi.anndata_io.
    read_h5ad_with_anndata`, with the same checks); backed, or where it cannot, h5py alone,
    which also says in one line what is wrong with a file anndata cannot read."""
    path = Path(path)
    if not backed and path.is_file() and anndata_available():
        data = read_h5ad_with_anndata(
            path, layer=layer, label_key=label_key, allow_non_counts=allow_non_counts
        )
        if data is not None:
            return data
    return read_h5ad_h5py(
        path, layer=layer, backed=backed, label_key=label_key, allow_non_counts=allow_non_counts
    )


def load_counts(
    path: str | Path,
    *,
    layer: str = "auto",
    backed: bool = False,
    label_key: str | None = None,
    allow_non_counts: bool = False,
    genes_in_rows: bool = False,
) -> CountData:
    """The user's counts from ``path``: an ``.h5ad`` file, a 10x matrix directory (or its
    ``matrix.mtx``), or a ``.csv``/``.tsv`` file. ``backed`` applies to h5ad only;
    ``genes_in_rows`` (one row per gene) to a CSV only, where it is refused for any other
    file (their orientation is fixed)."""
    path = Path(path)
    name = path.name.lower()
    csv = name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz"))
    if genes_in_rows and not csv:
        raise DataError(GENES_IN_ROWS_CSV_ONLY.format(data=repr(str(path))))
    if path.is_dir():
        return read_10x_mtx(path, allow_non_counts=allow_non_counts)
    if name.endswith((".mtx", ".mtx.gz")):
        return read_10x_mtx(path.parent, allow_non_counts=allow_non_counts)
    if name.endswith(".h5ad"):
        return read_h5ad(
            path,
            layer=layer,
            backed=backed,
            label_key=label_key,
            allow_non_counts=allow_non_counts,
        )
    if csv:
        return read_count_csv(
            path,
            label_key=label_key,
            allow_non_counts=allow_non_counts,
            genes_in_rows=genes_in_rows,
        )
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    raise DataError(
        f"cannot read {str(path)!r}: use an .h5ad file, a 10x matrix directory or a .csv file"
    )


def user_count_data(
    data: Any,
    *,
    layer: str = "auto",
    backed: bool = False,
    label_key: str | None = None,
    allow_non_counts: bool = False,
    genes_in_rows: bool = False,
) -> CountData:
    """The counts of the user's ``data``: a path (:func:`load_counts`), a :class:`CountData`,
    an ``AnnData`` object, a scipy sparse matrix or an array (cells x genes: ``genes_in_rows``
    applies to a CSV file only, and is refused for anything else)."""
    if isinstance(data, str | Path):
        return load_counts(
            data,
            layer=layer,
            backed=backed,
            label_key=label_key,
            allow_non_counts=allow_non_counts,
            genes_in_rows=genes_in_rows,
        )
    if genes_in_rows:
        raise DataError(GENES_IN_ROWS_CSV_ONLY.format(data=f"a {type(data).__name__}"))
    if isinstance(data, CountData):
        return data
    if is_anndata(data):
        return count_data_from_anndata(
            data, layer=layer, label_key=label_key, allow_non_counts=allow_non_counts
        )
    if sp.issparse(data):
        where = "the sparse count matrix"
        source: CountSource = in_memory_counts(data, where, allow_non_counts=allow_non_counts)
        description = "sparse count matrix"
    else:
        values = np.asarray(data)
        if values.ndim != 2:
            raise DataError(f"the count array has shape {values.shape}; expected cells x genes")
        check_counts(values, "the count array", allow_non_counts=allow_non_counts)
        source, description = InMemoryCounts(values), "count array"
    n, g = source.shape
    return CountData(
        source,
        np.array([f"cell{i + 1}" for i in range(n)], dtype=object),
        np.array([f"gene{j + 1}" for j in range(g)], dtype=object),
        None,
        None,
        description,
    )
