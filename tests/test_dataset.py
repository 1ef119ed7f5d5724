"""texwatch dataset on a folder written by the tests, and the image/mask loaders under it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _textures import SIZE, grating, save_png, smooth_noise
from PIL import Image

from texwatch import spectral
from texwatch._images import load_image, load_mask, read_mask_values, to_display
from texwatch.cli import main
from texwatch.dataset import check_mask, dataset_health


def _mask(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    data, masks = root / "images", root / "masks"
    (data / "walls").mkdir(parents=True)
    (masks / "walls").mkdir(parents=True)
    good = np.zeros((SIZE, SIZE))
    good[16:112, 16:112] = 255
    for i in range(6):
        save_png(smooth_noise(seed=i), data / f"n{i}.png")
        _mask(masks / f"n{i}.png", good)
    save_png(grating(seed=3), data / "walls" / "brick.png")  # a periodic texture
    save_png(smooth_noise(size=32, seed=11).repeat(1, 1, 4, 4), data / "walls" / "pasted.png")
    save_png(0.8 + 0.2 * smooth_noise(seed=20), data / "bright.png")  # brightness outlier
    (data / "broken.png").write_bytes(b"not an image at all")
    (data / "notes.txt").write_text("not an image either, and not listed")
    _mask(masks / "walls" / "brick.png", np.full((64, 64), 255))  # wrong size and full
    _mask(masks / "bright.png", np.zeros((SIZE, SIZE)))  # empty
    soft = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE))
    _mask(masks / "walls" / "pasted.png", soft)  # not binary
    np.save(masks / "stray.npy", np.ones((4, 4)))  # a mask with no image
    return data, masks


@pytest.fixture(scope="module")
def health(folder: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, masks = folder
    out = tmp_path_factory.mktemp("health")
    assert main(["dataset", str(data), "--masks", str(masks), "-o", str(out), "--quiet"]) == 0
    assert (out / "dataset.png").stat().st_size > 10_000
    return json.loads((out / "dataset.json").read_text())


def test_tiling_sources_are_found(health: dict) -> None:
    tiling = {t["path"]: t for t in health["tiling"]}
    assert set(tiling) == {"walls/brick.png", "walls/pasted.png"}
    assert tiling["walls/brick.png"]["period_px"] == pytest.approx(16, abs=0.5)
    pasted = tiling["walls/pasted.png"]
    assert pasted["period_px"] == pytest.approx(32, abs=0.5) and pasted["exact_repeat"]
    assert pasted["repeats_in_image"] == pytest.approx(4, abs=0.1)


def test_tiling_is_the_periodic_metric(health: dict, folder: tuple[Path, Path]) -> None:
    data, _ = folder
    assert "fft_threshold" not in health["settings"]
    for record in health["images"]:
        m = spectral.texture_metrics(load_image(data / record["path"]))
        assert record["tiles"] == (float(m["periodic"][0]) == 1.0), record["path"]
        assert record["peak_prominence"] == pytest.approx(float(m["peak_prominence"][0])), record[
            "path"
        ]


def test_invalid_masks_are_listed_with_their_problems(health: dict) -> None:
    invalid = {
        m["image"]: [p.split(":")[0] for p in m["problems"]] for m in health["masks"]["invalid"]
    }
    assert invalid == {
        "walls/brick.png": ["wrong_size", "full"],
        "bright.png": ["empty"],
        "walls/pasted.png": ["not_binary"],
    }
    assert health["masks"]["missing"] == []
    assert health["masks"]["orphans"] == ["stray.npy"]


def test_outliers_unreadable_files_and_summary(health: dict) -> None:
    flagged = {(o["path"], o["metric"], o["side"]) for o in health["outliers"]}
    assert ("bright.png", "brightness", "high") in flagged
    assert {p for p, _, _ in flagged} == {"bright.png"}
    assert [u["path"] for u in health["unreadable"]] == ["broken.png"]
    assert health["summary"] == {
        "files": 10,
        "images": 9,
        "unreadable": 1,
        "tiling": 2,
        "exact_repeats": 2,
        "invalid_masks": 3,
        "missing_masks": 0,
        "orphan_masks": 1,
        "outliers": len(health["outliers"]),
        "outliers_judged": True,
    }
    brightness = [i["brightness"] for i in health["images"]]
    assert health["distributions"]["brightness"]["median"] == pytest.approx(np.median(brightness))
    assert health["distributions"]["brightness"]["skewness"] > 1.0  # one bright image


def test_missing_masks_without_a_mask_folder_entry(
    folder: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = folder
    empty = tmp_path / "masks"
    empty.mkdir()
    doc = dataset_health(data, masks=empty)
    assert len(doc["masks"]["missing"]) == 9
    assert dataset_health(data)["masks"] == {"invalid": [], "missing": [], "orphans": []}


@pytest.mark.parametrize(
    ("values", "kwargs", "problems"),
    [
        (np.array([[0.0, 1.0], [1.0, 0.0]]), {}, []),
        (np.array([[0.0, 0.5], [1.0, 0.0]]), {}, ["not_binary"]),
        (np.array([[0.0, 0.5], [1.0, 0.0]]), {"binary": False}, []),
        (np.zeros((2, 2)), {}, ["empty"]),
        (np.ones((2, 2)), {}, ["full"]),
        (np.array([[0.0, 2.0], [1.0, -1.0]]), {"binary": False}, ["out_of_range"]),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), {}, ["nonfinite"]),
        (np.array([[0.0, 1.0]]), {"size": (2, 2)}, ["wrong_size"]),
    ],
)
def test_check_mask(values: np.ndarray, kwargs: dict, problems: list[str]) -> None:
    assert [p.split(":")[0] for p in check_mask(values, **kwargs)] == problems


def test_out_of_range_float_masks_from_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.array([[0.0, 1.5], [0.2, 0.0]]))
    values = read_mask_values(tmp_path / "m.npy")
    assert "out_of_range" in check_mask(values, binary=False)[0]
    with pytest.raises(ValueError, match=r"values in \[0, 1.5\], expected \[0, 1\]"):
        load_mask(tmp_path / "m.npy")


def test_image_loading_modes(tmp_path: Path) -> None:
    grey16 = (np.arange(64 * 32).reshape(32, 64) * 30).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    assert x.shape == (1, 1, 32, 64) and x.dtype == torch.float32
    assert float(x.max()) == pytest.approx(grey16.max() / 65535.0)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]  # alpha dropped
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "c.jpg", quality=95)
    assert load_image(tmp_path / "c.jpg").shape == (1, 3, 8, 8)
    np.save(tmp_path / "a.npy", np.full((4, 5), 0.25))
    assert load_image(tmp_path / "a.npy").shape == (1, 1, 4, 5)
    np.save(tmp_path / "bad.npy", np.full((4, 5), 3.0))
    with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
        load_image(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match="all zero"):
        np.save(tmp_path / "z.npy", np.zeros((4, 4)))
        load_mask(tmp_path / "z.npy")
    latents = np.random.default_rng(0).standard_normal((4, 8, 8)) * 3
    shown = to_display(latents)
    assert shown.shape == (8, 8, 3) and shown.min() >= 0.0 and shown.max() <= 1.0


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("texwatch dataset: error: "), err
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    assert "does not exist" in _one_line_error(capsys, ["dataset", str(tmp_path / "x"), "-o", out])
    (tmp_path / "empty").mkdir()
    assert "no image file" in _one_line_error(
        capsys, ["dataset", str(tmp_path / "empty"), "-o", out]
    )
    save_png(grating(), tmp_path / "one.png")
    assert "--masks" in _one_line_error(
        capsys, ["dataset", str(tmp_path), "--masks", str(tmp_path / "nomasks"), "-o", out]
    )
    assert "--outlier-z" in _one_line_error(
        capsys, ["dataset", str(tmp_path), "--outlier-z", "0", "--out", out]
    )


def test_cli_says_where_it_wrote_and_still_takes_the_report_flag_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_png(grating(), tmp_path / "one.png")
    out = tmp_path / "out"
    assert main(["dataset", str(tmp_path), "--report", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == (
        "texwatch dataset: warning: --report is deprecated and goes in the next release; "
        "use --out\n"
    )
    assert printed.out == (
        f"texwatch dataset: wrote {out / 'dataset.json'} (and dataset.png beside it)\n"
    )
    assert json.loads((out / "dataset.json").read_text())["summary"]["images"] == 1
