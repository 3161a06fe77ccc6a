"""biomed.stats: the one bootstrap (coverage, seeding, degenerate inputs, the merged streams)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from biomed import stats
from biomed.imaging.core.metrics import auroc


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered = 100, 0
    for t in range(trials):
        x = rng.normal(loc=2.0, size=60)
        lo, hi = stats.mean_ci(x, n=400, seed=t)
        covered += lo <= 2.0 <= hi
    assert 0.85 <= covered / trials <= 1.0


def test_known_case_interval_brackets_the_estimate_and_narrows_with_more_rows():
    correct = np.array([1, 0] * 50, dtype=float)
    est = stats.bootstrap(np.mean, correct, n=2000, seed=3)
    assert est.value == 0.5 and est.low < 0.5 < est.high and est.n_boot == 2000
    assert est.high - est.low < 0.25
    small = stats.bootstrap(np.mean, correct[:10], n=2000, seed=3)
    assert small.high - small.low > est.high - est.low
    assert est.ci == (est.low, est.high)
    assert est.to_dict() == {"value": 0.5, "ci_low": est.low, "ci_high": est.high}
    assert str(est) == f"0.500 [{est.low:.3f}, {est.high:.3f}]"


def test_seeded_reproducible_and_seed_dependent():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(float)
    s = y + rng.normal(size=200)
    a = stats.bootstrap(auroc, y, s, n=300, seed=7)
    assert stats.bootstrap(auroc, y, s, n=300, seed=7) == a
    assert stats.bootstrap(auroc, y, s, n=300, seed=8) != a
    assert stats.mean_ci(s, 300, seed=7) == stats.mean_ci(s, 300, seed=7)


def test_rows_of_several_arrays_are_resampled_together():
    x = np.arange(50.0)
    # paired rows: x - x is 0 in every resample; unpaired resampling would not give 0
    est = stats.bootstrap(lambda a, b: float(np.mean(a - b)), x, x.copy(), n=200, seed=0)
    assert (est.value, est.low, est.high, est.n_boot) == (0.0, 0.0, 0.0, 200)
    with pytest.raises(ValueError, match="different lengths"):
        stats.bootstrap(auroc, x, x[:-1])


def test_single_class_resamples_are_skipped_and_counted():
    y = np.zeros(40)
    y[0] = 1.0  # one positive: most resamples miss it, AUROC is undefined there
    s = np.linspace(0, 1, 40)
    est = stats.bootstrap(auroc, y, s, n=200, seed=0)
    assert 0 < est.n_boot < 200 and np.isfinite(est.low)
    only_one_class = stats.bootstrap(auroc, np.ones(10), s[:10], n=50, seed=0)
    assert np.isnan(only_one_class.value) and np.isnan(only_one_class.low)
    assert only_one_class.n_boot == 0


def test_empty_and_too_few_values_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        est = stats.bootstrap(np.mean, np.array([]), n=100)
        assert np.isnan(est.value) and np.isnan(est.low) and est.n_boot == 0
        assert all(np.isnan(stats.mean_ci([], 100)))
    assert all(np.isnan(stats.mean_ci([1.0, 2.0], 0)))  # no resamples
    assert all(np.isnan(stats.mean_ci([3.2], 100, min_size=2)))  # one seed: no interval
    assert stats.mean_ci([3.2], 100) == (3.2, 3.2)


# the three bootstraps the package had before biomed.stats, as they were written (commit 368cd22)
def _old_imaging(metric, *arrays, n=1000, seed=0, level=0.95):
    arrays = tuple(np.asarray(a) for a in arrays)
    size = len(arrays[0])
    rng = np.random.default_rng(seed)
    got = []
    for _ in range(n):
        i = rng.integers(0, size, size)
        v = metric(*(a[i] for a in arrays))
        if np.isfinite(v):
            got.append(v)
    return tuple(float(q) for q in np.quantile(got, [(1 - level) / 2, 1 - (1 - level) / 2]))


def _old_lm_evaluate(correct, n_boot, seed=0):
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(len(correct), size=(n_boot, len(correct)))].mean(axis=1)
    return tuple(float(q) for q in np.percentile(means, [2.5, 97.5]))


def _old_lm_study(values, n_boot=2000, seed=0):
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(n_boot, len(v)))].mean(axis=1)
    return tuple(float(q) for q in np.percentile(means, [2.5, 97.5]))


@pytest.mark.parametrize("n", [2, 3, 7, 40, 301])
def test_the_merge_keeps_every_old_interval(n):
    rng = np.random.default_rng(n)
    correct = (rng.random(n) < 0.4).astype(float)
    losses = rng.normal(3.0, 0.1, n)
    y = np.r_[0.0, 1.0, rng.integers(0, 2, n - 2)].astype(float)
    s = y + rng.normal(size=n)
    for seed in (0, 3):
        assert stats.mean_ci(correct, 2000, seed) == _old_lm_evaluate(correct, 2000, seed)
        assert stats.mean_ci(losses, 2000, seed, min_size=2) == _old_lm_study(losses, 2000, seed)
        if n >= 7:
            assert stats.bootstrap(auroc, y, s, n=300, seed=seed).ci == \
                _old_imaging(auroc, y, s, n=300, seed=seed)
