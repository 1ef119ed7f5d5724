"""Hugging Face accelerate: a tracker for ``accelerator.log``, and a recorder for the rest.

:class:`TexwatchTracker` is an accelerate ``GeneralTracker``: what a script already sends to
``accelerator.log(...)`` (the loss, the lr) and ``log_images`` goes into a texwatch run, beside
TensorBoard or wandb. The diffusers training scripts pass ``--report_to`` to
``Accelerator(log_with=...)``; importing this module registers the name ``texwatch`` where
accelerate offers a registry (``accelerate.tracking.register_tracker_class``, accelerate 1.x),
so ``--report_to texwatch`` works. :class:`AcceleratorRecorder` records what only the training
step has (latents, predictions, per-item losses with their timesteps), once per optimizer step.

Example:
    >>> from texwatch.integrations.accelerate import TexwatchTracker        # doctest: +SKIP
    >>> accelerator = Accelerator(log_with=[TexwatchTracker("runs/lora.zarr"), "tensorboard"],
    ...                           project_dir="runs")
    >>> accelerator.init_trackers("sd-lora", config=vars(args))
    >>> accelerator.log({"train_loss": loss, "lr": lr}, step=global_step)
    >>> accelerator.end_training()

The diffusers scripts, with :class:`AcceleratorRecorder` for what the step holds:
    >>> from texwatch.integrations.accelerate import AcceleratorRecorder     # doctest: +SKIP
    >>> accelerator = Accelerator(gradient_accumulation_steps=4)
    >>> tw = AcceleratorRecorder(accelerator, "runs/lora.zarr", run="sd-lora-brick")
    >>> for batch in loader:
    ...     with accelerator.accumulate(unet):
    ...         ...                                   # forward, accelerator.backward(loss), step
    ...     if accelerator.sync_gradients:
    ...         global_step += 1
    ...     tw.record(global_step, loss, latents=latents, pred=model_pred, target=target,
    ...               timesteps=timesteps, scalars={"lr": lr_scheduler.get_last_lr()[0]})
    >>> tw.close()

A tracker and a recorder write different stores: one store takes one writer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from accelerate import Accelerator, PartialState
from accelerate import tracking as _tracking
from accelerate.tracking import GeneralTracker, on_main_process

from texwatch.client import ENV_STORE, Recorder, RecorderOptions
from texwatch.client._options import options_from

from ._sink import LOSS_KEYS, open_sink

__all__ = ["LOSS_KEYS", "REPORT_TO", "AcceleratorRecorder", "TexwatchTracker"]

REPORT_TO = "texwatch"
"""The tracker's name: ``Accelerator(log_with="texwatch")``, ``--report_to texwatch``."""


class TexwatchTracker(GeneralTracker):
    """An accelerate tracker recording ``accelerator.log`` and ``log_images`` into a texwatch run.

    Each ``log(values, step)`` is one step's metrics: the first of ``loss_key`` present is the
    step loss, every other number (nested dicts as ``outer/inner``, 0-d or one-element tensors
    without a device sync) a scalar. Any key is taken: one the store cannot hold as it is is
    stored under an escaped name (listed in :attr:`renamed`; the report shows the key); values
    that are not numbers are skipped (counted in :attr:`skipped`, warned once). A step's
    calls (``log``, ``log_images``) are merged into one row, recorded when a later step is
    logged or at ``finish()`` (``accelerator.end_training()``). ``step=None`` is the step after
    the last one logged.

    Only the main process opens the store and records (``main_process_only``, as accelerate's
    own trackers); the store opens at the first call, with ``init_trackers``' config.

    Args:
        path: the run store (``runs/x.zarr``), or None for ``$TEXWATCH_STORE``.
        loss_key: the logged key (or keys, in order of preference) that is the step loss.
        recorder: record into this :class:`~texwatch.client.Recorder` instead (its owner closes
            it; ``init_trackers``' config is then not stored).
        options: a :class:`texwatch.client.RecorderOptions`; keyword arguments (its fields)
            override its values, as for :class:`texwatch.client.Recorder`. ``all_ranks`` is
            refused: the main process records.

    Raises:
        TypeError: a bad ``path``, ``loss_key`` or ``recorder``, or an unknown option.
        ValueError: ``all_ranks=True``, or a bad option value.
    """

    name = REPORT_TO
    requires_logging_directory = False
    main_process_only = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        loss_key: str | Sequence[str] = LOSS_KEYS,
        recorder: Recorder | None = None,
        options: RecorderOptions | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self._sink, _ = open_sink("TexwatchTracker", path, recorder, options, overrides, loss_key)

    @property
    def tracker(self) -> Recorder | None:
        """The run's :class:`~texwatch.client.Recorder` on the main process, None elsewhere."""
        return self._sink.recorder if PartialState().is_main_process else None

    @property
    def renamed(self) -> dict[str, str]:
        """Logged keys stored under another name: key -> stored name."""
        return dict(self._sink.renamed)

    @property
    def skipped(self) -> dict[str, int]:
        """Values not recorded because they were not numbers, counted per logged key."""
        return dict(self._sink.skipped)

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Store ``init_trackers``' config as the run's ``config`` (values JSON cannot hold are
        stored as their ``str()``)."""
        self._sink.configure(values)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Record ``values`` at ``step``: the loss key as the loss, other numbers as scalars."""
        if kwargs:
            raise TypeError(
                f"TexwatchTracker.log() takes no keyword arguments but got "
                f"{', '.join(sorted(kwargs))}"
            )
        self._sink.log(self._sink.step(step), values)

    @on_main_process
    def log_images(
        self, values: Mapping[str, Any], step: int | None = None, dataformats: str | None = None
    ) -> None:
        """Record image streams: tensors (NCHW, CHW), numpy arrays (NHWC, HWC), PIL images or
        lists of them, named by their key; ``dataformats`` ("NHWC"...) when the shape cannot
        tell where the channels are. 8-bit images are stored scaled to [0, 1]."""
        self._sink.log_images(self._sink.step(step), values, dataformats)

    @on_main_process
    def flush(self) -> None:
        """Record the steps held back and wait until every row is committed."""
        self._sink.flush()

    @on_main_process
    def finish(self) -> None:
        """Record what is pending and close the store (reopened by a later ``log``)."""
        self._sink.close()


class _ReportToTracker(TexwatchTracker):
    """The tracker accelerate builds for ``log_with="texwatch"`` (``--report_to texwatch``).

    The store is ``$TEXWATCH_STORE`` when set, else ``<logging_dir>/<project_name>.zarr``;
    ``init_trackers(init_kwargs={"texwatch": {...}})`` passes ``path=`` and the options.
    """

    requires_logging_directory = True

    def __init__(
        self, project_name: str, logging_dir: str | os.PathLike[str], **kwargs: Any
    ) -> None:
        path = kwargs.pop("path", None) or os.environ.get(ENV_STORE)
        if path is None:
            path = os.path.join(logging_dir, f"{project_name}.zarr")
        super().__init__(path, **kwargs)


if hasattr(_tracking, "register_tracker_class") and REPORT_TO not in _tracking.LOGGER_TYPE_TO_CLASS:
    _tracking.register_tracker_class(_ReportToTracker)


class AcceleratorRecorder:
    """A :class:`texwatch.client.Recorder` that exists on the accelerate main process only.

    Args:
        accelerator: the job's ``accelerate.Accelerator``.
        path: the run store (``runs/x.zarr``), or None for ``$TEXWATCH_STORE``.
        per_optimizer_step: skip calls made while ``accelerator.sync_gradients`` is False (the
            micro-steps of gradient accumulation), so each row is one optimizer step.
        options: a :class:`texwatch.client.RecorderOptions`; keyword arguments (its fields)
            override its values, as for :class:`texwatch.client.Recorder`. ``all_ranks`` is
            refused: accelerate's main process records.

    Raises:
        TypeError: ``accelerator`` is not an ``accelerate.Accelerator``, or an unknown option.
        ValueError: ``all_ranks=True``.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        path: str | os.PathLike[str] | None = None,
        *,
        per_optimizer_step: bool = True,
        options: RecorderOptions | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(accelerator, Accelerator):
            raise TypeError(
                f"Expected argument `accelerator` to be an accelerate.Accelerator but "
                f"got {type(accelerator).__name__}"
            )
        if not isinstance(per_optimizer_step, bool):
            raise TypeError(
                f"Expected argument `per_optimizer_step` to be a bool but got "
                f"{type(per_optimizer_step).__name__}"
            )
        opts = options_from(options, overrides, "AcceleratorRecorder()", main_process=True)
        self.accelerator = accelerator
        self.per_optimizer_step = per_optimizer_step
        self._recorder: Recorder | None = None
        if accelerator.is_main_process:
            # rank=0: accelerate already decided this process records, whatever $RANK says.
            self._recorder = Recorder(path, options=opts, rank=0)

    @property
    def recorder(self) -> Recorder | None:
        """The underlying recorder on the main process, None elsewhere."""
        return self._recorder

    @property
    def active(self) -> bool:
        """True on the process that records."""
        return self._recorder is not None

    def record(self, step: int, loss: Any = None, **kwargs: Any) -> bool:
        """Record one step on the main process; arguments as :meth:`Recorder.record`.

        Returns:
            True when a row was recorded, False on other processes and on accumulation
            micro-steps (``per_optimizer_step``).
        """
        if self._recorder is None:
            return False
        if self.per_optimizer_step and not self.accelerator.sync_gradients:
            return False
        self._recorder.record(step, loss, **kwargs)
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Block until the rows recorded so far are committed (main process only)."""
        if self._recorder is not None:
            self._recorder.flush(timeout)

    def close(self, *, finished: bool = True) -> None:
        """Commit and close the store, marking the run ``finished`` (see ``Recorder.close``);
        safe to call twice and on every process."""
        if self._recorder is not None:
            self._recorder.close(finished=finished)

    def __enter__(self) -> AcceleratorRecorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)
