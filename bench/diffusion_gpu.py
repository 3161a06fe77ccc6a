"""RoentGen-scale diffusion training throughput and peak memory on one GPU (bf16, SDPA).

What `diffusion=roentgen_sd trainer=gpu` trains, at Stable Diffusion 1.5's size, randomly
initialised (no weights can be downloaded here): `UNet2DConditionModel` with its default config
(SD 1.5: block_out_channels (320, 640, 1280, 1280), cross_attention_dim 768, 860M parameters)
and a CLIP ViT-L/14-size text transformer (12 layers, width 768, 77 tokens, 49,408-token
vocabulary, 123M), both trained; SD's VAE shape (84M, frozen) encodes 512 px gray images
replicated to 3 channels once into 4 x 64 x 64 latents (timed separately: the workbench caches
them), then `biomed.imaging.diffusion.objective.DiffusionModel` trains through the shared engine
(bf16 autocast, fused AdamW, EMA of UNet + text encoder, min-SNR weights, prompt dropout) on
those latents. For each batch size: steady-state images/s and peak GPU memory. Target: >= 40
images/s on one H100 in bf16.

    python bench/diffusion_gpu.py                              # batch sizes 8 16 32
    python bench/diffusion_gpu.py --batch-sizes 16 --steps 40 --gradient-checkpointing
    python bench/diffusion_gpu.py --compile                    # torch.compile the trained module
    python bench/diffusion_gpu.py --tiny                       # seconds on the CPU: checks the script

Prints "skipped: no CUDA device" and exits 0 on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def components(gradient_checkpointing: bool, tiny: bool = False):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if tiny:  # same classes and code path, dimensions a CPU runs in seconds
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64),
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=32, layers_per_block=1,
                                    attention_head_dim=8, norm_num_groups=16)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32,
                                          intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=77,
                                          attn_implementation="sdpa"))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                            down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2)
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768,
                                          intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77,
                                          attn_implementation="sdpa"))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        te.gradient_checkpointing_enable()
    return unet, te, vae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_rate(vae, device, n: int = 64, batch: int = 16, size: int = 512) -> float:
    """Images/s of the frozen VAE encoding gray images (bf16), the one-off caching cost."""
    from biomed.imaging.diffusion.components import to_model_space

    vae.to(device).eval()
    x = torch.rand(batch, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        vae.encode(to_model_space(x, 3))
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n // batch):
            vae.encode(to_model_space(x, 3)).latent_dist.sample()
        sync(device)
    return n / (time.perf_counter() - t0)


def tokens(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49406, (n, 77), generator=g)
    ids[:, 0] = 49406
    lengths = torch.randint(8, 60, (n,), generator=g)
    for i, n_tok in enumerate(lengths.tolist()):
        ids[i, n_tok:] = 49407
    return {"input_ids": ids, "attention_mask": (ids != 49407).long()}


def run_batch(batch: int, args, device) -> dict:
    from omegaconf import OmegaConf

    from biomed.engine import Engine, read_log
    from biomed.imaging.diffusion import components as dc
    from biomed.imaging.diffusion import train as dt
    from biomed.imaging.diffusion.objective import DiffusionModel, EmaCallback

    torch.manual_seed(0)
    unet, te, vae = components(args.gradient_checkpointing, args.tiny)
    dt._sdpa(unet)
    n, side = batch * 4, unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(n, 4, side, side, generator=g).numpy().astype(np.float16)
    std = (0.1 * torch.rand(n, 4, side, side, generator=g)).numpy().astype(np.float16)
    pairs = dt.LatentPairs(mean, std, tokens(n))
    sched = dc.build_noise_scheduler({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                      "beta_end": 0.012, "prediction_type": "epsilon"})
    training = OmegaConf.create({"cond_dropout": 0.1, "snr_gamma": 5.0, "noise_offset": 0.0,
                                 "latent_sample": True, "ema_decay": 0.9999})
    dt.tag_learning_rate(te, 0.2)
    empty = tokens(1)
    model = DiffusionModel(unet, te, train_text_encoder=True, noise_scheduler=sched,
                           scaling_factor=0.18215, training=training, empty=empty)
    trainer = OmegaConf.create({
        "accelerator": device.type, "mixed_precision": "no" if args.tiny else "bf16",
        "batch_size": batch,
        "max_steps": args.steps, "max_time_s": None, "eval_every": 0, "checkpoint_every": 0,
        "progress": False, "tensorboard": False, "fused_optimizer": True,
        "compile": args.compile, "num_workers": 0 if args.tiny else 2,
        "clip_grad_norm": 1.0})
    optim = OmegaConf.create({"optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True,
                                            "lr": 5e-5, "betas": [0.9, 0.999], "eps": 1e-8},
                              "weight_decay": 0.01,
                              "schedule": {"warmup_steps": 0, "decay": "constant",
                                           "min_lr_ratio": 1.0}})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(trainer, Path(tmp), seed=0)
        engine.fit(model, pairs, lambda m, b: m(b), optim=dt.component_optim(optim),
                   collate_fn=dt.LatentPairs.collate, callbacks=[EmaCallback()])
        times = [r["step_time_s"] for r in read_log(tmp) if "step_time_s" in r]
    steady = times[args.warmup:] or times
    out = {"batch": batch, "images_per_s": batch / float(np.median(steady)),
           "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else float("nan")),
           "unet_params": dc.count_parameters(unet), "text_params": dc.count_parameters(te),
           "vae_params": dc.count_parameters(vae)}
    del engine, model, unet, te, vae
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=8, help="first steps left out (compilation)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny components, a few steps")
    args = ap.parse_args()
    if args.tiny:
        args.batch_sizes, args.steps, args.warmup = [2], 4, 1
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("skipped: no CUDA device (--tiny checks the script on a CPU)")
        return 0
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device = torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (--tiny)"
    print(f"{name}, torch {torch.__version__}; bf16 autocast, "
          f"SDPA, fused AdamW, gradient checkpointing {args.gradient_checkpointing}, compile "
          f"{args.compile}; {args.steps} steps per batch size (first {args.warmup} left out)")
    _, _, vae = components(False, args.tiny)
    size = vae.config.sample_size
    rate = encode_rate(vae, device, n=4 if args.tiny else 64, batch=2 if args.tiny else 16,
                       size=size)
    print(f"frozen VAE encoding {size} px (once, cached): {rate:.1f} images/s")
    del vae
    for batch in args.batch_sizes:
        try:
            r = run_batch(batch, args, device)
        except torch.OutOfMemoryError:
            print(f"batch {batch}: out of GPU memory")
            gc.collect()
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # report and go on to the next batch size
            print(f"batch {batch}: failed: {type(e).__name__}: {e}")
            continue
        print(f"batch {r['batch']}: {r['images_per_s']:.1f} images/s, peak "
              f"{r['peak_gib']:.1f} GiB (UNet {r['unet_params'] / 1e6:.0f}M + text encoder "
              f"{r['text_params'] / 1e6:.0f}M trained, VAE {r['vae_params'] / 1e6:.0f}M frozen; "
              f"target >= 40 images/s on one H100)")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
