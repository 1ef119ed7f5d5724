"""texwatch.losses: exact gradients, the right ordering, descent toward the target period, soft
peaks on the texture (not on the DC lobe), and documented behaviour on empty masks."""

from __future__ import annotations

import math

import pytest
import torch

from texwatch.losses import (
    ACFPeriodLoss,
    LogPolarAlignLoss,
    ScaleConsistencyLoss,
    SpectralPeriodLoss,
)


def texture(
    period: torch.Tensor | float, n: int = 96, *, seed: int = 0, angle: float = 0.3
) -> torch.Tensor:
    """(1, 1, n, n) cosine grating of the given (possibly learnable) period plus light noise."""
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )
    t = xx * math.cos(angle) + yy * math.sin(angle)
    gen = torch.Generator().manual_seed(seed)
    noise = 0.02 * torch.randn(1, 1, n, n, generator=gen)
    return (0.5 + 0.25 * torch.cos(2 * math.pi * t / period))[None, None] + noise


def all_losses() -> list[torch.nn.Module]:
    return [SpectralPeriodLoss(), LogPolarAlignLoss(), ScaleConsistencyLoss(), ACFPeriodLoss()]


@pytest.mark.parametrize(
    "loss",
    [
        SpectralPeriodLoss(r_bins=32),
        LogPolarAlignLoss(out_r=12, out_t=16),
        ScaleConsistencyLoss(r_bins=32),
        ACFPeriodLoss(r_bins=32),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradients_are_exact_in_float64(loss: torch.nn.Module) -> None:
    pred = texture(6.0, 16, seed=1).double().requires_grad_()
    target = texture(5.0, 16, seed=2).double()
    mask = torch.ones(1, 1, 16, 16, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: loss(p, target, mask), (pred,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: type(m).__name__)
def test_matching_period_beats_double_and_half(loss: torch.nn.Module) -> None:
    n = 128
    mask = torch.ones(1, 1, n, n)
    target = texture(16.0, n, seed=1)
    values = {p: float(loss(texture(p, n, seed=2), target, mask)) for p in (8.0, 16.0, 32.0)}
    assert values[16.0] < values[8.0] and values[16.0] < values[32.0], values


@pytest.mark.parametrize("loss_cls", [SpectralPeriodLoss, ACFPeriodLoss, ScaleConsistencyLoss])
@pytest.mark.parametrize("start", [9.0, 16.0])
def test_gradient_descent_on_scale_reaches_the_target_period(loss_cls: type, start: float) -> None:
    n = 64
    loss = loss_cls()
    mask = torch.ones(1, 1, n, n)
    target = texture(12.0, n, seed=1)
    log_period = torch.tensor(math.log(start), requires_grad=True)
    optimiser = torch.optim.Adam([log_period], lr=0.06)
    for _ in range(20):
        optimiser.zero_grad()
        loss(texture(log_period.exp(), n), target, mask).backward()
        optimiser.step()
    final = float(log_period.detach().exp())
    assert abs(final - 12.0) < 1.0, final


def test_soft_peaks_sit_on_the_texture_not_on_the_dc_lobe() -> None:
    n = 128
    mask = torch.ones(1, 1, n, n)
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )
    lighting = 0.8 * (xx + yy) / (2 * n)  # a strong gradient fills the window's DC lobe
    spectral, acf = SpectralPeriodLoss(), ACFPeriodLoss()
    for period in (4.0, 8.0, 16.0, 32.0):
        x = texture(period, n, seed=3) + lighting
        assert float(spectral.soft_radius(x, mask)[0]) == pytest.approx(n / period, abs=0.25)
        soft, valid = acf.soft_period(x, mask)
        assert bool(valid[0])
        assert float(soft[0]) == pytest.approx(period, abs=0.5)


def test_all_zero_mask_gives_zero_and_zero_gradient() -> None:
    pred = texture(8.0, 64, seed=4).requires_grad_()
    target = texture(16.0, 64, seed=5)
    empty = torch.zeros(1, 1, 64, 64)
    for loss in all_losses():
        value = loss(pred, target, empty)
        (grad,) = torch.autograd.grad(value, pred)
        assert float(value.detach()) == 0.0, type(loss).__name__
        assert float(grad.abs().max()) == 0.0, type(loss).__name__


def test_images_without_signal_do_not_count_in_the_mean() -> None:
    preds = torch.cat([texture(8.0, 64, seed=6), torch.full((1, 1, 64, 64), 0.5)])
    targets = torch.cat([texture(16.0, 64, seed=7), texture(16.0, 64, seed=8)])
    mask = torch.ones(2, 1, 64, 64)
    for loss in all_losses():
        both = loss(preds, targets, mask)
        first = loss(preds[:1], targets[:1], mask[:1])
        assert float(both) == pytest.approx(float(first), rel=1e-3), type(loss).__name__


def test_scalar_float32_output_also_under_autocast_and_for_half_inputs() -> None:
    mask = torch.ones(2, 1, 64, 64)
    pred = torch.cat([texture(8.0, 64, seed=9), texture(10.0, 64, seed=10)])
    target = torch.cat([texture(12.0, 64, seed=11), texture(12.0, 64, seed=12)])
    for loss in all_losses():
        plain = loss(pred, target, mask)
        assert plain.shape == () and plain.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loss(pred, target, mask)
        assert inside.dtype == torch.float32
        assert float(inside) == pytest.approx(float(plain), rel=1e-5)
        half = loss(pred.half(), target.half(), mask.half())
        assert half.dtype == torch.float32 and math.isfinite(float(half))


def test_center_override_replaces_the_target_radius() -> None:
    n = 96
    loss = SpectralPeriodLoss()
    mask = torch.ones(1, 1, n, n)
    pred, target = texture(8.0, n, seed=13), texture(12.0, n, seed=14)
    radius = loss.soft_radius(target, mask)
    r_max = n / math.sqrt(2)
    by_override = loss(pred, target, mask, center_override=radius / r_max)
    assert float(by_override) == pytest.approx(float(loss(pred, target, mask)), rel=1e-4)
    with pytest.raises(ValueError, match="center_override"):
        loss(pred, target, mask, center_override=torch.ones(1, 2))


def test_bad_arguments_raise_clear_errors() -> None:
    x = torch.rand(2, 3, 32, 32)
    mask = torch.ones(2, 1, 32, 32)
    with pytest.raises(ValueError, match="same B, H, W"):
        SpectralPeriodLoss()(x, torch.rand(2, 3, 16, 16), mask)
    with pytest.raises(ValueError, match="`mask` must have shape"):
        ACFPeriodLoss()(x, x, torch.ones(2, 3, 32, 32))
    with pytest.raises(TypeError, match="`mask` must be a torch.Tensor"):
        LogPolarAlignLoss()(x, x, None)
    with pytest.raises(ValueError, match="`tau`"):
        SpectralPeriodLoss(tau=0.0)
    with pytest.raises(ValueError, match="`max_bin`"):
        ScaleConsistencyLoss(min_bin=10, max_bin=5)
    with pytest.raises(ValueError, match="`max_rel` must exceed"):
        ACFPeriodLoss(min_rel=0.5, max_rel=0.4)
    with pytest.raises(ValueError, match="`r_min`"):
        LogPolarAlignLoss(r_min=1.5)
