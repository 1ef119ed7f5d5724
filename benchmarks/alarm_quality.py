"""False-positive rate and recall of every texture alarm on a corpus nobody tuned them on.

The corpus (``benchmarks/_alarm_corpus.py``) is built offline from scikit-image's bundled images
and generated noise and textures: good pairs (the same texture, another crop, sharpened, JPEG
q30, brightness, noise, blur, a resize-convolution upsampler, an antialiased downscale),
aperiodic images and noise of every slope (pred == ref and another crop), and the failures each
alarm is for (tiles ×2 and ×½, doubled-period bands, transposed-convolution checkerboards,
nearest-neighbour aliasing), at 256² and 512². Every pair goes through
:func:`texwatch.spectral.texture_metrics` (``ref=`` the reference, ``bands=True``) as texwatchd
computes it, and through the alarm definitions of :mod:`texwatch.alarms`.

Printed:

1. per alarm, at its default threshold: the false-positive rate on every good and aperiodic
   group and the recall on the failure it is for, per size;
2. per alarm, a threshold sweep: the false-positive rate on all good pairs and on all aperiodic
   images, the worst single group, and the recall on its failure — the table the defaults are
   chosen from (the largest recall with both pooled rates ≤ 2 %);
3. every alarm's firing rate on every group (which alarms fire together), and any alarm's;
4. the periodicity gate and f*: f* NaN on white noise, and the FFT and ACF periods against the
   known period of the periodic references and of their ×2 / ×½ rescales;
5. the checkerboard separation: the smallest ConvTranspose energy over the largest
   resize-convolution one;
6. the periodicity gate's threshold (the prominence a peak needs, in dB): f* NaN on a larger
   sample of noise of each slope at each gate, and with ``--gate-sweep`` the whole corpus
   measured again at each gate (any alarm's false positives, the lock's and the bands' recall).
   The default gate is the lowest at which no noise image reads periodic; the sweep sets
   texwatch.spectral's private gate constant, which has no public knob.

Run: ``python benchmarks/alarm_quality.py`` (``--sizes 256`` for a shorter run; ``--gate-sweep``
adds about two minutes per gate and size pair).
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _alarm_corpus as corpus  # noqa: E402  (the corpus beside this script)
from _tables import table as _table  # noqa: E402

from texwatch import alarms, spectral  # noqa: E402
from texwatch.spectral import texture_metrics  # noqa: E402

_BATCH = 16
_BAND = re.compile(r"(?:rows|cols)(\d+)-(\d+)")
_NO_ALARM = ("good/", "aperiodic/")
_GATES_DB = (6.0, 7.0, 8.0, 9.0, 10.0)
_NOISE_IMAGES = {256: 120, 512: 40}  # per slope and size, for the gate's f* NaN rate


@dataclass(frozen=True)
class _Row:
    name: str
    group: str
    size: int
    source: str
    period: float | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class _Alarm:
    name: str
    target: str  # the bad group it is for
    fires: Callable[[_Row, float], bool]
    default: float
    sweep: tuple[float, ...]


_ALARMS = (
    _Alarm(
        "harmonic lock",
        "bad/tiles_x2+bad/tiles_half",
        lambda r, t: alarms.harmonic_lock(r.metrics["tile_scale"], t) is not None,
        alarms.HARMONIC_SCALE,
        (1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8),
    ),
    _Alarm(
        "banding",
        "bad/band_x2",
        lambda r, t: alarms.banding(r.metrics["band_score"], t),
        alarms.BAND_SCORE,
        (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4),
    ),
    _Alarm(
        "aliasing",
        "bad/alias_nearest",
        lambda r, t: alarms.aliasing(r.metrics["alias_score"], t),
        alarms.ALIAS_SHARE,
        (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
    ),
    _Alarm(
        "checkerboard",
        "bad/checkerboard",
        lambda r, t: alarms.checkerboard(r.metrics["checkerboard_energy"], (r.size, r.size), t),
        alarms.CHECKERBOARD,
        (1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
    ),
)


def _group(case: corpus.Case) -> str:
    """The case's group; a band narrower than two periods of its doubled texture is told apart.

    Such a band holds less than one doubled period on either side of its centre: no period
    estimate can read it, so it is reported on its own line instead of in the recall.
    """
    band = _BAND.search(case.name)
    if band is None or case.period is None:
        return case.group
    height = int(band.group(2)) - int(band.group(1))
    return case.group if height >= 4 * case.period else f"{case.group} (< 2 doubled periods)"


def _measure(sizes: Sequence[int], seed: int) -> list[_Row]:
    rows: list[_Row] = []
    pending: list[corpus.Case] = []

    def flush() -> None:
        pred = torch.cat([c.pred for c in pending])
        ref = torch.cat([c.ref for c in pending])
        out = texture_metrics(pred, ref=ref, bands=True)
        for i, c in enumerate(pending):
            values = {k: float(v[i]) for k, v in out.items()}
            rows.append(_Row(c.name, _group(c), c.size, c.source, c.period, values))
        pending.clear()

    for case in corpus.cases(tuple(sizes), seed=seed):
        if pending and pending[0].size != case.size:
            flush()
        pending.append(case)
        if len(pending) == _BATCH:
            flush()
    if pending:
        flush()
    return rows


def _rate(hits: Iterable[bool]) -> tuple[int, int]:
    flags = list(hits)
    return sum(flags), len(flags)


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:5.1f} % ({k}/{n})" if n else "—"


def _in_target(row: _Row, target: str) -> bool:
    return row.group in target.split("+")


def _defaults(rows: Sequence[_Row], sizes: Sequence[int]) -> None:
    print("## 1. Each alarm at its default threshold\n")
    quiet = sorted({r.group for r in rows if r.group.startswith(_NO_ALARM)})
    for alarm in _ALARMS:
        lines = []
        targets = alarm.target.split("+")
        shown = sorted({r.group for r in rows if r.group.startswith(tuple(targets))})
        for group in [*quiet, *shown]:
            cells = [group]
            for size in sizes:
                sel = [r for r in rows if r.group == group and r.size == size]
                cells.append(_pct(*_rate(alarm.fires(r, alarm.default) for r in sel)))
            lines.append(cells)
        kind = [
            "false positives" if g.startswith(_NO_ALARM) else "recall" if g in targets else "—"
            for g, *_ in lines
        ]
        lines = [[k, *line] for k, line in zip(kind, lines, strict=True)]
        print(f"### {alarm.name} (threshold {alarm.default:g})\n")
        _table(["reads", "group", *(f"{s}²" for s in sizes)], lines)


def _sweeps(rows: Sequence[_Row], sizes: Sequence[int]) -> None:
    print(
        "## 2. Threshold sweeps: false positives on all good pairs, on all aperiodic images and "
        "noise, the worst single group, and the recall on the failure\n"
    )
    quiet = sorted({r.group for r in rows if r.group.startswith(_NO_ALARM)})
    for alarm in _ALARMS:
        lines = []
        for t in alarm.sweep:
            worst, worst_group = 0.0, "—"
            for group in quiet:
                k, n = _rate(alarm.fires(r, t) for r in rows if r.group == group)
                if n and k / n > worst:
                    worst, worst_group = k / n, group
            cells = [f"{t:g}" + (" (default)" if t == alarm.default else "")]
            for prefix in _NO_ALARM:
                sel = [r for r in rows if r.group.startswith(prefix)]
                cells.append(_pct(*_rate(alarm.fires(r, t) for r in sel)))
            cells.append(f"{100 * worst:.1f} % {worst_group}")
            for size in sizes:
                sel = [r for r in rows if _in_target(r, alarm.target) and r.size == size]
                cells.append(_pct(*_rate(alarm.fires(r, t) for r in sel)))
            lines.append(cells)
        print(f"### {alarm.name}: recall on {alarm.target}\n")
        header = ["threshold", "FP good pairs", "FP aperiodic", "worst group"]
        _table([*header, *(f"recall {s}²" for s in sizes)], lines)


def _matrix(rows: Sequence[_Row]) -> None:
    print(
        "## 3. Firing rate of every alarm on every group (both sizes), and of any of them: "
        "what a person paged by texwatch would see\n"
    )
    lines = []
    present = {r.group for r in rows}
    groups = [g for g in corpus.GROUPS if g in present]
    for group in [*groups, *sorted(present - set(groups))]:
        sel = [r for r in rows if r.group == group]
        cells = [group, str(len(sel))]
        for alarm in _ALARMS:
            k, n = _rate(alarm.fires(r, alarm.default) for r in sel)
            cells.append(f"{100 * k / n:5.1f} %")
        k, n = _rate(any(a.fires(r, a.default) for a in _ALARMS) for r in sel)
        cells.append(f"{100 * k / n:5.1f} %")
        lines.append(cells)
    _table(["group", "cases", *(a.name for a in _ALARMS), "any"], lines)


def _periods(rows: Sequence[_Row]) -> None:
    print("## 4. Periodicity gate and periods\n")
    lines = []
    by_source: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        if r.group == "aperiodic/same":
            by_source[r.source].append(r)
    for source, sel in sorted(by_source.items()):
        nan = sum(math.isnan(r.metrics["fundamental_radius_bin"]) for r in sel)
        lines.append([source, _pct(nan, len(sel))])
    _table(["aperiodic source (pred == ref)", "f* NaN"], lines)

    lines = []
    scale = {"good/same": 1.0, "bad/tiles_x2": 2.0, "bad/tiles_half": 0.5}
    for group, factor in scale.items():
        by: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            if r.group != group or r.period is None:
                continue
            truth = r.period * factor
            fft = r.size / r.metrics["fundamental_radius_bin"]
            acf = r.metrics["acf_first_peak_radius_bin"]
            by[r.source.split("/")[0]].append((fft / truth, acf / truth))
        for source, pairs in sorted(by.items()):
            fft_ok = sum(abs(a - 1) <= 0.03 for a, _ in pairs)
            acf_ok = sum(abs(b - 1) <= 0.03 for _, b in pairs)
            lines.append([group, source, _pct(fft_ok, len(pairs)), _pct(acf_ok, len(pairs))])
    _table(["group", "source", "FFT period within 3 %", "ACF period within 3 %"], lines)


def _separation(rows: Sequence[_Row]) -> None:
    print("## 5. Checkerboard separation\n")
    bad = [r.metrics["checkerboard_energy"] for r in rows if r.group == "bad/checkerboard"]
    good = [r.metrics["checkerboard_energy"] for r in rows if r.group == "control/resize_conv"]
    natural = [r.metrics["checkerboard_energy"] for r in rows if r.group.startswith("aperiodic/")]
    lines = [
        ["ConvTranspose k3/k4 s2 (min)", f"{min(bad):.3g}"],
        ["resize-convolution (max)", f"{max(good):.3g}"],
        ["aperiodic images and noise (max)", f"{max(natural):.3g}"],
        ["separation min(ConvTranspose) / max(resize-conv)", f"{min(bad) / max(good):.0f}×"],
    ]
    _table(["checkerboard_energy", "value"], lines)


def _default_gate_db() -> float:
    return 10 * math.log10(spectral._PEAK_PROMINENCE)


def _gate(db: float) -> mock._patch[float]:
    """The periodicity gate set to ``db`` for the duration of a ``with`` block."""
    return mock.patch.object(spectral, "_PEAK_PROMINENCE", 10 ** (db / 10))


def _noise_nan(sizes: Sequence[int], seed: int, db: float) -> list[str]:
    """f* NaN on fresh noise of every slope at gate ``db``: one cell per slope, sizes pooled."""
    cells = []
    for kind in corpus.NOISES:
        nan = total = 0
        for size in sizes:
            rng = np.random.default_rng([seed, size, corpus.NOISES.index(kind), 6])
            images = [corpus.noise(kind, size, rng) for _ in range(_NOISE_IMAGES.get(size, 40))]
            for i in range(0, len(images), _BATCH):
                x = torch.from_numpy(np.stack(images[i : i + _BATCH]))[:, None]
                with _gate(db):
                    nan += int(texture_metrics(x)["periodic"].eq(0).sum())
            total += len(images)
        cells.append(_pct(nan, total))
    return cells


def _gate_sweep(rows: Sequence[_Row], sizes: Sequence[int], seed: int, corpus_too: bool) -> None:
    default = _default_gate_db()
    print(
        "## 6. Periodicity gate: f* NaN on fresh noise "
        f"({', '.join(f'{_NOISE_IMAGES.get(s, 40)} at {s}²' for s in sizes)} per slope)"
        + (", and the corpus measured again at each gate" if corpus_too else "")
        + "\n"
    )
    lines = []
    for db in sorted({*_GATES_DB, default}):
        cells = [f"{db:g} dB" + (" (default)" if math.isclose(db, default) else "")]
        cells += _noise_nan(sizes, seed, db)
        if corpus_too:
            if math.isclose(db, default):
                at = rows
            else:
                with _gate(db):
                    at = _measure(sizes, seed)
            for prefix in _NO_ALARM:
                sel = [r for r in at if r.group.startswith(prefix)]
                cells.append(_pct(*_rate(any(a.fires(r, a.default) for a in _ALARMS) for r in sel)))
            for alarm in _ALARMS[:2]:
                for size in sizes:
                    sel = [r for r in at if _in_target(r, alarm.target) and r.size == size]
                    cells.append(_pct(*_rate(alarm.fires(r, alarm.default) for r in sel)))
        lines.append(cells)
    header = ["gate", *(f"f* NaN {k.removeprefix('noise_')}" for k in corpus.NOISES)]
    if corpus_too:
        header += ["any alarm: good pairs", "any alarm: aperiodic"]
        header += [f"{a.name} {s}²" for a in _ALARMS[:2] for s in sizes]
    _table(header, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--gate-sweep",
        action="store_true",
        help="measure the whole corpus again at every periodicity gate in section 6",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = _measure(args.sizes, args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"# Alarm quality: {len(rows)} cases, sizes {args.sizes}, seed {args.seed}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); built and measured in {wall:.0f} s wall, {cpu:.0f} s CPU\n"
    )
    _defaults(rows, args.sizes)
    _sweeps(rows, args.sizes)
    _matrix(rows)
    _periods(rows)
    _separation(rows)
    _gate_sweep(rows, args.sizes, args.seed, args.gate_sweep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
