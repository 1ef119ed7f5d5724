"""``texwatch diagnose`` end to end against the reference diagnosis script, on the same images.

Six 512×512 images are written as PNG files: scikit-image's bundled brick, grass, gravel and camera
(grey) and astronaut (RGB), and a generated RGB grating with a transposed-convolution
checkerboard. Each repeat runs, in alternating order so that load drift touches both alike:

- the reference: ``run_diagnostics_from_tensors`` of ``Diagnosis/diag_tiling.py`` from the
  Gainward777/Texture_Loss repository (the script texwatch diagnose grew from, kept outside
  this repository: its path is the required ``--reference``), on each image loaded with the
  script's own ``load_rgb``: its spectra, ACF, local period map, banding, shift and resize
  checks, seven PNG figures and a JSON summary per image;
- ``texwatch diagnose`` on the six files: metrics with the band scan, value statistics,
  periodicity, Sobel anomaly regions, the difference heatmap against the first image, the probable
  causes, one 2 × 3-panel PNG per image and ``diagnose.json``;
- ``texwatch diagnose --max-images 0``: the same without figures, for scale.

Both sides run in this process after one warm-up run each (imports, font caches); median and p99
of the wall and process CPU time per run are printed, with each row's ratio to the reference's
median. texwatch keeps its figure (axes and artists) from call to call, but each call starts
with nothing kept of what earlier calls drew (legends, text layouts and glyphs, image pixel
picks): repeating the same six images times each call's own work.

A second table times the connected components of a 512×512 mortar-grid mask (running-bond
bricks, the mortar one region spanning the image, every brick one region): ``scipy.ndimage.label``
+ ``find_objects`` as texwatch now computes them, beside the repeated 3×3 max-pool texwatch used
before (51.6 s in issue #16, quoted; ``--old-components`` measures it here, once).

Needs scipy, scikit-image and matplotlib (``pip install -e '.[report,bench]'``).

    python benchmarks/diagnose_speed.py --reference /tmp/diag_tiling.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table  # noqa: E402

ISSUE_OLD_COMPONENTS_S = 51.6
"""Issue #16: the repeated 3×3 max-pool on a 512² mortar-grid mask."""

SIZE = 512


def _images(folder: Path) -> list[Path]:
    """Write the six test images as 8-bit PNG files; return their paths."""
    from PIL import Image
    from skimage import data

    out = []
    for name, arr in (
        ("brick", data.brick()),
        ("grass", data.grass()),
        ("gravel", data.gravel()),
        ("camera", data.camera()),
        ("astronaut", data.astronaut()),
        ("checker", _checker_grating()),
    ):
        assert arr.shape[:2] == (SIZE, SIZE), (name, arr.shape)
        path = folder / f"{name}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def _checker_grating() -> np.ndarray:
    """RGB crossed gratings of period 16 px at 30° with a ±0.12 (-1)^(x+y) checkerboard."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    t = np.radians(30.0)
    img = 0.5 + 0.2 * np.cos(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / 16.0)
    img += 0.2 * np.cos(2 * np.pi * (-xx * np.sin(t) + yy * np.cos(t)) / 16.0)
    img += 0.12 * (1 - 2 * ((xx + yy) % 2))
    img += 0.02 * np.random.default_rng(0).standard_normal(img.shape)
    rgb = np.stack([img, 0.9 * img + 0.05, 0.8 * img + 0.1], axis=2)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _reference(path: Path) -> ModuleType:
    """Import the reference script from its path (matplotlib on the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    spec = importlib.util.spec_from_file_location("diag_tiling_reference", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    if not hasattr(module, "run_diagnostics_from_tensors"):
        raise SystemExit(f"--reference {str(path)!r} has no run_diagnostics_from_tensors")
    return module


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _mortar_grid(size: int = SIZE, brick: tuple[int, int] = (24, 56), mortar: int = 4):
    """A running-bond wall: True on the mortar (one region), False on each brick."""
    bh, bw = brick
    mask = np.ones((size, size), dtype=bool)
    for row, y in enumerate(range(0, size, bh + mortar)):
        shift = 0 if row % 2 == 0 else -(bw + mortar) // 2
        for x in range(shift, size, bw + mortar):
            mask[y : y + bh, max(x, 0) : max(x + bw, 0)] = False
    return mask


def _old_components(hot: torch.Tensor) -> torch.Tensor:
    """texwatch's connected components before issue #16: every pixel takes its 3×3 neighbourhood's
    largest label until nothing changes (a region's label crosses it one pixel per pass)."""
    import torch.nn.functional as F

    b, h, w = hot.shape
    seeds = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, h, w)
    labels = torch.where(hot, seeds, torch.zeros((), dtype=torch.float64))
    for _ in range(h * w):
        grown = F.max_pool2d(labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        grown = torch.where(hot, grown, labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def _stats(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="path to Diagnosis/diag_tiling.py of Gainward777/Texture_Loss (kept outside the repo)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    parser.add_argument(
        "--old-components",
        action="store_true",
        help="also time the old max-pool components once (about a minute)",
    )
    args = parser.parse_args()
    if not args.reference.is_file():
        raise SystemExit(f"--reference {str(args.reference)!r} does not exist")
    torch.set_num_threads(args.threads)

    from texwatch._components import regions
    from texwatch._memory import retain_freed_memory
    from texwatch.diagnose import diagnose

    retain_freed_memory()  # as the texwatch command does
    ref = _reference(args.reference)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = _images(root)

        def reference() -> None:
            out = root / "reference"
            for i, path in enumerate(paths):
                x = ref.load_rgb(str(path))[None]
                ref.run_diagnostics_from_tensors(x, None, str(out / f"{i}_{path.stem}"))

        def texwatch_all() -> None:
            diagnose(paths, report_dir=root / "texwatch")

        def texwatch_numbers() -> None:
            diagnose(paths, report_dir=root / "numbers", max_images=0)

        runs = {
            "reference `run_diagnostics_from_tensors` (7 PNG + JSON per image)": reference,
            "texwatch `diagnose` (1 PNG per image + JSON)": texwatch_all,
            "texwatch `diagnose --max-images 0` (JSON only)": texwatch_numbers,
        }
        for fn in runs.values():  # warm-up: imports, font and glyph caches
            fn()
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        load0 = os.getloadavg()[0]
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                w, c = _timed(runs[name])
                wall[name].append(w)
                cpu[name].append(c)
        load1 = os.getloadavg()[0]
        figures = len(list((root / "texwatch").glob("*.png")))

    base_wall = float(np.median(wall[next(iter(runs))]))
    base_cpu = float(np.median(cpu[next(iter(runs))]))
    print(
        f"diagnose end to end, {len(paths)} images {SIZE}×{SIZE} ({figures} texwatch figures), "
        f"{args.repeats} repeats interleaved after one warm-up each; torch threads "
        f"{args.threads}; {os.cpu_count()} CPUs, load average {load0:.1f} → {load1:.1f}; "
        f"Python {platform.python_version()}, torch {torch.__version__}\n"
    )
    lines = []
    for name in runs:
        wm, wp = _stats(wall[name])
        cm, cp = _stats(cpu[name])
        lines.append(
            [
                name,
                f"{wm:.2f}",
                f"{wp:.2f}",
                f"{cm:.2f}",
                f"{cp:.2f}",
                f"{base_wall / wm:.2f}",
                f"{base_cpu / cm:.2f}",
            ]
        )
    table(
        (
            "6 images 512²",
            "wall median s",
            "wall p99 s",
            "CPU median s",
            "CPU p99 s",
            "× faster (wall)",
            "× faster (CPU)",
        ),
        lines,
    )

    mask = _mortar_grid()
    times = []
    for _ in range(max(args.repeats, 5) * 4):
        w0 = time.perf_counter()
        found = regions(mask)
        times.append(time.perf_counter() - w0)
    bricks = regions(~mask)
    new_med, new_p99 = _stats(times)
    comp = [
        [
            "`scipy.ndimage.label` + `find_objects` (now)",
            f"{new_med * 1e3:.2f}",
            f"{new_p99 * 1e3:.2f}",
            "1",
        ],
        [
            "repeated 3×3 max-pool (before; issue #16, quoted)",
            f"{ISSUE_OLD_COMPONENTS_S * 1e3:,.0f}",
            "—",
            f"{ISSUE_OLD_COMPONENTS_S / new_med:,.0f}",
        ],
    ]
    if args.old_components:
        hot = torch.from_numpy(mask)[None]
        w0 = time.perf_counter()
        _old_components(hot)
        old = time.perf_counter() - w0
        comp.append(
            [
                "repeated 3×3 max-pool (before; measured here, once)",
                f"{old * 1e3:,.0f}",
                "—",
                f"{old / new_med:,.0f}",
            ]
        )
    print(
        f"connected components of a {SIZE}×{SIZE} mortar-grid mask ({len(found.boxes)} mortar "
        f"region, {len(bricks.boxes)} bricks; 8-connectivity)\n"
    )
    table(("components", "median ms", "p99 ms", "× slower than now"), comp)


if __name__ == "__main__":
    main()
