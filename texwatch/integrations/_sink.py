"""``MetricSink``: what trackers and loggers log, as one ``record()`` call per step into one run.

Frameworks log a step in several calls (Lightning: the step's metrics, then validation's at the
same step; accelerate: ``log`` then ``log_images``), but a run keeps one scalar row per step
(readers keep a step's latest row). The sink merges the calls for a step and records the row once
``hold`` later steps were logged, or on ``flush``/``close``. Any key is recorded as it was
logged (``record()`` names it in the store, see :attr:`texwatch.client.Recorder.renamed`);
values that are not numbers are skipped, counted (``skipped``) and warned about once. Images
are checked when logged, so a layout the shape cannot tell raises in the call that logged it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from texwatch.client import Recorder, RecorderOptions
from texwatch.client._capture import is_tensor
from texwatch.client._layout import check_dataformats, formats_by_key, layout_of, stacked
from texwatch.client._options import options_from

from ._config import plain_config

__all__ = ["LOSS_KEYS", "MetricSink", "loss_keys"]

LOSS_KEYS: tuple[str, ...] = ("loss", "train_loss", "train/loss", "train_loss_step")
"""Logged keys taken as the step loss by default, the first present in a call winning:
``train_loss`` is what the diffusers scripts log, ``train_loss_step`` what Lightning logs for
``self.log("train_loss", loss, on_step=True, on_epoch=True)``."""


def loss_keys(loss_key: str | Sequence[str]) -> tuple[str, ...]:
    """``loss_key`` (one key or several, in order of preference) checked, as a tuple."""
    keys = (loss_key,) if isinstance(loss_key, str) else loss_key
    if (
        not isinstance(keys, Sequence)
        or not keys
        or not all(isinstance(k, str) and k for k in keys)
    ):
        raise TypeError(
            f"Expected argument `loss_key` to be a non-empty str or a sequence of them but got "
            f"{loss_key!r}"
        )
    return tuple(keys)


@dataclasses.dataclass
class _Row:
    """One step's record() arguments, merged from every call that logged the step."""

    loss: Any = None
    given_loss: bool = False  # the loss came as record()'s own argument: logged keys keep off it
    scalars: dict[str, Any] = dataclasses.field(default_factory=dict)
    images: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataformats: dict[str, str] = dataclasses.field(default_factory=dict)  # by images key
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def empty(self) -> bool:
        return self.loss is None and not (self.scalars or self.images or self.kwargs)


def open_sink(
    where: str,
    path: Any,
    recorder: Any,
    options: RecorderOptions | None,
    overrides: Mapping[str, Any],
    loss_key: str | Sequence[str],
) -> tuple[MetricSink, RecorderOptions]:
    """The sink of an integration's constructor, its arguments checked (naming ``where``), and
    the Recorder options it resolved."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"Expected argument `path` to be a str or os.PathLike but got {type(path).__name__}"
        )
    if recorder is not None and not isinstance(recorder, Recorder):
        raise TypeError(
            f"Expected argument `recorder` to be a texwatch.client.Recorder or None but got "
            f"{type(recorder).__name__}"
        )
    opts = options_from(options, overrides, f"{where}()", main_process=True)
    sink = MetricSink(path, opts, recorder=recorder, loss_keys=loss_keys(loss_key), where=where)
    return sink, opts


class MetricSink:
    """Merges a run's logged metrics and images per step and records them on one Recorder.

    Args:
        path: the run store, or None for ``$TEXWATCH_STORE``; unused when ``recorder`` is given.
        options: the Recorder's options; ``options.config`` is the start of the run's config.
        recorder: record into this recorder (its owner closes it) instead of opening one.
        loss_keys: logged keys that are the step loss; the first present in a call wins.
        where: the integration's name, for warnings.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        options: RecorderOptions,
        *,
        recorder: Recorder | None,
        loss_keys: tuple[str, ...],
        where: str,
    ) -> None:
        self.path = path
        self.loss_keys = loss_keys
        self.hold = 1
        """Steps logged after a step before it is recorded (2 while a callback shares the sink)."""
        self.skipped: dict[str, int] = {}
        """Values not recorded (not a number, or more than one), per logged key."""
        self._options = options
        self._recorder = recorder
        self._owns = recorder is None
        self._where = where
        self._config = dict(options.config or {})
        self._pending: dict[int, _Row] = {}
        self._next_step = 0
        self._recorded_up_to = -1
        self._warned: set[str] = set()

    @property
    def recorder(self) -> Recorder:
        """The recorder, opened (or reopened after ``close``) when first needed."""
        return self._open()

    def _open(self) -> Recorder:
        if self._recorder is None or (self._owns and self._recorder.closed):
            config = self._config or None  # None keeps a resumed run's stored config
            options = dataclasses.replace(self._options, config=config)
            # rank=0: the framework already decided this process records, whatever $RANK says.
            self._recorder = Recorder(self.path, options=options, rank=0)
        return self._recorder

    @property
    def renamed(self) -> dict[str, str]:
        """Logged keys stored under another name: key -> stored name."""
        if self._recorder is None:
            return {}
        return {k: v for names in self._recorder.renamed.values() for k, v in names.items()}

    @property
    def opened(self) -> Recorder | None:
        """The recorder when it is open, without opening it."""
        if self._recorder is None or self._recorder.closed:
            return None
        return self._recorder

    def records_into(self, recorder: Recorder) -> bool:
        return self._recorder is recorder

    def configure(self, values: Mapping[str, Any] | Any) -> None:
        """Add ``values`` (hyperparameters) to the run's config; an open store is reopened."""
        config = plain_config(values)
        if all(k in self._config and self._config[k] == v for k, v in config.items()):
            return  # nothing new: no reopening
        self._config.update(config)
        if not self._owns:
            if config:
                self._warn_once(
                    "config",
                    f"texwatch: {self._where} records into a Recorder it was given, whose config "
                    f"was set when it was opened; hyperparameters such as {next(iter(config))!r} "
                    f"are not stored. (warned once)",
                )
            return
        if self.opened is not None:
            self._record_all()
            self.opened.close()

    def step(self, step: Any) -> int:
        """``step`` checked, or the step after the last one logged when None."""
        if step is None:
            return self._next_step
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(
                f"Expected argument `step` to be an int >= 0 or None but got {type(step).__name__}"
            )
        if step < 0:
            raise ValueError(f"Expected argument `step` to be an int >= 0 or None but got {step}")
        return int(step)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into ``step``'s row: the loss key as the loss, the rest as scalars."""
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"Expected argument `values` to be a dict of name -> number but got "
                f"{type(metrics).__name__}"
            )
        row = self._row(step)
        loss_key = next((k for k in self.loss_keys if k in metrics), None)
        for key, value in _flat(metrics):
            if key == loss_key:
                loss = _number(value, batch_ok=True)
                if loss is None:
                    self._skip(key, value)
                elif not row.given_loss:
                    row.loss = loss
                continue
            number = _number(value, batch_ok=False)
            if number is None:
                self._skip(key, value)
            else:
                row.scalars[str(key)] = number

    def log_images(self, step: int, images: Mapping[str, Any], dataformats: str | None) -> None:
        """Merge ``images`` (any layout ``record(images=...)`` takes) into ``step``'s row."""
        if not isinstance(images, Mapping):
            raise TypeError(
                f"Expected argument `values` to be a dict of name -> images but got "
                f"{type(images).__name__}"
            )
        checked = {str(key): _image(str(key), value, dataformats) for key, value in _flat(images)}
        row = self._row(step)
        for key, (value, layout) in checked.items():
            row.images[key], row.dataformats[key] = value, layout

    def add(self, step: int, loss: Any, kwargs: Mapping[str, Any]) -> None:
        """Merge one step's ``record()`` arguments (``TexwatchCallback``'s) into its row."""
        row = self._row(step)
        if loss is not None:
            row.loss, row.given_loss = loss, True
        for arg, value in kwargs.items():
            if arg == "scalars":
                row.scalars.update(value)
            elif arg == "images":
                row.images.update(value)
                row.dataformats.update(formats_by_key(kwargs.get("dataformats"), value))
            elif arg != "dataformats":
                row.kwargs[arg] = value

    def flush(self) -> None:
        """Record every pending step and wait until the rows are committed."""
        self._record_all()
        if self.opened is not None:
            self.opened.flush()

    def close(self, *, finished: bool = True) -> None:
        """Record every pending step; close the recorder if this sink opened it, marking the run
        finished unless ``finished`` is False (training failed or was stopped)."""
        self._record_all()
        if self._owns and self.opened is not None:
            self.opened.close(finished=finished)

    # --- internals ------------------------------------------------------------------------------

    def _row(self, step: int) -> _Row:
        """``step``'s pending row, made the latest; rows beyond ``hold`` older ones are recorded.

        Opens the store first: the names it holds are taken before new keys are named.
        """
        self._open()
        self._next_step = max(self._next_step, step + 1)
        row = self._pending.pop(step, None) or _Row()
        self._pending[step] = row
        while len(self._pending) > self.hold:
            oldest = next(iter(self._pending))
            self._record(oldest, self._pending.pop(oldest))
        return row

    def _record_all(self) -> None:
        pending, self._pending = self._pending, {}
        for step in sorted(pending):
            self._record(step, pending[step])

    def _record(self, step: int, row: _Row) -> None:
        if row.empty():
            return
        if step <= self._recorded_up_to:
            self._warn_once(
                "step",
                f"texwatch: {self._where} logged step {step} after step {self._recorded_up_to} "
                f"was recorded; readers keep a step's latest row, so it replaces the earlier "
                f"row of step {step}. Log images and evaluation metrics at the training step. "
                f"(warned once)",
            )
        self._recorded_up_to = max(self._recorded_up_to, step)
        kwargs = dict(row.kwargs)
        if row.scalars:
            kwargs["scalars"] = row.scalars
        if row.images:
            kwargs["images"] = row.images
            if row.dataformats:
                kwargs["dataformats"] = row.dataformats
        self.recorder.record(step, row.loss, **kwargs)

    def _skip(self, key: Any, value: Any) -> None:
        self.skipped[str(key)] = self.skipped.get(str(key), 0) + 1
        self._warn_once(
            "skipped",
            f"texwatch: {self._where} records numbers only; {str(key)!r} is a "
            f"{type(value).__name__} and is skipped; every skipped value is counted in "
            f".skipped. (warned once)",
        )

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


def _flat(values: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[Any, Any]]:
    """(key, value) pairs, a nested dict's keys joined with ``/`` (as TensorBoard's add_scalars)."""
    for key, value in values.items():
        full = f"{prefix}{key}" if prefix else key
        if isinstance(value, Mapping):
            yield from _flat(value, f"{full}/")
        else:
            yield full, value


def _image(key: str, value: Any, dataformats: str | None) -> tuple[Any, str]:
    """A logged image value as ``record()`` takes it, and its layout; raises naming ``key``."""
    what = f"log_images(): {key!r}"
    if dataformats is not None:
        check_dataformats(dataformats, "log_images(): dataformats")
    value, dataformats = stacked(value, dataformats, what)
    if not isinstance(value, np.ndarray) and not is_tensor(value):
        raise TypeError(
            f"{what} holds a {type(value).__name__}; expected a tensor, a numpy array, a PIL "
            f"image or a list of them"
        )
    return value, layout_of(tuple(value.shape), dataformats, what)


def _number(value: Any, batch_ok: bool) -> Any:
    """``value`` as ``record()`` takes a number, or None when it is not one (a str, a list...).

    Tensors are passed on as they are (no ``.item()``: no device sync); a bool becomes 0/1.
    """
    kind = type(value)
    if kind is float:
        return value
    if kind is int or kind is bool or isinstance(value, (np.integer, np.floating, np.bool_)):
        try:
            return float(value)
        except OverflowError:
            return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_complex() or value.numel() == 0:
            return None
        value = value.detach()
        if value.dtype == torch.bool:
            value = value.float()
        if value.ndim == 1 and batch_ok:
            return value
        return value.reshape(()) if value.numel() == 1 else None
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.reshape(()))
    if isinstance(value, np.ndarray) and batch_ok and value.ndim == 1 and value.size:
        return value if value.dtype.kind in "iuf" else None
    return None
