"""The tracker and the logger, with the real frameworks: accelerate's ``Accelerator.log`` (and a
real diffusers UNet training step), Lightning's ``self.log`` through a ``Trainer``."""

from __future__ import annotations

import csv
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import tqdm
from accelerate import Accelerator
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from two_ranks import run_two_ranks

import texwatch.client as tw
from texwatch.integrations.accelerate import TexwatchTracker
from texwatch.integrations.lightning import TexwatchCallback, TexwatchLogger
from texwatch.store import logged_name, open_run


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: two OpenMP threads spin-wait on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- accelerate ---------------------------------------------------------------------------------


def _log_run(tracker: TexwatchTracker) -> Accelerator:
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers(
        "proj",
        config={"lr": 1e-4, "out": Path("runs"), "beta": float("nan"), "dtype": torch.float16},
    )
    for step in range(4):
        accelerator.log(
            {
                "train_loss": 1.0 / (step + 1),
                "lr/d*lr/unet": torch.tensor(0.5 * step),  # kohya-ss names
                "lr/d*lr": 0.25,  # would be a folder of the one above
                "val acc": np.float32(step),
                "grads": {"unet": 2.0, "te": 3.0},
                "note": "a str",
                "items": torch.ones(3),  # more than one number
                "done": step == 3,
            },
            step=step,
        )
    return accelerator


def test_tracker_records_accelerator_log_config_and_odd_names(tmp_path: Path) -> None:
    tracker = TexwatchTracker(tmp_path / "acc.zarr", flush_interval=0.05)
    with pytest.warns(RuntimeWarning) as caught:
        accelerator = _log_run(tracker)
        accelerator.end_training()
    messages = [str(w.message) for w in caught]
    assert sum("records numbers only" in m for m in messages) == 1  # warned once
    flat = tracker.renamed["lr/d*lr"]
    assert tracker.renamed == {
        "lr/d*lr/unet": "lr/d_lr/unet",
        "lr/d*lr": flat,  # would hold the one above: a flat name of its own
        "val acc": "val_acc",
    }
    assert flat.startswith("lr_d_lr-")
    assert tracker.skipped == {"note": 4, "items": 4}

    run = open_run(tmp_path / "acc.zarr")
    assert run.name == "acc"
    assert run.config == {"lr": 1e-4, "out": "runs", "beta": "nan", "dtype": "torch.float16"}
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(4))
    np.testing.assert_allclose(cols["loss"], [1.0, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(cols["lr/d_lr/unet"], [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(cols[flat], 0.25)
    names = run.names()
    for key in ("lr/d*lr/unet", "lr/d*lr", "val acc"):
        assert logged_name(names, tracker.renamed[key]) == key
    np.testing.assert_allclose(cols["val_acc"], np.arange(4))
    np.testing.assert_allclose(cols["grads/unet"], 2.0)
    np.testing.assert_allclose(cols["grads/te"], 3.0)
    np.testing.assert_allclose(cols["done"], [0, 0, 0, 1])
    assert run.committed()["scalars"] == 4  # one row a step


def test_tracker_log_images_takes_the_layouts_accelerate_users_pass(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    nchw = torch.rand(2, 3, 8, 8, generator=gen)
    latents = torch.randn(2, 16, 8, 8, generator=gen)  # 16 channels: channels-first
    rgb = (np.arange(2 * 6 * 6 * 3) % 256).astype(np.uint8).reshape(2, 6, 6, 3)
    pil = [Image.fromarray(a) for a in rgb]
    grey = Image.fromarray(rgb[0, :, :, 0])
    tracker = TexwatchTracker(tmp_path / "img.zarr", flush_interval=0.05)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("proj")
    accelerator.log({"loss": 0.5}, step=7)
    tracker.log_images(
        {
            "nchw": nchw,
            "chw": nchw[0],
            "latents": latents,  # a reserved stream name: stored as latents_
            "nhwc": rgb,
            "hwc": rgb[1],
            "pil": pil,
            "grey": grey,
            "val/0": nchw.permute(0, 2, 3, 1).numpy(),
        },
        step=7,
    )
    with pytest.raises(ValueError, match=r"'cube'.*\(3, 3, 3\).*dataformats='CHW' or 'HWC'"):
        tracker.log_images({"cube": np.zeros((3, 3, 3), np.float32)}, step=7)
    tracker.log_images({"cube": np.ones((3, 3, 3), np.float32)}, step=7, dataformats="HWC")
    with pytest.raises(ValueError, match="dataformats"):
        tracker.log_images({"x": nchw}, step=7, dataformats="NCWH")
    with pytest.raises(TypeError, match="'bad' holds a list"):
        tracker.log_images({"bad": ["x"]}, step=7)
    with pytest.raises(TypeError, match="'bad' holds a str"):
        tracker.log_images({"bad": [nchw[0], "x"]}, step=7)
    accelerator.end_training()

    run = open_run(tmp_path / "img.zarr")
    np.testing.assert_array_equal(run.scalars()["step"], [7])
    np.testing.assert_allclose(run.scalars()["loss"], [0.5])
    want = {
        "nchw": nchw.numpy(),
        "chw": nchw[:1].numpy(),
        "latents_": latents.numpy(),
        "nhwc": rgb.transpose(0, 3, 1, 2) / 255.0,
        "hwc": rgb[1:].transpose(0, 3, 1, 2) / 255.0,
        "pil": rgb.transpose(0, 3, 1, 2) / 255.0,
        "grey": rgb[None, :1, :, :, 0] / 255.0,
        "val/0": nchw.numpy(),
        "cube": np.ones((1, 3, 3, 3)),
    }
    assert sorted(run.stream_names()) == sorted(want)
    for name, data in want.items():
        steps, got = run.stream(name)
        np.testing.assert_array_equal(steps, [7] * len(data))
        np.testing.assert_allclose(got, data, rtol=1e-6, atol=1e-7, err_msg=name)


def test_tracker_holds_a_step_until_the_next_and_merges_its_calls(tmp_path: Path) -> None:
    tracker = TexwatchTracker(tmp_path / "m.zarr", flush_interval=0.05)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("proj")
    accelerator.log({"loss": 1.0}, step=0)
    accelerator.log({"val_loss": 2.0}, step=0)  # the same step: the same row
    accelerator.log({"loss": 3.0})  # step None: the step after the last one, 1
    tracker.flush()
    cols = open_run(tmp_path / "m.zarr").scalars(latest_wins=False)
    np.testing.assert_array_equal(cols["step"], [0, 1])
    np.testing.assert_allclose(cols["loss"], [1.0, 3.0])
    np.testing.assert_allclose(cols["val_loss"], [2.0, np.nan])
    accelerator.log({"loss": 4.0}, step=5)
    with pytest.warns(RuntimeWarning, match="logged step 3 after step 5 was recorded"):
        accelerator.log({"loss": 5.0}, step=3)  # records step 5
        accelerator.log({"loss": 6.0}, step=6)  # records step 3, after 5
    with pytest.raises(ValueError, match="`step` to be an int >= 0"):
        accelerator.log({"loss": 1.0}, step=-1)
    with pytest.raises(TypeError, match="no keyword arguments"):
        accelerator.log({"loss": 1.0}, step=7, log_kwargs={"texwatch": {"commit": True}})
    accelerator.end_training()
    np.testing.assert_array_equal(open_run(tmp_path / "m.zarr").scalars()["step"], [0, 1, 3, 5, 6])


def test_tracker_loss_key_is_configurable_and_a_resumed_run_cannot_clash(tmp_path: Path) -> None:
    with tw.Recorder(tmp_path / "r.zarr") as rec:
        rec.record(0, 1.0, scalars={"lr": 0.1})
    tracker = TexwatchTracker(tmp_path / "r.zarr", loss_key="my/loss", flush_interval=0.05)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("proj")
    accelerator.log({"my/loss": 0.25, "loss": 9.0, "lr/unet": 0.01}, step=1)
    accelerator.end_training()
    inside = tracker.renamed["lr/unet"]  # "lr" is a stored column: lr/unet gets a flat name
    assert tracker.renamed == {"loss": "loss_", "lr/unet": inside}
    assert inside.startswith("lr_unet-")
    cols = open_run(tmp_path / "r.zarr").scalars()
    np.testing.assert_array_equal(cols["step"], [0, 1])
    np.testing.assert_allclose(cols["loss"], [1.0, 0.25])
    np.testing.assert_allclose(cols["loss_"], [np.nan, 9.0])  # "loss" is not the loss key here
    np.testing.assert_allclose(cols[inside], [np.nan, 0.01])


def test_tracker_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        TexwatchTracker(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_key"):
        TexwatchTracker(tmp_path / "x.zarr", loss_key=[])
    with pytest.raises(TypeError, match="recorder"):
        TexwatchTracker(recorder="runs/x.zarr")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TexwatchTracker\(\): unknown option 'flush'"):
        TexwatchTracker(tmp_path / "x.zarr", flush=1.0)
    with pytest.raises(ValueError, match=r"TexwatchTracker\(\): all_ranks=True given"):
        TexwatchTracker(tmp_path / "x.zarr", all_ranks=True)
    assert not (tmp_path / "x.zarr").exists()


def test_report_to_texwatch_is_registered_with_accelerate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--report_to texwatch`` as the diffusers scripts pass it: ``log_with="texwatch"``."""
    monkeypatch.delenv(tw.ENV_STORE, raising=False)
    accelerator = Accelerator(cpu=True, log_with="texwatch", project_dir=tmp_path / "out")
    accelerator.init_trackers("text2image-fine-tune", config={"rank": 4})
    tracker = accelerator.get_tracker("texwatch")
    assert isinstance(tracker, TexwatchTracker)
    accelerator.log({"train_loss": 0.5}, step=0)
    accelerator.end_training()
    run = open_run(tmp_path / "out" / "text2image-fine-tune.zarr")
    assert run.name == "text2image-fine-tune" and run.config == {"rank": 4}
    np.testing.assert_allclose(run.scalars()["loss"], [0.5])

    monkeypatch.setenv(tw.ENV_STORE, str(tmp_path / "env.zarr"))
    accelerator = Accelerator(cpu=True, log_with="texwatch", project_dir=tmp_path / "out")
    accelerator.init_trackers("proj", init_kwargs={"texwatch": {"run": "named"}})
    accelerator.log({"train_loss": 0.25}, step=0)
    accelerator.end_training()
    assert open_run(tmp_path / "env.zarr").name == "named"


def test_a_real_diffusers_training_step_through_the_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny UNet2DModel learns to predict DDPM noise; accelerate logs loss, lr and images, and
    the pipeline's validation samples (numpy NHWC, PIL) as the diffusers scripts get them."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=100)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    tracker = TexwatchTracker(tmp_path / "unet.zarr", flush_interval=0.05)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.init_trackers("unet", config={"learning_rate": 1e-3, "train_batch_size": 2})
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    losses, lrs, shown = [], [], []
    for global_step in range(2):
        noise = torch.randn(images.shape, generator=gen)
        timesteps = torch.randint(0, 100, (2,), generator=gen)
        noisy = scheduler.add_noise(images, noise, timesteps)
        pred = unet(noisy, timesteps).sample
        loss = nn.functional.mse_loss(pred, noise)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        lrs.append(lr_scheduler.get_last_lr()[0])
        lr_scheduler.step()
        losses.append(loss.item())
        accelerator.log({"train_loss": loss.detach(), "lr": lrs[-1]}, step=global_step)
        shown.append((noisy.clamp(-1, 1) + 1) / 2)
        tracker.log_images({"noisy": shown[-1]}, step=global_step)
    # validation as the diffusers scripts run it: a pipeline's numpy (NHWC) and PIL outputs
    pipeline = DDPMPipeline(unet=accelerator.unwrap_model(unet), scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # a disabled bar still starts one
    sample = {"batch_size": 2, "num_inference_steps": 2}
    as_np = pipeline(generator=torch.Generator().manual_seed(2), output_type="np", **sample)
    as_pil = pipeline(generator=torch.Generator().manual_seed(2), output_type="pil", **sample)
    tracker.log_images({"val/np": as_np.images, "val/pil": as_pil.images}, step=1)
    accelerator.end_training()
    with tw.Recorder(tmp_path / "direct.zarr") as rec:  # record() takes them as they come
        rec.record(0, images={"val np": as_np.images, "val pil": as_pil.images})
    direct = open_run(tmp_path / "direct.zarr")
    nchw = as_np.images.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(direct.stream("val_np")[1], nchw, rtol=1e-6)
    pil_pixels = np.stack([np.asarray(i) for i in as_pil.images]).transpose(0, 3, 1, 2) / 255
    np.testing.assert_allclose(direct.stream("val_pil")[1], pil_pixels, rtol=1e-6)
    assert np.abs(pil_pixels - nchw).max() <= 1 / 255  # the same images, 8-bit

    run = open_run(tmp_path / "unet.zarr")
    assert run.config == {"learning_rate": 1e-3, "train_batch_size": 2}
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], [0, 1])
    np.testing.assert_allclose(cols["loss"], losses, rtol=1e-6)
    np.testing.assert_allclose(cols["lr"], [1e-3, 5e-4])
    steps, data = run.stream("noisy")
    np.testing.assert_array_equal(steps, [0, 0, 1, 1])
    np.testing.assert_allclose(data, torch.cat(shown).numpy(), rtol=1e-6)
    for name, want in (("val/np", nchw), ("val/pil", pil_pixels)):
        steps, data = run.stream(name)
        np.testing.assert_array_equal(steps, [1, 1])
        np.testing.assert_allclose(data, want, rtol=1e-6)


_TRACKER_WORKER = textwrap.dedent(
    """
    import sys
    from accelerate import Accelerator
    from texwatch.integrations.accelerate import TexwatchTracker

    tracker = TexwatchTracker(sys.argv[1])
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("two-procs", config={"world": accelerator.num_processes})
    for step in range(5):
        accelerator.log({"loss": float(step), "rank": float(accelerator.process_index)}, step=step)
    print("tracker", accelerator.process_index, tracker.tracker is not None, flush=True)
    accelerator.end_training()
    """
)


@pytest.mark.integration
def test_tracker_records_on_the_main_process_only(tmp_path: Path) -> None:
    """Two real processes (gloo on the CPU): accelerate calls the tracker on process 0 only."""
    script = tmp_path / "worker.py"
    script.write_text(_TRACKER_WORKER)
    store = tmp_path / "two.zarr"
    outputs = run_two_ranks(script, store)
    assert "tracker 0 True" in outputs[0] and "tracker 1 False" in outputs[1], outputs
    run = open_run(store)
    assert run.config == {"world": 2}
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(5))
    np.testing.assert_array_equal(cols["rank"], np.zeros(5))


# --- Lightning ----------------------------------------------------------------------------------

STEPS, BATCH = 6, 4


def _data() -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(STEPS * BATCH, 3, 8, 8, generator=gen)
    return DataLoader(TensorDataset(images, torch.arange(STEPS * BATCH)), batch_size=BATCH)


class _Logged(pl.LightningModule):
    """A one-layer denoiser that logs through ``self.log`` and returns what the callback takes."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Conv2d(3, 3, 3, padding=1)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, ids = batch
        pred = self.net(x)
        per_item = (pred - x).square().mean(dim=(1, 2, 3))
        loss = per_item.mean()
        self.log("train_loss", loss)
        self.log("train/l1", (pred - x).abs().mean())
        self.log("lr-SGD", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        return {
            "loss": loss,
            "item_losses": per_item,
            "latents": x,
            "sample_ids": ids,
            # channels last, with 3 rows: a shape that needs its dataformats
            "images": {"x last": x.permute(0, 2, 3, 1)[:, :3]},
            "dataformats": "NHWC",
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        self.log("val loss", (self.net(x) - x).square().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _fit(tmp_path: Path, **trainer_args: Any) -> pl.Trainer:
    args: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "limit_val_batches": 2,
    }
    args.update(trainer_args)
    trainer = pl.Trainer(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Lightning's advice on dataloader workers
        trainer.fit(_Logged(), _data(), _data())
    return trainer


def _csv_metrics(path: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            step = rows.setdefault(int(row["step"]), {})
            step.update({k: float(v) for k, v in row.items() if v and k != "step"})
    return rows


def test_logger_records_every_self_log_metric_beside_other_loggers(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TexwatchLogger(tmp_path / "lit.zarr", flush_interval=0.05)
    tb_logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    csv_logger = CSVLogger(tmp_path / "csv", name="", version="")
    _fit(tmp_path, logger=[logger, tb_logger, csv_logger])
    assert logger.renamed == {"val loss": "val_loss"}
    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    tb_loss = {e.step: e.value for e in events.Scalars("train_loss")}
    assert sorted(tb_loss) == list(range(STEPS))

    run = open_run(tmp_path / "lit.zarr")
    assert run.name == "lit" and run.config == {"lr": 0.1}
    cols = run.scalars(latest_wins=False)
    np.testing.assert_array_equal(cols["step"], np.arange(STEPS))  # one row a step
    want = _csv_metrics(Path(csv_logger.log_dir) / "metrics.csv")
    assert sorted(want) == list(range(STEPS))
    for i in range(STEPS):
        np.testing.assert_allclose(cols["loss"][i], want[i]["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(cols["loss"][i], tb_loss[i], rtol=1e-6)
        np.testing.assert_allclose(cols["train/l1"][i], want[i]["train/l1"], rtol=1e-6)
        np.testing.assert_allclose(cols["lr-SGD"][i], 0.1)
        np.testing.assert_allclose(cols["epoch"][i], 0)
    np.testing.assert_allclose(cols["val_loss"][-1], want[STEPS - 1]["val loss"], rtol=1e-6)
    assert np.isnan(cols["val_loss"][:-1]).all()


def test_logger_properties_are_what_lightning_expects(tmp_path: Path) -> None:
    logger = TexwatchLogger(tmp_path / "runs" / "x.zarr")
    assert (logger.name, logger.version) == ("x", 0)
    assert logger.save_dir == str((tmp_path / "runs").resolve())
    assert TexwatchLogger(tmp_path / "x.zarr", run="named").name == "named"
    assert TexwatchLogger("s3://bucket/runs/x.zarr").save_dir is None
    assert not (tmp_path / "runs").exists()  # nothing opened yet
    trainer = _fit(tmp_path, logger=logger, enable_checkpointing=True, max_steps=2)
    assert trainer.checkpoint_callback is not None
    assert trainer.checkpoint_callback.dirpath == str(
        (tmp_path / "runs" / "x" / "version_0" / "checkpoints").resolve()
    )
    tw.Recorder(tmp_path / "runs" / "x.zarr").close()  # finalize let the next writer in
    recorder = logger.experiment  # reopens it
    assert isinstance(recorder, tw.Recorder) and not recorder.closed
    logger.finalize("success")
    assert recorder.closed


def test_logger_does_nothing_on_other_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pl.utilities.rank_zero_only, "rank", 1)
    logger = TexwatchLogger(tmp_path / "x.zarr")
    assert not isinstance(logger.experiment, tw.Recorder)  # Lightning's dummy experiment
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    assert not (tmp_path / "x.zarr").exists()


def test_logger_loss_key_is_configurable(tmp_path: Path) -> None:
    logger = TexwatchLogger(tmp_path / "k.zarr", loss_key="train/l1", flush_interval=0.05)
    _fit(tmp_path, logger=logger, max_steps=2, limit_val_batches=0)
    cols = open_run(tmp_path / "k.zarr").scalars()
    assert "train/l1" not in cols and "train_loss" in cols
    assert np.isfinite(cols["loss"]).all() and not np.allclose(cols["loss"], cols["train_loss"])


def test_callback_and_logger_share_one_store_one_row_a_step(tmp_path: Path) -> None:
    logger = TexwatchLogger(tmp_path / "both.zarr", flush_interval=0.05)
    csv_logger = CSVLogger(tmp_path / "csv", name="", version="")
    callback = TexwatchCallback()
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    _fit(
        tmp_path,
        logger=[logger, csv_logger],
        callbacks=[callback, saver],
        enable_checkpointing=True,
    )
    assert callback.recorder is None  # the logger's store, closed by the logger at the end

    run = open_run(tmp_path / "both.zarr")
    cols = run.scalars(latest_wins=False)
    np.testing.assert_array_equal(cols["step"], np.arange(STEPS))
    # the loss is the callback's: per-item losses, whose mean Lightning logged as train_loss
    want = _csv_metrics(Path(csv_logger.log_dir) / "metrics.csv")
    np.testing.assert_allclose(cols["loss"], [want[i]["train_loss"] for i in range(STEPS)], 1e-6)
    assert "train_loss" not in cols
    assert np.isfinite(cols["train/l1"]).all() and np.isfinite(cols["lr"]).all()
    assert run.checkpoint_steps() == [1, 3, 5]
    steps, _ = run.stream("latents")
    np.testing.assert_array_equal(steps, np.repeat(np.arange(STEPS), BATCH))
    steps, last = run.stream("x_last")
    np.testing.assert_array_equal(steps, np.repeat(np.arange(STEPS), BATCH))
    np.testing.assert_allclose(last, _data().dataset.tensors[0][:, :, :3].numpy())
    assert logger.renamed == {"x last": "x_last", "val loss": "val_loss"}
    items = run.items()
    np.testing.assert_array_equal(items["sample_id"], np.arange(STEPS * BATCH))


def test_callback_given_the_logger_path_or_recorder_shares_it(tmp_path: Path) -> None:
    logger = TexwatchLogger(tmp_path / "same.zarr", flush_interval=0.05)
    _fit(tmp_path, logger=logger, callbacks=[TexwatchCallback(str(tmp_path / "." / "same.zarr"))])
    assert open_run(tmp_path / "same.zarr").committed()["latents"] == STEPS * BATCH

    with tw.Recorder(tmp_path / "given.zarr", flush_interval=0.05) as recorder:
        logger = TexwatchLogger(recorder=recorder)
        with pytest.warns(RuntimeWarning, match="hyperparameters such as 'lr' are not stored"):
            _fit(tmp_path, logger=logger, callbacks=[TexwatchCallback(recorder=recorder)])
        assert not recorder.closed
    run = open_run(tmp_path / "given.zarr")
    assert run.committed()["scalars"] == STEPS and run.config == {}


def test_callback_given_as_a_logger_is_a_clear_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"not a Logger.*logger=TexwatchLogger"):
        _fit(tmp_path, logger=TexwatchCallback(tmp_path / "x.zarr"))
    with pytest.raises(TypeError, match="not a Logger"):
        _fit(tmp_path, logger=[CSVLogger(tmp_path), TexwatchCallback(tmp_path / "x.zarr")])
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        TexwatchCallback().nothing  # noqa: B018


def test_logger_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        TexwatchLogger(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_key"):
        TexwatchLogger(tmp_path / "x.zarr", loss_key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TexwatchLogger\(\): unknown option 'flush'"):
        TexwatchLogger(tmp_path / "x.zarr", flush=1.0)
    with pytest.raises(ValueError, match=r"TexwatchLogger\(\): all_ranks=True given"):
        TexwatchLogger(tmp_path / "x.zarr", all_ranks=True)
    assert not (tmp_path / "x.zarr").exists()
