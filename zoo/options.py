"""Option types: every converter from a command-line string or a Python value to a setting.

Each takes the raw value and returns the converted one, or raises :class:`ValueError` with a
message that reads after the flag's name (``--steps: '2.5' is not an integer >= 1``); the
command line, :func:`zoo.fit`, config files and models' own options all use these.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo.errors import ZooError
from zoo.psis import MIN_DRAWS


def positive_float(value: Any) -> float:
    """An option type: a finite number > 0."""
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{value!r} is not a positive number")
    return number


def finite_float(value: Any) -> float:
    """An option type: a finite number (no NaN, no infinity)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def at_least(low: int) -> Callable[[Any], int]:
    """An option type: an integer >= ``low`` (``"3"`` and ``3.0`` pass, ``2.5`` does not)."""

    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer >= {low}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not an integer >= {low}") from None
        if not (math.isfinite(number) and number == int(number) and int(number) >= low):
            raise ValueError(f"{value!r} is not an integer >= {low}")
        return int(number) if abs(number) < 2**53 else int(str(value))

    convert.__name__ = "int"
    return convert


def start_count(most: int) -> Callable[[Any], int]:
    """An option type: a number of restarts, an integer in [1, ``most``]."""

    def convert(value: Any) -> int:
        number = positive_int(value)
        if number > most:
            raise ValueError(f"{value!r} is more than {most} starts")
        return number

    convert.__name__ = "int"
    return convert


non_negative_int = at_least(0)
#: an option type: an integer >= 1 (``"3"`` and ``3.0`` pass, ``2.5`` and ``True`` do not)
positive_int = at_least(1)

#: seeds are what numpy's and torch's generators accept: 0 <= seed < 2**32
SEED_LIMIT = 2**32


def seed_value(value: Any) -> int:
    """An option type: a random seed, an integer in [0, 2**32)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a seed")
    try:
        number = int(value) if not isinstance(value, float) else int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not an integer seed") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"{value!r} is not an integer seed")
    if not 0 <= number < SEED_LIMIT:
        raise ValueError(f"seed {value!r} is outside [0, 2**32)")
    return number


seed_value.__name__ = "int"


def boolean(value: Any) -> bool:
    """An option type: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class Option:
    """A model-specific option, exposed as ``--<name>`` on the command line.

    ``type`` converts a string (from the command line) or a Python value into the option's
    value and raises :class:`ValueError` with a readable message when it cannot.
    """

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            converted = self.type(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ZooError(f"option {self.flag}: {exc}") from None
        if self.choices is not None and converted not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ZooError(f"option {self.flag}: {value!r} is not one of {allowed}")
        return converted


def non_negative_float(value: Any) -> float:
    """An option type: a finite number >= 0."""
    number = finite_float(value)
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def open_fraction(value: Any) -> float:
    """An option type: a number strictly between 0 and 1."""
    number = finite_float(value)
    if not 0 < number < 1:
        raise ValueError(f"{value!r} is not strictly between 0 and 1")
    return number


def fraction_below_one(value: Any) -> float:
    """An option type: a number in [0, 1) (0: none of it)."""
    number = finite_float(value)
    if not 0 <= number < 1:
        raise ValueError(f"{value!r} is not in [0, 1)")
    return number


MAX_EVAL_PARTICLES = 1_000_000


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_count(value: Any) -> int:
    """A torch thread count: 1 to the number of CPUs here (more only slows, and a huge count
    exhausts the OpenMP runtime's memory)."""
    number = positive_int(value)
    if number > available_cpus():
        raise ValueError(f"{value!r} threads: this machine has {available_cpus()} CPUs")
    return number


def eval_particle_count(value: Any) -> int:
    """Particles for the final diagnostics: at least PSIS's minimum, at most MAX_EVAL_PARTICLES."""
    number = positive_int(value)
    if number < MIN_DRAWS:
        raise ValueError(f"{value!r} particles: k-hat needs at least {MIN_DRAWS} for a tail")
    if number > MAX_EVAL_PARTICLES:
        raise ValueError(f"{value!r} particles: at most {MAX_EVAL_PARTICLES:,}")
    return number
