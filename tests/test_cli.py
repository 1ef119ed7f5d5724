"""The texwatch command: dispatch to subcommands, and inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from texwatch.cli import main
from texwatch.store import SCALARS, RunWriter


def test_inspect_prints_what_a_store_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "x.zarr"
    writer = RunWriter.open(store, run="brick", config={"lr": 0.1})
    writer.append(
        SCALARS,
        {
            "step": np.arange(3),
            "time": np.zeros(3),
            "loss": np.ones(3),
            "checkpoint": np.array([np.nan, 1.0, np.nan]),
        },
    )
    writer.append("latents", {"step": np.arange(3), "data": np.zeros((3, 4, 8, 8), np.float16)})
    writer.commit(drops={"latents": 2})
    assert main(["inspect", str(store)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run"] == "brick" and summary["config"] == {"lr": 0.1}
    assert summary["committed"] == {"scalars": 3, "latents": 3}
    assert summary["streams"] == {"latents": {"shape": [4, 8, 8], "dtype": "float16"}}
    assert summary["checkpoints"] == [1] and summary["drops"] == {"latents": 2}


def test_inspect_of_a_missing_store_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path / "nope.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.zarr" in err[0]


def test_help_lists_every_subcommand_without_importing_them() -> None:
    code = (
        "import sys; from texwatch.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "texwatch.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("report", "diagnose", "dataset", "demo", "inspect"):
        assert command in help_text


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "x.zarr", "-o", "out"],
        ["diagnose", "--images", "a.png", "--report", "out"],
        ["dataset", "data", "--report", "out"],
    ],
)
def test_fft_threshold_is_gone_periodicity_is_the_periodic_metric(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--fft-threshold", "30"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --fft-threshold 30" in capsys.readouterr().err
