"""``storable_name``: the name a metric or image key is stored under, for any key a user logs.

Trackers and loggers pass on keys such as ``train/loss``, ``lr-AdamW``, ``lr/d*lr/unet`` or
``val acc``; the store takes ``/``-separated segments of letters, digits, ``_``, ``.`` and ``-``
(see :func:`texwatch.store.check_name`), and ``record()`` keeps a few first segments for its own
columns and streams. The integrations store every key under ``storable_name(key)`` so that no
logged name raises in the training loop.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from texwatch.store import MAX_NAME, NONFINITE, RESERVED_TABLES

__all__ = ["RESERVED_IMAGE_NAMES", "RESERVED_SCALAR_NAMES", "storable_name"]

RESERVED_SCALAR_NAMES: frozenset[str] = frozenset(
    {"step", "time", "loss", "checkpoint", "term", "weight", NONFINITE}
)
"""First segments ``record(scalars=...)`` refuses: the columns texwatch writes itself."""

RESERVED_IMAGE_NAMES: frozenset[str] = frozenset({"latents", "pred", "target"} | RESERVED_TABLES)
"""First segments ``record(images=...)`` refuses: texwatch's own streams and tables."""

_REFUSED = re.compile(r"[^A-Za-z0-9_.\-]")


def storable_name(name: object, kind: Literal["scalar", "image"] = "scalar") -> str:
    """``name`` as a key ``record()`` accepts for ``kind``; a name it accepts comes back as is.

    Each ``/``-separated segment has its other characters replaced by ``_`` (``d*lr`` ->
    ``d_lr``, ``val acc`` -> ``val_acc``), empty segments dropped, ``_`` put before a segment
    starting with ``.`` or ``-`` and ``__`` shortened to ``_``; ``zarr.json`` and a trailing
    ``.partial`` become ``zarr_json`` and ``_partial``. A reserved first segment gets a ``_``
    (``loss/mse`` -> ``loss_/mse``, ``pred`` -> ``pred_``). A name longer than the store's limit
    keeps its start and ends in a hash of the whole name. A key that is not a str is first
    turned into one.

    Example:
        >>> storable_name("lr/d*lr/unet"), storable_name("val acc"), storable_name("lr-AdamW")
        ('lr/d_lr/unet', 'val_acc', 'lr-AdamW')
    """
    text = name if isinstance(name, str) else str(name)
    segments = [_segment(s) for s in text.split("/") if s]
    if not segments:
        segments = ["_"]
    reserved = RESERVED_SCALAR_NAMES if kind == "scalar" else RESERVED_IMAGE_NAMES
    if segments[0] in reserved:
        segments[0] += "_"
    stored = "/".join(segments)
    if len(stored) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        stored = stored[: MAX_NAME - len(digest) - 1].rstrip("/") + "-" + digest
    return stored


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
