"""The CXR-CLIP model: an open_clip model, its report tokenizer, its pixels and its folder.

The model is a plain open_clip ``CLIP`` built from a config registered with open_clip at run
time (`register_model_config`), so every open_clip tool (``create_model_and_transforms``,
``get_tokenizer``, zero-shot helpers) works on it. The default tokenizer is a small byte-level
BPE trained on the training split's report text (a few thousand tokens instead of CLIP's
49,408, whose embedding table would be most of a small model). With a Hugging Face tokenizer
open_clip's default ``argmax`` pooling reads the token with the *highest id*, which is CLIP's
end-of-text only in CLIP's own vocabulary; `text_cfg_for` therefore sets ``pool_type="eos"``
with the tokenizer's ``eos_id``, and the tokenizer appends that token to every text (kept
under truncation), so the text embedding is read at the end-of-text position.

Pixels: the workbench's single-channel images in [0, 1] are replicated to the 3 channels open_clip
towers take and normalised with the mean/std stored in the preprocess config
(`to_model_input`). The saved folder is open_clip's local-dir format (`save_clip`)::

    open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": {mean, std, ...}}
    open_clip_model.safetensors   the state dict
    tokenizer.json, tokenizer_config.json
    README.md                     model card

and loads with ``open_clip.create_model_and_transforms("local-dir:<folder>")`` and
``open_clip.get_tokenizer("local-dir:<folder>")`` alone (`load_clip` does exactly that).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomed.errors import ConfigError, InputError
from biomed.imaging.core import pixels

CLIP_SUBDIR = "clip"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
EOS = "<|endoftext|>"
PAD = "<pad>"
# files of a clip folder that are not the tokenizer's (everything else is copied along with it)
_NOT_TOKENIZER = {CONFIG_NAME, WEIGHTS_NAME, "README.md", "open_clip_pytorch_model.bin",
                  "open_clip_pytorch_model.safetensors", "open_clip_model.bin"}


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_report_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                           context_length: int = 77):
    """A byte-level BPE on report ``texts`` (lower-cased), ending every text with ``EOS``.

    Returns a ``transformers.PreTrainedTokenizerFast``: ``<pad>`` is id 0 and ``EOS`` id 1;
    the post-processor appends ``EOS`` (truncation keeps it), which the text tower pools.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + 2:
        raise ConfigError(f"clip.tokenizer.vocab_size {vocab_size} is below the 256 byte "
                          f"symbols + 2 special tokens of a byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   model_max_length=context_length)


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """``save_pretrained`` with ``tokenizer_class`` spelled so transformers 4 loads it too."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def open_clip_tokenizer(tokenizer_dir: str | Path, context_length: int):
    """open_clip's ``HFTokenizer`` on a saved tokenizer folder (what ``get_tokenizer`` returns
    for a local-dir clip folder), so training tokenizes exactly as the saved model will."""
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(tokenizer_dir), context_length=context_length)


# ---------------------------------------------------------------------------------------------
# model config and model


def text_cfg_for(tokenizer, text_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The open_clip ``text_cfg`` for a Hugging Face ``tokenizer``: vocabulary size, pad and
    end-of-text ids, and ``pool_type="eos"`` so the embedding is read at the end-of-text token
    (the default ``argmax`` would read whatever token has the highest id)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise ConfigError("the CLIP tokenizer needs an end-of-text and a pad token")
    return {**text_cfg, "vocab_size": len(tokenizer), "eos_id": int(eos), "pad_id": int(pad),
            "pool_type": "eos", "hf_tokenizer_name": name}


def register_model_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Register ``model_cfg`` with open_clip under ``name`` (``open_clip.list_models()``)."""
    from open_clip import factory

    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ConfigError(f"clip.model: missing {key!r} (an open_clip model config has "
                              f"embed_dim, vision_cfg and text_cfg)")
    factory._MODEL_CONFIGS[name] = copy.deepcopy(model_cfg)


def build_model(name: str, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]):
    """A new, randomly initialised open_clip model from a registered config."""
    import logging

    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    register_model_config(name, model_cfg)
    level = logging.root.level  # open_clip warns that no pretrained weights were loaded
    logging.root.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(name)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"clip.model: open_clip cannot build it ({_one_line(e)})") from None
    finally:
        logging.root.setLevel(level)
    pp = dict(model.visual.preprocess_cfg)
    pp.update(preprocess_cfg)
    pp["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, pp)
    return model


def image_stats(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of the pixels of ``images`` (the normalisation to store)."""
    values = np.concatenate([np.asarray(im, np.float32).ravel() for im in images])
    return float(values.mean()), float(max(values.std(), 1e-3))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    visual = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "visual": visual, "text": total - visual}


# ---------------------------------------------------------------------------------------------
# pixels


def image_size_of(preprocess_cfg: dict[str, Any]) -> tuple[int, int]:
    size = preprocess_cfg["size"]
    return (int(size), int(size)) if isinstance(size, int | float) else tuple(map(int, size))


def fit_images(images: Iterable[np.ndarray], preprocess_cfg: dict[str, Any]) -> np.ndarray:
    """Stack workbench images (H x W in [0, 1]) into N x h x w at the model's input size,
    squashed (the aspect ratio of a radiograph is not a finding)."""
    size = image_size_of(preprocess_cfg)
    out = [pixels.resize(np.asarray(im, np.float32), size) for im in images]
    if not out:
        return np.zeros((0, *size), np.float32)
    return np.stack(out)


def to_model_input(images: torch.Tensor, preprocess_cfg: dict[str, Any]) -> torch.Tensor:
    """N x H x W gray images in [0, 1] (at the model's size) -> N x 3 x H x W normalised."""
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected N x H x W gray images, got shape {tuple(images.shape)}")
    x = images.float().unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(preprocess_cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, *, rotate_deg: float = 5.0, scale: float = 0.05,
            translate: float = 0.04, gamma: float = 0.0, brightness: float = 0.05,
            contrast: float = 0.1, enabled: bool = True) -> torch.Tensor:
    """Mild radiograph augmentation of N x H x W images in [0, 1], drawn from torch's RNG:
    small rotation, zoom and shift, gamma exp(+-gamma), brightness and contrast. No horizontal
    flip: it would swap the patient's left and right, and with them the sided findings of the
    paired report."""
    n = images.shape[0]
    if n == 0 or not enabled:
        return images
    dev = images.device

    def uniform(half: float) -> torch.Tensor:
        return (torch.rand(n) * 2 - 1).mul_(half).to(dev)

    angle = uniform(math.radians(rotate_deg))
    zoom = 1.0 + uniform(scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, uniform(translate) * 2], 1),
                         torch.stack([sin, cos, uniform(translate) * 2], 1)], 1)
    x = images.float().unsqueeze(1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)[:, 0]
    if gamma:
        x = x.clamp(0.0, 1.0) ** torch.exp(uniform(gamma)).view(n, 1, 1)
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * (1.0 + uniform(contrast)).view(n, 1, 1) + mean \
        + uniform(brightness).view(n, 1, 1)
    return x.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# training pieces


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on L2-normalised B x D embeddings. ``groups`` (B ints): pairs
    with the same group (the same report text) are all positives, with equal weight."""
    logits = logit_scale.float() * image_emb.float() @ text_emb.float().t()  # fp32 under bf16
    if groups is None:
        target = torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    else:
        same = (groups[:, None] == groups[None, :]).to(logits.dtype)
        target = same / same.sum(1, keepdim=True)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, target) + ce(logits.t(), target)) / 2


def text_group(text: str) -> int:
    """A stable integer per report text (duplicates within a batch share it)."""
    return zlib.crc32(text.strip().lower().encode("utf-8"))


class PairCollate:
    """Dataset items -> {"image": B x h x w in [0, 1], "text": B x context ids, "group": B}."""

    def __init__(self, tokenizer, preprocess_cfg: dict[str, Any]):
        self.tokenizer, self.preprocess_cfg = tokenizer, preprocess_cfg

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        texts = [str(it.get("report") or "") for it in items]
        images = fit_images([it["image"] for it in items], self.preprocess_cfg)
        return {"image": torch.from_numpy(images), "text": self.tokenizer(texts),
                "group": torch.tensor([text_group(t) for t in texts], dtype=torch.int64)}


class ContrastiveLoss:
    """``loss_fn(model, batch)`` for the engine: augment (in training mode), normalise, InfoNCE.
    The temperature is the model's learnable ``logit_scale``, capped at 100 as in CLIP."""

    def __init__(self, preprocess_cfg: dict[str, Any], augment: dict[str, float] | None = None,
                 max_logit_scale: float = 100.0):
        self.preprocess_cfg, self.augment = preprocess_cfg, augment
        self.max_logit_scale = max_logit_scale

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        if self.augment and model.training:
            images = augment(images, **self.augment)
        out = model(image=to_model_input(images, self.preprocess_cfg), text=batch["text"])
        scale = out[2].clamp(max=self.max_logit_scale)
        return info_nce(out[0], out[1], scale, batch["group"]), {"logit_scale": float(scale.detach())}


# ---------------------------------------------------------------------------------------------
# the folder


@dataclass
class LoadedClip:
    """A clip folder loaded by open_clip's own loaders."""

    model: torch.nn.Module
    tokenizer: Any  # open_clip tokenizer: texts -> LongTensor N x context
    preprocess_cfg: dict[str, Any]
    model_cfg: dict[str, Any]
    path: Path


def resolve_clip_dir(path: str | Path) -> Path:
    """A clip folder from itself or from a train-clip run folder (``<run>/clip``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(p, "no such CLIP folder")
    for candidate in (p, p / CLIP_SUBDIR):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise InputError(p, f"not a CLIP folder: no {CONFIG_NAME} here or in {CLIP_SUBDIR}/ (give a "
                        f"train-clip run folder or an open_clip local-dir folder)")


def read_config(clip_dir: Path) -> dict[str, Any]:
    """``open_clip_config.json`` of a folder, checked for the keys open_clip needs."""
    path = clip_dir / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"unreadable open_clip config ({_one_line(e)})") from None
    model_cfg = cfg.get("model_cfg") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or not all(
            k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InputError(path, "not an open_clip config: needs model_cfg with embed_dim, "
                               "vision_cfg and text_cfg")
    return cfg


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> LoadedClip:
    """Load a clip folder with ``open_clip.create_model_and_transforms("local-dir:...")`` and
    ``open_clip.get_tokenizer("local-dir:...")``; one-line `InputError` when it is broken."""
    import logging

    import open_clip

    clip_dir = resolve_clip_dir(path)
    cfg = read_config(clip_dir)
    if not any(clip_dir.glob("*.safetensors")) and not any(clip_dir.glob("*.bin")) \
            and not any(clip_dir.glob("*.pth")):
        raise InputError(clip_dir, f"no weights ({WEIGHTS_NAME}) in the CLIP folder")
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}",
                                                            device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    except Exception as e:  # noqa: BLE001 - open_clip raises many kinds; the user needs one line
        raise InputError(clip_dir, f"open_clip cannot load this folder ({_one_line(e)})") from None
    finally:
        logging.root.setLevel(level)
    model.eval()
    return LoadedClip(model, tokenizer, dict(model.visual.preprocess_cfg), cfg["model_cfg"],
                      clip_dir)


def save_clip(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
              tokenizer_dir: str | Path | None, out: str | Path, card: str,
              state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write open_clip's local-dir folder: config, safetensors weights, tokenizer files (all
    files of ``tokenizer_dir`` except another model's weights/config/card), model card.

    Written to a temporary folder and renamed: the folder is complete or absent."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if tokenizer_dir is not None:
        for f in sorted(Path(tokenizer_dir).iterdir()):
            if f.is_file() and f.name not in _NOT_TOKENIZER and f.suffix not in (
                    ".safetensors", ".bin", ".pth", ".pt"):
                shutil.copy2(f, tmp / f.name)
    state = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
              str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    pp = {k: preprocess_cfg[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")
          if k in preprocess_cfg}
    pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
    (tmp / CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp},
                                              indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def model_card(*, name: str, params: dict[str, int], model_cfg: dict[str, Any],
               data: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any],
               pretrained: str | None = None) -> str:
    """The clip folder's ``README.md``: data and its licence terms, training, numbers, use."""
    origin = (f"fine-tuned from the local open_clip folder `{pretrained}`" if pretrained else
              "trained from scratch")
    lines = [
        f"# {name}: a chest X-ray CLIP (open_clip), research use only", "",
        f"A contrastive image-report model ({origin}) built by the biomed workbench "
        "(`biomed train-clip`). Load it with open_clip alone:", "",
        "```python", "import open_clip",
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:<this folder>')",
        "tokenizer = open_clip.get_tokenizer('local-dir:<this folder>')", "```", "",
        "Images: single-channel radiographs in [0, 1] (lungs dark), replicated to 3 channels and "
        "normalised with `preprocess_cfg` of `open_clip_config.json`. The text tower pools the "
        "end-of-text token (`pool_type: eos`).", "",
        "## Data", "",
        f"- {data.get('description', '')}",
        f"- training pairs: {data.get('train_items')}, evaluation items: "
        f"{data.get('eval_items')} (split `{data.get('eval_split')}`, by a stable hash of the "
        "report id: all renders of a report in one split)", "",
        "Where the data are phantoms (`data=phantom_iu`), the images are procedurally rendered "
        "chest radiographs, not patients, paired with real report text from the Indiana "
        "University / OpenI collection. That text is licensed CC BY-NC-ND 4.0, and this model "
        "inherits its terms: non-commercial use, attribution, no modified redistribution. "
        "Research use only; not for clinical use. Conclusions about real patients need real "
        "data.", "",
        "## Model", "",
        f"- parameters: {params['total']:,} (image tower {params['visual']:,}, text tower "
        f"{params['text']:,})",
        f"- embed_dim {model_cfg.get('embed_dim')}; vision_cfg "
        f"`{json.dumps(model_cfg.get('vision_cfg'))}`; text_cfg "
        f"`{json.dumps(model_cfg.get('text_cfg'))}`", "",
        "## Training", "",
        *[f"- {k}: {v}" for k, v in training.items()], "",
        "## Evaluation (held-out split)", "",
        *[f"- {k}: {v}" for k, v in metrics.items()], "",
    ]
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
