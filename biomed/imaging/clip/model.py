"""The CXR-CLIP model: an open_clip model, its report tokenizer, its pixels, its folder and its
zero-shot scores.

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
    README.md                     model card (`biomed.imaging.clip.card`)

and loads with ``open_clip.create_model_and_transforms("local-dir:<folder>")`` and
``open_clip.get_tokenizer("local-dir:<folder>")`` alone (`load_clip` does exactly that).

Zero-shot classification (`zero_shot_scores`, `zero_shot_probabilities`): per finding, prompt
classes (``"Cardiomegaly."`` vs ``"Heart size is normal."``; sided findings left vs right),
several phrasings per class averaged in embedding space (CLIP's prompt ensembling). This module
imports no training code and no Hydra: the app, `biomed predict` and the diffusion evaluation
load a CLIP through it.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomed.errors import ConfigError, InputError
from biomed.imaging.clip.folder_config import check_clip_config
from biomed.imaging.core import pixels
from biomed.imaging.core.labels import CANONICAL_NAMES

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

def load_report_tokenizer(tokenizer_dir: str | Path):
    """The ``transformers.PreTrainedTokenizerFast`` that `save_tokenizer` wrote to a folder
    (how the other processes of a multi-process launch get the main process's tokenizer)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))


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
    """``open_clip_config.json`` of a folder, checked for the keys open_clip needs and against
    the allow-list of `biomed.imaging.clip.folder_config` (a folder chooses no download, no
    file and no code)."""
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
    check_clip_config(path, cfg)  # no download, file or code chosen by the folder
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


# ---------------------------------------------------------------------------------------------
# zero-shot classification

# Zero-shot prompt classes per finding: class 0 is the finding, the others its alternatives;
# each class is a few phrasings, in the style of the IU reports and the phantom's templates.
_LEFT_EFF = ("Left pleural effusion.", "Small left pleural effusion.")
_RIGHT_EFF = ("Right pleural effusion.", "Small right pleural effusion.")
_NO_EFF = ("No pleural effusion.", "There is no pleural effusion.")
_LEFT_PTX = ("Left pneumothorax.", "Small left pneumothorax.")
_RIGHT_PTX = ("Right pneumothorax.", "Small right pneumothorax.")
_NO_PTX = ("No pneumothorax.", "There is no pneumothorax.")
# the left and the right phrasings of each sided finding (the side prompts)
LATERAL_PHRASES = {"effusion": (_LEFT_EFF, _RIGHT_EFF), "pneumothorax": (_LEFT_PTX, _RIGHT_PTX)}
PROMPTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "no_finding": (("No acute cardiopulmonary abnormality.", "Normal chest.",
                    "The lungs are clear. Heart size is normal."),
                   ("Cardiomegaly.",), ("Pleural effusion.",), ("Pneumothorax.",),
                   ("Focal airspace consolidation.",), ("Pulmonary edema.",),
                   ("Pulmonary nodule.",)),
    "cardiomegaly": (("Cardiomegaly.", "The heart is enlarged.", "Enlarged cardiac silhouette."),
                     ("Heart size is normal.", "No cardiomegaly.",
                      "Normal cardiac silhouette.")),
    "effusion": (("Pleural effusion.", "There is a pleural effusion.", *_LEFT_EFF[:1],
                  *_RIGHT_EFF[:1]), _NO_EFF),
    "pneumothorax": (("Pneumothorax.", "There is a pneumothorax.", *_LEFT_PTX[:1],
                      *_RIGHT_PTX[:1]), _NO_PTX),
    "nodule": (("Pulmonary nodule.", "There is a nodule in the lung."),
               ("No pulmonary nodules.", "No nodules or masses.")),
    "calcified_granuloma": (("Calcified granuloma.", "Calcified granulomas."),
                            ("No calcified granuloma.", "No nodules or masses.")),
    "mass": (("Lung mass.", "There is a mass in the lung."),
             ("No mass.", "No nodules or masses.")),
    "consolidation": (("Focal consolidation.", "Airspace disease.", "Airspace opacity."),
                      ("No focal consolidation.", "No airspace disease.")),
    "atelectasis": (("Atelectasis.", "Basilar atelectasis."),
                    ("No atelectasis.", "No focal airspace disease.")),
    "edema": (("Pulmonary edema.", "Interstitial edema."), ("No pulmonary edema.", "No edema.")),
    "emphysema": (("Emphysema.", "Hyperinflated lungs."), ("No emphysema.",
                                                           "Normal lung volumes.")),
    "low_lung_volumes": (("Low lung volumes.", "Hypoinflation."),
                         ("Normal lung volumes.", "Well-expanded lungs.")),
    "pneumonia": (("Pneumonia.", "Findings consistent with pneumonia."),
                  ("No pneumonia.", "No evidence of pneumonia.")),
    "fracture": (("Rib fracture.", "Fracture."), ("No fracture.", "No acute bony abnormality.")),
    "support_devices": (("Endotracheal tube in place.", "Central venous catheter in place.",
                         "Support devices."), ("No lines or tubes.", "No support devices.")),
}
# A side column scores P(parent) x P(this side | parent), the side from "left ..." vs "right ..."
# prompts, so that detection and laterality are separate factors (`side_accuracy` reports the
# second). With a 3-way left/right/none softmax, a model that has not yet learned laterality
# pulled right effusions towards "left" and below normal images (AUROC 0.2 for effusion_right
# on phantoms after 300 steps); the product keeps a side column tied to its parent's detection.
SIDED_PROMPTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    f"{parent}_{side}": (parent, *(pair if side == "left" else pair[::-1]))
    for parent, pair in LATERAL_PHRASES.items() for side in ("left", "right")}
_ALIASES = {"pleural_effusion": "effusion", "pulmonary_edema": "edema",
            "enlarged_heart": "cardiomegaly"}


def _key(finding: str) -> str:
    key = finding.strip().lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(key, key)


def prompt_classes(finding: str) -> tuple[tuple[str, ...], ...]:
    """The prompt classes of a finding (canonical name or a dataset's label name); a name
    without a table entry gets "<name>." vs "No <name>."; a side column (`SIDED_PROMPTS`) gets
    this side vs the other side (its presence comes from its parent's classes)."""
    key = _key(finding)
    if key in SIDED_PROMPTS:
        return SIDED_PROMPTS[key][1:]
    if key in PROMPTS:
        return PROMPTS[key]
    phrase = key.replace("_", " ")
    return ((f"{phrase.capitalize()}.", f"There is {phrase}."),
            (f"No {phrase}.", f"There is no {phrase}."))


@torch.no_grad()
def encode_images(model, images: np.ndarray, preprocess_cfg: dict[str, Any],
                  batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """N x h x w images at the model's size -> N x D normalised embeddings (float32, CPU)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = to_model_input(torch.as_tensor(images[s:s + batch_size]).to(device), preprocess_cfg)
        out.append(model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Texts -> N x D normalised embeddings (float32, CPU)."""
    out = []
    for s in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[s:s + batch_size])).to(device)
        out.append(model.encode_text(ids, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def class_probabilities(model, tokenizer, image_emb: torch.Tensor,
                        classes: Sequence[Sequence[str]],
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """N x C softmax over prompt classes, each the normalised mean embedding of its phrasings
    (CLIP's prompt ensembling), at the model's temperature."""
    scale = float(model.logit_scale.exp().clamp(max=100.0))
    emb = []
    for phrasings in classes:
        e = encode_texts(model, tokenizer, list(phrasings), device=device).mean(0)
        emb.append(e / e.norm().clamp_min(1e-8))
    return (scale * image_emb @ torch.stack(emb).t()).softmax(dim=1)


def zero_shot_probabilities(model, tokenizer, image_emb: torch.Tensor, findings: Sequence[str],
                            device: str | torch.device = "cpu") -> np.ndarray:
    """N x F probabilities: per finding, the probability of its first prompt class; for a
    side column, P(parent) x P(this side | parent)."""
    out = np.zeros((len(image_emb), len(findings)), np.float32)
    for f, name in enumerate(findings):
        p = class_probabilities(model, tokenizer, image_emb, prompt_classes(name), device)[:, 0]
        if _key(name) in SIDED_PROMPTS:
            parent = SIDED_PROMPTS[_key(name)][0]
            p = p * class_probabilities(model, tokenizer, image_emb, prompt_classes(parent),
                                        device)[:, 0]
        out[:, f] = p.numpy()
    return out


def default_findings() -> list[str]:
    """The findings `zero_shot_scores` scores by default: the canonical vocabulary."""
    return list(CANONICAL_NAMES)


@functools.lru_cache(maxsize=2)
def _cached_clip(path: str, mtime_ns: int, device: str) -> LoadedClip:
    return load_clip(path, device=device)


def zero_shot_scores(clip_dir: str | Path, images: np.ndarray,
                     findings: Sequence[str] | None = None, *, batch_size: int = 64,
                     device: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Zero-shot probabilities of a clip folder (or train-clip run folder) for N x H x W
    workbench images (float in [0, 1], any size: squashed to the model's input).

    Returns (N x F float32 probabilities, the F finding names); ``findings`` defaults to the
    canonical vocabulary. Raises `InputError` (one line) for a missing or broken folder.
    """
    folder = resolve_clip_dir(clip_dir)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    mtime = weights[0].stat().st_mtime_ns if weights else 0
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = _cached_clip(str(folder), mtime, device)
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"zero_shot_scores: expected N x H x W images, got shape {arr.shape}")
    names = list(findings) if findings is not None else default_findings()
    emb = encode_images(loaded.model, fit_images(arr, loaded.preprocess_cfg),
                        loaded.preprocess_cfg, batch_size, device)
    return zero_shot_probabilities(loaded.model, loaded.tokenizer, emb, names, device), names


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
