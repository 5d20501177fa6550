"""Command line: ``python -m zoo.run <model> [options]``, ``all [--quick]``, ``--list``.

A thin layer over :func:`zoo.fit`: it parses options, picks a run directory under ``runs/``,
saves the run and prints its diagnostics. Every user error (unknown model, bad value,
unreadable data file, a run whose loss became non-finite) is one line on stderr and exit
status 2, and leaves no report behind.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from zoo.errors import ZooError
from zoo.estimators import ESTIMATORS
from zoo.model import ZooModel
from zoo.outputs import REPORT, default_run_dir
from zoo.registry import get_model, model_names
from zoo.results import FitResult
from zoo.runner import METHODS, fit, resume

PROG = "python -m zoo.run"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative integer")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _option_type(option) -> Any:
    def convert(text: str) -> Any:
        try:
            return option.convert(text)
        except ZooError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    convert.__name__ = option.type.__name__
    return convert


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("running")
    run.add_argument("--seed", type=_int, default=0, help="random seed (default 0)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--quick", action="store_true", help="a short run (smoke tests, CI)")
    run.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    run.add_argument(
        "--threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)"
    )
    run.add_argument("--out", type=Path, default=Path("runs"), help="root of run directories")
    run.add_argument("--run-dir", type=Path, help="exact directory for this run's outputs")


def _add_training_options(parser: argparse.ArgumentParser, cls: type[ZooModel]) -> None:
    t = cls.training
    train = parser.add_argument_group("training")
    train.add_argument(
        "--guide", choices=cls.guides, help=f"variational family (default {cls.default_guide})"
    )
    train.add_argument(
        "--elbo", choices=list(ESTIMATORS), help=f"ELBO estimator (default {cls.default_elbo})"
    )
    methods = METHODS if cls.has_closed_form() else ("svi",)
    closed = f"; closed-form = {cls.closed_form_name}" if cls.has_closed_form() else ""
    train.add_argument("--method", choices=methods, default="svi", help=f"training{closed}")
    train.add_argument("--steps", type=_positive_int, help=f"steps (default {t.steps})")
    train.add_argument("--lr", type=_positive_float, help=f"learning rate (default {t.lr})")
    train.add_argument(
        "--lr-final-factor",
        type=_positive_float,
        help=f"final lr as a fraction of --lr (default {t.lr_final_factor})",
    )
    train.add_argument(
        "--particles", type=_positive_int, help=f"ELBO particles per step (default {t.particles})"
    )
    if cls.data_plate is not None:
        train.add_argument("--batch-size", type=_positive_int, help="mini-batch size (subsample)")
    train.add_argument(
        "--kl-warmup",
        type=_non_negative_int,
        default=0,
        metavar="STEPS",
        help="ramp the KL weight from 0 to 1 over STEPS (the reported ELBO is at weight 1)",
    )
    if cls.local_step_guides:
        train.add_argument(
            "--local-steps",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="closed-form local step around every SVI step (default: on for the guides "
            f"{', '.join(cls.local_step_guides)})",
        )
    diag = parser.add_argument_group("diagnostics")
    diag.add_argument(
        "--eval-particles",
        type=_positive_int,
        default=1000,
        help="particles for the final ELBO, IWAE and k-hat (default 1000)",
    )
    diag.add_argument("--record-every", type=_positive_int, help="steps between history rows")
    diag.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Train a zoo model with SVI and compare its ELBO with the exact log evidence.",
    )
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="<model>|all", parser_class=_Parser)
    every = sub.add_parser("all", help="every model, then a leaderboard")
    _add_run_options(every)
    for name in model_names():
        cls = get_model(name)
        p = sub.add_parser(name, help=cls.title, description=f"{cls.title}. {cls.reference}")
        _add_run_options(p)
        _add_training_options(p, cls)
    return parser


def _print_list() -> None:
    rows = [(n, get_model(n)) for n in model_names()]
    width = max(len(n) for n, _ in rows)
    print(f"{'model':<{width}}  exact evidence  title")
    for name, cls in rows:
        exact = "yes" if cls.has_exact_evidence() else "no"
        print(f"{name:<{width}}  {exact:<14}  {cls.title}")


def format_result(result: FitResult, run_dir: Path | None = None) -> str:
    """A few lines a person reads after a run."""
    d = result.diagnostics
    n = d.num_data
    lines = [f"{result.model.title}: {result.config.guide} guide, {result.method_label}"]

    def row(label: str, value: float | None, se: float | None = None) -> None:
        if value is None:
            return
        err = f" ± {se:.2g}" if se is not None and math.isfinite(se) and se > 0 else ""
        lines.append(f"  {label:<28}{value:>14.4f}{err:<10}  ({value / n:.5f} per point)")

    if not d.elbo_is_bound:
        lines.append(
            "  note: a point-mass guide; its objective log p(x, z*) drops the entropy of q and is"
            " not a lower bound on log p(x)"
        )
    row("ELBO" if d.elbo_is_bound else "objective log p(x, z*)", d.elbo, d.elbo_se)
    row("exact log evidence", d.log_evidence)
    row("gap log p(x) - ELBO", d.gap, d.elbo_se if d.gap is not None else None)
    row("best ELBO of the family", d.best_elbo)
    if math.isfinite(d.iwae):
        row(f"IWAE ({d.iwae_scope})", d.iwae, d.iwae_se)
    row("expected log-likelihood", d.expected_log_likelihood, d.expected_log_likelihood_se)
    row(f"KL(q || prior) [{d.kl_method}]", d.kl)
    if not math.isnan(d.khat):
        lines.append(f"  {'PSIS k-hat (' + d.khat_scope + ')':<28}{d.khat:>14.3f}")
    lines.append(f"  {'seconds':<28}{result.seconds:>14.2f}")
    if run_dir is not None:
        lines.append(f"  outputs in {run_dir}")
    return "\n".join(lines)


def _run_model(args: argparse.Namespace) -> None:
    cls = get_model(args.command)
    if args.resume is not None:
        _resume(args.resume, args.quiet)
        return
    options = {opt.name: getattr(args, opt.name) for opt in cls.options}
    options = {k: v for k, v in options.items() if v is not None}
    run_dir = args.run_dir or default_run_dir(cls.name, args.seed, args.out)
    fresh = not run_dir.exists()
    try:
        result = fit(
            cls.name,
            getattr(args, "data", None),
            guide=args.guide,
            elbo=args.elbo,
            method=args.method,
            steps=args.steps,
            lr=args.lr,
            lr_final_factor=args.lr_final_factor,
            particles=args.particles,
            batch_size=getattr(args, "batch_size", None),
            seed=args.seed,
            device=args.device,
            quick=args.quick,
            eval_particles=args.eval_particles,
            record_every=args.record_every,
            checkpoint_every=args.checkpoint_every,
            run_dir=run_dir,
            progress=False if args.quiet else None,
            threads=args.threads,
            kl_warmup=args.kl_warmup,
            local_steps=getattr(args, "local_steps", None),
            **options,
        )
        result.save(run_dir)
    except BaseException:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            (run_dir / REPORT).unlink(missing_ok=True)
        raise
    if not args.quiet:
        print(format_result(result, run_dir))


def _resume(run_dir: Path, quiet: bool) -> None:
    if not (run_dir / "config.json").exists():
        raise ZooError(f"{run_dir} is not a run directory (no config.json)")
    result = resume(run_dir, progress=False if quiet else None)
    result.save(run_dir)
    if not quiet:
        print(format_result(result, run_dir))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            _print_list()
        elif args.command is None and args.resume is not None:
            _resume(args.resume, args.quiet)
        elif args.command is None:
            parser.error("name a model, all, --list or --resume DIR")
        elif args.command == "all":
            from zoo.leaderboard import run_all

            if args.threads is not None:
                torch.set_num_threads(args.threads)
            table = run_all(
                quick=args.quick,
                seed=args.seed,
                root=args.out,
                device=args.device,
                progress=False if args.quiet else None,
                echo=not args.quiet,
            )
            failed = int((table["status"] != "ok").sum())
            if failed:
                sys.stderr.write(
                    f"{PROG}: {failed} of {len(table)} runs failed (reasons in the leaderboard)\n"
                )
                return 1
        else:
            _run_model(args)
    except ZooError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except OSError as exc:  # an output or data path the file system refuses
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"{PROG}: error: {exc.strerror or exc}{where}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
