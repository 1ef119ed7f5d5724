"""Image and mask files to tensors: PNG/JPEG/TIFF/BMP/WebP through Pillow, plus ``.npy`` arrays.

Images come back as float32 ``(1, C, H, W)`` tensors in [0, 1] (C = 1 for grey, 3 for colour;
alpha is dropped, JPEG EXIF orientation applied, 16-bit files scaled by 65535). Masks come back
either raw (``read_mask_values``, for validating them) or checked as ``(1, 1, H, W)`` tensors.
Only Pillow and ``numpy.load(allow_pickle=False)`` read files: nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "iter_image_files",
    "load_image",
    "load_mask",
    "read_mask_values",
    "to_display",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy"}
)
"""File suffixes (lower case) that the loaders accept."""

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _read_array(path: Path) -> np.ndarray:
    """Read ``path`` as an (H, W, C) float64 array; 8- and 16-bit files are scaled to [0, 1]."""
    if not path.exists():
        raise ValueError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"image file {str(path)!r} is a directory, expected a file")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {str(path)!r} as a .npy array: {err}") from err
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{str(path)!r} holds dtype {arr.dtype}, expected numbers")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
            raise ValueError(
                f"{str(path)!r} has shape {arr.shape}, expected (H, W) or (H, W, C), C in 1, 3, 4"
            )
        out = arr.astype(np.float64)
        if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):
            out /= 255.0 if arr.dtype.itemsize == 1 else 65535.0
        return out
    try:
        with Image.open(path) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened)
            mode = img.mode
            if mode in _SIXTEEN_BIT_MODES:
                return np.asarray(img, dtype=np.float64)[:, :, None] / 65535.0
            if mode == "F":
                return np.asarray(img, dtype=np.float64)[:, :, None]
            if mode in ("1", "L", "LA"):
                return np.asarray(img.convert("L"), dtype=np.float64)[:, :, None] / 255.0
            return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read {str(path)!r} as an image: {err}") from err


def load_image(path: str | Path) -> torch.Tensor:
    """Load an image file as a float32 ``(1, C, H, W)`` tensor in [0, 1].

    Args:
        path: a PNG/JPEG/TIFF/BMP/WebP file or an ``.npy`` array of shape (H, W) or (H, W, C).

    Raises:
        ValueError: the file is missing, unreadable, or holds values outside [0, 1].

    Example:
        >>> load_image("tile.png").shape  # doctest: +SKIP
        torch.Size([1, 3, 256, 256])
    """
    p = Path(path)
    arr = _read_array(p)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"image {str(p)!r} holds non-finite values, expected numbers in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image {str(p)!r} holds values in [{lo:g}, {hi:g}], expected [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()[None]


def read_mask_values(path: str | Path) -> np.ndarray:
    """Read a mask file as an (H, W) float64 array without any checks, for validating it.

    Multi-channel masks are averaged over their colour channels (alpha ignored).
    """
    arr = _read_array(Path(path))
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return arr.mean(axis=2)


def load_mask(path: str | Path, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Load a mask as a float32 ``(1, 1, H, W)`` tensor in [0, 1] (1 = pixel counts).

    Args:
        path: the mask file (any format :func:`load_image` reads).
        size: the (H, W) the mask must have, usually the image's; ``None`` skips the check.

    Raises:
        ValueError: unreadable file, wrong size, values outside [0, 1], or an all-zero mask.
    """
    p = Path(path)
    values = read_mask_values(p)
    if size is not None and tuple(values.shape) != tuple(size):
        raise ValueError(
            f"mask {str(p)!r} has size {values.shape[0]}x{values.shape[1]}, "
            f"expected {size[0]}x{size[1]} (the image's)"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"mask {str(p)!r} holds non-finite values, expected [0, 1]")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"mask {str(p)!r} holds values in [{lo:g}, {hi:g}], expected [0, 1]")
    if hi == 0.0:
        raise ValueError(f"mask {str(p)!r} is all zero, expected some pixels > 0")
    return torch.from_numpy(values).float()[None, None]


def iter_image_files(root: str | Path) -> Iterator[Path]:
    """Yield every file under ``root`` with an image suffix, recursively, in sorted order."""
    base = Path(root)
    for p in sorted(base.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            yield p


def to_display(x: np.ndarray) -> np.ndarray:
    """Turn one (C, H, W) array into an (H, W) or (H, W, 3) array in [0, 1] for ``imshow``.

    Grey and RGB images in [0, 1] are shown as they are; anything else (latents with 4 or 16
    channels, values out of range) shows its first three channels (or its only one), each
    stretched between its 1st and 99th percentile so that structure is visible.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"x has shape {a.shape}, expected (C, H, W)")
    finite = np.isfinite(a)
    in_range = bool(finite.all()) and a.min() >= 0.0 and a.max() <= 1.0
    if a.shape[0] in (1, 3) and in_range:
        return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    chans = a[: 3 if a.shape[0] >= 3 else 1]
    out = np.empty_like(chans)
    for i, c in enumerate(chans):
        good = c[np.isfinite(c)]
        if good.size == 0:
            out[i] = 0.0
            continue
        lo, hi = np.percentile(good, [1.0, 99.0])
        span = hi - lo if hi > lo else 1.0
        out[i] = np.clip(np.nan_to_num((c - lo) / span, nan=0.0), 0.0, 1.0)
    return out[0] if out.shape[0] == 1 else out.transpose(1, 2, 0)
