"""The texwatch command: dispatch to subcommands, and inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import texwatch
import texwatch.daemon
from texwatch.cli import main
from texwatch.store import SCALARS, RunWriter


def _store(store: Path) -> None:
    writer = RunWriter.open(store, run="brick", config={"lr": 0.1})
    writer.append(
        SCALARS,
        {
            "step": np.arange(3),
            "time": np.zeros(3),
            "loss": np.ones(3),
            "checkpoint": np.array([np.nan, 1.0, np.nan]),
            "lr/d_lr": np.ones(3),
        },
    )
    writer.append("latents", {"step": np.arange(3), "data": np.zeros((3, 4, 8, 8), np.float16)})
    writer.commit(drops={"latents": 2}, names={"scalars": {"lr/d_lr": "lr/d*lr"}})


def test_inspect_prints_what_a_store_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "x.zarr"
    _store(store)
    assert main(["inspect", str(store)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run"] == "brick" and summary["config"] == {"lr": 0.1}
    assert summary["committed"] == {"scalars": 3, "latents": 3}
    assert summary["streams"] == {"latents": {"shape": [4, 8, 8], "dtype": "float16"}}
    assert summary["checkpoints"] == [1] and summary["drops"] == {"latents": 2}
    assert summary["names"] == {"scalars": {"lr/d_lr": "lr/d*lr"}}


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
        ["diagnose", "a.png", "-o", "out"],
        ["dataset", "data", "-o", "out"],
    ],
)
def test_fft_threshold_is_gone_periodicity_is_the_periodic_metric(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--fft-threshold", "30"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --fft-threshold 30" in capsys.readouterr().err


def test_inspect_into_a_closed_pipe_exits_1_without_a_traceback(tmp_path: Path) -> None:
    store = tmp_path / "x.zarr"
    _store(store)
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first byte, as `| head` after its lines
    try:
        done = subprocess.run(
            [sys.executable, "-m", "texwatch.cli", "inspect", str(store)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


@pytest.mark.parametrize(
    ("main_", "prog"), [(main, "texwatch"), (texwatch.daemon.main, "texwatchd")]
)
def test_version_is_the_package_version(
    main_, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main_(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"{prog} {texwatch.__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [[], ["report"], ["diagnose"], ["dataset"], ["demo"], ["inspect"], None],
    ids=["texwatch", "report", "diagnose", "dataset", "demo", "inspect", "texwatchd"],
)
def test_every_help_lists_the_exit_codes(
    argv: list[str] | None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        if argv is None:
            texwatch.daemon.main(["--help"])
        else:
            main([*argv, "--help"])
    assert exc.value.code == 0
    epilog = capsys.readouterr().out.split("exit codes:\n", 1)[1]
    assert [line[:5] for line in epilog.splitlines() if not line.startswith(" " * 5)] == [
        "  0  ",
        "  1  ",
        "  2  ",
    ]
    assert "bad arguments" in epilog.split("  2  ", 1)[1]


@pytest.mark.parametrize(
    ("argv", "want", "warned"),
    [
        (
            ["diagnose", "--images", "a.png", "b.png", "--report", "out"],
            ["a.png", "b.png", "--out", "out"],
            ["--images", "--report"],
        ),
        (
            ["diagnose", "--report=out", "--images=a.png"],
            ["--out=out", "a.png"],
            ["--report", "--images"],
        ),
        (
            ["dataset", "data", "--report", "out", "--", "--report"],
            ["data", "--out", "out", "--", "--report"],
            ["--report"],
        ),
        (["report", "x.zarr", "--report", "out"], ["x.zarr", "--report", "out"], []),
    ],
)
def test_the_previous_releases_flags_are_replaced_with_a_warning(
    argv: list[str], want: list[str], warned: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from texwatch.cli import _replace_deprecated

    assert _replace_deprecated(argv[0], argv) == [argv[0], *want]
    err = capsys.readouterr().err.splitlines()
    prefix = f"texwatch {argv[0]}: warning: "
    assert [line.removeprefix(prefix).split()[0] for line in err] == warned
    assert all(line.startswith(prefix) and "next release" in line for line in err)
