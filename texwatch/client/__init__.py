"""The in-process client: ``record()`` training telemetry into a crash-safe run store.

Importing this needs only numpy and zarr (never torch, matplotlib, prometheus_client or
watchdog); tensors are recognised when passed. The training thread validates and copies, a
background thread writes.

Example:
    >>> import texwatch.client as tw                                        # doctest: +SKIP
    >>> tw.init("runs/x.zarr", run="flux-lora-brick", config={"rank": 16})
    >>> for step, batch in enumerate(loader):
    ...     tw.record(step, loss, latents=z0, pred=x0_pred, terms={"v": l_v},
    ...               scalars={"lr": lr}, sample_ids=batch["idx"], timesteps=t)
    >>> tw.close()
"""

from texwatch.errors import StoreLockedError

from ._api import close, flush, get_recorder, init, record
from ._options import RecorderOptions
from ._recorder import (
    DEFAULT_EVERY,
    DEFAULT_MAX_ITEMS,
    ENV_STORE,
    STREAM_EVERY,
    STREAM_MAX_ITEMS,
    Recorder,
    detect_rank,
)
from ._stats import RecorderStats, WriterError

__all__ = [
    "DEFAULT_EVERY",
    "DEFAULT_MAX_ITEMS",
    "ENV_STORE",
    "STREAM_EVERY",
    "STREAM_MAX_ITEMS",
    "Recorder",
    "RecorderOptions",
    "RecorderStats",
    "StoreLockedError",
    "WriterError",
    "close",
    "detect_rank",
    "flush",
    "get_recorder",
    "init",
    "record",
]
