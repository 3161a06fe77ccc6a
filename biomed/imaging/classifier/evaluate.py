"""The classifier's numbers on a split: probabilities over a dataset, per-finding AUROC and
average precision with bootstrap 95% CIs, macro AUROC overall and over the findings with clear
visual signs, calibration (ECE), sensitivity and specificity at per-finding thresholds chosen on
the validation split (Youden's J or F1), and for side-specific labels the left/right accuracy.

`evaluate_splits` is what `biomed train-classifier` reports in ``metrics.json``; it takes any
model and any splits in the dataset contract, so a saved classifier can be re-evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from biomed import stats
from biomed.errors import ConfigError
from biomed.imaging.classifier.data import Collate
from biomed.imaging.classifier.model import predict_batches
from biomed.imaging.core import metrics as M
from biomed.imaging.core.labels import SIDED
from biomed.splits import SPLITS

__all__ = ["CLEAR_FINDINGS", "choose_threshold", "evaluate_predictions", "evaluate_splits",
           "macro_auroc", "predict_dataset", "prevalence", "side_accuracy"]

CLEAR_FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema", "mass")


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Any, columns: Sequence[int],
                    batch_size: int = 64,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels), both N x K, over a whole dataset in index order."""
    collate = Collate(columns)
    probs, labels = [], []
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(len(dataset), i + batch_size))])
        probs.append(predict_batches(model, batch["image"], batch_size, device))
        labels.append(batch["labels"].numpy())
    if not probs:
        return np.zeros((0, len(columns)), np.float32), np.zeros((0, len(columns)), np.float32)
    return np.concatenate(probs), np.concatenate(labels)


def _column_auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.array([M.auroc(y[:, k], s[:, k]) for k in range(y.shape[1])])


def macro_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mean AUROC over the columns (N x K) that have both classes; NaN when none has."""
    vals = _column_auroc(y, s)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if len(vals) else float("nan")


def choose_threshold(y: np.ndarray, s: np.ndarray, rule: str = "youden") -> float | None:
    """The probability threshold (positive when ``p >= t``) maximising Youden's J
    (sensitivity + specificity - 1) or F1 on one label; None with a single class."""
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # the last row of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    if rule == "youden":
        score = tp / pos - fp / neg
    elif rule == "f1":
        score = 2 * tp / (2 * tp + fp + (pos - tp))
    else:
        raise ConfigError(f"eval.threshold_rule={rule!r}: choose youden or f1")
    best = int(np.argmax(score))
    lower = ss[last[best] + 1] if last[best] + 1 < len(ss) else 0.0
    return float((ss[last[best]] + lower) / 2)  # halfway to the next lower score


def side_accuracy(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], *,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Left/right accuracy of each sided finding (`biomed.imaging.core.labels.SIDED`).

    Among images positive for the parent with exactly one side positive (and the other side
    known negative), the share where the higher of the two side probabilities is the true side.
    """
    out: dict[str, dict[str, Any]] = {}
    for parent, (left, right) in SIDED.items():
        if left not in names or right not in names:
            continue
        yl, yr = labels[:, names.index(left)], labels[:, names.index(right)]
        one = ((yl == 1) & (yr == 0)) | ((yl == 0) & (yr == 1))
        if parent in names:
            one &= labels[:, names.index(parent)] != 0  # positive or unknown: the sides say
        n = int(one.sum())
        entry: dict[str, Any] = {"n": n, "accuracy": None}
        if n:
            pl, pr = probs[one, names.index(left)], probs[one, names.index(right)]
            correct = np.where(yl[one] == 1, pl > pr, pr > pl).astype(np.float64)
            entry.update(stats.bootstrap(np.mean, correct, n=n_boot, seed=seed).to_dict())
            entry["accuracy"] = entry["value"]
        out[parent] = entry
    return out


def _at_threshold(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float | None]:
    keep = ~np.isnan(y)
    y, call = y[keep], p[keep] >= t
    pos, neg = y == 1, y == 0
    return {"sensitivity": float(call[pos].mean()) if pos.any() else None,
            "specificity": float((~call[neg]).mean()) if neg.any() else None}


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], *,
                         thresholds: Mapping[str, float],
                         clear_findings: Sequence[str] = CLEAR_FINDINGS, n_boot: int = 1000,
                         seed: int = 0, ece_bins: int = 15) -> dict[str, Any]:
    """Every number of one split: per finding AUROC / AP with CIs, ECE, sensitivity and
    specificity at its threshold; macro AUROC (all, and ``clear_findings``) with CIs; pooled
    ECE; left/right accuracy."""
    names = list(names)
    out: dict[str, Any] = {"n": int(len(labels))}
    if len(labels) == 0:
        return out
    auc = M.per_label(M.auroc, labels, probs, names, n_boot=n_boot, seed=seed)
    ap = M.per_label(M.average_precision, labels, probs, names, n_boot=n_boot, seed=seed)
    per = {}
    for k, name in enumerate(names):
        y, p = labels[:, k], probs[:, k]
        per[name] = {"n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()),
                     "auroc": auc[name].to_dict() if name in auc else None,
                     "ap": ap[name].to_dict() if name in ap else None,
                     "ece": M.expected_calibration_error(y, p, ece_bins),
                     "threshold": thresholds.get(name, 0.5),
                     **_at_threshold(y, p, thresholds.get(name, 0.5))}
    out["per_label"] = per
    valid = [k for k, n in enumerate(names) if n in auc]
    clear = [k for k in valid if names[k] in set(clear_findings)]
    for key, cols in (("macro_auroc", valid), ("clear_macro_auroc", clear)):
        out[key] = (stats.bootstrap(macro_auroc, labels[:, cols], probs[:, cols], n=n_boot,
                                    seed=seed).to_dict() if cols else None)
    out["clear_findings_used"] = [names[k] for k in clear]
    out["ece"] = M.expected_calibration_error(labels.ravel(), probs.ravel(), ece_bins)
    out["left_right"] = side_accuracy(labels, probs, names, n_boot=n_boot, seed=seed)
    return out


def evaluate_splits(model: nn.Module, splits: Mapping[str, Any], columns: Sequence[int],
                    names: Sequence[str], *, eval_split: str = "test", batch_size: int = 64,
                    threshold_rule: str = "youden",
                    clear_findings: Sequence[str] = CLEAR_FINDINGS, n_boot: int = 1000,
                    val_n_boot: int | None = None, ece_bins: int = 15, seed: int = 0,
                    device: torch.device | str = "cpu",
                    log: Callable[[str], Any] = print) -> tuple[dict[str, Any], dict[str, float]]:
    """(metrics, thresholds) of ``model`` on ``splits`` (train / val / test datasets in the
    contract) for the label ``columns`` named ``names``.

    Thresholds are chosen on val (0.5 where val has a single class); every metric is computed
    on val (``val_n_boot`` resamples) and on ``eval_split`` (``n_boot``), whose headline
    numbers are copied to the top level (``macro_auroc``, ``clear_macro_auroc``, ``ece``,
    ``lr_accuracy_<parent>``) with ``key_metrics`` naming them.
    """
    if eval_split not in SPLITS:
        raise ConfigError(f"eval_split={eval_split!r}: choose one of {', '.join(SPLITS)}")
    names = list(names)
    preds = {s: predict_dataset(model, splits[s], columns, batch_size, device)
             for s in dict.fromkeys(("val", eval_split))}
    p_val, y_val = preds["val"]
    thresholds = {}
    for k, name in enumerate(names):
        t = choose_threshold(y_val[:, k], p_val[:, k], threshold_rule) if len(y_val) else None
        thresholds[name] = 0.5 if t is None else t
    common = {"thresholds": thresholds, "clear_findings": list(clear_findings), "seed": seed,
              "ece_bins": ece_bins}
    metrics: dict[str, Any] = {"eval_split": eval_split, "labels": names}
    for split, (p, y) in preds.items():
        boots = n_boot if split == eval_split or val_n_boot is None else val_n_boot
        metrics[split] = evaluate_predictions(y, p, names, n_boot=boots, **common)
        if len(y) == 0:
            log(f"train-classifier: the {split} split is empty; no {split} metrics")
    metrics.update({f"n_{s}": len(splits[s]) for s in SPLITS})
    main = metrics[eval_split]
    for key in ("macro_auroc", "clear_macro_auroc"):
        metrics[key] = (main.get(key) or {}).get("value")
    metrics["ece"] = main.get("ece")
    for parent, lr in (main.get("left_right") or {}).items():
        metrics[f"lr_accuracy_{parent}"] = lr["accuracy"]
        metrics[f"lr_n_{parent}"] = lr["n"]
    metrics["key_metrics"] = [k for k in ("clear_macro_auroc", "macro_auroc",
                                          "lr_accuracy_effusion", "lr_accuracy_pneumothorax")
                              if metrics.get(k) is not None]
    return metrics, thresholds


def prevalence(labels: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Share of positives among the known labels of each column."""
    out = {}
    for k, name in enumerate(names):
        known = labels[~np.isnan(labels[:, k]), k]
        out[name] = float(known.mean()) if len(known) else None
    return out
