"""``channels_first``: images as trackers get them, in the (B, C, H, W) layout of ``record()``.

accelerate users pass ``log_images`` what TensorBoard and wandb take: tensors (NCHW, CHW),
numpy arrays (NHWC, HWC, as ``np.asarray(pil_image)`` gives), PIL images, or lists of them.
``record(images=...)`` takes (B, C, H, W) or (C, H, W) numbers; everything else is converted
here, and a layout the shape cannot tell is refused rather than guessed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DATAFORMATS", "channels_first"]

DATAFORMATS = ("NCHW", "NHWC", "CHW", "HWC", "HW", "NHW")
"""Layouts ``dataformats=`` names, as TensorBoard's ``add_images``."""

_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what a channels-last image's last axis holds


def channels_first(value: Any, key: str, dataformats: str | None = None) -> Any:
    """``value`` as a (B, C, H, W) tensor or array; 8-bit images scaled to [0, 1].

    Without ``dataformats``, a 3-D or 4-D array is channels-last when its last axis has 1, 3 or
    4 entries and its channel-first axis has not; channels-first when neither holds (latents
    with 16 channels); refused when both do ((3, 3, 3)). 2-D is one grey image.

    Raises:
        ValueError: an ambiguous or unknown layout, or images of different shapes in a list,
            naming ``key``.
        TypeError: not an image, naming ``key``.
    """
    if dataformats is not None and dataformats not in DATAFORMATS:
        raise ValueError(
            f"Expected argument `dataformats` to be one of {', '.join(DATAFORMATS)} but got "
            f"{dataformats!r}"
        )
    torch = sys.modules.get("torch")
    if (torch is None or not isinstance(value, torch.Tensor)) and not isinstance(value, np.ndarray):
        value, dataformats = _stacked(value, key, dataformats)
    is_tensor = torch is not None and isinstance(value, torch.Tensor)
    layout = dataformats or _infer(tuple(value.shape), key)
    if len(layout) != value.ndim:
        raise ValueError(
            f"log_images(): {key!r} has shape {tuple(value.shape)} but dataformats={layout!r} "
            f"names {len(layout)} axes"
        )
    if "N" not in layout:
        value = value[None]
    if "C" not in layout:
        value = value[:, None]
    elif layout.endswith("HWC"):
        value = value.permute(0, 3, 1, 2) if is_tensor else value.transpose(0, 3, 1, 2)
    if is_tensor and value.dtype == torch.uint8:  # type: ignore[union-attr]
        return value.float() / 255.0
    if not is_tensor and value.dtype == np.uint8:
        return value.astype(np.float32) / np.float32(255.0)
    return value


def _stacked(value: Any, key: str, dataformats: str | None) -> tuple[Any, str | None]:
    """A PIL image, or a list of images (PIL, arrays or tensors), as one array and its layout.

    ``dataformats`` names the layout of each image of a list; a PIL image's is known.
    """
    one = not isinstance(value, Sequence) or isinstance(value, str)
    items = [value] if one else list(value)
    if not items:
        raise ValueError(f"log_images(): {key!r} is an empty list, expected images")
    torch = sys.modules.get("torch")
    if not one and torch is not None and all(isinstance(i, torch.Tensor) for i in items):
        arrays: list[Any] = items
    else:
        arrays = [_array(item, key) for item in items]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"log_images(): {key!r} holds images of different shapes {sorted(shapes)}; log them "
            f"under different keys"
        )
    layout = ("HW" if arrays[0].ndim == 2 else "HWC") if _is_pil(items[0]) else dataformats
    if layout is None and arrays[0].ndim == 2:
        layout = "HW"
    if one:
        return arrays[0], layout
    if layout is not None and "N" in layout:
        raise ValueError(
            f"log_images(): {key!r} is a list, so dataformats names one image's layout (CHW, HWC "
            f"or HW), got {layout!r}"
        )
    stacked = np.stack(arrays) if torch is None or arrays is not items else torch.stack(arrays)
    return stacked, None if layout is None else "N" + layout


def _array(item: Any, key: str) -> np.ndarray:
    if _is_pil(item):
        if item.mode not in ("L", "RGB", "RGBA", "F"):
            item = item.convert("RGB")
        return np.asarray(item)
    if isinstance(item, np.ndarray):
        return item
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(item, torch.Tensor):
        return item.detach().float().cpu().numpy()
    raise TypeError(
        f"log_images(): {key!r} holds a {type(item).__name__}; expected a tensor, a numpy "
        f"array, a PIL image or a list of them"
    )


def _is_pil(item: Any) -> bool:
    return type(item).__module__.startswith("PIL.")


def _infer(shape: tuple[int, ...], key: str) -> str:
    if len(shape) == 2:
        return "HW"
    if len(shape) not in (3, 4):
        raise ValueError(
            f"log_images(): {key!r} has shape {shape}; expected an image (HW, CHW, HWC) or a "
            f"batch (NCHW, NHWC)"
        )
    batch = "N" if len(shape) == 4 else ""
    last, first = shape[-1] in _CHANNELS, shape[-3] in _CHANNELS
    if last and first:
        raise ValueError(
            f"log_images(): {key!r} has shape {shape}: channels could be first or last; pass "
            f"dataformats={batch + 'CHW'!r} or {batch + 'HWC'!r}"
        )
    return batch + ("HWC" if last else "CHW")
