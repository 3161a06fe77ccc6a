"""The numbers of a CXR-CLIP on a held-out split (`evaluate_clip`, in ``metrics.json``):
zero-shot AUROC per finding with bootstrap 95% CIs and the left/right accuracy of the side
prompts, and image-to-text / text-to-image retrieval recall@k.

Retrieval candidates are the *distinct* report texts (renders of one report share theirs); a
retrieved text or image counts as correct when it belongs to the same report (metadata
``report_id``/``study_id``) or has the identical text, and the chance level reported beside each
recall is that of a random ranking under the same rule (k / N without duplicates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biomed.errors import ConfigError
from biomed.imaging.clip.model import (
    LATERAL_PHRASES,
    class_probabilities,
    encode_images,
    encode_texts,
    fit_images,
    zero_shot_probabilities,
)
from biomed.imaging.core import metrics as M

__all__ = ["GROUP_COLUMNS", "KS", "EvalItems", "evaluate_clip", "flat_metrics",
           "load_eval_items", "retrieval_metrics", "side_accuracy"]

GROUP_COLUMNS = ("report_id", "study_id")  # metadata columns naming an item's report
KS = (1, 5, 10)


def side_accuracy(model, tokenizer, image_emb: torch.Tensor, labels: np.ndarray,
                  names: Sequence[str], device: str | torch.device = "cpu") -> dict[str, dict]:
    """Left/right accuracy of the zero-shot side (``left ...`` vs ``right ...`` prompts) on the
    images with a finding on exactly one side, for each sided parent with both columns."""
    out = {}
    for parent, (left, right) in LATERAL_PHRASES.items():
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
    return EvalItems(fit_images(images, preprocess_cfg), texts, lab, names, groups)


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
