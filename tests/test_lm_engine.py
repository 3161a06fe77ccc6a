"""The engine features the LM added: time budget, clock-driven schedule, fused optimizer,
auto precision, compile, on_train_begin, exposed optimizer/state."""

from __future__ import annotations

import pytest
import torch

from biomed.config import compose
from biomed.engine import Engine, ScheduleConfig, build_optimizer, lr_multiplier
from biomed.lm.sophia import SophiaG
from tests.helpers.engine import train


def test_schedule_follows_the_clock_under_a_time_budget():
    s = ScheduleConfig(warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(5, 10**6, s, time_progress=0.9) == pytest.approx(0.6)  # warmup first
    assert lr_multiplier(20, 10**6, s, time_progress=0.5) == pytest.approx(0.55)
    assert lr_multiplier(20, 10**6, s, time_progress=1.0) == pytest.approx(0.1)
    assert lr_multiplier(55, 100, s, time_progress=0.0) == pytest.approx(0.55)  # steps ahead
    assert lr_multiplier(20, 10**6, s) == pytest.approx(1.0, abs=1e-4)  # no budget: steps


def test_fused_flag_reaches_optimizers_that_take_it():
    model = torch.nn.Linear(4, 4)
    adamw = compose("quickstart", ["+optim=adamw"]).optim
    assert build_optimizer(adamw, model, fused=True).defaults["fused"] is True
    assert not build_optimizer(adamw, model).defaults["fused"]
    sophia = compose("quickstart", ["+optim=sophia"]).optim
    assert isinstance(build_optimizer(sophia, model, fused=True), SophiaG)  # no such option


def test_time_budget_and_callbacks(tmp_path):
    seen = []

    class Probe:
        def on_train_begin(self, engine, model):
            seen.append(("begin", engine.state.step, type(engine.optimizer).__name__))

        def on_step_end(self, engine, model, step):
            seen.append(("step", step))

    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])
    trainer = {**cfg.trainer, "max_steps": 10**6, "max_time_s": 0.3, "progress": False,
               "tensorboard": False, "batch_size": 8, "mixed_precision": "auto"}
    engine = Engine(trainer, tmp_path, seed=0)
    assert engine.precision in ("bf16", "no")
    from tests.helpers.engine import TinyNet, dataset, make_loss

    result = engine.fit(TinyNet(), dataset(), make_loss(sleep_s=0.02), optim=cfg.optim,
                        callbacks=[Probe()], tokens_per_sample=1)
    assert seen[0] == ("begin", 0, "AcceleratedOptimizer")
    assert 3 <= result.step < 100 and seen[-1] == ("step", result.step)
    assert engine.state.train_seconds >= 0.3 and engine.state.step == result.step


def test_tokens_per_second_and_clock_in_the_log(tmp_path):
    from biomed.engine import read_log

    train(tmp_path, {"max_steps": 3})
    rows = read_log(tmp_path)
    times = [r["time_s"] for r in rows if "loss" in r]
    assert times == sorted(times) and times[0] > 0


@pytest.mark.slow
def test_compiled_model_trains_and_checkpoints_with_plain_keys(tmp_path):
    from safetensors.torch import load_file

    from tests.helpers.engine import TinyNet, dataset, make_loss

    cfg = compose("quickstart", ["+trainer=cpu", "+optim=adamw"])
    trainer = {**cfg.trainer, "max_steps": 3, "compile": True, "checkpoint_every": 3,
               "progress": False, "tensorboard": False}
    result = Engine(trainer, tmp_path, seed=0).fit(TinyNet(), dataset(), make_loss(),
                                                   optim=cfg.optim)
    assert len(result.losses) == 3
    keys = load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))
    assert all(not k.startswith("_orig_mod") for k in keys)
