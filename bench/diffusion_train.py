"""Diffusion training images/s: the workbench's stage 2 against a diffusers-example-style loop.

Workbench: `biomed.imaging.diffusion.objective.DiffusionModel` through the shared engine, on
latents encoded once by the frozen VAE (the one-off encoding is timed and printed separately),
attention set to PyTorch's scaled_dot_product_attention (`AttnProcessor2_0`) explicitly, the text
encoder's states in the same step, EMA of UNet + text encoder as an engine callback.
Baseline: a plain loop written like diffusers' `examples/text_to_image/train_text_to_image.py`:
every step tokenizes the batch's captions, encodes its images with the VAE
(`latent_dist.sample() * scaling_factor`), adds noise, runs the text encoder and the UNet, MSE,
backward, AdamW, `EMAModel.step`; attention left at diffusers' default processor (in diffusers
0.42 that is also SDPA where torch has it: the printout names both). Both train the same UNet
and text encoder (the same initial weights: `diffusion=tiny`, 128 px by default), at the same
batch size, for the same steps, with the same threads. Images are smooth random fields (speed
does not depend on content). Target: ratio >= 1.5 on CPU.

    python bench/diffusion_train.py                      # diffusion=tiny at 128 px, batch 64
    python bench/diffusion_train.py --steps 40 --batch 32 --threads 2
    python bench/diffusion_train.py --size 32 --steps 2 --batch 4 --items 16 --tiny-widths  # smoke
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from biomed.config import compose
from biomed.engine import Engine, read_log
from biomed.imaging.diffusion import components as dc
from biomed.imaging.diffusion import train as dt
from biomed.imaging.diffusion.latents import latent_std
from biomed.imaging.diffusion.objective import DiffusionModel, EmaCallback
from biomed.imaging.diffusion.text_encoders import tokenize

WORDS = ["no", "acute", "small", "large", "left", "right", "pleural", "effusion", "heart",
         "size", "normal", "cardiomegaly", "pneumothorax", "opacity", "lungs", "clear"]


def synthetic(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Smooth random gray images in [0, 1] and report-like captions."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")[:, 0]
    rng = np.random.default_rng(seed)
    captions = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 20)))) + "."
                for _ in range(n)]
    return images.numpy().astype(np.float32), captions


class Pairs(Dataset):
    def __init__(self, images: np.ndarray, captions: list[str]):
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i])[None], "caption": self.captions[i]}


def baseline(comps: dc.Components, data: Pairs, args, lr: float) -> float:
    """The diffusers example's inner loop; returns steady-state images/s."""
    from diffusers.training_utils import EMAModel

    vae, unet, te = comps.vae, comps.unet, comps.text.model
    tok, sched = comps.text.tokenizer, comps.noise_scheduler
    vae.requires_grad_(False)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    ema_unet = EMAModel(unet.parameters(), decay=0.995, foreach=True)
    ema_te = EMAModel(te.parameters(), decay=0.995, foreach=True)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    times, step = [], 0
    unet.train()
    te.train()
    while step < args.steps:
        for batch in loader:
            t0 = time.perf_counter()
            ids = tok(batch["caption"], max_length=tok.model_max_length, padding="max_length",
                      truncation=True, return_tensors="pt").input_ids
            pixels = batch["image"] * 2 - 1
            pixels = pixels.expand(-1, vae.config.in_channels, -1, -1)
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],))
            noisy = sched.add_noise(latents, noise, t)
            states = te(ids, return_dict=False)[0]
            pred = unet(noisy, t, states, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            ema_unet.step(unet.parameters())
            ema_te.step(te.parameters())
            times.append(time.perf_counter() - t0)
            step += 1
            if step >= args.steps:
                break
    steady = times[args.warmup:] or times
    return args.batch / float(np.median(steady))


def workbench(comps: dc.Components, data: Pairs, cfg, args, run_dir: Path) -> tuple[float, float]:
    """Latents cached once, then stage 2 through the engine; (images/s, encoding seconds)."""
    t0 = time.perf_counter()
    mean, std = _encode(comps.vae, torch.from_numpy(data.images)[:, None])
    encode_s = time.perf_counter() - t0
    dt._sdpa(comps.unet)
    tokens = tokenize(comps.text.tokenizer, data.captions)
    pairs = dt.LatentPairs(mean, std, tokens)
    sampled = bool(cfg.diffusion.training.latent_sample)
    scaling = 1.0 / latent_std(mean, std if sampled else None)
    model = DiffusionModel(comps.unet, comps.text.model, train_text_encoder=True,
                           noise_scheduler=comps.noise_scheduler, scaling_factor=scaling,
                           training=cfg.diffusion.training,
                           empty=tokenize(comps.text.tokenizer, [""]))
    engine = Engine(cfg.trainer, run_dir, seed=0)
    engine.fit(model, pairs, lambda m, b: m(b), optim=dt.component_optim(cfg.optim),
               collate_fn=dt.LatentPairs.collate, callbacks=[EmaCallback()])
    times = [r["step_time_s"] for r in read_log(run_dir) if "step_time_s" in r]
    steady = times[args.warmup:] or times
    return args.batch / float(np.median(steady)), encode_s


@torch.no_grad()
def _encode(vae, images: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    means, stds = [], []
    for s in range(0, len(images), batch):
        d = vae.encode(dc.to_model_space(images[s:s + batch], vae.config.in_channels)).latent_dist
        means.append(d.mean.numpy().astype(np.float16))
        stds.append(d.std.numpy().astype(np.float16))
    return np.concatenate(means), np.concatenate(stds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    ap.add_argument("--items", type=int, default=512, help="training images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny-widths", action="store_true", help="toy widths (a smoke run)")
    args = ap.parse_args()
    args.warmup = min(args.warmup, max(0, args.steps - 1))
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    over = ["paths.run_dir=/tmp/unused", f"diffusion.image_size={args.size}",
            f"trainer.batch_size={args.batch}", f"trainer.max_steps={args.steps}",
            "trainer.max_time_s=null", "trainer.eval_every=0", "trainer.checkpoint_every=0",
            "trainer.progress=false", "trainer.tensorboard=false", f"trainer.threads={threads}",
            "trainer.mixed_precision=no"]
    if args.tiny_widths:
        over += ["diffusion.vae.block_out_channels=[8,16]", "diffusion.vae.norm_num_groups=4",
                 "diffusion.unet.block_out_channels=[16,32]", "diffusion.unet.attention=[true,false]",
                 "diffusion.unet.cross_attention_dim=32", "diffusion.unet.heads=2",
                 "diffusion.unet.norm_num_groups=4", "diffusion.text_encoder.hidden_size=32",
                 "diffusion.text_encoder.layers=1", "diffusion.text_encoder.heads=2",
                 "diffusion.text_encoder.intermediate_size=64", "diffusion.prompt_length=16"]
    cfg = compose("train_diffusion", over)
    images, captions = synthetic(args.items, args.size)
    data = Pairs(images, captions)
    torch.manual_seed(0)
    comps = dc.build_components(cfg.diffusion, captions, log=lambda *_: None)
    comps.vae.eval()
    base_comps = copy.deepcopy(comps)  # the same initial weights for both
    with tempfile.TemporaryDirectory() as tmp:
        ours, encode_s = workbench(comps, data, cfg, args, Path(tmp))
    theirs = baseline(base_comps, data, args, float(cfg.optim.optimizer.lr))
    procs = sorted({type(p).__name__ for p in base_comps.unet.attn_processors.values()})
    print(f"diffusion training (stage 2) on {platform.machine()} {platform.processor() or ''}"
          f"({os.cpu_count()} cores), torch {torch.__version__}, {threads} threads; "
          f"{args.size} px, batch {args.batch}, {args.steps} steps (first {args.warmup} left out)")
    print(f"model: UNet {dc.count_parameters(comps.unet):,}, text encoder "
          f"{dc.count_parameters(comps.text.model):,}, VAE {dc.count_parameters(comps.vae):,} "
          f"parameters; latents {comps.vae.config.latent_channels} x "
          f"{args.size // comps.vae_scale} x {args.size // comps.vae_scale}")
    print(f"workbench (cached latents, AttnProcessor2_0, engine): {ours:.1f} images/s "
          f"(latent cache built once: {encode_s:.1f} s for {args.items} images)")
    print(f"baseline (diffusers example loop: VAE encode every step, default attention "
          f"{', '.join(procs)}): {theirs:.1f} images/s")
    print(f"ratio: {ours / theirs:.2f}x (target >= 1.5 on CPU)")


if __name__ == "__main__":
    main()
