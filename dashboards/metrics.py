"""The Prometheus metrics texwatchd exports: the one list dashboards, alerts and the exporter share.

Dashboards and alert rules may only name series listed here (tests enforce it), and the daemon's
exporter is tested against the same list, so a rename breaks a test instead of a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

#: The Prometheus ``job`` that scrapes texwatchd, in every shipped config and alert rule.
SCRAPE_JOB = "texwatch"

#: Values of the ``rule`` label of ``texwatch_loss_spikes_total``.
SPIKE_RULES: tuple[str, ...] = ("sigma", "hard_max", "sustained", "nonfinite")

#: Values of the ``kind`` label of ``texwatch_errors_total``.
ERROR_KINDS: tuple[str, ...] = (
    "corrupt_chunk",
    "store_missing",
    "schema",
    "read",
    "compute",
    "snapshot",
)

#: Values of the ``loss`` label of ``texwatch_texture_loss``.
TEXTURE_LOSSES: tuple[str, ...] = (
    "spectral_period",
    "log_polar_align",
    "scale_consistency",
    "acf_period",
)

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


def _stream_gauge(name: str, help_text: str) -> MetricSpec:
    return MetricSpec(name, "gauge", ("run", "stream"), help_text)


METRICS: tuple[MetricSpec, ...] = (
    # Spectral texture metrics per image stream (newest derived row).
    _stream_gauge("texwatch_fundamental_radius_bin", "f*: radius bin of the spectral peak."),
    _stream_gauge("texwatch_acf_first_peak_radius_bin", "Radius of the first ACF peak."),
    _stream_gauge("texwatch_e2f_over_ef", "Energy at 2f over energy at f (f = reference f*)."),
    _stream_gauge("texwatch_ehalf_over_ef", "Energy at f/2 over energy at f."),
    _stream_gauge("texwatch_axis_ratio_at_f", "Axis-aligned over diagonal energy at f*."),
    _stream_gauge("texwatch_shift_mse_dx1", "MSE between the image and itself shifted 1 px in x."),
    _stream_gauge("texwatch_shift_mse_dy1", "MSE between the image and itself shifted 1 px in y."),
    _stream_gauge("texwatch_resize_mse_down_up", "MSE of a down-then-up resize round trip."),
    _stream_gauge("texwatch_resize_delta_r", "Shift of f* after a resize round trip."),
    _stream_gauge("texwatch_ref_radius_bin", "f* of the reference or target tile."),
    _stream_gauge("texwatch_checkerboard_energy", "Share of energy at the Nyquist corners."),
    _stream_gauge("texwatch_band_score", "Period-doubling band score of the local period map."),
    _stream_gauge("texwatch_band_max_run", "Longest run of windows at the doubled period."),
    # Stream value health.
    _stream_gauge("texwatch_stream_mean", "Mean value of the stream."),
    _stream_gauge("texwatch_stream_std", "Standard deviation of the stream."),
    _stream_gauge("texwatch_stream_min", "Minimum value of the stream."),
    _stream_gauge("texwatch_stream_max", "Maximum value of the stream."),
    _stream_gauge("texwatch_stream_clip_fraction", "Share of values with |x| > 3."),
    _stream_gauge("texwatch_stream_clip_excess", "How far values go past the clip range."),
    MetricSpec(
        "texwatch_texture_loss",
        "gauge",
        ("run", "stream", "loss"),
        "Texture loss of the stream against its target or reference tile.",
    ),
    # Loss.
    MetricSpec("texwatch_loss", "gauge", ("run",), "Newest training loss."),
    MetricSpec("texwatch_loss_ema", "gauge", ("run",), "Exponential moving average of the loss."),
    MetricSpec("texwatch_loss_zscore", "gauge", ("run",), "Loss z-score in its rolling window."),
    MetricSpec(
        "texwatch_loss_spikes_total", "counter", ("run", "rule"), "Loss spikes, by detector rule."
    ),
    MetricSpec(
        "texwatch_loss_spike_warnings_total", "counter", ("run",), "Loss excursions past 4 sigma."
    ),
    # Loss terms.
    MetricSpec("texwatch_loss_term", "gauge", ("run", "term"), "Unweighted value of a loss term."),
    MetricSpec("texwatch_loss_term_weight", "gauge", ("run", "term"), "Weight of a loss term."),
    MetricSpec(
        "texwatch_loss_term_share", "gauge", ("run", "term"), "Share of the weighted total loss."
    ),
    MetricSpec("texwatch_loss_term_dead", "gauge", ("run", "term"), "1 when a term is dead."),
    MetricSpec("texwatch_dead_loss_terms", "gauge", ("run",), "Number of dead loss terms."),
    # User scalars and progress.
    MetricSpec("texwatch_scalar", "gauge", ("run", "name"), "A user scalar (lr, grad_norm, ...)."),
    MetricSpec(
        "texwatch_nonfinite_total",
        "counter",
        ("run", "stream"),
        "Non-finite values seen (stream: image stream, 'loss' or 'term/<name>').",
    ),
    MetricSpec("texwatch_last_step", "gauge", ("run",), "Newest committed training step."),
    # Daemon health.
    MetricSpec("texwatch_daemon_lag_rows", "gauge", ("run",), "Committed rows not yet derived."),
    MetricSpec(
        "texwatch_last_processed_timestamp_seconds",
        "gauge",
        ("run",),
        "Unix time of the last derived batch.",
    ),
    MetricSpec(
        "texwatch_processing_seconds", "histogram", ("run",), "Processing time of one wake."
    ),
    MetricSpec("texwatch_errors_total", "counter", ("kind",), "Daemon errors, by kind."),
    MetricSpec(
        "texwatch_client_dropped_rows_total",
        "counter",
        ("run", "stream"),
        "Rows the client dropped (counted in the store's attributes).",
    ),
    MetricSpec("texwatch_runs", "gauge", (), "Runs being served."),
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
