"""A labelled, offline, seeded corpus of grey image pairs ``(pred, ref)`` to score texture alarms.

Every case is a square ``size``-px pair in [0, 1] (colour sources become Rec.709 luma) whose group
says whether an alarm should fire. Sources are scikit-image's bundled images (nothing is downloaded)
and generated textures. Periodic ones: brick (columns of bricks every ≈ 35.9 px along x at native
scale), coins (rows ≈ 69.4 px apart along y), page (text lines 18.0 px apart), and procedural
textures of exact period: soft square-wave line gratings (12-60 px, any angle), rotated square
lattices of Gaussian blobs (16-64 px) and a tiled random smooth 24-48 px patch whose fundamental is
made its strongest harmonic. Aperiodic ones: crops of grass, gravel, moon, camera, coffee,
astronaut, chelsea, rocket, cell, hubble_deep_field, immunohistochemistry and retina (near-blank
crops rejected), and white (uniform, Gaussian), 1/f and 1/f² power noise (amplitude ∝ f^-0.5 and
f^-1). A natural image shorter than ``size`` is resized up to it first (page by 1.34 at 256 and 2.68
at 512, coins by 1.69 at 512) and its period scales with it. ``period`` is always the ref's (a ×2
pred has twice it, a ×½ pred half): exact for procedural refs, None for aperiodic ones, and for
natural refs measured on that very ref (Hann-windowed FFT peak within ×/÷ 1.4 of the source period,
as brick's drifts from ≈ 32 px at the top to ≈ 39 px at the bottom). Good pairs, on periodic refs:
pred is ref, another crop at least size/8 away, an unsharp mask (amount 1, σ 1-2 px), a JPEG q30
round trip, a gain/offset/gamma change, Gaussian noise (σ 0.02) or a Gaussian blur (σ 0.8-1.2),
or the same texture turned 20-70° either way (one reference tile for a dataset whose images
are turned, as in ``texwatch demo``);
``control/resize_conv`` (nearest ×2 then a random-init 3×3 convolution of the ref downscaled ×½,
Odena's checkerboard-free upsampler) is the checkerboard's negative control only: its random filter
rings at the edges it doubles, which other alarms may rightly read as a fault. Bad
pairs: ``tiles_x2`` upscales ×2 a half-size region from inside the ref; ``tiles_half`` downscales ×½
a double-size region that holds the ref (for natural sources, brick's period drifting across the
image, the ref is a crop near the source's centre and the region is centred on it as far as the
source allows, and ``tiles_x2``'s half region lies near the ref's centre); ``band_x2`` replaces a
band of rows, or of columns, by the ref's central half upscaled ×2 (4-px ramps; band widths 1/4,
3/8, 1/2 and 3/4 of the size at random offsets, plus brick's rows 160-352 at 512 and 80-176 at 256);
``checkerboard`` is a random-init ConvTranspose2d (kernel 3 or 4, stride 2, padding 1) of the ref
downscaled ×½; ``alias_nearest`` lays a grating of period 2.2-2.8 px (amplitude 0.15, angles within
4° of 0, 30, 45, 60, 90, 120 and 135°) over the ref upscaled ×2 and keeps every second pixel
(NEAREST), against the same image antialiased to half size, which is also
``good/alias_antialiased``'s pred (the same crop, or another one under the same grating). Up- and
downscaling is bicubic (Keys a = -0.5), antialiased when shrinking; the alias refs get a σ = 1 px
Gaussian before it, since antialiased bicubic alone leaves up to 23 % of a 45° 2.8-px grating.
Random init draws weights and bias uniform in ±1/√fan_in, as PyTorch's default, flips their sign
where the weights sum below zero and rescales the output min-max to [0, 1]. A region that leaves the
source (the double-size regions of ``tiles_half`` for coins and page) is filled by mirroring the
source (symmetric reflection), never by periodic tiling; brick is in ``tiles_half`` only at 256,
where its double-size region is the whole image (mirrored to 1024², the period of its bottom rows
would dominate); where a source has no second crop (brick at 512, a 512² source at 512), "another
crop" is the same crop upside down. The ×2 groups use only refs whose period p has 2p·3.5 ≤ size, so
the doubled texture still shows ≥ 3.5 periods (coins never qualifies). Crops, parameters and noise
come from ``numpy.random.default_rng`` seeded by the seed, the size and the group (or the groups
that share refs), so a size's cases do not depend on the other sizes. Run it to print the counts per
group.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

Array = NDArray[np.float32]
Render = Callable[[int, int, int, int], Array]  # (y, x, h, w) -> (h, w) crop at that position

GROUPS: tuple[str, ...] = (
    "good/same",
    "good/crop",
    "good/sharpen",
    "good/jpeg30",
    "good/brightness",
    "good/noise",
    "good/blur",
    "good/turned",
    "control/resize_conv",
    "good/alias_antialiased",
    "aperiodic/same",
    "aperiodic/crop",
    "bad/tiles_x2",
    "bad/tiles_half",
    "bad/band_x2",
    "bad/checkerboard",
    "bad/alias_nearest",
)


@dataclass(frozen=True)
class Case:
    """One labelled pair: ``pred`` judged against ``ref``."""

    name: str  # unique, e.g. "brick/crop3/256/tiles_x2"
    group: str  # one of GROUPS
    size: int  # 256 or 512
    pred: torch.Tensor  # (1, 1, size, size) float32 in [0, 1]
    ref: torch.Tensor  # (1, 1, size, size) float32 in [0, 1]
    period: float | None  # the ref's dominant period (px) when known
    source: str  # e.g. "brick", "grass", "noise_1/f", "grating_line"
    shape: str  # "line", "blob" or "aperiodic"


# Periods at native scale, measured on the whole image: the 2-D power-spectrum peak between 8 and
# 120 px (Hann window, 4× zero padding) is at brick 35.92 px, coins 69.75 px, page 18.07 px;
# _measured_period gives 36.0, 69.9 and 18.0 px, the profile of row means of coins 69.4 px.
# Brick's wave vector is along x (the columns of bricks; the staggered mortar joints along y give
# no comparable peak) and drifts with perspective: 256² crops measure 31-33 px in the top rows,
# 34-36 px in the middle and 38-39 px at the bottom. Coins: along y (the rows of coins; columns
# are ≈ 58 px apart, the diagonal lattice peak at ≈ 46 px is weaker). Page: along y (text lines).
_NATIVE_PERIOD = {"brick": 35.9, "coins": 69.4, "page": 18.0}
_NATURAL_SHAPE = {"brick": "line", "coins": "blob", "page": "line"}
_APERIODIC = (
    "grass",
    "gravel",
    "moon",
    "camera",
    "coffee",
    "astronaut",
    "chelsea",
    "rocket",
    "cell",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
NOISES = ("noise_white_uniform", "noise_white_gauss", "noise_1/f", "noise_1/f2")
_FAR = 2048  # procedural and noise crops start anywhere in [0, _FAR)
_X2_PERIODS = 3.5  # a ×2 case shows at least this many periods of the doubled texture


# ----------------------------------------------------------------------------- image helpers


def _f32(a: NDArray[np.floating]) -> Array:
    return np.ascontiguousarray(np.clip(a, 0.0, 1.0), dtype=np.float32)


def _tensor(a: NDArray[np.floating]) -> torch.Tensor:
    return torch.from_numpy(_f32(a).copy())[None, None]


def _resize(a: Array, h: int, w: int, *, antialias: bool = True) -> Array:
    """Bicubic resize (Keys a = -0.5, antialiased when shrinking), clipped to [0, 1]."""
    t = torch.from_numpy(_f32(a))[None, None]
    out = F.interpolate(t, size=(h, w), mode="bicubic", antialias=antialias, align_corners=False)
    return _f32(out[0, 0].numpy())


def _down2(a: Array) -> Array:
    return _resize(a, a.shape[0] // 2, a.shape[1] // 2)


def _smooth_down2(a: Array) -> Array:
    """Antialiased ↓2 for the alias cases: a σ = 1 px Gaussian, then the antialiased bicubic.

    Bicubic antialiasing alone leaves up to 23 % of the amplitude of a 2.8-px grating at 45°
    (10 % at 0°); with the Gaussian first it is ≤ 2 % at every angle, while a period of 12 px
    (after ↓2) keeps 97 % of its amplitude.
    """
    return _down2(_gauss_blur(a, 1.0))


def _up2(a: Array) -> Array:
    return _resize(a, a.shape[0] * 2, a.shape[1] * 2)


def _gauss_blur(a: Array, sigma: float) -> Array:
    """Separable Gaussian blur with mirrored borders."""
    r = max(1, math.ceil(3 * sigma))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = torch.from_numpy((g / g.sum()).astype(np.float32))
    t = F.pad(torch.from_numpy(_f32(a))[None, None], (r, r, r, r), mode="reflect")
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    return t[0, 0].numpy()


def _jpeg(a: Array, quality: int) -> Array:
    buf = io.BytesIO()
    Image.fromarray(np.round(_f32(a) * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def _minmax(a: NDArray[np.floating]) -> Array:
    lo, hi = float(a.min()), float(a.max())
    return _f32((a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5))


def _reflect(i: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Indices mirrored (symmetric, edge repeated) into [0, n)."""
    m = np.mod(i, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _measured_period(a: Array, near: float, tol: float = 1.4) -> float:
    """Dominant period (px) of ``a`` within [near/tol, near·tol]: Hann-windowed FFT peak.

    2× zero padding, then a parabola through the log power at the peak and its neighbours,
    along each axis. The band keeps the peak off the texture's harmonics.
    """
    h, w = a.shape
    y = (a - a.mean()) * np.outer(np.hanning(h), np.hanning(w))
    n = 2 * max(h, w)
    p = np.abs(np.fft.fft2(y, s=(n, n))) ** 2
    f = np.fft.fftfreq(n)
    r = np.hypot(f[:, None], f[None, :])
    band = (r >= 1 / (near * tol)) & (r <= tol / near)
    iy, ix = np.unravel_index(int(np.argmax(np.where(band, p, -1.0))), p.shape)
    lp = np.log(p + 1e-12 * p.max())

    def vertex(left: float, centre: float, right: float) -> float:
        d = left - 2 * centre + right
        return float(np.clip(0.5 * (left - right) / d, -1, 1)) if d < 0 else 0.0

    dy = vertex(lp[(iy - 1) % n, ix], lp[iy, ix], lp[(iy + 1) % n, ix])
    dx = vertex(lp[iy, (ix - 1) % n], lp[iy, ix], lp[iy, (ix + 1) % n])
    ky = (iy if iy < n // 2 else iy - n) + dy
    kx = (ix if ix < n // 2 else ix - n) + dx
    return float(n / math.hypot(ky, kx))


# ----------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Texture:
    """A texture that can be cropped anywhere; ``extent`` is its unmirrored area (None: all)."""

    source: str
    shape: str
    tag: str
    period: float | None  # at this scale; exact when ``exact``, else the measuring band's centre
    exact: bool
    extent: tuple[int, int] | None
    render: Render = field(repr=False)


@cache
def _grey(name: str) -> Array:
    img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return _f32(img)


@cache
def _natural_array(name: str, size: int) -> tuple[Array, float]:
    """The grey source resized up (when needed) so that a size × size crop fits; its scale."""
    img = _grey(name)
    h, w = img.shape
    scale = max(1.0, size / min(h, w))
    if scale > 1.0:
        hh, ww = max(size, round(h * scale)), max(size, round(w * scale))
        img = _resize(img, hh, ww, antialias=False)
        scale = (hh / h + ww / w) / 2
    img.setflags(write=False)
    return img, scale


def _natural(name: str, size: int) -> _Texture:
    img, scale = _natural_array(name, size)
    native = _NATIVE_PERIOD.get(name)

    def render(y: int, x: int, h: int, w: int) -> Array:
        iy = _reflect(np.arange(y, y + h), img.shape[0])
        ix = _reflect(np.arange(x, x + w), img.shape[1])
        return img[np.ix_(iy, ix)]

    return _Texture(
        source=name,
        shape=_NATURAL_SHAPE.get(name, "aperiodic"),
        tag="",
        period=None if native is None else native * scale,
        exact=False,
        extent=img.shape,
        render=render,
    )


def _grid(y: int, x: int, h: int, w: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return (
        np.arange(y, y + h, dtype=np.float64)[:, None],
        np.arange(x, x + w, dtype=np.float64)[None, :],
    )


def _grating(rng: np.random.Generator, pmax: float, tag: str) -> _Texture:
    """Soft square-wave stripes (tanh of a cosine) of exact period, any angle."""
    period = float(rng.uniform(12.0, min(60.0, pmax)))
    theta = math.radians(rng.uniform(0.0, 180.0))
    phase = rng.uniform(0.0, 2 * math.pi)
    edge = float(rng.uniform(2.0, 4.0))  # tanh gain: higher is squarer

    def render(y: int, x: int, h: int, w: int) -> Array:
        yy, xx = _grid(y, x, h, w)
        c = np.cos(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
        return _f32(0.5 + 0.35 * np.tanh(edge * c) / math.tanh(edge))

    name = f"{tag}-p{period:.1f}-a{math.degrees(theta):.0f}"
    return _Texture("grating_line", "line", name, period, True, None, render)


def _lattice(rng: np.random.Generator, pmax: float, tag: str) -> _Texture:
    """Gaussian blobs on a rotated square lattice of exact period."""
    period = float(rng.uniform(16.0, min(64.0, pmax)))
    theta = math.radians(rng.uniform(0.0, 90.0))
    su, sv = rng.uniform(0.0, 1.0, 2)
    width = float(rng.uniform(0.12, 0.22))  # blob σ as a fraction of the period
    c, s = math.cos(theta), math.sin(theta)

    def render(y: int, x: int, h: int, w: int) -> Array:
        yy, xx = _grid(y, x, h, w)
        u = (xx * c + yy * s) / period + su
        v = (yy * c - xx * s) / period + sv
        du, dv = u - np.round(u), v - np.round(v)
        out = np.zeros((h, w))
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                out += np.exp(-((du + i) ** 2 + (dv + j) ** 2) / (2 * width**2))
        return _f32(0.15 + 0.7 * out)

    name = f"{tag}-p{period:.1f}-a{math.degrees(theta):.0f}"
    return _Texture("lattice_blob", "blob", name, period, True, None, render)


def _tiled_patch(rng: np.random.Generator, pmax: float, tag: str) -> _Texture:
    """A random smooth P × P patch tiled seamlessly; its fundamental (period P) dominates."""
    p = int(rng.integers(24, int(min(48.0, pmax)) + 1))
    spec = np.fft.fft2(rng.standard_normal((p, p)))
    k = np.fft.fftfreq(p, 1.0 / p)  # cycles per patch
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spec *= np.exp(-k2 / (2 * 2.5**2))
    spec[0, 0] = 0
    fundamental = k2 == 1
    top = np.abs(spec[~fundamental]).max()
    spec[fundamental] *= 1.3 * top / np.abs(spec[fundamental])  # keeps the phases (Hermitian)
    patch = _minmax(np.fft.ifft2(spec).real) * 0.7 + 0.15

    def render(y: int, x: int, h: int, w: int) -> Array:
        return patch[np.ix_(np.arange(y, y + h) % p, np.arange(x, x + w) % p)]

    return _Texture("tiled_patch", "blob", f"{tag}-p{p}", float(p), True, None, render)


def _procedural(rng: np.random.Generator, n: int, pmax: float) -> list[_Texture]:
    """``n`` procedural periodic textures: gratings, lattices and patches in 2 : 2 : 1."""
    makers = (_grating, _lattice, _tiled_patch, _grating, _lattice)
    return [makers[i % len(makers)](rng, pmax, str(i)) for i in range(n)]


def noise(kind: str, n: int, rng: np.random.Generator) -> Array:
    """An n × n noise image in [0, 1]; power-law noises are shaped in the Fourier domain."""
    if kind == "noise_white_uniform":
        return _f32(rng.random((n, n)))
    z = rng.standard_normal((n, n))
    if kind != "noise_white_gauss":
        alpha = {"noise_1/f": 0.5, "noise_1/f2": 1.0}[kind]  # amplitude ∝ 1/f^alpha
        f = np.fft.fftfreq(n)
        r = np.hypot(f[:, None], f[None, :])
        r[0, 0] = np.inf
        z = np.fft.ifft2(np.fft.fft2(z) * r**-alpha).real
        z = (z - z.mean()) / z.std()
    return _f32(0.5 + 0.15 * z)


def _noise_texture(kind: str, size: int, rng: np.random.Generator, tag: str) -> _Texture:
    img = noise(kind, 2 * size, rng)

    def render(y: int, x: int, h: int, w: int) -> Array:
        return img[y : y + h, x : x + w]

    return _Texture(kind, "aperiodic", tag, None, True, img.shape, render)


def _tagged(tex: _Texture, tag: str) -> _Texture:
    return _Texture(tex.source, tex.shape, tag, tex.period, tex.exact, tex.extent, tex.render)


# ----------------------------------------------------------------------------- crops


def _pick(rng: np.random.Generator, tex: _Texture, h: int, w: int | None = None) -> tuple[int, int]:
    """A random h × w crop position inside the texture's unmirrored extent."""
    w = h if w is None else w
    if tex.extent is None:
        y, x = rng.integers(0, _FAR, 2)
        return int(y), int(x)
    return int(rng.integers(0, tex.extent[0] - h + 1)), int(rng.integers(0, tex.extent[1] - w + 1))


def _pick_centred(rng: np.random.Generator, tex: _Texture, size: int) -> tuple[int, int]:
    """A size × size crop position within size/16 of the centre of the unmirrored extent."""
    if tex.extent is None:
        return _pick(rng, tex, size)
    j = size // 16
    y, x = ((n - size) // 2 + int(rng.integers(-j, j + 1)) for n in tex.extent)
    return int(np.clip(y, 0, tex.extent[0] - size)), int(np.clip(x, 0, tex.extent[1] - size))


def _another(rng: np.random.Generator, tex: _Texture, size: int, y: int, x: int) -> Array:
    """Another view of the texture at the same scale as the crop at (y, x).

    A crop at least size/8 away (Chebyshev) inside the unmirrored extent, not near-blank when
    one is; where the extent holds no such crop (brick at 512, a 512² source at 512), the same
    crop turned upside down.
    """
    gap = size // 8
    if tex.extent is None:
        dy, dx = rng.integers(gap, 4 * size, 2) * rng.choice((-1, 1), 2)
        return tex.render(y + int(dy), x + int(dx), size, size)
    fallback: Array | None = None
    for _ in range(50):
        yy, xx = _pick(rng, tex, size)
        if max(abs(yy - y), abs(xx - x)) >= gap:
            a = tex.render(yy, xx, size, size)
            if _lively(a):
                return a
            fallback = a if fallback is None else fallback
    if fallback is not None:
        return fallback
    return np.flipud(tex.render(y, x, size, size)).copy()


def _inset(rng: np.random.Generator, pos: int, length: int | None, size: int) -> int:
    """Where a crop at ``pos`` sits in the 2·size region around it (one axis), in [0, size].

    Preferably in the region's middle half, with the region inside the unmirrored extent;
    where the extent is shorter than 2·size, the region is centred on it (mirrored both ends).
    """
    lo, hi = size // 4, 3 * size // 4
    if length is None:
        return int(rng.integers(lo, hi + 1))
    if length < 2 * size:
        return int(np.clip(pos - (length - 2 * size) // 2, 0, size))
    fit_lo, fit_hi = max(0, pos + 2 * size - length), min(size, pos)
    if max(lo, fit_lo) <= min(hi, fit_hi):
        fit_lo, fit_hi = max(lo, fit_lo), min(hi, fit_hi)
    return int(rng.integers(fit_lo, fit_hi + 1))


def _lively(a: Array) -> bool:
    """Not a near-blank crop (hubble's and retina's black sky/border)."""
    return float(a.std()) >= 0.03 and float(np.mean(a < 0.02)) < 0.5


# ----------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class _Ref:
    tex: _Texture
    y: int
    x: int
    period: float | None


class _Builder:
    """All cases of one size; one method per group, each seeded by (seed, size, group)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self._periods: dict[tuple[str, int, int], float | None] = {}
        self._names: set[str] = set()

    # -- shared pieces

    def rng(self, key: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.size, *key.encode()])

    def period(self, tex: _Texture, y: int, x: int, ref: Array) -> float | None:
        if tex.exact or tex.period is None:
            return tex.period
        key = (tex.source, y, x)
        if key not in self._periods:
            self._periods[key] = _measured_period(ref, tex.period)
        return self._periods[key]

    def refs(
        self,
        rng: np.random.Generator,
        natural: dict[str, int],
        n_procedural: int,
        *,
        x2: bool = False,
        distinct: bool = True,
        centred: bool = False,
    ) -> list[_Ref]:
        """Natural crops (name -> count) and procedural textures.

        ``x2``: only periods ≤ size/7. ``distinct``: drop a natural crop already taken (brick
        at 512 has only one), else keep it under a new tag. ``centred``: natural crops within
        size/16 of the source's centre, where its period is the whole source's.
        """
        s = self.size
        pmax = s / (2 * _X2_PERIODS) if x2 else math.inf
        out: list[_Ref] = []
        for name, count in natural.items():
            base = _natural(name, s)
            seen: set[tuple[int, int]] = set()
            for i in range(count):
                for _ in range(40):
                    y, x = _pick_centred(rng, base, s) if centred else _pick(rng, base, s)
                    a = base.render(y, x, s, s)
                    p = self.period(base, y, x, a)
                    if (p is None or p <= pmax) and _lively(a):
                        break
                else:
                    continue  # no crop qualifies
                if distinct and (y, x) in seen:
                    continue
                seen.add((y, x))
                out.append(_Ref(_tagged(base, f"crop{i}"), y, x, p))
        for tex in _procedural(rng, n_procedural, pmax):
            y, x = _pick(rng, tex, s)
            out.append(_Ref(tex, y, x, tex.period))
        return out

    def case(
        self,
        ref_: _Ref,
        group: str,
        pred: NDArray[np.floating],
        ref: NDArray[np.floating],
        variant: str = "",
    ) -> Case:
        tag = f"{ref_.tex.tag}-{variant}" if variant else ref_.tex.tag
        name = f"{ref_.tex.source}/{tag}/{self.size}/{group.split('/', 1)[1]}"
        if name in self._names:
            raise AssertionError(f"duplicate case name {name}")
        self._names.add(name)
        return Case(
            name=name,
            group=group,
            size=self.size,
            pred=_tensor(pred),
            ref=_tensor(ref),
            period=ref_.period,
            source=ref_.tex.source,
            shape=ref_.tex.shape,
        )

    def ref_image(self, r: _Ref) -> Array:
        return r.tex.render(r.y, r.x, self.size, self.size)

    def good_refs(self) -> list[_Ref]:
        crops = {256: {"brick": 3, "coins": 2, "page": 2}, 512: {"brick": 1, "coins": 1, "page": 2}}
        return self.refs(self.rng("good"), crops.get(self.size, {"brick": 2}), 15)

    # -- groups

    def build(self, group: str) -> Iterator[Case]:
        kind = group.split("/", 1)[1]
        if group.startswith("good/") and kind != "alias_antialiased":
            yield from self.good(group, kind)
        elif group.startswith("aperiodic/"):
            yield from self.aperiodic(group, kind)
        else:
            yield from getattr(self, kind)(group)

    def good(self, group: str, kind: str) -> Iterator[Case]:
        s = self.size
        rng = self.rng(group)
        for r in self.good_refs():
            ref = self.ref_image(r)
            pred: NDArray[np.floating]
            if kind == "same":
                pred = ref.copy()
            elif kind == "crop":
                pred = _another(rng, r.tex, s, r.y, r.x)
            elif kind == "sharpen":
                sigma = float(rng.choice((1.0, 1.5, 2.0)))
                pred = ref + 1.0 * (ref - _gauss_blur(ref, sigma))  # unsharp mask, amount 1
            elif kind == "jpeg30":
                pred = _jpeg(ref, 30)
            elif kind == "brightness":
                gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
                gamma = math.exp(rng.uniform(-0.25, 0.25))
                pred = gain * ref**gamma + offset
            elif kind == "noise":
                pred = ref + 0.02 * rng.standard_normal(ref.shape)
            elif kind == "blur":
                pred = _gauss_blur(ref, float(rng.uniform(0.8, 1.2)))
            elif kind == "turned":  # the same texture at another orientation than its reference
                angle = float(rng.uniform(20.0, 70.0) * rng.choice((-1.0, 1.0)))
                m = s // 4
                around = r.tex.render(r.y - m, r.x - m, s + 2 * m, s + 2 * m)
                turned = ndimage.rotate(around, angle, reshape=False, order=3, mode="reflect")
                pred = turned[m : m + s, m : m + s]
            else:
                raise ValueError(group)
            yield self.case(r, group, pred, ref)

    def aperiodic(self, group: str, kind: str) -> Iterator[Case]:
        s = self.size
        rng = self.rng("aperiodic")  # the same refs for both groups
        refs = self.refs(rng, dict.fromkeys(_APERIODIC, 6 if s <= 256 else 3), 0)
        for noise_kind in NOISES:
            for i in range(4):
                tex = _noise_texture(noise_kind, s, rng, f"seed{i}")
                refs.append(_Ref(tex, *_pick(rng, tex, s), None))
        other = self.rng(group)
        for r in refs:
            ref = self.ref_image(r)
            pred = ref.copy() if kind == "same" else _another(other, r.tex, s, r.y, r.x)
            yield self.case(r, group, pred, ref)

    def tiles_x2(self, group: str) -> Iterator[Case]:
        s, h = self.size, self.size // 2
        rng = self.rng(group)
        for r in self.refs(rng, {"brick": 3, "page": 2}, 17, x2=True, distinct=False):
            # the half region lies inside the ref; near its centre for a natural source (brick's
            # period drifts across the image: the ref's period is its average)
            if r.tex.exact:
                dy, dx = rng.integers(0, s - h + 1, 2)
            else:
                dy, dx = s // 4 + rng.integers(-(s // 16), s // 16 + 1, 2)
            pred = _up2(r.tex.render(r.y + int(dy), r.x + int(dx), h, h))
            yield self.case(r, group, pred, self.ref_image(r))

    def tiles_half(self, group: str) -> Iterator[Case]:
        s = self.size
        rng = self.rng(group)
        # Brick only where the double-size region fits in it: mirrored, its perspective drift
        # makes the region's dominant period that of its bottom rows (≈ 39 px, not 36 px).
        natural = {"coins": 2, "page": 2}
        if 2 * s <= min(_grey("brick").shape):
            natural["brick"] = 2
        refs = self.refs(rng, natural, 22 - 2 * len(natural), distinct=False, centred=True)
        for r in refs:
            extent = r.tex.extent or (None, None)
            oy = _inset(rng, r.y, extent[0], s)
            ox = _inset(rng, r.x, extent[1], s)
            pred = _down2(r.tex.render(r.y - oy, r.x - ox, 2 * s, 2 * s))
            yield self.case(r, group, pred, self.ref_image(r))

    def band_x2(self, group: str) -> Iterator[Case]:
        s = self.size
        rng = self.rng(group)
        heights = (s // 4, 3 * s // 8, s // 2, 3 * s // 4)
        brick = self.refs(rng, {"brick": 3}, 0, x2=True, distinct=False)
        # (ref, first row/column, rows/columns, vertical); brick's fixed band first
        bands: list[tuple[_Ref, int, int, bool]] = [(brick[0], 5 * s // 16, 3 * s // 8, False)]
        for i, hgt in enumerate(heights):
            bands.append((brick[i % len(brick)], int(rng.integers(0, s - hgt + 1)), hgt, False))
        for i in range(2):
            hgt = int(rng.choice(heights))
            bands.append(
                (brick[(i + 1) % len(brick)], int(rng.integers(0, s - hgt + 1)), hgt, True)
            )
        for j, r in enumerate(self.refs(rng, {"page": 2}, 14, x2=True, distinct=False)):
            hgt = int(rng.choice(heights))
            start = int(rng.integers(0, s - hgt + 1))
            vertical = j % 2 == 1 if r.tex.source == "page" else bool(rng.random() < 1 / 3)
            bands.append((r, start, hgt, vertical))
        for r, start, hgt, vertical in bands:
            ref = self.ref_image(r)
            doubled = _up2(r.tex.render(r.y + s // 4, r.x + s // 4, s // 2, s // 2))
            line = np.zeros(s)
            line[start : start + hgt] = 1.0
            line = np.convolve(line, np.ones(4) / 4, mode="same")  # 4-px ramps
            mask = line[None, :] if vertical else line[:, None]
            pred = ref * (1 - mask) + doubled * mask
            where = "cols" if vertical else "rows"
            yield self.case(r, group, pred, ref, f"{where}{start}-{start + hgt}")

    def _upsampler_refs(self) -> list[_Ref]:
        crops = {"brick": 2, "coins": 2, "page": 2, "grass": 1, "gravel": 1, "camera": 1, "moon": 1}
        return self.refs(self.rng("upsampler"), crops, 14)

    def checkerboard(self, group: str) -> Iterator[Case]:
        rng = self.rng(group)
        for k, r in enumerate(self._upsampler_refs()):
            ref = self.ref_image(r)
            ks = 3 + k % 2
            w, b = _random_init(rng, ks, ks * ks)
            half = torch.from_numpy(_down2(ref))[None, None]
            out = F.conv_transpose2d(half, w, b, stride=2, padding=1, output_padding=ks % 2)
            yield self.case(r, group, _minmax(out[0, 0].numpy()), ref, f"k{ks}")

    def resize_conv(self, group: str) -> Iterator[Case]:
        rng = self.rng(group)
        for r in self._upsampler_refs():
            ref = self.ref_image(r)
            w, b = _random_init(rng, 3, 9)
            up = np.repeat(np.repeat(_down2(ref), 2, axis=0), 2, axis=1)
            out = F.conv2d(F.pad(torch.from_numpy(up)[None, None], (1, 1, 1, 1), "reflect"), w, b)
            yield self.case(r, group, _minmax(out[0, 0].numpy()), ref)

    def _alias_specs(self) -> list[tuple[_Ref, float, float, float]]:
        """Refs with their fine grating: (ref, period at 2× size, angle in rad, phase)."""
        rng = self.rng("alias")
        crops = {"brick": 2, "coins": 2, "page": 2, "grass": 2, "gravel": 2}
        out = []
        for k, r in enumerate(self.refs(rng, crops, 12)):
            angle = ((0.0, 30.0, 45.0, 60.0, 90.0, 120.0, 135.0)[k % 7] + rng.uniform(-4, 4)) % 180
            q = float(rng.uniform(2.2, 2.8))
            out.append((r, q, math.radians(angle), float(rng.uniform(0, 2 * math.pi))))
        return out

    @staticmethod
    def _overlay(crop: Array, q: float, theta: float, phase: float) -> Array:
        """The crop upscaled ×2 (bicubic) under a fine grating, in [0, 1]."""
        big = _up2(crop)
        yy, xx = _grid(0, 0, *big.shape)
        fine = np.cos(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / q + phase)
        return _f32(0.15 + 0.7 * big + 0.15 * fine)

    def alias_nearest(self, group: str) -> Iterator[Case]:
        for r, q, theta, phase in self._alias_specs():
            big = self._overlay(self.ref_image(r), q, theta, phase)
            variant = f"q{q:.2f}-a{math.degrees(theta):.0f}"
            yield self.case(r, group, big[::2, ::2], _smooth_down2(big), variant)

    def alias_antialiased(self, group: str) -> Iterator[Case]:
        rng = self.rng(group)
        for k, (r, q, theta, phase) in enumerate(self._alias_specs()):
            ref = _smooth_down2(self._overlay(self.ref_image(r), q, theta, phase))
            if k % 2 == 0:
                pred, how = ref.copy(), "same"
            else:
                other = _another(rng, r.tex, self.size, r.y, r.x)
                pred, how = _smooth_down2(self._overlay(other, q, theta, phase)), "crop"
            variant = f"q{q:.2f}-a{math.degrees(theta):.0f}-{how}"
            yield self.case(r, group, pred, ref, variant)


def _random_init(
    rng: np.random.Generator, k: int, fan_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 → 1 channel k × k kernel and bias, drawn as PyTorch's default init draws them.

    Uniform in ±1/√fan_in; the sign is flipped where the weights sum below zero, so the image
    comes out upright rather than inverted.
    """
    bound = 1.0 / math.sqrt(fan_in)
    w = rng.uniform(-bound, bound, (1, 1, k, k))
    b = rng.uniform(-bound, bound, 1)
    sign = -1.0 if w.sum() < 0 else 1.0
    return torch.from_numpy(sign * w).float(), torch.from_numpy(sign * b).float()


def cases(sizes: tuple[int, ...] = (256, 512), seed: int = 0) -> Iterator[Case]:
    """Every case, size by size and group by group (in :data:`GROUPS` order), built lazily."""
    for size in sizes:
        builder = _Builder(size, seed)
        for group in GROUPS:
            yield from builder.build(group)


if __name__ == "__main__":
    torch.set_num_threads(1)
    start = time.perf_counter()
    counts: dict[tuple[str, int], int] = {}
    sizes = (256, 512)
    for c in cases(sizes):
        counts[c.group, c.size] = counts.get((c.group, c.size), 0) + 1
    elapsed = time.perf_counter() - start
    print(f"{'group':<24}" + "".join(f"{s:>7}" for s in sizes) + f"{'all':>7}")
    for g in GROUPS:
        row = [counts.get((g, s), 0) for s in sizes]
        print(f"{g:<24}" + "".join(f"{n:>7}" for n in row) + f"{sum(row):>7}")
    totals = [sum(n for (_, s), n in counts.items() if s == size) for size in sizes]
    print(f"{'total':<24}" + "".join(f"{n:>7}" for n in totals) + f"{sum(totals):>7}")
    print(f"built in {elapsed:.1f} s")
