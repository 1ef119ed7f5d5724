"""The ``texwatch report`` command line: its arguments, one line on stdout saying where the report
went, and one line on stderr for a bad input or a failed write."""

from __future__ import annotations

import argparse
import dataclasses

from texwatch._commandline import HelpFormatter, exit_codes, failed, wrote
from texwatch.causes import ReportError, Thresholds

from ._build import build_report

__all__ = ["PROG", "add_parser", "run"]

PROG = "texwatch report"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the ``texwatch`` command."""
    from texwatch.derive import add_derive_arguments

    names = ", ".join(f.name for f in dataclasses.fields(Thresholds))
    p = subparsers.add_parser(
        "report",
        help="HTML/PDF/JSON report across runs and checkpoints, with probable causes",
        description="Report on one or more run stores: loss, spikes, loss terms, stream health, "
        "texture metrics per checkpoint side by side, and probable causes.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "written: OUT/index.html, report.pdf and report.json (the path on stdout)",
                1: "an I/O error, such as OUT not writable (one line on stderr)",
                2: "bad arguments, or a run store that is missing, unreadable or empty (one "
                "line on stderr)",
            }
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN.zarr", help="run stores to report on")
    p.add_argument(
        "-o", "--out", required=True, metavar="OUT", help="output folder (created if missing)"
    )
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--steps", metavar="S1,S2,...", help="compare these steps (comma-separated)")
    pick.add_argument(
        "--checkpoints", action="store_true", help="compare the steps recorded with checkpoint=True"
    )
    pick.add_argument(
        "--every", type=int, metavar="N", help="compare the image steps that are multiples of N"
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"change where a probable cause fires; NAME in: {names}",
    )
    add_derive_arguments(p)  # the daemon's own flags: they apply to rows it has not derived
    p.add_argument("--max-images", type=int, default=8, help="images per sample grid (8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_steps(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            step = int(part)
        except ValueError:
            raise ReportError(f"--steps: {part!r} is not an integer step") from None
        if step < 0:
            raise ReportError(f"--steps: {step} is negative")
        out.append(step)
    if not out:
        raise ReportError(f"--steps {text!r}: no step given")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``texwatch report``: 0 on success, 1 when it cannot be written, 2 for a bad input."""
    try:
        from texwatch.derive import settings_from_args

        thresholds = Thresholds.from_pairs(args.threshold)
        steps = _parse_steps(args.steps) if args.steps is not None else None
        try:
            settings = settings_from_args(args)
        except ValueError as err:
            raise ReportError(str(err)) from err
        build_report(
            args.runs,
            args.out,
            steps=steps,
            checkpoints=args.checkpoints,
            every=args.every,
            thresholds=thresholds,
            settings=settings,
            max_images=args.max_images,
            quiet=args.quiet,
        )
    except ReportError as err:
        return failed(PROG, err, 2)
    except OSError as err:  # an unreadable store is a ReportError: this is mostly writing OUT
        return failed(PROG, err, 1)
    wrote(PROG, args.out, ["index.html", "report.pdf", "report.json"])
    return 0
