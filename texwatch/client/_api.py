"""The module-level API: one default ``Recorder`` per process, created by ``init()`` or lazily."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._options import RecorderOptions, options_from
from ._recorder import ENV_STORE, Recorder

__all__ = ["close", "flush", "get_recorder", "init", "record"]

_lock = threading.Lock()
_default: Recorder | None = None


def init(
    path: str | os.PathLike[str] | None = None,
    *,
    options: RecorderOptions | None = None,
    **overrides: Any,
) -> Recorder:
    """Start recording into ``path`` (or ``$TEXWATCH_STORE``); closes a previous default recorder.

    Arguments are those of :class:`Recorder`: a :class:`RecorderOptions` and/or its fields as
    keywords. Calling ``init()`` is optional: ``record()`` starts a default recorder from
    ``$TEXWATCH_STORE``. Raises ``StoreLockedError`` if another live writer holds the store.

    Example:
        >>> import texwatch.client as tw                                   # doctest: +SKIP
        >>> tw.init("runs/x.zarr", run="flux-lora-brick", config={"lr": 1e-4})
    """
    global _default
    with _lock:
        previous, _default = _default, None
    if previous is not None:
        previous.close()
    recorder = Recorder(path, options=options_from(options, overrides, "init()"))
    with _lock:
        _default = recorder
    return recorder


def get_recorder() -> Recorder | None:
    """The default recorder, or None before ``init()`` / the first ``record()``."""
    return _default


def _recorder() -> Recorder:
    global _default
    recorder = _default
    if recorder is not None:
        return recorder
    with _lock:
        if _default is None:
            if not os.environ.get(ENV_STORE):
                raise RuntimeError(
                    f"texwatch.client.record() before init(): call "
                    f"texwatch.client.init('runs/x.zarr') or set ${ENV_STORE}"
                )
            _default = Recorder()
        return _default


def record(
    step: int | np.integer[Any],
    loss: Any = None,
    *,
    latents: Any = None,
    pred: Any = None,
    target: Any = None,
    images: Mapping[str, Any] | None = None,
    dataformats: str | Mapping[str, str] | None = None,
    terms: Mapping[str, Any] | None = None,
    weights: Mapping[str, Any] | None = None,
    scalars: Mapping[str, Any] | None = None,
    sample_ids: Any = None,
    timesteps: Any = None,
    checkpoint: bool = False,
) -> None:
    """Record one step with the default recorder; see :meth:`Recorder.record`."""
    _recorder().record(
        step,
        loss,
        latents=latents,
        pred=pred,
        target=target,
        images=images,
        dataformats=dataformats,
        terms=terms,
        weights=weights,
        scalars=scalars,
        sample_ids=sample_ids,
        timesteps=timesteps,
        checkpoint=checkpoint,
    )


def flush(timeout: float | None = None) -> None:
    """Block until the default recorder's rows are committed; see :meth:`Recorder.flush`."""
    recorder = _default
    if recorder is not None:
        recorder.flush(timeout)


def close(*, finished: bool = True) -> None:
    """Close the default recorder (a later ``record()`` starts a new one from the env);
    ``finished=False`` leaves the run unmarked, as :meth:`Recorder.close` does."""
    global _default
    with _lock:
        recorder, _default = _default, None
    if recorder is not None:
        recorder.close(finished=finished)
