"""Shared metrics against scikit-learn and against hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from biomed import stats
from biomed.imaging.core import metrics
from biomed.imaging.core.findings import PhantomFinding, labels_of
from biomed.imaging.core.labels import CANONICAL_NAMES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300).astype(float)
    s = np.round(y * 0.5 + rng.normal(size=300), 1)  # rounding makes ties
    y_nan = y.copy()
    y_nan[::17] = np.nan
    keep = ~np.isnan(y_nan)
    assert metrics.auroc(y_nan, s) == pytest.approx(roc_auc_score(y[keep], s[keep]))
    assert metrics.average_precision(y_nan, s) == pytest.approx(
        average_precision_score(y[keep], s[keep]))


def test_single_class_is_nan_and_bootstrap_interval_brackets_value():
    assert np.isnan(metrics.auroc(np.ones(5), np.arange(5.0)))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400).astype(float)
    s = y + rng.normal(size=400)
    est = stats.bootstrap(metrics.auroc, y, s, n=200, seed=0)
    assert est.low < est.value < est.high and est.n_boot == 200
    assert stats.bootstrap(metrics.auroc, y, s, n=200, seed=0).low == est.low  # seeded


def test_ece_perfect_and_overconfident():
    y = np.array([0, 1] * 50, float)
    assert metrics.expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(y, np.full(100, 0.99)) == pytest.approx(0.49)


def test_recall_at_k():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.1, 0.2]])
    assert metrics.recall_at_k(sim, 1) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(sim, 2) == pytest.approx(1.0)


def test_labels_of_phantom_findings():
    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    y = labels_of([PhantomFinding("effusion", side="left"), PhantomFinding("support_devices")])
    assert y[col["effusion"]] == y[col["effusion_left"]] == 1 and y[col["effusion_right"]] == 0
    assert y[col["no_finding"]] == 0 and y[col["support_devices"]] == 1
    assert labels_of([])[col["no_finding"]] == 1
    assert labels_of([PhantomFinding("support_devices")])[col["no_finding"]] == 1
    with pytest.raises(ValueError, match="side"):
        PhantomFinding("effusion", side="up")
