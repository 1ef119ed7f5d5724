"""The Prometheus series texwatchd exports, as dashboards and alert rules may name them.

Built from the exporter's own contract (:mod:`texwatch.metric_names`), so a rename there breaks
a dashboard test instead of a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from texwatch.detectors import SPIKE_RULES
from texwatch.metric_names import ERROR_KINDS, FAMILIES, SCRAPE_JOB, TEXTURE_LOSSES

__all__ = [
    "ERROR_KINDS",
    "METRICS",
    "METRIC_NAMES",
    "PROMETHEUS_SYNTHETIC",
    "SCRAPE_JOB",
    "SPIKE_RULES",
    "TEXTURE_LOSSES",
    "MetricSpec",
    "metric",
    "series_names",
]

MetricType = Literal["gauge", "counter", "histogram"]

#: Series Prometheus adds itself for every scrape target (not exported by texwatchd).
PROMETHEUS_SYNTHETIC: frozenset[str] = frozenset({"up"})


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family.

    Attributes:
        name: the family name as exposed; counters include their ``_total`` suffix.
        type: the Prometheus type.
        labels: label names every sample carries (histograms add ``le`` to ``_bucket``).
        help: what the value means.
    """

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str


#: The exporter's families (:data:`texwatch.metric_names.FAMILIES`) as exposed on /metrics.
METRICS: tuple[MetricSpec, ...] = tuple(
    MetricSpec(
        f.name + "_total" if f.kind == "counter" else f.name,
        cast(MetricType, f.kind),
        f.labels,
        f.doc,
    )
    for f in FAMILIES.values()
)

#: Every family name in :data:`METRICS`.
METRIC_NAMES: frozenset[str] = frozenset(spec.name for spec in METRICS)

_BY_SERIES: dict[str, MetricSpec] = {}
for _spec in METRICS:
    if _spec.type == "histogram":
        for _suffix in ("_bucket", "_sum", "_count"):
            _BY_SERIES[_spec.name + _suffix] = _spec
    else:
        _BY_SERIES[_spec.name] = _spec


def series_names() -> frozenset[str]:
    """Every series name a query may select: gauges, counters, and histogram sub-series.

    Returns:
        Names such as ``texwatch_loss`` and ``texwatch_processing_seconds_bucket``.
    """
    return frozenset(_BY_SERIES)


def metric(series: str) -> MetricSpec:
    """Return the family a series name belongs to.

    Args:
        series: a series name, e.g. ``texwatch_processing_seconds_bucket``.

    Raises:
        TypeError: ``series`` is not a string.
        ValueError: the name is not part of the contract.
    """
    if not isinstance(series, str):
        raise TypeError(f"series must be a str, got {type(series).__name__}")
    try:
        return _BY_SERIES[series]
    except KeyError:
        raise ValueError(
            f"series {series!r} is not exported by texwatchd; expected one of {sorted(_BY_SERIES)}"
        ) from None
