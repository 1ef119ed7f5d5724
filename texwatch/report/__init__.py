"""``texwatch report``: the post-hoc report across runs and checkpoints (HTML, PDF and JSON).

For each run it shows the loss with its EMA and spikes (with the sample ids of each spiking
batch), every loss term unweighted and weighted and its weight over time, dead terms, stream
health and the texture metrics over time; for each selected step, all runs side by side: sample
grids, spectra with f*, 2f*, f*/2 and the reference marked, and the metric table; fixed validation
images (``val/*`` streams) over time; and the *probable causes*, texwatch's readings of those
numbers, each with the evidence that fired it and the threshold a user can change.

The numbers come from the derivation pipeline (:mod:`texwatch.derive`): what the daemon stored
under ``derived/`` plus, for rows it has not derived, the same pipeline run in memory. Image
streams hold one row per item; a step's values are the mean over the items of its latest
``record()`` call (``min``/``max`` over them, ``nonfinite`` summed), so a resumed run shows one
value per step. The scalar table (a row per training step) is derived and read in chunks, so the
report's memory does not grow with the run's length; a long run's figures and JSON series hold
its decimated table: every spike and warning, and each bucket's extremes of every column.

Outputs in ``OUT/``: ``index.html`` (self-contained: figures embedded as PNG, every string that
came from a store HTML-escaped), ``report.pdf`` (the same figures and tables, through matplotlib's
PdfPages) and ``report.json`` (every number shown, NaN as null).

The package, one concept a module: ``_load`` opens, derives and indexes runs; ``_decimate`` thins
a long table for drawing; ``_document`` renders HTML and PDF; ``_sections`` lays out each part;
``_build`` writes the report; ``_cli`` is the command line. The thresholds and probable causes
are :mod:`texwatch.causes`, shared with ``texwatch diagnose``.
"""

from __future__ import annotations

from texwatch._steptable import step_table
from texwatch.causes import ProbableCause, ReportError, Thresholds, probable_causes

from ._build import build_report
from ._cli import add_parser, run
from ._sections import FFT_PERIOD_KEY, HEALTH_KEYS, TEXTURE_KEYS

__all__ = [
    "FFT_PERIOD_KEY",
    "HEALTH_KEYS",
    "TEXTURE_KEYS",
    "ProbableCause",
    "ReportError",
    "Thresholds",
    "add_parser",
    "build_report",
    "probable_causes",
    "run",
    "step_table",
]
