"""AnnData in and out for ``scvi``: counts from an ``AnnData`` object or an ``.h5ad`` file read
by the anndata package, and the fitted cell embedding as an ``AnnData``.

Virshup, Rybakov, Theis, Angerer & Wolf (2024), "anndata: access and store annotated data
matrices", JOSS 9, 4371: cells are ``obs`` (names, cell-type columns), genes ``var``, the
counts ``X`` or a layer (``layers["counts"]`` by scvi-tools' convention), per-cell embeddings
``obsm``; scvi-tools (Gayoso et al. 2022, Nature Biotechnology 40, 163-166) stores its latent
means as ``obsm["X_scvi"]``, which is what :func:`latent_anndata` writes.

anndata is optional: it is imported only here and only when needed. Without it an ``.h5ad``
file is read by the h5py reader (:mod:`~zoo.models.scvi.h5ad`), a run saves no ``.h5ad`` and
:func:`import_anndata` is a one-line :class:`~zoo.errors.ZooError` naming the pip command.

Reading goes through anndata where it does the job: an in-memory ``.h5ad`` is read by
``anndata.read_h5ad`` (every encoding anndata writes, the nullable string arrays of recent
pandas included), and the matrix it returns is checked as the h5py reader checks it (the
sparse structure by :func:`zoo.data.validate_csr` before any use, then the counts). A file
anndata cannot read goes to the h5py reader, whose one-line errors say what is wrong with it.
Backed reading stays with :mod:`~zoo.models.scvi.hdf5` (the pinned anndata's backed sparse
rows do not index under scipy 1.17; the h5py reader also merges neighbouring row reads); an
``AnnData`` opened with ``backed="r"`` is read from its file that way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from zoo.data import check_dtype, validate_csr
from zoo.errors import DataError, ZooError, first_line
from zoo.models.scvi.counts import (
    LABEL_KEYS,
    CountData,
    InMemoryCounts,
    check_counts,
    check_shape,
    finish_count_data,
)
from zoo.models.scvi.h5ad import read_h5ad_h5py

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from zoo.models.scvi.model import SingleCellVI

#: the anndata release the zoo is tested with (constraints.txt): the newest that installs
#: beside pandas 3 on Python 3.11 without zarr
ANNDATA_PIN = "anndata==0.11.4"
#: the command that installs it
ANNDATA_INSTALL = f"pip install {ANNDATA_PIN}"


def import_anndata(purpose: str = "this") -> Any:
    """The anndata module; a one-line :class:`ZooError` naming the pip command without it."""
    try:
        import anndata
    except ImportError as exc:
        raise ZooError(
            f"{purpose} needs the anndata package, which cannot be imported "
            f"({first_line(exc)}): `{ANNDATA_INSTALL}`"
        ) from None
    return anndata


def anndata_available() -> bool:
    """Whether anndata can be imported (an installed but broken anndata counts as absent)."""
    try:
        import_anndata()
    except ZooError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# AnnData in
# --------------------------------------------------------------------------------------------
def _choose_matrix(adata: Any, layer: str, where: str) -> tuple[Any, Any, str]:
    """(matrix, its gene names, its h5ad path) for ``layer``: ``"auto"`` (``layers["counts"]``
    if present, else ``X``), ``"X"``, ``"raw"`` or a layer's name."""
    layers = list(adata.layers.keys())
    raw = adata.raw
    if layer == "auto":
        if "counts" in layers:
            return adata.layers["counts"], adata.var_names, "layers/counts"
        layer = "X"
    if layer == "X":
        if adata.X is None:
            others = [*(["raw"] if raw is not None else []), *layers]
            hint = f" (use --layer with one of: {', '.join(others)})" if others else ""
            raise DataError(f"{where} has no matrix X{hint}")
        return adata.X, adata.var_names, "X"
    if layer == "raw":
        if raw is None:
            raise DataError(f"{where} has no raw matrix (raw/X)")
        return raw.X, raw.var_names, "raw/X"
    if layer in layers:
        return adata.layers[layer], adata.var_names, f"layers/{layer}"
    available = [*(["X"] if adata.X is not None else []), *(["raw"] if raw else []), *layers]
    raise DataError(f"{where} has no layer {layer!r}; available: {', '.join(available) or 'none'}")


def in_memory_counts(matrix: Any, where: str, *, allow_non_counts: bool = False) -> InMemoryCounts:
    """A count matrix held in memory (a scipy sparse matrix or array, or anything NumPy turns
    into a 2-D array) as an :class:`InMemoryCounts`: a CSR or CSC structure is validated
    before any use, and the stored values must be counts. Sparse data stays sparse."""
    if sp.issparse(matrix):
        fmt = matrix.format
        check_dtype(matrix.dtype, where)
        if fmt in ("csr", "csc"):
            pointer = validate_csr(
                matrix.indptr,
                matrix.indices,
                matrix.shape,
                where,
                data_size=np.shape(matrix.data)[0],
                layout=fmt,
            )
            cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
            matrix = cls((matrix.data, matrix.indices, pointer), shape=matrix.shape)
        else:  # COO, DOK, LIL...: scipy's own constructors checked their coordinates
            matrix = sp.csr_matrix(matrix)
        check_shape(*matrix.shape, where)
        check_counts(matrix.data, where, allow_non_counts=allow_non_counts)
        return InMemoryCounts(matrix)
    values = np.asarray(matrix)
    if values.ndim != 2:
        raise DataError(f"{where} has shape {values.shape}; expected cells x genes")
    check_shape(*values.shape, where)
    check_counts(values, where, allow_non_counts=allow_non_counts)
    return InMemoryCounts(values)


def _labels(obs: pd.DataFrame, label_key: str | None, where: str) -> tuple[Any, str | None]:
    """Labels from the obs column ``label_key`` (an error if absent), or the first of
    :data:`LABEL_KEYS` present when ``label_key`` is None; a missing value reads "nan"."""
    import pandas as pd

    columns = [str(c) for c in obs.columns]
    if label_key is not None:
        if label_key not in columns:
            shown = ", ".join(columns[:12]) or "none"
            raise DataError(f"{where}: obs has no column {label_key!r} (columns: {shown})")
        key = label_key
    else:
        key = next((k for k in LABEL_KEYS if k in columns), None)
        if key is None:
            return None, None
    values = obs[key].tolist()
    labels = np.empty(len(values), dtype=object)
    labels[:] = ["nan" if pd.isna(v) else str(v) for v in values]
    return labels, key


def count_data_from_anndata(
    adata: Any,
    *,
    layer: str = "auto",
    label_key: str | None = None,
    allow_non_counts: bool = False,
    where: str | None = None,
    name: str | None = None,
) -> CountData:
    """The counts of an ``AnnData``: ``layer`` as for an ``.h5ad`` file (``"auto"``: the
    ``counts`` layer if present, else ``X``), the cell and gene names from ``obs_names`` and
    ``var_names`` (``raw.var_names`` for ``raw``), labels from ``obs`` (``label_key``, else
    the first of :data:`LABEL_KEYS`). A backed ``AnnData`` (``backed="r"``) is read from its
    file a mini-batch at a time; an in-memory one is used as it is, sparse staying sparse.
    ``where`` names the data in errors, ``name`` in the description."""
    where = where or f"the AnnData ({adata.n_obs} cells x {adata.n_vars} genes)"
    name = name or "AnnData"
    labels, key = _labels(adata.obs, label_key, where)
    if getattr(adata, "isbacked", False):
        on_disk = read_h5ad_h5py(
            Path(adata.filename),
            layer=layer,
            backed=True,
            label_key=key,
            allow_non_counts=allow_non_counts,
        )
        return finish_count_data(
            on_disk.source,
            adata.obs_names.to_numpy(dtype=object),
            on_disk.gene_names,
            labels,
            key,
            on_disk.description,
        )
    matrix, genes, path = _choose_matrix(adata, layer, where)
    source = in_memory_counts(matrix, f"{where} [{path}]", allow_non_counts=allow_non_counts)
    return finish_count_data(
        source,
        adata.obs_names.to_numpy(dtype=object),
        genes.to_numpy(dtype=object),
        labels,
        key,
        f"{name} [{path}]",
    )


def read_h5ad_with_anndata(
    path: Path, *, layer: str, label_key: str | None, allow_non_counts: bool
) -> CountData | None:
    """An ``.h5ad`` file read into memory by ``anndata.read_h5ad`` and checked as
    :func:`count_data_from_anndata` checks an ``AnnData``; None where anndata cannot read the
    file (the h5py reader then says why in one line)."""
    anndata = import_anndata("reading .h5ad with anndata")
    try:
        with warnings.catch_warnings():  # anndata's notes on old layouts are not the user's
            warnings.simplefilter("ignore")
            adata = anndata.read_h5ad(path)
    except Exception:  # any failure: the h5py reader diagnoses the file
        return None
    return count_data_from_anndata(
        adata,
        layer=layer,
        label_key=label_key,
        allow_non_counts=allow_non_counts,
        where=repr(str(path)),
        name=path.name,
    )


# --------------------------------------------------------------------------------------------
# AnnData out
# --------------------------------------------------------------------------------------------
def _text_index(values: Any) -> pd.Index:
    """An index of plain Python strings (object dtype): what every anndata release reads."""
    import pandas as pd

    return pd.Index(np.asarray([str(v) for v in values], dtype=object), dtype=object)


def _categorical(values: Any) -> pd.Categorical:
    import pandas as pd

    text = np.asarray([str(v) for v in values], dtype=object)
    return pd.Categorical(text, categories=_text_index(sorted(set(text.tolist()))))


def latent_anndata(
    cell_names: Any,
    gene_names: Any,
    latent_means: np.ndarray,
    *,
    obs: dict[str, Any] | None = None,
    var: dict[str, Any] | None = None,
    obsm: dict[str, np.ndarray] | None = None,
    uns: dict[str, Any] | None = None,
) -> Any:
    """An ``AnnData`` of the cells with their latent means in ``obsm["X_scvi"]`` (scvi-tools'
    key): cell names as ``obs_names``, gene names as ``var_names``, ``obs`` and ``var``
    columns (text becomes categorical), further ``obsm`` arrays and ``uns`` entries. No ``X``:
    the counts stay in the user's own file. Strings are written as plain string arrays, which
    every anndata release reads."""
    anndata = import_anndata("an AnnData of the latent means")
    import pandas as pd

    obs_frame = pd.DataFrame(index=_text_index(cell_names))
    for key, values in (obs or {}).items():
        array = np.asarray(values)
        obs_frame[key] = _categorical(array) if array.dtype.kind in "OUS" else array
    var_frame = pd.DataFrame(index=_text_index(gene_names))
    for key, values in (var or {}).items():
        var_frame[key] = np.asarray(values)
    adata = anndata.AnnData(obs=obs_frame, var=var_frame)
    adata.obsm["X_scvi"] = np.asarray(latent_means, dtype=np.float32)
    for key, values in (obsm or {}).items():
        adata.obsm[key] = np.asarray(values)
    adata.uns.update(uns or {})
    return adata


def latent_adata_of(model: SingleCellVI, table: pd.DataFrame) -> Any:
    """The cells as an ``AnnData`` (needs anndata), in the data's order, with the posterior
    means E_q[z | x] in ``obsm["X_scvi"]`` (scvi-tools' key), ``obs`` columns ``split``, the
    labels and (latent library) ``log_library``; ``var`` every gene of the data, with
    scanpy's ``highly_variable``, ``means``, ``dispersions`` and ``dispersions_norm`` where
    genes were selected, and the fitted ``inverse_dispersion`` (NaN for a gene not
    modelled). ``table`` is the model's ``latent_means_table``."""
    order = np.argsort(np.concatenate([model.train_index, model.test_index]), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    z = table[[f"z{d + 1}" for d in range(model.latent_dim)]].to_numpy()
    obs: dict[str, Any] = {"split": table["split"].to_numpy(dtype=object)}
    key = model.dataset.label_key
    if model.dataset.labels is not None:
        obs[key or "label"] = table[key or "label"].to_numpy(dtype=object)
    if "log_library" in table:
        obs["log_library"] = table["log_library"].to_numpy()
    var: dict[str, Any] = {}
    modelled = np.arange(model.dataset.num_genes)
    if model.gene_selection is not None:
        selection = model.gene_selection
        modelled = selection.kept
        var = {
            "highly_variable": selection.highly_variable,
            "means": selection.means,
            "dispersions": selection.dispersions,
            "dispersions_norm": selection.dispersions_norm,
        }
    log_theta = model.fitted_log_theta()
    if log_theta is not None:
        theta = np.full(model.dataset.num_genes, np.nan)
        theta[modelled] = log_theta.exp().cpu().numpy()
        var["inverse_dispersion"] = theta
    uns = {
        "zoo_scvi": {
            "data": model.dataset.description,
            "likelihood": model.likelihood_name,
            "library": model.library_mode,
            "latent_dim": model.latent_dim,
            "num_genes_modelled": model.num_genes,
        }
    }
    cells = np.concatenate([model.cell_names, model.cell_names_test])[order]
    return latent_anndata(cells, model.dataset.gene_names, z, obs=obs, var=var, uns=uns)
