"""``texwatch demo``: its textures, its argument checks, and a full CI-sized run end to end."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from pypdf import PdfReader

import texwatch.client as tw
from texwatch import alarms, cli
from texwatch.demo import MIN_STEPS, brick_textures, run_demo
from texwatch.spectral import texture_metrics
from texwatch.store import open_run

CI_STEPS = MIN_STEPS  # 200: the smallest run whose report must still show every planted fault


def test_brick_textures_peak_at_the_promised_period() -> None:
    textures = brick_textures(4, size=256, period=32.0, seed=3)
    assert textures.shape == (4, 3, 256, 256)
    assert float(textures.min()) >= 0.0 and float(textures.max()) <= 1.0
    m = texture_metrics(textures)
    np.testing.assert_allclose(m["fundamental_radius_bin"].numpy(), 256 / 32, atol=0.3)
    np.testing.assert_allclose(m["acf_first_peak_radius_bin"].numpy(), 32, atol=1.0)
    # rotated 15-75 degrees: the energy at f* is off the FFT axes (no "axis cross")
    assert float(m["axis_ratio_at_f"].max()) < 0.2
    # whatever their rotation, bricks and tiles alike read the first one's tile scale
    scale = texture_metrics(textures, ref=textures[:1])["tile_scale"].numpy()
    np.testing.assert_allclose(scale, 1.0, atol=0.03)
    torch.testing.assert_close(textures, brick_textures(4, size=256, period=32.0, seed=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "`n`"),
        ({"n": 2, "size": 0}, "`size`"),
        ({"n": 2, "period": 1.0}, "`period`"),
    ],
)
def test_brick_textures_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        brick_textures(**kwargs)  # type: ignore[arg-type]


def test_demo_rejects_too_few_steps(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--steps", str(MIN_STEPS - 1)])
    assert exc.value.code == 2
    assert f"at least {MIN_STEPS} steps" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`steps`"):
        run_demo(steps=10)
    with pytest.raises(ValueError, match="`port`"):
        run_demo(steps=MIN_STEPS, port=70000)


def test_demo_refuses_to_replace_a_store_it_did_not_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "demo" / "runs" / "bad.zarr"
    with tw.Recorder(store, run="mine") as rec:
        rec.record(0, 1.0)
    assert cli.main(["demo", "-o", str(tmp_path / "demo"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a texwatch demo run" in err[0] and str(store) in err[0]
    assert open_run(store).committed()["scalars"] == 1


def test_demo_with_an_unwritable_out_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file")
    assert cli.main(["demo", "-o", str(tmp_path / "file" / "demo"), "--port", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("texwatch demo: error: ") and "file" in err[0]


def test_demo_with_a_busy_port_exits_2_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "demo" / "runs" / "good.zarr"
    with tw.Recorder(old, run="good", config={"texwatch_demo": True}) as rec:
        rec.record(0, 1.0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["demo", "-o", str(tmp_path / "demo"), "--port", str(port)])
    assert code == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # nothing started, nothing trained
    err = printed.err.splitlines()
    assert len(err) == 1 and "Address already in use" in err[0], printed.err
    assert err[0].startswith(f"texwatch demo: error: cannot serve /metrics on 127.0.0.1:{port}: ")
    assert err[0].endswith("; --port 0 picks a free one")
    assert open_run(old).committed()["scalars"] == 1  # the earlier demo's run is still there
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["runs"]


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


@pytest.mark.integration
@pytest.mark.timeout(1200)  # two trainings, texwatchd and a report: ~2 min alone, 5 on a busy box
def test_demo_end_to_end_report_finds_the_planted_faults_in_bad_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--steps", str(CI_STEPS), "--port", "0", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed

    doc = json.loads((out / "report" / "report.json").read_text())
    causes = {r["label"]: {c["key"]: c for c in r["causes"]} for r in doc["runs"]}
    assert causes["good"] == {}
    bad = causes["bad"]
    assert {"checkerboard", "harmonic_lock", "loss_spike_bad_batch", "dead_term"} <= set(bad)
    # each reading points at the fault that was planted, where it was planted: the data
    # pipeline doubled the tile (and the model learned it), the decoder made the checkerboard
    assert {v["stream"] for v in bad["checkerboard"]["values"]} == {"pred"}
    lock = bad["harmonic_lock"]["values"]
    streams = {v["stream"] for v in lock}
    assert "batch" in streams and streams <= {"batch", "pred"}
    assert all(
        v["metric"] == "tile_scale" and v["lock"] == "half" and v["value"] >= alarms.HARMONIC_SCALE
        for v in lock
    )
    injected = re.search(r"\[bad\] step (\d+): injected a corrupted batch", printed)
    assert injected is not None, printed
    corrupt = int(injected.group(1))
    spikes = [v["step"] for v in bad["loss_spike_bad_batch"]["values"]]
    # the corrupted batch, then at most the few steps its clipped update unsettled
    assert spikes[0] == corrupt and all(corrupt <= s <= corrupt + 10 for s in spikes), spikes
    assert [(v["term"], v["weight"]) for v in bad["dead_term"]["values"]] == [("edge", 0.5)]
    assert doc["selection"] == "--checkpoints" and len(doc["steps"]) == 2

    assert (out / "report" / "index.html").stat().st_size > 0
    assert len(PdfReader(out / "report" / "report.pdf").pages) > 0
    for run in ("bad", "good"):
        run_store = open_run(out / "runs" / f"{run}.zarr")
        folder = out / "snapshots" / f"{run}-{run_store.run_id[:8]}"
        pngs = sorted(folder.glob("*.png"))
        assert pngs and all(p.with_suffix(".json").is_file() for p in pngs)
        assert run_store.committed()["scalars"] == CI_STEPS
        assert run_store.checkpoint_steps() == doc["steps"]

    metrics = _samples((out / "metrics.prom").read_text())
    dead = {
        run: [
            v
            for (name, labels), v in metrics.items()
            if name == "texwatch_dead_loss_terms" and ("run", run) in labels
        ]
        for run in ("bad", "good")
    }
    assert dead == {"bad": [1], "good": [0]}
    spikes = {
        run: sum(
            v
            for (name, labels), v in metrics.items()
            if name == "texwatch_loss_spikes_total" and ("run", run) in labels
        )
        for run in ("bad", "good")
    }
    assert spikes["bad"] >= 1 and spikes["good"] == 0
    for where in ("index.html", "snapshots", "metrics.prom", "/metrics", "batch tile_scale"):
        assert where in printed
