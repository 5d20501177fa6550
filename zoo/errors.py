"""Errors the zoo raises on purpose.

Every error a user can cause (an unknown model, a bad option, an unreadable data file, a run
that produced a non-finite loss) is a :class:`ZooError`. The command line prints its message on
one line and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations


class ZooError(Exception):
    """An error caused by the user's input or by a run that cannot go on."""


class DataError(ZooError):
    """A data source that cannot be read, or data the model cannot use."""


class NonFiniteLossError(ZooError):
    """The loss became NaN or infinite during training.

    Carries the step and the names of the sample sites whose log-probability was not finite.
    """

    def __init__(self, step: int, sites: list[str], detail: str = "") -> None:
        self.step = step
        self.sites = sites
        where = ", ".join(sites) if sites else "no single site (check the parameters)"
        msg = f"non-finite loss at step {step}; sites with non-finite log-probability: {where}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    ``limit`` characters where given."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
