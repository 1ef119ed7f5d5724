"""texwatch.causes: the loss readings read in chunks say what they say on the whole table.

The readings themselves (which cause fires on which numbers) are tested on whole tables in
test_report.py and test_diagnose.py; here a long table is cut at random places, through the
windows the spike readings look at, and every cause must come out the same.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from texwatch.causes import ScalarEvidence, Thresholds, _Counts, probable_causes


def _table(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    """Spikes of every kind, at the first and last rows too; a dead and a non-finite term."""
    rng = np.random.default_rng(seed)
    loss = 1.0 + 0.02 * rng.standard_normal(n)
    ema = np.convolve(loss, np.ones(8) / 8, mode="same")
    lr = np.full(n, 1e-4)
    spike = np.zeros(n)
    spikes = [0, 5, 300, 301, 1100, 2000, n - 3, n - 1, *rng.choice(n, 30, replace=False)]
    spike[spikes] = 1.0
    loss[spikes] = 9.0
    loss[2001:2040] = 4.0  # an EMA break after the spike at 2000
    lr[1095:] = 5e-4  # the lr rose 5 steps before the spike at 1100
    loss[rng.choice(n, 40, replace=False)] = np.nan
    dead = np.zeros(n)
    dead[500:900] = 1.0
    nonfinite = np.zeros(n)
    nonfinite[[42, 2500]] = 1.0
    weight = np.where(np.arange(n) < 700, 0.06, 0.03)
    return {
        "step": np.arange(n) * 2,
        "loss": loss,
        "loss_ema": ema,
        "loss_zscore": rng.standard_normal(n),
        "spike": spike,
        "spike_rule": np.where(spike > 0, 3.0, 0.0),
        "lr": lr,
        "term/edge": np.where(dead > 0, 0.0, 0.1),
        "weight/edge": weight,
        "dead/edge": dead,
        "term_nonfinite/edge": np.zeros(n),
        "dead/v": np.zeros(n),
        "term_nonfinite/v": nonfinite,
    }


def _as_json(causes: list) -> str:
    return json.dumps([dataclasses.asdict(c) for c in causes], sort_keys=True, default=str)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pieces", [2, 37, 400])
def test_chunked_reading_gives_the_causes_of_the_whole_table(seed: int, pieces: int) -> None:
    table = _table(seed=seed)
    n = table["step"].size
    ids = {int(s): [int(s) % 7, 3] for s in table["step"][table["spike"] > 0]}
    th = Thresholds(spike_recovery_steps=12)
    whole = probable_causes(table, {}, [], sizes={}, sample_ids=ids, thresholds=th)
    assert {c.key for c in whole} == {
        "loss_spike_bad_batch",
        "loss_spike_learning_rate",
        "loss_spike_ema_break",
        "dead_term",
        "nonfinite_term",
    }
    rng = np.random.default_rng(seed + pieces)
    cuts = np.sort(rng.choice(np.arange(1, n), size=pieces - 1, replace=False))
    evidence = ScalarEvidence(th)
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        evidence.update({k: v[a:b] for k, v in table.items()})
    chunked = evidence.finish().causes(ids)
    assert _as_json(chunked) == _as_json(whole)
    assert [s.step for s in evidence.spikes] == table["step"][table["spike"] > 0].tolist()
    dead = next(c for c in chunked if c.key == "dead_term").values
    assert dead == [{"term": "edge", "first_step": 1000, "steps": 400, "weight": 0.045}]


def test_one_row_at_a_time_too() -> None:
    table = _table()
    whole = probable_causes(table, {}, [], sizes={})
    evidence = ScalarEvidence()
    for i in range(table["step"].size):
        evidence.update({k: v[i : i + 1] for k, v in table.items()})
    assert _as_json(evidence.causes()) == _as_json(whole)
    with pytest.raises(RuntimeError, match="after finish"):
        evidence.update({k: v[:1] for k, v in table.items()})


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_the_weights_median_is_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.choice([0.03, 0.06, 0.5, np.inf], size=n)
    counts = _Counts()
    for part in np.array_split(values, 3):
        counts.add(part)
    assert counts.median() == np.median(values)
    assert np.isnan(_Counts().median())
