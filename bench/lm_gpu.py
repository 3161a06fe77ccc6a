"""GPT-2 124M training throughput and MFU on one GPU, through the workbench's own path.

Trains `lm=gpt2_124m` (12 layers, width 768, context 1024) with `trainer=gpu` (bf16 autocast,
fused AdamW, torch.compile, SDPA flash attention) for a few hundred steps on synthetic tokens
(throughput does not depend on the text) and prints steady-state tokens/s and the model FLOPs
utilisation: achieved model FLOP/s (6 N + 6 n_layer context width per token, no recomputation
counted, causal attention at half the square; the PaLM-convention figure, full square, is printed
too) over the GPU's dense bf16 peak (the datasheet's, or --peak-tflops). Target on one H100:
MFU >= 45%.

    python bench/lm_gpu.py                      # one CUDA device
    python bench/lm_gpu.py --steps 300 --batch-size 16 --grad-accum 4
    python bench/lm_gpu.py --tiny               # seconds on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import numpy as np
import torch
from lm_throughput import StepClock, steady_rate  # bench/ is on sys.path when run as a script
from omegaconf import OmegaConf

from biomed.config import compose
from biomed.engine import Engine
from biomed.lm import model as lm_model
from biomed.lm import tokens as tok_data
from biomed.lm.train import lm_loss

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment
PEAKS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
         "L40S": 362.0, "A10G": 125.0, "L4": 121.0}




def peak_flops(device: torch.device, override: float | None) -> tuple[float, str]:
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return float("nan"), "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAKS.items():
        if key in name:
            return tflops * 1e12, f"{name} datasheet"
    return float("nan"), f"{name}: unknown peak (give --peak-tflops)"


def measured_matmul(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30, help="steps left out (compilation)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--loss", choices=["auto", "fused", "plain"], default="auto",
                    help="fused: chunked output projection + cross-entropy; plain: full logits "
                         "then cross-entropy; auto (the workbench's default): fused on CPU only")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model, a few steps")
    args = ap.parse_args()
    overrides = ["lm=gpt2_124m", "paths.run_dir=/tmp/unused"]
    if args.tiny:
        args.steps, args.warmup = 4, 1
        overrides += ["trainer=cpu", "lm.n_layer=2", "lm.n_embd=64", "lm.n_head=2",
                      "lm.context=64", "lm.tokenizer.vocab_size=512", "trainer.mixed_precision=no",
                      "trainer.batch_size=4", "trainer.grad_accum=1", "trainer.compile=false"]
    else:
        if not torch.cuda.is_available():  # `make bench` runs every script: skip, exit 0
            print("lm_gpu: no CUDA device, skipped (--tiny checks the script on a CPU)")
            return
        overrides += ["trainer=gpu", f"trainer.batch_size={args.batch_size}",
                      f"trainer.grad_accum={args.grad_accum}",
                      f"trainer.compile={str(not args.no_compile).lower()}"]
    cfg = compose("train_lm", overrides)
    context, vocab = int(cfg.lm.context), int(cfg.lm.tokenizer.vocab_size)
    tokens_per_step = cfg.trainer.batch_size * cfg.trainer.grad_accum * context
    n_tokens = (args.steps + 2) * tokens_per_step + 1
    tokens = np.random.default_rng(0).integers(2, vocab, n_tokens).astype(np.uint16)
    trainer = OmegaConf.merge(cfg.trainer, {"max_steps": args.steps, "max_time_s": None,
                                            "eval_every": 0, "checkpoint_every": 0,
                                            "tensorboard": False, "progress": False,
                                            "log_every": 10})
    torch.manual_seed(0)
    model = lm_model.build_model(cfg.lm, lm_model.VocabSpec(vocab))
    flops_tok = lm_model.flops_per_token(model, context)
    params = lm_model.count_parameters(model)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(trainer, run_dir, seed=0)
        device = engine.accelerator.device
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        t0 = time.perf_counter()
        fused = {"auto": None, "fused": True, "plain": False}[args.loss]
        loss_fn = functools.partial(lm_loss, fused=fused)
        engine.fit(model, tok_data.TokenChunks(tokens, context), loss_fn, optim=cfg.optim,
                   collate_fn=tok_data.TokenChunks.collate, callbacks=[clock])
        total = time.perf_counter() - t0
    rate = steady_rate(clock, args.warmup, tokens_per_step)
    achieved = rate * flops_tok
    peak, peak_src = peak_flops(device, args.peak_tflops)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}; precision {engine.precision}; "
          f"compile {trainer.compile}; fused optimizer {trainer.fused_optimizer}; "
          f"loss {args.loss}")
    print(f"model: {params['total'] / 1e6:.1f}M parameters ({params['non_embedding'] / 1e6:.1f}M "
          f"non-embedding), context {context}, vocab {vocab}, "
          f"{flops_tok / 1e9:.3f} GFLOP/token")
    print(f"batch: {cfg.trainer.batch_size} x {context} tokens x {cfg.trainer.grad_accum} "
          f"micro-batches = {tokens_per_step:,} tokens/step; {args.steps} steps in {total:.1f} s "
          f"(timed after step {args.warmup})")
    print(f"throughput: {rate:,.0f} tokens/s, {achieved / 1e12:.1f} TFLOP/s")
    palm = rate * lm_model.flops_per_token(engine.unwrap(model), context, causal=False)
    print(f"MFU: {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s ({peak_src}); target >= 45% "
          f"on one H100 ({palm / peak:.1%} counting attention as PaLM does, unmasked)")
    if device.type == "cuda":
        mm = measured_matmul(device)
        print(f"measured bf16 matmul (8192^3): {mm / 1e12:.0f} TFLOP/s; achieved/measured "
              f"{achieved / mm:.1%}; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} "
              "GiB")


if __name__ == "__main__":
    main()
