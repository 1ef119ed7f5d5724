"""The ``texwatch`` command: ``report``, ``diagnose``, ``dataset``, ``demo`` and ``inspect``.

Each subcommand lives in its own module (``add_parser`` + ``run``) and is imported only when it
runs, so ``texwatch inspect`` stays quick and needs neither torch nor matplotlib. Inputs are
positional and outputs ``-o/--out`` in every subcommand; the flags of the previous release
(``--images``, ``--report``) still work, with a warning, until the next one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from texwatch._commandline import HelpFormatter, add_version, exit_codes, quiet_on_closed_stdout

__all__ = ["build_parser", "main"]

#: Subcommands backed by a module exposing ``add_parser(subparsers)`` and ``run(args) -> int``,
#: with the one-line help shown while the module is not imported.
_MODULES = {
    "report": ("texwatch.report", "HTML/PDF/JSON report across runs and checkpoints"),
    "diagnose": ("texwatch.diagnose", "diagnose single images (spectra, ACF, anomalies)"),
    "dataset": ("texwatch.dataset", "dataset health: tiling sources, masks, brightness outliers"),
    "demo": ("texwatch.demo", "train two tiny models and watch texwatch catch the bad one"),
}

#: Flags of the previous release, still accepted with a warning until the next one:
#: command -> {old flag: its replacement, or "" where its values are now positional}.
_DEPRECATED = {
    "diagnose": {"--images": "", "--report": "--out"},
    "dataset": {"--report": "--out"},
}


def _replace_deprecated(command: str | None, words: list[str]) -> list[str]:
    """``words`` with ``command``'s deprecated flags replaced, each with a warning on stderr."""
    renamed = _DEPRECATED.get(command or "", {})
    out: list[str] = []
    for index, word in enumerate(words):
        if word == "--":
            return out + words[index:]
        flag, equals, value = word.partition("=")
        if flag not in renamed:
            out.append(word)
            continue
        new = renamed[flag]
        instead = f"use {new}" if new else "give its values as positional arguments"
        print(
            f"texwatch {command}: warning: {flag} is deprecated and goes in the next release; "
            f"{instead}",
            file=sys.stderr,
        )
        if new:
            out.append(new + equals + value)
        elif equals:
            out.append(value)
    return out


def _inspect(args: argparse.Namespace) -> int:
    """Print what a store holds: name, schema, committed rows, streams, scalars, daemon cursor."""
    from texwatch.store import open_run

    try:
        run = open_run(args.store)
        summary = {
            "store": str(args.store),
            "run": run.name,
            "schema_version": run.schema_version,
            "committed": run.committed(),
            "streams": {
                name: {
                    "shape": list(run.stream_spec(name).shape),
                    "dtype": str(run.stream_spec(name).dtype),
                }
                for name in run.stream_names()
            },
            "scalars": run.scalar_names(),
            "names": run.names(),
            "checkpoints": run.checkpoint_steps(),
            "drops": run.drops(),
            "nonfinite": run.nonfinite(),
            "writer_errors": run.errors(),
            "derived_cursor": run.derived_cursor(),
            "config": run.config,
        }
    except (FileNotFoundError, ValueError) as err:  # StoreFormatError, a bad URL
        print(f"texwatch inspect: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The texwatch command line; only ``command``'s module is imported for its full arguments."""
    parser = argparse.ArgumentParser(
        prog="texwatch",
        description="Post-hoc tools for texwatch runs, images and datasets.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "success",
                1: "the command failed while running, or stdout was closed early "
                "(texwatch inspect | head); COMMAND --help says when",
                2: "bad arguments (with the usage), or an input that is missing or unreadable "
                "(one line on stderr)",
            }
        ),
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in _MODULES.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=summary)
    inspect = sub.add_parser(
        "inspect",
        help="print what a run store holds, as JSON",
        description="Print what a run store holds, as JSON on stdout: name, schema, committed "
        "rows, streams, scalars, checkpoints, drops, writer errors and the daemon's cursor.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "printed",
                1: "stdout was closed before everything was printed (| head)",
                2: "bad arguments, or no readable run store at STORE",
            }
        ),
    )
    inspect.add_argument(
        "store", metavar="STORE", help="the run store (runs/x.zarr, or s3://bucket/runs/x.zarr)"
    )
    inspect.set_defaults(_run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``texwatch`` command; its exit code."""
    with quiet_on_closed_stdout():
        words = list(sys.argv[1:] if argv is None else argv)
        command = next((w for w in words if not w.startswith("-")), None)
        args = build_parser(command).parse_args(_replace_deprecated(command, words))
        runner = getattr(args, "_run", None)
        if runner is None:
            from texwatch._memory import retain_freed_memory

            retain_freed_memory()  # batched metrics reuse their memory instead of page-faulting
            runner = importlib.import_module(_MODULES[args.command][0]).run
        return int(runner(args))


if __name__ == "__main__":
    sys.exit(main())
