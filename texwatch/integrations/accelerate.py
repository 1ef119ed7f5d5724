"""Hugging Face accelerate: record through texwatch on the main process, once per optimizer step.

The diffusers training scripts (``train_text_to_image_lora.py``, ``train_dreambooth_lora.py``...)
run on accelerate. Every process calls :meth:`AcceleratorRecorder.record` at the same place; only
the main process opens the store and records, and calls inside ``accelerator.accumulate()`` whose
gradients are not synchronised yet are skipped, so a row is one optimizer step.

Example:
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
"""

from __future__ import annotations

import os
from typing import Any

from accelerate import Accelerator

from texwatch.client import Recorder, RecorderOptions
from texwatch.client._options import options_from

__all__ = ["AcceleratorRecorder"]


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
