"""`biomed train-clip`: a CXR-CLIP trained contrastively on image-report pairs, and its
zero-shot classification and retrieval.

Training (`train_clip`): the report tokenizer (a small BPE on the training split's reports, or
the tokenizer of ``clip.pretrained``), the open_clip model (`biomed.imaging.clip.model`), the
InfoNCE loss of CLIP (Radford et al. 2021) with a learnable temperature, through the shared
engine, with mild augmentation (no horizontal flip: it swaps left and right findings). Renders
of one report share their text: the pairs of a batch with the same text are all positives of
each other (soft targets), so which copy pairs with which image does not matter, and the loss
has a floor of log(copies) rather than 0 on such a batch.

Evaluation (`evaluate_clip`, in ``metrics.json``): zero-shot classification by prompt classes
per finding (``"Cardiomegaly."`` vs ``"Heart size is normal."``; sided findings left vs right vs
none), several phrasings per class averaged in embedding space (CLIP's prompt ensembling),
AUROC per finding with bootstrap 95% CIs; image-to-text and text-to-image retrieval recall@k on
the held-out split. Retrieval candidates are the *distinct* report texts (renders of one report
share theirs); a retrieved text or image counts as correct when it belongs to the same report
(metadata ``report_id``/``study_id``) or has the identical text, and the chance level reported
beside each recall is that of a random ranking under the same rule (k / N without duplicates).

`zero_shot_scores(clip_dir, images)` gives the per-finding zero-shot probabilities of any saved
clip folder (used by ``biomed predict clip_dir=...``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.clip import model as cm
from biomed.imaging.core import metrics as M
from biomed.imaging.core.labels import CANONICAL_NAMES

__all__ = ["PROMPTS", "SIDED_PROMPTS", "EvalItems", "class_probabilities", "encode_images", "encode_texts", "evaluate_clip",
           "load_eval_items", "prompt_classes", "retrieval_metrics", "run", "train_clip",
           "zero_shot_probabilities", "zero_shot_scores"]

# Zero-shot prompt classes per finding: class 0 is the finding, the others its alternatives;
# each class is a few phrasings, in the style of the IU reports and the phantom's templates.
_LEFT_EFF = ("Left pleural effusion.", "Small left pleural effusion.")
_RIGHT_EFF = ("Right pleural effusion.", "Small right pleural effusion.")
_NO_EFF = ("No pleural effusion.", "There is no pleural effusion.")
_LEFT_PTX = ("Left pneumothorax.", "Small left pneumothorax.")
_RIGHT_PTX = ("Right pneumothorax.", "Small right pneumothorax.")
_NO_PTX = ("No pneumothorax.", "There is no pneumothorax.")
_SIDES = {"effusion": (_LEFT_EFF, _RIGHT_EFF), "pneumothorax": (_LEFT_PTX, _RIGHT_PTX)}
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
    for parent, pair in _SIDES.items() for side in ("left", "right")}
_ALIASES = {"pleural_effusion": "effusion", "pulmonary_edema": "edema",
            "enlarged_heart": "cardiomegaly"}
GROUP_COLUMNS = ("report_id", "study_id")  # metadata columns naming an item's report
KS = (1, 5, 10)


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


# ---------------------------------------------------------------------------------------------
# embeddings and zero-shot


@torch.no_grad()
def encode_images(model, images: np.ndarray, preprocess_cfg: dict[str, Any],
                  batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """N x h x w images at the model's size -> N x D normalised embeddings (float32, CPU)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = cm.to_model_input(torch.as_tensor(images[s:s + batch_size]).to(device),
                              preprocess_cfg)
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


def side_accuracy(model, tokenizer, image_emb: torch.Tensor, labels: np.ndarray,
                  names: Sequence[str], device: str | torch.device = "cpu") -> dict[str, dict]:
    """Left/right accuracy of the zero-shot side (``left ...`` vs ``right ...`` prompts) on the
    images with a finding on exactly one side, for each sided parent with both columns."""
    out = {}
    for parent, (left, right) in _SIDES.items():
        if f"{parent}_left" not in names or f"{parent}_right" not in names:
            continue
        yl = labels[:, list(names).index(f"{parent}_left")]
        yr = labels[:, list(names).index(f"{parent}_right")]
        one = ((yl == 1) & (yr == 0)) | ((yl == 0) & (yr == 1))
        if one.any():
            p_left = class_probabilities(model, tokenizer, image_emb[torch.from_numpy(one)],
                                         (left, right), device)[:, 0].numpy()
            out[parent] = {"accuracy": float(((p_left > 0.5) == (yl[one] == 1)).mean()),
                           "images": int(one.sum())}
    return out


def default_findings() -> list[str]:
    return list(CANONICAL_NAMES)


@functools.lru_cache(maxsize=2)
def _cached_clip(path: str, mtime_ns: int, device: str) -> cm.LoadedClip:
    return cm.load_clip(path, device=device)


def zero_shot_scores(clip_dir: str | Path, images: np.ndarray,
                     findings: Sequence[str] | None = None, *, batch_size: int = 64,
                     device: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Zero-shot probabilities of a clip folder (or train-clip run folder) for N x H x W
    workbench images (float in [0, 1], any size: squashed to the model's input).

    Returns (N x F float32 probabilities, the F finding names); ``findings`` defaults to the
    canonical vocabulary. Raises `InputError` (one line) for a missing or broken folder.
    """
    folder = cm.resolve_clip_dir(clip_dir)
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
    emb = encode_images(loaded.model, cm.fit_images(arr, loaded.preprocess_cfg),
                        loaded.preprocess_cfg, batch_size, device)
    return zero_shot_probabilities(loaded.model, loaded.tokenizer, emb, names, device), names


# ---------------------------------------------------------------------------------------------
# retrieval and evaluation


def _chance_recall(candidates: int, matches: np.ndarray, k: int) -> float:
    """Mean probability that a random ranking of ``candidates`` puts one of each query's
    ``matches`` in the top k: 1 - C(N - m, k) / C(N, k)."""
    miss = np.ones(len(matches))
    for j in range(min(k, candidates)):
        miss *= np.clip(candidates - matches - j, 0, None) / (candidates - j)
    return float(np.mean(1.0 - miss)) if len(matches) else float("nan")


def _recalls(sim: np.ndarray, match: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k with several correct candidates per query: a hit when the best-scored correct
    candidate ranks in the top k (`metrics.recall_at_k` with it as the target)."""
    targets = np.where(match, sim, -np.inf).argmax(axis=1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = M.recall_at_k(sim, k, targets)
        out[f"chance@{k}"] = _chance_recall(sim.shape[1], match.sum(axis=1), k)
    return out


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, texts: Sequence[str],
                      groups: Sequence[str], ks: Sequence[int] = KS) -> dict[str, Any]:
    """Image-to-text and text-to-image recall@k over the distinct texts of N paired items.

    ``text_emb`` holds the embeddings of the distinct texts in first-seen order of ``texts``.
    A candidate is correct when it shares the query's report (``groups``) or its text.
    """
    distinct = list(dict.fromkeys(texts))
    index = {t: u for u, t in enumerate(distinct)}
    t_of = np.array([index[t] for t in texts])
    by_group: dict[str, set[int]] = {}
    for g, u in zip(groups, t_of, strict=True):
        by_group.setdefault(g, set()).add(int(u))
    match = np.zeros((len(texts), len(distinct)), bool)  # image i x distinct text u
    for i, g in enumerate(groups):
        match[i, list(by_group[g])] = True
    sim = (image_emb @ text_emb.t()).numpy()
    return {"images": len(texts), "texts": len(distinct), "reports": len(by_group),
            "image_to_text": _recalls(sim, match, ks),
            "text_to_image": _recalls(sim.T, match.T, ks),
            "correct_if": "same report id or identical report text"}


@dataclass
class EvalItems:
    """An evaluation split loaded once: images at the model's size, texts, labels, groups."""

    images: np.ndarray  # N x h x w
    texts: list[str]
    labels: np.ndarray  # N x K (1/0/NaN)
    label_names: list[str]
    groups: list[str]


def load_eval_items(dataset, preprocess_cfg: dict[str, Any],
                    max_items: int | None = None) -> EvalItems:
    """The first ``max_items`` items of ``dataset`` (all by default)."""
    n = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    meta = getattr(dataset, "metadata", None)
    column = next((c for c in GROUP_COLUMNS if meta is not None and c in meta), None)
    images, texts, labels, groups = [], [], [], []
    for i in range(n):
        item = dataset[i]
        images.append(item["image"])
        texts.append(str(item.get("report") or ""))
        labels.append(np.asarray(item["labels"], np.float32))
        key = meta[column][i] if column else item.get("id", i)
        groups.append(str(key))
    names = list(getattr(dataset, "label_names", []))
    lab = np.stack(labels) if labels else np.zeros((0, len(names)), np.float32)
    return EvalItems(cm.fit_images(images, preprocess_cfg), texts, lab, names, groups)


def evaluate_clip(model, tokenizer, dataset: Any, *, findings: Sequence[str] | None = None,
                  batch_size: int = 64, n_boot: int = 1000, seed: int = 0,
                  max_items: int | None = None, device: str | torch.device = "cpu",
                  ks: Sequence[int] = KS) -> dict[str, Any]:
    """Zero-shot AUROC per finding (bootstrap 95% CIs) and retrieval recall@k of ``model`` on
    ``dataset`` (an `EvalItems` or a dataset with the workbench's contract)."""
    pp = dict(model.visual.preprocess_cfg)
    items = dataset if isinstance(dataset, EvalItems) else load_eval_items(dataset, pp,
                                                                           max_items)
    names = list(findings) if findings is not None else list(items.label_names)
    missing = [f for f in names if f not in items.label_names]
    if missing:
        raise ConfigError(f"eval.findings {missing} are not labels of the evaluation data "
                          f"(its labels: {items.label_names})")
    was_training = model.training
    model.eval()
    emb = encode_images(model, items.images, pp, batch_size, device)
    out: dict[str, Any] = {"items": len(items.texts), "zero_shot": {}}
    if names and len(emb):
        cols = [items.label_names.index(f) for f in names]
        y = items.labels[:, cols]
        probs = zero_shot_probabilities(model, tokenizer, emb, names, device)
        est = M.per_label(M.auroc, y, probs, names, n_boot=n_boot, seed=seed)
        for k, name in enumerate(names):
            if name in est:
                out["zero_shot"][name] = {"auroc": est[name].value, "ci_low": est[name].low,
                                          "ci_high": est[name].high,
                                          "positives": int((y[:, k] == 1).sum()),
                                          "negatives": int((y[:, k] == 0).sum())}
        values = [v["auroc"] for v in out["zero_shot"].values()]
        out["zero_shot_macro_auroc"] = float(np.mean(values)) if values else None
        out["side_accuracy"] = side_accuracy(model, tokenizer, emb, items.labels,
                                             items.label_names, device)
    keep = [i for i, t in enumerate(items.texts) if t.strip()]
    if len(keep) >= 2:
        texts = [items.texts[i] for i in keep]
        text_emb = encode_texts(model, tokenizer, list(dict.fromkeys(texts)), device=device)
        out["retrieval"] = retrieval_metrics(emb[keep], text_emb, texts,
                                             [items.groups[i] for i in keep], ks)
    model.train(was_training)
    return out


def flat_metrics(ev: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Top-level numbers of an evaluation (``zs_auroc_<finding>``, ``i2t_R@k`` ...)."""
    out = {f"{prefix}zs_auroc_{k}": v["auroc"] for k, v in ev.get("zero_shot", {}).items()}
    if ev.get("zero_shot_macro_auroc") is not None:
        out[f"{prefix}zs_macro_auroc"] = ev["zero_shot_macro_auroc"]
    for parent, v in ev.get("side_accuracy", {}).items():
        out[f"{prefix}zs_side_accuracy_{parent}"] = v["accuracy"]
    for short, key in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        for name, v in ev.get("retrieval", {}).get(key, {}).items():
            out[f"{prefix}{short}_{name}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# training


def _report_texts(ds) -> list[str]:
    """The report text of every item, without decoding images where the dataset allows."""
    meta = getattr(ds, "metadata", None)
    if meta is not None and "report" in meta:
        return [str(t or "") for t in meta["report"]]
    if callable(getattr(ds, "report", None)):
        return [str(ds.report(i) or "") for i in range(len(ds))]
    return [str(ds[i].get("report") or "") for i in range(len(ds))]


def _make_model(cfg: DictConfig, run_dir: Path, train_ds, train_idx: list[int],
                texts: list[str], log) -> tuple[Any, Any, dict, Path]:
    """(model, tokenizer, model_cfg, tokenizer folder): ``clip.pretrained``'s, or a new model
    from ``clip.model`` with a BPE trained on the training split's distinct report texts."""
    clip = cfg.clip
    if clip.get("pretrained"):
        loaded = cm.load_clip(clip.pretrained)
        log(f"train-clip: starting from {loaded.path}")
        return loaded.model, loaded.tokenizer, loaded.model_cfg, loaded.path
    model_cfg = OmegaConf.to_container(clip.model, resolve=True)
    context = int(model_cfg["text_cfg"].get("context_length", 77))
    tok = cm.train_report_tokenizer(sorted(set(texts)), int(clip.tokenizer.vocab_size),
                                    min_frequency=int(clip.tokenizer.min_frequency),
                                    context_length=context)
    tok_dir = cm.save_tokenizer(tok, run_dir / "tokenizer")
    model_cfg["text_cfg"] = cm.text_cfg_for(tok, model_cfg["text_cfg"], f"{clip.name}-bpe")
    pp = OmegaConf.to_container(clip.preprocess, resolve=True)
    if pp.get("mean") is None or pp.get("std") is None:  # from the training images
        mean, std = cm.image_stats([train_ds[i]["image"] for i in train_idx[:256]])
        pp["mean"], pp["std"] = [mean] * 3, [std] * 3
    model = cm.build_model(str(clip.name), model_cfg, pp)
    return model, cm.open_clip_tokenizer(tok_dir, context), model_cfg, tok_dir


def _split_items(cfg: DictConfig, split: str | None, pp: dict,
                 max_items: int | None) -> EvalItems | None:
    from hydra.utils import instantiate

    if not split:
        return None
    ds = instantiate(cfg.data, split=split)
    return load_eval_items(ds, pp, max_items) if len(ds) else None


def _val_numbers(model, tokenizer, val: EvalItems, batch_size: int, device) -> dict[str, float]:
    """The periodic evaluation: InfoNCE on validation batches and recall@5 both ways."""
    pp = dict(model.visual.preprocess_cfg)
    img = encode_images(model, val.images, pp, batch_size, device)
    txt = encode_texts(model, tokenizer, val.texts, device=device)
    groups = torch.tensor([cm.text_group(t) for t in val.texts])
    scale = model.logit_scale.exp().clamp(max=100.0).float().cpu()
    losses = [float(cm.info_nce(img[s:s + batch_size], txt[s:s + batch_size], scale,
                                groups[s:s + batch_size]))
              for s in range(0, len(img), batch_size) if len(img[s:s + batch_size]) > 1]
    first = {t: i for i, t in reversed(list(enumerate(val.texts)))}
    distinct = txt[[first[t] for t in dict.fromkeys(val.texts)]]
    r = retrieval_metrics(img, distinct, val.texts, val.groups, ks=(5,))
    out = {"val_i2t_R@5": r["image_to_text"]["R@5"], "val_t2i_R@5": r["text_to_image"]["R@5"]}
    if losses:
        out["val_loss"] = float(np.mean(losses))
    return out


def train_clip(cfg: DictConfig, run_dir: str | Path, log=print) -> dict[str, Any]:
    """Train (``trainer.max_steps > 0``) and evaluate the CLIP of ``cfg``; writes ``clip/``."""
    from hydra.utils import instantiate
    from torch.utils.data import Subset

    run_dir = Path(run_dir)
    if OmegaConf.is_missing(cfg.clip, "pretrained"):
        raise ConfigError("clip=pretrained needs clip.pretrained=/path/to/an/open_clip/folder "
                          "(local-dir format, or a train-clip run folder)")
    train_ds = instantiate(cfg.data, split="train")
    texts = _report_texts(train_ds)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if len(idx) < 2:
        raise ConfigError(f"data={cfg.data.get('name', '?')}: {len(idx)} training items with "
                          f"report text; CLIP needs image-report pairs")
    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))  # seeds before the model's init
    model, tokenizer, model_cfg, tok_dir = _make_model(cfg, run_dir, train_ds, idx,
                                                       [texts[i] for i in idx], log)
    pp = dict(model.visual.preprocess_cfg)
    ev, device = cfg.eval, engine.accelerator.device
    bs = int(ev.batch_size)
    params = cm.count_parameters(model)
    log(f"train-clip: {params['total']:,} parameters (image {params['visual']:,}, text "
        f"{params['text']:,}), {len(idx)} training pairs, input {pp['size']} px")
    val = _split_items(cfg, ev.val_split, pp, ev.val_max_items)
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None
    result = None
    if int(cfg.trainer.max_steps) > 0:
        result = engine.fit(
            model, Subset(train_ds, idx), cm.ContrastiveLoss(pp, augment), optim=cfg.optim,
            eval_fn=(lambda m: _val_numbers(engine.unwrap(m), tokenizer, val, bs, device))
            if val is not None else None, collate_fn=cm.PairCollate(tokenizer, pp))
        plain = engine.unwrap(engine.model)
        state = engine.accelerator.get_state_dict(engine.model)
    else:  # evaluate only (e.g. a pretrained folder as it is)
        plain, state = model.to(device), None

    metrics: dict[str, Any] = {
        "steps": result.step if result else 0,
        "train_seconds": engine.state.train_seconds if result else 0.0,
        "train_loss": result.metrics.get("train_loss") if result else None,
        "train_items": len(idx), "params": params["total"], "batch_size": engine.cfg.batch_size,
        "pretrained": cfg.clip.get("pretrained"), "eval_split": ev.split,
        **{k: v for k, v in (result.metrics if result else {}).items() if k.startswith("val_")}}
    if engine.is_main:
        t0 = time.perf_counter()
        test = _split_items(cfg, ev.split, pp, ev.max_items)
        final = evaluate_clip(plain, tokenizer, test, findings=ev.findings, batch_size=bs,
                              n_boot=int(ev.n_boot), seed=int(cfg.seed), device=device) \
            if test is not None else {"items": 0}
        metrics.update(evaluation=final, eval_seconds=time.perf_counter() - t0,
                       **flat_metrics(final))
        metrics["key_metrics"] = [k for k in ("zs_auroc_cardiomegaly", "zs_auroc_effusion",
                                              "i2t_R@10", "t2i_R@10", "zs_macro_auroc")
                                  if k in metrics]
        out = _save(cfg, plain, state, model_cfg, pp, tok_dir, run_dir / cm.CLIP_SUBDIR,
                    metrics, params, len(idx), engine)
        metrics["clip_dir"] = str(out)
        log(f"train-clip: {metrics['steps']} steps; " + ", ".join(
            f"{k} {metrics[k]:.3f}" for k in metrics["key_metrics"]) + f"; clip in {out}")
    engine.accelerator.wait_for_everyone()
    return metrics


def _save(cfg, plain, state, model_cfg, pp, tok_dir, out: Path, metrics, params, n_train,
          engine: Engine) -> Path:
    """``clip/``: open_clip local-dir folder with the model card."""
    shown = {k: (round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k])
             for k in metrics if k.startswith(("zs_", "i2t_", "t2i_"))}
    card = cm.model_card(
        name=str(cfg.clip.get("name") or "cxr-clip"), params=params, model_cfg=model_cfg,
        data={"description": f"data={cfg.data.get('name', '?')} ({cfg.data.get('_target_')})",
              "train_items": n_train, "eval_items": metrics["evaluation"].get("items"),
              "eval_split": cfg.eval.split},
        training={"steps": metrics["steps"], "seconds": round(metrics["train_seconds"], 1),
                  "batch_size": metrics["batch_size"], "device": engine.accelerator.device.type,
                  "precision": engine.precision, "lr": float(cfg.optim.optimizer.lr),
                  "loss": "symmetric InfoNCE, learnable temperature, soft targets over "
                          "identical report texts"},
        metrics=shown, pretrained=cfg.clip.get("pretrained"))
    return cm.save_clip(plain, model_cfg, pp, tok_dir, out, card, state_dict=state)


# ---------------------------------------------------------------------------------------------
# the command

def _data_files(cfg: DictConfig) -> list[str]:
    data = OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else {}
    return [str(data[k]) for k in ("reports", "file", "root") if isinstance(data.get(k), str)]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or fine-tune, or only evaluate) the CLIP of ``cfg`` (``conf/train_clip.yaml``)."""
    from accelerate import PartialState

    with runs.experiment(cfg, _data_files(cfg)) as run_dir:
        t0 = time.perf_counter()
        metrics = train_clip(cfg, run_dir)
        metrics["total_seconds"] = time.perf_counter() - t0
        if PartialState().is_main_process:
            runs.finish_run(run_dir, metrics)
    return metrics


main = hydra_app("train_clip")(run)

if __name__ == "__main__":
    main()
