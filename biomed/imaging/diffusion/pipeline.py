"""The saved ``pipeline/`` folder: write it, find it, read its ``biomed.json``, load it to sample.

The folder is a ``StableDiffusionPipeline.save_pretrained`` folder (safetensors, no safety checker
or feature extractor) plus ``README.md`` (the model card, `biomed.imaging.diffusion.card`) and
``biomed.json`` (what the workbench's sampler reads: prompt length, channels, image size,
defaults). It loads with ``StableDiffusionPipeline.from_pretrained(folder)`` alone; diffusers 0.42
samples a one-channel VAE as is (``output_type="pt"`` gives (N, 1, H, W), ``"np"`` (N, H, W, 1),
``"pil"`` mode "L" images); the workbench's sampler (`biomed.imaging.diffusion.sample`) decodes
the latents itself, to check each sample for divergence before clipping.

:func:`load_pipeline` is the one loader for inference (``biomed generate``, evaluate-generation,
the augmentation loop, the app): it imports neither training code nor Hydra, loads a folder once
per (folder, device, dtype) and names it by its folder's name and a sha256 of its weights
(:func:`model_id_of`; never its path, which may name a user or a site), which every synthetic
image's provenance records.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biomed.engine.devices import pick_device, pick_dtype
from biomed.errors import ConfigError, InputError
from biomed.imaging.diffusion.model_index import check_model_index
from biomed.imaging.reports.prompts import apply_prompt_filter, check_prompt_filter

PIPELINE_SUBDIR = "pipeline"
INFO_FILE = "biomed.json"


# ---------------------------------------------------------------------------------------------
# writing and finding the folder


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` without safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out: str | Path, *, card: str, info: dict[str, Any]) -> Path:
    """Write ``pipe`` to ``out`` (safetensors), with ``README.md`` and ``biomed.json``.

    Written to a temporary folder and renamed, so ``out`` is complete or absent. A tokenizer
    class that only transformers 5 knows (``TokenizersBackend``) is recorded as
    ``PreTrainedTokenizerFast``, which both transformers 4 and 5 load.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    index_path = tmp / "model_index.json"
    index = json.loads(index_path.read_text())
    if index.get("tokenizer", [None, None])[1] == "TokenizersBackend":
        index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        tok_cfg = tmp / "tokenizer" / "tokenizer_config.json"
        cfg = json.loads(tok_cfg.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_pipeline_dir(model_dir: str | Path) -> Path:
    """The pipeline folder of ``model_dir``: the folder itself or its ``pipeline/`` subfolder."""
    path = Path(str(model_dir)).expanduser()
    if not path.exists():
        raise InputError(path, "no such model folder")
    if not path.is_dir():
        raise InputError(path, "not a folder (give a train-diffusion run folder or its pipeline/)")
    for candidate in (path, path / PIPELINE_SUBDIR):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise InputError(path, "not a diffusers pipeline folder (no model_index.json in it or in its "
                           "pipeline/ subfolder)")


def pipeline_info(path: str | Path) -> dict[str, Any]:
    """The ``biomed.json`` of a pipeline folder ({} for a folder not written by the workbench)."""
    p = resolve_pipeline_dir(path) / INFO_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


# ---------------------------------------------------------------------------------------------
# loading it for sampling


def weights_sha256(folder: Path) -> str:
    """One sha256 over the pipeline's weight files (UNet, text encoder, VAE): the model's id."""
    digest = hashlib.sha256()
    files = sorted(p for sub in ("unet", "text_encoder", "vae") for p in (folder / sub).glob("*")
                   if p.suffix in (".safetensors", ".bin"))
    for p in files:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digest.update(f"{p.relative_to(folder).as_posix()}\0{h.hexdigest()}\n".encode())
    return digest.hexdigest()


def model_id_of(folder: Path, sha256: str | None = None) -> str:
    """``<folder name> [preset <name>] weights-sha256:<16 hex>``: the folder's name (not its
    path: provenance travels with the images), the train-diffusion preset recorded in
    ``biomed.json`` when there is one, and what the weights are (``sha256``:
    :func:`weights_sha256` of the folder when already computed)."""
    parts = [Path(folder).name or "pipeline"]
    try:
        preset = json.loads((folder / INFO_FILE).read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        preset = None
    if preset:
        parts.append(f"preset {preset}")
    parts.append(f"weights-sha256:{(sha256 or weights_sha256(folder))[:16]}")
    return " ".join(parts)


@dataclass
class LoadedPipeline:
    """A loaded pipeline, where it came from, the scheduler config it was saved with, and the
    sha256 of its weight files ("" for a pipeline that was never saved)."""

    pipe: Any  # diffusers.StableDiffusionPipeline
    folder: Path | None
    model_id: str
    scheduler_config: dict = field(default_factory=dict)
    weights_sha256: str = ""
    # biomed.json's prompt_filter: what the sampler does to each prompt, as in training
    prompt_filter: str = "none"

    def model_prompts(self, prompts: list[str]) -> list[str]:
        """``prompts`` as the model is conditioned on them (`prompt_filter` applied)."""
        return apply_prompt_filter(self.prompt_filter, [str(p) for p in prompts])


def load_pipeline(model_dir: str | Path, device: str | None = None,
                  dtype: str | None = None) -> LoadedPipeline:
    """Load (once per folder, device and dtype: cached) a saved pipeline for sampling; its
    ``model_index.json`` is allow-listed first (`check_model_index`: no class or code the
    workbench does not read)."""
    folder = resolve_pipeline_dir(model_dir).resolve()
    check_model_index(folder)
    dev = pick_device(device)
    stamp = max((p.stat().st_mtime_ns for p in folder.glob("*/*") if p.is_file()), default=0)
    return _load_cached(str(folder), str(dev), pick_dtype(dtype, dev), stamp)


@functools.lru_cache(maxsize=2)
def _load_cached(folder: str, device: str, dtype: torch.dtype, _stamp: int) -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, dtype=dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            json.JSONDecodeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise InputError(folder, f"cannot load it as a StableDiffusionPipeline ({reason})") \
            from None
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if getattr(pipe, n, None) is None]
    if missing:
        raise InputError(folder, f"pipeline lacks {', '.join(missing)}")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    sha = weights_sha256(Path(folder))
    try:
        prompt_filter = check_prompt_filter(pipeline_info(folder).get("prompt_filter"))
    except (ConfigError, ValueError, AttributeError) as e:
        raise InputError(Path(folder) / INFO_FILE, f"bad prompt_filter ({e})") from None
    return LoadedPipeline(pipe, Path(folder), model_id_of(Path(folder), sha),
                          dict(pipe.scheduler.config), sha, prompt_filter)
