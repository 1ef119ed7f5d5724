"""Streaming detectors over training series: loss EMA, spikes, dead loss terms, stream health.

The module has two halves, like torchmetrics: pure numpy functions do the maths
(:func:`zscore`, :func:`robust_zscore`, :func:`alpha_from_half_life`, :func:`timestep_bin_index`,
:func:`term_shares`), and thin stateful classes keep what a stream needs in constant memory, with
``update()`` and then read. Every class round-trips exactly through ``state_dict()`` (plain,
JSON-serialisable values; NaN allowed) so the daemon can store it atomically with its cursor, and
every class rewinds cleanly when a resumed job repeats steps: history at or after the repeated
step is dropped and run-length rules start over, so the jump back is never taken for a spike.
Counters and the list of recent spike events are a log of what was seen and are never rewound.

No torch and no I/O here: the per-image maths lives in :mod:`texwatch.spectral`.

Example:
    >>> monitor = LossMonitor(window=8, sigma=6.0)
    >>> for step in range(8):
    ...     _ = monitor.update(step, 1.0 + 0.01 * (step % 3))
    >>> monitor.update(8, 5.0).rule
    'sigma'
    >>> monitor.counts["sigma"]
    1
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = [
    "EMA",
    "MAX_TERMS",
    "SIGMA",
    "SPIKE_RULES",
    "STATISTICS",
    "WARN_SIGMA",
    "DriftRule",
    "HardMaxRule",
    "LossMonitor",
    "LogSpikeDetector",
    "LossUpdate",
    "RobustSpikeDetector",
    "RollingSpikeDetector",
    "SpikeEvent",
    "SpikeVerdict",
    "StreamHealth",
    "StreamHealthUpdate",
    "SustainedRule",
    "TermMonitor",
    "TermUpdate",
    "TimestepNormalizer",
    "alpha_from_half_life",
    "log_zscore",
    "robust_zscore",
    "term_shares",
    "timestep_bin_index",
    "zscore",
]

#: The ``rule`` label values of ``texwatch_loss_spikes_total``, most severe first.
SPIKE_RULES: tuple[str, ...] = ("nonfinite", "hard_max", "sigma", "sustained", "drift")
SIGMA = 6.0
"""Default σ alarm level of the loss monitor's σ rule."""
WARN_SIGMA = 5.0
"""Default σ warning level."""
STATISTICS: tuple[str, ...] = ("log", "robust", "gaussian")
"""What :class:`LossMonitor`'s σ rule judges: see its ``statistic`` argument."""
MAX_TERMS = 256
"""Distinct loss terms a run may have: TermMonitor's default, enforced by the client's record()."""

_STATE_VERSION = 3  # 3: the spike detectors keep each value's spread factor and a reach EMA
# MAD of a normal sample times this is its standard deviation.
_MAD_TO_SIGMA = 1.4826
# The log σ rule's spread: the window's reach (its 98 % quantile less its median), averaged over
# windows with this half-life in steps, counts as _REACH_SIGMAS σ. Normal noise reaches 2.05 σ;
# 2.22 puts 6σ at 2.7 reaches, the least that keeps every configuration of
# benchmarks/detector_quality.py within one false alarm per 100k steps.
_REACH_Q = 0.98
_REACH_HALF_LIFE = 1000.0
_REACH_SIGMAS = 2.22
# A flat history has no spread: keep a floor so a z-score stays finite (relative, then absolute).
_REL_SCALE_FLOOR = 1e-6
_ABS_SCALE_FLOOR = 1e-12
# The drift rule's defaults, shared by DriftRule and LossMonitor: baseline half-life, CUSUM limit.
_DRIFT_HALF_LIFE = 2000.0
_DRIFT_LIMIT = 20.0
# After the drift rule fires, its baseline follows the fast EMA for this many fast half-lives.
_DRIFT_HOLD = 5.0
# Mean absolute deviation of normal noise times this is its standard deviation (√(π/2)).
_DRIFT_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
# DDPM-style discrete schedulers sample integer timesteps in [0, 1000).
_DISCRETE_T_MAX = 1000.0

_S = TypeVar("_S", bound="_Stateful")


# --------------------------------------------------------------------------------------------
# Argument checks (torchmetrics-style messages: what was expected, what came).


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"Expected argument `{name}` to be {what} but got {value!r}")
    return int(value)


def _check_float(
    name: str, value: Any, *, low: float = 0.0, high: float = math.inf, high_ok: bool = False
) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        x = float(value)
        ok = x > low and (x <= high if high_ok else x < high)
    if not ok:
        if math.isinf(high):
            what = "a positive finite float" if low == 0.0 else f"a finite float > {low}"
        else:
            what = f"a float in ({low}, {high}{']' if high_ok else ')'}"
        raise ValueError(f"Expected argument `{name}` to be {what} but got {value!r}")
    return float(value)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
        raise TypeError(f"Expected argument `step` to be a non-negative int but got {step!r}")
    return int(step)


def _check_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Expected argument `{name}` to be a real number but got {value!r}")
    return float(value)


def _as_vector(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected argument `{name}` to be a 1-D sequence of numbers but got {value!r}"
        ) from err
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty 1-D sequence but got shape {arr.shape}"
        )
    return arr.reshape(-1)  # (B,)


def _alpha(
    alpha: float | None,
    half_life: float | None,
    default: float,
    names: tuple[str, str] = ("alpha", "half_life"),
) -> float:
    if alpha is not None and half_life is not None:
        raise ValueError(
            f"Expected at most one of arguments `{names[0]}` and `{names[1]}` but got both "
            f"({alpha!r}, {half_life!r})"
        )
    if half_life is not None:
        return 1.0 - 0.5 ** (1.0 / _check_float(names[1], half_life))
    if alpha is None:
        return default
    return _check_float(names[0], alpha, high=1.0, high_ok=True)


# --------------------------------------------------------------------------------------------
# Pure maths.


def alpha_from_half_life(half_life: float) -> float:
    """Return the EMA smoothing factor whose weights halve every ``half_life`` updates.

    Example:
        >>> round(alpha_from_half_life(1.0), 3)
        0.5
    """
    h = _check_float("half_life", half_life)
    return 1.0 - 0.5 ** (1.0 / h)


def _floored(scale: float, center: float) -> float:
    return max(scale, _REL_SCALE_FLOOR * abs(center), _ABS_SCALE_FLOOR)


def _mean_std(history: np.ndarray) -> tuple[float, float]:
    mean = float(history.mean())
    return mean, _floored(float(history.std()), mean)


def _median(values: np.ndarray) -> float:
    """np.median of finite values without its NaN checks (the detectors' hot path)."""
    k = values.size // 2
    if values.size % 2:
        return float(np.partition(values, k)[k])
    lower, upper = np.partition(values, (k - 1, k))[k - 1 : k + 1]
    return 0.5 * (float(lower) + float(upper))


def _median_mad(history: np.ndarray) -> tuple[float, float]:
    median = _median(history)
    mad = _median(np.abs(history - median))
    return median, _floored(_MAD_TO_SIGMA * mad, median)


def _quantile(values: np.ndarray, q: float) -> float:
    """np.quantile's linear interpolation without its checks (the detectors' hot path)."""
    pos = q * (values.size - 1)
    k = min(int(pos), values.size - 2)
    lower, upper = np.partition(values, (k, k + 1))[k : k + 2]
    return float(lower) + (pos - k) * (float(upper) - float(lower))


def zscore(value: float, history: np.ndarray) -> float:
    """Return how many standard deviations ``value`` lies above the mean of ``history``.

    A flat history gets a tiny floor on its spread, so the result stays finite. Signed: negative
    below the mean.

    Example:
        >>> zscore(4.0, np.array([1.0, 2.0, 3.0]))  # doctest: +ELLIPSIS
        2.449...
    """
    mean, scale = _mean_std(np.asarray(history, dtype=np.float64))  # (N,)
    return (float(value) - mean) / scale


def robust_zscore(value: float, history: np.ndarray) -> float:
    """Return ``value``'s distance above the median of ``history`` in MAD-estimated σ.

    The median and the median absolute deviation (× 1.4826, σ for normal data) ignore the few
    outliers that inflate a plain standard deviation.

    Example:
        >>> round(robust_zscore(10.0, np.array([1.0, 2.0, 3.0, 100.0])), 3)
        5.059
    """
    median, scale = _median_mad(np.asarray(history, dtype=np.float64))  # (N,)
    return (float(value) - median) / scale


def log_zscore(value: float, history: np.ndarray) -> float:
    """Return :func:`robust_zscore` of ``log(value)`` against the logs of ``history``.

    Training losses are positive and right-skewed (a lognormal- or Gamma-like spread): on the log
    scale their spread is near-symmetric and a ×k jump is the same distance at any level. NaN
    when ``value`` or any of ``history`` is not > 0.

    Example:
        >>> round(log_zscore(10.0, np.array([1.0, 2.0, 4.0])), 3)
        1.566
    """
    h = np.asarray(history, dtype=np.float64)  # (N,)
    if not value > 0.0 or not bool(np.all(h > 0.0)):
        return math.nan
    return robust_zscore(math.log(value), np.log(h))


def timestep_bin_index(
    timesteps: np.ndarray, bins: int, t_range: tuple[float, float]
) -> np.ndarray:
    """Return the bin of each timestep: ``bins`` equal bins over ``t_range``, ends clipped.

    Example:
        >>> timestep_bin_index(np.array([0.0, 499.0, 999.0, 2000.0]), 10, (0.0, 1000.0)).tolist()
        [0, 4, 9, 9]
    """
    lo, hi = t_range
    t = np.asarray(timesteps, dtype=np.float64)
    idx = np.floor((t - lo) * (bins / (hi - lo)))
    return np.fmin(np.fmax(idx, 0.0), bins - 1).astype(np.int64)  # fmax sends NaN to bin 0


def term_shares(contributions: Mapping[str, float]) -> dict[str, float]:
    """Return each term's share of the weighted total, ``|w·v| / Σ|w·v|``.

    Absolute values keep shares in [0, 1] when a term is negative (a GAN generator loss); a term
    whose contribution is NaN (absent) gets NaN, and every share is NaN when the total is zero.

    Example:
        >>> term_shares({"v": 3.0, "lpips": -1.0, "edge": 0.0})
        {'v': 0.75, 'lpips': 0.25, 'edge': 0.0}
    """
    present = {k: abs(c) for k, c in contributions.items() if math.isfinite(c)}
    total = math.fsum(present.values())
    return {
        k: (present[k] / total if k in present and total > 0.0 else math.nan) for k in contributions
    }


def _infer_t_range(t: np.ndarray) -> tuple[float, float] | None:
    """Guess the sampler's timestep range from one batch; None while the batch cannot tell."""
    finite = t[np.isfinite(t)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    integral = bool(np.all(finite == np.round(finite)))
    if lo < 0.0 or hi > _DISCRETE_T_MAX:
        raise ValueError(
            f"Cannot infer the timestep range from timesteps in [{lo}, {hi}]: expected values "
            f"in [0, 1] or [0, 1000]; pass argument `t_range` explicitly"
        )
    if hi > 1.0:
        return (0.0, _DISCRETE_T_MAX)
    if not integral:
        return (0.0, 1.0)
    return None  # only 0s and 1s so far: continuous [0, 1] or discrete [0, 1000] alike


# --------------------------------------------------------------------------------------------
# State plumbing.


def _header(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "version": _STATE_VERSION, "config": config}


def _open_state(
    state: Mapping[str, Any], kind: str, config: dict[str, Any], structural: tuple[str, ...]
) -> Mapping[str, Any]:
    """Check a state dict's kind, version and shape-defining config before it is loaded."""
    if not isinstance(state, Mapping) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"Expected a `{kind}` state_dict but got one of kind {got!r}")
    if state.get("version") != _STATE_VERSION:
        raise ValueError(
            f"Expected a `{kind}` state_dict of version {_STATE_VERSION} "
            f"but got version {state.get('version')!r}"
        )
    saved = state.get("config")
    if not isinstance(saved, Mapping):
        raise ValueError(f"Expected a `{kind}` state_dict with a `config` mapping")
    for key in structural:
        if _canon(saved.get(key)) != _canon(config[key]):
            raise ValueError(
                f"Expected a `{kind}` state_dict with {key}={config[key]!r} but got "
                f"{saved.get(key)!r}; build the detector with `{kind}.from_state_dict(state)`"
            )
    return state


def _canon(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _corrupt(kind: str, err: Exception) -> ValueError:
    return ValueError(f"Expected a complete `{kind}` state_dict but loading it failed: {err!r}")


class _Ring:
    """Fixed-capacity ring of (step, values) rows, oldest overwritten; steps strictly increase."""

    __slots__ = ("_count", "_head", "_steps", "_values", "capacity", "width")

    def __init__(self, capacity: int, width: int = 1) -> None:
        self.capacity = capacity
        self.width = width
        self._steps = np.full(capacity, -1, dtype=np.int64)  # (N,)
        self._values = np.zeros((capacity, width), dtype=np.float64)  # (N, K)
        self._head = 0  # next slot to write
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count == self.capacity

    def push(self, step: int, *values: float) -> None:
        self._steps[self._head] = step
        self._values[self._head] = values
        self._head = (self._head + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def rewind(self, step: int) -> np.ndarray | None:
        """Drop the rows at or after ``step``; return the oldest dropped row's values, if any."""
        oldest: np.ndarray | None = None
        while self._count:
            last = (self._head - 1) % self.capacity
            if self._steps[last] < step:
                break
            oldest = self._values[last].copy()
            self._head = last
            self._count -= 1
        return oldest

    def column(self, k: int = 0) -> np.ndarray:
        """The live values of column ``k`` (order fixed by the stored slots, so reproducible)."""
        if self.full:
            return self._values[:, k]
        start = (self._head - self._count) % self.capacity
        idx = (start + np.arange(self._count)) % self.capacity
        return self._values[idx, k]

    def clear(self) -> None:
        self._head = 0
        self._count = 0

    def state(self) -> dict[str, Any]:
        return {
            "steps": self._steps.tolist(),
            "values": self._values.tolist(),
            "head": self._head,
            "count": self._count,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        steps = np.asarray(state["steps"], dtype=np.int64)
        values = np.asarray(state["values"], dtype=np.float64)
        head, count = int(state["head"]), int(state["count"])
        if steps.shape != (self.capacity,) or values.shape != (self.capacity, self.width):
            raise ValueError(
                f"ring of shape {values.shape}, expected ({self.capacity}, {self.width})"
            )
        if not (0 <= head < self.capacity and 0 <= count <= self.capacity):
            raise ValueError(f"ring head {head} / count {count} out of range")
        self._steps, self._values, self._head, self._count = steps, values, head, count


class _Stateful(ABC):
    """What every detector shares: its config, a state round trip, ``from_state_dict``."""

    _KIND: ClassVar[str]
    _STRUCTURAL: ClassVar[tuple[str, ...]]  # config keys that shape the state

    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this detector."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The state beyond the config, as plain JSON-serialisable values."""

    @abstractmethod
    def _load(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`_state` saved; KeyError, TypeError or ValueError mean corrupt."""

    def state_dict(self) -> dict[str, Any]:
        """Return the full state as plain JSON-serialisable values."""
        out = _header(self._KIND, self._config())
        out.update(self._state())
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        The arguments that shape the state (windows, bins) must match this instance's; the
        others (thresholds, factors, a configured ``t_range``) stay this instance's.
        """
        _open_state(state, self._KIND, self._config(), self._STRUCTURAL)
        try:
            self._load(state)
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(self._KIND, err) from err

    @classmethod
    def from_state_dict(cls: type[_S], state: Mapping[str, Any]) -> _S:
        """Build a detector with the saved configuration and state."""
        if not isinstance(state, Mapping) or not isinstance(state.get("config"), Mapping):
            raise ValueError(f"Expected a `{cls._KIND}` state_dict with a `config` mapping")
        config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["config"].items()}
        obj = cls(**config)
        obj.load_state_dict(state)
        return obj


class _Series(_Stateful):
    """A detector fed one step at a time; a step at or before the last one rewinds it first.

    A resumed job repeats the steps after its checkpoint: each :meth:`update` goes through
    :meth:`_step_to`, so the detector forgets what it saw from that step on before judging it.
    """

    _last_step: int

    @abstractmethod
    def rewind(self, step: int) -> None:
        """Forget what was seen at or after ``step``."""

    def _step_to(self, step: int) -> None:
        """Make the checked ``step`` the last one, rewinding first if it is not past it."""
        if step <= self._last_step:
            self.rewind(step)
        self._last_step = step


# --------------------------------------------------------------------------------------------
# EMA.


class EMA(_Series):
    """Exponential moving average of a series, skipping non-finite values, rewindable.

    Args:
        alpha: weight of each new value, in (0, 1]; default 0.01.
        half_life: alternative to ``alpha``: updates after which a value's weight halves.
        history: how many past steps a rewind can reach exactly; a rewind further back restores
            the oldest average still held.

    Example:
        >>> ema = EMA(alpha=0.5)
        >>> ema.update(0, 1.0), ema.update(1, 3.0)
        (1.0, 2.0)
        >>> ema.update(1, 5.0)  # step 1 again: a resumed job replays it
        3.0
    """

    _KIND = "EMA"
    _STRUCTURAL = ("history",)

    def __init__(
        self, alpha: float | None = None, *, half_life: float | None = None, history: int = 128
    ) -> None:
        self.alpha = _alpha(alpha, half_life, 0.01)
        self.history = _check_int("history", history)
        self._ring = _Ring(self.history)  # (step, average before that step)
        self._value = math.nan
        self._last_step = -1

    @property
    def value(self) -> float:
        """The current average (NaN until a finite value arrives)."""
        return self._value

    def update(self, step: int, value: float) -> float:
        """Fold ``value`` at ``step`` in (a non-finite value is skipped) and return the average."""
        step = _check_step(step)
        x = _check_value("value", value)
        self._step_to(step)
        if math.isfinite(x):
            self._ring.push(step, self._value)
            old = self._value
            self._value = x if math.isnan(old) else old + self.alpha * (x - old)
        return self._value

    def rewind(self, step: int) -> None:
        """Forget the values at or after ``step``."""
        step = _check_step(step)
        before = self._ring.rewind(step)  # the average before the oldest dropped step
        if before is not None:
            self._value = float(before[0])
        self._last_step = step - 1

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "history": self.history}

    def _state(self) -> dict[str, Any]:
        return dict(ring=self._ring.state(), value=self._value, last_step=self._last_step)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._ring.load(state["ring"])
        self._value = float(state["value"])
        self._last_step = int(state["last_step"])


# --------------------------------------------------------------------------------------------
# Rolling spike detectors.


@dataclass(frozen=True)
class SpikeVerdict:
    """What a spike detector said about one value.

    ``zscore`` is NaN until the window is full or when the value is not finite; ``warning`` means
    ``warn_sigma <= zscore < sigma``, ``alarm`` means ``zscore >= sigma`` (one-sided: drops never
    alarm).
    """

    step: int
    value: float
    zscore: float
    alarm: bool
    warning: bool


class _WindowSpikeDetector(_Series):
    """One-sided spike detection against the last ``window`` unflagged values.

    A subclass says on which scale values are judged (:meth:`transform`, what the history
    holds) and which centre and spread of the history a z-score is measured from. Each value may
    come with a spread factor, how noisy it is relative to the others (a batch dominated by one
    item is noisier than a balanced one): the history's deviations are divided by their factors
    before the spread is measured, and a value's z-score by its own.
    """

    _STRUCTURAL = ("window",)

    def __init__(self, window: int = 128, sigma: float = 6.0, warn_sigma: float = 4.0) -> None:
        self.window = _check_int("window", window, minimum=2)
        self.sigma = _check_float("sigma", sigma)
        self.warn_sigma = _check_float("warn_sigma", warn_sigma)
        self._ring = _Ring(self.window, width=2)  # (value on the judged scale, spread factor)
        self._last_step = -1
        self._last: SpikeVerdict | None = None

    @abstractmethod
    def _center_scale(self, history: np.ndarray, factors: np.ndarray) -> tuple[float, float]:
        """The centre of ``history`` and the (floored) spread of its deviations over ``factors``."""

    def _pushed(self) -> None:
        """Called after a value joined the history (a subclass's calibration follows it)."""

    def transform(self, value: float) -> float:
        """The scale values are judged and kept on (NaN: neither judged nor kept)."""
        return value if math.isfinite(value) else math.nan

    @property
    def ready(self) -> bool:
        """True once ``window`` values are held: nothing is flagged before."""
        return self._ring.full

    @property
    def last(self) -> SpikeVerdict | None:
        """The verdict of the latest update."""
        return self._last

    def __len__(self) -> int:
        return len(self._ring)

    def score(self, value: float, spread: float = 1.0) -> float:
        """The z-score ``value`` would get now (NaN before the window is full); changes nothing."""
        x = self.transform(_check_value("value", value))
        spread = _check_float("spread", spread)
        if not self._ring.full or math.isnan(x):
            return math.nan
        center, scale = self._center_scale(self._ring.column(0), self._ring.column(1))
        return (x - center) / (spread * scale)

    def update(
        self, step: int, value: float, *, spread: float = 1.0, exclude: bool = False
    ) -> SpikeVerdict:
        """Score ``value`` at ``step``, then keep it in the history unless it alarmed.

        Args:
            step: the training step; a step not after the last one rewinds first.
            value: the new value; a non-finite one is scored NaN and not kept.
            spread: the value's spread factor (> 0; 1 when all values are alike).
            exclude: keep the value out of the history anyway (another rule flagged it).
        """
        step = _check_step(step)
        self._step_to(step)
        z = self.score(value, spread)
        alarm = z >= self.sigma
        verdict = SpikeVerdict(step, float(value), z, alarm, not alarm and z >= self.warn_sigma)
        kept = self.transform(verdict.value)
        if not (math.isnan(kept) or alarm or exclude):
            self._ring.push(step, kept, spread)
            self._pushed()
        self._last = verdict
        return verdict

    def rewind(self, step: int) -> None:
        """Drop the history at or after ``step``."""
        step = _check_step(step)
        self._ring.rewind(step)
        self._last_step = step - 1

    def clear(self) -> None:
        """Empty the history (the series changed meaning)."""
        self._ring.clear()

    def _config(self) -> dict[str, Any]:
        return {"window": self.window, "sigma": self.sigma, "warn_sigma": self.warn_sigma}

    def _state(self) -> dict[str, Any]:
        return dict(ring=self._ring.state(), last_step=self._last_step)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._ring.load(state["ring"])
        self._last_step = int(state["last_step"])
        self._last = None


class RollingSpikeDetector(_WindowSpikeDetector):
    """Alarm when a value exceeds the rolling mean by ``sigma`` rolling standard deviations.

    Args:
        window: how many past unflagged values make the reference (default 128).
        sigma: alarm level in σ (default 6, OLMo-core's; 3 works too).
        warn_sigma: warning level in σ (default 4); a warning is a value in [warn_sigma, sigma).

    Example:
        >>> det = RollingSpikeDetector(window=4, sigma=3.0)
        >>> [det.update(s, v).alarm for s, v in enumerate([1.0, 1.1, 0.9, 1.0, 9.0])]
        [False, False, False, False, True]
    """

    _KIND = "RollingSpikeDetector"

    def _center_scale(self, history: np.ndarray, factors: np.ndarray) -> tuple[float, float]:
        mean = float(history.mean())
        return mean, _floored(float(np.sqrt(np.mean(((history - mean) / factors) ** 2))), mean)


class RobustSpikeDetector(_WindowSpikeDetector):
    """Like :class:`RollingSpikeDetector` but against the rolling median and MAD-estimated σ.

    Example:
        >>> det = RobustSpikeDetector(window=4, sigma=6.0)
        >>> [det.update(s, v).alarm for s, v in enumerate([1.0, 1.1, 0.9, 1.0, 9.0])]
        [False, False, False, False, True]
    """

    _KIND = "RobustSpikeDetector"

    def _center_scale(self, history: np.ndarray, factors: np.ndarray) -> tuple[float, float]:
        median = _median(history)
        mad = _median(np.abs(history - median) / factors)
        return median, _floored(_MAD_TO_SIGMA * mad, median)


class LogSpikeDetector(_WindowSpikeDetector):
    """Spikes of the log of the values above their rolling median, in σ read off the upper tail.

    The spread is the window's reach, its 98 % quantile less its median, averaged over windows
    (an EMA with a half-life of 1,000 steps) and counted as 2.22 σ (normal noise reaches 2.05 σ).
    A loss's log is not symmetric: the batch loss of a timestep mix is bounded above and has a
    long lower tail, so a MAD-based σ sits far above its clean maximum; the reach measures the
    side spikes come from, and its average keeps the threshold as steady as a long window. The
    reach average is a calibration: a rewind keeps it, :meth:`clear` restarts it. Values not
    > 0 are scored NaN and kept out of the history.

    Example:
        >>> det = LogSpikeDetector(window=4, sigma=6.0)
        >>> [det.update(s, v).alarm for s, v in enumerate([1.0, 1.1, 0.9, 1.0, 9.0])]
        [False, False, False, False, True]
    """

    _KIND = "LogSpikeDetector"

    def __init__(self, window: int = 128, sigma: float = 6.0, warn_sigma: float = 4.0) -> None:
        super().__init__(window, sigma, warn_sigma)
        self._alpha = alpha_from_half_life(_REACH_HALF_LIFE)
        self._reach = [0.0, 0.0]  # bias-corrected EMA of the window's reach: sum, weight
        self._median: float | None = None  # the window's median, kept from _pushed() till it moves

    @property
    def reach(self) -> float:
        """The averaged reach of the window's logs, per unit spread factor (NaN before any)."""
        acc, weight = self._reach
        return acc / weight if weight > 0.0 else math.nan

    def transform(self, value: float) -> float:
        return math.log(value) if math.isfinite(value) and value > 0.0 else math.nan

    def _center_scale(self, history: np.ndarray, factors: np.ndarray) -> tuple[float, float]:
        if self._median is None:
            self._median = _median(history)  # the history holds logs
        median = self._median
        return median, _floored(self.reach / _REACH_SIGMAS, median)

    def _pushed(self) -> None:
        self._median = None
        if not self._ring.full:
            return
        history = self._ring.column(0)
        self._median = _median(history)
        reach = _quantile((history - self._median) / self._ring.column(1), _REACH_Q)
        acc, weight = self._reach
        self._reach = [
            (1.0 - self._alpha) * acc + self._alpha * reach,
            (1.0 - self._alpha) * weight + self._alpha,
        ]

    def rewind(self, step: int) -> None:
        """Drop the history at or after ``step``; the reach average is kept."""
        super().rewind(step)
        self._median = None

    def clear(self) -> None:
        """Empty the history and restart the reach average (the series changed meaning)."""
        super().clear()
        self._reach = [0.0, 0.0]
        self._median = None

    def _state(self) -> dict[str, Any]:
        return dict(super()._state(), reach=list(self._reach))

    def _load(self, state: Mapping[str, Any]) -> None:
        reach = [float(v) for v in state["reach"]]
        if len(reach) != 2:
            raise ValueError(f"reach of length {len(reach)}, expected 2")
        super()._load(state)
        self._reach = reach
        self._median = None


# --------------------------------------------------------------------------------------------
# Hard rules.


class HardMaxRule(_Series):
    """Megatron's rule: flag a value ≥ ``factor`` × the maximum of the first ``first`` values.

    Non-finite and excluded values are not collected; nothing fires until ``first`` values are
    held, nor while that maximum is not positive (the rule is meant for positive losses).

    Example:
        >>> rule = HardMaxRule(first=3, factor=10.0)
        >>> [rule.update(s, v) for s, v in enumerate([1.0, 2.0, 1.5, 19.0, 20.0])]
        [False, False, False, False, True]
    """

    _KIND = "HardMaxRule"
    _STRUCTURAL = ("first",)

    def __init__(self, first: int = 100, factor: float = 10.0) -> None:
        self.first = _check_int("first", first)
        self.factor = _check_float("factor", factor)
        self._ring = _Ring(self.first)  # filled once, never overwritten
        self._last_step = -1

    @property
    def reference(self) -> float:
        """The maximum of the first values (NaN until they are all held)."""
        return float(self._ring.column().max()) if self._ring.full else math.nan

    def update(self, step: int, value: float, *, exclude: bool = False) -> bool:
        """Check ``value`` at ``step``; return True when it fires."""
        step = _check_step(step)
        x = _check_value("value", value)
        self._step_to(step)
        if not math.isfinite(x):
            return False
        if not self._ring.full:
            if not exclude:
                self._ring.push(step, x)
            return False
        ref = self.reference
        return ref > 0.0 and x >= self.factor * ref

    def rewind(self, step: int) -> None:
        """Forget collected values at or after ``step``."""
        step = _check_step(step)
        self._ring.rewind(step)
        self._last_step = step - 1

    def _config(self) -> dict[str, Any]:
        return {"first": self.first, "factor": self.factor}

    def _state(self) -> dict[str, Any]:
        return dict(ring=self._ring.state(), last_step=self._last_step)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._ring.load(state["ring"])
        self._last_step = int(state["last_step"])


class SustainedRule(_Series):
    """llm-foundry's rule: fire when ``steps`` values in a row are ≥ ``factor`` × the running mean.

    The running mean is over the last ``window`` values, high ones included as llm-foundry does
    (leaving them out would bias a skewed series' mean low and feed on itself); only the value it
    fires on, and values another rule flagged, stay out. It fires once, on the step the run
    reaches ``steps``, and re-arms when a value falls back; a non-finite value breaks the run.

    Example:
        >>> rule = SustainedRule(window=4, factor=2.0, steps=2)
        >>> [rule.update(s, v) for s, v in enumerate([1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0])]
        [False, False, False, False, False, True, False]
    """

    _KIND = "SustainedRule"
    _STRUCTURAL = ("window",)

    def __init__(self, window: int = 128, factor: float = 2.0, steps: int = 5) -> None:
        self.window = _check_int("window", window)
        self.factor = _check_float("factor", factor)
        self.steps = _check_int("steps", steps)
        self._ring = _Ring(self.window)
        self._run = 0
        self._last_step = -1

    @property
    def run(self) -> int:
        """How many values in a row have been high."""
        return self._run

    @property
    def mean(self) -> float:
        """The running mean the rule compares against (NaN until the window is full)."""
        return float(self._ring.column().mean()) if self._ring.full else math.nan

    def update(self, step: int, value: float, *, exclude: bool = False) -> bool:
        """Check ``value`` at ``step``; return True on the step the high run reaches ``steps``."""
        step = _check_step(step)
        x = _check_value("value", value)
        self._step_to(step)
        if not math.isfinite(x):
            self._run = 0
            return False
        mean = self.mean
        high = mean > 0.0 and x >= self.factor * mean
        self._run = self._run + 1 if high else 0
        fired = self._run == self.steps
        if not (exclude or fired):
            self._ring.push(step, x)
        return fired

    def rewind(self, step: int) -> None:
        """Drop the history at or after ``step`` and restart the run count."""
        step = _check_step(step)
        self._ring.rewind(step)
        self._run = 0
        self._last_step = step - 1

    def clear(self) -> None:
        """Empty the history (the series changed meaning)."""
        self._ring.clear()
        self._run = 0

    def _config(self) -> dict[str, Any]:
        return {"window": self.window, "factor": self.factor, "steps": self.steps}

    def _state(self) -> dict[str, Any]:
        return dict(ring=self._ring.state(), run=self._run, last_step=self._last_step)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._ring.load(state["ring"])
        self._run = int(state["run"])
        self._last_step = int(state["last_step"])


class DriftRule(_Series):
    """Page's CUSUM against a slow baseline: divergence and sustained level shifts.

    Each value (the log of the raw loss by default: it only falls while training goes well) less
    the baseline, an EMA of the unflagged values with a half-life of ``half_life`` steps, is
    divided by the values' spread and clipped to ±``clip`` (one spike cannot trip it; spikes are
    the σ rule's) and feeds ``S = max(0, S + r − slack)``. The spread is 1.25 × an EMA (half-life
    ``spread_half_life``) of each value's distance from a fast EMA (half-life ``fast_half_life``),
    the standard deviation for normal noise. The rule fires when ``S`` reaches ``limit``; then the
    baseline follows the fast EMA for five of its half-lives while nothing is judged, and ``S``
    restarts: a level shift fires once, a divergence again each time it grows past the new
    baseline. A falling loss keeps ``S`` at 0. Nothing is judged until ``warmup`` values are
    folded in. A rewind restarts ``S``; the baselines are kept (slow calibrations, like the
    timestep bins).

    Example:
        >>> rule = DriftRule(half_life=100.0, limit=5.0, warmup=20)
        >>> noise = [0.1 * (-1) ** s for s in range(200)]
        >>> [s for s in range(200) if rule.update(s, noise[s] + (0.0 if s < 100 else 1.0))]
        [101]
    """

    _KIND = "DriftRule"
    _STRUCTURAL = ()

    def __init__(
        self,
        half_life: float = _DRIFT_HALF_LIFE,
        slack: float = 0.25,
        limit: float = _DRIFT_LIMIT,
        clip: float = 3.0,
        fast_half_life: float = 20.0,
        spread_half_life: float = 200.0,
        warmup: int = 128,
    ) -> None:
        self.half_life = _check_float("half_life", half_life)
        self.slack = _check_float("slack", slack)
        self.limit = _check_float("limit", limit)
        self.clip = _check_float("clip", clip)
        self.fast_half_life = _check_float("fast_half_life", fast_half_life)
        self.spread_half_life = _check_float("spread_half_life", spread_half_life)
        self.warmup = _check_int("warmup", warmup)
        self._alphas = tuple(
            alpha_from_half_life(h)
            for h in (self.half_life, self.fast_half_life, self.spread_half_life)
        )
        # bias-corrected EMAs: slow baseline, fast level, mean distance from the fast level
        self._acc = [0.0, 0.0, 0.0]
        self._weight = [0.0, 0.0, 0.0]
        self._cusum = 0.0
        self._seen = 0
        self._hold = 0  # steps left while the baseline settles after firing
        self._last_step = -1

    def _mean(self, i: int) -> float:
        return self._acc[i] / self._weight[i] if self._weight[i] > 0.0 else math.nan

    @property
    def baseline(self) -> float:
        """The slow baseline (NaN before any value)."""
        return self._mean(0)

    @property
    def spread(self) -> float:
        """The values' spread around their fast level (NaN before two values)."""
        return _DRIFT_MAD_TO_SIGMA * self._mean(2) if self._seen > 1 else math.nan

    @property
    def cusum(self) -> float:
        """The current CUSUM statistic, in units of the spread."""
        return self._cusum

    def _fold(self, i: int, x: float) -> None:
        a = self._alphas[i]
        self._acc[i] = (1.0 - a) * self._acc[i] + a * x
        self._weight[i] = (1.0 - a) * self._weight[i] + a

    def update(self, step: int, value: float, *, exclude: bool = False) -> bool:
        """Judge ``value`` at ``step``; return True when the rule fires."""
        step = _check_step(step)
        x = _check_value("value", value)
        self._step_to(step)
        if not math.isfinite(x) or exclude:
            return False
        fired = False
        spread = self.spread
        if self._seen >= self.warmup and self._hold == 0 and spread > 0.0:
            r = min(max((x - self.baseline) / spread, -self.clip), self.clip)
            self._cusum = max(0.0, self._cusum + r - self.slack)
            fired = self._cusum >= self.limit
        if self._seen:
            self._fold(2, abs(x - self._mean(1)))
        self._fold(0, x)
        self._fold(1, x)
        self._seen += 1
        if fired:
            self._cusum = 0.0
            self._hold = math.ceil(_DRIFT_HOLD * self.fast_half_life)
        if self._hold > 0:  # the baseline follows the recent level until it has settled
            self._hold -= 1
            self._acc[0] = self._weight[0] * self._mean(1)
        return fired

    def rewind(self, step: int) -> None:
        """Restart the CUSUM (a resumed job repeats steps); the baselines are kept."""
        step = _check_step(step)
        self._cusum = 0.0
        self._last_step = step - 1

    def clear(self) -> None:
        """Forget the baselines (the series changed meaning)."""
        self._acc, self._weight = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self._cusum = 0.0
        self._seen = self._hold = 0

    def _config(self) -> dict[str, Any]:
        return {
            "half_life": self.half_life,
            "slack": self.slack,
            "limit": self.limit,
            "clip": self.clip,
            "fast_half_life": self.fast_half_life,
            "spread_half_life": self.spread_half_life,
            "warmup": self.warmup,
        }

    def _state(self) -> dict[str, Any]:
        return dict(
            acc=list(self._acc),
            weight=list(self._weight),
            cusum=self._cusum,
            seen=self._seen,
            hold=self._hold,
            last_step=self._last_step,
        )

    def _load(self, state: Mapping[str, Any]) -> None:
        acc = [float(v) for v in state["acc"]]
        weight = [float(v) for v in state["weight"]]
        if len(acc) != 3 or len(weight) != 3:
            raise ValueError(f"EMA lists of length {len(acc)}, expected 3")
        self._acc, self._weight = acc, weight
        self._cusum = float(state["cusum"])
        self._seen = int(state["seen"])
        self._hold = int(state["hold"])
        self._last_step = int(state["last_step"])


# --------------------------------------------------------------------------------------------
# Timestep normalisation.


class TimestepNormalizer(_Stateful):
    """Running mean loss per diffusion-timestep bin, to divide each loss by its bin's scale.

    A diffusion loss's scale depends mostly on the sampled timestep; dividing each item's loss by
    the running mean of its timestep bin leaves a series whose spread is the training's own.
    Each bin keeps a bias-corrected EMA (constant memory); a bin not seen yet borrows the mean over
    all items. When only the batch loss is known, it is shared out to the items in proportion to
    their bins' current means before the bins are updated (exact for one item per batch); the
    normalised batch loss is then a mean of the items' noise weighted by those means, whose spread
    grows with √(Σm²)/Σm (1/√B for a balanced batch, near 1 when one item dominates): the loss
    monitor scales each step's deviation by it.

    Args:
        bins: number of equal-width timestep bins.
        t_range: ``(low, high)`` of the sampler's timesteps; by default inferred from the first
            batch that tells: values above 1 mean ``(0, 1000)``, fractional values in [0, 1] mean
            ``(0, 1)``. Values outside the range fall into the end bins.
        half_life: items after which an item's weight in its bin's mean halves.

    Example:
        >>> norm = TimestepNormalizer(bins=2, t_range=(0.0, 1.0))
        >>> norm.update([0.1, 0.9], item_losses=[1.0, 10.0])
        >>> norm.normalise([0.1, 0.9], item_losses=[2.0, 10.0])
        1.5
    """

    _KIND = "TimestepNormalizer"
    _STRUCTURAL = ("bins",)

    def __init__(
        self, bins: int = 20, t_range: tuple[float, float] | None = None, half_life: float = 100.0
    ) -> None:
        self.bins = _check_int("bins", bins)
        self.half_life = _check_float("half_life", half_life)
        self._alpha = alpha_from_half_life(self.half_life)
        self._configured_range = self._check_range(t_range)
        self.t_range = self._configured_range
        self._acc = np.zeros(self.bins + 1, dtype=np.float64)  # (K+1,) last slot: all items
        self._weight = np.zeros(self.bins + 1, dtype=np.float64)  # (K+1,) bias correction

    @staticmethod
    def _check_range(t_range: Any) -> tuple[float, float] | None:
        if t_range is None:
            return None
        try:
            lo, hi = (float(v) for v in t_range)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "Expected argument `t_range` to be a (low, high) pair of floats "
                f"but got {t_range!r}"
            ) from err
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"Expected argument `t_range` to be finite with low < high but got {t_range!r}"
            )
        return (lo, hi)

    @property
    def means(self) -> np.ndarray:
        """The running mean loss of each bin, NaN for a bin not seen yet."""
        w = self._weight[: self.bins]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(w > 0.0, self._acc[: self.bins] / w, np.nan)

    def _expected(self, t: np.ndarray) -> np.ndarray:
        """Each item's expected loss from its bin (or from all items); NaN when nothing is known."""
        if self.t_range is None or self._weight[-1] <= 0.0:
            return np.full(t.shape, np.nan)
        overall = self._acc[-1] / self._weight[-1]
        means = self.means  # (K,)
        means = np.where(np.isnan(means), overall, means)
        expected = means[timestep_bin_index(t, self.bins, self.t_range)]  # (B,)
        return np.where(np.isfinite(t), expected, np.nan)

    def _inputs(
        self, timesteps: Any, item_losses: Any, loss: Any
    ) -> tuple[np.ndarray, np.ndarray | None, float]:
        t = _as_vector("timesteps", timesteps)
        if (item_losses is None) == (loss is None):
            raise ValueError(
                "Expected exactly one of arguments `item_losses` and `loss` but got "
                f"{'both' if loss is not None else 'neither'}"
            )
        if item_losses is None:
            return t, None, _check_value("loss", loss)
        items = _as_vector("item_losses", item_losses)
        if items.shape != t.shape:
            raise ValueError(
                f"Expected argument `item_losses` to have one loss per timestep ({t.size}) "
                f"but got {items.size}"
            )
        return t, items, math.nan

    def normalise(
        self, timesteps: Any, *, item_losses: Any = None, loss: float | None = None
    ) -> float:
        """Return the batch's loss relative to its timesteps' running means; changes nothing.

        With ``item_losses``: the mean of each item's loss over its bin mean. With only the batch
        ``loss``: the loss over the mean of the items' bin means. NaN before anything is known.
        """
        return self._normalise(*self._inputs(timesteps, item_losses, loss))[0]

    def _normalise(
        self, t: np.ndarray, items: np.ndarray | None, batch_loss: float
    ) -> tuple[float, float]:
        """The normalised loss and its spread factor, √(Σw²)/Σw over the items' weights in it.

        The items weigh alike when their losses are known; with only the batch loss each weighs
        its bin's mean, so a batch that one small-t item dominates has the noise of one item.
        """
        expected = self._expected(t)  # (B,)
        with np.errstate(invalid="ignore", divide="ignore"):
            if items is not None:
                ratios = np.where(expected > 0.0, items / expected, np.nan)  # (B,)
                ok = np.isfinite(ratios)
                n = int(ok.sum())
                return (float(ratios[ok].mean()), 1.0 / math.sqrt(n)) if n else (math.nan, 1.0)
            w = expected[np.isfinite(expected)]  # (B',)
            total = float(w.sum()) if w.size else math.nan
            if not total > 0.0:
                return math.nan, 1.0
            return batch_loss / (total / w.size), math.sqrt(float(np.dot(w, w))) / total

    def update(self, timesteps: Any, *, item_losses: Any = None, loss: float | None = None) -> None:
        """Fold a batch into its bins' running means (non-finite items are skipped)."""
        self._fold(*self._inputs(timesteps, item_losses, loss))

    def _fold(self, t: np.ndarray, items: np.ndarray | None, batch_loss: float) -> None:
        if self.t_range is None:
            self.t_range = _infer_t_range(t)
            if self.t_range is None:
                return
        if items is None:
            expected = self._expected(t)  # (B,)
            ok = np.isfinite(expected) & (expected > 0.0)
            if ok.all():
                items = expected * (batch_loss / expected.mean())
            else:
                items = np.full(t.shape, batch_loss)
        ok = np.isfinite(t) & np.isfinite(items)
        if not ok.any():
            return
        idx = timestep_bin_index(t[ok], self.bins, self.t_range)  # (B',)
        n = np.bincount(idx, minlength=self.bins + 1).astype(np.float64)  # (K+1,)
        sums = np.bincount(idx, weights=items[ok], minlength=self.bins + 1)  # (K+1,)
        n[-1], sums[-1] = float(ok.sum()), float(items[ok].sum())
        keep = (1.0 - self._alpha) ** n  # (K+1,) weight left to the old mean
        with np.errstate(invalid="ignore", divide="ignore"):
            batch_mean = np.where(n > 0.0, sums / n, 0.0)
        self._acc = keep * self._acc + (1.0 - keep) * batch_mean
        self._weight = keep * self._weight + (1.0 - keep)

    def _config(self) -> dict[str, Any]:
        rng = None if self._configured_range is None else list(self._configured_range)
        return {"bins": self.bins, "t_range": rng, "half_life": self.half_life}

    def _state(self) -> dict[str, Any]:
        return dict(
            inferred_range=None if self.t_range is None else list(self.t_range),
            acc=self._acc.tolist(),
            weight=self._weight.tolist(),
        )

    def _load(self, state: Mapping[str, Any]) -> None:
        acc = np.asarray(state["acc"], dtype=np.float64)
        weight = np.asarray(state["weight"], dtype=np.float64)
        if acc.shape != (self.bins + 1,) or weight.shape != (self.bins + 1,):
            raise ValueError(f"bin arrays of shape {acc.shape}, expected ({self.bins + 1},)")
        saved = self._check_range(state["inferred_range"])
        self._acc, self._weight = acc, weight
        self.t_range = self._configured_range or saved


# --------------------------------------------------------------------------------------------
# The loss monitor.


@dataclass(frozen=True)
class SpikeEvent:
    """One flagged loss step: where, how high, which rule, and which samples were in the batch."""

    step: int
    value: float
    zscore: float
    rule: str
    rules: tuple[str, ...]
    sample_ids: tuple[int | str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "step": self.step,
            "value": self.value,
            "zscore": self.zscore,
            "rule": self.rule,
            "rules": list(self.rules),
            "sample_ids": None if self.sample_ids is None else list(self.sample_ids),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpikeEvent:
        """Inverse of :meth:`to_dict`."""
        ids = d["sample_ids"]
        return cls(
            int(d["step"]),
            float(d["value"]),
            float(d["zscore"]),
            str(d["rule"]),
            tuple(str(r) for r in d["rules"]),
            None if ids is None else tuple(ids),
        )


@dataclass(frozen=True)
class LossUpdate:
    """What :meth:`LossMonitor.update` found at one step.

    Attributes:
        step: the step.
        loss: the batch loss as given.
        ema: the loss EMA after this step.
        value: the value the σ and sustained rules judged: ``loss``, or the timestep-normalised
            loss when timesteps are known (NaN when that could not be formed yet).
        normalised: whether ``value`` is timestep-normalised.
        zscore: ``value``'s z-score against the rolling window (NaN before it is full).
        rule: the most severe rule that fired (order of :data:`SPIKE_RULES`), or None.
        rules: every rule that fired.
        warning: ``warn_sigma <= zscore < sigma`` and no rule fired.
        rewound: this step was not after the previous one, so the detectors rewound first.
    """

    step: int
    loss: float
    ema: float
    value: float
    normalised: bool
    zscore: float
    rule: str | None
    rules: tuple[str, ...] = ()
    warning: bool = False
    rewound: bool = False


def _sample_ids(ids: Any, limit: int) -> tuple[int | str, ...]:
    """The first ``limit`` sample ids as plain ints/strings (for a spike event)."""
    seq: Iterable[Any] = ids.reshape(-1).tolist() if isinstance(ids, np.ndarray) else ids
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable):
        seq = [seq]
    out: list[int | str] = []
    for x in seq:
        if len(out) == limit:
            break
        if isinstance(x, bytes):
            x = x.decode("utf-8", "replace")
        if isinstance(x, str):
            out.append(x)
        elif (isinstance(x, Integral) and not isinstance(x, bool)) or (
            isinstance(x, float) and x.is_integer()  # ids read back from a float column
        ):
            out.append(int(x))
        else:
            raise TypeError(f"Expected argument `sample_ids` to hold ints or strings but got {x!r}")
    return tuple(out)


class LossMonitor(_Stateful):
    """Every loss rule for one run: EMA, σ spikes, Megatron and llm-foundry rules, drift, NaN/Inf.

    Per step the rules are checked most severe first and each sees the earlier ones' verdict, so
    a step any rule flags is kept out of every history and baseline (σ window, sustained mean,
    drift baseline, timestep bins, the EMA). ``counts`` has one counter per rule of
    :data:`SPIKE_RULES` (the ``rule`` label of ``texwatch_loss_spikes_total``) and counts each
    flagged step once, under its most severe rule, so the counters add up to the spike events;
    ``warnings`` counts σ warnings.

    The σ rule judges, by default, the log of the value against the median of the logs of the
    last ``window`` unflagged values, in σ read off their upper tail (``statistic="log"``, see
    :class:`LogSpikeDetector`): training losses are positive and right-skewed, and on the log
    scale a ×k jump is the same distance at any level. ``"robust"`` judges the values themselves
    against their median and MAD, ``"gaussian"`` against their mean and standard deviation. A
    value not > 0 switches a ``"log"`` monitor to ``"robust"`` for good (its histories restart).

    When timesteps arrive, the σ and sustained rules judge the timestep-normalised loss from then
    on (their histories restart once, as the series changes meaning); with only the batch loss,
    each step's deviation is scaled by its batch's spread factor (see
    :class:`TimestepNormalizer`), so a batch one small-t item dominates needs a larger jump to be
    flagged than a balanced one. A later step without
    timesteps is then judged only by the hard and drift rules. ``hard_max`` and ``drift`` always
    judge the raw loss (the drift rule on the σ rule's scale: its log by default).

    Args:
        window: rolling window of the σ and sustained rules (default 128).
        sigma: σ alarm level (default 6).
        warn_sigma: σ warning level (default 5; above ``sigma`` it never triggers).
        statistic: one of :data:`STATISTICS` (default ``"log"``).
        ema_alpha: EMA smoothing factor (default 0.01); or give ``ema_half_life``.
        ema_half_life: EMA half-life in steps.
        hard_max_first: how many first values make Megatron's reference maximum (default 100).
        hard_max_factor: Megatron's factor (default 10).
        sustained_factor: llm-foundry's factor over the running mean (default 2).
        sustained_steps: how many steps in a row (default 5).
        drift_half_life: half-life in steps of the drift rule's slow baseline (default 2000).
        drift_limit: the drift rule's CUSUM limit, in σ (default 20; see :class:`DriftRule`).
        timestep_bins: timestep bins of the normaliser (default 20).
        t_range: ``(low, high)`` of the timesteps; inferred when None.
        timestep_half_life: items after which an item's weight in its bin's mean halves.
        max_events: how many recent spike events are kept.
        max_sample_ids: how many sample ids an event keeps.

    Example:
        >>> monitor = LossMonitor(window=4, hard_max_first=2)
        >>> for step, loss in enumerate([1.0, 1.1, 0.9, 1.0]):
        ...     _ = monitor.update(step, loss)
        >>> update = monitor.update(4, 50.0, sample_ids=[7, 9])
        >>> update.rule, update.rules, monitor.events[-1].sample_ids
        ('hard_max', ('hard_max', 'sigma'), (7, 9))
        >>> monitor.counts["hard_max"], monitor.counts["sigma"]
        (1, 0)
    """

    _KIND = "LossMonitor"
    _STRUCTURAL = (
        "window",
        "statistic",
        "hard_max_first",
        "timestep_bins",
        "t_range",
        "max_events",
        "max_sample_ids",
    )

    def __init__(
        self,
        window: int = 128,
        sigma: float = SIGMA,
        warn_sigma: float = WARN_SIGMA,
        *,
        statistic: str = "log",
        ema_alpha: float | None = None,
        ema_half_life: float | None = None,
        hard_max_first: int = 100,
        hard_max_factor: float = 10.0,
        sustained_factor: float = 2.0,
        sustained_steps: int = 5,
        drift_half_life: float = _DRIFT_HALF_LIFE,
        drift_limit: float = _DRIFT_LIMIT,
        timestep_bins: int = 20,
        t_range: tuple[float, float] | None = None,
        timestep_half_life: float = 100.0,
        max_events: int = 64,
        max_sample_ids: int = 256,
    ) -> None:
        if statistic not in STATISTICS:
            raise ValueError(
                f"Expected argument `statistic` to be one of {STATISTICS} but got {statistic!r}"
            )
        self.statistic = statistic  # what the σ rule judges now (see the class docstring)
        self._configured_statistic = statistic
        self.max_events = _check_int("max_events", max_events)
        self.max_sample_ids = _check_int("max_sample_ids", max_sample_ids)
        # Checked here first so a bad value is reported under the monitor's argument name.
        window = _check_int("window", window, minimum=2)
        ema = _alpha(ema_alpha, ema_half_life, 0.01, names=("ema_alpha", "ema_half_life"))
        hard_max_first = _check_int("hard_max_first", hard_max_first)
        hard_max_factor = _check_float("hard_max_factor", hard_max_factor)
        sustained_factor = _check_float("sustained_factor", sustained_factor)
        sustained_steps = _check_int("sustained_steps", sustained_steps)
        drift_half_life = _check_float("drift_half_life", drift_half_life)
        drift_limit = _check_float("drift_limit", drift_limit)
        timestep_bins = _check_int("timestep_bins", timestep_bins)
        timestep_half_life = _check_float("timestep_half_life", timestep_half_life)
        self._spike = self._detector(statistic, window, sigma, warn_sigma)
        self._ema = EMA(ema, history=window)
        self._hard = HardMaxRule(hard_max_first, hard_max_factor)
        self._sustained = SustainedRule(window, sustained_factor, sustained_steps)
        self._drift = DriftRule(drift_half_life, limit=drift_limit, warmup=window)
        self._norm = TimestepNormalizer(timestep_bins, t_range, timestep_half_life)
        self._counts = dict.fromkeys(SPIKE_RULES, 0)
        self._warnings = 0
        self._events: deque[SpikeEvent] = deque(maxlen=self.max_events)
        self._normalising = False
        self._last_step = -1
        self._last: LossUpdate | None = None

    @staticmethod
    def _detector(
        statistic: str, window: int, sigma: float, warn_sigma: float
    ) -> _WindowSpikeDetector:
        kind = {"log": LogSpikeDetector, "robust": RobustSpikeDetector}
        return kind.get(statistic, RollingSpikeDetector)(window, sigma, warn_sigma)

    # --- reading ------------------------------------------------------------------------------

    @property
    def window(self) -> int:
        """The σ and sustained rules' window."""
        return self._spike.window

    @property
    def sigma(self) -> float:
        """The σ alarm level."""
        return self._spike.sigma

    @property
    def warn_sigma(self) -> float:
        """The σ warning level."""
        return self._spike.warn_sigma

    @property
    def ema(self) -> float:
        """The current loss EMA."""
        return self._ema.value

    @property
    def counts(self) -> dict[str, int]:
        """Flagged steps per rule since the monitor started (never rewound)."""
        return dict(self._counts)

    @property
    def warnings(self) -> int:
        """σ warnings since the monitor started (never rewound)."""
        return self._warnings

    @property
    def events(self) -> list[SpikeEvent]:
        """The most recent spike events, oldest first (at most ``max_events``)."""
        return list(self._events)

    @property
    def last(self) -> LossUpdate | None:
        """The result of the latest update."""
        return self._last

    @property
    def normalising(self) -> bool:
        """Whether the σ and sustained rules judge timestep-normalised losses."""
        return self._normalising

    @property
    def t_range(self) -> tuple[float, float] | None:
        """The timestep range in use (configured or inferred), None while unknown."""
        return self._norm.t_range

    # --- updating -----------------------------------------------------------------------------

    def update(
        self,
        step: int,
        loss: float,
        *,
        item_losses: Any = None,
        timesteps: Any = None,
        sample_ids: Any = None,
    ) -> LossUpdate:
        """Judge the loss of one step.

        Args:
            step: the training step; a step not after the previous one rewinds every rule first.
            loss: the batch loss.
            item_losses: per-item losses ``(B,)`` (optional; a non-finite item flags the step).
            timesteps: per-item diffusion timesteps ``(B,)``; with them the σ and sustained rules
                judge the timestep-normalised loss.
            sample_ids: which samples made the batch; kept (up to ``max_sample_ids``) with a
                spike event.
        """
        step = _check_step(step)
        loss = _check_value("loss", loss)
        items = None if item_losses is None else _as_vector("item_losses", item_losses)
        ts = None if timesteps is None else _as_vector("timesteps", timesteps)
        if items is not None and ts is not None and items.shape != ts.shape:
            raise ValueError(
                f"Expected arguments `item_losses` and `timesteps` to have the same length "
                f"but got {items.size} and {ts.size}"
            )
        rewound = step <= self._last_step
        if rewound:
            self.rewind(step)
        self._last_step = step

        rules: list[str] = []
        nonfinite = not math.isfinite(loss) or (items is not None and not np.isfinite(items).all())
        if nonfinite:
            rules.append("nonfinite")
        if self._hard.update(step, loss, exclude=nonfinite):
            rules.append("hard_max")

        if ts is not None and not self._normalising:
            self._normalising = True
            self._spike.clear()
            self._sustained.clear()
        value, spread = loss, 1.0
        if self._normalising:
            value = math.nan
            if ts is not None and not nonfinite:
                value, spread = self._norm._normalise(ts, items, loss)
        if self.statistic == "log" and math.isfinite(value) and value <= 0.0:
            # A loss that can be 0 or negative has no log scale: judge the values themselves.
            self.statistic = "robust"
            self._spike = self._detector("robust", self.window, self.sigma, self.warn_sigma)
            self._sustained.clear()
            self._drift.clear()
        verdict = self._spike.update(step, value, spread=spread, exclude=bool(rules))
        if verdict.alarm:
            rules.append("sigma")
        if self._sustained.update(step, value, exclude=bool(rules)):
            rules.append("sustained")
        # The drift rule judges the raw loss: a timestep-normalised ratio creeps up as training
        # slows (its bins lag a falling loss), the raw loss does not.
        if self._drift.update(step, self._spike.transform(loss), exclude=bool(rules)):
            rules.append("drift")
        if ts is not None and not rules:
            self._norm._fold(ts, items, loss)
        # A flagged loss never enters the EMA: the EMA is the level a spike is compared with.
        ema = self._ema.update(step, math.nan if rules else loss)

        warning = verdict.warning and not rules
        self._warnings += warning
        rule = None
        if rules:
            rule = rules[0]
            self._counts[rule] += 1
            ids = None if sample_ids is None else _sample_ids(sample_ids, self.max_sample_ids)
            self._events.append(SpikeEvent(step, loss, verdict.zscore, rule, tuple(rules), ids))
        self._last = LossUpdate(
            step,
            loss,
            ema,
            value,
            self._normalising,
            verdict.zscore,
            rule,
            tuple(rules),
            warning,
            rewound,
        )
        return self._last

    def rewind(self, step: int) -> None:
        """Drop every rule's history at or after ``step`` (a resumed job repeats steps).

        Counters, events, the timestep bins' means and the drift baseline (slow calibrations, not
        histories of steps) are kept.
        """
        step = _check_step(step)
        self._ema.rewind(step)
        self._spike.rewind(step)
        self._hard.rewind(step)
        self._sustained.rewind(step)
        self._drift.rewind(step)
        self._last_step = step - 1

    # --- persistence --------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        norm = self._norm._config()
        return {
            "window": self.window,
            "sigma": self.sigma,
            "warn_sigma": self.warn_sigma,
            "statistic": self._configured_statistic,
            "ema_alpha": self._ema.alpha,
            "hard_max_first": self._hard.first,
            "hard_max_factor": self._hard.factor,
            "sustained_factor": self._sustained.factor,
            "sustained_steps": self._sustained.steps,
            "drift_half_life": self._drift.half_life,
            "drift_limit": self._drift.limit,
            "timestep_bins": norm["bins"],
            "t_range": norm["t_range"],
            "timestep_half_life": norm["half_life"],
            "max_events": self.max_events,
            "max_sample_ids": self.max_sample_ids,
        }

    def _state(self) -> dict[str, Any]:
        return dict(
            ema=self._ema.state_dict(),
            spike=self._spike.state_dict(),
            hard_max=self._hard.state_dict(),
            sustained=self._sustained.state_dict(),
            drift=self._drift.state_dict(),
            timesteps=self._norm.state_dict(),
            statistic=self.statistic,
            counts=dict(self._counts),
            warnings=self._warnings,
            events=[e.to_dict() for e in self._events],
            normalising=self._normalising,
            last_step=self._last_step,
        )

    def _load(self, state: Mapping[str, Any]) -> None:
        statistic = str(state["statistic"])
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}")
        spike = self._detector(statistic, self.window, self.sigma, self.warn_sigma)
        spike.load_state_dict(state["spike"])
        self._ema.load_state_dict(state["ema"])
        self._hard.load_state_dict(state["hard_max"])
        self._sustained.load_state_dict(state["sustained"])
        self._drift.load_state_dict(state["drift"])
        self._norm.load_state_dict(state["timesteps"])
        self._spike, self.statistic = spike, statistic
        counts = {r: int(state["counts"][r]) for r in SPIKE_RULES}
        events = [SpikeEvent.from_dict(e) for e in state["events"]]
        self._warnings = int(state["warnings"])
        self._normalising = bool(state["normalising"])
        self._last_step = int(state["last_step"])
        self._counts = counts
        self._events = deque(events, maxlen=self.max_events)
        self._last = None


# --------------------------------------------------------------------------------------------
# Loss terms.


@dataclass(frozen=True)
class TermUpdate:
    """What :meth:`TermMonitor.update` found at one step.

    Attributes:
        step: the step.
        values: each known term's unweighted value (NaN when absent this step).
        weights: each term's weight in use (the given one, else the last known, else 1.0).
        contributions: ``weight × value`` per term (NaN when absent).
        shares: each term's share of the weighted total (see :func:`term_shares`).
        total: the weighted total over the present terms.
        dead: terms dead after this step, sorted.
        newly_dead: terms that became dead at this step.
        revived: terms that stopped being dead at this step.
        rewound: this step was not after the previous one.
        nonfinite: terms whose latest given value is NaN or ±Inf, sorted (their own state: a
            term that is computed but broken is not a term that is not computed).
    """

    step: int
    values: dict[str, float]
    weights: dict[str, float]
    contributions: dict[str, float]
    shares: dict[str, float]
    total: float
    dead: tuple[str, ...]
    newly_dead: tuple[str, ...] = ()
    revived: tuple[str, ...] = ()
    rewound: bool = False
    nonfinite: tuple[str, ...] = ()


# Relative spacing of the bfloat16 and float16 grids (8 and 11 significant bits).
_BF16_STEP = 2.0**-8
_FP16_STEP = 2.0**-11
# A term quiet for this many of its own mean gaps between signs of life is dead.
_QUIET_GAPS = 15.0
# Before its cadence is known, a term that lived once is dead after this many windows of absence.
_UNKNOWN_CADENCE_WINDOWS = 10
# Weight of the newest gap in the running mean gap.
_GAP_ALPHA = 0.05
# A change of more than this many grid steps shows a coarse (bf16/fp16) term moving.
_GRID_MOVE_STEPS = 2.0


def _on_bf16_grid(v: float) -> bool:
    """Whether ``v`` is exactly a bfloat16 value (its float32 bits end in 16 zeros)."""
    bits = np.array(v, dtype=np.float32).view(np.uint32)
    return bool(np.float32(v) == v and (int(bits) & 0xFFFF) == 0)


def _on_fp16_grid(v: float) -> bool:
    """Whether ``v`` is exactly a float16 value."""
    with np.errstate(over="ignore"):
        return bool(float(np.float16(v)) == v)


@dataclass
class _Term:
    weight: float = math.nan  # last known finite weight
    prev: float = math.nan  # last present finite value
    run: int = 0  # steps in a row without a sign of life (weight > 0)
    absent: int = 0  # of which absent, in a row
    seen: int = -1  # step the term first appeared
    dead: bool = False
    nonfinite: int = 0  # non-finite values given, ever
    broken: bool = False  # the latest given value was non-finite
    alive_at: int = -1  # step of the latest sign of life
    gap: float = math.nan  # running mean of the steps between signs of life
    bf16: bool = True  # every non-zero finite value so far lies on the bfloat16 grid
    fp16: bool = True  # ... on the float16 grid
    moved: bool = False  # a change larger than the grid's resolution was seen

    def to_list(self) -> list[Any]:
        return [
            self.weight,
            self.prev,
            self.run,
            self.absent,
            self.seen,
            self.dead,
            self.nonfinite,
            self.broken,
            self.alive_at,
            self.gap,
            self.bf16,
            self.fp16,
            self.moved,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> _Term:
        w, p, r, ab, se, d, n, b, a, g, bf, fp, m = v
        return cls(float(w), float(p), int(r), int(ab), int(se), bool(d), int(n), bool(b), int(a),
                   float(g), bool(bf), bool(fp), bool(m))  # fmt: skip

    @property
    def resolution(self) -> float:
        """Relative resolution of the coarsest float grid every value lay on (0: full)."""
        if math.isnan(self.prev):
            return 0.0
        return _BF16_STEP if self.bf16 else _FP16_STEP if self.fp16 else 0.0

    def observe(self, v: float) -> bool:
        """Fold in a present finite value; return whether it is a sign of life."""
        if v != 0.0:
            self.bf16 = self.bf16 and _on_bf16_grid(v)
            self.fp16 = self.fp16 and _on_fp16_grid(v)
        first = math.isnan(self.prev)
        changed = not first and v != self.prev
        res = self.resolution
        if changed and abs(v - self.prev) > _GRID_MOVE_STEPS * res * max(abs(v), abs(self.prev)):
            self.moved = True
        if v == 0.0:
            return False
        # A coarse term that never moved beyond its grid is live while present: a live value
        # whose spread is below the grid's step reads the same every step.
        return first or changed or (res > 0.0 and not self.moved)

    def limit(self, window: int) -> int:
        """Quiet steps that make the term dead (see :class:`TermMonitor`)."""
        if not math.isnan(self.gap):
            return max(window, math.ceil(_QUIET_GAPS * self.gap))
        if self.alive_at >= 0 and self.absent == self.run:
            return _UNKNOWN_CADENCE_WINDOWS * window
        return window

    def lived(self, step: int) -> None:
        # The first gap: from the term's appearance when it started quiet (a hinge at 0).
        since = self.alive_at if self.alive_at >= 0 else self.seen
        if step > since:
            gap = float(step - since)
            self.gap = gap if math.isnan(self.gap) else self.gap + _GAP_ALPHA * (gap - self.gap)
        self.alive_at = step


class TermMonitor(_Stateful):
    """Dead loss terms (weighted in but never computed) and each term's share of the weighted total.

    A term with weight > 0 shows a *sign of life* at a step when its value is present, finite,
    not 0 and differs from its previous value. A term is dead after ``window`` steps in a row
    without one (its value 0, unchanged, or absent: missing from ``terms``), or after 15 of its
    own mean gaps between signs of life when that is longer: a term computed every 200 steps
    (absent between) is judged at its cadence, and a hinge term that is 0 on 99 % of steps but
    sometimes active stays alive (a quiet stretch 15 times its mean gap has odds of e⁻¹⁵ for
    memoryless activity). The first gap is counted from the term's first appearance when it
    started quiet; a term that showed life once but whose cadence is not known yet is dead
    after 10 windows of absence (W of zeros or one repeated value). A term whose values all lie
    on the bfloat16 or float16 grid and never moved by more than two steps of it is live while
    present and not 0: a live value whose spread is below the grid's resolution reads the same
    every step (such a term frozen after it moved is dead as usual). It revives at its next
    sign of life. A weight of 0 means the term is off on purpose and is never dead; a
    missing weight keeps the term's last known weight (1.0 if none was ever given).

    A NaN or ±Inf value is counted in ``nonfinite`` and puts the term in the *non-finite* state
    (``TermUpdate.nonfinite``) until a finite value is given; it neither shows life nor counts
    towards death.

    Args:
        window: steps in a row that make a term dead (W), at the least.
        max_terms: the most distinct terms tracked (keeps memory bounded).

    Example:
        >>> terms = TermMonitor(window=3)
        >>> for step in range(3):
        ...     update = terms.update(step, {"v": 0.5 - 0.1 * step, "edge": 0.0},
        ...                           {"v": 1.0, "edge": 0.06})
        >>> update.dead, update.shares["v"]
        (('edge',), 1.0)
    """

    _KIND = "TermMonitor"
    _STRUCTURAL = ("max_terms",)

    def __init__(self, window: int = 100, *, max_terms: int = MAX_TERMS) -> None:
        self.window = _check_int("window", window)
        self.max_terms = _check_int("max_terms", max_terms)
        self._terms: dict[str, _Term] = {}
        self._last_step = -1
        self._last: TermUpdate | None = None

    @property
    def terms(self) -> tuple[str, ...]:
        """Every term seen so far, in order of appearance."""
        return tuple(self._terms)

    @property
    def dead(self) -> tuple[str, ...]:
        """The terms dead now, sorted."""
        return tuple(sorted(k for k, t in self._terms.items() if t.dead))

    @property
    def nonfinite(self) -> dict[str, int]:
        """NaN and ±Inf values given per term (never rewound)."""
        return {k: t.nonfinite for k, t in self._terms.items()}

    @property
    def last(self) -> TermUpdate | None:
        """The result of the latest update."""
        return self._last

    @staticmethod
    def _number(kind: str, name: Any, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, Real):
            if isinstance(value, np.ndarray) and value.size == 1:
                return float(value.reshape(()))
            raise TypeError(
                f"Expected argument `{kind}` to map names to numbers but got {name!r}: {value!r}"
            )
        return float(value)

    def update(
        self, step: int, terms: Mapping[str, float], weights: Mapping[str, float] | None = None
    ) -> TermUpdate:
        """Fold one step's unweighted term values and weights in.

        Args:
            step: the training step; a step not after the previous one restarts every run.
            terms: unweighted value per term name; leave a term out (or give None) when it was
                not computed this step. NaN means it was computed and came out NaN.
            weights: weight per term name; None means every term weighs 1.0.
        """
        step = _check_step(step)
        if not isinstance(terms, Mapping):
            raise TypeError(f"Expected argument `terms` to be a mapping but got {terms!r}")
        if weights is not None and not isinstance(weights, Mapping):
            raise TypeError(
                f"Expected argument `weights` to be a mapping or None but got {weights!r}"
            )
        vals = {str(k): self._number("terms", k, v) for k, v in terms.items() if v is not None}
        ws = (
            {}
            if weights is None
            else {
                str(k): self._number("weights", k, v) for k, v in weights.items() if v is not None
            }
        )
        names = dict.fromkeys((*terms, *(weights or {})))
        new = [str(k) for k in names if str(k) not in self._terms]
        if len(self._terms) + len(new) > self.max_terms:
            raise ValueError(
                f"Expected at most `max_terms`={self.max_terms} distinct terms but got "
                f"{len(self._terms) + len(new)}"
            )
        rewound = step <= self._last_step
        if rewound:
            self.rewind(step)
        self._last_step = step
        for k in new:
            self._terms[k] = _Term(seen=step)

        values: dict[str, float] = {}
        used: dict[str, float] = {}
        contributions: dict[str, float] = {}
        newly_dead: list[str] = []
        revived: list[str] = []
        for name, term in self._terms.items():
            w = ws.get(name, math.nan)
            if math.isfinite(w):
                term.weight = w
            weight = term.weight if math.isfinite(term.weight) else 1.0
            given = name in vals
            v = vals.get(name, math.nan)
            usable = math.isfinite(v)
            if given:
                term.broken = not usable
                term.nonfinite += not usable
            life = usable and term.observe(v)
            if life:
                term.lived(step)
            was_dead = term.dead
            if weight <= 0.0 or life:
                term.run = term.absent = 0
                term.dead = False
                if was_dead and weight > 0.0:
                    revived.append(name)
            elif not term.broken:
                term.run += 1
                term.absent = term.absent + 1 if not given else 0
                if term.run >= term.limit(self.window) and not term.dead:
                    term.dead = True
                    newly_dead.append(name)
            if usable:
                term.prev = v
            values[name] = v
            used[name] = weight
            contributions[name] = weight * v
        finite = [c for c in contributions.values() if math.isfinite(c)]
        self._last = TermUpdate(
            step,
            values,
            used,
            contributions,
            term_shares(contributions),
            math.fsum(finite) if finite else math.nan,
            self.dead,
            tuple(newly_dead),
            tuple(revived),
            rewound,
            tuple(sorted(k for k, t in self._terms.items() if t.broken)),
        )
        return self._last

    def rewind(self, step: int) -> None:
        """Restart every term's run count (a resumed job repeats steps); dead terms stay dead."""
        step = _check_step(step)
        for term in self._terms.values():
            term.run = term.absent = 0
            term.alive_at = min(term.alive_at, step - 1)
        self._last_step = step - 1

    def _config(self) -> dict[str, Any]:
        return {"window": self.window, "max_terms": self.max_terms}

    def _state(self) -> dict[str, Any]:
        return dict(
            terms={k: t.to_list() for k, t in self._terms.items()}, last_step=self._last_step
        )

    def _load(self, state: Mapping[str, Any]) -> None:
        terms = {str(k): _Term.from_list(list(v)) for k, v in state["terms"].items()}
        last_step = int(state["last_step"])
        self._terms, self._last_step, self._last = terms, last_step, None


# --------------------------------------------------------------------------------------------
# Image-stream health.


@dataclass(frozen=True)
class StreamHealthUpdate:
    """Rolling health of an image stream (latents, x̂0) after one row.

    Attributes:
        step: the step.
        min: the smallest value over the window's rows.
        max: the largest value over the window's rows.
        clip_fraction: the mean share of values beyond the clip range over the window's rows.
        nonfinite_total: non-finite values since the monitor started (never rewound).
        rewound: this step was not after the previous one.
    """

    step: int
    min: float
    max: float
    clip_fraction: float
    nonfinite_total: int
    rewound: bool = False


class StreamHealth(_Stateful):
    """Rolling range and clip fraction of an image stream from its per-row statistics.

    The per-row statistics (``min``, ``max``, ``clip_fraction``, ``nonfinite``) come from
    :mod:`texwatch.spectral`; this only keeps the last ``window`` rows of them and a running
    non-finite count.

    Example:
        >>> health = StreamHealth(window=2)
        >>> _ = health.update(0, minimum=-3.5, maximum=2.0, clip_fraction=0.01)
        >>> update = health.update(1, minimum=-1.0, maximum=4.0, clip_fraction=0.03, nonfinite=2)
        >>> update.min, update.max, update.clip_fraction, update.nonfinite_total
        (-3.5, 4.0, 0.02, 2)
    """

    _KIND = "StreamHealth"
    _STRUCTURAL = ("window",)

    def __init__(self, window: int = 128) -> None:
        self.window = _check_int("window", window)
        self._ring = _Ring(self.window, width=3)  # (min, max, clip_fraction) per row
        self._nonfinite = 0
        self._last_step = -1
        self._last: StreamHealthUpdate | None = None

    @property
    def nonfinite_total(self) -> int:
        """Non-finite values since the monitor started."""
        return self._nonfinite

    @property
    def last(self) -> StreamHealthUpdate | None:
        """The result of the latest update."""
        return self._last

    @staticmethod
    def _reduce(values: np.ndarray, how: Any) -> float:
        finite = values[np.isfinite(values)]
        return float(how(finite)) if finite.size else math.nan

    def update(
        self,
        step: int,
        *,
        minimum: float,
        maximum: float,
        clip_fraction: float,
        nonfinite: int = 0,
    ) -> StreamHealthUpdate:
        """Fold one row's statistics in and return the rolling summary."""
        step = _check_step(step)
        lo = _check_value("minimum", minimum)
        hi = _check_value("maximum", maximum)
        clip = _check_value("clip_fraction", clip_fraction)
        if isinstance(nonfinite, bool) or not isinstance(nonfinite, Integral) or nonfinite < 0:
            raise TypeError(
                f"Expected argument `nonfinite` to be a non-negative int but got {nonfinite!r}"
            )
        rewound = step <= self._last_step
        if rewound:
            self.rewind(step)
        self._last_step = step
        self._nonfinite += int(nonfinite)
        self._ring.push(step, lo, hi, clip)
        self._last = StreamHealthUpdate(
            step,
            self._reduce(self._ring.column(0), np.min),
            self._reduce(self._ring.column(1), np.max),
            self._reduce(self._ring.column(2), np.mean),
            self._nonfinite,
            rewound,
        )
        return self._last

    def rewind(self, step: int) -> None:
        """Drop the rows at or after ``step``."""
        step = _check_step(step)
        self._ring.rewind(step)
        self._last_step = step - 1

    def _config(self) -> dict[str, Any]:
        return {"window": self.window}

    def _state(self) -> dict[str, Any]:
        return dict(ring=self._ring.state(), nonfinite=self._nonfinite, last_step=self._last_step)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._ring.load(state["ring"])
        self._nonfinite = int(state["nonfinite"])
        self._last_step = int(state["last_step"])
        self._last = None
