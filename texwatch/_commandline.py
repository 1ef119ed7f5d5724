"""What the ``texwatch`` and ``texwatchd`` command lines share: ``--version``, exit codes in every
``--help``, the line saying where an output went, and a quiet exit when stdout's reader is gone."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from texwatch import __version__

__all__ = [
    "HelpFormatter",
    "add_version",
    "exit_codes",
    "failed",
    "quiet_on_closed_stdout",
    "wrote",
]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, except that text with line breaks (the exit codes) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def exit_codes(codes: Mapping[int, str]) -> str:
    """A ``--help`` epilog listing each exit code and when the command returns it."""
    lines = [
        textwrap.fill(why, width=78, initial_indent=f"  {code}  ", subsequent_indent=" " * 5)
        for code, why in sorted(codes.items())
    ]
    return "\n".join(["exit codes:", *lines])


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print the program and the texwatch package version, and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def wrote(prog: str, folder: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Say on stdout, in one line, where a command wrote its output (also when piped)."""
    beside = f" (and {', '.join(names[1:])} beside it)" if len(names) > 1 else ""
    print(f"{prog}: wrote {Path(folder) / names[0]}{beside}", flush=True)


def failed(prog: str, err: BaseException, code: int) -> int:
    """Say on stderr, in one line, why the command failed (``prog: error: ...``); ``code``."""
    print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return code


@contextlib.contextmanager
def quiet_on_closed_stdout() -> Iterator[None]:
    """Exit 1 without a traceback when stdout's reader has gone (``texwatch inspect | head``).

    The Python docs' recipe for SIGPIPE: stdout is pointed at devnull so that the flush at exit
    cannot fail again. SIGPIPE keeps Python's handler: texwatchd's sockets must not kill it.
    """
    try:
        try:
            yield
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
