"""``texwatch demo``: train two tiny denoisers, one with planted faults; watch texwatch find them.

Everything runs on the CPU in about two minutes and nothing is downloaded:

1. brick and tile textures are generated in code at a known period (8 px at 64 px, from sources
   drawn at 4x), plus a reference tile at the scale the model should learn;
2. ``texwatchd`` starts as a subprocess: ``/metrics`` on ``--port``, snapshots under
   ``OUT/snapshots``, the reference tile as ``--ref``;
3. the *bad* variant trains, then the *good* one, each in its own process (OpenMP sized for it,
   half the cores, so the sidecar and the training do not fight), recording through
   :mod:`texwatch.client`:

   ==================== ========================================== ============================
   what                 bad                                        good
   ==================== ========================================== ============================
   decoder upsampling   ``ConvTranspose2d(k=3, s=2)``              bilinear resize + conv
   data pipeline resize centre crop, then nearest neighbour: the   antialiased resize of the
                        tile comes out twice too large, aliased    whole source
   ``edge`` loss term   weight 0.5 but never computed (always 0:   computed
                        a dead loss term)
   corrupted batch      one, pixels left at 0..255 (spike)         none
   ==================== ========================================== ============================

   The ``recon`` term is an MSE at half resolution (2x2 averages, the way a latent-space loss
   never sees single pixels), so the full-resolution ``edge`` term is the only one that would
   penalise a checkerboard: with it dead, the transposed convolution's checkerboard stays;
4. once texwatchd has derived every committed row, its ``/metrics`` is saved, ``texwatch report``
   compares both runs at their checkpoints, and the command prints what the report found and
   where the report, the snapshots and the metrics endpoint are.

The model works in pixel space, so there are no latents: the ``batch`` stream holds the training
images as the data pipeline delivers them, ``pred`` the predictions on fixed noisy validation
images. No ``target`` is recorded: texwatchd measures both streams against the reference tile,
because a target from a broken data pipeline carries the same scale error as the prediction that
learned from it.

Example:
    texwatch demo                                   # runs/demo, 600 steps a variant, port 19400
    texwatch demo -o /tmp/demo --steps 200 --port 0 --quiet
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from texwatch._commandline import HelpFormatter, exit_codes, failed
from texwatch.metric_names import DEFAULT_PORT

if TYPE_CHECKING:
    from texwatch.client import Recorder

__all__ = [
    "DEFAULT_STEPS",
    "IMAGE_SIZE",
    "MIN_STEPS",
    "PERIOD",
    "DemoError",
    "DemoResult",
    "add_parser",
    "brick_textures",
    "run",
    "run_demo",
]

DEFAULT_STEPS = 600
"""Training steps per variant by default (about two minutes for the whole demo on 2 CPU cores)."""
MIN_STEPS = 200
"""Fewest steps per variant: the spike detector needs a full 128-step window before the
corrupted batch, and a dead term is reported after 100 steps."""
IMAGE_SIZE = 64
"""Side of the training images, in pixels."""
PERIOD = 8
"""Tile period of the correctly prepared images (and the reference tile), in pixels."""

_SOURCE_SCALE = 4  # sources are drawn at 4x and the data pipeline resizes them down
_TRAIN_IMAGES = 96
_VAL_IMAGES = 4
_BATCH = 8
_WIDTH = 32  # channels of the denoiser
_LR = 2e-3
_MAX_GRAD_NORM = 1.0
_VAL_ALPHA_BAR = 0.8  # signal share of the fixed noisy validation inputs
_WEIGHTS = {"recon": 1.0, "edge": 0.5}
_TIMESTEPS = 1000
_DAEMON_START_TIMEOUT = 60.0
_CATCH_UP_TIMEOUT = 300.0
_DEMO_KEY = "texwatch_demo"  # config key that marks a store this command may replace
_EXPECTED_BAD = ("checkerboard", "harmonic_lock", "loss_spike_bad_batch", "dead_term")


class DemoError(RuntimeError):
    """The demo could not run (busy port, texwatchd died, a store in the way); one-line message."""


@dataclass(frozen=True)
class _Variant:
    name: str
    transposed: bool  # decoder upsampling: ConvTranspose2d(k=3, s=2) instead of resize + conv
    broken_resize: bool  # data pipeline: crop + nearest instead of an antialiased resize
    edge_loss: bool  # False: the edge term is initialised to 0 and never computed
    corrupt_batch: bool  # one batch with unnormalised 0..255 pixels
    summary: str


_VARIANTS = (
    _Variant(
        "bad",
        transposed=True,
        broken_resize=True,
        edge_loss=False,
        corrupt_batch=True,
        summary="decoder ConvTranspose2d(k=3, s=2); data resized by centre crop + nearest "
        "(tile x2, no antialiasing); edge loss weighted 0.5 but never computed; one corrupted "
        "batch",
    ),
    _Variant(
        "good",
        transposed=False,
        broken_resize=False,
        edge_loss=True,
        corrupt_batch=False,
        summary="decoder bilinear resize + conv; data resized with antialiasing; edge loss "
        "computed; clean batches",
    ),
)


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced and what the report found.

    Attributes:
        out: the output folder.
        runs: run store per variant name (``bad``, ``good``).
        report_dir: holds ``index.html``, ``report.pdf`` and ``report.json``.
        snapshot_dir: texwatchd's ``<run>-<run id>/<step>.png|.json``.
        metrics_url: texwatchd's endpoint (gone after the demo unless ``keep_serving``).
        metrics_file: the endpoint's last scrape, saved.
        causes: probable-cause keys the report found, per variant name.
        missing: planted faults the report did not find in ``bad``, and causes it found in
            ``good`` (which has none planted), per variant name; empty when all went as planned.
    """

    out: Path
    runs: dict[str, Path]
    report_dir: Path
    snapshot_dir: Path
    metrics_url: str
    metrics_file: Path
    causes: dict[str, list[str]]
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the report found every planted fault in ``bad`` and nothing in ``good``."""
        return not any(self.missing.values())


# --------------------------------------------------------------------------------------------
# Data: procedural textures and the two data pipelines


def brick_textures(
    n: int,
    *,
    size: int = IMAGE_SIZE * _SOURCE_SCALE,
    period: float = PERIOD * _SOURCE_SCALE,
    seed: int = 0,
) -> torch.Tensor:
    """Running-bond bricks and square tiles at a known period, ``(n, 3, size, size)`` in [0, 1].

    Even items are bricks (rows ``period`` px high, bricks twice as wide, every other row offset
    by half a brick), odd items square tiles of side ``period``; each with a random rotation
    (15-75 degrees, so no energy lands on the FFT axes), offset, colour, per-brick shade, soft
    mortar joints and pixel-level grain that only an antialiased resize averages away. Either way
    the strongest spectral peak sits at radius ``size / period``.

    Args:
        n: how many textures.
        size: side in pixels.
        period: row spacing (and tile side) in pixels.
        seed: seed of the generator; the same arguments always give the same textures.

    Example:
        >>> brick_textures(2, size=64, period=8).shape
        torch.Size([2, 3, 64, 64])
    """
    for name, value in (("n", n), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be an int >= 1 but got {value!r}")
    if not isinstance(period, (int, float)) or not 2 <= period <= size:
        raise ValueError(f"Expected argument `period` in [2, size={size}] but got {period!r}")
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    mortar = torch.tensor([0.85, 0.83, 0.80]).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        bricks = i % 2 == 0
        theta = math.radians(15.0 + 60.0 * float(torch.rand((), generator=gen)))
        off_u, off_v = (torch.rand(2, generator=gen) * 2 * period).tolist()
        u = xx * math.cos(theta) + yy * math.sin(theta) + off_u
        v = -xx * math.sin(theta) + yy * math.cos(theta) + off_v
        row = torch.floor(v / period)
        width = 2 * period if bricks else period
        u = u + (row % 2) * period if bricks else u  # running bond: every other row by half
        col = torch.floor(u / width)
        dv = torch.minimum(v - row * period, (row + 1) * period - v)
        du = torch.minimum(u - col * width, (col + 1) * width - u)
        joint = torch.exp(-0.5 * (torch.minimum(du, dv) / (period / 12)) ** 2)  # (H, W) in (0, 1]
        base = 0.25 + 0.4 * torch.rand(3, generator=gen)
        shades = 0.15 * (torch.rand(257, generator=gen) - 0.5)
        shade = shades[((row * 31 + col * 17) % 257).long()]
        grain = 0.25 * (torch.rand(size, size, generator=gen) - 0.5)
        face = base.view(3, 1, 1) + shade + grain
        out[i] = (face * (1 - joint) + mortar * joint).clamp(0.0, 1.0)
    return out


def _prepare(sources: torch.Tensor, *, broken: bool) -> torch.Tensor:
    """The data pipeline: sources (N, 3, S, S) in [0, 1] -> model inputs in [-1, 1] at 64 px.

    The correct pipeline resizes the whole source with antialiasing. The broken one centre-crops
    half the source first (so each tile comes out twice as large) and resizes with nearest
    neighbour, which keeps the grain as aliasing instead of averaging it.
    """
    if broken:
        s = sources.shape[-1]
        crop = sources[..., s // 4 : s // 4 + s // 2, s // 4 : s // 4 + s // 2]
        images = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")
    else:
        images = F.interpolate(
            sources,
            size=(IMAGE_SIZE, IMAGE_SIZE),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return images.clamp(0.0, 1.0) * 2.0 - 1.0


def _write_png(path: Path, image: torch.Tensor) -> None:
    """Save a (3, H, W) image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)


# --------------------------------------------------------------------------------------------
# The model and one training run


class _Up(nn.Module):
    """2x upsampling: a transposed convolution (uneven kernel overlap) or resize + conv."""

    def __init__(self, c_in: int, c_out: int, *, transposed: bool) -> None:
        super().__init__()
        self.transposed = transposed
        self.conv: nn.Module = (
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
            if transposed
            else nn.Conv2d(c_in, c_out, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transposed:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(x)


class _Denoiser(nn.Module):
    """A small encoder-decoder that predicts the clean image from a noisy one (x0 prediction)."""

    def __init__(self, *, transposed: bool, width: int = _WIDTH) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1),
            nn.SiLU(),  # (B, w, 32, 32)
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.SiLU(),  # (B, w, 16, 16)
            nn.Conv2d(w, 8, 1),  # bottleneck (B, 8, 16, 16)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(8, w, 3, padding=1),
            nn.SiLU(),
            _Up(w, w, transposed=transposed),
            nn.SiLU(),  # (B, w, 32, 32)
            _Up(w, 3, transposed=transposed),  # (B, 3, 64, 64)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradients of each channel, (B, C, H, W) -> (B, 2C, H, W)."""
    c = x.shape[1]
    kernel = torch.stack([_SOBEL, _SOBEL.T]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def _lr_at(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % (at most 50 steps), then cosine decay to 10 %."""
    warm = min(50, steps // 10)
    if step < warm:
        return _LR * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return _LR * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class _Plan:
    """When each variant records what: sampling periods, checkpoints, the corrupted batch."""

    steps: int
    val_every: int
    batch_every: int
    checkpoints: tuple[int, ...]
    corrupt_step: int
    snapshot_every: int

    @classmethod
    def for_steps(cls, steps: int) -> _Plan:
        val_every = max(2, steps // 20)
        last = (steps - 1) // val_every * val_every
        marks = {round(0.75 * steps / val_every) * val_every, last}
        # The corrupted batch lands on a recorded step, after a full spike window.
        corrupt = int(0.8 * steps) // val_every * val_every
        return cls(
            steps=steps,
            val_every=val_every,
            batch_every=val_every,
            checkpoints=tuple(sorted(marks)),
            corrupt_step=corrupt,
            snapshot_every=max(1, steps // 3),
        )


@dataclass
class _Data:
    train: torch.Tensor  # (N, 3, 64, 64) in [-1, 1]
    val_noisy: torch.Tensor  # (V, 3, 64, 64): fixed noisy validation inputs


def _data(sources: torch.Tensor, variant: _Variant, seed: int) -> _Data:
    images = _prepare(sources, broken=variant.broken_resize)
    train, val = images[:_TRAIN_IMAGES], images[_TRAIN_IMAGES:]
    noise = torch.randn(val.shape, generator=torch.Generator().manual_seed(seed + 7))
    noisy = math.sqrt(_VAL_ALPHA_BAR) * val + math.sqrt(1.0 - _VAL_ALPHA_BAR) * noise
    return _Data(train=train, val_noisy=noisy)


def _train(
    variant: _Variant, data: _Data, plan: _Plan, recorder: Recorder, seed: int, log: IO[str]
) -> None:
    """Train one variant for ``plan.steps`` steps, recording every step through ``recorder``."""
    torch.manual_seed(seed)
    model = _Denoiser(transposed=variant.transposed)
    opt = torch.optim.AdamW(model.parameters(), lr=_LR)
    gen = torch.Generator().manual_seed(seed + 1)
    n = data.train.shape[0]
    report_every = max(1, plan.steps // 4)
    started = time.perf_counter()
    for step in range(plan.steps):
        lr = _lr_at(step, plan.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        ids = torch.randperm(n, generator=gen)[:_BATCH]  # distinct samples
        x0 = data.train[ids]  # (B, 3, 64, 64) in [-1, 1]
        if float(torch.rand((), generator=gen)) < 0.5:
            x0 = x0.flip(-1)
        if variant.corrupt_batch and step == plan.corrupt_step:
            x0 = (x0 + 1.0) * 127.5  # a shard stored as 8-bit pixels that skipped normalisation
            print(
                f"[{variant.name}] step {step}: injected a corrupted batch (pixels left at "
                f"0..255, never normalised): expect a loss spike",
                file=log,
                flush=True,
            )
        t = torch.rand(_BATCH, generator=gen)
        alpha_bar = torch.cos(t * math.pi / 2).square().clamp_min(1e-3).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        pred = model(alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
        recon = (F.avg_pool2d(pred, 2) - F.avg_pool2d(x0, 2)).square().mean(dim=(1, 2, 3))
        edge = torch.zeros(_BATCH)  # a dead loss term: initialised here...
        if variant.edge_loss:  # ...and only the good variant ever computes it
            edge = (_edges(pred) - _edges(x0)).abs().mean(dim=(1, 2, 3))
        per_item = _WEIGHTS["recon"] * recon + _WEIGHTS["edge"] * edge  # (B,)
        loss = per_item.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
        opt.step()
        val_pred = None
        if step % plan.val_every == 0:
            with torch.no_grad():
                val_pred = model(data.val_noisy)
        recorder.record(
            step,
            per_item.detach(),
            pred=val_pred,
            images={"batch": x0},
            terms={"recon": recon.detach().mean(), "edge": edge.detach().mean()},
            weights=_WEIGHTS,
            scalars={"lr": lr, "grad_norm": grad_norm},
            sample_ids=ids,
            timesteps=(t * (_TIMESTEPS - 1)).round().long(),
            checkpoint=step in plan.checkpoints,
        )
        if (step + 1) % report_every == 0:
            print(
                f"[{variant.name}] step {step + 1}/{plan.steps}  loss {float(loss.detach()):.4f}  "
                f"({time.perf_counter() - started:.0f} s)",
                file=log,
                flush=True,
            )


# --------------------------------------------------------------------------------------------
# Each variant trains in its own process


def _training_threads() -> int:
    """Half the cores for training, the rest for texwatchd: oversubscribed OpenMP threads spin
    and slow a model this small down several times over."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _train_variant(name: str, store: Path, steps: int, seed: int) -> None:
    """The training process: build the variant's data, train it, record into ``store``."""
    import texwatch.client as tw

    variant = next(v for v in _VARIANTS if v.name == name)
    plan = _Plan.for_steps(steps)
    sources = brick_textures(_TRAIN_IMAGES + _VAL_IMAGES, seed=seed)
    config = {
        _DEMO_KEY: True,
        "variant": variant.name,
        "summary": variant.summary,
        "steps": steps,
        "seed": seed,
        "batch": _BATCH,
        "lr": _LR,
        "image_size": IMAGE_SIZE,
        "period_px": PERIOD,
    }
    every = {"batch": plan.batch_every, "pred": plan.val_every}
    with tw.Recorder(store, run=name, config=config, every=every, max_items=4) as recorder:
        _train(variant, _data(sources, variant, seed), plan, recorder, seed, sys.stdout)


def _train_in_child(name: str, store: Path, steps: int, seed: int, log: IO[str]) -> None:
    """Train one variant in a fresh process whose OpenMP pool is sized before torch starts."""
    threads = str(_training_threads())
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cmd = [
        sys.executable,
        "-m",
        "texwatch.demo",
        "--train",
        name,
        "--store",
        str(store),
        "--steps",
        str(steps),
        "--seed",
        str(seed),
    ]
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                print(line, end="", file=log, flush=True)
        except BaseException:  # Ctrl-C or SIGTERM: stop the child too
            proc.terminate()
            raise
    if proc.returncode != 0:
        tail = " | ".join(lines[-3:]) or "(no output)"
        raise DemoError(f"training {name!r} exited with code {proc.returncode}: {tail}")


def _child_main(argv: Sequence[str] | None = None) -> int:
    """``python -m texwatch.demo --train NAME --store PATH --steps N --seed S`` (used by run)."""
    p = argparse.ArgumentParser(prog="python -m texwatch.demo")
    p.add_argument("--train", required=True, choices=[v.name for v in _VARIANTS])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--steps", required=True, type=_steps_arg)
    p.add_argument("--seed", required=True, type=int)
    args = p.parse_args(argv)
    _train_variant(args.train, args.store, args.steps, args.seed)
    return 0


# --------------------------------------------------------------------------------------------
# texwatchd beside the training


def _check_port(port: int) -> None:
    """Refuse a taken port before anything is trained or removed: texwatchd would fail to serve
    on it only once started, and another texwatchd there answers scrapes in its place."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as texwatchd's server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise DemoError(
                f"cannot serve /metrics on 127.0.0.1:{port}: {err}; --port 0 picks a free one"
            ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Daemon:
    """``texwatchd`` as a subprocess serving every run under ``root``; its log goes to a file."""

    def __init__(
        self, root: Path, port: int, snapshots: Path, snapshot_every: int, ref: Path, log: Path
    ) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.log_path = log
        cmd = [
            sys.executable,
            "-m",
            "texwatch.daemon",
            "--root",
            str(root),
            "--port",
            str(port),
            "--snapshot-dir",
            str(snapshots),
            "--snapshot-every",
            str(snapshot_every),
            "--ref",
            str(ref),
            "--rescan",
            "1",
        ]
        # One thread: the sidecar must not starve the training on a small machine.
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self._log = log.open("wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        except OSError:
            self._log.close()
            raise

    def last_log_line(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return text[-1] if text else "(empty log)"

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DemoError(
                f"texwatchd exited with code {code}: {self.last_log_line()} (log: {self.log_path})"
            )

    def scrape(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.url, timeout=timeout) as response:
            return str(response.read().decode("utf-8"))

    def wait_ready(self, timeout: float = _DAEMON_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.check_alive()
            except DemoError as err:
                raise DemoError(f"{err}; if the port is taken, --port 0 picks a free one") from None
            try:
                self.scrape(timeout=1.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"texwatchd did not serve {self.url} within {timeout:.0f} s "
                        f"(log: {self.log_path})"
                    ) from None
                time.sleep(0.2)

    def wait_derived(self, stores: Sequence[Path], timeout: float = _CATCH_UP_TIMEOUT) -> None:
        """Block until texwatchd has derived every committed row of ``stores``."""
        from texwatch.store import open_run

        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            lag = 0
            for path in stores:
                run = open_run(path)
                cursor = run.derived_cursor()
                lag += sum(max(0, n - cursor.get(t, 0)) for t, n in run.committed().items())
            if lag == 0:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"texwatchd still had {lag} rows to derive after {timeout:.0f} s "
                    f"(log: {self.log_path})"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM (texwatchd stops after its current batch), then kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


_HEADLINES = {  # sample name -> (short key, stream label required or None)
    "texwatch_last_step": ("step", None),
    "texwatch_loss_spikes_total": ("spikes", None),
    "texwatch_dead_loss_terms": ("dead", None),
    "texwatch_checkerboard_energy": ("checker", "pred"),
    "texwatch_tile_scale": ("tile_scale", "batch"),
}


def _metric_lines(exposition: str, runs: Sequence[str]) -> dict[str, str]:
    """One line per run with the headline values texwatchd serves (spikes summed over rules)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        run: {
            "step": math.nan,
            "spikes": 0.0,
            "dead": math.nan,
            "checker": math.nan,
            "tile_scale": math.nan,
        }
        for run in runs
    }
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            key, stream = _HEADLINES.get(sample.name, (None, None))
            run = values.get(sample.labels.get("run", ""))
            if key is None or run is None or sample.labels.get("stream") != stream:
                continue
            run[key] = run[key] + sample.value if key == "spikes" else sample.value
    return {
        name: f"last step {v['step']:.0f}, loss spikes {v['spikes']:.0f}, dead loss terms "
        f"{v['dead']:.0f}, pred checkerboard_energy {v['checker']:.3g}, batch tile_scale "
        f"{v['tile_scale']:.3g}"
        for name, v in values.items()
    }


# --------------------------------------------------------------------------------------------
# The whole demo


def _fresh_store(path: Path, snapshots: Path) -> None:
    """Remove an earlier demo's store (and its snapshots); refuse to touch anything else."""
    from texwatch.daemon import snapshot_folder_name
    from texwatch.store import open_run, remove_run

    if not path.exists():
        return
    try:
        run = open_run(path)
        is_demo = bool(run.config.get(_DEMO_KEY))
    except (OSError, ValueError):
        is_demo = False
    if not is_demo:
        raise DemoError(f"{path} exists and is not a texwatch demo run; choose another -o/--out")
    folder = snapshots / snapshot_folder_name(run.name, run.run_id)
    remove_run(path)
    shutil.rmtree(folder, ignore_errors=True)


def _judge(causes: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Planted faults not found in ``bad``, and causes found in ``good`` (none are planted)."""
    return {
        "bad": [k for k in _EXPECTED_BAD if k not in causes.get("bad", [])],
        "good": list(causes.get("good", [])),
    }


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    steps: int = DEFAULT_STEPS,
    port: int = DEFAULT_PORT,
    seed: int = 0,
    quiet: bool = False,
    keep_serving: bool = False,
    log: IO[str] | None = None,
) -> DemoResult:
    """Train both variants beside texwatchd, report on them, and print what was found.

    Args:
        out: output folder (``runs/``, ``snapshots/``, ``report/``, ``metrics.prom``,
            ``reference_tile.png``, ``texwatchd.log``).
        steps: training steps per variant, at least :data:`MIN_STEPS`.
        port: texwatchd's ``/metrics`` port; 0 picks a free one.
        seed: seeds the textures, the models and the batches.
        quiet: no progress bar from the report.
        keep_serving: after the report, keep texwatchd serving until Ctrl-C.
        log: where the narrative goes (default stdout).

    Raises:
        ValueError: ``steps`` or ``port`` out of range.
        DemoError: ``port`` is taken, texwatchd could not start or died, or a non-demo store is
            in the way.
    """
    from texwatch.derive import DeriveSettings
    from texwatch.report import build_report

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < MIN_STEPS:
        raise ValueError(
            f"Expected argument `steps` to be an int >= {MIN_STEPS} (a full spike "
            f"window before the corrupted batch) but got {steps!r}"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"Expected argument `port` in [0, 65535] but got {port!r}")
    if port:
        _check_port(port)
    log = sys.stdout if log is None else log
    started = time.perf_counter()
    out = Path(out)
    root, snapshots, report_dir = out / "runs", out / "snapshots", out / "report"
    stores = {v.name: root / f"{v.name}.zarr" for v in _VARIANTS}
    root.mkdir(parents=True, exist_ok=True)
    for path in stores.values():
        _fresh_store(path, snapshots)
    plan = _Plan.for_steps(steps)
    reference = _prepare(brick_textures(1, seed=seed + 1000), broken=False)[0] * 0.5 + 0.5
    ref_path = out / "reference_tile.png"
    _write_png(ref_path, reference)
    print(
        f"texwatch demo: two tiny denoisers on procedural bricks ({IMAGE_SIZE} px, tile period "
        f"{PERIOD} px), {steps} steps each, CPU, seed {seed}",
        file=log,
        flush=True,
    )

    daemon = _Daemon(
        root, port or _free_port(), snapshots, plan.snapshot_every, ref_path, out / "texwatchd.log"
    )
    try:
        daemon.wait_ready()
        print(
            f"texwatchd: serving {daemon.url}, snapshots every {plan.snapshot_every} steps "
            f"in {snapshots} (log: {daemon.log_path})",
            file=log,
            flush=True,
        )
        for variant in _VARIANTS:
            print(f"[{variant.name}] {variant.summary}", file=log, flush=True)
            _train_in_child(variant.name, stores[variant.name], steps, seed, log)
            daemon.check_alive()
        print("waiting for texwatchd to derive every committed row ...", file=log, flush=True)
        daemon.wait_derived(list(stores.values()))
        exposition = daemon.scrape()
        metrics_file = out / "metrics.prom"
        metrics_file.write_text(exposition, encoding="utf-8")
        print(f"texwatchd /metrics now says ({daemon.url}):", file=log)
        for name, line in _metric_lines(exposition, list(stores)).items():
            print(f"  {name:5s} {line}", file=log)
        ref_np = reference[None].numpy().astype(np.float64)
        print(
            f"report: texwatch report {' '.join(map(str, stores.values()))} --checkpoints "
            f"--ref {ref_path} -o {report_dir}",
            file=log,
            flush=True,
        )
        doc = build_report(
            list(stores.values()),
            report_dir,
            checkpoints=True,
            settings=DeriveSettings(ref=ref_np),
            quiet=quiet,
        )
        causes: dict[str, list[str]] = {}
        print("probable causes the report found:", file=log)
        for run_doc in doc["runs"]:
            label = str(run_doc["label"])
            causes[label] = [str(c["key"]) for c in run_doc["causes"]]
            if not run_doc["causes"]:
                print(f"  {label}: none", file=log)
            for c in run_doc["causes"]:
                print(f"  {label}: {c['title']}", file=log)
                for line in c["evidence"][:2]:
                    print(f"      {line}", file=log)
        result = DemoResult(
            out=out,
            runs=dict(stores),
            report_dir=report_dir,
            snapshot_dir=snapshots,
            metrics_url=daemon.url,
            metrics_file=metrics_file,
            causes=causes,
            missing=_judge(causes),
        )
        print(f"done in {time.perf_counter() - started:.0f} s", file=log)
        _print_where(result, daemon, keep_serving, log)
        if keep_serving:
            try:
                daemon.proc.wait()
            except KeyboardInterrupt:
                print("stopping texwatchd", file=log)
    finally:
        daemon.stop()
    return result


def _print_where(result: DemoResult, daemon: _Daemon, keep_serving: bool, log: IO[str]) -> None:
    if result.missing.get("bad"):
        print(
            f"NOTE: the report did not find these planted faults in 'bad': "
            f"{', '.join(result.missing['bad'])}",
            file=log,
        )
    if result.missing.get("good"):
        print(
            f"NOTE: the report found causes in 'good', which has none planted: "
            f"{', '.join(result.missing['good'])}",
            file=log,
        )
    served = (
        f"{result.metrics_url} (texwatchd keeps serving until Ctrl-C)"
        if keep_serving
        else f"{result.metrics_url} while the demo ran (--keep-serving keeps it up); "
        f"last scrape saved as {result.metrics_file}"
    )
    print("where to look:", file=log)
    print(
        f"  report     {result.report_dir / 'index.html'} (also report.pdf, report.json)", file=log
    )
    print(f"  snapshots  {result.snapshot_dir}/<run>-<run id>/<step>.png and .json", file=log)
    print(f"  metrics    {served}", file=log)
    print(f"  runs       {', '.join(str(p) for p in result.runs.values())}", file=log)
    print(f"  daemon log {daemon.log_path}", file=log, flush=True)


# --------------------------------------------------------------------------------------------
# Command line


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else an error that says ``what`` it is for."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer but got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} but got {value}")
        return value

    return parse


_steps_arg = _int_in(
    MIN_STEPS, 10**9, f"at least {MIN_STEPS} steps (a full spike window before the corrupted batch)"
)
_port_arg = _int_in(0, 65535, "a port in [0, 65535]")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand to the ``texwatch`` command."""
    p = subparsers.add_parser(
        "demo",
        help="train two tiny models and watch texwatch catch the bad one",
        description="Train a tiny denoiser twice on procedural bricks (CPU, about two minutes): "
        "once with a transposed-conv decoder, a broken resize, a dead loss term and a corrupted "
        "batch, once without. texwatchd serves /metrics and writes snapshots beside them; "
        "texwatch report then compares the runs.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "the report found every planted fault in 'bad' and nothing in 'good'; where "
                "the report, snapshots and metrics are is printed on stdout",
                1: "the report missed a planted fault in 'bad', or found a probable cause in "
                "'good'",
                2: "bad arguments, or the demo could not run: the port is taken, a run store "
                "in OUT is not the demo's, OUT cannot be written, texwatchd or a training "
                "process failed (one line on stderr)",
            }
        ),
    )
    p.add_argument(
        "-o", "--out", default="runs/demo", metavar="OUT", help="output folder (default runs/demo)"
    )
    p.add_argument(
        "--steps",
        type=_steps_arg,
        default=DEFAULT_STEPS,
        help=f"training steps per variant (default {DEFAULT_STEPS}, at least {MIN_STEPS})",
    )
    p.add_argument(
        "--port",
        type=_port_arg,
        default=DEFAULT_PORT,
        help=f"texwatchd's /metrics port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the textures, the models and the batches (default 0)",
    )
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep texwatchd serving /metrics after the report, until Ctrl-C",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``texwatch demo``: 0 when the report found what was planted, 1 when not, 2 on error."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through run_demo, which stops its children

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        result = run_demo(
            args.out,
            steps=args.steps,
            port=args.port,
            seed=args.seed,
            quiet=args.quiet,
            keep_serving=args.keep_serving,
        )
    except BrokenPipeError:
        raise  # stdout's reader has gone: texwatch.cli ends quietly
    except (DemoError, OSError) as err:  # an OSError: OUT cannot be written, say
        return failed("texwatch demo", err, 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(_child_main())
