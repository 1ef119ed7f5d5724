"""A diffusers-style LoRA training step with texwatch.

The step is the one diffusers' ``train_text_to_image_lora.py`` runs: encode the images to VAE
latents (times the VAE's scaling factor), add noise at random timesteps, predict it with the
LoRA-adapted UNet, take the MSE, ``accelerator.backward``, clip, step. texwatch records, on the
main process only and once per optimizer step
(:class:`texwatch.integrations.accelerate.AcceleratorRecorder`):

* the loss per item with its timestep, so texwatchd normalises the loss per timestep before it
  looks for spikes, and the sample ids of the batch, so a spike names the samples in it;
* ``latents``: the scaled VAE latents (their std should sit near 1; a forgotten scaling factor or
  a broken VAE shows in their range);
* every ``--pred-every`` steps, ``pred``: the x0 the model implies, decoded by the VAE, and
  ``target``: the batch's images, so texwatchd compares the texture scale of the two;
* ``images={"x0_latents": ...}``: the implied x0 in latent space *before* clipping, whose
  clip fraction is the share a sampler's clip to [-3, 3] would cut off;
* ``lr`` and ``grad_norm``.

It needs packages texwatch's tests do not install::

    pip install diffusers peft accelerate

Offline, on tiny randomly initialised models and brick textures generated in code (nothing is
downloaded)::

    python examples/diffusers_lora_step.py --tiny --steps 30 --out runs/lora.zarr

With a real model and a folder of images (``--pretrained`` takes a hub id or a local folder)::

    python examples/diffusers_lora_step.py \\
        --pretrained stable-diffusion-v1-5/stable-diffusion-v1-5 --images data/bricks \\
        --resolution 512 --steps 2000 --out runs/lora.zarr
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from texwatch.demo import brick_textures

_INSTALL = "pip install diffusers peft accelerate"
_CLIP_RANGE = 3.0  # the DDIM x0 clip range texwatch's clip_fraction counts against


@dataclass
class Models:
    """What one LoRA step needs: the frozen VAE and text conditioning, the adapted UNet."""

    vae: Any  # diffusers.AutoencoderKL
    unet: Any  # diffusers.UNet2DConditionModel with a LoRA adapter
    scheduler: Any  # diffusers.DDPMScheduler
    prompt_embeds: torch.Tensor  # (1, tokens, dim) text conditioning of the caption


def _diffusers() -> Any:
    """Import diffusers and peft, or exit with the install line."""
    try:
        import diffusers
        import peft  # noqa: F401  (diffusers' add_adapter needs it)
    except ImportError as err:
        raise SystemExit(f"this example needs diffusers and peft ({err}); {_INSTALL}") from None
    return diffusers


def _add_lora(unet: Any, rank: int) -> None:
    """Freeze the UNet and add a LoRA adapter to its attention projections (as diffusers does)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )


def tiny_models(rank: int = 4, seed: int = 0) -> Models:
    """Randomly initialised miniature SD-style models: runs anywhere in seconds."""
    diffusers = _diffusers()
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    _add_lora(unet, rank)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    prompt_embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(seed))
    return Models(vae.requires_grad_(False), unet, scheduler, prompt_embeds)


def pretrained_models(name: str, caption: str, rank: int = 4) -> Models:
    """Stable-Diffusion-style components from a hub id or local folder, caption encoded once."""
    diffusers = _diffusers()
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = diffusers.AutoencoderKL.from_pretrained(name, subfolder="vae")
    unet = diffusers.UNet2DConditionModel.from_pretrained(name, subfolder="unet")
    scheduler = diffusers.DDPMScheduler.from_pretrained(name, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder")
    ids = tokenizer(
        caption, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        prompt_embeds = text_encoder(ids)[0]
    _add_lora(unet, rank)
    return Models(vae.requires_grad_(False), unet, scheduler, prompt_embeds)


def predicted_x0(
    scheduler: Any, noisy: torch.Tensor, model_pred: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The clean latents the prediction implies (epsilon or v prediction), not clipped."""
    alpha_bar = scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * model_pred
    return (noisy - (1 - alpha_bar).sqrt() * model_pred) / alpha_bar.sqrt()


def training_step(
    models: Models, pixels: torch.Tensor, *, decode: bool
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One forward pass: the loss to back-propagate and what texwatch records for the step.

    Args:
        models: the frozen VAE, the LoRA UNet, the noise scheduler and the prompt embedding.
        pixels: the batch's images, (B, 3, H, W) in [-1, 1].
        decode: also decode the implied x0 to pixels (``pred``); costs one VAE decode.
    """
    with torch.no_grad():
        latents = models.vae.encode(pixels).latent_dist.sample()
        latents = latents * models.vae.config.scaling_factor  # forgetting this is a classic
    noise = torch.randn_like(latents)
    timesteps = torch.randint(
        0, models.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    )
    noisy = models.scheduler.add_noise(latents, noise, timesteps)
    if models.scheduler.config.prediction_type == "v_prediction":
        target = models.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    cond = models.prompt_embeds.expand(latents.shape[0], -1, -1)
    model_pred = models.unet(noisy, timesteps, cond, return_dict=False)[0]
    per_item = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    record: dict[str, Any] = {"loss": per_item.detach(), "latents": latents, "timesteps": timesteps}
    if decode:
        with torch.no_grad():
            x0 = predicted_x0(models.scheduler, noisy, model_pred.detach(), timesteps)
            clipped = x0.clamp(-_CLIP_RANGE, _CLIP_RANGE)
            decoded = models.vae.decode(clipped / models.vae.config.scaling_factor).sample
        record.update(pred=decoded.clamp(-1, 1), target=pixels, images={"x0_latents": x0})
    return per_item.mean(), record


def _image_batches(args: argparse.Namespace) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels in [-1, 1], sample ids) batches, endlessly: a folder of images or bricks."""
    size = args.resolution
    if args.images:
        from PIL import Image

        files = sorted(
            p
            for p in Path(args.images).iterdir()
            if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}
        )
        if not files:
            raise SystemExit(f"--images {args.images}: no .png/.jpg/.webp files")
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    else:
        sources = brick_textures(32, size=4 * size, period=32.0, seed=args.seed)
        pixels = F.interpolate(sources, size=(size, size), mode="bilinear", antialias=True)
        pixels = pixels * 2.0 - 1.0
    gen = torch.Generator().manual_seed(args.seed)
    while True:
        ids = torch.randperm(pixels.shape[0], generator=gen)[: args.batch]
        yield pixels[ids], ids


def main(argv: Sequence[str] | None = None) -> int:
    """Train the LoRA for ``--steps`` optimizer steps, recording each into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", action="store_true", help="tiny random models, offline")
    which.add_argument("--pretrained", metavar="NAME", help="hub id or folder of an SD model")
    parser.add_argument("--images", metavar="DIR", help="training images (default: bricks)")
    parser.add_argument("--caption", default="a seamless brick wall texture")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--pred-every", type=int, default=10, help="steps between decoded preds")
    parser.add_argument("--out", default="runs/lora.zarr", help="run store")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    models = (
        tiny_models(args.rank, args.seed)
        if args.tiny
        else pretrained_models(args.pretrained, args.caption, args.rank)
    )
    from accelerate import Accelerator

    from texwatch.integrations.accelerate import AcceleratorRecorder

    accelerator = Accelerator(gradient_accumulation_steps=args.accumulate)
    lora_params = [p for p in models.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_params, lr=args.lr)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    models.unet, optimizer, lr_scheduler = accelerator.prepare(models.unet, optimizer, lr_scheduler)
    models.vae.to(accelerator.device)
    models.prompt_embeds = models.prompt_embeds.to(accelerator.device)
    tw = AcceleratorRecorder(
        accelerator,
        args.out,
        run="lora",
        config=vars(args),
        # pred/target only arrive every --pred-every steps: keep each one that arrives
        every={"pred": 1, "target": 1, "x0_latents": 1},
        max_items=4,
    )
    batches = _image_batches(args)
    global_step = 0
    try:
        while global_step < args.steps:
            pixels, ids = next(batches)
            pixels = pixels.to(accelerator.device)
            decode = (global_step + 1) % args.pred_every == 0 and accelerator.is_main_process
            with accelerator.accumulate(models.unet):
                loss, record = training_step(models, pixels, decode=decode)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(lora_params, 1.0)
                lr = lr_scheduler.get_last_lr()[0]
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                scalars = {"lr": lr}
                if grad_norm is not None:
                    scalars["grad_norm"] = grad_norm
                # Every process may call this; only the main process records.
                tw.record(
                    global_step, record.pop("loss"), sample_ids=ids, scalars=scalars, **record
                )
    finally:
        tw.close()
    accelerator.end_training()
    if accelerator.is_main_process:
        print(f"recorded {global_step} LoRA steps into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
