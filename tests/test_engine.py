"""The shared training engine: schedule, optimizer groups, logging, checkpoints, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biomed.engine import (
    EpochSampler,
    ScheduleConfig,
    TrainerConfig,
    build_optimizer,
    list_checkpoints,
    lr_multiplier,
    read_log,
)
from biomed.errors import ConfigError
from tests.helpers.engine import train

ROOT = Path(__file__).resolve().parent.parent


def test_lr_schedule_warmup_then_cosine_to_floor():
    s = ScheduleConfig(warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, 100, s) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, s) == pytest.approx(1.0)
    assert lr_multiplier(10, 100, s) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, s) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_multiplier(100, 100, s) == pytest.approx(0.1)
    lin = ScheduleConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert lr_multiplier(25, 100, lin) == pytest.approx(0.75)
    with pytest.raises(ConfigError):
        lr_multiplier(50, 100, ScheduleConfig(decay="exp"))


def test_optimizer_groups_exclude_bias_norm_embedding():
    from biomed.config import compose

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4),
                                torch.nn.LayerNorm(4))
    opt = build_optimizer(compose("quickstart", ["+optim=adamw"]).optim, model)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]  # the linear weight only
    assert len(plain["params"]) == 4  # embedding, linear bias, norm weight and bias


def test_sampler_depends_on_seed_and_epoch_and_shards():
    a = EpochSampler(10, seed=1)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    assert sorted(first) == list(range(10)) and list(a) != first
    a.set_epoch(0, start=4)
    assert list(a) == first[4:]
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=1, rank=rank, world_size=3)
        s.set_epoch(0)
        shards.append(list(s))
    assert [len(x) for x in shards] == [3, 3, 3] and not set(shards[0]) & set(shards[1])


def test_trainer_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainerConfig.from_cfg({"max_step": 3})


def test_fit_learns_logs_and_keeps_checkpoints(tmp_path):
    engine, result = train(tmp_path, {"max_steps": 30, "checkpoint_every": 10,
                                      "keep_checkpoints": 2, "eval_every": 10})
    assert result.step == 30 and len(result.losses) == 30
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5])  # it learns
    rows = read_log(tmp_path)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30]
    assert all(k in train_rows[0] for k in ("lr", "grad_norm", "step_time_s"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    ckpt = tmp_path / "checkpoint-30"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt",
                                               "scheduler.pt", "rng-0.pt", "trainer_state.json"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 30
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary folder left behind
    for name in ("optimizer.pt", "scheduler.pt", "rng-0.pt"):  # loadable without pickle
        torch.load(ckpt / name, weights_only=True)


def test_crash_and_resume_reproduces_losses(tmp_path):
    _, full = train(tmp_path / "full", {"checkpoint_every": 5})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path / "crashed", {"checkpoint_every": 5}, crash_at=13)
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")][-1] == "checkpoint-10"
    _, resumed = train(tmp_path / "crashed", {"checkpoint_every": 5, "resume": "latest"})
    assert resumed.losses == full.losses[10:]  # exact, dropout included
    rows = [r for r in read_log(tmp_path / "crashed") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 21))  # the crashed run's rows 11-12 dropped
    assert [r["loss"] for r in rows] == full.losses


def test_killed_process_resumes_with_identical_losses(tmp_path):
    """A real SIGKILL after a checkpoint, then `resume=latest` in a new process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = "-mtests.helpers.engine"  # `python -m`, found through PYTHONPATH=ROOT
    common = ["checkpoint_every=5", "max_steps=20"]
    subprocess.run([sys.executable, script, str(tmp_path / "full"), *common], check=True, env=env)
    full = [r["loss"] for r in read_log(tmp_path / "full") if "loss" in r]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, str(run), *common], env=env)
    deadline = time.time() + 120
    while not (run / "checkpoint-10").is_dir() and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = list_checkpoints(run)[-1]
    assert int(last.name.split("-")[1]) < 20, "killed too late to test anything"
    subprocess.run([sys.executable, script, str(run), *common, "resume=latest"], check=True,
                   env=env)
    resumed = [r["loss"] for r in read_log(run) if "loss" in r]
    assert resumed == full


def test_bf16_autocast_on_cpu(tmp_path):
    _, result = train(tmp_path, {"mixed_precision": "bf16", "max_steps": 5})
    assert len(result.losses) == 5 and all(math.isfinite(x) for x in result.losses)


def test_resume_from_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        train(tmp_path, {"resume": str(tmp_path / "nope")})


def test_tensorboard_events_written(tmp_path):
    train(tmp_path, {"max_steps": 3, "tensorboard": True})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_with_other_seed_or_batch_is_refused(tmp_path):
    train(tmp_path, {"max_steps": 10, "checkpoint_every": 5})
    with pytest.raises(ConfigError, match=r"seed 0 -> 7"):
        train(tmp_path, {"max_steps": 20, "resume": "latest"}, seed=7)
    with pytest.raises(ConfigError, match=r"batch_size 8 -> 4"):
        train(tmp_path, {"max_steps": 20, "resume": "latest", "batch_size": 4})


def test_nan_loss_stops_before_the_update(tmp_path):
    import torch.nn as nn
    from torch.utils.data import TensorDataset

    from biomed.config import compose
    from biomed.engine import Engine
    from biomed.errors import TrainingDiverged

    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])
    engine = Engine({**dict(cfg.trainer), "max_steps": 3, "batch_size": 2, "progress": False,
                     "tensorboard": False}, tmp_path)
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    data = TensorDataset(torch.ones(4, 2))
    with pytest.raises(TrainingDiverged, match="training loss is nan at step 1"):
        engine.fit(model, data, lambda m, b: m(b[0]).sum() * float("nan"), optim=cfg.optim)
    assert torch.equal(model.weight.detach(), before)


def test_grad_accumulation_gives_the_same_update_as_a_large_batch(tmp_path):
    """SGD, no dropout: 2 x 4 accumulated must equal one batch of 8, to float precision."""
    import torch.nn as nn
    from torch.utils.data import TensorDataset

    from biomed.config import compose
    from biomed.engine import Engine

    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])
    optim = cfg.optim.copy()
    optim.optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))

    def loss_fn(m, b):
        return nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1])

    weights = []
    for bs, k in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        engine = Engine({**dict(cfg.trainer), "max_steps": 2, "batch_size": bs, "grad_accum": k,
                         "clip_grad_norm": None, "progress": False, "tensorboard": False},
                        tmp_path / f"{bs}")
        engine.fit(model, data, loss_fn, optim=optim)
        weights.append(model.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
