"""``texwatch dataset``: dataset health — tiling sources, invalid masks, brightness outliers.

Three checks over every image under ``DIR`` (recursively; PNG/JPEG/TIFF/BMP/WebP/.npy):

* **sources that already tile**: the ``periodic`` metric of
  :func:`texwatch.spectral.texture_metrics` (a significant spectral peak over its ring's noise
  floor whose ACF period agrees) marks a periodic texture, with its period from f* and the ACF
  and its peak's prominence in dB; an image that *repeats exactly* (the ACF at that period near
  1) was tiled by copy-paste. Tiling sources make a model learn the
  source's tile instead of the material's (the usual reading of a doubled tile).
* **masks** (``--masks MASKDIR``, matched by relative path and stem, any image suffix): missing,
  unreadable, wrong size, non-finite, values outside [0, 1], empty (all 0), full (all 1), or not
  binary when binary masks are expected; masks with no image are listed too.
* **brightness / contrast outliers**: mean luma and RMS contrast (luma standard deviation) of
  each image against the dataset's median, in robust z-scores (MAD × 1.4826) beyond
  ``--outlier-z``; the distributions' skewness is reported.

Unreadable files are listed, never fatal. Writes ``OUT/dataset.json`` (every number) and
``OUT/dataset.png`` (distributions, with flagged images shown).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texwatch._commandline import HelpFormatter, exit_codes, failed, wrote
from texwatch._json import jsonable

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes

__all__ = [
    "DEFAULT_OUTLIER_Z",
    "EXACT_REPEAT",
    "add_parser",
    "check_mask",
    "dataset_health",
    "run",
]

DEFAULT_OUTLIER_Z = 3.5
"""Robust z-score beyond which an image's brightness or contrast is an outlier."""

EXACT_REPEAT = 0.95
"""ACF value at the texture's period from which an image counts as copy-paste tiled."""

_PROG = "texwatch dataset"
_LUMA = (0.2126, 0.7152, 0.0722)
_MAD_TO_SIGMA = 1.4826
_MIN_FOR_OUTLIERS = 5  # fewer images give no meaningful distribution
_SHOWN = 8  # flagged images shown in the summary figure


class _InputError(ValueError):
    """A bad input to ``dataset``; its message is the one line the command prints."""


def check_mask(
    values: np.ndarray, *, size: tuple[int, int] | None = None, binary: bool = True
) -> list[str]:
    """The problems of one mask (empty list: valid).

    Args:
        values: the mask's raw (H, W) values (:func:`texwatch._images.read_mask_values`).
        size: the (H, W) the mask must have (its image's), or None.
        binary: whether values other than 0 and 1 are a problem.

    Returns:
        Problem codes, each with a short explanation: ``wrong_size``, ``nonfinite``,
        ``out_of_range``, ``empty``, ``full``, ``not_binary``.
    """
    problems: list[str] = []
    if size is not None and tuple(values.shape) != tuple(size):
        problems.append(
            f"wrong_size: {values.shape[0]}x{values.shape[1]}, image is {size[0]}x{size[1]}"
        )
    finite = np.isfinite(values)
    if not finite.all():
        problems.append(f"nonfinite: {int((~finite).sum())} NaN/Inf values")
    v = values[finite]
    if v.size == 0:
        return problems
    lo, hi = float(v.min()), float(v.max())
    if lo < 0.0 or hi > 1.0:
        problems.append(f"out_of_range: values in [{lo:g}, {hi:g}], expected [0, 1]")
    if hi <= 0.0:
        problems.append("empty: no pixel is selected")
    elif lo >= 1.0:
        problems.append("full: every pixel is selected (the mask masks nothing)")
    if binary:
        soft = float(np.mean((v != 0.0) & (v != 1.0)))
        if soft > 0.0:
            problems.append(f"not_binary: {soft:.1%} of pixels are neither 0 nor 1")
    return problems


def _find_mask(image: Path, root: Path, masks: Path) -> Path | None:
    from texwatch._images import IMAGE_SUFFIXES

    rel = image.relative_to(root)
    same = masks / rel
    if same.is_file():
        return same
    folder = (masks / rel).parent
    if folder.is_dir():
        for suffix in sorted(IMAGE_SUFFIXES):
            candidate = folder / f"{rel.stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _luma(x: torch.Tensor) -> np.ndarray:
    arr = x[0].double().numpy()
    if arr.shape[0] == 3:
        return np.tensordot(np.asarray(_LUMA), arr, axes=1)
    return arr.mean(axis=0)


def _robust_z(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    median = float(np.median(values))
    scale = _MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    if scale <= 0.0:  # over half the images identical: judge against the spread of the rest
        scale = float(np.std(values)) or 1.0
    return (values - median) / scale, median, scale


def _skewness(values: np.ndarray) -> float:
    sd = float(np.std(values))
    return float(np.mean((values - np.mean(values)) ** 3) / sd**3) if sd > 0 else 0.0


def _repeat_score(x: torch.Tensor, period: float, direction: tuple[float, float]) -> float:
    """The normalised ACF at lag ``period`` along ``direction`` (1 = the image repeats exactly)."""
    from texwatch import spectral

    views = spectral.spectrum_views(x, window="none")
    acf = views.acf_image[0].double().numpy()
    h, w = acf.shape
    lx, ly = period * direction[0], period * direction[1]
    # the centred ACF image holds lags -h//2..h//2; a linear ACF at lag L is divided by the
    # overlap (H - |ly|)(W - |lx|) / (HW) to undo the shrinking overlap
    ix, iy = int(round(w // 2 + lx)), int(round(h // 2 + ly))
    if not (0 <= ix < w and 0 <= iy < h) or not math.isfinite(period):
        return math.nan
    overlap = (1 - abs(ly) / h) * (1 - abs(lx) / w)
    return float(acf[iy, ix] / overlap) if overlap > 0 else math.nan


def _image_record(path: Path, root: Path, x: torch.Tensor) -> dict[str, Any]:
    from texwatch import spectral

    luma = _luma(x)
    metrics = spectral.texture_metrics(x)
    periodic = float(metrics["periodic"][0]) == 1.0
    record: dict[str, Any] = {
        "path": str(path.relative_to(root)),
        "shape": list(x.shape[1:]),
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "peak_prominence": float(metrics["peak_prominence"][0]),
        "tiles": periodic,
    }
    if periodic:
        views = spectral.spectrum_views(x)
        f = float(metrics["fundamental_radius_bin"][0])
        period = max(x.shape[-2:]) / f if f > 0 else math.nan
        direction = tuple(float(d) for d in views.direction[0])
        record.update(
            period_px=period,
            acf_period_px=float(metrics["acf_first_peak_radius_bin"][0]),
            repeats_in_image=max(x.shape[-2:]) / period if math.isfinite(period) else math.nan,
            repeat_score=_repeat_score(x, period, direction),  # type: ignore[arg-type]
        )
        record["exact_repeat"] = bool(record["repeat_score"] >= EXACT_REPEAT)
    return record


def dataset_health(
    root: str | Path,
    *,
    masks: str | Path | None = None,
    report_dir: str | Path | None = None,
    outlier_z: float = DEFAULT_OUTLIER_Z,
    binary_masks: bool = True,
    quiet: bool = True,
) -> dict[str, Any]:
    """Check every image under ``root`` (and its mask); write ``dataset.json`` and ``dataset.png``.

    Args:
        root: the dataset folder.
        masks: the folder of masks, mirroring ``root``'s layout (same relative path and stem).
        report_dir: output folder; ``None`` writes nothing.
        outlier_z: robust z-score from which brightness or contrast is an outlier.
        binary_masks: masks must hold only 0 and 1 (8-bit 0/255 included).
        quiet: no progress bar.

    Returns:
        The JSON document: ``images`` (one record each: ``peak_prominence`` in dB, ``tiles``
        the ``periodic`` metric), ``unreadable``, ``tiling``, ``masks`` (``invalid``,
        ``missing``, ``orphans``), ``outliers`` and ``summary``.

    Raises:
        ValueError: ``root`` or ``masks`` is not a folder, it holds no image file, or an
            option is out of range.
    """
    from texwatch._images import iter_image_files, load_image, read_mask_values
    from texwatch._progress import progress

    base = Path(root)
    if not base.is_dir():
        raise _InputError(f"dataset folder {str(base)!r} does not exist or is not a folder")
    mask_root = Path(masks) if masks is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise _InputError(f"--masks {str(mask_root)!r} does not exist or is not a folder")
    if not isinstance(outlier_z, (int, float)) or not math.isfinite(outlier_z) or outlier_z <= 0:
        raise _InputError(f"--outlier-z must be a positive number, got {outlier_z!r}")
    out = Path(report_dir) if report_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise _InputError(f"-o/--out {str(out)!r} is a file, expected a folder")
    files = list(iter_image_files(base))
    if mask_root is not None and mask_root.resolve().is_relative_to(base.resolve()):
        files = [f for f in files if not f.resolve().is_relative_to(mask_root.resolve())]
    if not files:
        raise _InputError(f"no image file under {str(base)!r}")

    images: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    invalid: list[dict[str, Any]] = []
    missing: list[str] = []
    used_masks: set[Path] = set()
    bar = progress(total=len(files), desc="dataset", quiet=quiet)
    try:
        for path in files:
            rel = str(path.relative_to(base))
            try:
                x = load_image(path)
            except ValueError as err:
                unreadable.append({"path": rel, "error": str(err)})
                bar.update()
                continue
            images.append(_image_record(path, base, x))
            if mask_root is not None:
                found = _find_mask(path, base, mask_root)
                if found is None:
                    missing.append(rel)
                else:
                    used_masks.add(found.resolve())
                    try:
                        problems = check_mask(
                            read_mask_values(found),
                            size=(int(x.shape[-2]), int(x.shape[-1])),
                            binary=binary_masks,
                        )
                    except ValueError as err:
                        problems = [f"unreadable: {err}"]
                    if problems:
                        invalid.append(
                            {
                                "image": rel,
                                "mask": str(found.relative_to(mask_root)),
                                "problems": problems,
                            }
                        )
            bar.update()
    finally:
        bar.close()

    orphans = []
    if mask_root is not None:
        orphans = [
            str(p.relative_to(mask_root))
            for p in iter_image_files(mask_root)
            if p.resolve() not in used_masks
        ]
    outliers: list[dict[str, Any]] = []
    distributions: dict[str, Any] = {}
    if images:
        for key in ("brightness", "contrast"):
            values = np.array([r[key] for r in images])
            z, median, scale = _robust_z(values)
            distributions[key] = {
                "median": median,
                "robust_sigma": scale,
                "mean": float(values.mean()),
                "std": float(values.std()),
                "skewness": _skewness(values),
                "min": float(values.min()),
                "max": float(values.max()),
            }
            for r, zi in zip(images, z, strict=True):
                r[f"{key}_z"] = float(zi)
            if len(images) >= _MIN_FOR_OUTLIERS:
                for r, zi in zip(images, z, strict=True):
                    if abs(zi) > outlier_z:
                        side = "high" if zi > 0 else "low"
                        outliers.append(
                            {
                                "path": r["path"],
                                "metric": key,
                                "value": r[key],
                                "z": float(zi),
                                "side": side,
                            }
                        )
    tiling = [r for r in images if r["tiles"]]
    doc: dict[str, Any] = {
        "format": "texwatch-dataset",
        "version": 1,
        "root": str(base),
        "masks_root": str(mask_root) if mask_root is not None else None,
        "settings": {
            "outlier_z": outlier_z,
            "binary_masks": binary_masks,
            "exact_repeat": EXACT_REPEAT,
        },
        "summary": {
            "files": len(files),
            "images": len(images),
            "unreadable": len(unreadable),
            "tiling": len(tiling),
            "exact_repeats": sum(1 for r in tiling if r.get("exact_repeat")),
            "invalid_masks": len(invalid),
            "missing_masks": len(missing),
            "orphan_masks": len(orphans),
            "outliers": len(outliers),
            "outliers_judged": len(images) >= _MIN_FOR_OUTLIERS,
        },
        "distributions": distributions,
        "tiling": [
            {
                k: r.get(k)
                for k in (
                    "path",
                    "period_px",
                    "acf_period_px",
                    "repeats_in_image",
                    "peak_prominence",
                    "repeat_score",
                    "exact_repeat",
                )
            }
            for r in tiling
        ],
        "masks": {"invalid": invalid, "missing": missing, "orphans": orphans},
        "outliers": outliers,
        "unreadable": unreadable,
        "images": images,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "dataset.json").write_text(
            json.dumps(jsonable(doc), indent=1, allow_nan=False), encoding="utf-8"
        )
        (out / "dataset.png").write_bytes(_summary_png(doc, base, outlier_z))
    return doc


def _histogram(
    ax: Axes, values: np.ndarray, flagged: np.ndarray, title: str, lines: dict[str, float]
) -> None:
    bins = max(5, min(40, int(np.sqrt(values.size)) * 2))
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.75, label="images")
    if flagged.size:
        ax.hist(
            flagged,
            bins=bins,
            range=(values.min(), values.max()),
            color="tab:red",
            label="outliers",
        )
    for name, x in lines.items():
        ax.axvline(x, color="gray", ls="--", lw=0.9, label=name)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def _summary_png(doc: dict[str, Any], base: Path, outlier_z: float) -> bytes:
    from texwatch import plots
    from texwatch._images import load_image, to_display

    images = doc["images"]
    flagged_paths = [r["path"] for r in doc["tiling"]] + [o["path"] for o in doc["outliers"]]
    flagged_paths += [m["image"] for m in doc["masks"]["invalid"]]
    shown = list(dict.fromkeys(flagged_paths))[:_SHOWN]
    height = 8.5 if shown else 4.6
    fig = plots.new_figure(15.0, height)
    split = 1 - 4.3 / height  # the distributions take the top 4.3 in, thumbnails the rest
    top = fig.add_gridspec(
        1, 4, left=0.05, right=0.98, top=1 - 0.8 / height, bottom=split + 0.5 / height, wspace=0.3
    )
    axes = [fig.add_subplot(top[0, k]) for k in range(4)]
    thumbs = fig.add_gridspec(
        1,
        max(len(shown), 4),
        left=0.05,
        right=0.98,
        top=split - 0.5 / height,
        bottom=0.2 / height,
        wspace=0.15,
    )
    s = doc["summary"]
    text = (
        f"{doc['root']}: {s['images']} images, {s['unreadable']} unreadable, "
        f"{s['tiling']} tiling, {s['invalid_masks']} invalid / {s['missing_masks']} missing "
        f"masks, {s['outliers']} outliers"
    )
    plots.set_title(fig, plots.literal(text), fontsize=10)
    if images:
        out_paths = {(o["path"], o["metric"]) for o in doc["outliers"]}
        for ax, key in zip(axes[:2], ("brightness", "contrast"), strict=True):
            values = np.array([r[key] for r in images])
            flagged = np.array([r[key] for r in images if (r["path"], key) in out_paths])
            d = doc["distributions"][key]
            lines = {"median": d["median"]}
            if doc["summary"]["outliers_judged"]:
                lines[f"+{outlier_z:g} robust σ"] = d["median"] + outlier_z * d["robust_sigma"]
                lines[f"−{outlier_z:g} robust σ"] = d["median"] - outlier_z * d["robust_sigma"]
            _histogram(ax, values, flagged, f"{key} (skewness {d['skewness']:.2f})", lines)
        b = np.array([r["brightness"] for r in images])
        c = np.array([r["contrast"] for r in images])
        tiles = np.array([r["tiles"] for r in images])
        axes[2].scatter(b[~tiles], c[~tiles], s=10, color="tab:blue", label="images")
        axes[2].scatter(b[tiles], c[tiles], s=14, color="tab:orange", label="tiling")
        odd = np.array([r["path"] in {o["path"] for o in doc["outliers"]} for r in images])
        if odd.any():
            axes[2].scatter(
                b[odd], c[odd], s=40, facecolors="none", edgecolors="tab:red", label="outlier"
            )
        axes[2].set_xlabel("brightness", fontsize=8)
        axes[2].set_ylabel("contrast", fontsize=8)
        axes[2].set_title("brightness vs contrast", fontsize=9)
        axes[2].tick_params(labelsize=7)
        axes[2].legend(fontsize=7)
        prom = np.array([r["peak_prominence"] for r in images], dtype=np.float64)
        finite = np.isfinite(prom)
        if finite.any():
            edges = np.histogram_bin_edges(prom[finite], bins=30)
            axes[3].hist(
                [prom[finite & ~tiles], prom[finite & tiles]],
                bins=edges.tolist(),
                stacked=True,
                color=["tab:blue", "tab:orange"],
                label=["images", "tiling (periodic)"],
            )
        axes[3].set_title("spectral peak prominence (dB over the noise floor)", fontsize=9)
        axes[3].tick_params(labelsize=7)
        axes[3].legend(fontsize=7)
    for k, rel in enumerate(shown):
        ax = fig.add_subplot(thumbs[0, k])
        reasons = []
        if rel in {r["path"] for r in doc["tiling"]}:
            hit = next(r for r in doc["tiling"] if r["path"] == rel)
            exact = " (exact repeat)" if hit.get("exact_repeat") else ""
            reasons.append(f"tiles {hit['period_px']:.3g} px{exact}")
        reasons += [f"{o['metric']} {o['side']}" for o in doc["outliers"] if o["path"] == rel]
        reasons += ["bad mask" for m in doc["masks"]["invalid"] if m["image"] == rel]
        x = load_image(base / rel)
        h, w = x.shape[-2:]
        # Reduced by whole blocks to the thumbnail's pixels: imshow resamples less.
        thumb, k = plots.fit_pixels(to_display(x[0].numpy()), *plots.axes_pixels(ax))
        cover = (-0.5, thumb.shape[1] * k - 0.5, thumb.shape[0] * k - 0.5, -0.5)
        ax.imshow(thumb, cmap="gray", vmin=0, vmax=1, extent=cover)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(plots.literal(f"{Path(rel).name[:24]}\n{', '.join(reasons)}"), fontsize=7)
        ax.set_axis_off()
    return plots.fast_png(fig)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` subcommand to the ``texwatch`` command."""
    p = subparsers.add_parser(
        "dataset",
        help="dataset health: tiling sources, invalid masks, brightness/contrast outliers",
        description="Check a folder of training images (and their masks) for sources that "
        "already tile, invalid masks and brightness/contrast outliers.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "written: OUT/dataset.json and dataset.png (the path on stdout); unreadable "
                "images are listed there, not fatal",
                1: "an I/O error, such as OUT not writable (one line on stderr)",
                2: "bad arguments, DIR missing or without an image, or MASKDIR missing (one "
                "line on stderr)",
            }
        ),
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder (searched recursively)")
    p.add_argument("--masks", metavar="MASKDIR", help="masks, same relative paths and stems")
    p.add_argument(
        "-o", "--out", required=True, metavar="OUT", help="output folder (created if missing)"
    )
    p.add_argument(
        "--outlier-z",
        type=float,
        default=DEFAULT_OUTLIER_Z,
        help=f"robust z-score of a brightness/contrast outlier ({DEFAULT_OUTLIER_Z:g})",
    )
    p.add_argument(
        "--soft-masks",
        action="store_true",
        help="masks may hold values between 0 and 1 (default: binary expected)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``texwatch dataset``: 0 on success, 1 for an I/O error, 2 for a bad input."""
    try:
        dataset_health(
            args.dir,
            masks=args.masks,
            report_dir=args.out,
            outlier_z=args.outlier_z,
            binary_masks=not args.soft_masks,
            quiet=args.quiet,
        )
    except _InputError as err:
        return failed(_PROG, err, 2)
    except OSError as err:  # unreadable images are listed, not raised: this is mostly writing OUT
        return failed(_PROG, err, 1)
    wrote(_PROG, args.out, ["dataset.json", "dataset.png"])
    return 0
