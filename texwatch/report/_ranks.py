"""Jobs recorded on every rank (``all_ranks=True``, ``job.zarr/rank<r>``) in the report.

Each rank is reported as a run of its own (its label says the rank), and the job gets a section
that merges them: every rank's loss beside the pooled loss (the mean over the ranks at each step),
and every spike and warning of every rank, each saying which rank it came from. A spike on one
rank is often invisible in the pooled loss: that is why both are shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from texwatch._location import Where

from ._decimate import decimate
from ._document import Document
from ._load import RunData

__all__ = ["Source", "job_section", "pooled_loss", "sources"]

_MAX_ROWS = 200  # spikes and warnings listed in the job's table (the JSON has them all)


@dataclass(frozen=True)
class Source:
    """One run store to report on, and the per-rank job it is a rank of (None: a run alone)."""

    path: Where
    job: Where | None = None


def sources(paths: Sequence[Where]) -> list[Source]:
    """The runs at ``paths``: a run store as given, a per-rank job as its ranks in rank order."""
    from texwatch.store import run_paths

    out = []
    for path in paths:
        try:
            ranks = run_paths(path)
        except (OSError, ValueError):  # opening it says what is wrong
            ranks = []
        if not ranks or ranks == [path]:
            out.append(Source(path))
        else:
            out += [Source(p, path) for p in ranks]
    return out


def pooled_loss(runs: Sequence[RunData]) -> dict[str, np.ndarray]:
    """The mean loss over the ranks at each step (a step's latest row per rank, finite values
    only), and how many ranks each step's mean is over: ``{"step", "loss", "ranks"}``.

    Holds one rank's loss column at a time beside the merged steps (24 bytes a step).
    """
    from texwatch.store import SCALARS

    steps = np.zeros(0, np.int64)
    total = np.zeros(0)
    count = np.zeros(0, np.int64)
    for rd in runs:
        if not rd.run.committed().get(SCALARS) or "loss" not in rd.run.scalar_names():
            continue
        cols = rd.run.scalars(names=["loss"])
        finite = np.isfinite(cols["loss"])
        own, loss = cols["step"][finite], cols["loss"][finite]
        merged = np.union1d(steps, own)
        new_total, new_count = np.zeros(merged.size), np.zeros(merged.size, np.int64)
        before = np.searchsorted(merged, steps)
        new_total[before], new_count[before] = total, count
        here = np.searchsorted(merged, own)  # one row per step: no index repeats
        new_total[here] += loss
        new_count[here] += 1
        steps, total, count = merged, new_total, new_count
    return {"step": steps, "loss": total / np.maximum(count, 1), "ranks": count}


def _marks(
    ranks: Sequence[RunData], sample_ids: Mapping[str, Mapping[int, list[int]]]
) -> list[dict[str, Any]]:
    """Every spike and warning of every rank, by step then rank."""
    rows: list[dict[str, Any]] = []
    for rd in ranks:
        ids = sample_ids.get(rd.label, {})
        for s in rd.scalars.evidence.spikes:
            rows.append(
                {
                    "rank": rd.rank,
                    "kind": "spike",
                    "step": s.step,
                    "loss": s.loss,
                    "zscore": s.zscore,
                    "rule": s.rule,
                    "sample_ids": ids.get(s.step, []),
                }
            )
        for step in rd.scalars.warn_steps.tolist():
            rows.append({"rank": rd.rank, "kind": "warning", "step": int(step)})
    return sorted(rows, key=lambda r: (r["step"], r["rank"], r["kind"]))


def job_section(
    doc: Document,
    job: Where,
    ranks: Sequence[RunData],
    sample_ids: Mapping[str, Mapping[int, list[int]]],
    anchor: str,
) -> dict[str, Any]:
    """The job's ranks merged: per-rank and pooled loss, and which rank each spike came from."""
    from texwatch.plots import axes_grid, literal, new_figure

    name = str(ranks[0].run.attrs.get("run") or job.stem)
    doc.heading(f"Job: {name} ({len(ranks)} ranks merged)", 2, anchor=anchor)
    pooled = pooled_loss(ranks)
    marks = _marks(ranks, sample_ids)
    shown = decimate({"step": pooled["step"], "loss": pooled["loss"]})
    if pooled["step"].size:
        fig = new_figure(13.0, 4.5)
        ax = axes_grid(fig, 1, 1, title=False)[0, 0]
        for k, rd in enumerate(ranks):
            plot = rd.scalars.plot
            if "loss" not in plot:
                continue
            colour = f"C{k % 10}"
            ax.plot(
                plot["step"], plot["loss"], lw=0.6, alpha=0.6, color=colour, label=f"rank {rd.rank}"
            )
            spikes = rd.scalars.spike_steps
            at = np.isin(plot["step"], spikes)
            if at.any():
                ax.scatter(
                    plot["step"][at],
                    plot["loss"][at],
                    marker="v",
                    s=36,
                    zorder=3,
                    color=colour,
                    edgecolors="red",
                    label=f"rank {rd.rank} spike",
                )
        ax.plot(shown["step"], shown["loss"], color="black", lw=1.3, label="pooled (mean)")
        ax.set_title(literal(f"{name}: loss of every rank and pooled"), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, ncol=min(4, len(ranks) + 1))
        doc.figure(
            fig,
            f"{name}: each rank's loss (spikes marked in the rank's colour) and the pooled loss, "
            "the mean over the ranks at each step",
        )
    summary = []
    for rd in ranks:
        digest = rd.scalars
        summary.append(
            {
                "rank": rd.rank,
                "steps": digest.rows,
                "last_step": digest.last_step,
                "last_loss": digest.last.get("loss", math.nan),
                "min_loss": digest.loss_min,
                "max_loss": digest.loss_max,
                "spikes": len(digest.evidence.spikes),
                "warnings": int(digest.warn_steps.size),
            }
        )
    finite = pooled["loss"][np.isfinite(pooled["loss"])] if pooled["step"].size else np.zeros(0)
    pooled_summary = {
        "steps": int(pooled["step"].size),
        "last_step": int(pooled["step"][-1]) if pooled["step"].size else None,
        "last_loss": float(pooled["loss"][-1]) if pooled["step"].size else math.nan,
        "min_loss": float(finite.min()) if finite.size else math.nan,
        "max_loss": float(finite.max()) if finite.size else math.nan,
        "steps_missing_ranks": int(np.count_nonzero(pooled["ranks"] < len(ranks))),
    }
    keys = ["steps", "last_step", "last_loss", "min_loss", "max_loss", "spikes", "warnings"]
    doc.table(
        ["rank", *keys],
        [[r["rank"], *(r[k] for k in keys)] for r in summary]
        + [["pooled", *(pooled_summary.get(k, "—") for k in keys)]],
    )
    if marks:
        doc.table(
            ["step", "rank", "kind", "loss", "z-score", "rule", "sample ids"],
            [
                [
                    m["step"],
                    m["rank"],
                    m["kind"],
                    m.get("loss"),
                    m.get("zscore"),
                    m.get("rule", "—"),
                    ", ".join(str(x) for x in m.get("sample_ids", [])[:32]) or "—",
                ]
                for m in marks[:_MAX_ROWS]
            ],
        )
    else:
        doc.para("No rank spiked or warned.")
    return {
        "name": name,
        "path": str(job),
        "ranks": [rd.rank for rd in ranks],
        "runs": [rd.label for rd in ranks],
        "per_rank": summary,
        "pooled": pooled_summary,
        "pooled_series": {**shown, "rows": int(pooled["step"].size)},
        "spikes": [m for m in marks if m["kind"] == "spike"],
        "warnings": [
            {"rank": m["rank"], "step": m["step"]} for m in marks if m["kind"] == "warning"
        ],
    }
