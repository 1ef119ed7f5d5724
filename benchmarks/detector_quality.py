"""False alarms and detection delay of the loss-spike detector, ``texwatch.detectors.LossMonitor``.

The monitor is built with its defaults (what users get) and fed through its public ``update()``
in three input modes: ``loss only`` (``update(step, loss)``), ``loss + timesteps``
(``timesteps=t``) and ``per-item + timesteps`` (``item_losses=items, timesteps=t``).

The simulated diffusion run: per step, B items with timesteps t ~ U{0..999} and item loss
scale(t, step) × noise, where scale = (0.02 + 0.3·exp(−t/150) + 0.03·(1 − t/1000)) ×
(1 − 0.3·step/steps), a slow downward trend over the run; the batch loss is the items' mean. The
noise has mean 1: ``gamma`` is Gamma(shape 25, scale 1/25); ``lognormal`` has σ = 0.6 and
μ = −σ²/2; ``lognormal+pareto`` is that lognormal with each item, with probability 0.002,
replaced by a Pareto draw ``rng.pareto(2.5) + 1`` (shape a = 2.5).

Printed:

1. ``null``: alarms and σ warnings per 100k steps of a run with nothing planted, per noise,
   batch size and input mode, and which rules fired;
2. ``events``: after 20,000 clean warm-up steps, one event is planted at s0 = 20,000; per event,
   configuration and mode, over ``--event-seeds`` seeds: how many were caught within the event's
   horizon, the median delay from s0 to the first step any rule fires (0: on s0 itself) and the
   median factor the batch loss had reached at that step (against the same step unplanted),
   beside the target (from the issue: "within k steps" means a delay below k), and the alarms
   during the warm-up (a sanity check; they do not count as detections);
3. ``real``: if ``diffusers`` is installed, a tiny ``UNet2DModel`` trained on CPU with DDPM
   (ε-prediction, per-item MSE) on generated 32×32 stripes and grids, its losses fed to the
   monitor in all three modes: alarms and warnings, raw and per 100k steps.

Run: ``python benchmarks/detector_quality.py`` (the first two sections take about 12 minutes of
one core; ``--sections null events --steps 20000 --event-seeds 2`` about 3.5). The ``real``
section needs ``pip install diffusers`` and takes about 4.5 minutes at its default 350 steps.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table as _table  # noqa: E402  (beside this script)

from texwatch.detectors import SPIKE_RULES, LossMonitor, LossUpdate  # noqa: E402

_T_MAX = 1000
_CHUNK = 10_000  # steps simulated at a time
_PER = 100_000  # rates are per this many steps
_NOISES = ("gamma", "lognormal", "lognormal+pareto")
_SIGMA = 0.6  # the lognormal's
_PARETO_P, _PARETO_A = 0.002, 2.5
_NULL_CONFIGS = (
    ("gamma", 4),
    ("gamma", 16),
    ("lognormal", 4),
    ("lognormal", 16),
    ("lognormal+pareto", 4),
    ("lognormal+pareto", 16),
)
_EVENT_CONFIGS = (("gamma", 4), ("gamma", 16), ("lognormal", 4), ("lognormal", 16))
_WARMUP = 20_000  # s0: the step each event starts at
_REAL_BATCH = 16
_T = TypeVar("_T")

_Mode = Callable[[LossMonitor, int, float, np.ndarray, np.ndarray], LossUpdate]
_MODES: tuple[tuple[str, _Mode], ...] = (
    ("loss only", lambda m, step, loss, items, t: m.update(step, loss)),
    ("loss + timesteps", lambda m, step, loss, items, t: m.update(step, loss, timesteps=t)),
    (
        "per-item + timesteps",
        lambda m, step, loss, items, t: m.update(step, loss, item_losses=items, timesteps=t),
    ),
)
_ALL_MODES = tuple(range(len(_MODES)))


@dataclass(frozen=True)
class _Event:
    name: str
    horizon: int  # steps from s0 on in which a detection counts
    gain: Callable[[int], float]  # the multiplier d steps after s0
    one_item: bool  # only the first item is multiplied
    within: int  # target: caught with a delay below this (unused without target modes)
    target_modes: tuple[int, ...]  # the modes the target is for (empty: no target)


_EVENTS = (
    _Event("10× one step", 1, lambda d: 10.0, False, 1, _ALL_MODES),
    _Event("3× for 3 steps", 3, lambda d: 3.0, False, 1, (1, 2)),
    _Event("2× step", 1_000, lambda d: 2.0, False, 0, ()),
    _Event("one item ×10", 1, lambda d: 10.0, True, 1, (2,)),
    _Event("exp divergence", 5_000, lambda d: math.exp(d / 1_000), False, 300, _ALL_MODES),
    _Event("ramp to 3×", 10_000, lambda d: 1 + 2 * min(1.0, d / 5_000), False, 1_000, _ALL_MODES),
)
_TAIL = max(e.horizon for e in _EVENTS)


@dataclass(frozen=True)
class _Tally:
    """What one monitor saw over a run: alarm steps, σ warnings and the per-rule counters."""

    alarms: int
    warnings: int
    counts: dict[str, int]


@dataclass(frozen=True)
class _Detection:
    delay: int | None  # None: missed within the horizon
    factor: float  # batch loss over the unplanted one at detection (NaN when missed)
    rule: str | None  # the most severe rule that fired


@dataclass(frozen=True)
class _EventRow:
    noise: str
    batch: int
    warmup_alarms: list[int]  # per mode, summed over seeds
    found: dict[str, list[list[_Detection]]]  # event name -> per mode -> per seed


@dataclass(frozen=True)
class _Real:
    steps: int
    wall: float
    first_loss: float  # mean batch loss of the first and last 5 % of the steps
    last_loss: float
    tallies: list[_Tally]
    alarm_steps: list[list[tuple[int, str]]]  # per mode, the earliest kept (step, rule)


def _noise(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """Mean-1 multiplicative noise of the given kind."""
    if kind == "gamma":
        return rng.gamma(25.0, 1.0 / 25.0, size=shape)
    x = rng.lognormal(-(_SIGMA**2) / 2, _SIGMA, size=shape)
    if kind == "lognormal+pareto":
        heavy = rng.random(shape) < _PARETO_P
        x[heavy] = rng.pareto(_PARETO_A, size=int(heavy.sum())) + 1.0
    return x


def _simulate(
    rng: np.random.Generator, noise: str, batch: int, start: int, stop: int, total: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Chunks of (first step, timesteps (n, B), item losses (n, B)) for steps start..stop-1."""
    for lo in range(start, stop, _CHUNK):
        n = min(_CHUNK, stop - lo)
        t = rng.integers(0, _T_MAX, size=(n, batch))
        trend = 1.0 - 0.3 * np.arange(lo, lo + n)[:, None] / total  # (n, 1)
        scale = 0.02 + 0.3 * np.exp(-t / 150) + 0.03 * (1 - t / _T_MAX)
        yield lo, t, scale * trend * _noise(rng, noise, (n, batch))


def _feed(
    monitors: Sequence[LossMonitor], first: int, t: np.ndarray, items: np.ndarray
) -> list[int]:
    """Feed a chunk to one monitor per mode, step by step; return how many steps each flagged."""
    alarms = [0] * len(monitors)
    for i in range(len(t)):
        loss = float(items[i].mean())
        for k, (monitor, (_, update)) in enumerate(zip(monitors, _MODES, strict=True)):
            alarms[k] += update(monitor, first + i, loss, items[i], t[i]).rule is not None
    return alarms


def _null(steps: int, seed: int) -> list[list[_Tally]]:
    """Per configuration, per mode: what the monitor flagged on a run with nothing planted."""
    out = []
    for noise, batch in _NULL_CONFIGS:
        rng = np.random.default_rng([seed, _NOISES.index(noise), batch, 0])
        monitors = [LossMonitor() for _ in _MODES]
        alarms = [0] * len(_MODES)
        for first, t, items in _simulate(rng, noise, batch, 0, steps, steps):
            alarms = [a + b for a, b in zip(alarms, _feed(monitors, first, t, items), strict=True)]
        out.append([_Tally(a, m.warnings, m.counts) for a, m in zip(alarms, monitors, strict=True)])
    return out


def _detect(
    monitor: LossMonitor, mode: _Mode, event: _Event, t: np.ndarray, items: np.ndarray
) -> _Detection:
    """Plant ``event`` at s0 on the clean tail (t, items) and find the first flagged step."""
    for d in range(event.horizon):
        gain = np.ones(items.shape[1])
        gain[: 1 if event.one_item else None] = event.gain(d)
        planted = items[d] * gain
        loss = float(planted.mean())
        rule = mode(monitor, _WARMUP + d, loss, planted, t[d]).rule
        if rule is not None:
            return _Detection(d, loss / float(items[d].mean()), rule)
    return _Detection(None, math.nan, None)


def _events(n_seeds: int, seed: int) -> list[_EventRow]:
    """Per configuration: every event planted after the same warm-up, for each seed and mode."""
    rows = []
    total = _WARMUP + _TAIL
    for noise, batch in _EVENT_CONFIGS:
        warmup_alarms = [0] * len(_MODES)
        found: dict[str, list[list[_Detection]]] = {e.name: [[] for _ in _MODES] for e in _EVENTS}
        for s in range(n_seeds):
            rng = np.random.default_rng([seed, _NOISES.index(noise), batch, 1, s])
            monitors = [LossMonitor() for _ in _MODES]
            for first, t, items in _simulate(rng, noise, batch, 0, _WARMUP, total):
                alarms = _feed(monitors, first, t, items)
                warmup_alarms = [a + b for a, b in zip(warmup_alarms, alarms, strict=True)]
            tail = list(_simulate(rng, noise, batch, _WARMUP, total, total))
            tail_t = np.concatenate([t for _, t, _ in tail])
            tail_items = np.concatenate([items for _, _, items in tail])
            for event in _EVENTS:
                for k, (monitor, (_, mode)) in enumerate(zip(monitors, _MODES, strict=True)):
                    hit = _detect(copy.deepcopy(monitor), mode, event, tail_t, tail_items)
                    found[event.name][k].append(hit)
        rows.append(_EventRow(noise, batch, warmup_alarms, found))
    return rows


def _textures(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """``n`` random-phase stripes (half) and grids (half), 3 channels in [-1, 1]: (n, 3, H, W)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(3.0, 12.0, (n, 1, 1))
    angle = rng.uniform(0.0, math.pi, (n, 1, 1))
    phase = rng.uniform(0.0, 2 * math.pi, (n, 2, 1, 1))
    k = 2 * math.pi / period
    u = np.sin(k * (xx * np.cos(angle) + yy * np.sin(angle)) + phase[:, 0])
    v = np.sin(k * (yy * np.cos(angle) - xx * np.sin(angle)) + phase[:, 1])
    grid = rng.random((n, 1, 1)) < 0.5
    pattern = np.where(grid, 0.5 * (u + v), u)[:, None]  # (n, 1, H, W)
    gain = rng.uniform(-1.0, 1.0, (n, 3, 1, 1))
    offset = rng.uniform(-0.2, 0.2, (n, 3, 1, 1))
    return np.clip(gain * pattern + offset, -1.0, 1.0).astype(np.float32)


def _real(steps: int, seed: int) -> _Real | None:
    """Train a tiny DDPM UNet on CPU, its losses fed to a monitor per mode; None: no diffusers."""
    try:  # from the defining modules: mypy reads the package's names as its torch-less dummies
        from diffusers.models.unets.unet_2d import UNet2DModel
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    except ImportError:
        return None
    wall = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    model = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=_T_MAX)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    monitors = [LossMonitor() for _ in _MODES]
    alarms = [0] * len(_MODES)
    losses = np.empty(steps)
    for step in range(steps):
        x0 = torch.from_numpy(_textures(rng, _REAL_BATCH))
        noise = torch.randn_like(x0)
        t = torch.randint(0, _T_MAX, (_REAL_BATCH,))
        pred = model(scheduler.add_noise(x0, noise, t), t).sample
        items = (pred - noise).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = items.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        batch = items.detach().numpy().astype(np.float64)  # (B,)
        fed = _feed(monitors, step, t.numpy()[None], batch[None])
        alarms = [a + b for a, b in zip(alarms, fed, strict=True)]
        losses[step] = batch.mean()
    edge = max(1, steps // 20)
    return _Real(
        steps,
        time.perf_counter() - wall,
        float(losses[:edge].mean()),
        float(losses[-edge:].mean()),
        [_Tally(a, m.warnings, m.counts) for a, m in zip(alarms, monitors, strict=True)],
        [[(e.step, e.rule) for e in m.events[:5]] for m in monitors],
    )


def _timed(call: Callable[[], _T]) -> tuple[_T, float]:
    """``call()``'s result and its wall time in seconds."""
    start = time.perf_counter()
    return call(), time.perf_counter() - start


def _rate(k: int, steps: int) -> str:
    return f"{k * _PER / steps:.4g}"


def _rules(tally: _Tally, steps: int) -> str:
    fired = [f"{r} {_rate(tally.counts[r], steps)}" for r in SPIKE_RULES if tally.counts[r]]
    return ", ".join(fired) or "none"


def _print_null(tallies: list[list[_Tally]], wall: float, steps: int) -> None:
    print(
        f"## 1. Nothing planted: alarms / σ warnings per 100k steps ({steps:,} steps per run, "
        f"{wall:.0f} s)\n"
    )
    lines = []
    for (noise, batch), per_mode in zip(_NULL_CONFIGS, tallies, strict=True):
        cells = [f"{_rate(x.alarms, steps)} / {_rate(x.warnings, steps)}" for x in per_mode]
        fired = "; ".join(
            f"{name}: {_rules(x, steps)}" for (name, _), x in zip(_MODES, per_mode, strict=True)
        )
        lines.append([noise, str(batch), *cells, fired])
    _table(["noise", "B", *(name for name, _ in _MODES), "rules fired (per 100k)"], lines)


def _cell(hits: Sequence[_Detection], event: _Event, mode: int) -> str:
    caught = [h for h in hits if h.delay is not None]
    cell = f"{len(caught)}/{len(hits)}"
    if caught:
        delay = float(np.median([h.delay for h in caught]))
        factor = float(np.median([h.factor for h in caught]))
        rules = "/".join(r for r in SPIKE_RULES if any(h.rule == r for h in caught))
        cell += f", {delay:g} steps, ×{factor:.2f}, {rules}"
    if mode in event.target_modes:
        met = len(caught) == len(hits) and all(
            h.delay is not None and h.delay < event.within for h in hits
        )
        cell += " ✓" if met else " ✗"
    return cell


def _target(event: _Event) -> str:
    if not event.target_modes:
        return "no target"
    where = (
        "every mode"
        if event.target_modes == _ALL_MODES
        else " and ".join(_MODES[k][0] for k in event.target_modes)
    )
    return f"target: within {event.within:,} step{'s' if event.within > 1 else ''}, {where}"


def _print_events(rows: list[_EventRow], wall: float, n_seeds: int) -> None:
    print(
        f"## 2. Planted events at step {_WARMUP:,} after a clean warm-up: caught / seeds, median "
        f"delay, median loss factor at detection, the rules that caught it; ✓ / ✗: the target "
        f"met on every seed or not ({n_seeds} seeds, {wall:.0f} s). Where the warm-up had "
        f"alarms, a long horizon can be caught by a false alarm: a factor near 1 is one.\n"
    )
    for event in _EVENTS:
        print(f"### {event.name} (horizon {event.horizon:,} steps; {_target(event)})\n")
        lines = []
        for row in rows:
            per_mode = row.found[event.name]
            cells = [_cell(hits, event, k) for k, hits in enumerate(per_mode)]
            warm = " / ".join(str(a) for a in row.warmup_alarms)
            lines.append([row.noise, str(row.batch), *cells, warm])
        header = ["noise", "B", *(name for name, _ in _MODES), "warm-up alarms (per mode)"]
        _table(header, lines)


def _print_real(real: _Real | None) -> None:
    if real is None:
        print("real diffusers run: skipped (diffusers is not installed: pip install diffusers)")
        return
    print(
        f"## 3. A real loss: tiny UNet2DModel, DDPM ε-prediction on 32×32 stripes and grids, "
        f"batch {_REAL_BATCH}, AdamW 1e-4, {real.steps:,} steps on CPU in {real.wall:.0f} s; "
        f"mean loss {real.first_loss:.3f} over the first 5 % of steps, {real.last_loss:.3f} "
        f"over the last\n"
    )
    lines = []
    for (name, _), tally, first in zip(_MODES, real.tallies, real.alarm_steps, strict=True):
        lines.append(
            [
                name,
                f"{tally.alarms} / {tally.warnings}",
                f"{_rate(tally.alarms, real.steps)} / {_rate(tally.warnings, real.steps)}",
                _rules(tally, real.steps),
                ", ".join(f"{s} ({r})" for s, r in first) or "—",
            ]
        )
    header = ["mode", "alarms / warnings", "per 100k", "rules fired (per 100k)", "alarms at"]
    _table(header, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps of each null run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--event-seeds", type=int, default=5, help="seeds per planted event")
    parser.add_argument("--real-steps", type=int, default=350, help="steps of the real run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (real run)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("null", "events", "real"),
        default=["null", "events", "real"],
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    null = _timed(lambda: _null(args.steps, args.seed)) if "null" in args.sections else None
    events = (
        _timed(lambda: _events(args.event_seeds, args.seed)) if "events" in args.sections else None
    )
    real = _real(args.real_steps, args.seed) if "real" in args.sections else None
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    config = ", ".join(f"{k} {v}" for k, v in LossMonitor().state_dict()["config"].items())
    print(
        f"# Loss-spike detector quality: LossMonitor defaults ({config}); seed {args.seed}; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__}, {args.threads} thread(s); measured "
        f"in {wall:.0f} s wall, {cpu:.0f} s CPU\n"
    )
    if null is not None:
        _print_null(*null, args.steps)
    if events is not None:
        _print_events(*events, args.event_seeds)
    if "real" in args.sections:
        _print_real(real)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
