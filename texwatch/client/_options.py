"""``RecorderOptions``: the Recorder's options, declared and checked once.

``Recorder``, ``init()`` and the integrations all take these fields as keyword arguments (or a
``RecorderOptions`` as ``options=``), so a new option is added here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from texwatch._lease import LEASE_SECONDS

__all__ = ["RecorderOptions", "options_from"]


@dataclass(frozen=True, kw_only=True)
class RecorderOptions:
    """How a :class:`~texwatch.client.Recorder` names, samples, queues and commits a run.

    Args:
        run: run name (default: the folder name without ``.zarr``).
        config: JSON-able training configuration stored with the run.
        every: per-stream sampling period in steps (see ``texwatch.client`` for the defaults),
            by stream (``latents``, ``pred``, ``target``) or ``images=`` key as logged.
        max_items: first N items of a batch kept per stream: one int for all, or per stream.
        all_ranks: record on every distributed rank, each into ``path/rank<r>``; by default only
            rank 0 records and other ranks' calls return at once.
        flush_interval: seconds after which queued rows are committed (readers see them).
        queue_size: rows that may wait for the writer thread.
        max_wait: longest the caller waits for a full queue before dropping the row.
        max_pending_bytes: image bytes copied but not yet written; beyond it image rows drop.
        durable: fsync each commit's files and folders, data before marker, so committed rows
            survive a power cut (costs a few fsyncs a commit: see docs/storage.md).
        storage_options: for a store on object storage (``s3://``, ``gs://``, ``az://``): the
            store's options (``endpoint``, ``region``, credentials, ``client_options``,
            ``max_requests_per_second``); by default the ecosystem's environment variables.
        lease_seconds: on object storage, how long the writer's lease holds without renewal,
            so how long after a writer is killed its run can be resumed (docs/storage.md).

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range, naming it.
    """

    run: str | None = None
    config: Mapping[str, Any] | None = None
    every: Mapping[str, int] | None = None
    max_items: Mapping[str, int] | int | None = None
    all_ranks: bool = False
    flush_interval: float = 1.0
    queue_size: int = 8192
    max_wait: float = 0.005
    max_pending_bytes: int = 256 << 20
    durable: bool = False
    storage_options: Mapping[str, Any] | None = None
    lease_seconds: float = LEASE_SECONDS

    def __post_init__(self) -> None:
        for what in ("all_ranks", "durable"):
            if not isinstance(getattr(self, what), bool):
                raise TypeError(f"{what} must be a bool, got {type(getattr(self, what)).__name__}")
        _seconds("flush_interval", self.flush_interval, positive=True)
        _seconds("max_wait", self.max_wait, positive=False)
        _seconds("lease_seconds", self.lease_seconds, positive=True)
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise TypeError(
                f"storage_options must be a dict, got {type(self.storage_options).__name__}"
            )
        count("queue_size", self.queue_size)
        count("max_pending_bytes", self.max_pending_bytes, minimum=0)
        per_stream("every", self.every, {}, 1, allow_int=False)
        per_stream("max_items", self.max_items, {}, 1, allow_int=True)


_FIELDS = tuple(f.name for f in dataclasses.fields(RecorderOptions))


def options_from(
    options: RecorderOptions | None,
    overrides: Mapping[str, Any],
    where: str,
    *,
    main_process: bool = False,
) -> RecorderOptions:
    """``options`` (or the defaults) with ``overrides`` applied; an unknown name is a TypeError.

    ``main_process``: the caller records on its framework's main process only (accelerate,
    Lightning), so ``all_ranks=True`` is a ValueError rather than silently ignored.
    """
    if options is not None and not isinstance(options, RecorderOptions):
        raise TypeError(f"{where}: options must be a RecorderOptions, got {type(options).__name__}")
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise TypeError(
            f"{where}: unknown option {unknown[0]!r}; expected one of {', '.join(_FIELDS)}"
        )
    merged = dataclasses.replace(options or RecorderOptions(), **overrides)
    if main_process and merged.all_ranks:
        raise ValueError(
            f"{where}: all_ranks=True given, but this integration records on the main process "
            "only; use texwatch.client.Recorder(all_ranks=True) on every rank instead"
        )
    return merged


def _seconds(what: str, seconds: Any, *, positive: bool) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(seconds).__name__}")
    ok = seconds > 0 if positive else seconds >= 0
    if not ok or not math.isfinite(seconds):
        raise ValueError(
            f"{what} must be finite and {'>' if positive else '>='} 0 seconds, got {seconds}"
        )


def count(what: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a TypeError / ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def per_stream(
    what: str,
    value: Mapping[str, int] | int | None,
    defaults: Mapping[str, int],
    other: int,
    allow_int: bool,
) -> tuple[dict[str, int], int]:
    """(per-stream values, value for streams not named) from an ``every``/``max_items`` argument."""
    if value is None:
        return dict(defaults), other
    if allow_int and not isinstance(value, Mapping):
        return {}, count(what, value)
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of stream name -> int, got {type(value).__name__}")
    merged = dict(defaults)
    for name, n in value.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be str (a stream or images key), got {name!r}")
        merged[name] = count(f"{what}[{name!r}]", n)
    return merged, other
