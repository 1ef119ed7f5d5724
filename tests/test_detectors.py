"""Tests for texwatch.detectors: each rule firing and not, rewind, exact state round trip."""

from __future__ import annotations

import copy
import doctest
import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from texwatch import detectors
from texwatch.detectors import (
    EMA,
    SPIKE_RULES,
    DriftRule,
    HardMaxRule,
    LogSpikeDetector,
    LossMonitor,
    RobustSpikeDetector,
    RollingSpikeDetector,
    StreamHealth,
    SustainedRule,
    TermMonitor,
    TimestepNormalizer,
    alpha_from_half_life,
    log_zscore,
    robust_zscore,
    term_shares,
    timestep_bin_index,
    zscore,
)


def _json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """What the daemon does with a state: JSON text on disk, read back."""
    return json.loads(json.dumps(state))


def _shape(obj: Any) -> Any:
    """The structure of a state (keys, list lengths), without the values."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__ if obj is not None else None


def _alternating(n: int, low: float = 1.0, high: float = 3.0) -> list[float]:
    """A history with mean (low+high)/2 and population σ (high-low)/2."""
    return [low if i % 2 == 0 else high for i in range(n)]


# ------------------------------------------------------------------------------------------
# Pure maths against independent references.


def test_module_docstring_examples_run() -> None:
    result = doctest.testmod(detectors, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20
    assert result.failed == 0


def test_zscore_matches_stdlib_population_sigma() -> None:
    rng = np.random.default_rng(0)
    history = rng.normal(3.0, 0.5, size=128)
    expected = (4.2 - statistics.fmean(history)) / statistics.pstdev(history)
    assert zscore(4.2, history) == pytest.approx(expected, rel=1e-12)
    assert zscore(1.0, history) < 0  # signed: below the mean is negative


def test_robust_zscore_matches_scipy_mad() -> None:
    rng = np.random.default_rng(1)
    history = np.concatenate([rng.normal(1.0, 0.1, size=120), [50.0, 60.0, 70.0, 80.0]])
    mad = stats.median_abs_deviation(history, scale="normal")
    expected = (2.0 - np.median(history)) / mad
    assert robust_zscore(2.0, history) == pytest.approx(expected, rel=1e-4)


def test_flat_history_gives_finite_scores() -> None:
    flat = np.full(16, 2.0)
    assert zscore(2.0, flat) == 0.0
    assert math.isfinite(zscore(2.1, flat)) and zscore(2.1, flat) > 1e3
    assert math.isfinite(robust_zscore(2.1, flat))


def test_alpha_from_half_life_halves_weight() -> None:
    for h in (1.0, 7.5, 100.0):
        assert (1.0 - alpha_from_half_life(h)) ** h == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="`half_life` to be a positive finite float but got 0"):
        alpha_from_half_life(0)


def test_timestep_bin_index_edges() -> None:
    t = np.array([-5.0, 0.0, 0.049, 0.05, 0.999, 1.0, 7.0, np.nan])
    assert timestep_bin_index(t, 20, (0.0, 1.0)).tolist() == [0, 0, 0, 1, 19, 19, 19, 0]


def test_term_shares_absolute_and_absent() -> None:
    shares = term_shares({"v": 0.6, "gan": -0.2, "edge": 0.0, "ffl": math.nan})
    assert shares["v"] == pytest.approx(0.75)
    assert shares["gan"] == pytest.approx(0.25)
    assert shares["edge"] == 0.0
    assert math.isnan(shares["ffl"])
    assert all(math.isnan(v) for v in term_shares({"a": 0.0, "b": 0.0}).values())


# ------------------------------------------------------------------------------------------
# EMA.


def test_ema_matches_reference_recursion_and_skips_nonfinite() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(1.0, 0.2, size=300)
    ema = EMA(half_life=20.0)
    alpha = 1.0 - 0.5 ** (1.0 / 20.0)
    ref = values[0]
    for step, v in enumerate(values):
        if step:
            ref = ref + alpha * (v - ref)
        assert ema.update(step, float(v)) == pytest.approx(ref, rel=1e-12)
    before = ema.value
    assert ema.update(300, math.nan) == before
    assert ema.update(301, math.inf) == before


def test_ema_rewind_replays_identically() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(1.0, 0.2, size=200)
    straight = EMA(alpha=0.1)
    for step, v in enumerate(values):
        straight.update(step, float(v))
    resumed = EMA(alpha=0.1)
    for step, v in enumerate(values[:180]):
        resumed.update(step, float(v) * 5.0 if step >= 150 else float(v))  # a diverging tail
    for step in range(150, 200):  # the job restarts from the step-150 checkpoint
        resumed.update(step, float(values[step]))
    assert resumed.value == straight.value


def test_ema_rewind_beyond_history_restores_oldest_held() -> None:
    ema = EMA(alpha=0.5, history=4)
    for step in range(10):
        ema.update(step, float(step))
    held = EMA(alpha=0.5)
    for step in range(6):  # history of 4 holds steps 6..9: the average before step 6
        held.update(step, float(step))
    ema.rewind(2)
    assert ema.value == held.value


def test_ema_argument_errors() -> None:
    with pytest.raises(ValueError, match="at most one of arguments `alpha` and `half_life`"):
        EMA(0.1, half_life=3.0)
    with pytest.raises(ValueError, match=r"`alpha` to be a float in \(0.0, 1.0\] but got 0"):
        EMA(0)
    with pytest.raises(ValueError, match="`alpha`"):
        EMA(1.5)
    with pytest.raises(TypeError, match="`step` to be a non-negative int but got 1.5"):
        EMA().update(1.5, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`value` to be a real number but got 'x'"):
        EMA().update(0, "x")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Rolling spike detectors.


def test_nothing_flagged_before_window_full() -> None:
    det = RollingSpikeDetector(window=16)
    for step, v in enumerate(_alternating(15)):
        det.update(step, v)
    verdict = det.update(15, 1e9)
    assert math.isnan(verdict.zscore) and not verdict.alarm and not verdict.warning


def _warm_detector(**kwargs: Any) -> RollingSpikeDetector:
    det = RollingSpikeDetector(window=16, **kwargs)
    for step, v in enumerate(_alternating(16)):  # mean 2, σ 1
        det.update(step, v)
    return det


@pytest.mark.parametrize(
    ("z", "alarm", "warning"), [(3.5, False, False), (5.0, False, True), (6.5, True, False)]
)
def test_alarm_warning_and_quiet_levels(z: float, alarm: bool, warning: bool) -> None:
    det = _warm_detector(sigma=6.0, warn_sigma=4.0)
    assert det.score(2.0 + z) == pytest.approx(z)
    verdict = det.update(16, 2.0 + z)
    assert verdict.zscore == pytest.approx(z)
    assert (verdict.alarm, verdict.warning) == (alarm, warning)


def test_flagged_values_stay_out_of_history_warnings_stay_in() -> None:
    det = RollingSpikeDetector(window=16)
    for step, v in enumerate(_alternating(16)):
        det.update(step, v)
    ring_before = det.state_dict()["ring"]
    assert det.update(16, 100.0).alarm
    assert det.state_dict()["ring"] == ring_before  # the spike did not enter the history
    assert det.update(17, 7.0).warning
    assert det.state_dict()["ring"] != ring_before  # a warning is ordinary data


def test_one_sided_drops_never_alarm() -> None:
    det = RollingSpikeDetector(window=16)
    for step, v in enumerate(_alternating(16)):
        det.update(step, v)
    drop = det.update(16, -100.0)
    assert drop.zscore < -50 and not drop.alarm and not drop.warning


def test_seed_sigma_three_honoured() -> None:
    three = RollingSpikeDetector(window=16, sigma=3.0)
    six = RollingSpikeDetector(window=16)
    for step, v in enumerate(_alternating(16)):
        three.update(step, v)
        six.update(step, v)
    assert three.update(16, 5.5).alarm  # 3.5 σ
    assert not six.update(16, 5.5).alarm


def test_robust_detector_sees_through_outlier_inflated_sigma() -> None:
    rng = np.random.default_rng(4)
    history = rng.normal(1.0, 0.01, size=128)
    history[::10] = 1.5  # regular outliers inflate a plain σ to ~0.15
    plain, robust = RollingSpikeDetector(), RobustSpikeDetector()
    for step, v in enumerate(history):
        plain.update(step, float(v))
        robust.update(step, float(v))
    assert not plain.update(128, 1.6).alarm
    verdict = robust.update(128, 1.6)
    assert verdict.alarm and verdict.zscore > 30


def test_detector_rewind_drops_history_at_and_after_step() -> None:
    det = RollingSpikeDetector(window=32)
    for step in range(100):
        det.update(step, 1.0 + 0.01 * (step % 5))
    verdict = det.update(90, 1.0)  # resumed from step 90: drop 90..99 (10 of 32), add step 90
    assert len(det) == 23
    assert not verdict.alarm and math.isnan(verdict.zscore)  # window no longer full
    ring = det.state_dict()["ring"]
    live = [ring["steps"][(ring["head"] - ring["count"] + i) % 32] for i in range(ring["count"])]
    assert live == list(range(68, 91))


def test_detector_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `window` to be an int >= 2 but got 0"):
        RollingSpikeDetector(window=0)
    with pytest.raises(ValueError, match="`window` to be an int >= 2 but got True"):
        RollingSpikeDetector(window=True)
    with pytest.raises(ValueError, match="`sigma` to be a positive finite float but got -1"):
        RobustSpikeDetector(sigma=-1)
    with pytest.raises(ValueError, match="`warn_sigma` to be a positive finite float but got nan"):
        RollingSpikeDetector(warn_sigma=math.nan)


# ------------------------------------------------------------------------------------------
# Hard rules.


def test_hard_max_fires_at_ten_times_first_hundred_max() -> None:
    rule = HardMaxRule()
    assert not any(rule.update(s, 1.0 + (s == 50) * 1.0) for s in range(99))
    assert not rule.update(99, 1e6)  # the 100th value is still being collected
    assert rule.reference == 1e6
    rule = HardMaxRule()
    for s in range(100):
        rule.update(s, 2.0 if s == 50 else 1.0)
    assert rule.reference == 2.0
    assert not rule.update(100, 19.99)
    assert rule.update(101, 20.0)


def test_hard_max_skips_nonfinite_and_rewinds_into_collection() -> None:
    rule = HardMaxRule(first=4)
    for s, v in enumerate([1.0, math.nan, 2.0, math.inf, 1.0, 1.5]):
        rule.update(s, v)
    assert rule.reference == 2.0  # collected 1, 2, 1, 1.5
    rule.update(4, 3.0)  # resumed at step 4: 1.0 (step 4) and 1.5 (step 5) dropped
    assert math.isnan(rule.reference)
    rule.update(5, 1.0)
    assert rule.reference == 3.0


def test_sustained_fires_on_fifth_high_step_only() -> None:
    rule = SustainedRule(window=32)
    for s in range(32):
        rule.update(s, 1.0)
    fired = [rule.update(32 + i, 3.0) for i in range(7)]
    assert fired == [False, False, False, False, True, False, False]


def test_sustained_needs_steps_in_a_row() -> None:
    rule = SustainedRule(window=64)
    for s in range(64):
        rule.update(s, 1.0)
    series = [3.0] * 4 + [1.0] + [3.0] * 4 + [math.nan] + [3.0] * 4
    assert not any(rule.update(64 + i, v) for i, v in enumerate(series))
    assert rule.run == 4


def test_sustained_not_before_window_and_rewind_resets_run() -> None:
    rule = SustainedRule(window=8)
    assert not any(rule.update(s, 100.0 if s > 2 else 1.0) for s in range(8))
    rule = SustainedRule(window=32)
    for s in range(32):
        rule.update(s, 1.0)
    for s in range(32, 36):
        rule.update(s, 3.0)
    assert rule.run == 4
    assert not rule.update(35, 3.0)  # resumed at step 35: the run starts over
    assert rule.run == 0  # (and step 35's drop left the window one short for this value)
    assert [rule.update(s, 3.0) for s in range(36, 41)] == [False] * 4 + [True]


# ------------------------------------------------------------------------------------------
# Timestep normalisation.


def _diffusion_stream(
    seed: int, n: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:  # (n, B) timesteps, (n, B) item losses
    """Loss whose scale is set by a random timestep (×11 from t=999 to t=0), 20 % noise."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 1000, size=(n, batch))
    scale = 0.05 + 0.5 * np.exp(-t / 100.0)
    return t, scale * rng.gamma(25.0, 1.0 / 25.0, size=(n, batch))


def test_timestep_normalisation_removes_false_alarms_and_keeps_real_spike() -> None:
    n, spike = 10_000, 7_000
    t, items = _diffusion_stream(0, n, batch=4)
    items[spike] *= 3.0  # a real spike: every item 3× its usual loss
    raw = LossMonitor(sigma=3.0, statistic="gaussian")
    norm = LossMonitor(sigma=3.0, statistic="gaussian")
    for s in range(n):
        loss = float(items[s].mean())
        raw.update(s, loss)
        ids = [4 * s + i for i in range(4)]
        norm.update(s, loss, item_losses=items[s], timesteps=t[s], sample_ids=ids)
    raw_alarms = raw.counts["sigma"] - (spike in {e.step for e in raw.events})
    norm_alarms = norm.counts["sigma"] - 1
    assert raw_alarms >= 150  # 3σ on the raw diffusion loss: a storm of false alarms
    assert norm_alarms <= raw_alarms / 4
    assert norm.t_range == (0.0, 1000.0)
    caught = [e for e in norm.events if e.step == spike]
    assert caught and caught[0].rule == "sigma" and caught[0].zscore > 6.0
    assert caught[0].sample_ids == tuple(4 * spike + i for i in range(4))
    assert norm.last is not None and norm.last.normalised and abs(norm.last.value - 1.0) < 1.0


def test_timestep_normalisation_from_batch_loss_only() -> None:
    n, spike = 4_000, 3_000
    t, items = _diffusion_stream(1, n, batch=4)
    items[spike] *= 3.0  # every item 3× its usual loss: inside the timestep mix's range
    raw, norm = LossMonitor(), LossMonitor()
    flagged: dict[str, list[int]] = {"raw": [], "norm": []}
    for s in range(n):
        loss = float(items[s].mean())
        if raw.update(s, loss).rule:
            flagged["raw"].append(s)
        if norm.update(s, loss, timesteps=t[s]).rule:
            flagged["norm"].append(s)
    assert flagged == {"raw": [], "norm": [spike]}


def test_normalizer_attribution_recovers_bin_means_from_batch_loss() -> None:
    rng = np.random.default_rng(5)
    norm = TimestepNormalizer(bins=2, t_range=(0.0, 1.0), half_life=500.0)
    for _ in range(3000):
        t = rng.uniform(0.0, 1.0, size=3)
        norm.update(t, loss=float(np.where(t < 0.5, 1.0, 10.0).mean()))
    assert norm.means[0] == pytest.approx(1.0, rel=0.05)
    assert norm.means[1] == pytest.approx(10.0, rel=0.05)


def test_normalizer_range_inference() -> None:
    cont = TimestepNormalizer()
    cont.update([0.3, 0.7], item_losses=[1.0, 1.0])
    assert cont.t_range == (0.0, 1.0)
    disc = TimestepNormalizer()
    disc.update(np.array([17, 640]), item_losses=[1.0, 1.0])
    assert disc.t_range == (0.0, 1000.0)
    ambiguous = TimestepNormalizer()
    ambiguous.update([0.0, 1.0], item_losses=[1.0, 1.0])
    assert ambiguous.t_range is None and math.isnan(ambiguous.normalise([0.0], loss=1.0))
    ambiguous.update([500.0], loss=1.0)
    assert ambiguous.t_range == (0.0, 1000.0)
    with pytest.raises(ValueError, match="pass argument `t_range`"):
        TimestepNormalizer().update([-3.0, 2.0], loss=1.0)


def test_normalizer_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`t_range` to be finite with low < high but got \(1, 1"):
        TimestepNormalizer(t_range=(1, 1))
    with pytest.raises(ValueError, match="`t_range` to be a \\(low, high\\) pair"):
        TimestepNormalizer(t_range="ab")  # type: ignore[arg-type]
    norm = TimestepNormalizer()
    with pytest.raises(ValueError, match="exactly one of arguments `item_losses` and `loss`"):
        norm.normalise([1.0, 2.0])
    with pytest.raises(ValueError, match="one loss per timestep"):
        norm.update([1.0, 2.0], item_losses=[1.0])
    with pytest.raises(ValueError, match="`timesteps` to be a non-empty 1-D sequence"):
        norm.update(np.zeros((2, 2)), loss=1.0)


# ------------------------------------------------------------------------------------------
# The loss monitor.


def _warm(monitor: LossMonitor, n: int, start: int = 0) -> None:
    for s in range(start, start + n):
        monitor.update(s, 1.0 + 0.01 * (s % 7))


def test_clean_stream_raises_nothing_at_default_levels() -> None:
    rng = np.random.default_rng(6)
    monitor = LossMonitor()
    for s in range(3000):
        update = monitor.update(s, 1.0 * math.exp(-s / 2000) + float(rng.normal(0, 0.02)))
        assert update.rule is None
    assert monitor.counts == dict.fromkeys(SPIKE_RULES, 0)
    assert monitor.events == []
    assert monitor.ema == pytest.approx(math.exp(-2999 / 2000), abs=0.05)


def test_nonfinite_flags_at_once_even_during_warmup() -> None:
    monitor = LossMonitor()
    first = monitor.update(0, math.nan)
    assert first.rule == "nonfinite" and first.rules == ("nonfinite",)
    assert monitor.update(1, math.inf).rule == "nonfinite"
    items = monitor.update(2, 1.0, item_losses=[1.0, math.nan])
    assert items.rule == "nonfinite"
    assert monitor.update(3, 1.0).rule is None
    assert monitor.counts["nonfinite"] == 3
    assert math.isnan(first.ema) and monitor.ema == 1.0  # non-finite never enters the EMA


def test_hard_max_rule_in_monitor() -> None:
    monitor = LossMonitor(window=512)  # σ rule still warming up: only the hard rule can fire
    _warm(monitor, 200)
    assert monitor.update(200, 10.0).rule is None  # < 10 × max(first 100) = 10.6
    update = monitor.update(201, 10.61)
    assert update.rule == "hard_max" and monitor.counts["hard_max"] == 1


def test_sigma_rule_and_warning_counters() -> None:
    monitor = LossMonitor(window=16, warn_sigma=4.0, statistic="gaussian")
    for s, v in enumerate(_alternating(16)):
        monitor.update(s, v)
    alarm = monitor.update(16, 8.5)  # kept out of the history, so the next is judged alike
    assert alarm.rule == "sigma" and not alarm.warning and alarm.zscore == pytest.approx(6.5)
    warned = monitor.update(17, 7.0)
    assert warned.rule is None and warned.warning and warned.zscore == pytest.approx(5.0)
    assert monitor.counts["sigma"] == 1 and monitor.warnings == 1


def test_sustained_rule_in_monitor() -> None:
    monitor = LossMonitor(window=64, sigma=1e6, warn_sigma=1e6)  # σ rule out of the way
    _warm(monitor, 64)
    rules = [monitor.update(64 + i, 3.0).rule for i in range(6)]
    assert rules == [None, None, None, None, "sustained", None]
    assert monitor.counts["sustained"] == 1


def test_events_bounded_with_truncated_sample_ids() -> None:
    monitor = LossMonitor(window=16, max_events=3, max_sample_ids=2)
    _warm(monitor, 16)
    for i in range(5):
        monitor.update(16 + i, 1000.0, sample_ids=np.array([10 * i, 10 * i + 1, 10 * i + 2]))
    events = monitor.events
    assert [e.step for e in events] == [18, 19, 20]
    assert events[-1].sample_ids == (40, 41) and events[-1].rule == "sigma"
    assert monitor.counts["sigma"] == 5
    monitor.update(21, 1000.0, sample_ids=["a.png", b"b.png"])
    assert monitor.events[-1].sample_ids == ("a.png", "b.png")
    with pytest.raises(TypeError, match="`sample_ids` to hold ints or strings but got 0.5"):
        monitor.update(22, 1000.0, sample_ids=[0.5])


def test_resume_rewinds_without_flagging_the_jump() -> None:
    def loss(s: int) -> float:  # decaying loss with deterministic wiggle
        return 2.0 * math.exp(-s / 300.0) + 0.01 * math.sin(s)

    resumed = LossMonitor()
    for s in range(1000):
        resumed.update(s, loss(s))
    for s in range(600, 1500):  # restarted from the step-600 checkpoint
        update = resumed.update(s, loss(s))
        assert update.rule is None and update.rewound == (s == 600)
    assert resumed.counts == dict.fromkeys(SPIKE_RULES, 0)

    glued = LossMonitor()  # same values without going back in steps: the jump is a spike
    for s in range(1000):
        glued.update(s, loss(s))
    assert glued.update(1000, loss(600)).rule == "sigma"


def test_resume_resets_sustained_run() -> None:
    monitor = LossMonitor(window=64, sigma=1e6, warn_sigma=1e6)
    _warm(monitor, 64)
    for s in range(64, 68):
        monitor.update(s, 3.0)
    rules = [monitor.update(s, 3.0).rule for s in range(67, 73)]  # back to 67: run restarts
    assert rules == [None] * 5 + ["sustained"]  # without the rewind it fires at step 68


def test_switch_to_timesteps_restarts_sigma_history() -> None:
    monitor = LossMonitor(window=8)
    _warm(monitor, 8)
    first = monitor.update(8, 1.0, timesteps=[0.5])
    assert first.normalised and math.isnan(first.value) and math.isnan(first.zscore)
    later = monitor.update(9, 1.0)  # no timesteps: only the hard rules judge it
    assert later.normalised and math.isnan(later.value)


def test_state_round_trip_mid_stream_gives_identical_outputs() -> None:
    t, items = _diffusion_stream(7, 1200, batch=3)
    items[700] *= 4.0
    items[900, 1] = math.nan

    def feed(monitor: LossMonitor, s: int) -> str:
        step = s if s < 1000 else s - 200  # a resume in the second half
        update = monitor.update(
            step, float(items[s].mean()), item_losses=items[s], timesteps=t[s], sample_ids=[s]
        )
        return repr(update)

    straight = LossMonitor(window=64, statistic="robust", sigma=4.0)
    for s in range(500):
        feed(straight, s)
    saved = json.dumps(straight.state_dict())
    restored = LossMonitor.from_state_dict(json.loads(saved))
    loaded = LossMonitor(window=64, statistic="robust", sigma=4.0)
    loaded.load_state_dict(json.loads(saved))
    for s in range(500, 1200):
        expected = feed(straight, s)
        assert feed(restored, s) == expected
        assert feed(loaded, s) == expected
    assert json.dumps(restored.state_dict()) == json.dumps(straight.state_dict())
    assert straight.counts["nonfinite"] == 1 and straight.counts["sigma"] >= 1


def test_thresholds_may_change_but_window_may_not_on_load() -> None:
    six = LossMonitor(window=16, statistic="gaussian")
    for s, v in enumerate(_alternating(16)):
        six.update(s, v)
    three = LossMonitor(window=16, sigma=3.0, statistic="gaussian")  # --spike-sigma 3
    three.load_state_dict(_json_round_trip(six.state_dict()))
    assert three.sigma == 3.0 and three.update(16, 5.5).rule == "sigma"
    with pytest.raises(ValueError, match=r"with window=32 but got 16; .*from_state_dict"):
        LossMonitor(window=32).load_state_dict(six.state_dict())
    with pytest.raises(ValueError, match="a `LossMonitor` state_dict but got one of kind 'EMA'"):
        six.load_state_dict(EMA().state_dict())
    broken = six.state_dict()
    del broken["counts"]
    with pytest.raises(ValueError, match="complete `LossMonitor` state_dict"):
        six.load_state_dict(broken)


def test_loss_monitor_argument_errors() -> None:
    with pytest.raises(ValueError, match="Expected argument `window` to be an int >= 2 but got 0"):
        LossMonitor(window=0)
    with pytest.raises(ValueError, match="`hard_max_first` to be a positive int but got 0"):
        LossMonitor(hard_max_first=0)
    with pytest.raises(ValueError, match="`sustained_factor` to be a positive finite float"):
        LossMonitor(sustained_factor=-2.0)
    with pytest.raises(ValueError, match="one of arguments `ema_alpha` and `ema_half_life`"):
        LossMonitor(ema_alpha=0.1, ema_half_life=10.0)
    with pytest.raises(ValueError, match="`statistic` to be one of .* but got 'median'"):
        LossMonitor(statistic="median")
    monitor = LossMonitor()
    with pytest.raises(TypeError, match="`step` to be a non-negative int but got -1"):
        monitor.update(-1, 1.0)
    with pytest.raises(TypeError, match="`loss` to be a real number"):
        monitor.update(0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length but got 2 and 3"):
        monitor.update(0, 1.0, item_losses=[1.0, 1.0], timesteps=[1, 2, 3])


def _lognormal_run(seed: int, n: int) -> np.ndarray:
    """A heavy-tailed training loss: batch of 4 lognormal (σ 0.6) items over a slow decay."""
    rng = np.random.default_rng(seed)
    items = (
        rng.lognormal(-0.18, 0.6, size=(n, 4)) * (0.2 + 0.1 * np.exp(-np.arange(n) / 5000))[:, None]
    )
    return items.mean(axis=1)


def test_log_zscore_is_the_robust_zscore_of_the_logs() -> None:
    history = np.array([0.5, 1.0, 2.0, 4.0])
    assert log_zscore(8.0, history) == pytest.approx(robust_zscore(math.log(8.0), np.log(history)))
    assert math.isnan(log_zscore(0.0, history)) and math.isnan(log_zscore(1.0, -history))


def test_heavy_tails_page_rarely_on_the_log_scale_and_a_10x_spike_still_does() -> None:
    loss = _lognormal_run(21, 30_000)
    loss[20_000] = 10.0 * np.median(loss[19_000:20_000])  # 10× the usual loss
    by_statistic = {}
    for statistic in ("log", "gaussian"):
        monitor = LossMonitor(statistic=statistic)
        for s, v in enumerate(loss):
            monitor.update(s, float(v))
        by_statistic[statistic] = monitor
    log, gaussian = by_statistic["log"], by_statistic["gaussian"]
    assert [e.step for e in log.events] == [20_000]
    assert sum(gaussian.counts.values()) >= 6  # a Gaussian σ rule pages on the tail
    assert log.warnings <= 10


def _timestep_mix(seed: int, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's diffusion loss with Gamma(25) item noise: (n, B) timesteps, items."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 1000, size=(n, batch))
    scale = 0.02 + 0.3 * np.exp(-t / 150) + 0.03 * (1 - t / 1000)
    return t, scale * rng.gamma(25.0, 1.0 / 25.0, size=(n, batch))


def test_the_log_rule_reads_its_spread_off_the_upper_tail_of_a_bounded_loss() -> None:
    # The batch loss of a timestep mix is bounded above with a long lower tail: a MAD-based σ
    # puts 10× the usual loss inside 6σ; the window's reach does not, nor the clean maximum.
    _, items = _timestep_mix(0, 20_000, batch=8)
    loss = items.mean(axis=1)
    monitor = LossMonitor()
    flagged = [s for s, v in enumerate(loss) if monitor.update(s, float(v)).rule]
    assert flagged == [] and monitor.warnings == 0
    history = loss[-monitor.window :]
    spike = 10.0 * float(np.median(history))
    assert log_zscore(spike, history) < 6.0  # the MAD's σ would miss it
    assert copy.deepcopy(monitor).update(20_000, spike).rule == "sigma"
    replay = copy.deepcopy(monitor).update(20_000, float(loss.max()))
    assert replay.rule is None and replay.zscore < 5.0


def test_a_batch_one_item_dominates_needs_a_larger_jump() -> None:
    # With only the batch loss, a batch whose small-t item carries most of it has that item's
    # noise, not the batch's: the same normalised jump is flagged on a balanced batch only.
    t, items = _timestep_mix(3, 2_000, batch=4)
    monitor = LossMonitor()
    for s in range(2_000):
        monitor.update(s, float(items[s].mean()), timesteps=t[s])
    balanced, dominated = np.array([400, 450, 500, 550]), np.array([0, 990, 995, 999])
    found = {}
    for name, ts in (("balanced", balanced), ("dominated", dominated)):
        loss = 2.5 / TimestepNormalizer.normalise(monitor._norm, ts, loss=1.0)  # normalised 2.5
        found[name] = copy.deepcopy(monitor).update(2_000, loss, timesteps=ts)
    assert found["balanced"].value == pytest.approx(found["dominated"].value)
    assert found["balanced"].rule == "sigma" and found["dominated"].rule is None
    assert found["dominated"].zscore < found["balanced"].zscore * 0.75


def test_spread_factors_scale_the_history_and_the_value() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(0.0, 0.1, size=400)
    plain, scaled = LogSpikeDetector(window=64), LogSpikeDetector(window=64)
    for s, x in enumerate(noise):
        plain.update(s, math.exp(x))
        scaled.update(s, math.exp(2.0 * x), spread=2.0)  # twice the noise, and it says so
    assert scaled.reach == pytest.approx(plain.reach)  # the reach is per unit spread factor
    assert plain.score(math.exp(0.7)) == pytest.approx(scaled.score(math.exp(1.4), spread=2.0))
    assert plain.score(math.exp(0.7)) > 6.0 > scaled.score(math.exp(0.7), spread=2.0)
    reach = plain.reach
    plain.rewind(380)  # a resumed job: the history goes, the reach is a calibration and stays
    assert plain.reach == reach and len(plain) == 44 and not plain.ready
    plain.clear()
    assert math.isnan(plain.reach)
    with pytest.raises(ValueError, match="`spread` to be a positive finite float but got 0.0"):
        plain.score(1.0, spread=0.0)


def test_batch_loss_with_timesteps_round_trips_and_resumes_identically() -> None:
    t, items = _timestep_mix(9, 1_600, batch=4)
    items[900] *= 10.0

    def feed(monitor: LossMonitor, s: int) -> str:
        step = s if s < 1_200 else s - 300  # a resume in the second half
        return repr(monitor.update(step, float(items[s].mean()), timesteps=t[s]))

    straight = LossMonitor()
    for s in range(600):
        feed(straight, s)
    restored = LossMonitor.from_state_dict(_json_round_trip(straight.state_dict()))
    outputs = [(feed(straight, s), feed(restored, s)) for s in range(600, 1_600)]
    assert all(a == b for a, b in outputs)
    assert json.dumps(restored.state_dict()) == json.dumps(straight.state_dict())
    assert [e.step for e in straight.events] == [900]


def test_a_state_of_the_previous_layout_is_refused_clearly() -> None:
    old = LossMonitor().state_dict()
    old["version"] = 2  # the release before spread factors and the reach average
    with pytest.raises(ValueError, match="`LossMonitor` state_dict of version 3 but got version 2"):
        LossMonitor().load_state_dict(old)


def test_a_flagged_step_stays_out_of_the_ema_and_counts_once() -> None:
    monitor = LossMonitor(window=16, hard_max_first=4)
    _warm(monitor, 64)
    before = monitor.ema
    update = monitor.update(64, 500.0)  # hard_max and sigma both fire
    assert update.rules == ("hard_max", "sigma") and update.ema == before
    assert monitor.counts == {**dict.fromkeys(SPIKE_RULES, 0), "hard_max": 1}
    assert sum(monitor.counts.values()) == len(monitor.events)
    assert monitor.update(65, 1.0).ema == pytest.approx(before + 0.01 * (1.0 - before))


def test_drift_catches_a_divergence_and_a_level_shift_once_never_a_falling_loss() -> None:
    loss = _lognormal_run(5, 30_000)
    steps = np.arange(30_000)
    diverging = loss * np.exp(np.clip(steps - 20_000, 0, None) / 1000.0)
    shifted = loss * np.where(steps >= 20_000, 2.0, 1.0)
    found = {}
    for name, series in (("falling", loss), ("diverging", diverging), ("shifted", shifted)):
        monitor = LossMonitor()
        rules = [monitor.update(s, float(v)).rule for s, v in enumerate(series)]
        found[name] = [s for s, rule in enumerate(rules) if rule == "drift"]
    assert found["falling"] == []
    assert found["diverging"] and 20_000 < found["diverging"][0] <= 20_300
    assert len(found["shifted"]) == 1 and 20_000 <= found["shifted"][0] <= 20_030


def test_drift_rule_never_fires_on_the_jump_back_of_a_resumed_run() -> None:
    loss = _lognormal_run(8, 6_000)
    monitor = LossMonitor()
    for s in range(4_000):
        monitor.update(s, float(loss[s]))
    for s in range(3_000, 6_000):  # resumed from a checkpoint at step 3,000
        update = monitor.update(s, float(loss[s]))
        assert update.rule is None, (s, update)


def test_a_loss_that_can_be_negative_is_judged_on_its_values() -> None:
    rng = np.random.default_rng(4)
    monitor = LossMonitor(window=32)
    for s in range(200):
        monitor.update(s, float(rng.normal(0.0, 1.0)))  # an ELBO-like loss around 0
    assert monitor.statistic == "robust" and monitor.counts["sigma"] == 0
    assert "sigma" in monitor.update(200, 40.0).rules
    restored = LossMonitor.from_state_dict(_json_round_trip(monitor.state_dict()))
    assert restored.statistic == "robust" and restored.update(201, 0.1).rule is None


# ------------------------------------------------------------------------------------------
# Loss terms.


def test_seed_004_edge_term_never_computed_goes_dead_after_warmup() -> None:
    terms = TermMonitor(window=100)
    dead_at = None
    for s in range(600):
        w_edge = 0.0 if s < 300 else min(0.06, 0.06 * (s - 300) / 100)  # warm-up, then ramp
        update = terms.update(
            s,
            {"v": 0.5 + 0.1 * math.sin(s), "lpips": 0.3 + 0.05 * math.cos(s), "edge": 0.0},
            {"v": 1.0, "lpips": 0.35, "edge": w_edge},
        )
        if update.newly_dead:
            assert dead_at is None and update.newly_dead == ("edge",)
            dead_at = s
        if s < 300:
            assert update.dead == ()
    assert dead_at == 400  # weight > 0 from step 301 on: 100 steps in a row
    assert terms.dead == ("edge",)
    last = terms.last
    assert last is not None and last.shares["edge"] == 0.0
    assert last.shares["v"] + last.shares["lpips"] == pytest.approx(1.0)
    assert last.contributions["lpips"] == pytest.approx(0.35 * last.values["lpips"])
    assert last.total == pytest.approx(last.values["v"] + 0.35 * last.values["lpips"])


def test_constant_and_absent_terms_go_dead_then_revive_and_nan_is_nonfinite() -> None:
    terms = TermMonitor(window=10)
    for s in range(12):
        update = terms.update(
            s,
            {"const": 0.693, "nan": math.nan, "live": float(s + 1)},
            {"const": 1.0, "nan": 1.0, "absent": 0.5, "live": 1.0},
        )
    assert update.dead == ("absent", "const")
    assert update.nonfinite == ("nan",)  # computed and broken: its own state, not dead
    assert math.isnan(update.shares["absent"]) and math.isnan(update.values["absent"])
    revived = terms.update(12, {"const": 0.7, "nan": 0.1, "absent": 0.2, "live": 1.0})
    assert set(revived.revived) == {"const", "absent"} and revived.dead == ()
    assert revived.nonfinite == ()


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even), back as float64."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def test_live_terms_in_bf16_and_fp16_are_alive_and_a_frozen_one_dies() -> None:
    rng = np.random.default_rng(12)
    live = 0.5 + 3e-4 * rng.standard_normal(1000)
    stopped = np.concatenate([0.5 + 0.05 * rng.standard_normal(300), np.full(700, 0.0)])
    stopped[300:] = _bf16(stopped[299:300])[0]  # a bf16 term frozen at its last value
    series = {
        "bf16": _bf16(live),
        "fp16": live.astype(np.float16).astype(np.float64),
        "stopped_bf16": _bf16(stopped),
    }
    assert np.unique(series["bf16"]).size <= 3  # the bf16 term reads nearly constant
    terms = TermMonitor(window=100)
    dead_at: dict[str, int] = {}
    for s in range(1000):
        update = terms.update(s, {k: float(v[s]) for k, v in series.items()})
        for name in update.newly_dead:
            dead_at.setdefault(name, s)
    assert dead_at == {"stopped_bf16": 399}  # 100 steps after it froze


def test_a_term_on_a_cadence_is_judged_at_its_cadence_and_dies_when_it_stops() -> None:
    terms = TermMonitor(window=100)
    flips: list[tuple[int, tuple[str, ...], tuple[str, ...]]] = []
    for s in range(20_000):
        computed = s % 200 == 0 and s < 12_000
        update = terms.update(s, {"fid": 1.0 + 0.01 * (s // 200)} if computed else {})
        if update.newly_dead or update.revived:
            flips.append((s, update.newly_dead, update.revived))
    # alive while computed every 200 steps; dead 15 cadences after its last value (step 11,800)
    assert flips == [(11_800 + 3_000, ("fid",), ())]


def test_a_hinge_term_mostly_zero_stays_alive() -> None:
    rng = np.random.default_rng(3)
    terms = TermMonitor(window=100)
    dead = 0
    for s in range(50_000):
        active = rng.random() < 0.01
        update = terms.update(s, {"hinge": float(rng.uniform(0.1, 1.0)) if active else 0.0})
        dead += bool(update.newly_dead)
    assert dead == 0
    for s in range(50_000, 53_000):  # it stops: 0 for good
        update = terms.update(s, {"hinge": 0.0})
        dead += bool(update.newly_dead)
    assert dead == 1 and update.dead == ("hinge",)


def test_zero_weight_is_never_dead_and_missing_weight_is_kept() -> None:
    terms = TermMonitor(window=5)
    terms.update(0, {"gan": 0.0}, {"gan": 0.0})
    for s in range(1, 20):
        update = terms.update(s, {"gan": 0.0})  # weight not given again: last known (0)
    assert update.dead == () and update.weights["gan"] == 0.0
    fresh = TermMonitor(window=5)
    update = fresh.update(0, {"x": 2.0})
    assert update.weights["x"] == 1.0  # never weighted: counts as 1


def test_term_rewind_restarts_runs_and_keeps_dead() -> None:
    terms = TermMonitor(window=10)
    for s in range(9):
        terms.update(s, {"a": 0.0, "b": 0.0})
    for s in range(9, 20):  # "b" starts dying at 0 and goes dead
        terms.update(s, {"a": 1.0 + s, "b": 0.0})
    assert terms.dead == ("b",)
    for s in range(5, 9):  # resumed from step 5: a dead term stays dead, runs restart
        update = terms.update(s, {"a": 0.0, "b": 0.0})
    assert update.rewound is False and update.dead == ("b",)
    assert terms.update(9, {"a": 0.0, "b": 0.0}).dead == ("b",)


def test_term_rewind_needs_full_window_again() -> None:
    terms = TermMonitor(window=10)
    for s in range(9):
        terms.update(s, {"a": 0.0})
    assert terms.update(5, {"a": 0.0}).rewound  # run restarts at 1
    assert all(terms.update(s, {"a": 0.0}).dead == () for s in range(6, 14))
    assert terms.update(14, {"a": 0.0}).newly_dead == ("a",)


def test_term_nonfinite_counts_and_bounds() -> None:
    terms = TermMonitor(window=5, max_terms=2)
    terms.update(0, {"a": math.inf, "b": math.nan})
    update = terms.update(1, {"a": -math.inf, "b": 1.0})
    assert terms.nonfinite == {"a": 2, "b": 1} and update.nonfinite == ("a",)
    with pytest.raises(ValueError, match="at most `max_terms`=2 distinct terms but got 3"):
        terms.update(2, {"c": 1.0})
    with pytest.raises(TypeError, match="`terms` to map names to numbers but got 'a': 'x'"):
        terms.update(2, {"a": "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="`window` to be a positive int but got 0"):
        TermMonitor(window=0)


def test_term_state_round_trip() -> None:
    def step_terms(s: int) -> tuple[dict[str, float], dict[str, float]]:
        return (
            {"v": 1.0 / (s + 1), "edge": 0.0, "ffl": math.nan if s % 3 else 0.2 + s},
            {"v": 1.0, "edge": 0.06, "ffl": 0.01},
        )

    straight = TermMonitor(window=20)
    for s in range(50):
        straight.update(s, *step_terms(s))
    restored = TermMonitor.from_state_dict(_json_round_trip(straight.state_dict()))
    for s in range(50, 120):
        assert repr(restored.update(s, *step_terms(s))) == repr(straight.update(s, *step_terms(s)))
    assert restored.dead == ("edge",)


# ------------------------------------------------------------------------------------------
# Stream health.


def test_stream_health_rolling_summary_matches_numpy() -> None:
    rng = np.random.default_rng(8)
    rows = rng.normal(0.0, 1.0, size=(60, 3))
    health = StreamHealth(window=16)
    for s, (lo, hi, clip) in enumerate(rows):
        update = health.update(s, minimum=lo, maximum=hi, clip_fraction=abs(clip), nonfinite=s % 2)
    last = rows[-16:]
    assert update.min == last[:, 0].min() and update.max == last[:, 1].max()
    assert update.clip_fraction == pytest.approx(np.abs(last[:, 2]).mean(), rel=1e-12)
    assert update.nonfinite_total == 30
    back = health.update(50, minimum=0.0, maximum=0.0, clip_fraction=0.0)
    kept = rows[44:50]  # rows 44..49 held, 50..59 dropped, then the new row
    assert back.rewound and back.min == min(kept[:, 0].min(), 0.0)
    restored = StreamHealth.from_state_dict(_json_round_trip(health.state_dict()))
    assert repr(restored.update(51, minimum=-9.0, maximum=1.0, clip_fraction=0.5)) == repr(
        health.update(51, minimum=-9.0, maximum=1.0, clip_fraction=0.5)
    )
    with pytest.raises(TypeError, match="`nonfinite` to be a non-negative int but got -1"):
        health.update(52, minimum=0.0, maximum=0.0, clip_fraction=0.0, nonfinite=-1)


# ------------------------------------------------------------------------------------------
# Persistence and constant memory for every detector.


def _feed_detector(kind: str) -> tuple[Callable[[], Any], Callable[[Any, int], Any]]:
    rng = np.random.default_rng(9)
    noise = rng.normal(0.0, 0.05, size=20_000)

    def value(s: int) -> float:
        return 1.0 + float(noise[s]) + (50.0 if s % 97 == 0 else 0.0)

    if kind == "loss":
        return lambda: LossMonitor(max_events=8), lambda m, s: m.update(
            s, value(s), item_losses=[value(s)], timesteps=[s % 1000], sample_ids=[s, s + 1]
        )
    if kind == "terms":
        return TermMonitor, lambda m, s: m.update(
            s, {"a": value(s), "b": 0.0, "c": float(s % 2)}, {"a": 1.0, "b": 0.5, "c": 0.1}
        )
    if kind == "health":
        return StreamHealth, lambda m, s: m.update(
            s, minimum=-value(s), maximum=value(s), clip_fraction=0.01, nonfinite=s % 3
        )
    if kind == "drift":
        return DriftRule, lambda m, s: m.update(s, value(s))
    factory = {
        "ema": EMA,
        "rolling": RollingSpikeDetector,
        "robust": RobustSpikeDetector,
        "log": LogSpikeDetector,
        "hard": HardMaxRule,
        "sustained": SustainedRule,
    }[kind]
    return factory, lambda m, s: m.update(s, value(s))


KINDS = [
    "loss",
    "terms",
    "health",
    "ema",
    "rolling",
    "robust",
    "log",
    "hard",
    "sustained",
    "drift",
]


@pytest.mark.parametrize("kind", KINDS)
def test_state_size_constant_in_steps(kind: str) -> None:
    factory, feed = _feed_detector(kind)
    det = factory()
    for s in range(1000):
        feed(det, s)
    early = det.state_dict()
    for s in range(1000, 4000):
        feed(det, s)
    late = det.state_dict()
    assert _shape(late) == _shape(early)
    assert len(json.dumps(late)) <= 1.1 * len(json.dumps(early))


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_is_exact(kind: str) -> None:
    factory, feed = _feed_detector(kind)
    det = factory()
    for s in range(700):
        feed(det, s)
    copy = type(det).from_state_dict(_json_round_trip(det.state_dict()))
    assert json.dumps(copy.state_dict()) == json.dumps(det.state_dict())
    for s in range(700, 1100):
        assert repr(feed(copy, s)) == repr(feed(det, s))
