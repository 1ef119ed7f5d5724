"""Alert thresholds: the one place both alert forms (Prometheus and Grafana) read them from.

Change a default here (or pass ``--thresholds FILE`` to ``python -m dashboards.build``) and the
Prometheus rule file, the Grafana alert provisioning and the dashboard's threshold lines all follow.
The texture alarm's default comes from :mod:`texwatch.alarms`, which the report and the alarm
benchmark read too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from texwatch.alarms import HARMONIC_SCALE

__all__ = ["Thresholds", "load_thresholds", "thresholds_or_default"]

_DURATION = re.compile(r"^(0|[1-9][0-9]*)(s|m|h|d)$")


@dataclass(frozen=True)
class Thresholds:
    """What counts as a problem, and for how long it must last before it pages.

    Durations are Prometheus durations with one unit (``30s``, ``10m``, ``2h``); both Prometheus
    (``for:`` and range selectors) and Grafana (``for:``) accept them as written.

    Attributes:
        harmonic_scale: ``tile_scale`` (the texture period over the reference's) at or above
            this, or at or below its inverse, is a harmonic lock: the tiles doubled (or halved).
            Must be > 1; defaults to :data:`texwatch.alarms.HARMONIC_SCALE`.
        harmonic_for: how long ``tile_scale`` must stay beyond ``harmonic_scale``.
        spike_count: loss spikes (any detector rule but ``nonfinite``) within ``spike_window``
            that fire the spike alert.
        spike_window: the window the spikes are counted over.
        nonfinite_window: any NaN/Inf counted within this window fires the non-finite alert.
        dead_term_for: how long a loss term must stay dead.
        lag_rows: committed rows the daemon has not derived yet, above which it is lagging.
        lag_for: how long the lag must stay above ``lag_rows``.
        down_for: how long the daemon may be down (``up == 0``) or absent from Prometheus.
        absent_window: how long a run seen unfinished counts as live once its texwatchd is
            gone: its daemon's absence pages within this window only (a run that crashed
            without closing its recorder stops paging once it has passed).
    """

    harmonic_scale: float = HARMONIC_SCALE
    harmonic_for: str = "10m"
    spike_count: float = 1.0
    spike_window: str = "10m"
    nonfinite_window: str = "5m"
    dead_term_for: str = "10m"
    lag_rows: float = 1000.0
    lag_for: str = "10m"
    down_for: str = "2m"
    absent_window: str = "15m"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(field.default, str):
                if not isinstance(value, str):
                    raise TypeError(
                        f"threshold {field.name} must be a duration string like '10m', "
                        f"got {type(value).__name__} {value!r}"
                    )
                if not _DURATION.match(value):
                    raise ValueError(
                        f"threshold {field.name} must be a duration like '30s', '10m' or '2h', "
                        f"got {value!r}"
                    )
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(
                        f"threshold {field.name} must be a number, "
                        f"got {type(value).__name__} {value!r}"
                    )
                if not value > 0 or value == float("inf"):
                    raise ValueError(
                        f"threshold {field.name} must be a finite number > 0, got {value!r}"
                    )
        if not self.harmonic_scale > 1:
            raise ValueError(
                "threshold harmonic_scale must be > 1 (its inverse is the halved-tile bound), "
                f"got {self.harmonic_scale!r}"
            )

    @classmethod
    def from_mapping(cls, overrides: Mapping[str, Any]) -> Thresholds:
        """Build thresholds from the defaults with some fields replaced.

        Args:
            overrides: field name to new value, e.g. ``{"harmonic_for": "30m"}``.

        Raises:
            TypeError: ``overrides`` is not a mapping, or a value has the wrong type.
            ValueError: an unknown field name, or a value out of range.
        """
        if not isinstance(overrides, Mapping):
            raise TypeError(f"overrides must be a mapping, got {type(overrides).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(overrides))


def thresholds_or_default(thresholds: Thresholds | None) -> Thresholds:
    """``thresholds``, or the defaults for None; a TypeError for anything else."""
    if thresholds is None:
        return Thresholds()
    if not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
    return thresholds


def load_thresholds(path: str | Path) -> Thresholds:
    """Read threshold overrides from a YAML mapping file (missing fields keep their defaults).

    Raises:
        ValueError: the file does not hold a mapping, or a field is unknown or out of range.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"threshold file {str(path)!r} must hold a YAML mapping, got {type(data).__name__}"
        )
    return Thresholds.from_mapping(data)
