"""Building the report: load the runs, select the steps, read the causes, write the three files."""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from texwatch._json import jsonable
from texwatch._location import Where, locate
from texwatch.causes import ReportError, Thresholds, stream_causes

from . import _sections as sections
from ._document import Document
from ._load import RunData, check_requested, labels, load_run, open_store, sample_ids, select_steps
from ._ranks import job_section, sources

__all__ = ["build_report"]


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    steps: Sequence[int] | None = None,
    checkpoints: bool = False,
    every: int | None = None,
    thresholds: Thresholds | None = None,
    settings: Any = None,
    max_images: int = 8,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write ``index.html``, ``report.pdf`` and ``report.json`` for ``paths`` into ``out_dir``.

    Each run's scalar table is derived and read in chunks, so memory does not grow with the
    number of steps; figures and the JSON series of a long run hold its decimated table (every
    spike and warning, and each bucket's extremes of every column).

    Args:
        paths: run stores (``runs/x.zarr``); a per-rank job (``all_ranks=True``) is reported
            rank by rank, and in a section of its own that merges its ranks.
        out_dir: the output folder (created).
        steps: compare exactly these steps (each must be in every run).
        checkpoints: compare the steps recorded with ``checkpoint=True``.
        every: compare the image steps that are multiples of ``every``.
        thresholds: where the probable causes fire.
        settings: :class:`texwatch.derive.DeriveSettings` for rows the daemon has not derived.
        max_images: images per sample grid and validation strip.
        quiet: no progress bar.

    Returns:
        The report's JSON document (also written to ``report.json``).

    Raises:
        ReportError: a missing or unreadable store, an unknown schema version, a run with no
            rows, a step that is not in a run, or an output path that is a file.
    """
    from matplotlib.backends.backend_pdf import PdfPages

    from texwatch._progress import progress
    from texwatch.derive import DeriveSettings

    th = thresholds or Thresholds()
    settings = settings or DeriveSettings()
    if every is not None and every <= 0:
        raise ReportError(f"--every must be a positive number of steps, got {every}")
    if max_images <= 0:
        raise ReportError(f"--max-images must be positive, got {max_images}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"output {str(out)!r} is a file, expected a folder")
    if not paths:
        raise ReportError("no run store given")
    try:
        found = sources([locate(p, what="store") for p in paths])
    except (TypeError, ValueError) as err:
        raise ReportError(str(err)) from err
    store_paths = [s.path for s in found]
    opened = [open_store(p) for p in store_paths]
    names = labels(opened, store_paths, [s.job is not None for s in found])
    requested = check_requested(opened, names, steps, checkpoints)
    bar = progress(total=2 * len(opened) + 1, desc="report", quiet=quiet)
    try:
        runs = []
        for source, run_, label in zip(found, opened, names, strict=True):
            bar.set_postfix_str(f"deriving {label}"[:40])
            rank = run_.rank if source.job is not None else None
            runs.append(load_run(source.path, run_, label, settings, th, rank=rank))
            bar.update()
        if requested is not None:
            chosen, how = requested, "--steps" if steps else "--checkpoints"
        else:
            chosen, how = select_steps(runs, every)
        bar.total = 2 * len(runs) + len(chosen) + 1
        bar.refresh()
        out.mkdir(parents=True, exist_ok=True)
        doc_json: dict[str, Any] = {
            "format": "texwatch-report",
            "version": 1,
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "selection": how,
            "steps": chosen,
            "thresholds": dataclasses.asdict(th),
            "derive_settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "ref"}
            | {"ref": settings.ref is not None},
            "runs": [],
            "checkpoints": [],
            "validation": [],
        }
        with PdfPages(out / "report.pdf", metadata={"Title": "texwatch report"}) as pdf:
            doc = Document(pdf)
            doc.heading("texwatch report", 1)
            doc.para(
                f"{len(runs)} run(s); steps compared: "
                f"{', '.join(map(str, chosen)) or 'none'} ({how}); generated "
                f"{doc_json['generated']}."
            )
            readings = []
            for rd in runs:
                ids = sample_ids(rd.run, rd.scalars.spike_steps.tolist())
                causes = stream_causes(rd.streams, chosen, sizes=rd.sizes, thresholds=th)
                causes += rd.scalars.evidence.causes(ids)
                readings.append((rd, ids, causes))
            doc.heading("Probable causes", 2, anchor="causes")
            for rd, _, causes in readings:
                if not causes:
                    doc.raw(f'<p class="ok">{html.escape(rd.label)}: no probable cause fired.</p>')
                for c in causes:
                    doc.cause(c, rd.label)
            jobs: dict[Where, list[RunData]] = {}
            for source, rd in zip(found, runs, strict=True):
                if source.job is not None:
                    jobs.setdefault(source.job, []).append(rd)
            ids_by_label = {rd.label: ids for rd, ids, _ in readings}
            for k, (job, ranks) in enumerate(jobs.items()):
                doc_json.setdefault("jobs", []).append(
                    job_section(doc, job, ranks, ids_by_label, anchor=f"job-{k}")
                )
            for k, (rd, ids, causes) in enumerate(readings):
                bar.set_postfix_str(f"figures {rd.label}"[:40])
                run_json: dict[str, Any] = {
                    "label": rd.label,
                    "name": rd.run.attrs.get("run"),
                    "path": str(rd.path),
                    "schema_version": rd.run.schema_version,
                    "committed": rd.run.committed(),
                    "checkpoint_steps": rd.checkpoints,
                    "config": rd.run.config,
                    "names": rd.names,
                    "causes": [dataclasses.asdict(c) for c in causes],
                }
                if rd.rank is not None:
                    run_json["rank"] = rd.rank
                doc.heading(f"Run: {rd.label}", 2, anchor=f"run-{k}")
                doc.table(
                    ["store", "schema", "scalar rows", "streams", "checkpoints"],
                    [
                        [
                            str(rd.path),
                            rd.run.schema_version,
                            rd.scalars.rows,
                            ", ".join(
                                f"{rd.logged(n, stream=True)} ({int(t['step'].size)} steps)"
                                for n, t in rd.streams.items()
                            )
                            or "—",
                            ", ".join(map(str, rd.checkpoints)) or "—",
                        ]
                    ],
                )
                if rd.run.config:
                    doc.pre(json.dumps(rd.run.config, indent=2, sort_keys=True, default=str))
                sections.loss_section(doc, rd, settings.spike_sigma, ids, run_json)
                if rd.rank is not None:
                    for spike in run_json.get("spikes", []):
                        spike["rank"] = rd.rank
                sections.terms_section(doc, rd, run_json)
                sections.scalars_section(doc, rd, run_json)
                sections.health_section(doc, rd, th, run_json)
                sections.texture_section(doc, rd, th)
                run_json["series"] = sections.series(rd)
                doc_json["runs"].append(run_json)
                bar.update()
            if chosen:
                doc.heading("Checkpoints, runs side by side", 2, anchor="checkpoints")
                sections.summary_section(doc, runs, chosen)
            for step in chosen:
                bar.set_postfix_str(f"step {step}")
                doc_json["checkpoints"].append(
                    sections.checkpoint_section(doc, runs, step, max_images)
                )
                bar.update()
            doc_json["validation"] = sections.validation_section(doc, runs, chosen, max_images)
            doc.heading("Settings", 2, anchor="settings")
            doc.table(["threshold", "value"], list(dataclasses.asdict(th).items()))
            doc.table(["derive setting", "value"], list(doc_json["derive_settings"].items()))
            page = doc.finish("texwatch report")
        (out / "index.html").write_text(page, encoding="utf-8")
        del page
        with (out / "report.json").open("w", encoding="utf-8") as f:
            json.dump(jsonable(doc_json), f, indent=1, allow_nan=False, default=str)
        bar.update()
    finally:
        bar.close()
    return doc_json
