"""Image layouts: what ``record(images=...)`` takes, and the (n, C, H, W) rows the store keeps.

Users pass what TensorBoard and wandb take: tensors (NCHW, CHW), numpy arrays (NHWC, HWC, as
``np.asarray(pil_image)`` or a diffusers pipeline's ``output_type="np"`` gives), grey images
(HW), PIL images, or lists of them. ``dataformats`` names a layout as TensorBoard's
``add_images`` does; without it the shape decides, and a shape that could be either is refused
rather than guessed. The training thread copies the bytes as given; the writer thread moves the
channels first and scales 8-bit images to [0, 1].
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._capture import is_tensor

__all__ = [
    "DATAFORMATS",
    "check_dataformats",
    "chw",
    "formats_by_key",
    "layout_of",
    "stacked",
    "stored_rows",
]

DATAFORMATS = ("NCHW", "NHWC", "CHW", "HWC", "HW", "NHW")
"""Layouts ``dataformats=`` names, as TensorBoard's ``add_images``/``add_image``."""

_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what a channels-last image's last axis holds


def check_dataformats(value: Any, what: str) -> str:
    """``value`` if it names a layout, else a ValueError naming ``what``."""
    if value not in DATAFORMATS:
        raise ValueError(f"{what} must be one of {', '.join(DATAFORMATS)}, got {value!r}")
    return str(value)


def formats_by_key(dataformats: Any, images: Mapping[str, Any]) -> Mapping[str, str]:
    """``record()``'s ``dataformats`` checked, by ``images`` key: one layout for every key, or a
    dict whose keys are ``images`` keys."""
    if dataformats is None:
        return {}
    if isinstance(dataformats, str):
        layout = check_dataformats(dataformats, "record(): dataformats")
        return dict.fromkeys(images, layout)
    if not isinstance(dataformats, Mapping):
        raise TypeError(
            f"record(): dataformats must be a str or a dict of images key -> str, got "
            f"{type(dataformats).__name__}"
        )
    for key, layout in dataformats.items():
        if key not in images:
            raise ValueError(
                f"record(): dataformats key {key!r} is not an images key; expected one of "
                f"{sorted(map(str, images))}"
            )
        check_dataformats(layout, f"record(): dataformats[{key!r}]")
    return dataformats


def layout_of(
    shape: tuple[int, ...], dataformats: str | None, what: str, *, model: bool = False
) -> str:
    """The layout of an image value of ``shape``: ``dataformats`` when given, else inferred.

    A 3-D or 4-D shape is channels-last when its last axis has 1, 3 or 4 entries and its
    channels-first axis has not, channels-first otherwise (latents with 16 channels); a shape
    where both axes could hold the channels ((3, 64, 3)) is refused, unless it is a ``model``
    tensor (latents, pred, target), which is channels-first then. 2-D is one grey image.

    Raises:
        ValueError: the shape and ``dataformats`` disagree, or the layout is ambiguous.
    """
    if dataformats is not None:
        if len(dataformats) != len(shape):
            raise ValueError(
                f"{what} has shape {shape} but dataformats {dataformats!r} names "
                f"{len(dataformats)} axes"
            )
        return dataformats
    if model and len(shape) not in (3, 4):
        raise ValueError(f"{what} must have shape (B, C, H, W) or (C, H, W), got {shape}")
    if len(shape) == 2:
        return "HW"
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{what} must be an image (CHW, HWC, HW) or a batch of them (NCHW, NHWC), got shape "
            f"{shape}"
        )
    batch = "N" if len(shape) == 4 else ""
    last, first = shape[-1] in _CHANNELS, shape[-3] in _CHANNELS
    if last and first and model:
        return batch + "CHW"
    if last and first:
        raise ValueError(
            f"{what} has shape {shape}: its channels could be first or last; pass "
            f"dataformats={batch + 'CHW'!r} or {batch + 'HWC'!r}"
        )
    return batch + ("HWC" if last else "CHW")


def chw(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """(C, H, W) of one image of a value of ``shape`` in ``layout``."""
    axes = dict(zip(layout, shape, strict=True))
    return (axes.get("C", 1), axes["H"], axes["W"])


def stored_rows(data: np.ndarray, layout: str, dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` in ``layout`` as (n, C, H, W) rows of ``dtype``; uint8 scaled to [0, 1]."""
    if not layout.startswith("N"):
        data = data[None]
    if "C" not in layout:
        data = data[:, None]
    elif layout.endswith("HWC"):
        data = data.transpose(0, 3, 1, 2)
    if data.dtype == np.uint8:
        return np.multiply(data, np.float32(1 / 255), dtype=np.float32).astype(dtype, copy=False)
    return np.ascontiguousarray(data, dtype=dtype)


def stacked(value: Any, dataformats: str | None, what: str) -> tuple[Any, str | None]:
    """A PIL image, or a list of images (PIL, arrays or tensors), as one array or tensor and
    its layout; any other value as it is, with ``dataformats``.

    For a list, ``dataformats`` names one image's layout; a PIL image's own is known.

    Raises:
        ValueError: an empty list, images of different shapes, or a batch layout for a list.
        TypeError: a list holding something that is not an image.
    """
    one = _is_pil(value)
    if not one and not (isinstance(value, (list, tuple)) and value and _is_image(value[0])):
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError(f"{what} is an empty list, expected images")
        return value, dataformats
    items: Sequence[Any] = [value] if one else value
    tensors = all(is_tensor(i) for i in items)
    arrays = list(items) if tensors else [_array(item, what) for item in items]
    shapes = sorted({tuple(a.shape) for a in arrays})
    if len(shapes) > 1:
        raise ValueError(
            f"{what} holds images of different shapes {shapes}; record them under different keys"
        )
    if _is_pil(items[0]):
        dataformats = "HW" if arrays[0].ndim == 2 else "HWC"
    if one:
        return arrays[0], dataformats
    if dataformats is not None and dataformats.startswith("N"):
        raise ValueError(
            f"{what} is a list, so its dataformats names one image's layout (CHW, HWC or HW), "
            f"got {dataformats!r}"
        )
    batch = sys.modules["torch"].stack(arrays) if tensors else np.stack(arrays)
    return batch, None if dataformats is None else "N" + dataformats


def _is_pil(item: Any) -> bool:
    return type(item).__module__.startswith("PIL.")


def _is_image(item: Any) -> bool:
    return _is_pil(item) or isinstance(item, np.ndarray) or is_tensor(item)


def _array(item: Any, what: str) -> np.ndarray:
    if _is_pil(item):
        if item.mode.startswith("I;16"):  # 16-bit grey (PNG): to [0, 1] as 8-bit is
            return np.asarray(item).astype(np.float32) / np.float32(65535)
        if item.mode not in ("L", "RGB", "RGBA", "F"):
            item = item.convert("RGB")  # palette, CMYK, bilevel...
        return np.asarray(item)
    if isinstance(item, np.ndarray):
        return item
    if is_tensor(item):
        return item.numpy(force=True)
    raise TypeError(
        f"{what} holds a {type(item).__name__}; expected a tensor, a numpy array or a PIL image"
    )
