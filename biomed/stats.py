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

The augmentation experiment needs a second, two-stage bootstrap (:func:`paired_gain`,
:func:`seed_mean`): its test images are clustered (several phantom renders share one report) and
its gains are averaged over paired training seeds, so a resample draws the independent units at
both levels, the seeds and the test reports, instead of rows. Its metrics
(:func:`weighted_auroc`, :func:`weighted_average_precision`, :func:`macro`) take the cluster
resample as integer item weights, and the scores are sorted once outside the resampling loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from biomed.errors import ConfigError, InputError

__all__ = [
    "Estimate", "bootstrap", "macro", "mean_ci", "paired_gain", "seed_mean",
    "weighted_auroc", "weighted_average_precision",
]

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
        stats.append(metric(*(a[i] for a in arrays)))
    return _percentile_interval(value, stats, level)


def _percentile_interval(value: float, stats: Sequence[float], level: float) -> Estimate:
    """``value`` with the percentile interval of the finite resample statistics."""
    finite = [float(v) for v in stats if np.isfinite(v)]
    if not finite:
        return Estimate(value, _NAN, _NAN, 0)
    lo, hi = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(value, float(lo), float(hi), len(finite))


def mean_ci(values: np.ndarray | Sequence[float], n: int = 1000, seed: int = 0, *,
            level: float = 0.95, min_size: int = 1) -> tuple[float, float]:
    """The bootstrap interval of the mean of ``values`` (e.g. 0/1 outcomes per question, or one
    loss per seed); (NaN, NaN) with fewer than ``min_size`` values."""
    v = np.asarray(values, dtype=float)
    if len(v) < max(1, min_size):
        return (_NAN, _NAN)
    return bootstrap(np.mean, v, n=n, seed=seed, level=level).ci


# ---------------------------------------------------------------------------------------------
# The paired, clustered bootstrap of the augmentation experiment
# ---------------------------------------------------------------------------------------------
#
# A metric under cluster-resample weights is computed for many rows at once (arm x seed x label
# column): each row's scores are sorted once, its tie groups found once (`_Ranked`), and a
# resample only gathers its weight vector into sorted order and takes cumulative sums.

Metric = Callable[..., float]


@dataclass(frozen=True)
class _Ranked:
    """Rows of scores sorted once: all a weighted AUROC or AP needs but the weights.

    ``start`` and ``stop`` are flat indices into an ``(M, N + 1)`` array of prefix (or suffix)
    sums: the first position of each sorted item's tie group and one past its last.
    """

    order: np.ndarray  # (M, N) item index at each sorted position, ascending score
    positive: np.ndarray  # (M, N) 1.0 where the label at that position is 1
    known: np.ndarray  # (M, N) 1.0 where the label is known (not NaN)
    start: np.ndarray  # (M, N) flat index of the tie group's first position
    stop: np.ndarray  # (M, N) flat index one past the tie group's last position


def _rank(y: np.ndarray, p: np.ndarray) -> _Ranked:
    """Sort the rows of ``p`` (M x N) and find their tie groups; ``y`` (M x N) is 1/0/NaN."""
    m, n = p.shape
    known = np.isfinite(y)
    # unknown labels get weight 0 wherever they sort; give them a finite score so they do
    p = np.where(known, p, 0.0)
    order = np.argsort(p, axis=1, kind="stable")
    sp = np.take_along_axis(p, order, axis=1)
    sy = np.take_along_axis(np.where(known, y, 0.0), order, axis=1)
    sk = np.take_along_axis(known, order, axis=1).astype(np.float64)
    pos = np.arange(n)
    new_group = np.ones((m, n), bool)
    new_group[:, 1:] = sp[:, 1:] != sp[:, :-1]
    first = np.maximum.accumulate(np.where(new_group, pos, 0), axis=1)
    last_in_group = np.ones((m, n), bool)
    last_in_group[:, :-1] = new_group[:, 1:]
    last = np.minimum.accumulate(np.where(last_in_group, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    base = (np.arange(m) * (n + 1))[:, None]
    return _Ranked(order, (sy == 1).astype(np.float64), sk, first + base, last + 1 + base)


def _weights(r: _Ranked, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted item weights (unknown labels weigh 0) and the positives' part of them."""
    sw = r.known if w is None else w[r.order] * r.known
    return sw, sw * r.positive


def _auroc_rows(r: _Ranked, w: np.ndarray | None) -> np.ndarray:
    """Weighted Mann-Whitney AUROC of every row (midranks for ties); NaN where a class weighs 0.

    A positive in tie group [a, b) beats the negative weight sorted before a and ties (one
    half) with the negative weight in [a, b): ``(neg[:a] + neg[:b]) / 2`` from one prefix sum.
    """
    sw, wp = _weights(r, w)
    wn = sw - wp
    cum = np.zeros((wn.shape[0], wn.shape[1] + 1))
    np.cumsum(wn, axis=1, out=cum[:, 1:])
    flat = cum.ravel()
    u = (wp * (flat[r.start] + flat[r.stop])).sum(axis=1) * 0.5
    tp, tn = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = u / (tp * tn)
    out[(tp <= 0) | (tn <= 0)] = np.nan
    return out


def _average_precision_rows(r: _Ranked, w: np.ndarray | None) -> np.ndarray:
    """Weighted average precision of every row (scikit-learn's step integral); NaN without
    positive weight.

    Each distinct score is one threshold; a positive in tie group [a, b) adds its weight times
    the precision at that threshold, (positive weight at >= a) / (weight at >= a), from suffix
    sums.
    """
    sw, wp = _weights(r, w)
    m, n = sw.shape
    above_w = np.zeros((m, n + 1))
    above_p = np.zeros((m, n + 1))
    above_w[:, :n] = np.cumsum(sw[:, ::-1], axis=1)[:, ::-1]
    above_p[:, :n] = np.cumsum(wp[:, ::-1], axis=1)[:, ::-1]
    num, den = above_p.ravel()[r.start], above_w.ravel()[r.start]
    precision = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    tp = wp.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (wp * precision).sum(axis=1) / tp
    out[tp <= 0] = np.nan
    return out


def _vector(x, name: str, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise InputError(f"{where}({name})", f"expected a 1-D array, got shape {a.shape}")
    return a


def _check_labels(y: np.ndarray, where: str) -> None:
    known = y[np.isfinite(y)]
    if np.any((known != 0) & (known != 1)) or np.any(np.isinf(y)):
        raise InputError(f"{where}(y)", "labels must be 1, 0 or NaN (unknown)")


def _check_scores(y: np.ndarray, p: np.ndarray, name: str, where: str) -> None:
    if not np.all(np.isfinite(p[np.broadcast_to(np.isfinite(y), p.shape)])):
        raise InputError(f"{where}({name})", "non-finite score for an item with a known label")


def _check_weights(w, size: int, where: str) -> np.ndarray | None:
    if w is None:
        return None
    w = _vector(w, "w", where)
    if len(w) != size:
        raise InputError(f"{where}(w)", f"{len(w)} weights for {size} items")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError(f"{where}(w)", "weights must be finite and non-negative")
    return w


def _binary_metric(rows: Callable[[_Ranked, np.ndarray | None], np.ndarray], y, p, w,
                   where: str) -> float:
    y, p = _vector(y, "y", where), _vector(p, "p", where)
    if len(y) != len(p):
        raise InputError(f"{where}(p)", f"{len(p)} scores for {len(y)} labels")
    _check_labels(y, where)
    _check_scores(y, p, "p", where)
    w = _check_weights(w, len(y), where)
    if len(y) == 0:
        return _NAN
    return float(rows(_rank(y[None], p[None]), w)[0])


def weighted_auroc(y, p, w=None) -> float:
    """AUROC of scores ``p`` for binary labels ``y`` (1/0; NaN = unknown, ignored) with
    non-negative item weights ``w`` (e.g. how many times a cluster resample drew each item;
    None = 1).

    The weighted Mann-Whitney statistic with midranks for ties: the weight of (positive,
    negative) pairs the score orders correctly, plus half of the tied pairs', over all pairs'.
    Equal to ``sklearn.metrics.roc_auc_score(y, p, sample_weight=w)``, and integer weights equal
    repeated rows. NaN when either class has zero weight.
    """
    return _binary_metric(_auroc_rows, y, p, w, "weighted_auroc")


def weighted_average_precision(y, p, w=None) -> float:
    """Average precision of scores ``p`` for binary labels ``y`` (1/0; NaN = unknown, ignored)
    with non-negative item weights ``w`` (None = 1).

    scikit-learn's definition (``average_precision_score`` with ``sample_weight``): the sum over
    distinct score thresholds of the recall gained there times the precision there, no
    interpolation. NaN when the positives have zero weight.
    """
    return _binary_metric(_average_precision_rows, y, p, w, "weighted_average_precision")


def _macro_of(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries; NaN where there is none."""
    finite = np.isfinite(values)
    count = finite.sum(axis=-1)
    total = np.where(finite, values, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _columns(columns, k: int, where: str) -> list[int]:
    if columns is None:
        return list(range(k))
    cols = [int(columns)] if np.isscalar(columns) else [int(c) for c in columns]
    if not cols or any(not -k <= c < k for c in cols):
        raise ConfigError(f"{where}: columns {columns!r} do not select label columns of {k}")
    return [c % k for c in cols]


def _matrix(x, name: str, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"{where}({name})", f"expected N x K, got shape {a.shape}")
    return a


def macro(metric: Metric, y, p, w=None, columns=None) -> float:
    """Mean of ``metric(y[:, k], p[:, k], w)`` over the label columns ``k`` (``columns``, or
    all; y and p are N x K, 1-D is one column) where it is defined (finite) under these
    weights; NaN if it is defined for none."""
    y, p = _matrix(y, "y", "macro"), _matrix(p, "p", "macro")
    if y.shape != p.shape:
        raise InputError("macro(p)", f"shape {p.shape} does not match y {y.shape}")
    values = np.array([metric(y[:, k], p[:, k], w)
                       for k in _columns(columns, y.shape[1], "macro")], dtype=np.float64)
    return float(_macro_of(values))


class _Arms:
    """The metric of every (arm, seed, column) of S-seed predictions under one weight vector."""

    _FAST = {weighted_auroc: _auroc_rows, weighted_average_precision: _average_precision_rows}

    def __init__(self, metric: Metric, y: np.ndarray, arms: np.ndarray):
        # y: N x Kc; arms: A x S x N x Kc
        self.metric, self.y, self.arms = metric, y, arms
        self.shape = arms.shape[:2] + arms.shape[3:]  # A x S x Kc
        self.rows = self._FAST.get(metric)
        if self.rows is not None:
            a, s, n, k = arms.shape
            p = np.moveaxis(arms, 2, -1).reshape(a * s * k, n)  # row = (arm, seed, column)
            self.ranked = _rank(np.broadcast_to(y.T, (a, s, k, n)).reshape(-1, n), p)

    def __call__(self, w: np.ndarray | None) -> np.ndarray:
        """A x S: the macro over columns under weights ``w`` (None = 1)."""
        if self.rows is not None:
            values = self.rows(self.ranked, w).reshape(self.shape)
        else:  # any other metric(y, p, w): called per row, slower
            a, s, _, k = self.arms.shape
            values = np.array([[[self.metric(self.y[:, c], self.arms[i, j, :, c], w)
                                 for c in range(k)] for j in range(s)] for i in range(a)],
                              dtype=np.float64)
        return _macro_of(values)


def _two_stage(per_seed: Callable[[np.ndarray | None], np.ndarray], n_seeds: int,
               clusters: np.ndarray, n: int, seed: int, level: float) -> Estimate:
    """Point value and two-stage percentile interval of the mean over seeds of ``per_seed(w)``
    (length S, item weights ``w``): each resample draws S seeds and then the C clusters with
    replacement (one seed: the clusters only)."""
    value = float(np.mean(per_seed(None)))
    if n <= 0:
        return Estimate(value, _NAN, _NAN, 0)
    cluster_of, n_clusters = _cluster_index(clusters)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        drawn = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, np.intp)
        times = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        stats.append(float(np.mean(per_seed(times[cluster_of].astype(np.float64))[drawn])))
    return _percentile_interval(value, stats, level)


def _cluster_index(clusters: np.ndarray) -> tuple[np.ndarray, int]:
    if clusters.dtype == object:
        clusters = clusters.astype(str)
    ids, index = np.unique(clusters, return_inverse=True)
    return index.ravel(), len(ids)


def _prepare(y, arms: dict[str, object], clusters, columns, n, level, where: str):
    """Validate the shared inputs; return (y N x Kc, arms A x S x N x Kc, clusters)."""
    y = _matrix(y, "y", where)
    _check_labels(y, where)
    size, k = y.shape
    if size == 0:
        raise InputError(f"{where}(y)", "no test items")
    cols = _columns(columns, k, where)
    stacked = []
    for name, x in arms.items():
        a = np.asarray(x, dtype=np.float64)
        if a.ndim == 2 and k == 1:
            a = a[..., None]  # S x N predictions of a 1-D label vector
        if a.ndim != 3 or a.shape[1:] != (size, k) or a.shape[0] == 0:
            raise InputError(f"{where}({name})", f"shape {a.shape}: expected S x {size} x {k} "
                             "(seeds x test items x label columns, as y)")
        _check_scores(y, a, name, where)
        stacked.append(a[..., cols])
    if len({a.shape for a in stacked}) != 1:
        raise InputError(f"{where}({', '.join(arms)})",
                         f"different numbers of seeds {[a.shape[0] for a in stacked]}")
    c = np.asarray(clusters)
    if c.ndim != 1 or len(c) != size:
        raise InputError(f"{where}(clusters)", f"{c.size} cluster ids for {size} test items")
    if not 0 < level < 1:
        raise ConfigError(f"{where}: level {level} must be between 0 and 1")
    if int(n) != n or n < 0:
        raise ConfigError(f"{where}: n {n} must be a non-negative number of resamples")
    return y[:, cols], np.stack(stacked), c


def paired_gain(y, new, base, clusters, *, metric: Metric = weighted_auroc, columns=None,
                n: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The gain of ``new`` over ``base`` in ``metric`` over paired seeds, with a two-stage
    (hierarchical) percentile bootstrap interval over seeds and test clusters.

    ``y``: N x K test labels (1/0/NaN). ``new``, ``base``: S x N x K predicted probabilities of
    the S paired seeds (seed s of both arms: same real subset, same initialisation), same test
    items in the same order. ``clusters``: N cluster ids (the test report id; strings or ints):
    items of one cluster (renders of one report) are not independent. ``columns``: the label
    columns of the endpoint, one (a per-finding gain) or several (macro over them, see
    :func:`macro`); None = all. ``metric(y, p, w)``: :func:`weighted_auroc` (default) or
    :func:`weighted_average_precision` run on scores sorted once; any other is called per
    column, seed and resample.

    ``value`` is the mean over seeds of ``macro(new[s]) - macro(base[s])`` on the test set as
    it is. Each of the ``n`` resamples draws S seed indices with replacement and then the C
    clusters with replacement (an item weighs as many times as its cluster was drawn), and its
    statistic is the mean over the drawn seeds of the weighted difference: the two sources of
    variation, training seeds and test reports, are the independent units, so both are
    resampled (a two-stage bootstrap of hierarchical data: Davison & Hinkley 1997, sec. 3.8;
    Field & Welsh 2007, "Bootstrapping clustered data", JRSS-B 69:369-390), and the pairing is
    kept since a drawn seed brings both its arms and both arms see the same drawn test set.
    With S == 1 only the clusters are resampled (the interval then ignores seed variation).

    The interval is the percentile interval at ``level`` (Efron & Tibshirani 1993) of the
    resample statistics that are finite (a resample may leave a column with one class); their
    number is ``n_boot``. Resamples come from ``numpy.random.default_rng(seed)``: a rerun gives
    the same interval.
    """
    y, arms, clusters = _prepare(y, {"new": new, "base": base}, clusters, columns, n, level,
                                 "paired_gain")
    score = _Arms(metric, y, arms)

    def per_seed(w: np.ndarray | None) -> np.ndarray:
        m = score(w)
        return m[0] - m[1]

    return _two_stage(per_seed, arms.shape[1], clusters, int(n), seed, level)


def seed_mean(y, preds, clusters, *, metric: Metric = weighted_auroc, columns=None,
              n: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The mean of ``metric`` over S seeds of one arm (``preds``: S x N x K), with the same
    two-stage percentile bootstrap over seeds and test clusters as :func:`paired_gain` (one
    seed: clusters only). For unpaired quantities such as the real-data curve (AUROC against
    the real fraction)."""
    y, arms, clusters = _prepare(y, {"preds": preds}, clusters, columns, n, level, "seed_mean")
    score = _Arms(metric, y, arms)
    return _two_stage(lambda w: score(w)[0], arms.shape[1], clusters, int(n), seed, level)
