"""texwatch diagnose on images written by the tests at known periods."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _textures import PERIOD, SIZE, grating, save_png, smooth_noise
from PIL import Image

from texwatch import spectral
from texwatch._images import load_image
from texwatch._progress import progress
from texwatch.cli import main
from texwatch.diagnose import diagnose


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    return {
        "clean": save_png(grating(), root / "clean.png"),
        "doubled": save_png(grating(2 * PERIOD), root / "doubled.png"),
        "halved": save_png(grating(PERIOD / 2), root / "halved.png"),
        "checker": save_png(grating(checker=0.15), root / "checker.png"),
        "noise": save_png(smooth_noise(), root / "noise.png"),
        "tile": save_png(grating(size=64, seed=3), root / "tile.png"),
    }


@pytest.fixture(scope="module")
def result(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("diag")
    order = ["clean", "doubled", "halved", "checker", "noise"]
    doc = diagnose([images[k] for k in order], ref=images["tile"], report_dir=out, max_images=3)
    return doc, out


def _image(doc: dict, stem: str) -> dict:
    return next(i for i in doc["images"] if Path(i["name"]).stem == stem)


def test_numbers_match_the_spectral_functions(result: tuple[dict, Path], images: dict) -> None:
    doc, _ = result
    ref = load_image(images["tile"])
    for stem in ("clean", "doubled", "checker"):
        x = load_image(images[stem])
        want = spectral.texture_metrics(x, ref=ref, bands=True)
        got = _image(doc, stem)["metrics"]
        assert set(got) == set(spectral.METRIC_KEYS) | set(spectral.BAND_KEYS)
        for key, value in want.items():
            assert got[key] == pytest.approx(float(value[0]), rel=1e-6, nan_ok=True), key
        periodicity = _image(doc, stem)["periodicity"]
        assert periodicity["periodic"] == (got["periodic"] == 1.0)
        assert periodicity["prominence_db"] == got["peak_prominence"]


def test_known_periods_and_readings(result: tuple[dict, Path]) -> None:
    doc, _ = result
    clean = _image(doc, "clean")
    assert clean["metrics"]["fundamental_radius_bin"] == pytest.approx(SIZE / PERIOD, abs=0.2)
    assert clean["metrics"]["ref_radius_bin"] == pytest.approx(SIZE / PERIOD, abs=0.2)
    assert clean["periodicity"]["periodic"] and clean["causes"] == []
    assert clean["periodicity"]["period_px"] == pytest.approx(PERIOD, rel=0.02)
    assert clean["metrics"]["tile_scale"] == pytest.approx(1.0, abs=0.02)
    assert clean["diff"] is None  # the first image is the baseline
    doubled = _image(doc, "doubled")
    assert doubled["metrics"]["tile_scale"] == pytest.approx(2.0, rel=0.02)
    assert [c["key"] for c in doubled["causes"]] == ["harmonic_lock"]
    assert "(tiles doubled)" in doubled["causes"][0]["evidence"][0]
    halved = _image(doc, "halved")
    assert halved["metrics"]["tile_scale"] == pytest.approx(0.5, rel=0.02)
    assert [c["key"] for c in halved["causes"]] == ["harmonic_lock"]
    assert "(tiles halved)" in halved["causes"][0]["evidence"][0]
    checker = _image(doc, "checker")
    assert [c["key"] for c in checker["causes"]] == ["checkerboard"]
    noise = _image(doc, "noise")
    periodicity = noise["periodicity"]
    assert not periodicity["periodic"] and math.isnan(periodicity["period_px"])
    assert periodicity["prominence_db"] == noise["metrics"]["peak_prominence"]
    assert math.isnan(noise["metrics"]["fundamental_radius_bin"])
    assert noise["causes"] == []  # no periodic texture: no period-based reading


def test_diff_heatmap_against_the_first_image(result: tuple[dict, Path], images: dict) -> None:
    doc, _ = result
    diff = _image(doc, "checker")["diff"]
    a, b = load_image(images["checker"]), load_image(images["clean"])
    assert diff["against"] == str(images["clean"])
    assert diff["mean_abs_diff"] == pytest.approx(float((a - b).abs().mean()), rel=1e-6)
    heat = spectral.diff_heatmap(a, b, scale=4.0)
    assert diff["saturated_share"] == pytest.approx(float((heat >= 1.0).float().mean()))


def test_figures_for_max_images_and_json_for_all(result: tuple[dict, Path]) -> None:
    doc, out = result
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["00_clean.png", "01_doubled.png", "02_halved.png"]
    with Image.open(out / pngs[1]) as img:
        assert img.size == (1500, 900)
    on_disk = json.loads((out / "diagnose.json").read_text())
    assert len(on_disk["images"]) == 5 and on_disk["images"][4]["figure"] is None
    assert on_disk["images"][4]["periodicity"]["period_px"] is None  # noise: NaN as null
    assert on_disk["settings"]["max_images"] == 3


def test_sobel_anomalies_find_a_planted_defect(tmp_path: Path) -> None:
    x = smooth_noise(sigma=4.0)
    x[..., 60:70, 30:40] = 1.0  # a bright square with sharp edges
    doc = diagnose([x])
    found = doc["images"][0]["anomalies"]
    assert found["count"] >= 1
    y0, x0, y1, x1 = found["boxes"][0]
    assert y0 <= 61 and y1 >= 69 and x0 <= 31 and x1 >= 39


def test_periodicity_is_the_periodic_metric() -> None:
    for period in (8, 16, 32):
        image = diagnose([grating(period)])["images"][0]
        assert image["periodicity"]["periodic"]
        assert image["periodicity"]["period_px"] == pytest.approx(period, rel=0.05)
    for noise in (
        smooth_noise(seed=4),
        torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)),
    ):
        image = diagnose([noise])["images"][0]
        assert not image["periodicity"]["periodic"] and image["metrics"]["periodic"] == 0.0


def test_mask_is_applied_and_checked(tmp_path: Path, images: dict) -> None:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:112, 16:112] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    doc = diagnose([images["clean"]], mask=tmp_path / "m.png")
    m = torch.from_numpy(mask / 255.0).float()[None, None]
    want = spectral.texture_metrics(load_image(images["clean"]), mask=m, bands=True)
    got = doc["images"][0]["metrics"]["fundamental_radius_bin"]
    assert got == pytest.approx(float(want["fundamental_radius_bin"][0]), rel=1e-6)


def test_cli_writes_png_and_json_and_says_where(
    images: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "diagnose",
        str(images["clean"]),
        str(images["doubled"]),
        "--ref",
        str(images["tile"]),
        "-o",
        str(out),
        "--heatmap-scale",
        "8",
        "--threshold",
        "harmonic_scale=2.5",
        "--max-images",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    wrote = f"texwatch diagnose: wrote {out / 'diagnose.json'} (and 1 PNG figure beside it)"
    assert printed.out == wrote + "\n"
    assert printed.err == ""  # no progress bar off a terminal
    doc = json.loads((out / "diagnose.json").read_text())
    assert doc["settings"]["heatmap_scale"] == 8.0
    assert doc["settings"]["thresholds"]["harmonic_scale"] == 2.5
    assert "fft_threshold" not in doc["settings"]
    doubled = doc["images"][1]
    assert doubled["metrics"]["tile_scale"] == pytest.approx(2.0, rel=0.02)
    assert "harmonic_lock" not in [c["key"] for c in doubled["causes"]]  # 2.0 < 2.5
    assert [p.name for p in out.glob("*.png")] == ["00_clean.png"]


def test_the_previous_releases_flags_still_work_with_a_warning(
    images: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["diagnose", "--images", str(images["clean"]), str(images["doubled"])]
    assert main([*argv, f"--report={out}", "--max-images", "0", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [
        "texwatch diagnose: warning: --images is deprecated and goes in the next release; "
        "give its values as positional arguments",
        "texwatch diagnose: warning: --report is deprecated and goes in the next release; "
        "use --out",
    ]
    assert printed.out == f"texwatch diagnose: wrote {out / 'diagnose.json'}\n"
    doc = json.loads((out / "diagnose.json").read_text())
    assert [Path(image["name"]).name for image in doc["images"]] == ["clean.png", "doubled.png"]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("texwatch diagnose: error: "), err
    return err


def test_bad_inputs_exit_2_with_one_line(images: dict, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    clean = str(images["clean"])
    base = ["diagnose", "-o", out]
    assert "does not exist" in _one_line_error(capsys, [*base, str(tmp_path / "no.png")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert "cannot read" in _one_line_error(capsys, [*base, str(broken)])
    small = tmp_path / "small.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(small)
    assert "--mask has size 8x8" in _one_line_error(capsys, [*base, clean, "--mask", str(small)])
    assert "--ref" in _one_line_error(capsys, [*base, clean, "--ref", str(tmp_path / "no.png")])
    assert "--heatmap-scale" in _one_line_error(capsys, [*base, clean, "--heatmap-scale", "-1"])
    assert "--max-images" in _one_line_error(capsys, [*base, clean, "--max-images", "-2"])
    assert "--threshold" in _one_line_error(capsys, [*base, clean, "--threshold", "x=1"])
    afile = tmp_path / "file"
    afile.write_text("a file")
    assert "is a file" in _one_line_error(capsys, ["diagnose", "--out", str(afile), clean])
    assert not Path(out).exists()  # nothing is written for a bad input


def test_progress_bar_on_a_terminal_and_quiet_otherwise(monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress(3, "diagnose", quiet=False) as bar:
        bar.update(3)
    assert "diagnose:" in term.getvalue() and "/3" in term.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress(3, "diagnose", quiet=True) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
