"""Every bad value on the command line is one line on stderr and exit status 2.

Property-based over every model option and every shared run option: a value is either accepted
(and then finite and in range) or refused with a one-line :class:`ZooError` / usage error, never
another exception; plus the command lines that once gave tracebacks, hangs or terabyte
allocations.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo import run
from zoo.errors import ZooError
from zoo.registry import get_model, model_names

NASTY = [
    "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "-0", "0.5", "2.5", "1e12", "1e-320",
    str(2**70), "-" + str(2**70), "abc", "", " ", "1,5", "0x10", "True", "None", "☃", "1e6",
]  # fmt: skip

OPTIONS = [(name, opt) for name in model_names() for opt in get_model(name).options]


def _check_converted(opt, value):
    if isinstance(value, float):
        assert math.isfinite(value), f"{opt.flag} accepted a non-finite {value!r}"
    if opt.choices is not None:
        assert value in opt.choices


@pytest.mark.parametrize("name,opt", OPTIONS, ids=[f"{n}{o.flag}" for n, o in OPTIONS])
def test_option_converters_refuse_cleanly(name, opt):
    for text in NASTY:
        try:
            value = opt.convert(text)
        except ZooError as exc:
            assert len(str(exc).splitlines()) == 1 and opt.flag in str(exc)
            continue
        _check_converted(opt, value)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(OPTIONS) - 1),
    text=st.one_of(
        st.text(max_size=12),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(2**80), 2**80).map(str),
    ),
)
def test_option_converters_never_raise_anything_else(index, text):
    _, opt = OPTIONS[index]
    try:
        value = opt.convert(text)
    except ZooError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    _check_converted(opt, value)


RUN_OPTIONS = ["--seed", "--threads", "--eval-particles", "--steps", "--lr", "--particles"]


@settings(max_examples=200, deadline=None)
@given(flag=st.sampled_from(RUN_OPTIONS), text=st.sampled_from(NASTY) | st.text(max_size=8))
def test_run_options_parse_or_exit_2(flag, text):
    parser = run.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(["normal-gamma", flag, text])
    except SystemExit as exc:
        assert exc.code == 2
        assert len(err.getvalue().strip().splitlines()) == 1
        return
    if flag == "--seed":
        assert 0 <= args.seed < 2**32
    if flag == "--threads":
        assert args.threads >= 1
    if flag == "--lr":
        assert math.isfinite(args.lr) and args.lr > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["normal-gamma", "--seed", "-1"],
        ["normal-gamma", "--seed", str(2**70)],
        ["normal-gamma", "--threads", "100000"],
        ["normal-gamma", "--eval-particles", str(10**12)],
        ["ising", "--beta", "inf"],
        ["ising", "--field", "nan"],
        ["ising", "--size", "100000"],
        ["ising", "--size", "64", "--hidden", "100000", "--depth", "3"],
        ["normal-gamma", "--mu0", "nan"],
        ["normal-gamma", "--true-mean", "inf"],
        ["normal-gamma", "--num-points", str(10**12)],
        ["free-energy-learning", "--num-points", str(10**12)],
        ["free-energy-perception", "--sigma-p", "0"],
        ["diffusion", "--gamma-max", "nan"],
        ["bayes-linreg", "--prior-scale", "1e-300"],  # a precision of 1e600: singular
        ["predictive-coding", "--noise1", "1e12"],
        ["gmm", "--data-seed", "-1"],
        ["gmm", "--components", "0"],
        ["no-such-model"],
        ["normal-gamma", "--no-such-flag", "1"],
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(argv, tmp_path, capsys):
    try:
        code = run.main([*argv, "--quick", "--quiet", "--out", str(tmp_path)])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert not list(tmp_path.rglob("report.json"))


def test_divergence_without_nan_is_an_error(tmp_path, capsys):
    """An oversized learning rate sends the ELBO to -1e22 with no NaN: not a success."""
    code = run.main(["vae", "--lr", "1e6", "--steps", "60", "--quiet", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0]
    assert not list(tmp_path.rglob("report.json"))


def test_memory_guard_fails_an_oversized_allocation_at_once():
    """Inside the guard an allocation beyond the memory available fails with MemoryError (a
    one-line error on the command line) instead of being granted and killed later; the
    process's limit is restored afterwards."""
    import resource

    import numpy as np

    from zoo.memory import available_memory, memory_guard, out_of_memory

    free = available_memory()
    if free is None:
        pytest.skip("no /proc/meminfo here")
    before = resource.getrlimit(resource.RLIMIT_AS)
    with memory_guard(), pytest.raises(MemoryError) as caught:
        np.empty(free + 2**30, dtype=np.uint8)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    message = str(out_of_memory(caught.value))
    assert message.startswith("out of memory") and "available here" in message
    assert len(message.splitlines()) == 1
