"""Images drawn from kept pixel picks show what matplotlib's own resampling shows."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from texwatch._image_picks import ImagePicks


def _frame(data: np.ndarray, extent: tuple, picks: ImagePicks | None, **kw) -> np.ndarray:
    fig = Figure(figsize=(3.3, 2.7), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.12, 0.8, 0.75))
    im = ax.imshow(data, interpolation="nearest", extent=extent, **kw)
    ax.set_xlim(extent[0] - 3.3, extent[1] + 1.7)  # the image clipped and off-centre
    canvas.draw()
    renderer = canvas.get_renderer()
    renderer.clear()
    ax.patch.draw(renderer)
    if picks is None:
        im.draw(renderer)
    else:
        picks.draw(im, renderer)
    return np.asarray(canvas.buffer_rgba()).astype(int)


@pytest.mark.parametrize("size", [(37, 53), (300, 410), (12, 9)])
def test_picked_images_are_matplotlibs(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    h, w = size
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    values = rng.standard_normal((h, w)).astype(np.float32)
    values[h // 2, w // 3] = np.nan  # shown as the colormap's "bad" colour
    picks = ImagePicks()
    for extent in ((-0.5, w - 0.5, h - 0.5, -0.5), (-20.25, 13.5, 11.0, -7.75)):
        for _ in range(2):  # picked, then drawn from the kept picks
            want = _frame(rgba, extent, None)
            assert np.array_equal(_frame(rgba, extent, picks), want)
            want = _frame(values, extent, None, cmap="magma", vmin=-2.0, vmax=2.0)
            got = _frame(values, extent, picks, cmap="magma", vmin=-2.0, vmax=2.0)
            assert np.abs(got - want).max() <= 1  # coloured before or after the pick
