"""Metrics shared by the classifier, CLIP, the diffusion evaluation and the augmentation loop.

Every metric takes 1-D arrays and ignores rows whose label is NaN (unknown). Confidence
intervals come from the package's one bootstrap (``biomed.stats.bootstrap``: percentile, over
rows, seeded); a resample with a single class is skipped there (AUROC is undefined), and the
number of valid resamples is returned with the interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from biomed import stats

__all__ = ["auroc", "average_precision", "expected_calibration_error", "per_label",
           "recall_at_k"]


def _valid(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y, np.float64).ravel(), np.asarray(s, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN with a single class."""
    y, s = _valid(y, s)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks: exact with ties
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve, as scikit-learn)."""
    y, s = _valid(y, s)
    pos = int((y == 1).sum())
    if pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # one point per distinct threshold
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """ECE of probabilities ``p`` (Guo et al. 2017): equal-width bins, weighted |acc - conf|."""
    y, p = _valid(y, p)
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(err)


def per_label(metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray,
              scores: np.ndarray, names: Sequence[str], *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, stats.Estimate]:
    """``metric`` with a bootstrap CI for each column that has both classes (N x K arrays)."""
    out = {}
    for k, name in enumerate(names):
        y, s = _valid(labels[:, k], scores[:, k])
        if (y == 1).any() and (y == 0).any():
            out[name] = stats.bootstrap(metric, y, s, n=n_boot, seed=seed)
    return out


def recall_at_k(similarity: np.ndarray, k: int, targets: np.ndarray | None = None) -> float:
    """Share of query rows whose true item is among the top ``k`` columns of ``similarity``.

    ``targets[i]`` is row i's true column (default: the diagonal, i.e. paired rows).
    """
    sim = np.asarray(similarity)
    targets = np.arange(sim.shape[0]) if targets is None else np.asarray(targets)
    true = sim[np.arange(sim.shape[0]), targets]
    rank = (sim > true[:, None]).sum(axis=1)  # items scored strictly higher than the true one
    return float((rank < k).mean())
