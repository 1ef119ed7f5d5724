"""texwatch report: real stores written through the client, numbers checked against spectral."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _textures import write_run
from pypdf import PdfReader

from texwatch import alarms, spectral
from texwatch.cli import main
from texwatch.report import (
    ProbableCause,
    ReportError,
    Thresholds,
    probable_causes,
    step_table,
)
from texwatch.store import DERIVED_SCALARS, RESERVED_SCALARS, open_run

EVIL = "<script>alert(1)</script>"
CLEAN = "clean $\\frac{$ run"  # dollar signs: drawn literally, never parsed as mathtext
DERIVE = ["--window", "32", "--dead-window", "30"]  # the runs are 90 steps long


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "clean": write_run(root / "clean.zarr", name=CLEAN, faulty=False),
        "faulty": write_run(root / "faulty.zarr", name=EVIL, faulty=True),
    }


@pytest.fixture(scope="module")
def report(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["report", str(runs["clean"]), str(runs["faulty"]), "-o", str(out), "--quiet"]
    extra = ["--threshold", "lr_jump=1.6", "--threshold", "alias_share=0.2"]
    assert main([*argv, "--checkpoints", *DERIVE, *extra]) == 0
    return out


def _doc(report: Path) -> dict:
    return json.loads((report / "report.json").read_text())


def _run(doc: dict, label: str) -> dict:
    return next(r for r in doc["runs"] if r["label"] == label)


def _causes(doc: dict, label: str) -> dict[str, dict]:
    return {c["key"]: c for c in _run(doc, label)["causes"]}


def test_outputs_are_written_and_the_pdf_opens(report: Path) -> None:
    assert {"index.html", "report.pdf", "report.json"} <= {p.name for p in report.iterdir()}
    pdf = PdfReader(report / "report.pdf")
    assert len(pdf.pages) >= 10  # text pages and one page per figure
    assert pdf.metadata.title == "texwatch report"
    html = (report / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 10  # self-contained: images inline
    assert "http://" not in html and "https://" not in html


def test_store_strings_are_escaped_in_the_html(report: Path) -> None:
    html = (report / "index.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_checkpoint_numbers_match_the_spectral_functions(report: Path, runs: dict) -> None:
    doc = _doc(report)
    assert doc["steps"] == [40, 80]
    run = open_run(runs["faulty"])
    for entry in doc["checkpoints"]:
        step = entry["step"]
        column = next(c for c in entry["columns"] if c["run"] == EVIL and c["stream"] == "pred")
        _, pred = run.stream_at("pred", [step])
        _, target = run.stream_at("target", [step])
        x, ref = torch.as_tensor(pred).float(), torch.as_tensor(target).float()
        want = spectral.texture_metrics(x, ref=ref)
        for key in spectral.METRIC_KEYS:
            expected = float(want[key].double().mean())
            got = column[key]
            if math.isnan(expected):
                assert got is None, key
            else:
                # float32 FFTs over batches of another size: equal to ~1e-5
                assert got == pytest.approx(expected, rel=1e-4, abs=1e-5), key
        health = spectral.latent_health(x)
        assert column["std"] == pytest.approx(float(health["std"].double().mean()), rel=1e-5)
        assert column["items"] == 2
        assert column["fft_period_px"] == pytest.approx(64 / column["fundamental_radius_bin"])
    # the doubled tile at step 80: f* half the reference's
    last = next(
        c for c in doc["checkpoints"][1]["columns"] if c["run"] == EVIL and c["stream"] == "pred"
    )
    assert last["fundamental_radius_bin"] == pytest.approx(last["ref_radius_bin"] / 2, rel=0.05)
    assert last["periodic"] == 1.0 and last["tile_scale"] == pytest.approx(2.0, rel=0.05)


def test_probable_causes_fire_for_the_faults_and_not_for_the_clean_run(report: Path) -> None:
    doc = _doc(report)
    assert _causes(doc, CLEAN) == {}
    causes = _causes(doc, EVIL)
    assert set(causes) == {"harmonic_lock", "value_range", "loss_spike_bad_batch", "dead_term"}
    lock = causes["harmonic_lock"]
    assert all(v["step"] == 80 and v["stream"] == "pred" for v in lock["values"])
    assert {(v["metric"], v["lock"]) for v in lock["values"]} == {("tile_scale", "half")}
    assert all(v["value"] == pytest.approx(2.0, rel=0.05) for v in lock["values"])
    assert lock["thresholds"] == {"harmonic_scale": alarms.HARMONIC_SCALE}
    assert "the reference's (tiles doubled)" in lock["evidence"][0]
    spike = causes["loss_spike_bad_batch"]["values"][0]
    assert spike["step"] == 70 and spike["rule"] == "sigma" and 777 in spike["sample_ids"]
    dead = causes["dead_term"]["values"]
    assert [d["term"] for d in dead] == ["edge"] and dead[0]["weight"] == pytest.approx(0.06)
    assert causes["value_range"]["values"][0]["stream"] == "latents"


def test_json_holds_loss_terms_and_health(report: Path) -> None:
    faulty = _run(_doc(report), EVIL)
    assert faulty["loss"]["spikes"] == 1 and faulty["loss"]["max_loss"] == pytest.approx(8.0)
    assert [s["step"] for s in faulty["spikes"]] == [70]
    assert faulty["terms"]["edge"]["dead"] and not faulty["terms"]["v"]["dead"]
    assert faulty["terms"]["edge"]["last_weight"] == pytest.approx(0.06)
    series = faulty["series"]["scalars"]
    weighted = np.array(series["weighted/v"], dtype=float)
    assert np.allclose(weighted, np.array(series["term/v"], dtype=float) * 1.0)
    assert faulty["health"]["latents"]["max_clip_fraction"] > 0.1
    assert faulty["checkpoint_steps"] == [40, 80]
    assert _doc(report)["validation"][0]["stream"] == "val/0"


def test_thresholds_given_on_the_command_line_are_used_and_recorded(report: Path) -> None:
    thresholds = _doc(report)["thresholds"]
    assert thresholds["lr_jump"] == 1.6  # --threshold lr_jump=1.6
    assert thresholds["alias_share"] == 0.2  # --threshold alias_share=0.2
    assert thresholds["harmonic_scale"] == alarms.HARMONIC_SCALE


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("texwatch report: error: ")
    return err


def test_bad_inputs_exit_2_with_one_line(runs: dict, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    clean = str(runs["clean"])
    assert "does not exist" in _one_line_error(
        capsys, ["report", str(tmp_path / "nope.zarr"), "-o", out]
    )
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    assert "is a file" in _one_line_error(capsys, ["report", str(afile), "-o", out])
    assert "not a Zarr" in _one_line_error(capsys, ["report", str(tmp_path), "-o", out])
    assert "step 12345 is not in run" in _one_line_error(
        capsys, ["report", clean, "-o", out, "--steps", "40,12345"]
    )
    assert "not an integer" in _one_line_error(
        capsys, ["report", clean, "-o", out, "--steps", "4x"]
    )
    assert "--threshold" in _one_line_error(
        capsys, ["report", clean, "-o", out, "--threshold", "nonsense=1"]
    )
    assert "--every" in _one_line_error(capsys, ["report", clean, "-o", out, "--every", "0"])
    assert "is a file" in _one_line_error(capsys, ["report", clean, "-o", str(afile)])
    assert "--ref" in _one_line_error(
        capsys, ["report", clean, "-o", out, "--ref", str(tmp_path / "missing.png")]
    )


def test_unknown_schema_and_empty_and_no_checkpoints_exit_2(tmp_path: Path, capsys) -> None:
    import texwatch.client as tw

    empty = tmp_path / "empty.zarr"
    tw.Recorder(empty, run="empty").close()
    out = str(tmp_path / "out")
    if (empty / "zarr.json").exists():
        assert "no committed rows" in _one_line_error(capsys, ["report", str(empty), "-o", out])
    plain = tmp_path / "plain.zarr"
    rec = tw.Recorder(plain, run="plain")
    for step in range(5):
        rec.record(step, 1.0)
    rec.close()
    assert "no run marks checkpoint" in _one_line_error(
        capsys, ["report", str(plain), "-o", out, "--checkpoints"]
    )
    meta = json.loads((plain / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (plain / "zarr.json").write_text(json.dumps(meta))
    assert "schema_version 99" in _one_line_error(capsys, ["report", str(plain), "-o", out])


# ---- the readings on their own: synthetic per-step tables -----------------------------------


def _scalars(
    n: int = 300,
    spike: int | None = None,
    after: float = 1.0,
    lr_jump: bool = False,
) -> dict[str, np.ndarray]:
    steps = np.arange(n)
    loss = np.ones(n)
    flags = np.zeros(n)
    rule = np.zeros(n)
    lr = np.full(n, 1e-4)
    if spike is not None:
        loss[spike] = 10.0
        loss[spike + 1 :] = after
        flags[spike], rule[spike] = 1, 1
        if lr_jump:
            lr[spike - 5 :] = 1e-3
    return {
        "step": steps,
        "loss": loss,
        "loss_ema": np.ones(n),
        "loss_zscore": np.zeros(n),
        "spike": flags,
        "spike_rule": rule,
        "lr": lr,
    }


def test_spike_readings_tell_bad_batch_lr_and_ema_break_apart() -> None:
    def keys(scal: dict, ids: dict | None = None) -> list[str]:
        return [c.key for c in probable_causes(scal, {}, [], sizes={}, sample_ids=ids)]

    assert keys(_scalars()) == []
    assert keys(_scalars(spike=200), {200: [1, 2]}) == ["loss_spike_bad_batch"]
    assert keys(_scalars(spike=200, after=3.0)) == ["loss_spike_ema_break"]
    assert keys(_scalars(spike=200, lr_jump=True)) == ["loss_spike_learning_rate"]


def test_a_sample_in_several_spiking_batches_is_named() -> None:
    scal = _scalars()
    for s in (100, 200):
        scal["loss"][s], scal["spike"][s], scal["spike_rule"][s] = 10.0, 1, 1
    (cause,) = probable_causes(scal, {}, [], sizes={}, sample_ids={100: [3, 9], 200: [9, 4]})
    assert isinstance(cause, ProbableCause)
    assert "9 (×2)" in cause.evidence[-1]


def _stream(**values: float) -> dict[str, dict[str, np.ndarray]]:
    table = {"step": np.array([10]), **{k: np.array([v]) for k, v in values.items()}}
    return {"pred": table}


def _keys(thresholds: Thresholds | None = None, **values: float) -> list[str]:
    causes = probable_causes(
        {}, _stream(**values), [10], sizes={"pred": (64, 64)}, thresholds=thresholds
    )
    return [c.key for c in causes]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"periodic": 1.0, "tile_scale": 2.0}, "harmonic_lock"),
        ({"periodic": 1.0, "tile_scale": 0.5}, "harmonic_lock"),
        (
            {"periodic": 1.0, "fundamental_radius_bin": 8.0, "acf_first_peak_radius_bin": 16.0},
            "acf_fft_disagree",
        ),
        ({"periodic": 1.0, "axis_ratio_at_f": 0.8}, "banding"),
        ({"periodic": 1.0, "band_score": 0.9, "band_max_run": 48.0}, "banding"),
        ({"checkerboard_energy": 0.5}, "checkerboard"),
        ({"alias_score": 0.5}, "aliasing"),
        ({"clip_fraction": 0.2}, "value_range"),
        ({"nonfinite": 3.0}, "value_range"),
    ],
)
def test_each_texture_reading_fires_on_its_metric(values: dict, expected: str) -> None:
    causes = probable_causes({}, _stream(**values), [10], sizes={"pred": (64, 64)})
    assert [c.key for c in causes] == [expected]
    assert causes[0].values and causes[0].values[0]["stream"] == "pred"


@pytest.mark.parametrize(
    ("scale", "lock", "tiles"),
    [(2.0, "half", "tiles doubled"), (0.5, "2f", "tiles halved")],
)
def test_harmonic_lock_reads_the_tile_scale(scale: float, lock: str, tiles: str) -> None:
    stream = _stream(periodic=1.0, tile_scale=scale)
    (cause,) = probable_causes({}, stream, [10], sizes={"pred": (64, 64)})
    assert cause.key == "harmonic_lock"
    assert cause.values == [
        {"stream": "pred", "step": 10, "metric": "tile_scale", "value": scale, "lock": lock}
    ]
    assert cause.evidence == [
        f"pred @ step 10: tile scale {scale:.2f}: the period is ×{scale:.2f} the reference's "
        f"({tiles})"
    ]


@pytest.mark.parametrize("scale", [math.nan, 1.0, 1.2, 0.8])
def test_no_harmonic_lock_near_the_reference_scale_or_without_one(scale: float) -> None:
    assert _keys(periodic=1.0, tile_scale=scale) == []


def test_the_texture_thresholds_are_the_alarms_module_s() -> None:
    th = Thresholds()
    assert (th.harmonic_scale, th.band_score, th.alias_share, th.checkerboard) == (
        alarms.HARMONIC_SCALE,
        alarms.BAND_SCORE,
        alarms.ALIAS_SHARE,
        alarms.CHECKERBOARD,
    )
    # right at a threshold is an alarm, as in texwatch.alarms
    assert _keys(periodic=1.0, tile_scale=alarms.HARMONIC_SCALE) == ["harmonic_lock"]
    assert _keys(periodic=1.0, band_score=alarms.BAND_SCORE) == ["banding"]
    assert _keys(alias_score=alarms.ALIAS_SHARE) == ["aliasing"]


def test_alias_score_and_band_score_below_their_thresholds_fire_nothing() -> None:
    below = 0.9 * alarms.ALIAS_SHARE
    assert _keys(alias_score=below) == []
    assert _keys(periodic=1.0, band_score=0.9 * alarms.BAND_SCORE) == []
    assert _keys(Thresholds(alias_share=0.5 * below), alias_score=below) == ["aliasing"]
    (cause,) = probable_causes(
        {}, _stream(periodic=1.0, band_score=0.9, band_max_run=48.0), [10], sizes={"pred": (64, 64)}
    )
    assert cause.values[0]["metric"] == "band_score"
    assert "90% more row/column strips" in cause.evidence[0] and "spans 48 px" in cause.evidence[0]


def test_a_non_periodic_row_skips_the_period_readings_but_not_checkerboard_or_aliasing() -> None:
    period_faults = {
        "tile_scale": 2.0,
        "band_score": 0.9,
        "axis_ratio_at_f": 0.8,
        "fundamental_radius_bin": 8.0,
        "acf_first_peak_radius_bin": 16.0,
    }
    assert _keys(periodic=1.0, **period_faults) == ["harmonic_lock", "acf_fft_disagree", "banding"]
    assert _keys(periodic=0.0, **period_faults) == []
    assert _keys(**period_faults) == []  # no ``periodic`` column: nothing is periodic
    assert _keys(periodic=0.0, checkerboard_energy=0.5, alias_score=0.5, **period_faults) == [
        "checkerboard",
        "aliasing",
    ]
    # one periodic item of two (the step's mean) is a periodic row
    assert _keys(periodic=0.5, tile_scale=2.0) == ["harmonic_lock"]


def test_a_doubled_period_over_the_whole_image_is_a_lock_not_a_band() -> None:
    # every strip reads the doubled period when the whole texture doubled
    assert _keys(periodic=1.0, tile_scale=2.0, band_score=1.0) == ["harmonic_lock"]
    assert _keys(periodic=1.0, tile_scale=0.5, band_score=1.0) == ["harmonic_lock", "banding"]


def test_checkerboard_is_judged_against_white_noise_at_the_stream_s_size() -> None:
    white = alarms.white_nyquist_share((64, 64))
    just_over = alarms.CHECKERBOARD * white * 1.01
    assert _keys(checkerboard_energy=just_over) == ["checkerboard"]
    assert _keys(checkerboard_energy=just_over * 0.98) == []


def test_thresholds_move_the_readings() -> None:
    assert _keys(Thresholds(harmonic_scale=2.5), periodic=1.0, tile_scale=2.0) == []
    assert _keys(Thresholds(harmonic_scale=2.5), periodic=1.0, tile_scale=0.35) == ["harmonic_lock"]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        Thresholds.from_pairs(["harmonic_scale"])
    assert Thresholds.from_pairs(["axis_ratio=0.5"]).axis_ratio == 0.5
    assert Thresholds.from_pairs(["harmonic_scale=1.8"]).harmonic_scale == 1.8
    with pytest.raises(ReportError, match=r"harmonic_scale=0.8.*> 1"):
        Thresholds.from_pairs(["harmonic_scale=0.8"])
    with pytest.raises(ReportError, match=r"harmonic_scale must be > 1 .*got 1\.0"):
        Thresholds(harmonic_scale=1.0)
    for gone in ("harmonic_ratio", "scale_tolerance", "resize_delta_r", "periodic_peak"):
        with pytest.raises(ReportError, match="NAME one of"):
            Thresholds.from_pairs([f"{gone}=1"])


def test_step_table_means_items_and_keeps_the_latest_call_of_a_resumed_step() -> None:
    # two items per record() call; the job resumed after step 5 and recorded 3 and 5 again
    table = {
        "step": np.array([0, 0, 5, 5, 3, 3, 5, 5]),
        "tile_scale": np.array([1.0, 3.0, 9.0, 9.0, 2.0, 2.0, 0.5, np.nan]),
        "min": np.array([-1.0, -2.0, -9.0, -9.0, -3.0, -1.0, -4.0, -5.0]),
        "nonfinite": np.array([0.0, 0.0, 7.0, 7.0, 0.0, 0.0, 1.0, 2.0]),
    }
    out = step_table(table)
    assert out["step"].tolist() == [0, 3, 5]
    assert out["tile_scale"].tolist() == [2.0, 2.0, 0.5]  # mean over items, NaN ignored
    assert out["min"].tolist() == [-2.0, -3.0, -5.0]
    assert out["nonfinite"].tolist() == [0.0, 0.0, 3.0]
    assert out["items"].tolist() == [2, 2, 2]


def test_shown_keys_are_the_spectral_modules_keys() -> None:
    from texwatch.report import HEALTH_KEYS, TEXTURE_KEYS

    assert TEXTURE_KEYS == spectral.METRIC_KEYS + spectral.BAND_KEYS
    assert set(HEALTH_KEYS) <= set(spectral.HEALTH_KEYS)


def test_the_report_does_not_import_diagnose() -> None:
    code = "import sys, texwatch.report; print('texwatch.diagnose' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_report_and_diagnose_do_not_import_each_other() -> None:
    import ast

    import texwatch

    root = Path(texwatch.__file__).parent

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {
            n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
        }

    assert not any(m.startswith("texwatch.report") for m in imported(root / "diagnose.py"))
    for module in (root / "report").glob("*.py"):
        assert not any(m.startswith("texwatch.diagnose") for m in imported(module)), module
    code = "import sys, texwatch.causes; print(sorted(m for m in sys.modules if 'report' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---- scalars only, long runs and resumed runs: the streamed loader ---------------------------


def test_a_scalars_only_store_with_checkpoints_reports(tmp_path: Path, capsys) -> None:
    import texwatch.client as tw

    store = tmp_path / "scalars.zarr"
    with tw.Recorder(store, run="scalars") as rec:
        for step in range(120):
            rec.record(
                step,
                1.0 + 0.01 * math.sin(step),
                terms={"v": 1.0},
                scalars={"lr": 1e-4},
                checkpoint=step in (40, 80),
            )
    out = tmp_path / "out"
    assert main(["report", str(store), "-o", str(out), "--quiet", "--checkpoints"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    wrote = f"texwatch report: wrote {out / 'index.html'} (and report.pdf, report.json beside it)"
    assert printed.out == wrote + "\n"
    doc = _doc(out)
    assert doc["steps"] == [40, 80] and doc["runs"][0]["checkpoint_steps"] == [40, 80]
    assert [c["columns"] for c in doc["checkpoints"]] == [[], []]
    html = (out / "index.html").read_text()
    assert "nothing to compare across steps" in html
    assert main(["report", str(store), "-o", str(tmp_path / "auto"), "--quiet"]) == 0
    assert _doc(tmp_path / "auto")["selection"] == "recorded checkpoints"
    (tmp_path / "file").write_text("a file")
    unwritable = tmp_path / "file" / "report"
    assert main(["report", str(store), "-o", str(unwritable), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("texwatch report: error: ") and "file" in err[0]


def test_scalars_terms_and_streams_are_shown_by_the_key_they_were_logged_under(
    tmp_path: Path,
) -> None:
    import html as html_lib

    import texwatch.client as tw

    store = tmp_path / "kohya.zarr"
    rng = np.random.default_rng(0)
    val = rng.random((2, 32, 32, 3), dtype=np.float32)  # NHWC, as diffusers' output_type="np"
    with tw.Recorder(store, run="kohya") as rec:
        for step in range(60):
            logs = {"lr/d*lr/unet": 1e-4 * (step + 1), "loss/current": 0.5, "lr/unet": 2e-4}
            if step % 20 == 0:
                logs["val acc"] = step / 60
            rec.record(
                step,
                0.5,
                scalars=logs,
                terms={"mse loss": 0.5},
                images={"val/sample 0": val} if step % 20 == 0 else None,
                checkpoint=step == 40,
            )
        renamed = rec.renamed
    out = tmp_path / "out"
    assert main(["report", str(store), "-o", str(out), "--quiet", "--checkpoints"]) == 0
    doc = _doc(out)
    run = doc["runs"][0]
    assert run["names"]["scalars"] == {v: k for k, v in renamed["scalars"].items()}
    assert set(run["scalars"]) == {"lr/d*lr/unet", "loss/current", "lr/unet", "val acc"}
    d_lr = run["scalars"]["lr/d*lr/unet"]
    assert d_lr["stored_as"] == "lr/d_lr/unet" and d_lr["steps"] == 60
    assert d_lr["min"] == pytest.approx(1e-4) and d_lr["max"] == pytest.approx(60e-4)
    assert d_lr["last_step"] == 59 and d_lr["last"] == pytest.approx(60e-4)
    acc = run["scalars"]["val acc"]  # logged every 20 steps: its last value is step 40's
    assert acc["steps"] == 3 and acc["last_step"] == 40 and acc["last"] == pytest.approx(2 / 3)
    assert set(run["terms"]) == {"mse loss"}
    # every column of the joined table is texwatch's, derived, or a logged scalar's: none shadows
    texwatch_own = RESERVED_SCALARS | DERIVED_SCALARS
    stored = {r["stored_as"] for r in run["scalars"].values()}
    for column in run["series"]["scalars"]:
        assert column.split("/")[0] in texwatch_own or column in stored, column
    val = renamed["images"]["val/sample 0"]
    assert doc["validation"] == [{"run": "kohya", "stream": val, "steps": [0, 20, 40]}]
    page = html_lib.unescape((out / "index.html").read_text())
    assert "Logged scalars" in page
    for key in ("lr/d*lr/unet", "loss/current", "val acc", "val/sample 0 ("):
        assert key in page, key


def _whole_table(path: Path, settings) -> dict[str, np.ndarray]:
    """The run's per-step scalar table held whole, derived and joined as the report did before
    it streamed: the reference the streamed loader must match."""
    from texwatch.derive import derive_all
    from texwatch.store import latest_rows

    derived = derive_all(path, settings)["scalars"]
    keep = latest_rows(derived["step"])
    table = {k: np.asarray(v)[keep] for k, v in derived.items()}
    raw = open_run(path).scalars()
    assert np.array_equal(raw["step"], table["step"])
    for name, col in raw.items():
        if name not in table and name != "time":
            table[name] = col
    return table


def _write_scalars(path: Path, steps: np.ndarray, seed: int) -> None:
    from texwatch.store import SCALARS, RunWriter

    rng = np.random.default_rng(seed)
    with RunWriter.open(path, run=path.stem) as writer:
        for block in np.array_split(steps, max(1, steps.size // 4000)):
            n = block.size
            loss = 1.0 + 0.02 * rng.standard_normal(n)
            loss[block % 2011 == 1000] = 8.0
            writer.append(
                SCALARS,
                {
                    "step": block,
                    "loss": loss,
                    "term/v": loss,
                    "term/edge": np.zeros(n),
                    "weight/v": np.ones(n),
                    "weight/edge": np.full(n, 0.06),
                    "lr": np.full(n, 1e-4),
                },
            )
            writer.commit()


def test_a_long_run_is_read_in_chunks_and_drawn_decimated_with_every_spike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from texwatch.derive import DeriveSettings
    from texwatch.report import _load

    monkeypatch.setattr(_load, "CHUNK_ROWS", 3000)
    monkeypatch.setattr(_load, "_PLAN_ROWS", 5000)
    n = 24_000
    store = tmp_path / "long.zarr"
    _write_scalars(store, np.arange(n), seed=3)
    settings = DeriveSettings(window=64, dead_window=50)
    whole = _whole_table(store, settings)
    doc = build_report_for(store, tmp_path / "out", settings)
    run = doc["runs"][0]
    series = run["series"]
    shown = np.array(series["scalars"]["step"])
    assert series["rows"] == {"scalars": n} and series["decimated"]
    assert shown.size < n / 4  # held and drawn: a few rows per bucket, not every step
    spikes = whole["step"][whole["spike"] > 0]
    assert spikes.size >= 10 and [s["step"] for s in run["spikes"]] == spikes.tolist()
    assert set(spikes.tolist()) <= set(shown.tolist())  # every spike is drawn
    warnings = whole["step"][whole["warn"] > 0]
    assert run["warning_steps"] == warnings.tolist()
    rows = np.searchsorted(whole["step"], shown)
    for name, col in series["scalars"].items():  # kept rows hold the table's own values
        if name != "step" and not name.startswith("weighted/"):
            assert np.allclose(np.array(col, dtype=float), whole[name][rows], equal_nan=True)
    loss = np.array(series["scalars"]["loss"], dtype=float)
    assert np.nanmin(loss) == run["loss"]["min_loss"] == np.nanmin(whole["loss"])
    assert np.nanmax(loss) == run["loss"]["max_loss"] == np.nanmax(whole["loss"])
    ids = {int(s): [] for s in spikes}
    expected = probable_causes(whole, {}, [], sizes={}, sample_ids=ids)
    assert json.loads(json.dumps([_asdict(c) for c in expected], default=str)) == run["causes"]
    assert "dead_term" in {c["key"] for c in run["causes"]}


def test_a_resumed_run_whose_first_attempt_outlives_the_second_reads_like_the_whole_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from texwatch.derive import DeriveSettings
    from texwatch.report import _load

    monkeypatch.setattr(_load, "CHUNK_ROWS", 37)
    # the first attempt ran to step 599; the job resumed at 200 and stopped at 399, so steps
    # 400..599 keep the first attempt's rows, written before the second's
    store = tmp_path / "resumed.zarr"
    _write_scalars(store, np.arange(600), seed=4)
    from texwatch.store import SCALARS, RunWriter

    with RunWriter.open(store) as writer:
        steps = np.arange(200, 400)
        loss = np.full(200, 1.5)
        loss[[50, 120]] = 12.0
        writer.append(
            SCALARS,
            {"step": steps, "loss": loss, "term/v": loss, "term/edge": np.zeros(200)},
        )
        writer.commit()
    settings = DeriveSettings(window=32, dead_window=30)
    whole = _whole_table(store, settings)
    doc = build_report_for(store, tmp_path / "out", settings)
    run = doc["runs"][0]
    series = run["series"]["scalars"]
    assert not run["series"]["decimated"] and series["step"] == list(range(600))
    for name, col in whole.items():
        assert np.allclose(np.array(series[name], dtype=float), col, equal_nan=True), name
    spikes = whole["step"][whole["spike"] > 0].tolist()
    assert {250, 320} <= set(spikes) and [s["step"] for s in run["spikes"]] == spikes
    expected = probable_causes(whole, {}, [], sizes={}, sample_ids={s: [] for s in spikes})
    assert json.loads(json.dumps([_asdict(c) for c in expected], default=str)) == run["causes"]
    assert run["loss"]["last_step"] == 599 and run["loss"]["steps"] == 600


def build_report_for(store: Path, out: Path, settings) -> dict:
    from texwatch.report import build_report

    build_report([store], out, settings=settings)
    return _doc(out)


def _asdict(cause: ProbableCause) -> dict:
    import dataclasses

    from texwatch._json import jsonable

    return jsonable(dataclasses.asdict(cause))
