"""The ``eval`` node of ``conf/evaluate_generation.yaml`` as a typed object: how many prompts each
suite uses, the bootstrap, the MS-SSIM and FID settings, batch sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from biomed.errors import ConfigError


@dataclass
class EvalSettings:
    """The ``eval`` node of ``conf/evaluate_generation.yaml`` (defaults match the file)."""

    max_prompts: int | None = 200
    samples_per_prompt_diversity: int = 4
    diversity_prompts: int = 16
    laterality_per_side: int = 32
    negation_pairs: int = 32
    n_boot: int = 1000
    fid_max_images: int | None = None
    fid_eps: float = 1e-6
    ms_ssim_scales: int = 3
    ms_ssim_window: int = 11
    ms_ssim_sigma: float = 1.5
    classifier_batch_size: int = 64
    generation_chunk: int = 64
    grid_prompts: int = 4
    text_check: bool = True
    progress: bool = True

    @classmethod
    def from_cfg(cls, node: Mapping[str, Any] | DictConfig, **extra: Any) -> EvalSettings:
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) \
            else dict(node)
        ms = raw.pop("ms_ssim", None) or {}
        raw.update({f"ms_ssim_{k}": v for k, v in ms.items()}, **extra)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"eval: unknown keys {unknown}")
        out = cls(**raw)
        for name in ("samples_per_prompt_diversity",):
            if int(getattr(out, name)) < 2:
                raise ConfigError(f"eval.{name}={getattr(out, name)}: at least 2 (pairs)")
        for name in ("diversity_prompts", "laterality_per_side", "negation_pairs", "n_boot"):
            if int(getattr(out, name)) < 0:
                raise ConfigError(f"eval.{name}={getattr(out, name)} must be >= 0")
        return out
