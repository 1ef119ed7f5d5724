"""The "texwatch — training overview" Grafana dashboard, built with grafana-foundation-sdk.

Rows: latest snapshots, loss, texture scale, banding and aliasing, stream health, loss terms,
daemon health. Every
query filters on the ``run`` and ``rank`` (multi-select; a run of its own has no rank, which
"All" matches) and, per image stream, ``stream`` variables; panels that sum keep ranks apart, so a
spike on one rank of an ``all_ranks`` job shows as that rank's. Alert
thresholds come from :class:`~dashboards.thresholds.Thresholds`, so the lines drawn on the panels
are the ones that page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, text, timeseries
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import text as text_models

from dashboards.site import Site, site_or_default
from dashboards.thresholds import Thresholds, thresholds_or_default
from texwatch.alarms import ALIAS_SHARE, BAND_SCORE
from texwatch.detectors import SIGMA, WARN_SIGMA

__all__ = ["DASHBOARD_UID", "SPIKE_SIGMA", "WARNING_SIGMA", "build_overview"]

#: uid of the dashboard (its URL is ``/d/texwatch-overview``).
DASHBOARD_UID = "texwatch-overview"
#: texwatchd's default ``--spike-sigma``: z-scores past it are counted as spikes.
SPIKE_SIGMA = SIGMA
#: z-score past which texwatchd counts a spike warning (its default ``--warn-sigma``).
WARNING_SIGMA = WARN_SIGMA

_DS = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
_RUN = 'run=~"$run", rank=~"$rank"'
_STREAM = 'run=~"$run", rank=~"$rank", stream=~"$stream"'
# A run of its own has no rank: its legend reads "run /stream", a rank of a job "run 3/stream".
_RS_LEGEND = "{{run}} {{rank}}/{{stream}}"
_HEIGHT = 8


class _Ids:
    """Hands out panel ids in layout order, so they are unique and stable across builds."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


def _query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range()


def _targets(queries: Sequence[tuple[str, str]]) -> list[Builder[variants.Dataquery]]:
    return [_query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def _steps(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _series(
    ids: _Ids,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    *,
    unit: str = "none",
    span: int = 12,
    height: int = _HEIGHT,
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(_DS)
        .targets(_targets(queries))
        .unit(unit)
        .span(span)
        .height(height)
        .legend(_legend())
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(0)
    )


def _bars(
    ids: _Ids,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    *,
    span: int,
    height: int = _HEIGHT,
) -> timeseries.Panel:
    return (
        _series(ids, title, description, queries, span=span, height=height)
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(80)
    )


def _with_threshold_lines(
    panel: timeseries.Panel, steps: dashboard.ThresholdsConfig, *, area: bool = False
) -> timeseries.Panel:
    style = common.GraphThresholdsStyleMode
    mode = style.LINE_AND_AREA if area else style.LINE
    return panel.thresholds(steps).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(mode)
    )


def _right_axis(panel: timeseries.Panel, ref_id: str) -> timeseries.Panel:
    return panel.override_by_query(
        ref_id, [models.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]
    )


def _stat(
    ids: _Ids,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    *,
    span: int,
    steps: dashboard.ThresholdsConfig,
    mappings: Sequence[models.ValueMap] = (),
) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(_DS)
        .targets(_targets(queries))
        .span(span)
        .height(_HEIGHT)
        .thresholds(steps)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(list(mappings))
    return panel


def _value_map(*entries: tuple[str, str, str]) -> models.ValueMap:
    return models.ValueMap(
        options={
            value: models.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, text, color) in enumerate(entries)
        }
    )


# The snapshot panel's image: texwatchd serves each run's newest snapshot by its folder name;
# ${__to} changes at every refresh, so the browser loads the image again instead of its cache.
_SNAPSHOT_IMG = (
    '<img src="${snapshot_url}/snapshots/${snapshot}/latest.png?t=${__to}" '
    'alt="no snapshot of ${snapshot} at ${snapshot_url} (reachable from this browser?)" '
    'style="width:100%;height:100%;object-fit:contain">'
)


def _snapshots_row(ids: _Ids, board: dashboard.Dashboard) -> None:
    board.with_row(dashboard.Row("Latest snapshots").id(ids()).collapsed(False))
    board.with_panel(
        text.Panel()
        .id(ids())
        .title("Latest snapshot: ${snapshot}")
        .description(
            "The newest snapshot texwatchd wrote of each run (samples, spectrum, ACF, loss), "
            "one panel per run (the Snapshot variable). Your browser loads it from "
            "${snapshot_url}/snapshots/<run folder>/latest.png: texwatchd must be reachable "
            "from the browser at the Snapshot URL variable, over https when Grafana is served "
            "over https, and its Basic auth, if set, is asked for by the browser."
        )
        .mode(text_models.TextMode.HTML)
        .content(_SNAPSHOT_IMG)
        .repeat("snapshot")
        .repeat_direction("h")
        .max_per_row(2)
        .span(12)
        .height(14)
    )


def _loss_row(ids: _Ids, board: dashboard.Dashboard) -> None:
    board.with_row(dashboard.Row("Loss").id(ids()).collapsed(False))
    board.with_panel(
        _series(
            ids,
            "Loss and EMA",
            "Raw training loss and its exponential moving average. Spike markers come from "
            "the 'Loss spikes' annotation.",
            [
                (f"texwatch_loss{{{_RUN}}}", "{{run}} {{rank}} loss"),
                (f"texwatch_loss_ema{{{_RUN}}}", "{{run}} {{rank}} EMA"),
            ],
            span=12,
        )
    )
    board.with_panel(
        _with_threshold_lines(
            _series(
                ids,
                "Loss z-score",
                "Log loss against the median and robust sigma of its rolling window. Past "
                f"{WARNING_SIGMA:g} sigma texwatchd "
                f"warns; past {SPIKE_SIGMA:g} sigma (its default --spike-sigma) it counts a spike.",
                [(f"texwatch_loss_zscore{{{_RUN}}}", "{{run}} {{rank}}")],
                span=6,
            ),
            _steps((None, "green"), (WARNING_SIGMA, "orange"), (SPIKE_SIGMA, "red")),
        )
    )
    board.with_panel(
        _bars(
            ids,
            "Loss spikes",
            "Spikes per detector rule (sigma, hard_max, sustained, drift, nonfinite) and "
            f"{WARNING_SIGMA:g}-sigma warnings.",
            [
                (
                    f"sum by (run, rank, rule) (increase(texwatch_loss_spikes_total{{{_RUN}}}"
                    "[$__rate_interval]))",
                    "{{run}} {{rank}} {{rule}}",
                ),
                (
                    f"sum by (run, rank) (increase(texwatch_loss_spike_warnings_total{{{_RUN}}}"
                    "[$__rate_interval]))",
                    "{{run}} {{rank}} warnings",
                ),
            ],
            span=6,
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Last step",
            "Newest committed training step of each run.",
            [(f"texwatch_last_step{{{_RUN}}}", "{{run}} {{rank}}")],
            span=6,
            steps=_steps((None, "blue")),
        )
    )
    board.with_panel(
        _series(
            ids,
            "Scalars",
            "User scalars recorded with the loss (learning rate, gradient norm, ...).",
            [(f"texwatch_scalar{{{_RUN}}}", "{{run}} {{rank}} {{name}}")],
            span=18,
        )
    )


def _texture_row(ids: _Ids, board: dashboard.Dashboard, th: Thresholds) -> None:
    board.with_row(dashboard.Row("Texture scale").id(ids()).collapsed(False))
    board.with_panel(
        _series(
            ids,
            "Fundamental frequency f* vs reference",
            "Radius bin of the spectral peak (f*), of the first autocorrelation peak, and of the "
            "reference tile. f* at twice or half the reference means the tile period halved or "
            "doubled. Gaps: no periodic texture (see Periodicity).",
            [
                (f"texwatch_fundamental_radius_bin{{{_STREAM}}}", f"{_RS_LEGEND} f*"),
                (f"texwatch_ref_radius_bin{{{_STREAM}}}", f"{_RS_LEGEND} reference"),
                (f"texwatch_acf_first_peak_radius_bin{{{_STREAM}}}", f"{_RS_LEGEND} ACF peak"),
            ],
        )
    )
    scale = th.harmonic_scale
    board.with_panel(
        _with_threshold_lines(
            _series(
                ids,
                "Tile scale",
                "The texture period over the reference's, both read from the autocorrelation "
                "along the reference's peak direction: 1 is the right scale, 2 tiles doubled "
                "(the fundamental moved to f/2), 0.5 tiles halved (it moved to 2f). At or above "
                f"{scale:g}, or at or below 1/{scale:g}, for {th.harmonic_for} fires "
                "TexwatchHarmonicLock. "
                "Gaps: no periodic reference, or no period in the stream.",
                [(f"texwatch_tile_scale{{{_STREAM}}}", _RS_LEGEND)],
            ).scale_distribution(
                common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(2)
            ),
            _steps((None, "red"), (1.0 / scale, "green"), (scale, "red")),
            area=True,
        )
    )
    board.with_panel(
        _right_axis(
            _series(
                ids,
                "Periodicity",
                "1 when the stream holds a periodic texture (f* and the autocorrelation period "
                "agree), and the prominence of the f* bin over its ring's noise floor in dB "
                "(right axis).",
                [
                    (f"texwatch_periodic{{{_STREAM}}}", f"{_RS_LEGEND} periodic"),
                    (f"texwatch_peak_prominence_db{{{_STREAM}}}", f"{_RS_LEGEND} prominence dB"),
                ],
                span=8,
            ).line_interpolation(common.LineInterpolation.STEP_AFTER),
            "B",
        )
    )
    board.with_panel(
        _right_axis(
            _series(
                ids,
                "Period-doubling bands",
                "From row and column strips: the share of strips reading the doubled period "
                "beyond the reference's own share (band score; texwatch's banding alarm at "
                f"{BAND_SCORE:g} or more), and the extent in px of the longest run of such "
                "strips (right axis).",
                [
                    (f"texwatch_band_score{{{_STREAM}}}", f"{_RS_LEGEND} score"),
                    (f"texwatch_band_max_run{{{_STREAM}}}", f"{_RS_LEGEND} max run px"),
                ],
                span=8,
            ),
            "B",
        )
    )
    board.with_panel(
        _series(
            ids,
            "Texture losses",
            "Texture losses of the stream against its target or reference tile.",
            [(f"texwatch_texture_loss{{{_STREAM}}}", f"{_RS_LEGEND} {{{{loss}}}}")],
            span=8,
        )
    )


def _banding_row(ids: _Ids, board: dashboard.Dashboard) -> None:
    board.with_row(dashboard.Row("Banding and aliasing").id(ids()).collapsed(False))
    board.with_panel(
        _series(
            ids,
            "Axis ratio at f*",
            "Axis-aligned over diagonal energy at f*: high values mean row/column banding or an "
            "FFT boundary cross.",
            [(f"texwatch_axis_ratio_at_f{{{_STREAM}}}", _RS_LEGEND)],
            span=6,
        )
    )
    board.with_panel(
        _series(
            ids,
            "Shift MSE (1 px)",
            "MSE between the image and itself shifted by one pixel: aliasing and banding raise it.",
            [
                (f"texwatch_shift_mse_dx1{{{_STREAM}}}", f"{_RS_LEGEND} dx"),
                (f"texwatch_shift_mse_dy1{{{_STREAM}}}", f"{_RS_LEGEND} dy"),
            ],
            span=6,
        )
    )
    board.with_panel(
        _right_axis(
            _series(
                ids,
                "Aliasing",
                "MSE after resizing down and back up (high: content above the Nyquist limit, "
                "moire), and the alias score (right axis): the share of the stream's power in "
                "strong spectral peaks the reference lacks, as nearest-neighbour resampling "
                f"leaves them; texwatch's aliasing alarm at {ALIAS_SHARE:g} or more.",
                [
                    (f"texwatch_resize_mse_down_up{{{_STREAM}}}", f"{_RS_LEGEND} resize MSE"),
                    (f"texwatch_alias_score{{{_STREAM}}}", f"{_RS_LEGEND} alias score"),
                ],
                span=6,
            ),
            "B",
        )
    )
    board.with_panel(
        _series(
            ids,
            "Checkerboard energy",
            "Share of spectral energy at the Nyquist corners: transposed-convolution "
            "checkerboards.",
            [(f"texwatch_checkerboard_energy{{{_STREAM}}}", _RS_LEGEND)],
            unit="percentunit",
            span=6,
        )
    )


def _health_row(ids: _Ids, board: dashboard.Dashboard) -> None:
    board.with_row(dashboard.Row("Latent and stream health").id(ids()).collapsed(False))
    board.with_panel(
        _series(
            ids,
            "Value range",
            "Minimum, mean and maximum of each stream. Latents drifting out of range show here "
            "first.",
            [
                (f"texwatch_stream_min{{{_STREAM}}}", f"{_RS_LEGEND} min"),
                (f"texwatch_stream_mean{{{_STREAM}}}", f"{_RS_LEGEND} mean"),
                (f"texwatch_stream_max{{{_STREAM}}}", f"{_RS_LEGEND} max"),
            ],
            span=8,
        )
    )
    board.with_panel(
        _series(
            ids,
            "Standard deviation",
            "Standard deviation of each stream.",
            [(f"texwatch_stream_std{{{_STREAM}}}", _RS_LEGEND)],
            span=8,
        )
    )
    board.with_panel(
        _right_axis(
            _series(
                ids,
                "Clipping (|x| > 3)",
                "Share of values outside the DDIM x0 clip range, and how far past it they go "
                "(right axis).",
                [
                    (f"texwatch_stream_clip_fraction{{{_STREAM}}}", f"{_RS_LEGEND} fraction"),
                    (f"texwatch_stream_clip_excess{{{_STREAM}}}", f"{_RS_LEGEND} excess"),
                ],
                unit="percentunit",
                span=8,
            ),
            "B",
        )
    )
    board.with_panel(
        _series(
            ids,
            "Non-finite values (total)",
            "NaN/Inf counted per stream, including the loss ('loss') and loss terms "
            "('term/<name>'); each step up is new ones, and fires TexwatchNonFinite.",
            [(f"sum by (run, rank, stream) (texwatch_nonfinite_total{{{_RUN}}})", _RS_LEGEND)],
            span=24,
            height=6,
        ).line_interpolation(common.LineInterpolation.STEP_AFTER)
    )


def _terms_row(ids: _Ids, board: dashboard.Dashboard) -> None:
    board.with_row(dashboard.Row("Loss terms").id(ids()).collapsed(False))
    board.with_panel(
        _series(
            ids,
            "Weighted share per term",
            "Each term's share of the weighted total loss. A term stuck at 0 contributes nothing.",
            [(f"texwatch_loss_term_share{{{_RUN}}}", "{{run}} {{rank}} {{term}}")],
            unit="percentunit",
        )
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(40)
    )
    board.with_panel(
        _series(
            ids,
            "Term values (unweighted)",
            "Each term before weighting, on a log scale since terms differ by orders of magnitude.",
            [(f"texwatch_loss_term{{{_RUN}}}", "{{run}} {{rank}} {{term}}")],
        ).scale_distribution(
            common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    )
    board.with_panel(
        _series(
            ids,
            "Term weights",
            "Weight of each term (warm-up and ramp schedules show here).",
            [(f"texwatch_loss_term_weight{{{_RUN}}}", "{{run}} {{rank}} {{term}}")],
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Dead terms",
            "Terms texwatchd considers dead (constant zero or no share of the total).",
            [(f"texwatch_loss_term_dead{{{_RUN}}}", "{{run}} {{rank}} {{term}}")],
            span=8,
            steps=_steps((None, "green"), (1.0, "red")),
            mappings=[_value_map(("0", "alive", "green"), ("1", "dead", "red"))],
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Dead term count",
            "Number of dead loss terms per run. Any dead term for long fires TexwatchDeadLossTerm.",
            [(f"texwatch_dead_loss_terms{{{_RUN}}}", "{{run}} {{rank}}")],
            span=4,
            steps=_steps((None, "green"), (1.0, "red")),
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Non-finite terms",
            "Terms whose latest value is NaN or Inf: computed, but broken (not dead). "
            "Their NaNs also count in texwatch_nonfinite_total and fire TexwatchNonFinite.",
            [(f"texwatch_loss_term_nonfinite{{{_RUN}}}", "{{run}} {{rank}} {{term}}")],
            span=12,
            steps=_steps((None, "green"), (1.0, "red")),
            mappings=[_value_map(("0", "finite", "green"), ("1", "NaN/Inf", "red"))],
        )
    )


def _daemon_row(ids: _Ids, board: dashboard.Dashboard, th: Thresholds, site: Site) -> None:
    board.with_row(dashboard.Row("Daemon health").id(ids()).collapsed(False))
    board.with_panel(
        _stat(
            ids,
            "texwatchd up",
            "Whether Prometheus can scrape texwatchd.",
            [(f'up{{job="{site.job}"}}', "{{instance}}")],
            span=4,
            steps=_steps((None, "red"), (1.0, "green")),
            mappings=[_value_map(("0", "down", "red"), ("1", "up", "green"))],
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Runs served",
            "Runs texwatchd is watching.",
            [("texwatch_runs", "{{instance}}")],
            span=4,
            steps=_steps((None, "blue")),
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Run state",
            "live while a run is written (or after it crashed), finished once its Recorder "
            "closed cleanly and texwatchd derived all of it: the per-run alerts are silenced "
            "for it. TexwatchDaemonAbsent pages when texwatchd goes while a run is live.",
            [(f"texwatch_run_finished{{{_RUN}}}", "{{run}} {{rank}}")],
            span=4,
            steps=_steps((None, "blue"), (1.0, "green")),
            mappings=[_value_map(("0", "live", "blue"), ("1", "finished", "green"))],
        )
    )
    board.with_panel(
        _stat(
            ids,
            "Stalled runs",
            "Runs whose work has not returned within texwatchd's --stall-after (a hung read): "
            "their metrics are frozen while the other runs go on.",
            [(f"sum(texwatch_run_stalled{{{_RUN}}})", "stalled")],
            span=4,
            steps=_steps((None, "green"), (1.0, "red")),
        )
    )
    board.with_panel(
        _stat(
            ids,
            "texwatchd version",
            "texwatch's version on each texwatchd, and the Python, torch and zarr it runs on "
            "(texwatch_build_info).",
            [
                (
                    "texwatch_build_info",
                    "{{instance}}: {{version}} (Python {{python}}, torch {{torch}}, zarr {{zarr}})",
                )
            ],
            span=8,
            steps=_steps((None, "blue")),
        )
    )
    board.with_panel(
        _with_threshold_lines(
            _series(
                ids,
                "Lag (committed rows not yet derived)",
                f"Above {th.lag_rows:g} rows for {th.lag_for} fires TexwatchDaemonLagging.",
                [(f"texwatch_daemon_lag_rows{{{_RUN}}}", "{{run}} {{rank}}")],
                span=8,
            ),
            _steps((None, "green"), (th.lag_rows, "red")),
        )
    )
    board.with_panel(
        _series(
            ids,
            "Time since last derived batch",
            "Seconds since texwatchd last derived rows of each run.",
            [(f"time() - texwatch_last_processed_timestamp_seconds{{{_RUN}}}", "{{run}} {{rank}}")],
            unit="s",
            span=8,
        )
    )
    quantiles = [
        (
            f"histogram_quantile({q}, sum by (run, rank, le) "
            f"(rate(texwatch_processing_seconds_bucket{{{_RUN}}}[$__rate_interval])))",
            f"{{{{run}}}} {{{{rank}}}} p{int(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    ]
    board.with_panel(
        _series(
            ids,
            "Processing time per wake",
            "Quantiles of the time one wake of texwatchd takes to derive new rows.",
            quantiles,
            unit="s",
            span=8,
        )
    )
    board.with_panel(
        _bars(
            ids,
            "Errors by kind",
            "Daemon errors: corrupt chunks, missing stores, schema, read, compute, snapshot.",
            [("sum by (kind) (increase(texwatch_errors_total[$__rate_interval]))", "{{kind}}")],
            span=8,
        )
    )
    board.with_panel(
        _series(
            ids,
            "Object-store requests",
            "Requests per second texwatchd makes to each bucket, those retried after throttling or "
            "a server error, those that failed for good, and the share of time spent waiting for "
            "the request cap (docs/object-storage.md). Empty while every run is on local disk.",
            [
                (
                    "sum by (bucket) "
                    "(rate(texwatch_object_store_requests_total[$__rate_interval]))",
                    "{{bucket}} requests",
                ),
                (
                    "sum by (bucket) (rate(texwatch_object_store_retries_total[$__rate_interval]))",
                    "{{bucket}} retried",
                ),
                (
                    "sum by (bucket) "
                    "(rate(texwatch_object_store_failures_total[$__rate_interval]))",
                    "{{bucket}} failed",
                ),
                (
                    "sum by (bucket) "
                    "(rate(texwatch_object_store_throttled_seconds_total[$__rate_interval]))",
                    "{{bucket}} waiting for the cap (s/s)",
                ),
            ],
            unit="reqps",
            span=8,
        )
    )
    board.with_panel(
        _bars(
            ids,
            "Client dropped rows",
            "Rows the training-side client dropped because its queue was full.",
            [
                (
                    "sum by (run, rank, stream) "
                    f"(increase(texwatch_client_dropped_rows_total{{{_RUN}}}[$__rate_interval]))",
                    _RS_LEGEND,
                )
            ],
            span=8,
        )
    )


def _label_values(
    name: str,
    label: str,
    query: str,
    sort: models.VariableSort = models.VariableSort.ALPHABETICAL_ASC,
) -> dashboard.QueryVariable:
    """A multi-select variable over one label's values (``query``), with "All", refreshed as the
    time range changes."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(_DS)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(sort)
        .multi(True)
        .include_all(True)
    )


def _spike_annotation() -> dashboard.AnnotationQuery:
    return (
        dashboard.AnnotationQuery()
        .name("Loss spikes")
        .datasource(_DS)
        .enable(True)
        .icon_color("red")
        .expr(f"sum by (run, rank, rule) (increase(texwatch_loss_spikes_total{{{_RUN}}}[1m])) > 0")
    )


# Prometheus annotation fields the SDK's AnnotationQuery has no setter for; written as plain
# JSON after encoding (Grafana's Prometheus datasource reads them next to ``expr``).
_SPIKE_ANNOTATION_EXTRAS = {
    "step": "1m",
    "titleFormat": "Loss spike ({{rule}})",
    "tagKeys": "run,rank,rule",
    "useValueForTime": False,
}


def build_overview(
    thresholds: Thresholds | None = None, site: Site | None = None
) -> dict[str, Any]:
    """Build the overview dashboard as Grafana dashboard JSON (a plain mapping).

    Args:
        thresholds: the alert thresholds to draw; defaults when ``None``.
        site: the scrape job and texwatchd's URL for the snapshot images; defaults when None.

    Raises:
        TypeError: ``thresholds`` is not a :class:`Thresholds` or ``site`` not a :class:`Site`.
    """
    thresholds = thresholds_or_default(thresholds)
    site = site_or_default(site)
    ids = _Ids()
    board = (
        dashboard.Dashboard("texwatch — training overview")
        .uid(DASHBOARD_UID)
        .description(
            "texwatch training telemetry: loss, texture scale, banding and aliasing, stream "
            "health, loss terms and texwatchd health. Generated by `python -m dashboards.build`."
        )
        .tags(["texwatch"])
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            _label_values("run", "Run", "label_values(texwatch_last_step, run)").all_value(".*")
        )
        .with_variable(
            _label_values(
                "rank",
                "Rank",
                'label_values(texwatch_last_step{run=~"$run"}, rank)',
                models.VariableSort.NUMERICAL_ASC,
            ).all_value(".*")
        )
        .with_variable(
            _label_values(
                "stream", "Stream", f"label_values(texwatch_stream_std{{{_RUN}}}, stream)"
            ).all_value(".*")
        )
        .with_variable(
            _label_values(
                "snapshot", "Snapshot", f"label_values(texwatch_snapshot_step{{{_RUN}}}, folder)"
            ).description("The snapshot folders of the runs shown (texwatch_snapshot_step).")
        )
        .with_variable(
            dashboard.TextBoxVariable("snapshot_url")
            .label("Snapshot URL")
            .description(
                "texwatchd's base URL as this browser reaches it; the snapshot images load "
                "from <this>/snapshots/<run folder>/latest.png."
            )
            .default_value(site.snapshot_url)
        )
        .annotation(_spike_annotation())
    )
    _snapshots_row(ids, board)
    _loss_row(ids, board)
    _texture_row(ids, board, thresholds)
    _banding_row(ids, board)
    _health_row(ids, board)
    _terms_row(ids, board)
    _daemon_row(ids, board, thresholds, site)
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    encoded["annotations"]["list"][0].update(_SPIKE_ANNOTATION_EXTRAS)
    return encoded
