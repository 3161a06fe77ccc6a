"""The one bootstrap of the package: percentile confidence intervals, seeded.

Every interval in the workbench (the classifier's and CLIP's AUROCs, the diffusion evaluation's
fidelity scores, evaluate-lm's multiple-choice accuracy, the optimizer study's losses over seeds)
comes from :func:`bootstrap`: resample the rows with replacement ``n`` times, recompute the
statistic, take the percentiles (Efron & Tibshirani 1993). The resamples are drawn one at a time
from ``numpy.random.default_rng(seed)``, so a rerun gives the same interval; a resample whose
statistic is not finite (an AUROC on a resample with one class) is skipped, and the number of
valid resamples is returned with the interval.

Drawing one resample at a time or all at once (``rng.integers(n, size=(n_boot, n))``, what
evaluate-lm and the optimizer study did before the three bootstraps were merged) gives the same
indices, so the merge changed none of their intervals (``tests/test_stats.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "bootstrap", "mean_ci"]

_NAN = float("nan")


@dataclass
class Estimate:
    """A point estimate with its bootstrap interval (``n_boot`` valid resamples)."""

    value: float
    low: float
    high: float
    n_boot: int

    @property
    def ci(self) -> tuple[float, float]:
        return (self.low, self.high)

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(metric: Callable[..., float], *arrays: np.ndarray | Sequence[float],
              n: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """``metric(*arrays)`` with a percentile bootstrap interval over rows.

    The arrays are resampled together (row ``i`` of each stays paired). With no rows, or no
    resample whose statistic is finite (or ``n <= 0``), the interval is NaN and ``n_boot`` 0.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    size = len(arrays[0])
    if any(len(a) != size for a in arrays):
        raise ValueError(f"bootstrap: arrays of different lengths {[len(a) for a in arrays]}")
    if size == 0:
        return Estimate(_NAN, _NAN, _NAN, 0)
    value = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        i = rng.integers(0, size, size)
        v = metric(*(a[i] for a in arrays))
        if np.isfinite(v):
            stats.append(v)
    if not stats:
        return Estimate(value, _NAN, _NAN, 0)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(value, float(lo), float(hi), len(stats))


def mean_ci(values: np.ndarray | Sequence[float], n: int = 1000, seed: int = 0, *,
            level: float = 0.95, min_size: int = 1) -> tuple[float, float]:
    """The bootstrap interval of the mean of ``values`` (e.g. 0/1 outcomes per question, or one
    loss per seed); (NaN, NaN) with fewer than ``min_size`` values."""
    v = np.asarray(values, dtype=float)
    if len(v) < max(1, min_size):
        return (_NAN, _NAN)
    return bootstrap(np.mean, v, n=n, seed=seed, level=level).ci
