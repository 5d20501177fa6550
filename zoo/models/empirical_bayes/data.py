"""The data of the empirical-Bayes models, typed in from the papers.

Efron & Morris (1975), "Data analysis using Stein's estimator and its generalizations", JASA 70,
311-319, Table 1; Rubin (1981), "Estimation in parallel randomized experiments", J. Educational
Statistics 6, 377-401, as tabulated in Gelman et al., *Bayesian Data Analysis*, 3rd ed., §5.5,
Table 5.2.
"""

from __future__ import annotations

#: Efron & Morris (1975), Table 1: player, hits in the first 45 at-bats of the 1970 season,
#: batting average over the remainder of that season.
BASEBALL: tuple[tuple[str, int, float], ...] = (
    ("Clemente", 18, 0.346),
    ("F. Robinson", 17, 0.298),
    ("F. Howard", 16, 0.276),
    ("Johnstone", 15, 0.222),
    ("Berry", 14, 0.273),
    ("Spencer", 14, 0.270),
    ("Kessinger", 13, 0.263),
    ("L. Alvarado", 12, 0.210),
    ("Santo", 11, 0.269),
    ("Swoboda", 11, 0.230),
    ("Unser", 10, 0.264),
    ("Williams", 10, 0.256),
    ("Scott", 10, 0.303),
    ("Petrocelli", 10, 0.264),
    ("E. Rodriguez", 10, 0.226),
    ("Campaneris", 9, 0.286),
    ("Munson", 8, 0.316),
    ("Alvis", 7, 0.200),
)
#: at-bats of every player in Efron & Morris's Table 1
AT_BATS = 45

#: BDA3 Table 5.2 (Rubin 1981): school, estimated coaching effect y_j, its standard error.
EIGHT_SCHOOLS: tuple[tuple[str, float, float], ...] = (
    ("A", 28.0, 15.0),
    ("B", 8.0, 10.0),
    ("C", -3.0, 16.0),
    ("D", 7.0, 11.0),
    ("E", -1.0, 9.0),
    ("F", 1.0, 11.0),
    ("G", 18.0, 10.0),
    ("H", 12.0, 18.0),
)
