"""argparse value types shared by the command lines (texwatchd, ``texwatch report``)."""

from __future__ import annotations

import argparse

from texwatch._location import Where, locate


def store_location(text: str) -> Where:
    """A run store's path or object-store URL (see ``texwatch._location``), else an argparse
    error naming the scheme expected."""
    try:
        return locate(text, what="store")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_float(text: str) -> float:
    """A number > 0, else an argparse error that quotes what was given."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 but got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 but got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0, else an argparse error that quotes what was given."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 but got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 but got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1, else an argparse error that quotes what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 but got {text!r}")
    return value
