"""A tiny regression model trained through the engine; used in-process and as a subprocess
(the DDP and kill-and-resume tests), from the repository root:

    python -m tests.helpers.engine RUN_DIR KEY=VALUE...   (trainer overrides, e.g. resume=latest)

``kill_in_save=STEP`` among them: the process SIGKILLs itself in the middle of writing
``checkpoint-STEP`` (after its weights and optimizer state, before the rest).

Run as a module, not by path: a script's folder goes first on ``sys.path``, and this folder's
``data.py``/``lm.py``/``engine.py`` would then shadow top-level modules of those names.
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
          crash_at: int | None = None, optim_overrides: dict | None = None,
          fingerprint: dict | None = None):
    """Train ``TinyNet`` (20 steps of batch 8, AdamW at lr 1e-2 by default) in ``run_dir``;
    returns the engine and its result. ``fingerprint``: the fit's ``resume_fingerprint``."""
    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])  # the shipped groups
    trainer = OmegaConf.merge(cfg.trainer, {"max_steps": 20, "batch_size": 8, "progress": False,
                                            "tensorboard": False, "log_every": 1,
                                            **trainer_overrides})
    optim = OmegaConf.merge(cfg.optim, {"optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 3}},
                            optim_overrides or {})
    engine = Engine(trainer, run_dir, seed=seed)
    model = TinyNet()
    data = dataset()
    return engine, engine.fit(model, data, make_loss(sleep_s, crash_at), optim=optim,
                              eval_fn=eval_fn_for(dataset(32)), resume_fingerprint=fingerprint)


def kill_during_save(step: int) -> None:
    """Make this process SIGKILL itself while it writes ``checkpoint-<step>``: after the
    weights and the optimizer state, at the scheduler's file."""
    import os
    import signal

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(f".checkpoint-{step}.tmp/scheduler.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    overrides = dict(kv.split("=", 1) for kv in sys.argv[2:])
    overrides = {k: (int(v) if v.isdigit() else v) for k, v in overrides.items()}
    if "kill_in_save" in overrides:
        kill_during_save(int(overrides.pop("kill_in_save")))
    train(sys.argv[1], overrides, sleep_s=0.05)
