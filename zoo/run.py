"""Command line: ``python -m zoo.run <model> [options]``, ``all [--models a,b]``, ``--list``.

Installed, the same command is the ``elbo-zoo`` console script (``elbo-zoo gmm --quick``).

A thin layer over :func:`zoo.fit`: it parses options, picks a run directory under ``runs/``,
saves the run and prints its diagnostics. Every user error (unknown model, bad value,
unreadable data file, a run whose loss became non-finite) is one line on stderr and exit
status 2, and leaves no report behind.

``--help`` and ``--list`` import no model, nor torch: the models' names, titles and whether
they have an exact log evidence come from :func:`zoo.registry.catalogue`, and only the model
named on the command line gets its full sub-parser (its options and choices), which imports
its package alone. Torch, NumPy and the runner are imported when a run needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from zoo.config_file import RUN_CONFIG, parser_defaults, read_config_file, to_toml
from zoo.distributed import launched_rank, launched_world, settle, silenced_unless_main
from zoo.errors import ZooError, first_line
from zoo.live_logs import MLflowLogger, RunFile, RunLogger, TensorBoardLogger, logging_to
from zoo.memory import memory_guard, out_of_memory
from zoo.options import available_cpus, positive_int, thread_count
from zoo.outputs import RunInterrupted, default_run_dir
from zoo.registry import catalogue, get_model, model_names
from zoo.run_files import RESUME_COMMAND
from zoo.settings import SETTINGS, Setting, iter_flags

if TYPE_CHECKING:  # pragma: no cover
    from zoo.model import ZooModel
    from zoo.results import FitResult

#: the command's name in its messages (``elbo-zoo`` when run as the console script)
PROG = "python -m zoo.run"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _arg(convert: Any, name: str) -> Any:
    """An argparse type from a zoo option type (``ValueError`` -> a one-line usage error)."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, OverflowError, ZooError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


_positive_int = _arg(positive_int, "int")


def _option_type(option) -> Any:
    def convert(text: str) -> Any:
        try:
            return option.convert(text)
        except ZooError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    convert.__name__ = option.type.__name__
    return convert


def _add_setting(group: Any, setting: Setting, cls: type[ZooModel] | None) -> None:
    """The flag of a run setting (:mod:`zoo.settings`), with its help and choices for ``cls``."""
    kwargs: dict[str, Any] = {"default": setting.default}
    kwargs["help"] = setting.help if cls is None else setting.help_for(cls)
    if setting.switch:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        if setting.choices is not None and cls is not None:  # argparse names the choices
            kwargs["choices"] = list(setting.choices(cls))
        else:
            kwargs["type"] = _arg(setting.convert, setting.kind.__name__)
        if setting.metavar:
            kwargs["metavar"] = setting.metavar
    group.add_argument(setting.flag, **kwargs)


def _add_run_options(parser: argparse.ArgumentParser, cls: type[ZooModel] | None = None) -> None:
    run = parser.add_argument_group("running")
    for setting in SETTINGS:
        if setting.group == "running":
            _add_setting(run, setting, cls)
    run.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="no progress bar, no summary",
    )
    run.add_argument(
        "--threads",
        type=_arg(thread_count, "int"),
        help=f"torch intra-op threads, at most the {available_cpus()} CPUs here (default: torch's)",
    )
    run.add_argument("--out", type=Path, default=Path("runs"), help="root of run directories")
    if cls is None:  # `all`: each run gets a new directory under --out
        return
    run.add_argument("--run-dir", type=Path, help="exact directory for this run's outputs")
    run.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replace a finished --run-dir, on success",
    )


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    """--config, --tensorboard and --mlflow (a model's parser)."""
    files = parser.add_argument_group("configuration file and live logs")
    files.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="this run's options from a TOML file (YAML with PyYAML): keys are the long "
        "option names (steps, lr-final-factor...); flags given here override it; recorded "
        f"in the run directory as {RUN_CONFIG}",
    )
    files.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="log the ELBO, its terms and the gap to TensorBoard under DIR/<model>/<run-id> "
        "(needs: pip install tensorboard); history.csv is written as the run goes either way",
    )
    files.add_argument(
        "--mlflow",
        metavar="URI",
        help="log the run's settings, and the ELBO, its terms and the gap as it goes, to MLflow "
        "at URI (a directory such as ./mlruns, or a tracking server's http:// address): "
        "experiment <model>, run <run-id> (needs: pip install mlflow)",
    )


def _add_training_options(parser: argparse.ArgumentParser, cls: type[ZooModel]) -> None:
    groups = {name: parser.add_argument_group(name) for name in ("training", "diagnostics")}
    for name, group in groups.items():
        for setting in iter_flags(cls, name):
            _add_setting(group, setting, cls)
    diag = groups["diagnostics"]
    diag.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    if cls.options or cls.data_help:
        group = parser.add_argument_group(f"{cls.name} options")
        if cls.data_help:
            group.add_argument("--data", help=cls.data_help)
        for opt in cls.options:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                type=_option_type(opt),
                choices=opt.choices,
                default=None,
                help=f"{opt.help} (default {opt.default})",
            )


def build_parser(only: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Every model is a sub-command; each model in ``only`` (every
    model by default) gets its full sub-parser, with its options and choices, which imports its
    module; the others are listed with their titles (:func:`zoo.registry.catalogue`) and
    import nothing."""
    full = None if only is None else set(only)
    parser = _Parser(
        prog=PROG,  # read at call time: elbo-zoo as the console script
        description="Train a zoo model with SVI and compare its ELBO with the exact log evidence.",
    )
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    parser.add_argument(
        "--steps", dest="resume_steps", type=_positive_int, metavar="N", help=_STEPS_HELP
    )
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="with --resume DIR: log the ELBO, its terms and the gap to TensorBoard",
    )
    sub = parser.add_subparsers(dest="command", metavar="<model>|all", parser_class=_Parser)
    every = sub.add_parser("all", help="every model, then a leaderboard")
    _add_run_options(every)
    every.add_argument(
        "--models",
        type=_model_list,
        metavar="NAMES",
        help="only these models, comma-separated (gmm,vae; default: every model)",
    )
    entries = catalogue() if full is not None else {}
    for name in model_names():
        if full is not None and name not in full:
            sub.add_parser(name, help=entries[name].title)
            continue
        cls = get_model(name)
        p = sub.add_parser(name, help=cls.title, description=f"{cls.title}. {cls.reference}")
        _add_run_options(p, cls)
        _add_training_options(p, cls)
        _add_file_options(p)
    return parser


def _model_list(text: str) -> list[str]:
    """``--models``: comma-separated model names, each registered (else a usage error that
    lists the known names)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    known = model_names()
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one model of {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )
    return names


def _named_models(argv: list[str]) -> set[str]:
    """The models named on the command line ``argv``: those whose sub-parser is built."""
    names = set(model_names())
    return {arg for arg in argv if arg in names}


def _model_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The sub-parser of the model ``name``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _with_config_file(
    parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace
) -> argparse.Namespace:
    """Parse ``argv`` again with ``--config``'s values as the model parser's defaults (each
    converted and checked as on the command line; flags given override them), and keep the
    file's content as ``args.config_entries``."""
    entries = read_config_file(args.config)
    sub = _model_parser(parser, args.command)
    sub.set_defaults(**parser_defaults(sub, entries, source=args.config, command=args.command))
    parsed = parser.parse_args(argv)
    parsed.config_entries = entries
    return parsed


def _config_record(args: argparse.Namespace) -> RunFile:
    """The run's --config file, as TOML, for its run directory."""
    entries = {"model": args.command, **args.config_entries}
    comment = f"this run's options from --config {args.config}; flags on the command line took"
    comment += "\nprecedence over them, and config.json records the settings the run used"
    return RunFile(RUN_CONFIG, to_toml(entries, comment=comment).encode())


def _tensorboard(root: Path | None, model: str, run_dir: Path) -> list[RunLogger]:
    """--tensorboard DIR: a logger writing to DIR/<model>/<run-id> (none without the flag; on
    rank 0 alone of a data-parallel run)."""
    if root is None or launched_rank() > 0:
        return []
    return [TensorBoardLogger(root / model / Path(run_dir).resolve().name)]


def _print_list() -> None:
    rows = catalogue()
    width = max(len(n) for n in rows)
    print(f"{'model':<{width}}  exact evidence  title")
    for name, entry in rows.items():
        exact = "yes" if entry.exact_evidence else "no"
        print(f"{name:<{width}}  {exact:<14}  {entry.title}")


def _held_out_lines(result: FitResult) -> list[str]:
    """The held-out figures first, where the model has a test split (its summary's "test":
    ELBO and importance-weighted estimate per point), and a warning where the training ELBO
    per point is far above the held-out one (by more than a nat and 5% of it: over-fitting)."""
    test = result.summary.get("test") if isinstance(result.summary, dict) else None
    if not isinstance(test, dict) or "elbo" not in test:
        return []
    m = test.get("num_data") or test.get("num_cells")
    if not m:
        return []
    iwae = test.get("iwae", test.get("marginal_log_likelihood"))
    iwae_se = test.get("iwae_se", test.get("marginal_log_likelihood_se"))
    k = test.get("num_particles")
    elbo = test["elbo"] / m
    lines = [f"  held out ({m} points), per point:"]
    lines.append(f"    {'ELBO':<26}{elbo:>14.4f} ± {test.get('elbo_se', math.nan) / m:.2g}")
    if iwae is not None and math.isfinite(iwae):
        label = f"IWAE (K={k})" if k else "IWAE"
        lines.append(f"    {label:<26}{iwae / m:>14.4f} ± {(iwae_se or math.nan) / m:.2g}")
    train = result.diagnostics.headline_elbo / result.diagnostics.num_data
    if train - elbo > max(1.0, 0.05 * abs(elbo)):
        lines.append(
            f"  warning: over-fitting: the training ELBO is {train:.4f} per point, "
            f"{train - elbo:.4g} above the held-out {elbo:.4f}"
        )
    lines.append("  training data:")
    return lines


def format_result(result: FitResult, run_dir: Path | None = None) -> str:
    """A few lines a person reads after a run."""
    d = result.diagnostics
    n = d.num_data
    lines = [f"{result.model.title}: {result.config.guide} guide, {result.method_label}"]

    lines.extend(_held_out_lines(result))
    notes = d.notes()
    lines.extend(f"  {note}" for note in notes if note.startswith("note"))
    for label, value, se in d.rows():
        err = f" ± {se:.2g}" if se is not None and math.isfinite(se) and se > 0 else ""
        lines.append(f"  {label:<28}{value:>14.4f}{err:<10}  ({value / n:.5f} per point)")
    for label, value, decimals in d.weight_rows():
        lines.append(f"  {label:<28}{value:>14.{decimals}f}")
    lines.extend(f"  {note}" for note in notes if note.startswith("warning"))
    lines.append(f"  {'seconds':<28}{result.seconds:>14.2f}")
    if result.compiled is not None and result.compiled["compiled"]:
        build = result.compiled["build_seconds"]
        lines.append(f"  {'of which compiling the step':<28}{build:>14.2f}")
    elif result.compiled is not None:
        lines.append(f"  note: trained eagerly, not compiled: {result.compiled['why']}")
    if run_dir is not None:
        lines.append(f"  outputs in {run_dir}")
    return "\n".join(lines)


#: with --resume: what extending a run means (the help of --steps)
_STEPS_HELP = (
    "with --resume DIR: train the run on to step N (more than its checkpoint's step; fewer is "
    "refused); the learning-rate decay goes on at the run's rate"
)
#: the options --resume takes; the run's config.json fixes every other
_RESUME_OPTIONS = {
    *("command", "list", "resume", "resume_steps", "steps", "data", "threads", "quiet"),
    "tensorboard",
}


def _run_model(args: argparse.Namespace) -> None:
    """Train one model (or, with --resume, continue a run of it) and print its summary."""
    cls = get_model(args.command)
    if args.resume is not None:
        if args.config is not None:
            raise ZooError(
                "--config does not apply to --resume: the run's config.json fixes its options"
            )
        _refuse_fixed_options(args)
        _set_threads(args.threads)
        data = getattr(args, "data", None)
        _resume(
            args.resume,
            args.quiet,
            steps=args.steps,
            model=cls.name,
            data=data,
            tensorboard=args.tensorboard,
        )
        return
    options = {opt.name: getattr(args, opt.name) for opt in cls.options}
    options = {k: v for k, v in options.items() if v is not None}
    if launched_rank() > 0:  # data-parallel (torchrun): rank 0 writes the run and reports it
        _fit_model(args, cls, None, options)
        return
    created: list[Path] = []  # what a failure removes: a default run directory and its parents
    run_dir = args.run_dir
    if run_dir is None:
        created = [p for p in (args.out / cls.name, args.out) if not p.exists()]
        run_dir = default_run_dir(cls.name, args.seed, args.out)
        created.insert(0, run_dir)
    try:
        loggers = _tensorboard(args.tensorboard, cls.name, run_dir)
        if args.mlflow is not None:
            loggers.append(MLflowLogger(args.mlflow, cls.name, Path(run_dir).resolve().name))
        if args.config is not None:
            loggers.append(_config_record(args))
        with logging_to(*loggers):
            result = _fit_model(args, cls, run_dir, options)
    except BaseException as exc:
        if not (isinstance(exc, RunInterrupted) and exc.run_dir is not None):
            _remove_created(created)
        raise
    if not args.quiet:
        print(format_result(result, run_dir))


def _fit_model(
    args: argparse.Namespace, cls: type[ZooModel], run_dir: Path | None, options: dict[str, Any]
) -> FitResult:
    """:func:`zoo.fit` with the command line's settings."""
    from zoo.runner import fit

    settings = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    return fit(
        cls.name,
        getattr(args, "data", None),
        run_dir=run_dir,
        overwrite=getattr(args, "overwrite", False),
        progress=False if args.quiet else None,
        threads=args.threads,
        **settings,
        **options,
    )


def _remove_created(created: list[Path]) -> None:
    """Remove a run directory this command created (and then its new, empty parents)."""
    if not created:
        return
    shutil.rmtree(created[0], ignore_errors=True)
    for parent in created[1:]:
        try:
            parent.rmdir()
        except OSError:  # not empty: another run's
            break


def _refuse_fixed_options(args: argparse.Namespace) -> None:
    """With --resume the run's config.json fixes the training: an option given is refused,
    not silently ignored (--steps, --data, --threads and --quiet apply)."""
    parser = build_parser(only=[args.command])
    defaults = vars(parser.parse_args([args.command, "--resume", str(args.resume)]))
    for name, value in vars(args).items():
        if name not in _RESUME_OPTIONS and name in defaults and value != defaults[name]:
            flag = "--" + name.replace("_", "-")
            raise ZooError(
                f"{flag} does not apply to --resume: the run's config.json fixes it "
                "(--resume takes --steps, --data, --threads, --quiet and --tensorboard)"
            )


def _resume(
    run_dir: Path,
    quiet: bool,
    *,
    steps: int | None = None,
    model: str | None = None,
    data: str | None = None,
    tensorboard: Path | None = None,
) -> None:
    """Continue the run in ``run_dir`` (of ``model``, when the command named one); its
    ``run_config.toml``, where it has one, goes on with it."""
    from zoo.runner import read_checkpoint, read_config, resume

    config = read_config(run_dir)
    if model is not None and config.model != model:
        raise ZooError(
            f"{run_dir} holds a {config.model!r} run, not a {model!r} one; resume it with "
            f"{PROG} --resume {run_dir}"
        )
    if steps is not None and steps != config.steps and not quiet:
        reached = read_checkpoint(run_dir)["step"]
        if steps >= reached:
            verb = "extending" if steps > config.steps else "ending"
            print(f"{verb} the run in {run_dir} at step {steps} (it planned {config.steps})")
    loggers = _tensorboard(tensorboard, config.model, Path(run_dir))
    record = Path(run_dir) / RUN_CONFIG
    if record.is_file():  # a finished run is continued beside itself: its record goes along
        loggers.append(RunFile(RUN_CONFIG, record.read_bytes()))
    with logging_to(*loggers):
        result = resume(run_dir, steps=steps, data=data, progress=False if quiet else None)
    if not quiet:
        print(format_result(result, run_dir))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one line each, like its errors."""
    text = str(message).strip()
    return f"{PROG}: warning: {text.splitlines()[0] if text else category.__name__}\n"


def _memory_guard(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """A CPU run's allocations beyond the machine's memory fail at once, as one line
    (:func:`zoo.memory.memory_guard`); CUDA runs are left alone."""
    cpu = str(getattr(args, "device", "cpu")).startswith("cpu")
    return memory_guard() if cpu else contextlib.nullcontext()


def _set_threads(threads: int | None) -> None:
    """--threads: torch's intra-op threads (left as they are without the flag)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _linalg_errors() -> tuple[type[BaseException], ...]:
    """The linear-algebra errors of torch and NumPy, of those imported (one not imported
    raised none)."""
    found = []
    for module in ("torch", "numpy"):
        linalg = getattr(sys.modules.get(module), "linalg", None)
        error = getattr(linalg, "LinAlgError", None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    """The command line; under ``torchrun`` only rank 0 prints (:mod:`zoo.distributed`)."""
    with silenced_unless_main():
        code = _main(argv)
    settle(code)  # a failing data-parallel job: rank 0 prints its error before torchrun stops it
    return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = _one_line_warning
    parser = build_parser(only=_named_models(argv))
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) is not None and args.command not in (None, "all"):
            args = _with_config_file(parser, argv, args)
        if args.list:
            _print_list()
        elif args.resume_steps is not None and (args.command or args.resume is None):
            parser.error("--steps before the model name goes with --resume DIR only")
        elif args.command is None and args.resume is not None:
            _resume(args.resume, args.quiet, steps=args.resume_steps, tensorboard=args.tensorboard)
        elif args.command is None:
            parser.error("name a model, all, --list or --resume DIR")
        elif args.command == "all":
            from zoo.leaderboard import run_all

            if launched_world() > 1:
                raise ZooError("all runs the models one by one on one process, not under torchrun")
            _set_threads(args.threads)
            with _memory_guard(args):
                table = run_all(
                    quick=args.quick,
                    seed=args.seed,
                    root=args.out,
                    device=args.device,
                    progress=False if args.quiet else None,
                    echo=not args.quiet,
                    models=args.models,
                )
            failed = int((table["status"] != "ok").sum())
            if failed:
                sys.stderr.write(
                    f"{PROG}: {failed} of {len(table)} runs failed (reasons in the leaderboard)\n"
                )
                return 1
        else:
            with _memory_guard(args):
                _run_model(args)
    except ZooError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except _linalg_errors() as exc:  # exact maths that failed (torch's or NumPy's)
        sys.stderr.write(
            f"{PROG}: error: a matrix became singular in float64 ({first_line(exc)}): "
            "the options or data are too extreme for the exact computations\n"
        )
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation the machine cannot make
        oom = out_of_memory(exc)
        if oom is None:
            raise
        sys.stderr.write(f"{PROG}: error: {oom}\n")
        return 2
    except OSError as exc:  # an output or data path the file system refuses
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"{PROG}: error: {exc.strerror or exc}{where}\n")
        return 2
    except KeyboardInterrupt as exc:  # a run says where its last checkpoint is
        message = str(exc) if isinstance(exc, RunInterrupted) else "interrupted"
        message = message.replace(RESUME_COMMAND, f"{PROG} --resume")
        sys.stderr.write(f"{PROG}: {message}\n")
        return 130
    return 0


def console_main() -> None:
    """The ``elbo-zoo`` console script: :func:`main`, with messages under that name."""
    global PROG
    PROG = "elbo-zoo"
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
