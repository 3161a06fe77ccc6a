"""Overhead of the shared training engine against a hand-written PyTorch loop.

Baseline: the plainest correct loop (AdamW, warmup+cosine LambdaLR, clipping) on the same model,
data order and step count. The engine adds accelerate, the epoch sampler, per-step JSONL and
TensorBoard logging and a progress bar; the ratio says what that costs per step.

    python bench/engine_overhead.py [--steps 300] [--width 512]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from biomed.config import compose
from biomed.engine import Engine, EpochSampler, ScheduleConfig, build_optimizer, lr_multiplier


def make(width: int, n: int = 4096):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                          nn.Linear(width, 1))
    x = torch.randn(n, 64)
    return model, TensorDataset(x, x.sum(1, keepdim=True))


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def baseline(model, data, optim_cfg, steps, batch_size) -> float:
    opt = build_optimizer(optim_cfg, model)
    sched_cfg = ScheduleConfig(**OmegaConf.to_container(optim_cfg.schedule))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, steps, sched_cfg))
    sampler = EpochSampler(len(data), seed=0)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    it, step, t0 = iter(loader), 0, time.perf_counter()
    while step < steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        loss = loss_fn(model, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        _ = float(loss)  # the engine reads the loss every step too
        step += 1
    return time.perf_counter() - t0


def engine_run(model, data, cfg, steps, batch_size) -> float:
    trainer = OmegaConf.merge(cfg.trainer, {"max_steps": steps, "batch_size": batch_size,
                                            "progress": False})
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(trainer, run_dir, seed=0)
        t0 = time.perf_counter()
        engine.fit(model, data, loss_fn, optim=cfg.optim)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"settings: MLP width {args.width}, batch {args.batch_size}, {args.steps} steps, "
          f"fp32, best of {args.repeats}")
    base, eng = math.inf, math.inf
    for _ in range(args.repeats):  # interleaved, best of N: robust to a noisy neighbour
        model, data = make(args.width)
        base = min(base, baseline(model, data, cfg.optim, args.steps, args.batch_size))
        model, data = make(args.width)
        eng = min(eng, engine_run(model, data, cfg, args.steps, args.batch_size))
    print(f"baseline (hand-written loop): {args.steps / base:8.1f} steps/s")
    print(f"biomed engine               : {args.steps / eng:8.1f} steps/s")
    print(f"ratio engine/baseline time  : {eng / base:.3f}  (1.0 = no overhead)")


if __name__ == "__main__":
    main()
