"""
The leaderboard
===============

Every registered model, trained with each guide and training method on its leaderboard, in one
table: what ``python -m zoo.run all`` prints and writes to ``runs/leaderboard.csv``. This page
runs the same function, :func:`zoo.leaderboard.run_all`, when the docs are built. All values
are in nats, totals over each model's data: the ELBO, the exact log evidence, the gap between
them (per data point too, to compare models of different sizes), the importance-weighted bound
(IWAE), the PSIS k-hat of the guide as an importance sampler (Yao et al. 2018) and the seconds
of training.
"""

# %%
# Run every model
# ---------------
# The runs are saved as ``python -m zoo.run all`` saves them, into a temporary directory that
# is removed afterwards: only the table and each model's ladder, read back from the stored
# runs, stay.
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from zoo.ladder import ladder_panels, model_tables
from zoo.leaderboard import run_all, tightness_ladder

QUICK = os.environ.get("ZOO_DOCS_QUICK") == "1"  # set by `make -C docs html-quick`

with tempfile.TemporaryDirectory() as root:
    table = run_all(quick=QUICK, seed=0, root=root, progress=False, echo=False)
    ladders = model_tables(root)  # each model's runs, read back from their run directories

# %%
# The table
# ---------
# One row per model, guide and training (``svi/<estimator>`` or the model's closed-form
# updates). ``± (MC)`` is the Monte Carlo standard error of the ELBO; the gap is taken from the
# closed-form ELBO where the model has one (then it has no Monte Carlo error). The shortfall is
# how far the fitted parameters are from the maximum of log p(x | theta), where the model knows
# it. A gap of order 1e-13 is rounding: the guide is exact. ``runs/leaderboard.csv`` has every
# column (also the number of points, the closed-form ELBO, the best ELBO of the family and
# whether k-hat is above its reliability threshold); the page shows the ones that compare.


def number(value: float) -> str:
    """Four decimals, or three significant digits for very small or very large values."""
    if (value != 0 and abs(value) < 1e-3) or abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.4f}"


columns = {
    "model": "model",
    "guide": "guide",
    "training": "training",
    "elbo": "ELBO",
    "elbo_se": "± (MC)",
    "gap_per_point": "gap / point",
    "shortfall": "shortfall",
    "iwae": "IWAE",
    "khat": "k-hat",
    "seconds": "s",
}
shown = table[list(columns)].rename(columns=columns)
shown.loc[~table["bound"].astype(bool), "ELBO"] = np.nan  # an objective, not a bound
floats = shown.select_dtypes("float").columns
(
    shown.style.hide(axis="index")
    .format(number, subset=floats, na_rep="–")
    # a block that scrolls sideways where the page is narrower than the table
    .set_table_attributes('style="font-size: 72%; display: block; overflow-x: auto"')
)

# %%
# The tightness ladder
# --------------------
# Each model's guide families from the loosest bound to the tightest: the gap
# log p(x) − ELBO per data point on a log scale, with ±2 standard errors, gaps below 1e-9 nats
# per point (an exact guide, up to rounding) drawn at 1e-9. Where the model's log evidence is
# not known exactly the bar is IWAE − ELBO (hatched), which is below the gap; a point mass has
# no bound to show. ``python -m zoo.run all`` saves the same figure as
# ``runs/tightness_ladder.png``.
tightness_ladder(table)
plt.show()

# %%
# Each model's ladder
# -------------------
# The same ladder, one panel per model on one shared axis, read back from the runs stored under
# the runs root (``runs/<model>/<run-id>/report.json``) by :func:`zoo.ladder.model_tables`,
# with no training: for each model the latest finished run of each guide and training among
# those with the options, data, seed and evaluation of its newest run. Every finished run
# draws its own model's ladder into its run directory (``tightness_ladder.png``), that run's
# bar outlined.
ladder_panels(ladders)
plt.show()
