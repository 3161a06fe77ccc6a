"""What a checkpoint must agree with to be resumed: a flat fingerprint of the settings that
shape the result.

A resumed run restores the optimizer's state (its learning rate and betas included) and the
schedule's position; if the run's config changed meanwhile, the restored state silently wins
over the new setting, or a changed ``max_steps`` bends the schedule. So every checkpoint stores
a fingerprint and a resume compares it with the run's own:

- ``model.*``: the model's class and its parameters' names and shapes (a changed architecture);
- ``data.*``: the number of training items and whether they are shuffled;
- ``trainer.*``: ``max_steps``, ``max_time_s``, ``clip_grad_norm`` (the schedule and the update);
- ``optim.*``: the whole optimizer config (learning rate, betas, weight decay, schedule);
- and whatever the caller adds (``fit(resume_fingerprint={"model": cfg.lm, "data": cfg.data})``)
  for what the engine cannot see: a model or data config that leaves the shapes unchanged.

A mismatch is refused with the differing keys named, unless ``trainer.resume_allow_changes``
accepts them (``true``, or a list of keys or key prefixes such as ``[optim.optimizer.lr]``).
The seed, world size, batch size and accumulation are checked apart, and cannot be accepted:
the data order would not continue where the run stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from biomed.errors import ConfigError

_TRAINER_KEYS = ("max_steps", "max_time_s", "clip_grad_norm")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (dicts, OmegaConf nodes) as ``{"a.b.c": value}`` with JSON-plain values
    (lists and tuples become lists; anything else JSON cannot hold becomes its ``str``)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}


def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """The model's class, parameter count and a hash of its parameters' names and shapes."""
    h = hashlib.sha256()
    count = 0
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        count += p.numel()
    cls = type(model)
    return {"model.class": cls.__qualname__, "model.parameters": count,
            "model.shapes": h.hexdigest()[:16]}


def run_fingerprint(model: torch.nn.Module, n_items: int, shuffle: bool, trainer: Any,
                    optim: Any, extra: Mapping | None = None) -> dict[str, Any]:
    """The fingerprint a checkpoint of this run stores (see the module docstring)."""
    fp = {**model_signature(model), "data.items": int(n_items), "data.shuffle": bool(shuffle),
          **{f"trainer.{k}": getattr(trainer, k) for k in _TRAINER_KEYS},
          **flatten(optim, "optim")}
    if extra:
        fp.update(flatten(extra))
    return dict(sorted(fp.items()))


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple]:
    """``{key: (saved value, new value)}`` for every key that differs (``None``: absent)."""
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) or (k in saved) != (k in now)}


def _allowed(key: str, allow: bool | list[str] | tuple[str, ...]) -> bool:
    if isinstance(allow, bool):
        return allow
    return any(key == a or key.startswith(a + ".") for a in allow)


def check_fingerprint(where: Any, saved: Mapping[str, Any] | None, now: Mapping[str, Any],
                      allow: bool | list[str] | tuple[str, ...] = False) -> dict[str, tuple]:
    """Compare a checkpoint's fingerprint with the run's; return the accepted differences.

    Raises a one-line ConfigError naming the differing keys that ``allow`` does not accept. A
    checkpoint without a fingerprint (written before fingerprints existed) is not checked.
    """
    if not saved:
        return {}
    diff = differences(saved, now)
    refused = {k: v for k, v in diff.items() if not _allowed(k, allow)}
    if refused:
        shown = [f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in list(refused.items())[:6]]
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        keys = ",".join(refused)
        raise ConfigError(f"{where}: cannot resume: the config changed since this checkpoint "
                          f"({'; '.join(shown)}{more}); to continue with the new values set "
                          f"trainer.resume_allow_changes=[{keys}] (or true), or start a new "
                          f"run in another folder")
    return diff


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."
