"""PyTorch Lightning: a ``Callback`` that records every optimizer step through texwatch.

``training_step`` returns, next to ``"loss"``, whatever texwatch should record, under the names
of :meth:`texwatch.client.Recorder.record`'s arguments; the callback adds the learning rate and
the checkpoint marks and records on global rank 0 only.

Example:
    >>> from texwatch.integrations.lightning import TexwatchCallback        # doctest: +SKIP
    >>> class LoRA(L.LightningModule):
    ...     def training_step(self, batch, batch_idx):
    ...         ...
    ...         return {"loss": loss, "latents": latents, "pred": x0_pred,
    ...                 "terms": {"v": l_v, "lpips": l_lp}, "weights": {"v": 1.0, "lpips": w},
    ...                 "timesteps": t, "item_losses": per_item, "sample_ids": batch["idx"]}
    >>> trainer = L.Trainer(callbacks=[TexwatchCallback("runs/lora.zarr", run="lora")])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package, when the unified `lightning` is not installed
    import pytorch_lightning as pl  # type: ignore[no-redef]

from texwatch.client import Recorder, RecorderOptions
from texwatch.client._options import options_from

__all__ = ["RECORDED_KEYS", "TexwatchCallback"]

RECORDED_KEYS: tuple[str, ...] = (
    "latents",
    "pred",
    "target",
    "images",
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

    Args:
        path: the run store (``runs/x.zarr``), or None for ``$TEXWATCH_STORE``; unused when
            ``recorder`` is given.
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
        self._pending: _Pending | None = None
        self._lr: float | None = None
        self._last_global_step = -1

    @property
    def recorder(self) -> Recorder | None:
        """The recorder in use (None before ``fit`` starts and on ranks other than 0)."""
        return self._recorder

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Open the store on global rank 0 when fitting starts."""
        if stage == "fit" and trainer.is_global_zero and self._recorder is None:
            # rank=0: Lightning already decided this process records, whatever $RANK says.
            self._recorder = Recorder(self._path, options=self._options, rank=0)
        self._last_global_step = trainer.global_step - 1

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
        if self._recorder is None or trainer.global_step <= self._last_global_step + 1:
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
        if self._recorder is not None:
            self._recorder.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Record what is pending and close the store this callback opened, marking the run
        finished unless fitting was interrupted (an exception, Ctrl-C)."""
        if stage != "fit":
            return
        self._record_pending()
        if self._owns and self._recorder is not None:
            recorder, self._recorder = self._recorder, None
            recorder.close(finished=not trainer.interrupted)

    def _record_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and self._recorder is not None:
            self._recorder.record(pending.step, pending.loss, **pending.kwargs)
