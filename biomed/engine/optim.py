"""The optimizer (weight-decay groups, from ``conf/optim/*.yaml``) and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from biomed.errors import ConfigError


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then cosine/linear decay or constant."""

    warmup_steps: int = 0
    decay: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak


def lr_multiplier(step: int, total: int, sched: ScheduleConfig,
                  time_progress: float | None = None) -> float:
    """LR factor for optimizer step ``step`` (0-based): warmup from 1/warmup, then decay.

    ``time_progress`` (elapsed / budget, under ``trainer.max_time_s``) moves the decay along
    with the clock when it is ahead of the step count, so a time-limited run still ends at
    the floor.
    """
    if sched.warmup_steps > 0 and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return 1.0
    if total <= sched.warmup_steps and time_progress is None:
        return 1.0
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total - sched.warmup_steps))
    if time_progress is not None:
        progress = max(progress, min(1.0, time_progress))
    floor = sched.min_lr_ratio
    if sched.decay == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if sched.decay == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    raise ConfigError(f"optim.schedule.decay: unknown schedule {sched.decay!r}")


def build_optimizer(optim_cfg: DictConfig, model: torch.nn.Module,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Build the optimizer from ``conf/optim/*.yaml`` with decoupled weight decay groups.

    Weight decay applies to matrices of linear/conv layers only, not to biases, norms or
    embeddings (as in GPT-2/nanoGPT and most transformer recipes). ``fused`` asks optimizers
    that take a ``fused`` argument (torch's AdamW/Adam, on CPU and CUDA) for their fused kernel.
    """
    import inspect

    from hydra.utils import instantiate

    decay, no_decay = [], []
    no_decay_ids = _no_decay_param_ids(model)
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(optim_cfg.weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    factory = instantiate(optim_cfg.optimizer)  # `_partial_: true`: the class with its settings
    extra = {}
    if fused and "fused" in inspect.signature(factory.func).parameters \
            and factory.keywords.get("fused") is None:
        extra["fused"] = True
    return factory([g for g in groups if g["params"]], **extra)


def _no_decay_param_ids(model: torch.nn.Module) -> set[int]:
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm,
                  torch.nn.Embedding)
    ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or name.endswith("bias") or p.ndim < 2 \
                    or "norm" in type(module).__name__.lower():
                ids.add(id(p))
    return ids
