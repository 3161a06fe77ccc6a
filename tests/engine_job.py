"""A tiny regression model trained through the engine; used in-process and as a subprocess.

    python tests/engine_job.py RUN_DIR KEY=VALUE...   (trainer overrides, e.g. resume=latest)
"""

from __future__ import annotations

import sys
import time

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from biomed.config import compose
from biomed.engine import Engine


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(0.2),
                                 nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def dataset(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def make_loss(sleep_s: float = 0.0, crash_at: int | None = None):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise RuntimeError("simulated crash")
        if sleep_s:
            time.sleep(sleep_s)
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    return loss_fn


def eval_fn_for(data: TensorDataset):
    def eval_fn(model):
        x, y = data.tensors
        return {"val_loss": float(nn.functional.mse_loss(model(x), y))}
    return eval_fn


def train(run_dir, trainer_overrides: dict, *, seed: int = 0, sleep_s: float = 0.0,
          crash_at: int | None = None):
    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])  # the shipped groups
    trainer = OmegaConf.merge(cfg.trainer, {"max_steps": 20, "batch_size": 8, "progress": False,
                                            "tensorboard": False, "log_every": 1,
                                            **trainer_overrides})
    optim = OmegaConf.merge(cfg.optim, {"optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 3}})
    engine = Engine(trainer, run_dir, seed=seed)
    model = TinyNet()
    data = dataset()
    return engine, engine.fit(model, data, make_loss(sleep_s, crash_at), optim=optim,
                              eval_fn=eval_fn_for(dataset(32)))


if __name__ == "__main__":
    overrides = dict(kv.split("=", 1) for kv in sys.argv[2:])
    overrides = {k: (int(v) if v.isdigit() else v) for k, v in overrides.items()}
    train(sys.argv[1], overrides, sleep_s=0.05)
