"""A plain PyTorch training loop recorded with texwatch: ``init``, ``record`` every step, ``close``.

A tiny denoiser learns brick textures generated in code (nothing is downloaded). The training
thread only copies tensors; texwatchd and ``texwatch report`` do the rest, in other processes:

    python examples/plain_loop.py --out runs/plain.zarr --steps 300
    texwatchd --store runs/plain.zarr --once          # derive everything, write snapshots, exit
    texwatch report runs/plain.zarr -o runs/plain-report --checkpoints

or run ``texwatchd --store runs/plain.zarr`` beside the loop and watch ``/metrics`` live.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import texwatch.client as tw
from texwatch.demo import brick_textures

BATCH = 8
WEIGHTS = {"mse": 1.0, "l1": 0.1}


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(16, 3, 3, padding=1),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train for ``--steps`` steps, recording each one into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/plain.zarr", help="run store (runs/plain.zarr)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (300)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: expected >= 1 but got {args.steps}")

    torch.manual_seed(args.seed)
    sources = brick_textures(64, seed=args.seed)  # (64, 3, 256, 256), tile period 32 px
    images = F.interpolate(sources, size=(64, 64), mode="bilinear", antialias=True) * 2 - 1
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)

    # One store per run; pred and target every 50 steps (the defaults keep them every 100).
    tw.init(
        args.out,
        run="plain-loop",
        config={"lr": args.lr, "steps": args.steps},
        every={"pred": 50, "target": 50},
    )
    try:
        for step in range(args.steps):
            ids = torch.randint(0, images.shape[0], (BATCH,))
            x0 = images[ids]  # (B, 3, 64, 64) in [-1, 1]
            t = torch.rand(BATCH)  # diffusion time in [0, 1)
            alpha_bar = torch.cos(t * math.pi / 2).square().clamp_min(1e-3).view(-1, 1, 1, 1)
            noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn_like(x0)
            pred = model(noisy)  # x0 prediction
            mse = (pred - x0).square().mean(dim=(1, 2, 3))  # (B,)
            l1 = (pred - x0).abs().mean(dim=(1, 2, 3))  # (B,)
            per_item = WEIGHTS["mse"] * mse + WEIGHTS["l1"] * l1
            loss = per_item.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            # Copies only (no .item(), no device sync). A latent-diffusion loop also passes
            # latents=vae_latents; a (B,) loss with timesteps lets texwatchd normalise the loss
            # per timestep before looking for spikes.
            tw.record(
                step,
                per_item.detach(),
                pred=pred,
                target=x0,
                terms={"mse": mse.mean(), "l1": l1.mean()},
                weights=WEIGHTS,
                scalars={"lr": lr},
                sample_ids=ids,
                timesteps=(t * 999).long(),
                checkpoint=step > 0 and step % 100 == 0,
            )
    finally:
        tw.close()  # commits everything recorded
    print(f"recorded {args.steps} steps into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
