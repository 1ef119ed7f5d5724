"""Loading runs for the report: open, derive, and index each run by step in bounded memory.

Image streams hold one row per item, a few per image step: their derived columns are kept whole,
one row per step (:func:`texwatch.report.step_table`). The scalar table holds a row per training
step, millions of them: it is derived and read in chunks of :data:`CHUNK_ROWS` rows, each chunk
read once, in step order, by a :class:`ScalarDigest` that keeps only what the report shows of it
(the loss readings' evidence, totals, the last row, the flagged steps and a decimated table for
the figures and the JSON series). Only a resumed run's ``step`` column (8 bytes a row) is held
whole, to know which row of a repeated step is the latest.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texwatch._location import Where
from texwatch._steptable import step_table
from texwatch.causes import ReportError, ScalarEvidence, Thresholds
from texwatch.errors import TexwatchError

from ._decimate import BUCKETS, KEEP_ALL, Decimator

if TYPE_CHECKING:
    from texwatch.derive import Deriver, DeriveSettings
    from texwatch.store import Run

__all__ = [
    "CHUNK_ROWS",
    "Logged",
    "RunData",
    "ScalarDigest",
    "check_requested",
    "labels",
    "load_run",
    "open_store",
    "select_steps",
]

CHUNK_ROWS = 32768
"""Scalar rows derived and read at once."""

_PLAN_ROWS = 1 << 17  # step rows read at once to check that steps increase
_DERIVED_BASE = ("loss", "loss_ema", "loss_zscore", "spike", "spike_rule", "warn")
_TERM_FLAGS = ("share/", "dead/", "term_nonfinite/")
_STREAM_ORDER = {"pred": 0, "target": 1, "latents": 2}


@dataclass
class Logged:
    """One logged scalar's values over the run: how many steps have one, its range, its last."""

    steps: int = 0
    low: float = math.nan
    high: float = math.nan
    last_step: int | None = None
    last: float = math.nan

    def update(self, steps: np.ndarray, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.any():
            return
        given = values[finite]
        self.steps += int(given.size)
        self.low = float(np.fmin(self.low, given.min()))
        self.high = float(np.fmax(self.high, given.max()))
        self.last_step, self.last = int(steps[finite][-1]), float(given[-1])


class ScalarDigest:
    """What the report shows of a run's per-step scalar table, read once in step-ordered chunks.

    Args:
        rows: the table's rows (one per step), to size the decimation's buckets.
        thresholds: where the loss readings fire.
        logged: the columns ``record(scalars=...)`` wrote, summarized in :attr:`logged`.
        buckets, keep_all: the decimation of :attr:`plot` (:class:`Decimator`).
    """

    def __init__(
        self,
        rows: int,
        thresholds: Thresholds | None = None,
        logged: Sequence[str] = (),
        *,
        buckets: int = BUCKETS,
        keep_all: int = KEEP_ALL,
    ) -> None:
        self.logged = {column: Logged() for column in logged}
        """Each logged scalar's steps, range and last value."""
        self.evidence = ScalarEvidence(thresholds)
        """The loss readings' evidence: spikes with their context, dead and non-finite terms."""
        self.rows = 0
        """Rows read (steps)."""
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.last: dict[str, float] = {}
        """Each column's value at the last step."""
        self.loss_min = math.nan
        self.loss_max = math.nan
        self.terms: list[str] = []
        """Loss terms (``term/<name>`` columns), by name."""
        self._decimator = Decimator(rows, buckets=buckets, keep_all=keep_all)
        self._warn: list[np.ndarray] = []
        self._spikes: list[np.ndarray] = []
        self._checkpoints: list[np.ndarray] = []
        self._plot: dict[str, np.ndarray] | None = None

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Read the next rows, ordered by step after the rows read before."""
        steps = np.asarray(chunk["step"], dtype=np.int64)
        n = steps.size
        if n == 0:
            return
        cols = dict(chunk)
        terms = sorted(k[len("term/") :] for k in cols if k.startswith("term/"))
        for t in terms:  # what each term adds to the total: plotted and in the JSON series
            weight = cols.get(f"weight/{t}")
            value = np.asarray(cols[f"term/{t}"], dtype=np.float64)
            cols[f"weighted/{t}"] = value * (1.0 if weight is None else weight)
        self.terms = sorted(set(self.terms) | set(terms))
        nan = np.full(n, np.nan)
        spike = np.asarray(cols.get("spike", nan)) > 0
        warn = np.asarray(cols.get("warn", nan)) > 0
        self.evidence.update(cols)
        self._decimator.update(cols, spike | warn)
        self._spikes.append(steps[spike])
        self._warn.append(steps[warn])
        checkpoint = cols.get("checkpoint")
        if checkpoint is not None:
            self._checkpoints.append(steps[np.asarray(checkpoint) == 1.0])
        if self.first_step is None:
            self.first_step = int(steps[0])
        self.last_step = int(steps[-1])
        self.last.update({k: float(v[-1]) for k, v in cols.items() if k != "step"})
        for column, summary in self.logged.items():
            if column in cols:
                summary.update(steps, np.asarray(cols[column], dtype=np.float64))
        loss = np.asarray(cols.get("loss", nan), dtype=np.float64)
        finite = loss[np.isfinite(loss)]
        if finite.size:
            self.loss_min = float(np.fmin(self.loss_min, finite.min()))
            self.loss_max = float(np.fmax(self.loss_max, finite.max()))
        self.rows += n

    def finish(self) -> ScalarDigest:
        """Close the reading (the last spikes' context, the decimated table)."""
        if self._plot is None:
            self.evidence.finish()
            self._plot = self._decimator.result()
        return self

    @property
    def plot(self) -> dict[str, np.ndarray]:
        """The decimated table: each bucket's extreme rows and every spike and warning."""
        return self.finish()._plot or {"step": np.zeros(0, np.int64)}

    @property
    def spike_steps(self) -> np.ndarray:
        return _joined(self._spikes)

    @property
    def warn_steps(self) -> np.ndarray:
        return _joined(self._warn)

    @property
    def checkpoints(self) -> list[int]:
        """Steps whose latest row was recorded with ``checkpoint=True``."""
        return _joined(self._checkpoints).tolist()

    @property
    def decimated(self) -> bool:
        """Whether :attr:`plot` holds fewer rows than the table."""
        return self.plot["step"].size < self.rows


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass
class RunData:
    """One run as the report shows it."""

    label: str  # for HTML (escaped there) and JSON
    path: Where
    run: Run
    scalars: ScalarDigest
    streams: dict[str, dict[str, np.ndarray]]
    sizes: dict[str, tuple[int, int]]
    checkpoints: list[int] = field(default_factory=list)
    rank: int | None = None  # a rank of a per-rank job; None for a run of its own
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # the run's Run.names()

    @property
    def shown(self) -> str:
        """The label as figures draw it (``$`` escaped for matplotlib)."""
        from texwatch.plots import literal

        return literal(self.label)

    def logged(self, name: str, *, stream: bool = False) -> str:
        """A scalar column, or a stream, by the key it was logged under
        (:func:`texwatch.store.logged_name`)."""
        from texwatch.store import logged_name

        return logged_name(self.names, name, stream=stream)

    def is_validation(self, stream: str) -> bool:
        """Whether ``stream`` holds fixed validation inputs: logged under ``val/``."""
        return self.logged(stream, stream=True).startswith("val/")


def open_store(path: Where) -> Run:
    """The run at ``path``, refused with a :class:`ReportError` when unreadable or empty."""
    from texwatch.store import open_run

    try:
        run = open_run(path)
        committed = run.committed()
    except (OSError, ValueError) as err:
        raise ReportError(str(err)) from err
    if not any(committed.values()):
        raise ReportError(f"run store {str(path)!r} has no committed rows")
    return run


def load_run(
    path: Where,
    run: Run,
    label: str,
    settings: DeriveSettings,
    thresholds: Thresholds | None = None,
    *,
    chunk_rows: int | None = None,
    rank: int | None = None,
) -> RunData:
    """Derive a run (stored ``derived/`` + the rest in memory) and index it by step.

    ``chunk_rows`` scalar rows are derived and read at once (default :data:`CHUNK_ROWS`);
    ``rank``: the run is that rank of a per-rank job.

    Raises:
        ReportError: a table that cannot be read or derived.
    """
    chunk_rows = chunk_rows or CHUNK_ROWS
    try:
        streams = _derive_streams(run, settings)
        digest = _read_scalars(run, settings, thresholds, chunk_rows)
        sizes = {name: tuple(int(s) for s in run.stream_spec(name).shape[1:]) for name in streams}
    except (OSError, ValueError, KeyError, TexwatchError) as err:
        raise ReportError(f"cannot derive run {str(path)!r}: {err}") from err
    return RunData(
        label=label,
        path=path,
        run=run,
        scalars=digest,
        streams=streams,
        sizes=sizes,  # type: ignore[arg-type]
        checkpoints=digest.checkpoints,
        rank=rank,
        names=run.names(),
    )


def _derive_streams(run: Run, settings: DeriveSettings) -> dict[str, dict[str, np.ndarray]]:
    """Every image stream's derived columns, one row per step."""
    from texwatch.derive import derive_all

    derived = derive_all(run.path, settings, tables=run.stream_names())
    names = sorted(derived, key=lambda n: (_STREAM_ORDER.get(n, 3), n))
    return {name: step_table(derived[name]) for name in names}


# --------------------------------------------------------------------------------------------
# The scalar table, in chunks


def _read_scalars(
    run: Run, settings: DeriveSettings, thresholds: Thresholds | None, chunk_rows: int
) -> ScalarDigest:
    """Derive the scalar table chunk by chunk and read it, in step order, into a digest."""
    from texwatch.store import ITEMS, SCALARS

    committed = run.committed()
    n = int(committed.get(SCALARS, 0))
    keep, order, rows = _row_plan(run, n)
    columns, logged = _scalar_columns(run)
    digest = ScalarDigest(rows, thresholds, logged)
    if n == 0:
        return digest.finish()
    chunks = _scalar_chunks(run, settings, n, int(committed.get(ITEMS, 0)), chunk_rows)
    if order is None:
        for start, chunk in chunks:
            digest.update(_kept(chunk, keep, start, columns))
        return digest.finish()
    with _Spool(columns) as spool:
        for start, chunk in chunks:
            spool.write(_kept(chunk, keep, start, columns))
        for a in range(0, order.size, chunk_rows):
            digest.update(spool.read(order[a : a + chunk_rows]))
    return digest.finish()


def _row_plan(run: Run, n: int) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Which of the first ``n`` scalar rows are their step's latest, and in which order to read
    them: (a mask of the kept rows or None for all, their rows' positions among the kept rows in
    step order or None when that is write order, how many are kept).

    A run recorded once has increasing steps: that is checked a block at a time, holding
    nothing. A resumed run repeats steps; its whole ``step`` column (8 bytes a row) is read.
    """
    from texwatch.store import latest_rows

    last = None
    for a in range(0, n, _PLAN_ROWS):
        steps = run.scalars(a, min(a + _PLAN_ROWS, n), latest_wins=False, names=[])["step"]
        if steps.size and (
            (last is not None and steps[0] <= last) or bool(np.any(steps[1:] <= steps[:-1]))
        ):
            break
        last = steps[-1] if steps.size else last
    else:
        return None, None, n
    steps = run.scalars(0, n, latest_wins=False, names=[])["step"]
    latest = latest_rows(steps)
    keep = np.zeros(steps.size, dtype=bool)
    keep[latest] = True
    if bool(np.all(latest[1:] > latest[:-1])):
        return keep, None, latest.size
    # the rows of an earlier attempt outlive a later one that stopped sooner: they are read
    # back through a spool, in step order
    return keep, np.searchsorted(np.flatnonzero(keep), latest), latest.size


def _scalar_columns(run: Run) -> tuple[list[str], list[str]]:
    """The joined table's columns (derived ones, sorted, then the raw ones they lack), and the
    raw columns of ``record(scalars=...)`` among them."""
    from texwatch.store import SCALARS, is_user_scalar

    raw = run.scalar_names()
    terms = [c[len("term/") :] for c in raw if c.startswith("term/")]
    derived = set(_DERIVED_BASE) | {f"{f}{t}" for f in _TERM_FLAGS for t in terms}
    if run.derived_committed().get(SCALARS):
        derived |= set(run.derived_columns(SCALARS)) - {"step"}
    kept = [c for c in raw if c not in derived and c != "time"]
    logged = [c for c in kept if is_user_scalar(c)]
    return ["step", *sorted(derived), *kept], logged


def _kept(
    chunk: Mapping[str, np.ndarray], keep: np.ndarray | None, start: int, columns: Sequence[str]
) -> dict[str, np.ndarray]:
    """The chunk's rows that are their step's latest, with exactly ``columns`` (NaN if missing)."""
    n = len(chunk["step"])
    mask = None if keep is None else keep[start : start + n]
    if mask is not None and mask.all():
        mask = None
    out = {}
    for name in columns:
        col = chunk.get(name)
        col = np.full(n, np.nan) if col is None else np.asarray(col)
        out[name] = col if mask is None else col[mask]
    return out


def _scalar_chunks(
    run: Run, settings: DeriveSettings, rows: int, items: int, chunk_rows: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row, derived and raw columns joined) of each chunk of the first ``rows`` scalar
    rows, in write order: the rows texwatchd stored under ``derived/``, then the rest derived
    here by a :class:`~texwatch.derive.Deriver` resumed from the daemon's cursor and state."""
    from texwatch.derive import Deriver
    from texwatch.store import ITEMS, SCALARS

    stored = min(int(run.derived_committed().get(SCALARS, 0)), rows)
    cursor, state = run.derived_cursor(), run.derived_state()
    if cursor.get(SCALARS, 0) != stored:  # a cursor that disagrees with the rows: derive anew
        stored, cursor, state = 0, {}, None
    for a in range(0, stored, chunk_rows):
        b = min(a + chunk_rows, stored)
        yield a, _joined_columns(run.derived(SCALARS, a, b), run, a, b)
    deriver = Deriver(settings, cursor=cursor, state=state)
    committed = {SCALARS: rows, ITEMS: items}
    while (start := deriver.cursor.get(SCALARS, 0)) < rows:
        batch = deriver.advance(run, committed, chunk_rows)
        table = batch.tables.get(SCALARS) if batch is not None else None
        if table is None:
            break
        yield start, _joined_columns(table, run, start, deriver.cursor[SCALARS])
    for error in deriver.stream_errors().values():
        raise error
    _check_derived(deriver, rows)


def _check_derived(deriver: Deriver, rows: int) -> None:
    from texwatch.store import SCALARS

    done = deriver.cursor.get(SCALARS, 0)
    if done < rows:
        raise ReportError(f"derived {done} of {rows} scalar rows")


def _joined_columns(
    derived: Mapping[str, np.ndarray], run: Run, start: int, stop: int
) -> dict[str, np.ndarray]:
    """Derived rows ``[start, stop)`` with the raw columns they lack (``lr``, ``term/``...)."""
    cols = dict(derived)
    for name, col in run.scalars(start, stop, latest_wins=False).items():
        if name not in cols and name != "time":
            cols[name] = col
    return cols


class _Spool:
    """Kept rows written to temporary files in write order, read back in step order."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="texwatch-report-")
        self._paths = {c: Path(self._dir.name) / f"{k}.bin" for k, c in enumerate(columns)}
        self._files = {c: p.open("wb") for c, p in self._paths.items()}
        self._rows = 0

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()
        self._dir.cleanup()

    @staticmethod
    def _dtype(column: str) -> type:
        return np.int64 if column == "step" else np.float64

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        for name, f in self._files.items():
            np.ascontiguousarray(chunk[name], dtype=self._dtype(name)).tofile(f)
        self._rows += len(chunk["step"])

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The spooled rows at positions ``rows``."""
        out = {}
        for name, path in self._paths.items():
            self._files[name].flush()
            mapped = np.memmap(path, dtype=self._dtype(name), mode="r", shape=(self._rows,))
            out[name] = np.array(mapped[rows])
            del mapped  # unmapped: its pages leave the process
        return out


# --------------------------------------------------------------------------------------------
# Which runs and steps


def labels(runs: Sequence[Run], paths: Sequence[Where], ranked: Sequence[bool]) -> list[str]:
    """Display names: the run's name, else the folder's, and ``rank <r>`` for a rank of a
    per-rank job (``ranked``); repeats get ``#2``, ``#3``."""
    out: list[str] = []
    for run, path, rank in zip(runs, paths, ranked, strict=True):
        name = run.attrs.get("run")
        base = str(name) if name not in (None, "") else path.stem
        if rank:
            base = f"{base} rank {run.rank}"
        label, k = base, 2
        while label in out:
            label, k = f"{base} #{k}", k + 1
        out.append(label)
    return out


def check_requested(
    runs: Sequence[Run], names: Sequence[str], steps: Sequence[int] | None, checkpoints: bool
) -> list[int] | None:
    """The steps given with ``--steps`` or ``--checkpoints``, checked against the store before
    anything is derived (so a typo fails in a second, not after a long derivation)."""
    if steps:
        for run, label in zip(runs, names, strict=True):
            have = (
                run.scalars(names=[], latest_wins=False)["step"]
                if run.committed().get("scalars")
                else np.zeros(0, np.int64)
            )
            found = np.isin(np.asarray(steps, dtype=np.int64), have)
            for step, hit in zip(steps, found, strict=True):
                if hit or any(run.stream_at(n, [step])[0].size for n in run.stream_names()):
                    continue
                span = f"; its scalar steps run {have.min()}..{have.max()}" if have.size else ""
                raise ReportError(f"step {step} is not in run {label!r} ({str(run.path)!r}{span})")
        return sorted(set(steps))
    if checkpoints:
        found_steps = sorted({s for run in runs for s in run.checkpoint_steps()})
        if not found_steps:
            raise ReportError(
                "--checkpoints: no run marks checkpoint steps (record(..., checkpoint=True)); "
                "give --steps instead"
            )
        return found_steps
    return None


def select_steps(runs: Sequence[RunData], every: int | None) -> tuple[list[int], str]:
    """The steps compared without ``--steps``/``--checkpoints``, and how they were chosen."""
    image_steps = sorted({int(s) for rd in runs for t in rd.streams.values() for s in t["step"]})
    if every is not None:
        chosen = [s for s in image_steps if s % every == 0]
        if not chosen:
            raise ReportError(f"--every {every}: no image step is a multiple of {every}")
        return chosen, f"--every {every}"
    marked = sorted({s for rd in runs for s in rd.checkpoints})
    if marked:
        return marked, "recorded checkpoints"
    if not image_steps:
        return [], "no image streams"
    picks = np.unique(np.linspace(0, len(image_steps) - 1, num=min(6, len(image_steps))).round())
    return [image_steps[int(i)] for i in picks], "up to 6 evenly spaced image steps"


def sample_ids(run: Run, steps: Sequence[int]) -> dict[int, list[int]]:
    """The sample ids of each step's batch (its latest ``record()`` call), by step."""
    out: dict[int, list[int]] = {}
    for step in steps:
        batch: Mapping[str, Any] = run.batch(int(step))
        out[int(step)] = [int(x) for x in batch.get("sample_id", []) if x >= 0]
    return out
