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


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def out_of_memory(exc: BaseException) -> ZooError | None:
    """A one-line :class:`ZooError` for an allocation that failed (numpy's MemoryError,
    torch's allocator error), with the memory available; None for any other error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not (isinstance(exc, MemoryError) or "can't allocate memory" in text):
        return None
    free = available_memory()
    have = f" ({free / 2**30:.1f} GiB available here)" if free is not None else ""
    return ZooError(f"out of memory: {text or 'an allocation failed'}{have}; use smaller sizes")


def require_memory(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a run whose arrays need more memory than is available:
    ``what`` says what needs it (the sizes asked for). Checked against 90% of MemAvailable,
    so a run that fits does not start only to be killed by the kernel."""
    free = available_memory()
    if free is not None and nbytes > 0.9 * free:
        raise ZooError(
            f"{what} needs about {_size(nbytes)} of memory; {_size(free)} are available here"
        )


def _size(nbytes: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} bytes"
