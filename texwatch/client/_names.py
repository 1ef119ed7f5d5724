"""The names ``record()`` stores keys under: any str a user logs gets one, fixed for the run's life.

The store takes ``/``-separated segments of letters, digits, ``_``, ``.`` and ``-`` (see
:func:`texwatch.store.check_name`), and texwatch's own columns and streams take a few first
segments. A key is stored under :func:`escaped` of it: each other character becomes ``_``
(``lr/d*lr/unet`` -> ``lr/d_lr/unet``, ``val acc`` -> ``val_acc``), and a reserved first segment
gets a ``_`` (``loss/current`` -> ``loss_/current``). Where that name is already another key's,
or one of the two would be a folder of the other, the key gets a flat name ending in a hash of
the key instead. The run keeps the original of every renamed key (its ``names`` attribute); the
report shows the originals.

Keys live in three kinds: ``scalars``, ``terms`` (the keys of ``terms=`` and ``weights=``: a
term and its weight share one name) and ``images``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from texwatch.store import (
    DERIVED_SCALARS,
    MAX_NAME,
    RESERVED_SCALARS,
    RESERVED_TABLES,
    given_nan,
)

__all__ = ["BUILTIN_STREAMS", "KINDS", "Kind", "NameBook", "escaped"]

Kind = Literal["scalars", "terms", "images"]
KINDS: tuple[Kind, ...] = ("scalars", "terms", "images")

TERM, WEIGHT = "term/", "weight/"
"""Column prefixes of ``terms=`` and ``weights=`` keys."""

BUILTIN_STREAMS = ("latents", "pred", "target")
"""The streams of ``record()``'s own arguments."""

RESERVED: Mapping[Kind, frozenset[str]] = {
    # the columns texwatch writes, and those derived beside them
    "scalars": RESERVED_SCALARS | DERIVED_SCALARS,
    "terms": frozenset(),
    # texwatch's own streams and tables
    "images": frozenset(BUILTIN_STREAMS) | RESERVED_TABLES,
}
"""First segments a stored name of each kind may not have."""

LIMIT: Mapping[Kind, int] = {
    "scalars": MAX_NAME,
    "terms": MAX_NAME - len(given_nan(TERM)),  # the longest column a term is stored in
    "images": MAX_NAME,
}
"""Longest stored name of each kind."""

_REFUSED = re.compile(r"[^A-Za-z0-9_.\-]")
_HASH = 8  # hex digits of the hash ending a name given after a clash


def escaped(key: str, kind: Kind) -> str:
    """``key`` as a name the store takes for ``kind``; a name it takes comes back as is.

    Each ``/``-separated segment has its other characters replaced by ``_``, empty segments are
    dropped, ``_`` goes before a segment starting with ``.`` or ``-`` and ``__`` becomes ``_``;
    ``zarr.json`` and a trailing ``.partial`` become ``zarr_json`` and ``_partial``. A reserved
    first segment gets a ``_``. A name longer than the kind's limit keeps its start and ends in a
    hash of the key.

    Example:
        >>> escaped("lr/d*lr/unet", "scalars"), escaped("loss/current", "scalars")
        ('lr/d_lr/unet', 'loss_/current')
    """
    segments = [_segment(s) for s in key.split("/") if s] or ["_"]
    if segments[0] in RESERVED[kind]:
        segments[0] += "_"
    name = "/".join(segments)
    if len(name) > LIMIT[kind]:
        name = name[: LIMIT[kind] - 13].rstrip("/") + "-" + _digest(key, 12)
    return name


def _segment(segment: str) -> str:
    segment = _REFUSED.sub("_", segment)
    if segment == "zarr.json":
        segment = "zarr_json"
    elif segment.endswith(".partial"):
        segment = segment[: -len(".partial")] + "_partial"
    if segment[0] in ".-":
        return "_" + segment
    if segment.startswith("__"):
        return "_" + segment.lstrip("_")
    return segment


def _digest(key: str, digits: int) -> str:
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:digits]


def _apart(name: str, taken: Iterable[str]) -> bool:
    """``name`` is none of ``taken``, no folder of one and held by none."""
    return not any(t == name or t.startswith(name + "/") or name.startswith(t + "/") for t in taken)


class NameBook:
    """The stored name of every key a run has, per kind, both ways.

    Not thread-safe: the recorder changes a :meth:`copy` under its lock and swaps it in.
    """

    def __init__(self) -> None:
        self._stored: dict[Kind, dict[str, str]] = {k: {} for k in KINDS}  # key -> stored
        self._keys: dict[Kind, dict[str, str]] = {k: {} for k in KINDS}  # stored -> key

    def copy(self) -> NameBook:
        book = NameBook()
        for kind in KINDS:
            book._stored[kind] = dict(self._stored[kind])
            book._keys[kind] = dict(self._keys[kind])
        return book

    def know(self, kind: Kind, stored: str, renamed: Mapping[str, str]) -> None:
        """Take ``stored``, a name a resumed run holds, as its key's (``renamed[stored]``, or
        the name itself)."""
        key = renamed.get(stored, stored)
        self._stored[kind][key] = stored
        self._keys[kind][stored] = key

    def count(self, kind: Kind) -> int:
        """Keys of ``kind`` named."""
        return len(self._keys[kind])

    def stored(self, kind: Kind, key: str) -> str | None:
        """The name ``key`` is stored under, or None if it has none yet."""
        return self._stored[kind].get(key)

    def name(self, kind: Kind, key: str, taken: Iterable[str], prefixes: tuple[str, ...]) -> str:
        """Give ``key`` (new to the book) its stored name, apart from every name in ``taken``.

        ``taken``: the names a new one must keep apart from (every scalar column, or every
        table); ``prefixes``: what the stored name is put behind in ``taken`` (``term/`` and
        ``weight/`` for a term). Its own escaped name when that is free, else a flat name ending
        in a hash of the key.

        Raises:
            ValueError: no name is free (only when names were made to collide on purpose).
        """
        taken = list(taken)
        mine = self._keys[kind]
        first = escaped(key, kind)
        flat = first.replace("/", "_")
        flat = flat[: LIMIT[kind] - _HASH - 1] + "-" + _digest(key, _HASH)
        for name in (first, flat):
            if name not in mine and all(_apart(p + name, taken) for p in prefixes):
                mine[name] = key
                self._stored[kind][key] = name
                return name
        raise ValueError(
            f"record(): {kind} key {key!r} finds no free name: {first!r} and {flat!r} are taken"
        )

    def renamed(self) -> dict[str, dict[str, str]]:
        """Per kind, the original key of every name that differs from its key: what the run's
        ``names`` attribute keeps."""
        return {
            kind: {s: k for s, k in self._keys[kind].items() if s != k}
            for kind in KINDS
            if any(s != k for s, k in self._keys[kind].items())
        }

    def keys_renamed(self) -> dict[str, dict[str, str]]:
        """Per kind, key -> stored name for every key stored under another name."""
        return {kind: {k: s for s, k in names.items()} for kind, names in self.renamed().items()}
