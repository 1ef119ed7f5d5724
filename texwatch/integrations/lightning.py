"""PyTorch Lightning: a ``Logger`` for ``self.log``, and a ``Callback`` for what the step holds.

:class:`TexwatchLogger` takes what a module already logs with ``self.log(...)`` (and
``log_hyperparams``) into a texwatch run, beside TensorBoard or any other logger.
:class:`TexwatchCallback` records what only ``training_step`` has (latents, predictions,
per-item losses with their timesteps): ``training_step`` returns, next to ``"loss"``, whatever
texwatch should record, under the names of :meth:`texwatch.client.Recorder.record`'s arguments;
the callback adds the learning rate and the checkpoint marks. Both record on global rank 0
only. Given both, with the callback given no path (or the logger's), they share the logger's
store and each step's metrics and step data make one row.

Example:
    >>> from texwatch.integrations.lightning import (                      # doctest: +SKIP
    ...     TexwatchCallback, TexwatchLogger)
    >>> class LoRA(L.LightningModule):
    ...     def training_step(self, batch, batch_idx):
    ...         ...
    ...         self.log("train_loss", loss)
    ...         return {"loss": loss, "latents": latents, "pred": x0_pred,
    ...                 "terms": {"v": l_v, "lpips": l_lp}, "weights": {"v": 1.0, "lpips": w},
    ...                 "timesteps": t, "item_losses": per_item, "sample_ids": batch["idx"]}
    >>> trainer = L.Trainer(logger=[TexwatchLogger("runs/lora.zarr"), TensorBoardLogger("tb")],
    ...                     callbacks=[TexwatchCallback()])
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package, when the unified `lightning` is not installed
    import pytorch_lightning as pl  # type: ignore[no-redef]

from texwatch._location import ObjectPath, locate
from texwatch.client import ENV_STORE, Recorder, RecorderOptions
from texwatch.client._options import options_from

from ._sink import LOSS_KEYS, MetricSink, open_sink

__all__ = ["LOSS_KEYS", "RECORDED_KEYS", "TexwatchCallback", "TexwatchLogger"]

RECORDED_KEYS: tuple[str, ...] = (
    "latents",
    "pred",
    "target",
    "images",
    "dataformats",
    "terms",
    "weights",
    "scalars",
    "sample_ids",
    "timesteps",
    "checkpoint",
)
"""Keys of ``training_step``'s output dict passed on to ``record()`` under the same name.

``"item_losses"`` (a ``(B,)`` tensor of per-item losses) is recorded as the loss when present,
so the daemon can normalise the loss per diffusion timestep; otherwise ``"loss"`` is.
"""


class _Pending:
    """One optimizer step's record() arguments, held until no more hooks can amend them."""

    __slots__ = ("kwargs", "loss", "step")

    def __init__(self, step: int, loss: Any, kwargs: dict[str, Any]) -> None:
        self.step, self.loss, self.kwargs = step, loss, kwargs


class TexwatchCallback(pl.Callback):
    """Records loss, loss terms, lr, latents, predictions... of each optimizer step (rank 0).

    The step recorded is the optimizer step (``trainer.global_step`` before it advanced), so
    with gradient accumulation one row per optimizer step holds its last micro-batch. The lr is
    the first parameter group's of the first optimizer, read right before the optimizer step
    (``scalars={"lr": ...}`` from ``training_step`` wins). A step at which a checkpoint is saved
    is recorded with ``checkpoint=True``: each step's row is recorded when the next batch starts
    (or training ends), once checkpoint hooks have run.

    With a :class:`TexwatchLogger` among the trainer's loggers, the callback records into the
    logger's store when it is given no path, the logger's path, or the logger's recorder: one
    store takes one writer, and each step's row then holds the logged metrics too.

    Args:
        path: the run store (``runs/x.zarr``), or None for the :class:`TexwatchLogger`'s store,
            else ``$TEXWATCH_STORE``; unused when ``recorder`` is given.
        recorder: record into this recorder instead; the caller closes it.
        options: a :class:`texwatch.client.RecorderOptions`; keyword arguments (its fields)
            override its values, as for :class:`texwatch.client.Recorder`; checked here, used
            when fitting starts. ``all_ranks`` is refused: global rank 0 records.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        recorder: Recorder | None = None,
        options: RecorderOptions | None = None,
        **overrides: Any,
    ) -> None:
        if recorder is not None and not isinstance(recorder, Recorder):
            raise TypeError(
                f"Expected argument `recorder` to be a texwatch.client.Recorder or None but got "
                f"{type(recorder).__name__}"
            )
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"Expected argument `path` to be a str or os.PathLike but got {type(path).__name__}"
            )
        self._path = path
        self._options = options_from(options, overrides, "TexwatchCallback()", main_process=True)
        self._recorder = recorder
        self._owns = recorder is None
        self._shared: MetricSink | None = None  # a TexwatchLogger's, while fitting
        self._pending: _Pending | None = None
        self._lr: float | None = None
        self._last_global_step = -1

    @property
    def recorder(self) -> Recorder | None:
        """The recorder in use (None before ``fit`` starts and on ranks other than 0)."""
        return self._shared.opened if self._shared is not None else self._recorder

    def __getattr__(self, name: str) -> Any:
        # Lightning reads these from whatever it was given as logger=: say what to use instead
        if name in _LOGGER_ATTRIBUTES:
            raise TypeError(
                "TexwatchCallback is a Lightning Callback, not a Logger: pass it as "
                "Trainer(callbacks=[TexwatchCallback(...)]), and record self.log() metrics with "
                "Trainer(logger=TexwatchLogger(...)) from texwatch.integrations.lightning"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Open the store (or join a :class:`TexwatchLogger`'s) on global rank 0 when fitting
        starts."""
        if stage == "fit" and trainer.is_global_zero:
            self._shared = self._logger_sink(trainer)
            if self._shared is not None:
                self._shared.hold = 2  # this callback hands a step over when the next starts
            elif self._recorder is None:
                # rank=0: Lightning already decided this process records, whatever $RANK says.
                self._recorder = Recorder(self._path, options=self._options, rank=0)
        self._last_global_step = trainer.global_step - 1

    def _logger_sink(self, trainer: pl.Trainer) -> MetricSink | None:
        """The sink of the trainer's TexwatchLogger writing the store this callback would."""
        for logger in trainer.loggers:
            if not isinstance(logger, TexwatchLogger):
                continue
            sink = logger._sink
            if self._recorder is not None:
                if sink.records_into(self._recorder):
                    return sink
            elif self._path is None or str(_where(self._path)) == str(_where(sink.path)):
                return sink
        return None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._record_pending()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._lr is None and optimizer.param_groups:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: torch.Tensor | Mapping[str, Any] | None,
        batch: Any,
        batch_idx: int,
    ) -> None:
        lr, self._lr = self._lr, None
        idle = self._recorder is None and self._shared is None
        if idle or trainer.global_step <= self._last_global_step + 1:
            return  # not rank 0, or no optimizer step finished (accumulation, skipped step)
        self._last_global_step = trainer.global_step - 1
        if outputs is None:
            return
        out: Mapping[str, Any] = {"loss": outputs} if isinstance(outputs, torch.Tensor) else outputs
        loss = out.get("item_losses")
        if loss is None:
            loss = out.get("loss")
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1))
            if loss is not None and accumulate > 1 and pl_module.automatic_optimization:
                loss = loss * accumulate  # Lightning divides the reported loss by it
        kwargs = {k: out[k] for k in RECORDED_KEYS if out.get(k) is not None}
        if lr is not None:
            kwargs["scalars"] = {"lr": lr, **dict(kwargs.get("scalars") or {})}
        self._pending = _Pending(self._last_global_step, loss, kwargs)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._pending is not None and self._pending.step == trainer.global_step - 1:
            self._pending.kwargs["checkpoint"] = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_pending()
        if self._shared is not None:
            self._shared.flush()
        elif self._recorder is not None:
            self._recorder.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Record what is pending and close the store this callback opened, marking the run
        finished unless fitting was interrupted (an exception, Ctrl-C); a shared store is the
        logger's to close."""
        if stage != "fit":
            return
        self._record_pending()
        if self._shared is not None:
            self._shared.hold = 1
            self._shared = None
        if self._owns and self._recorder is not None:
            recorder, self._recorder = self._recorder, None
            recorder.close(finished=not trainer.interrupted)

    def _record_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if self._shared is not None:
            self._shared.add(pending.step, pending.loss, pending.kwargs)
        elif self._recorder is not None:
            self._recorder.record(pending.step, pending.loss, **pending.kwargs)


_LOGGER_ATTRIBUTES = frozenset(
    {
        "after_save_checkpoint",
        "experiment",
        "finalize",
        "group_separator",
        "log_dir",
        "log_graph",
        "log_hyperparams",
        "log_metrics",
        "name",
        "root_dir",
        "save",
        "save_dir",
        "version",
    }
)
"""What Lightning reads from a logger: a TexwatchCallback given as one fails on these, clearly."""


class TexwatchLogger(pl.loggers.Logger):
    """A Lightning ``Logger`` recording every ``self.log`` metric and the hyperparameters (rank 0).

    Each ``log_metrics(metrics, step)`` is one step's metrics: the first of ``loss_key`` present
    is the step loss (``self.log("train_loss", loss)``; with ``on_step=True, on_epoch=True``
    Lightning logs ``train_loss_step``), every other metric a scalar (``epoch`` too, which
    Lightning adds). Any key is taken: one the store cannot hold as it is is stored under an
    escaped name (listed in :attr:`renamed`; the report shows the key); values that are not
    numbers are skipped (counted in :attr:`skipped`, warned once).

    Lightning logs a step in several calls (training, then validation at the same step); they
    make one row, recorded when a later step is logged or at ``finalize`` (the end of ``fit``).
    The step is Lightning's: the optimizer steps done before the batch's, as for
    :class:`TexwatchCallback`. Lightning logs every ``log_every_n_steps`` (50) steps: set
    ``Trainer(log_every_n_steps=1)`` for a row per step. ``log_hyperparams`` sets the run's
    ``config`` (values JSON cannot hold are stored as their ``str()``).

    Args:
        path: the run store (``runs/x.zarr``), or None for ``$TEXWATCH_STORE``.
        loss_key: the logged key (or keys, in order of preference) that is the step loss.
        recorder: record into this :class:`~texwatch.client.Recorder` instead (its owner closes
            it; hyperparameters are then not stored).
        options: a :class:`texwatch.client.RecorderOptions`; keyword arguments (its fields)
            override its values, as for :class:`texwatch.client.Recorder`. ``all_ranks`` is
            refused: global rank 0 records.

    Raises:
        TypeError: a bad ``path``, ``loss_key`` or ``recorder``, or an unknown option.
        ValueError: ``all_ranks=True``, or a bad option value.
    """

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
        self._sink, opts = open_sink("TexwatchLogger", path, recorder, options, overrides, loss_key)
        self._run = opts.run

    @property
    def name(self) -> str:
        """The run's name: ``run=``, else the store's folder name without ``.zarr``."""
        if self._run is not None:
            return self._run
        path = self._sink.path if self._sink.path is not None else os.environ.get(ENV_STORE)
        return Path(str(path or "texwatch")).name.removesuffix(".zarr")

    @property
    def version(self) -> int:
        """Always 0: a texwatch run is one store, resumed rather than versioned."""
        return 0

    @property
    def save_dir(self) -> str | None:
        """The folder holding a local store (Lightning puts checkpoints under
        ``save_dir/name/version_0``); None for object storage."""
        where = _where(self._sink.path)
        return str(where.parent) if isinstance(where, Path) else None

    @property
    @pl.loggers.logger.rank_zero_experiment
    def experiment(self) -> Recorder:
        """The run's :class:`~texwatch.client.Recorder` (rank 0), opened when first needed."""
        return self._sink.recorder

    @property
    def renamed(self) -> dict[str, str]:
        """Logged keys stored under another name: key -> stored name."""
        return dict(self._sink.renamed)

    @property
    def skipped(self) -> dict[str, int]:
        """Values not recorded because they were not numbers, counted per logged key."""
        return dict(self._sink.skipped)

    @pl.utilities.rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Merge ``metrics`` into ``step``'s row: the loss key as the loss, the rest scalars."""
        self._sink.log(self._sink.step(step), metrics)

    @pl.utilities.rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Add ``params`` to the run's ``config``."""
        self._sink.configure(params)

    @pl.utilities.rank_zero_only
    def finalize(self, status: str) -> None:
        """Record the steps held back and close the store (a later log reopens it); the run is
        marked finished only when Lightning says fitting succeeded."""
        self._sink.close(finished=status == "success")


def _where(path: str | os.PathLike[str] | None) -> Path | ObjectPath | None:
    """Where ``path`` (or ``$TEXWATCH_STORE``) points; two spellings of a place compare equal."""
    path = path if path is not None else os.environ.get(ENV_STORE)
    if path is None:
        return None
    where = locate(path)
    return where.resolve() if isinstance(where, Path) else where
