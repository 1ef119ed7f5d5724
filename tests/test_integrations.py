"""The framework integrations, with the real frameworks: Lightning's Trainer and accelerate."""

from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from two_ranks import run_two_ranks

import texwatch.client as tw
from texwatch.client import RecorderOptions
from texwatch.integrations.accelerate import AcceleratorRecorder
from texwatch.integrations.lightning import TexwatchCallback
from texwatch.store import open_run

STEPS = 6
BATCH = 4


def _dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(STEPS * BATCH, 3, 16, 16, generator=gen)
    return TensorDataset(images, torch.arange(STEPS * BATCH))


class _Tiny(pl.LightningModule):
    """A one-layer denoiser whose training_step returns everything texwatch records."""

    def __init__(self, item_losses: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        self.item_losses = item_losses

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, ids = batch
        pred = self.net(x)
        mse = (pred - x).square().mean(dim=(1, 2, 3))  # (B,)
        l1 = (pred - x).abs().mean(dim=(1, 2, 3))  # (B,)
        per_item = mse + 0.1 * l1
        out = {
            "loss": per_item.mean(),
            "latents": x,
            "pred": pred,
            "terms": {"mse": mse.mean(), "l1": l1.mean()},
            "weights": {"mse": 1.0, "l1": 0.1},
            "sample_ids": ids,
            "timesteps": ids % 10,
        }
        if self.item_losses:
            out["item_losses"] = per_item
        return out

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(
    callback: TexwatchCallback, tmp_path: Path, item_losses: bool = True, **trainer_args: Any
) -> None:
    args: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": STEPS,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "callbacks": [callback],
    }
    args.update(trainer_args)
    trainer = pl.Trainer(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        trainer.fit(_Tiny(item_losses), DataLoader(_dataset(), batch_size=BATCH, shuffle=False))


def _by_hand(path: Path) -> None:
    """The same training as a plain loop, calling record() by hand."""
    module = _Tiny()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    tw.init(path, run="tiny", flush_interval=0.05)
    try:
        loader = DataLoader(_dataset(), batch_size=BATCH, shuffle=False)
        for step, batch in enumerate(loader):
            lr = opt.param_groups[0]["lr"]
            out = module.training_step(batch, step)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            sched.step()
            tw.record(
                step,
                out["item_losses"],
                latents=out["latents"],
                pred=out["pred"],
                terms=out["terms"],
                weights=out["weights"],
                sample_ids=out["sample_ids"],
                timesteps=out["timesteps"],
                scalars={"lr": lr},
            )
    finally:
        tw.close()


def _contents(path: Path) -> dict[str, Any]:
    run = open_run(path)
    scalars = {k: v for k, v in run.scalars().items() if k != "time"}
    streams = {name: run.stream(name) for name in run.stream_names()}
    return {
        "scalars": scalars,
        "streams": streams,
        "items": run.items(),
        "committed": run.committed(),
    }


def test_lightning_callback_records_the_same_rows_as_record_by_hand(tmp_path: Path) -> None:
    _fit(TexwatchCallback(tmp_path / "cb.zarr", run="tiny", flush_interval=0.05), tmp_path)
    _by_hand(tmp_path / "hand.zarr")
    got, want = _contents(tmp_path / "cb.zarr"), _contents(tmp_path / "hand.zarr")

    assert got["committed"] == want["committed"]
    assert (
        sorted(got["scalars"])
        == sorted(want["scalars"])
        == sorted(["step", "loss", "lr", "term/mse", "term/l1", "weight/mse", "weight/l1"])
    )
    np.testing.assert_array_equal(got["scalars"]["step"], np.arange(STEPS))
    np.testing.assert_allclose(got["scalars"]["lr"], [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    for name, column in want["scalars"].items():
        np.testing.assert_allclose(got["scalars"][name], column, rtol=1e-6, err_msg=name)
    for name, column in want["items"].items():
        np.testing.assert_allclose(got["items"][name], column, rtol=1e-6, err_msg=name)
    assert sorted(got["streams"]) == ["latents", "pred"]
    for name, (steps, data) in want["streams"].items():
        np.testing.assert_array_equal(got["streams"][name][0], steps)
        np.testing.assert_allclose(got["streams"][name][1], data, rtol=1e-5, atol=1e-7)


def test_lightning_callback_marks_checkpoints_and_one_row_per_optimizer_step(
    tmp_path: Path,
) -> None:
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1
    )
    callback = TexwatchCallback(tmp_path / "acc.zarr", flush_interval=0.05)
    # 2 micro-batches per optimizer step: the dataset's 6 batches make 3 optimizer steps.
    _fit(
        callback,
        tmp_path,
        item_losses=False,
        callbacks=[callback, saver],
        enable_checkpointing=True,
        accumulate_grad_batches=2,
        max_epochs=1,
        max_steps=-1,
    )
    run = open_run(tmp_path / "acc.zarr")
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], [0, 1, 2])
    assert run.checkpoint_steps() == [1]
    # The loss is the micro-batch's own (Lightning hands the callback loss / 2): the sum of its
    # weighted terms, which Lightning does not rescale.
    np.testing.assert_allclose(cols["loss"], cols["term/mse"] + 0.1 * cols["term/l1"], rtol=1e-6)
    steps, _ = run.stream("latents")
    np.testing.assert_array_equal(steps, np.repeat([0, 1, 2], BATCH))
    assert callback.recorder is None  # closed at teardown


def test_lightning_callback_into_a_given_recorder_leaves_it_open(tmp_path: Path) -> None:
    recorder = tw.Recorder(tmp_path / "shared.zarr", flush_interval=0.05)
    try:
        _fit(TexwatchCallback(recorder=recorder), tmp_path)
        assert not recorder.closed
        recorder.flush()
        assert open_run(tmp_path / "shared.zarr").committed()["scalars"] == STEPS
    finally:
        recorder.close()


def test_lightning_callback_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="recorder"):
        TexwatchCallback(recorder="runs/x.zarr")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        TexwatchCallback(42)  # type: ignore[arg-type]
    # Options are checked when the callback is made, not when fitting starts on rank 0.
    with pytest.raises(TypeError, match=r"TexwatchCallback\(\): unknown option 'flush'"):
        TexwatchCallback("runs/x.zarr", flush=1.0)
    with pytest.raises(ValueError, match="flush_interval must be finite and > 0"):
        TexwatchCallback("runs/x.zarr", flush_interval=0)
    with pytest.raises(ValueError, match="all_ranks=True given"):
        TexwatchCallback("runs/x.zarr", all_ranks=True)


def test_accelerate_helper_records_one_row_per_optimizer_step(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    recorded = []
    with AcceleratorRecorder(
        accelerator, tmp_path / "acc.zarr", run="acc", flush_interval=0.05
    ) as rec:
        assert rec.active
        step = 0
        for i in range(6):
            with accelerator.accumulate(model):
                loss = model(torch.full((2, 4), float(i))).square().mean()
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
            if accelerator.sync_gradients:
                step += 1
            recorded.append(rec.record(step, loss, scalars={"micro_batch": float(i)}))
    assert recorded == [False, True] * 3
    cols = open_run(tmp_path / "acc.zarr").scalars()
    np.testing.assert_array_equal(cols["step"], [1, 2, 3])
    np.testing.assert_array_equal(cols["micro_batch"], [1.0, 3.0, 5.0])


def test_accelerate_helper_rejects_a_non_accelerator(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="accelerator"):
        AcceleratorRecorder(object(), tmp_path / "x.zarr")  # type: ignore[arg-type]
    assert not (tmp_path / "x.zarr").exists()


def test_accelerate_helper_takes_every_recorder_option_and_refuses_all_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accelerator = Accelerator(cpu=True)
    with pytest.raises(ValueError, match=r"AcceleratorRecorder\(\): all_ranks=True given"):
        AcceleratorRecorder(accelerator, tmp_path / "x.zarr", all_ranks=True)
    with pytest.raises(TypeError, match="unknown option 'max_item'"):
        AcceleratorRecorder(accelerator, tmp_path / "x.zarr", max_item=2)
    assert not (tmp_path / "x.zarr").exists()
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    options = RecorderOptions(run="acc", max_items=1)
    with AcceleratorRecorder(
        accelerator, tmp_path / "acc.zarr", options=options, durable=True
    ) as rec:
        rec.record(0, 1.0, latents=np.ones((3, 4, 8, 8), np.float32))
    assert synced  # durable=True reached the store
    run = open_run(tmp_path / "acc.zarr")
    assert run.name == "acc" and run.stream("latents")[1].shape == (1, 4, 8, 8)


_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from accelerate import Accelerator
    from texwatch.integrations.accelerate import AcceleratorRecorder

    accelerator = Accelerator(cpu=True)
    rec = AcceleratorRecorder(accelerator, sys.argv[1], run="two-procs")
    print("active", accelerator.process_index, rec.active, flush=True)
    for step in range(5):
        rec.record(step, torch.tensor(float(step)),
                   scalars={"rank": float(accelerator.process_index)})
    rec.close()
    accelerator.wait_for_everyone()
    """
)


@pytest.mark.integration
def test_accelerate_helper_records_on_the_main_process_only(tmp_path: Path) -> None:
    """Two real processes (gloo on the CPU): only process 0 opens the store and writes rows."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    store = tmp_path / "two.zarr"
    outputs = run_two_ranks(script, store)
    assert "active 0 True" in outputs[0] and "active 1 False" in outputs[1], outputs
    cols = open_run(store).scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(5))
    np.testing.assert_array_equal(cols["rank"], np.zeros(5))
    assert sorted(p.name for p in store.iterdir()) == ["scalars", "zarr.json"]
