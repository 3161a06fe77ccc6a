"""`AppContext`: the app's configuration, the models it loaded once at launch, and what is missing.

Every tab reads its models from here. Loading goes through `biomed.pretrained` (the one place
saved models are loaded for inference); a model whose folder is not configured, absent or broken
is left None and ``missing[kind]`` names the command that makes it, so the app always starts and
each tab does what it can without it. ``load_errors[kind]`` (in ``extras``) keeps the one-line
reason a configured folder did not load, for the page header.

``work_dir`` is the app's private temporary folder (mode 0700, made at launch, removed at exit):
request files (downloads, uploads) go in sub-folders of it; gradio's own cache is its
``gradio/`` sub-folder (`gradio_temp_dir`), the only part of it the server may serve.

Torch on two CPU cores runs one request at a time per model: handlers take ``ctx.lock(kind)``
around every use of a model (the queue's concurrency limit already serialises events; the lock
also covers work started outside the queue, such as the warm-up).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("apps")

KINDS: tuple[str, ...] = ("diffusion", "classifier", "clip", "lm")
# kind -> the command that makes the model (what the page tells a user without one)
MAKES: dict[str, str] = {
    "diffusion": "make quickstart (or: biomed train-diffusion)",
    "classifier": "make quickstart (or: biomed train-classifier)",
    "clip": "make quickstart (or: biomed train-clip)",
    "lm": "make quickstart (or: biomed train-lm; or start the app with "
          "lm.pretrained=<a local causal-LM folder>)",
}


def _private_dir() -> Path:
    """A fresh folder readable by this user only, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="biomed-app-"))  # mkdtemp makes it 0700
    path.chmod(0o700)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass
class AppContext:
    """The app's state shared by every tab (see the module docstring)."""

    cfg: DictConfig  # conf/app.yaml
    pipeline: Any | None = None  # biomed.pretrained.load_pipeline(...) result
    classifier: Any | None = None  # XrayClassifier in eval mode
    classifier_config: dict | None = None  # its config.json (labels, input size, ...)
    clip: Any | None = None  # LoadedClip
    lm: Any | None = None  # (model, tokenizer) from biomed.pretrained.load_lm
    sources: dict[str, str] = field(default_factory=dict)  # kind -> folder it came from
    missing: dict[str, str] = field(default_factory=dict)  # kind -> the command that makes it
    work_dir: Path = field(default_factory=_private_dir)  # private temp folder (0700)
    extras: dict[str, Any] = field(default_factory=dict)  # per-tab state built at launch
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, cfg: DictConfig, work_dir: str | Path | None = None) -> AppContext:
        """Load every configured model (``cfg.models.<kind>``; ``cfg.lm.pretrained`` overrides
        the LM folder). Never raises for a missing or broken model: it is left None, with
        ``missing[kind]`` and ``extras["load_errors"][kind]`` saying why."""
        ctx = cls(cfg) if work_dir is None else cls(cfg, work_dir=Path(work_dir))
        ctx.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        errors: dict[str, str] = ctx.extras.setdefault("load_errors", {})
        device = cfg.get("device") or "auto"
        for kind in KINDS:
            folder = model_folder(cfg, kind)
            if folder is None:
                ctx.missing[kind] = MAKES[kind]
                errors[kind] = "not configured"
                continue
            if not Path(folder).exists():
                ctx.missing[kind] = MAKES[kind]
                errors[kind] = f"{folder}: no such folder"
                continue
            try:
                _LOADERS[kind](ctx, folder, device)
            except Exception as e:  # noqa: BLE001 - a bad folder must not stop the app
                ctx.missing[kind] = MAKES[kind]
                errors[kind] = " ".join(str(e).split())[:300] or type(e).__name__
                log.warning("%s model not loaded from %s: %s", kind, folder, errors[kind])
                continue
            ctx.sources[kind] = str(folder)
        return ctx

    def lock(self, kind: str) -> threading.Lock:
        """The lock of one model kind: one request at a time per model."""
        with self._locks_guard:
            return self._locks.setdefault(kind, threading.Lock())

    def loaded(self, kind: str) -> bool:
        return kind in self.sources and kind not in self.missing

    def warm_up(self) -> dict[str, str]:
        """One tiny generation / forward per loaded model, so that the first user does not pay
        for lazy initialisation; returns kind -> "ok" or the one-line error (the model stays
        loaded: a failed warm-up is logged, not fatal)."""
        out = {}
        for kind in KINDS:
            if not self.loaded(kind):
                continue
            try:
                with self.lock(kind):
                    _WARM[kind](self)
                out[kind] = "ok"
            except Exception as e:  # noqa: BLE001
                out[kind] = " ".join(str(e).split())[:300] or type(e).__name__
                log.warning("warm-up of the %s model failed: %s", kind, out[kind])
        self.extras["warm_up"] = out
        return out

    def close(self) -> None:
        """Delete the private folder (also done at exit)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


def model_folder(cfg: DictConfig, kind: str) -> str | None:
    """The configured folder of a model kind (None: not loaded); ``lm.pretrained`` wins over
    ``models.lm``."""
    if kind == "lm":
        pretrained = (cfg.get("lm") or {}).get("pretrained")
        if pretrained:
            return str(pretrained)
    folder = (cfg.get("models") or {}).get(kind)
    return str(folder) if folder else None


def gradio_temp_dir(ctx: AppContext) -> Path:
    """gradio's file cache for this app: ``<work_dir>/gradio`` (0700)."""
    path = ctx.work_dir / "gradio"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# loading and warming up, per kind


def _load_diffusion(ctx: AppContext, folder: str, device: str) -> None:
    from biomed.pretrained import load_pipeline

    ctx.pipeline = load_pipeline(folder, device)


def _load_classifier(ctx: AppContext, folder: str, device: str) -> None:
    from biomed.pretrained import load_classifier

    ctx.classifier, ctx.classifier_config = load_classifier(folder, device)


def _load_clip(ctx: AppContext, folder: str, device: str) -> None:
    from biomed.pretrained import load_clip

    ctx.clip = load_clip(folder, device)


def _load_lm(ctx: AppContext, folder: str, device: str) -> None:
    from biomed.pretrained import load_lm

    model, tokenizer, _ = load_lm(folder, device)
    ctx.lm = (model, tokenizer)


_LOADERS = {"diffusion": _load_diffusion, "classifier": _load_classifier, "clip": _load_clip,
            "lm": _load_lm}


def _warm_diffusion(ctx: AppContext) -> None:
    from biomed.imaging.diffusion.sample import generate_images

    gen = ctx.cfg.get("generate") or {}
    generate_images(ctx.pipeline, ["Warm-up."], [0], scheduler=str(gen.get("scheduler", "dpmpp")),
                    steps=2, guidance=float(gen.get("guidance", 4.0)))


def _warm_classifier(ctx: AppContext) -> None:
    import torch

    h, w = (ctx.classifier_config or {}).get("input_size") or (64, 64)
    param = next(ctx.classifier.parameters())
    with torch.no_grad():
        ctx.classifier(torch.zeros(1, 1, int(h), int(w), device=param.device, dtype=param.dtype))


def _warm_clip(ctx: AppContext) -> None:
    import numpy as np
    import torch

    from biomed.imaging.clip.model import encode_images, encode_texts

    size = (ctx.clip.model_cfg.get("vision_cfg") or {}).get("image_size", 224)
    size = int(size[0] if isinstance(size, list | tuple) else size)
    device = next(ctx.clip.model.parameters()).device
    with torch.no_grad():
        encode_images(ctx.clip.model, np.zeros((1, size, size), np.float32),
                      ctx.clip.preprocess_cfg, device=device)
        encode_texts(ctx.clip.model, ctx.clip.tokenizer, ["Warm-up."], device=device)


def _warm_lm(ctx: AppContext) -> None:
    import torch

    model, tokenizer = ctx.lm
    ids = tokenizer("Pleural effusion", return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        model(input_ids=ids[:, -8:])


_WARM = {"diffusion": _warm_diffusion, "classifier": _warm_classifier, "clip": _warm_clip,
         "lm": _warm_lm}
