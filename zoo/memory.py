"""Memory: what is available, refusing runs that need more, and naming a failed allocation.

A run that asks for more memory than the machine has must end in one line, not in a kill by
the kernel's out-of-memory handler (which leaves nothing on stderr). Three layers:

- :func:`require_memory`, called by a model before it allocates what its options ask for,
  refuses with the figure;
- :func:`memory_guard`, around a command-line run, caps the process's address space at what it
  uses plus what is available (``RLIMIT_AS``), so that an allocation beyond the machine's
  memory fails at once (numpy's ``MemoryError``, torch's allocator error) instead of being
  granted by the kernel's overcommit and killed later;
- :func:`out_of_memory` turns such a failure into a one-line :class:`~zoo.errors.ZooError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from zoo.errors import ZooError


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


@contextlib.contextmanager
def memory_guard() -> Iterator[None]:
    """Cap the address space at its current size plus the memory available, for the duration.

    Linux only, and only where that lowers the limit already set; a no-op elsewhere. Not for
    CUDA runs (the driver reserves address space far beyond the memory it uses)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            virtual = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError, IndexError):
        yield
        return
    free = available_memory()
    cap = None if free is None else virtual + free
    if cap is None or (soft != resource.RLIM_INFINITY and soft <= cap):
        yield
        return
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
