"""texwatch.alarms: each alarm's reading of a metric, at its bounds and on NaN."""

from __future__ import annotations

import math

import pytest

from texwatch import alarms


@pytest.mark.parametrize(
    ("scale", "reading"),
    [
        (2.0, "half"),
        (alarms.HARMONIC_SCALE, "half"),
        (0.5, "2f"),
        (1 / alarms.HARMONIC_SCALE, "2f"),
        (1.0, None),
        (1.4, None),
        (0.7, None),
        (math.nan, None),
        (math.inf, None),
        (0.0, None),
    ],
)
def test_harmonic_lock_reads_doubled_and_halved_tiles(scale: float, reading: str | None) -> None:
    assert alarms.harmonic_lock(scale) == reading


def test_a_threshold_moves_the_lock() -> None:
    assert alarms.harmonic_lock(1.7, threshold=2.0) is None
    assert alarms.harmonic_lock(0.55, threshold=2.0) is None
    assert alarms.harmonic_lock(2.0, threshold=2.0) == "half"


def test_banding_and_aliasing_fire_at_their_threshold_and_never_on_nan() -> None:
    assert alarms.banding(alarms.BAND_SCORE) and not alarms.banding(alarms.BAND_SCORE / 2)
    assert alarms.aliasing(alarms.ALIAS_SHARE) and not alarms.aliasing(alarms.ALIAS_SHARE / 2)
    assert not alarms.banding(math.nan) and not alarms.aliasing(math.nan)


def test_checkerboard_is_judged_against_white_noise_of_the_same_size() -> None:
    # 3 of every 64 columns and rows lie in the Nyquist band: white noise's share there
    assert alarms.white_nyquist_share((64, 64)) == pytest.approx(1 - (61 / 64) ** 2, abs=1e-3)
    white = alarms.white_nyquist_share((256, 256))
    assert alarms.checkerboard(3 * white, (256, 256))
    assert not alarms.checkerboard(1.5 * white, (256, 256))
    assert not alarms.checkerboard(math.nan, (256, 256))
