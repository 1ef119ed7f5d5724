"""The report's sections: for each run its loss, loss terms, stream health and texture metrics;
for each selected step all runs side by side; the validation images over time.

Each section adds its headings, figures and tables to a :class:`Document` and its numbers to the
JSON document. Figures of a long run draw its decimated table (:mod:`._decimate`): every spike
and warning, and each bucket's extremes of every line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from texwatch._steptable import column_value, periodic_rows, row_at
from texwatch.causes import SpikeReading, Thresholds, fft_period
from texwatch.metric_names import STREAM_METRIC_NAMES

from ._decimate import decimate
from ._document import Document
from ._load import RunData

__all__ = [
    "FFT_PERIOD_KEY",
    "HEALTH_KEYS",
    "TEXTURE_KEYS",
    "checkpoint_section",
    "health_section",
    "loss_section",
    "scalars_section",
    "series",
    "summary_section",
    "terms_section",
    "texture_section",
    "validation_section",
]

TEXTURE_KEYS: tuple[str, ...] = tuple(STREAM_METRIC_NAMES)
"""Texture metric columns shown per stream (:data:`texwatch.spectral.METRIC_KEYS` and
:data:`texwatch.spectral.BAND_KEYS`, as texwatchd derives and exports them)."""

HEALTH_KEYS: tuple[str, ...] = ("mean", "std", "min", "max", "nonfinite", "clip_fraction")
"""Stream value-health columns shown per stream."""

FFT_PERIOD_KEY = "fft_period_px"
"""Checkpoint-table row beside the ACF period: the period f* stands for, max(H, W) / f*."""

_MAX_SPIKE_ROWS = 200  # spikes listed in the loss section's table (the JSON has them all)
_PANEL_LINES = 6  # logged scalars drawn on one axes
_PANELS = 12  # axes of the logged-scalars figure; the table lists every scalar


def _column(table: Mapping[str, np.ndarray], key: str, fill: float = math.nan) -> np.ndarray:
    col = table.get(key)
    return np.full(table["step"].size, fill) if col is None else np.asarray(col)


def loss_section(
    doc: Document,
    rd: RunData,
    sigma: float,
    sample_ids: Mapping[int, list[int]],
    out: dict[str, Any],
) -> None:
    """The loss, its EMA, spikes and warnings over time; the spikes' table."""
    from texwatch.plots import axes_grid, draw_loss, draw_series, new_figure

    digest = rd.scalars
    plot = digest.plot
    if not digest.rows or "loss" not in plot:
        return
    steps = plot["step"]
    doc.heading("Loss, EMA and spikes", 3)
    fig = new_figure(13.0, 6.0)
    a0, a1 = axes_grid(fig, 2, 1, title=False)[:, 0]
    a1.sharex(a0)
    draw_loss(
        a0,
        steps,
        plot["loss"],
        ema=_column(plot, "loss_ema"),
        spike_steps=digest.spike_steps.tolist(),
        warn_steps=digest.warn_steps.tolist(),
        title=f"{rd.shown}: loss",
    )
    draw_series(
        a1,
        steps,
        {"z-score": _column(plot, "loss_zscore")},
        title="loss z-score vs the rolling window",
        hlines={f"{sigma:g}σ alarm": sigma},
    )
    caption = f"{rd.label}: loss, EMA, spikes (red) and warnings (orange)"
    doc.figure(fig, caption + _decimated(digest.rows, steps.size))
    spikes = [_spike(s, sample_ids) for s in digest.evidence.spikes]
    last = digest.last
    summary = {
        "steps": digest.rows,
        "first_step": digest.first_step,
        "last_step": digest.last_step,
        "last_loss": last.get("loss", math.nan),
        "last_ema": last.get("loss_ema", math.nan),
        "min_loss": digest.loss_min,
        "max_loss": digest.loss_max,
        "spikes": len(spikes),
        "warnings": int(digest.warn_steps.size),
    }
    doc.table(list(summary), [list(summary.values())])
    if spikes:
        doc.table(
            ["step", "loss", "EMA", "z-score", "rule", "sample ids"],
            [
                [
                    s["step"],
                    s["loss"],
                    s["loss_ema"],
                    s["zscore"],
                    s["rule"],
                    ", ".join(str(x) for x in s["sample_ids"][:32]) or "—",
                ]
                for s in spikes[:_MAX_SPIKE_ROWS]
            ],
        )
    out["loss"] = summary
    out["spikes"] = spikes
    out["warning_steps"] = digest.warn_steps.tolist()


def _spike(s: SpikeReading, sample_ids: Mapping[int, list[int]]) -> dict[str, Any]:
    return {
        "step": s.step,
        "loss": s.loss,
        "loss_ema": s.loss_ema,
        "zscore": s.zscore,
        "rule": s.rule,
        "sample_ids": sample_ids.get(s.step, []),
    }


def _decimated(rows: int, shown: int) -> str:
    if shown >= rows:
        return ""
    return (
        f" ({shown:,} of {rows:,} steps drawn: each bucket's lowest and highest value of every "
        "line, and every spike and warning)"
    )


def terms_section(doc: Document, rd: RunData, out: dict[str, Any]) -> None:
    """Every loss term unweighted and weighted, its weight and its share over time."""
    from texwatch.plots import axes_grid, draw_series, literal, new_figure, set_title

    digest = rd.scalars
    terms = digest.terms
    if not terms:
        return
    plot = digest.plot
    steps = plot["step"]
    dead_flags = digest.evidence.dead
    dead = {t: bool(t in dead_flags and dead_flags[t].rows) for t in terms}
    logged = {t: rd.logged(f"term/{t}")[len("term/") :] for t in terms}
    label = {t: literal(f"{logged[t]} (dead)" if dead[t] else logged[t]) for t in terms}
    doc.heading("Loss terms: unweighted, weighted, weights, shares", 3)
    fig = new_figure(13.0, 7.0)
    axes = axes_grid(fig, 2, 2)
    set_title(fig, f"{rd.shown}: loss terms")
    draw_series(
        axes[0, 0],
        steps,
        {label[t]: _column(plot, f"term/{t}") for t in terms},
        title="unweighted value",
    )
    draw_series(
        axes[0, 1],
        steps,
        {label[t]: _column(plot, f"weighted/{t}") for t in terms},
        title="weighted contribution (value × weight)",
    )
    draw_series(
        axes[1, 0],
        steps,
        {label[t]: _column(plot, f"weight/{t}", 1.0) for t in terms},
        title="weight",
    )
    draw_series(
        axes[1, 1],
        steps,
        {label[t]: _column(plot, f"share/{t}") for t in terms},
        title="share of the weighted total",
    )
    caption = f"{rd.label}: every loss term unweighted and weighted, and its weight"
    doc.figure(fig, caption + _decimated(digest.rows, steps.size))
    last = digest.last
    rows = {}
    for t in terms:
        flags = dead_flags.get(t)
        rows[logged[t]] = {
            "last_value": last.get(f"term/{t}", math.nan),
            "last_weight": last.get(f"weight/{t}", 1.0),
            "last_weighted": last.get(f"weighted/{t}", math.nan),
            "last_share": last.get(f"share/{t}", math.nan),
            "dead": dead[t],
            "dead_steps": flags.rows if flags else 0,
            "first_dead_step": flags.first_step if flags else None,
        }
    doc.table(
        ["term", "value", "weight", "weighted", "share", "dead", "dead steps", "first dead step"],
        [[t, *r.values()] for t, r in rows.items()],
    )
    out["terms"] = rows


def scalars_section(doc: Document, rd: RunData, out: dict[str, Any]) -> None:
    """Every scalar the training logged (``record(scalars=...)``: lr, grad norm, validation
    metrics), by the key it was logged under, grouped by its first segment as TensorBoard does."""
    from texwatch.plots import axes_grid, draw_series, literal, new_figure, set_title

    digest = rd.scalars
    logged = {column: rd.logged(column) for column in digest.logged}
    if not logged:
        return
    groups: dict[str, list[str]] = {}
    for column, key in sorted(logged.items(), key=lambda item: item[1]):
        groups.setdefault(key.split("/")[0] if "/" in key else "", []).append(column)
    panels = [
        (group, columns[i : i + _PANEL_LINES])
        for group, columns in groups.items()
        for i in range(0, len(columns), _PANEL_LINES)
    ]
    drawn = panels[:_PANELS]
    doc.heading("Logged scalars", 3)
    plot = digest.plot
    steps = plot["step"]
    cols = min(3, len(drawn))
    fig = new_figure(5.0 * cols, 3.0 * math.ceil(len(drawn) / cols) + 0.5)
    axes = axes_grid(fig, math.ceil(len(drawn) / cols), cols).ravel()
    set_title(fig, f"{rd.shown}: logged scalars")
    for ax, (group, columns) in zip(axes, drawn, strict=False):
        series = {literal(logged[c]): _column(plot, c) for c in columns}
        # a scalar logged every few hundred steps is points between gaps: drawn as dots
        sparse = any(np.isfinite(v).sum() * 2 < v.size for v in series.values())
        draw_series(
            ax, steps, series, title=literal(group or "scalars"), marker="." if sparse else None
        )
    for ax in axes[len(drawn) :]:
        ax.set_axis_off()
    shown = sum(len(columns) for _, columns in drawn)
    left = ""
    if shown < len(logged):
        left = f"; {shown} of {len(logged)} drawn, every one in the table"
    doc.figure(
        fig,
        f"{rd.label}: every scalar logged, by its key{left}" + _decimated(digest.rows, steps.size),
    )
    rows = {}
    for column, key in sorted(logged.items(), key=lambda item: item[1]):
        summary = digest.logged[column]
        rows[key] = {
            "stored_as": column,
            "steps": summary.steps,
            "min": summary.low,
            "max": summary.high,
            "last_step": summary.last_step,
            "last": summary.last,
        }
    doc.table(
        ["scalar", "stored as", "steps", "min", "max", "last step", "last"],
        [
            [key, "" if r["stored_as"] == key else r["stored_as"], *list(r.values())[1:]]
            for key, r in rows.items()
        ],
    )
    out["scalars"] = rows


def _stream_grid(
    doc: Document, rd: RunData, heading: str, what: str
) -> tuple[Any, Any, dict[str, dict[str, np.ndarray]]] | None:
    """The heading and a figure with a row of 4 axes per stream with rows (``what`` in its
    title), and those streams; None when no stream has a row."""
    from texwatch.plots import axes_grid, new_figure, set_title

    streams = {n: t for n, t in rd.streams.items() if t["step"].size}
    if not streams:
        return None
    doc.heading(heading, 3)
    fig = new_figure(15.0, 2.8 * len(streams) + 0.5)
    axes = axes_grid(fig, len(streams), 4)
    set_title(fig, f"{rd.shown}: {what}")
    return fig, axes, streams


def health_section(doc: Document, rd: RunData, th: Thresholds, out: dict[str, Any]) -> None:
    """Each stream's value range, clip fraction and non-finite values over time."""
    from texwatch.plots import draw_series, literal

    grid = _stream_grid(
        doc, rd, "Stream health: value range, clip fraction, non-finite", "stream health"
    )
    if grid is None:
        return
    fig, axes, streams = grid
    for row, (name, table) in zip(axes, streams.items(), strict=True):
        t = decimate(table)
        label = literal(rd.logged(name, stream=True))
        draw_series(
            row[0],
            t["step"],
            {"mean": _column(t, "mean"), "std": _column(t, "std")},
            title=f"{label}: mean, std",
        )
        draw_series(
            row[1],
            t["step"],
            {"min": _column(t, "min"), "max": _column(t, "max")},
            title=f"{label}: min, max",
        )
        draw_series(
            row[2],
            t["step"],
            {"clip fraction": _column(t, "clip_fraction")},
            title=f"{label}: share of |x| > clip range",
            hlines={"threshold": th.clip_fraction},
        )
        draw_series(
            row[3],
            t["step"],
            {"non-finite": _column(t, "nonfinite")},
            title=f"{label}: non-finite values",
        )
    doc.figure(fig, f"{rd.label}: stream value health over time")
    health = {}
    for name, t in streams.items():
        last = {k: float(t[k][-1]) for k in HEALTH_KEYS if k in t}
        clip = t.get("clip_fraction")
        last["max_clip_fraction"] = (
            float(np.nanmax(clip)) if clip is not None and np.isfinite(clip).any() else math.nan
        )
        last["nonfinite_total"] = float(np.nansum(t.get("nonfinite", np.zeros(1))))
        health[name] = {"last_step": int(t["step"][-1]), **last}
    keys = ["last_step", *HEALTH_KEYS, "max_clip_fraction", "nonfinite_total"]
    doc.table(
        ["stream", *keys],
        [[rd.logged(n, stream=True), *(h.get(k) for k in keys)] for n, h in health.items()],
    )
    out["health"] = health


def texture_section(doc: Document, rd: RunData, th: Thresholds) -> None:
    """Each stream's texture metrics over time."""
    from texwatch.plots import draw_series, literal

    grid = _stream_grid(doc, rd, "Texture metrics over time", "texture metrics")
    if grid is None:
        return
    fig, axes, streams = grid
    for row, (name, table) in zip(axes, streams.items(), strict=True):
        t = decimate(table)
        s = t["step"]
        label = literal(rd.logged(name, stream=True))
        draw_series(
            row[0],
            s,
            {"f*": _column(t, "fundamental_radius_bin"), "ref": _column(t, "ref_radius_bin")},
            title=f"{label}: f* (FFT bins)",
            marker=".",
        )
        periodic = periodic_rows(t)
        draw_series(
            row[1],
            s,
            {"tile scale": np.where(periodic, _column(t, "tile_scale"), np.nan)},
            title=f"{label}: tile scale (period / reference's)",
            hlines={
                f"×{th.harmonic_scale:g}: tiles doubled": th.harmonic_scale,
                f"×{1 / th.harmonic_scale:.3g}: tiles halved": 1 / th.harmonic_scale,
            },
            marker=".",
        )
        draw_series(
            row[2],
            s,
            {
                "axis ratio": np.where(periodic, _column(t, "axis_ratio_at_f"), np.nan),
                "band score": np.where(periodic, _column(t, "band_score"), np.nan),
                "checkerboard": _column(t, "checkerboard_energy"),
            },
            title=f"{label}: banding and checkerboard",
            hlines={"band score threshold": th.band_score},
            marker=".",
        )
        draw_series(
            row[3],
            s,
            {"alias score": _column(t, "alias_score")},
            title=f"{label}: alias score (power share in peaks the ref lacks)",
            hlines={"threshold": th.alias_share},
            marker=".",
        )
    doc.figure(
        fig,
        f"{rd.label}: texture metrics of every stream over time (tile scale, axis ratio and "
        "band score at the steps with a periodic texture only)",
    )


def series(rd: RunData) -> dict[str, Any]:
    """The JSON series: the tables the figures draw, and how many rows each stands for.

    A table of more than :data:`texwatch.report._decimate.KEEP_ALL` rows is decimated as its
    figure is (each bucket's extremes of every column and every flagged row); ``rows`` gives
    the whole table's rows and ``decimated`` whether any row was left out.
    """
    streams = {}
    rows = {"scalars": rd.scalars.rows}
    for name, table in rd.streams.items():
        streams[name] = decimate(table)
        rows[name] = int(table["step"].size)
    shown = {"scalars": rd.scalars.plot, **streams}
    return {
        "scalars": rd.scalars.plot,
        "streams": streams,
        "rows": rows,
        "decimated": any(shown[k]["step"].size < n for k, n in rows.items()),
    }


def _checkpoint_rows(
    runs: Sequence[RunData], step: int, val: bool
) -> list[tuple[RunData, str, int]]:
    rows = []
    for rd in runs:
        for name, t in rd.streams.items():
            if rd.is_validation(name) != val:
                continue
            i = row_at(t, step)
            if i is not None:
                rows.append((rd, name, i))
    return rows


def checkpoint_section(
    doc: Document, runs: Sequence[RunData], step: int, max_images: int
) -> dict[str, Any]:
    """One selected step, all runs side by side: samples, spectra, ACF and every metric."""
    from texwatch.plots import (
        axes_grid,
        draw_acf,
        draw_image_grid,
        draw_log_spectrum,
        draw_radial_profile,
        literal,
        new_figure,
        spectrum_panel,
    )

    doc.heading(f"Step {step}", 3, anchor=f"step-{step}")
    columns = []
    pictured = _checkpoint_rows(runs, step, val=False)
    rows = pictured + _checkpoint_rows(runs, step, val=True)
    for rd, name, i in rows:
        t = rd.streams[name]
        columns.append(
            {
                "run": rd.label,
                "stream": name,
                "logged": rd.logged(name, stream=True),
                "row_step": int(t["step"][i]),
                "items": int(t["items"][i]),
                **{k: float(t[k][i]) for k in (*TEXTURE_KEYS, *HEALTH_KEYS) if k in t},
            }
        )
        value = columns[-1].get("fundamental_radius_bin")
        f_star = float(value) if isinstance(value, (int, float)) else math.nan
        columns[-1][FFT_PERIOD_KEY] = (
            fft_period(f_star, rd.sizes[name]) if math.isfinite(f_star) else math.nan
        )
    if pictured:
        fig = new_figure(16.0, 3.6 * len(pictured) + 0.4)
        axes = axes_grid(fig, len(pictured), 4, title=False)
        for ax, (rd, name, i) in zip(axes, pictured, strict=True):
            t = rd.streams[name]
            row_step = int(t["step"][i])
            _, data = rd.run.stream_at(name, [row_step])
            ref = column_value(t, "ref_radius_bin", i)
            panel = spectrum_panel(data, ref_radius=ref if math.isfinite(ref) else None)
            label = literal(rd.logged(name, stream=True))
            where = f"{rd.shown} · {label} @ {row_step}"
            draw_image_grid(
                ax[0], data, title=f"{where} ({data.shape[0]} items)", max_images=max_images
            )
            draw_log_spectrum(ax[1], panel, title=f"{label}: log spectrum")
            draw_radial_profile(ax[2], panel, title=f"{label}: radial profile")
            draw_acf(ax[3], panel, title=f"{label}: ACF")
        doc.figure(
            fig,
            f"step {step}: samples, spectra (f* red, 2f* orange, f*/2 violet, "
            "reference black) and ACF, runs side by side",
        )
    if columns:
        at = TEXTURE_KEYS.index("acf_first_peak_radius_bin") + 1
        order = (*TEXTURE_KEYS[:at], FFT_PERIOD_KEY, *TEXTURE_KEYS[at:], *HEALTH_KEYS)
        keys = [k for k in order if any(k in c for c in columns)]
        doc.table(
            ["metric", *(f"{c['run']} · {c['logged']} @ {c['row_step']}" for c in columns)],
            [[k, *(c.get(k) for c in columns)] for k in ["items", *keys]],
        )
    else:
        doc.para("No image rows at or before this step.")
    return {"step": step, "columns": columns}


_SUMMARY_KEYS = (
    "fundamental_radius_bin",
    "acf_first_peak_radius_bin",
    "tile_scale",
    "band_score",
    "axis_ratio_at_f",
    "alias_score",
    "checkerboard_energy",
    "clip_fraction",
)


def summary_section(doc: Document, runs: Sequence[RunData], steps: Sequence[int]) -> None:
    """One chart per key metric across the selected steps, every run and stream on it.

    Drawn only where some stream has one of the metrics: a run of scalars alone (no image
    stream) has nothing to compare across steps, and says so.
    """
    from texwatch.plots import axes_grid, literal, new_figure

    if len(steps) < 2:
        return
    lines = [
        (k, rd, name)
        for k, rd in enumerate(runs)
        for name, t in rd.streams.items()
        if name != "target" and t["step"].size and any(key in t for key in _SUMMARY_KEYS)
    ]
    if not lines:
        doc.para("No image stream holds a texture metric: nothing to compare across steps.")
        return
    fig = new_figure(16.0, 7.8)
    axes = axes_grid(fig, 2, 4)
    styles = ("-", "--", ":", "-.")
    for ax, key in zip(axes.ravel(), _SUMMARY_KEYS, strict=True):
        for k, rd in enumerate(runs):
            names = [n for n, t in rd.streams.items() if n != "target" and key in t]
            for j, name in enumerate(names):
                t = rd.streams[name]
                idx = [row_at(t, s) for s in steps]
                values = [t[key][i] if i is not None else np.nan for i in idx]
                ax.plot(
                    steps,
                    values,
                    color=f"C{k % 10}",
                    ls=styles[j % len(styles)],
                    marker="o",
                    ms=3,
                    lw=1.1,
                    label=f"{rd.shown} · {literal(rd.logged(name, stream=True))}",
                )
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = [], []
    for ax in axes.ravel():  # one entry per run and stream, whichever chart has its line
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=max(1, min(len(labels), 4)),
        fontsize=7,
        bbox_to_anchor=(0.5, 1 - 0.05 / 7.8),
        frameon=False,
    )
    doc.figure(fig, "metrics at each selected step, every run and stream")


def validation_section(
    doc: Document, runs: Sequence[RunData], steps: Sequence[int], max_images: int
) -> list[dict[str, Any]]:
    """The fixed validation inputs (``val/*`` streams) at the selected steps."""
    from texwatch._images import to_display
    from texwatch.plots import axes_grid, literal, new_figure, set_title

    rows = [
        (rd, n, t)
        for rd in runs
        for n, t in rd.streams.items()
        if rd.is_validation(n) and t["step"].size
    ]
    if not rows:
        return []
    doc.heading("Fixed validation images over time", 2, anchor="validation")
    out = []
    for rd, name, t in rows:
        hit = sorted({int(t["step"][i]) for s in steps if (i := row_at(t, s)) is not None})
        if len(hit) < 2:
            pick = np.unique(
                np.linspace(0, t["step"].size - 1, min(max_images, t["step"].size)).round()
            ).astype(int)
            hit = [int(t["step"][i]) for i in pick]
        hit = hit[:max_images]
        out.append({"run": rd.label, "stream": name, "steps": hit})
        got_steps, data = rd.run.stream_at(name, hit)
        firsts = [int(np.flatnonzero(got_steps == s)[0]) for s in hit]
        fig = new_figure(2.2 * len(hit) + 0.3, 2.6)
        axes = axes_grid(fig, 1, len(hit)).ravel()
        for ax, s, j in zip(axes, hit, firsts, strict=True):
            ax.imshow(to_display(data[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"step {s}", fontsize=8)
            ax.set_axis_off()
        logged = rd.logged(name, stream=True)
        set_title(fig, f"{rd.shown} · {literal(logged)}", fontsize=10)
        doc.figure(fig, f"{rd.label} · {logged}: the same validation input at each step")
    return out
