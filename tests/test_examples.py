"""The examples: the plain loop runs and records; the diffusers LoRA step import-checks.

The diffusers example needs diffusers and peft, which the test environment does not install. It
keeps them out of its module-level imports, so here it is byte-compiled, imported with diffusers
and peft made unimportable, asked for ``--help``, run to the point where it names the missing
packages, and its x0 arithmetic (the seed-002 "unclipped x0" stream) checked on plain tensors.
"""

from __future__ import annotations

import importlib.util
import py_compile
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from texwatch.store import open_run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: two OpenMP threads on a 2-core machine spin-wait whenever another
    process holds a core, and a 4 s loop then takes 40 s (measured on this machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (registered while the test runs)."""
    spec = importlib.util.spec_from_file_location(
        f"texwatch_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up there
    spec.loader.exec_module(module)
    return module


def test_plain_loop_records_every_step(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_torch_thread: None,
) -> None:
    store = tmp_path / "plain.zarr"
    assert _load("plain_loop", monkeypatch).main(["--out", str(store), "--steps", "101"]) == 0
    assert f"recorded 101 steps into {store}" in capsys.readouterr().out
    run = open_run(store)
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(101))
    assert {"loss", "lr", "term/mse", "term/l1", "weight/mse", "weight/l1"} <= set(cols)
    assert np.all(np.isfinite(cols["loss"])) and cols["lr"][0] == pytest.approx(1e-3)
    for stream in ("pred", "target"):
        steps, data = run.stream(stream)
        np.testing.assert_array_equal(np.unique(steps), [0, 50, 100])
        assert data.shape[1:] == (3, 64, 64)
    assert run.checkpoint_steps() == [100]
    assert run.committed()["items"] == 101 * 8  # per-item losses, timesteps, sample ids


@pytest.fixture
def without_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import diffusers`` / ``import peft`` fail, whatever is installed."""
    for name in ("diffusers", "peft"):
        monkeypatch.setitem(sys.modules, name, None)


def test_diffusers_example_compiles_and_imports_without_diffusers(
    tmp_path: Path,
    without_diffusers: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    py_compile.compile(
        str(EXAMPLES / "diffusers_lora_step.py"), doraise=True, cfile=str(tmp_path / "lora.pyc")
    )
    example = _load("diffusers_lora_step", monkeypatch)
    assert callable(example.training_step) and callable(example.main)
    with pytest.raises(SystemExit) as exc:
        example.main(["--help"])
    assert exc.value.code == 0 and "--pretrained" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="pip install diffusers peft"):
        example.main(["--tiny", "--out", str(tmp_path / "lora.zarr")])
    assert not (tmp_path / "lora.zarr").exists()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusers_example_recovers_x0_from_either_prediction(
    prediction_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _load("diffusers_lora_step", monkeypatch)
    gen = torch.Generator().manual_seed(0)
    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
    scheduler = SimpleNamespace(
        alphas_cumprod=alphas_cumprod, config=SimpleNamespace(prediction_type=prediction_type)
    )
    x0 = torch.randn(3, 4, 8, 8, generator=gen)
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 500, 999])
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    pred = noise if prediction_type == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(
        example.predicted_x0(scheduler, noisy, pred, t), x0, rtol=1e-4, atol=1e-4
    )
