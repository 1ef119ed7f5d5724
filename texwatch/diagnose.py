"""``texwatch diagnose``: the one-off diagnosis of single images, as PNG + JSON.

For each image: the texture metrics of :func:`texwatch.spectral.texture_metrics` with the band
scan (against the reference tile when ``--ref`` is given), value statistics, whether it holds a
periodic texture, Sobel + connected-component anomaly regions (8-connected,
:func:`scipy.ndimage.label`), and — for every image after the
first with the same size — the difference heatmap against the first
(``texwatch diagnose in.png out.png``), gained by ``--heatmap-scale``. The readings are the report's
probable causes (:func:`texwatch.report.probable_causes`) with the same thresholds. Figures are
written for the first ``--max-images`` images; the JSON holds every image. Every figure is
drawn on one reused figure (``texwatch._diagnosis_figure``), which keeps what does not change
between images; the PNG is encoded in a helper thread.

``diagnose.json`` holds ``settings`` and, per image:

- ``metrics``: every key of ``texture_metrics(..., bands=True)``
  (:data:`texwatch.spectral.METRIC_KEYS` and :data:`texwatch.spectral.BAND_KEYS`);
- ``stats``: ``mean``, ``std``, ``min``, ``max``, ``nonfinite`` of the values;
- ``periodicity``: ``periodic`` (the ``periodic`` metric: a significant spectral peak whose ACF
  period agrees), ``prominence_db`` (the ``peak_prominence`` metric: the f* bin over its ring's
  noise floor, or the most prominent bin's for a non-periodic image) and ``period_px`` (the
  period f* stands for, max(H, W) / f*; null for a non-periodic image);
- ``anomalies`` (``count``, ``area_share``, ``boxes``), ``diff`` (against the first image; null
  for it and for images of another size), ``causes`` (``key``, ``title``, ``evidence``) and
  ``figure`` (the PNG's name, null past ``--max-images``).

NaN is written as null.

Usable from Python::

    from texwatch.diagnose import diagnose
    result = diagnose(["in.png", "out.png"], ref="tile.png", report_dir="out_report")
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texwatch._commandline import HelpFormatter, exit_codes, failed, wrote
from texwatch._json import jsonable

if TYPE_CHECKING:
    import torch

    from texwatch.plots import SpectrumPanel

__all__ = [
    "DEFAULT_HEATMAP_SCALE",
    "DEFAULT_MAX_IMAGES",
    "add_parser",
    "diagnose",
    "run",
]

DEFAULT_HEATMAP_SCALE = 4.0
"""Gain of the difference heatmap: with images in [0, 1], a difference of 0.25 saturates."""

DEFAULT_MAX_IMAGES = 8
"""Images that get a figure (every image gets its numbers in the JSON)."""

_PROG = "texwatch diagnose"


class _InputError(ValueError):
    """A bad input to ``diagnose``; its message is the one line the command prints."""


def _load(item: str | Path | torch.Tensor, what: str) -> tuple[str, torch.Tensor]:
    import torch

    from texwatch._images import load_image

    if isinstance(item, torch.Tensor):
        x = item.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1:
            raise _InputError(f"{what}: tensor of shape {tuple(item.shape)}, expected (1, C, H, W)")
        return what, x
    try:
        return str(item), load_image(item)
    except ValueError as err:
        raise _InputError(f"{what}: {err}") from err


def _load_mask(item: str | Path | torch.Tensor) -> torch.Tensor:
    import torch

    from texwatch._images import load_mask

    if isinstance(item, torch.Tensor):
        m = item.detach().float().cpu()
        while m.ndim < 4:
            m = m[None]
        return m
    try:
        return load_mask(item)
    except ValueError as err:
        raise _InputError(f"--mask: {err}") from err


def _figure_name(index: int, name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:60] or "image"
    return f"{index:02d}_{stem}.png"


def _image_figure(
    canvas: Any,
    x: torch.Tensor,
    name: str,
    metrics: Mapping[str, object],
    boxes: Sequence[Sequence[int]],
    heat: np.ndarray | None,
    heat_title: str,
    panel: SpectrumPanel,
    readings: Sequence[str],
) -> np.ndarray:
    """One image's figure as (H, W, 4) RGBA pixels, drawn on ``canvas`` (a ``DiagnosisFigure``)."""
    said = "; ".join(readings) if readings else "no probable cause"
    shape = f"{x.shape[1]}×{x.shape[2]}×{x.shape[3]}"
    return canvas.render_pixels(
        x[0],
        panel,
        boxes=boxes,
        heat=heat,
        heat_title=heat_title,
        metrics=metrics,
        title=f"{name}  ({shape}) — {said}",
        image_title=f"image, {len(boxes)} Sobel anomalies",
    )


def diagnose(
    images: Sequence[str | Path | torch.Tensor],
    *,
    ref: str | Path | torch.Tensor | None = None,
    mask: str | Path | torch.Tensor | None = None,
    report_dir: str | Path | None = None,
    heatmap_scale: float = DEFAULT_HEATMAP_SCALE,
    max_images: int = DEFAULT_MAX_IMAGES,
    sobel_threshold: float = 6.0,
    window: str = "hann",
    thresholds: Any = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Diagnose single images; write ``diagnose.json`` and one PNG per image into ``report_dir``.

    Args:
        images: image files (PNG/JPEG/...) or ``(1, C, H, W)`` tensors in [0, 1]. The first is
            the baseline ("in") every later image of the same size is compared with.
        ref: reference tile (file or tensor): its f* becomes ``ref_radius_bin``; ``tile_scale``
            and ``band_score`` are measured against its period and, when it has the image's
            size, ``alias_score`` against its spectrum.
        mask: material mask (file or ``(1, 1, H, W)`` tensor) applied to every image.
        report_dir: output folder; ``None`` writes nothing and only returns the numbers.
        heatmap_scale: gain of the difference heatmap (``--heatmap-scale``).
        max_images: how many images get a figure (``--max-images``).
        sobel_threshold: robust z-score of the Sobel magnitude that marks an anomaly.
        window: apodization window of the spectral metrics.
        thresholds: :class:`texwatch.report.Thresholds` for the readings (default thresholds).
        quiet: no progress bar.

    Returns:
        The JSON document described in the module docstring.

    Raises:
        ValueError: an unreadable image, reference or mask, a mask of the wrong size, or a
            bad option value; the message names the input.
    """
    import torch

    from texwatch import spectral
    from texwatch._progress import progress
    from texwatch.causes import Thresholds, probable_causes

    if not images:
        raise _InputError("no image given")
    if (
        not isinstance(heatmap_scale, (int, float))
        or not math.isfinite(heatmap_scale)
        or heatmap_scale <= 0
    ):
        raise _InputError(f"--heatmap-scale must be a positive number, got {heatmap_scale!r}")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
        raise _InputError(f"--max-images must be an integer >= 0, got {max_images!r}")
    th = thresholds or Thresholds()
    out = Path(report_dir) if report_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise _InputError(f"-o/--out {str(out)!r} is a file, expected a folder")
    loaded = [
        _load(item, f"image {i}" if isinstance(item, torch.Tensor) else "image")
        for i, item in enumerate(images)
    ]
    ref_x = _load(ref, "--ref")[1] if ref is not None else None
    m = _load_mask(mask) if mask is not None else None
    for name, x in loaded:
        if m is not None and tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
            raise _InputError(
                f"--mask has size {m.shape[-2]}x{m.shape[-1]}, image {name!r} is "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    first = loaded[0][1]
    results = []
    canvas = None
    # The PNG compression (zlib frees the GIL) and file write of one figure run in a helper
    # thread, beside the next image's analysis; one at most is in flight, so memory stays
    # bounded and a write error surfaces with the next figure.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="texwatch-diagnose-png")
    writing: Future[None] | None = None
    bar = progress(total=len(loaded), desc="diagnose", quiet=quiet)
    try:
        for index, (name, x) in enumerate(loaded):
            h, w = x.shape[-2:]
            drawn = out is not None and index < max_images
            # the figure's spectrum views come from the metrics' own analysis
            values, views = spectral._texture_metrics(
                x, mask=m, ref=ref_x, window=window, bands=True, views=drawn
            )
            metrics = {k: float(v[0]) for k, v in values.items()}
            stats = {
                k: float(v[0])
                for k, v in spectral.latent_health(x).items()
                if k in ("mean", "std", "min", "max", "nonfinite")
            }
            f_star = metrics["fundamental_radius_bin"]
            peak = {
                "periodic": metrics["periodic"] == 1.0,
                "prominence_db": metrics["peak_prominence"],
                "period_px": max(h, w) / f_star if f_star > 0 else math.nan,
            }
            regions = spectral.sobel_anomalies(x, threshold=sobel_threshold)[0]
            diff = None
            heat = None
            if index > 0 and x.shape == first.shape:
                heat = spectral.diff_heatmap(x, first, scale=heatmap_scale)[0].numpy()
                mean_abs = float((x - first).abs().mean())
                diff = {
                    "against": loaded[0][0],
                    "mean_abs_diff": mean_abs,
                    "max_abs_diff": float((x - first).abs().max()),
                    "saturated_share": float((heat >= 1.0).mean()),
                }
            table = {
                "step": np.zeros(1, np.int64),
                **{k: np.array([v]) for k, v in metrics.items()},
            }
            causes = probable_causes({}, {name: table}, [0], sizes={name: (h, w)}, thresholds=th)
            figure = None
            if out is not None and views is not None:
                figure = _figure_name(index, name)
                shown: dict[str, object] = {
                    **metrics,
                    **{f"value_{k}": v for k, v in stats.items()},
                    "fft_period_px": peak["period_px"],
                    "anomalies": regions.count,
                }
                if diff is not None:
                    shown["mean_abs_diff"] = diff["mean_abs_diff"]
                ref_r = metrics.get("ref_radius_bin", math.nan)
                if canvas is None:
                    from texwatch._diagnosis_figure import diagnosis_figure
                    from texwatch.plots import _views_panel

                    canvas = diagnosis_figure()  # one figure, redrawn for every image
                    canvas.start_batch()  # nothing kept from an earlier call's figures
                pixels = _image_figure(
                    canvas,
                    x,
                    name,
                    shown,
                    regions.boxes,
                    heat,
                    f"|image − first| × {heatmap_scale:g}",
                    _views_panel(views, ref_r if math.isfinite(ref_r) else None),
                    [c.title for c in causes],
                )
                if writing is not None:
                    writing.result()
                writing = writer.submit(_write_png, out / figure, pixels)
            results.append(
                {
                    "name": name,
                    "shape": list(x.shape[1:]),
                    "metrics": metrics,
                    "stats": stats,
                    "periodicity": peak,
                    "anomalies": {
                        "count": regions.count,
                        "area_share": regions.area_share,
                        "boxes": [list(b) for b in regions.boxes],
                    },
                    "diff": diff,
                    "causes": [
                        {"key": c.key, "title": c.title, "evidence": c.evidence} for c in causes
                    ],
                    "figure": figure,
                }
            )
            bar.update()
        if writing is not None:
            writing.result()
    finally:
        writer.shutdown(wait=True)
        bar.close()
    doc = {
        "format": "texwatch-diagnose",
        "version": 1,
        "settings": {
            "ref": _source(ref),
            "mask": _source(mask),
            "heatmap_scale": heatmap_scale,
            "max_images": max_images,
            "sobel_threshold": sobel_threshold,
            "window": window,
            "thresholds": dataclasses.asdict(th),
        },
        "images": results,
    }
    if out is not None:
        text = json.dumps(jsonable(doc), indent=1, allow_nan=False)
        (out / "diagnose.json").write_text(text, encoding="utf-8")
    return doc


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from texwatch.plots import png_rgb

    path.write_bytes(png_rgb(pixels))


def _source(item: str | Path | torch.Tensor | None) -> str | None:
    """How the JSON names an optional input: its path, ``"tensor"``, or None."""
    import torch

    if item is None:
        return None
    return "tensor" if isinstance(item, torch.Tensor) else str(item)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``diagnose`` subcommand to the ``texwatch`` command."""
    p = subparsers.add_parser(
        "diagnose",
        help="texture metrics, spectra, anomalies and diff heatmaps of single images",
        description="Diagnose images: metrics and figures per image; every image after the "
        "first is compared with the first (in.png out.png).",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "written: OUT/diagnose.json and a PNG for each of the first --max-images "
                "images (the path on stdout)",
                1: "an I/O error, such as OUT not writable (one line on stderr)",
                2: "bad arguments, or an image, reference or mask that is missing, unreadable "
                "or of the wrong size (one line on stderr)",
            }
        ),
    )
    p.add_argument(
        "images", nargs="+", metavar="IMG", help="images to diagnose (the first is the baseline)"
    )
    p.add_argument("--ref", metavar="TILE.png", help="reference tile: its f is the target")
    p.add_argument("--mask", metavar="MASK.png", help="material mask applied to every image")
    p.add_argument(
        "-o", "--out", required=True, metavar="OUT", help="output folder (created if missing)"
    )
    p.add_argument(
        "--heatmap-scale",
        type=float,
        default=DEFAULT_HEATMAP_SCALE,
        help=f"gain of the difference heatmap ({DEFAULT_HEATMAP_SCALE:g})",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help=f"images that get a figure ({DEFAULT_MAX_IMAGES})",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a reading's threshold (as in texwatch report)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``texwatch diagnose``: 0 on success, 1 for an I/O error, 2 for a bad input."""
    from texwatch.causes import ReportError, Thresholds

    try:
        thresholds = Thresholds.from_pairs(args.threshold)
        doc = diagnose(
            args.images,
            ref=args.ref,
            mask=args.mask,
            report_dir=args.out,
            heatmap_scale=args.heatmap_scale,
            max_images=args.max_images,
            thresholds=thresholds,
            quiet=args.quiet,
        )
    except (_InputError, ReportError) as err:
        return failed(_PROG, err, 2)
    except OSError as err:  # an unreadable input is an _InputError: this is mostly writing OUT
        return failed(_PROG, err, 1)
    figures = sum(1 for image in doc["images"] if image["figure"] is not None)
    pngs = [f"{figures} PNG figure" + "s" * (figures > 1)] if figures else []
    wrote(_PROG, args.out, ["diagnose.json", *pngs])
    return 0
