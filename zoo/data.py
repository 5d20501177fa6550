"""Reading the user's own data files, with one-line errors for anything unusable.

Bundled data sets (scikit-learn's iris, diabetes, digits...) and seeded simulators live with
the model that uses them; this module only turns a path into a clean numeric array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from zoo.errors import DataError


def read_numeric_table(path: str | Path, *, min_rows: int = 2) -> tuple[np.ndarray, list[str]]:
    """A CSV file's numeric columns as a float64 array (rows = data points), and their names.

    Columns with no number at all (labels, ids) are dropped; a column mixing numbers with other
    text, a file with no numeric column, fewer than ``min_rows`` rows, or missing/non-finite
    values is refused with a :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {str(path)!r} as CSV: {first}") from None
    for name in frame.columns.difference(frame.select_dtypes(include="number").columns):
        column = frame[name].dropna()
        parsed = pd.to_numeric(column, errors="coerce")
        if parsed.notna().any():  # mostly numbers: a typo, not a label column
            row = parsed.index[parsed.isna()][0]
            raise DataError(
                f"{str(path)!r}: column {name!r} has a non-numeric value "
                f"{frame.at[row, name]!r} in data row {row + 1}"
            )
    numeric = frame.select_dtypes(include="number")
    if numeric.shape[1] == 0:
        raise DataError(f"{str(path)!r} has no numeric column")
    if len(numeric) < min_rows:
        raise DataError(f"{str(path)!r} has {len(numeric)} rows; at least {min_rows} are needed")
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise DataError(f"{str(path)!r} has {bad} row(s) with missing or non-finite values")
    return values, [str(c) for c in numeric.columns]
