"""biomed.stats, the paired clustered bootstrap: weighted AUROC/AP against scikit-learn,
paired_gain and seed_mean against a brute-force two-stage bootstrap, and coverage on simulated
clustered data (where an image-level bootstrap under-covers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from biomed import stats
from biomed.errors import ConfigError, InputError

PAIRS = [(stats.weighted_auroc, roc_auc_score),
         (stats.weighted_average_precision, average_precision_score)]


def _case(rng: np.random.Generator, n: int, digits: int = 1):
    """Labels of both classes and scores rounded to ``digits`` (many ties)."""
    y = rng.integers(0, 2, n).astype(float)
    y[:2] = [0.0, 1.0]
    return y, np.round(rng.random(n), digits)


@pytest.mark.parametrize(("ours", "sk"), PAIRS)
def test_equal_to_sklearn_with_ties_and_weights(ours, sk):
    rng = np.random.default_rng(0)
    for t in range(60):
        y, p = _case(rng, int(rng.integers(3, 80)), digits=1 + t % 3)
        for w in (None, rng.random(len(y)), rng.integers(1, 5, len(y)).astype(float)):
            assert ours(y, p, w) == pytest.approx(sk(y, p, sample_weight=w), abs=1e-12)


@pytest.mark.parametrize(("ours", "sk"), PAIRS)
def test_zero_weights_and_unknown_labels_are_ignored(ours, sk):
    rng = np.random.default_rng(1)
    y, p = _case(rng, 50)
    w = rng.integers(0, 3, 50).astype(float)
    w[:2] = 1.0
    unknown = y.copy()
    unknown[10:20] = np.nan
    keep = np.isfinite(unknown)
    assert ours(unknown, p, w) == pytest.approx(sk(y[keep], p[keep], sample_weight=w[keep]),
                                                abs=1e-12)
    # an unknown label may come with a NaN score
    p_nan = p.copy()
    p_nan[10:20] = np.nan
    assert ours(unknown, p_nan, w) == ours(unknown, p, w)
    nonzero = w > 0
    assert ours(y, p, w) == pytest.approx(ours(y[nonzero], p[nonzero], w[nonzero]), abs=1e-12)


@pytest.mark.parametrize(("ours", "sk"), PAIRS)
def test_integer_weights_equal_repeated_rows(ours, sk):
    rng = np.random.default_rng(2)
    y, p = _case(rng, 40, digits=2)
    w = rng.integers(0, 4, 40)
    w[:2] = 1
    rep = np.repeat(np.arange(40), w)
    assert ours(y, p, w.astype(float)) == pytest.approx(ours(y[rep], p[rep]), abs=1e-12)
    assert ours(y[rep], p[rep]) == pytest.approx(sk(y[rep], p[rep]), abs=1e-12)


def test_undefined_cases_are_nan():
    p = np.array([0.1, 0.4, 0.8])
    assert math.isnan(stats.weighted_auroc(np.ones(3), p))
    assert math.isnan(stats.weighted_auroc(np.array([1.0, 0.0, 0.0]), p, [0.0, 1.0, 1.0]))
    assert math.isnan(stats.weighted_auroc([], []))
    assert math.isnan(stats.weighted_average_precision(np.zeros(3), p))
    assert math.isnan(stats.weighted_average_precision(np.array([np.nan, 0.0, 1.0]), p,
                                                       [1.0, 1.0, 0.0]))
    assert stats.weighted_average_precision(np.ones(3), p) == 1.0  # positives only: defined
    assert stats.weighted_auroc([0.0, 1.0], [0.3, 0.3]) == 0.5


def test_bad_inputs_raise_input_errors():
    with pytest.raises(InputError, match=r"weighted_auroc\(y\).*1, 0 or NaN"):
        stats.weighted_auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match=r"weighted_auroc\(w\).*non-negative"):
        stats.weighted_auroc([0, 1], [0.1, 0.2], [1.0, -1.0])
    with pytest.raises(InputError, match=r"\(w\): 3 weights for 2 items"):
        stats.weighted_average_precision([0, 1], [0.1, 0.2], [1.0, 1.0, 1.0])
    with pytest.raises(InputError, match=r"\(p\): 1 scores for 2 labels"):
        stats.weighted_auroc([0, 1], [0.1])
    with pytest.raises(InputError, match="non-finite score"):
        stats.weighted_auroc([0, 1], [0.1, np.nan])


def test_macro_means_the_defined_columns():
    y = np.array([[1, 1, np.nan], [0, 1, np.nan], [1, 1, np.nan], [0, 1, 1]], dtype=float)
    p = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.5], [0.2, 0.4, 0.5], [0.3, 0.5, 0.5]])
    # column 1 has no negatives and column 2 one item: only column 0 is defined
    assert stats.macro(stats.weighted_auroc, y, p) == stats.weighted_auroc(y[:, 0], p[:, 0])
    ap = [stats.weighted_average_precision(y[:, k], p[:, k]) for k in range(3)]
    assert stats.macro(stats.weighted_average_precision, y, p) == pytest.approx(np.mean(ap))
    assert stats.macro(stats.weighted_average_precision, y, p, columns=[0, 1]) == pytest.approx(
        np.mean(ap[:2]))
    assert math.isnan(stats.macro(stats.weighted_auroc, y, p, columns=[1, 2]))
    w = np.array([0.0, 1.0, 1.0, 1.0])  # weights go to every column
    assert stats.macro(stats.weighted_auroc, y, p, w) == stats.weighted_auroc(y[:, 0], p[:, 0], w)
    with pytest.raises(ConfigError, match="columns"):
        stats.macro(stats.weighted_auroc, y, p, columns=[3])


def _experiment(rng: np.random.Generator, seeds: int = 3, reports: int = 20, renders: int = 2,
                k: int = 2):
    """Small paired predictions on clustered test items: y (N x K), new, base (S x N x K)."""
    clusters = np.repeat(np.arange(reports), renders)
    y = (rng.random((reports * renders, k)) < 0.5).astype(float)
    base = 1 / (1 + np.exp(-(y + rng.normal(size=(seeds, len(y), k)))))
    new = 1 / (1 + np.exp(-(1.5 * y + rng.normal(size=(seeds, len(y), k)))))
    return y, new, base, clusters


def _brute_force(y, arms, clusters, n, seed, sk, level=0.95):
    """The two-stage bootstrap written out: repeat the rows of the drawn clusters, call
    scikit-learn per seed and column (arms: one array = seed_mean, two = paired_gain)."""
    ids, cluster_of = np.unique(clusters, return_inverse=True)
    n_seeds = arms[0].shape[0]

    def per_seed(rows):
        out = []
        for s in range(n_seeds):
            m = [np.mean([sk(y[rows, c], a[s][rows, c]) for c in range(y.shape[1])])
                 for a in arms]
            out.append(m[0] - m[1] if len(m) == 2 else m[0])
        return np.array(out)

    value = float(np.mean(per_seed(np.arange(len(y)))))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        drawn = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, int)
        picked = rng.integers(0, len(ids), len(ids))
        rows = np.concatenate([np.flatnonzero(cluster_of == c) for c in picked])
        if all(len(np.unique(y[rows, c])) == 2 for c in range(y.shape[1])):
            values.append(float(np.mean(per_seed(rows)[drawn])))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return value, lo, hi, len(values)


@pytest.mark.parametrize("n_seeds", [1, 3])
@pytest.mark.parametrize(("metric", "sk"), PAIRS)
def test_paired_gain_and_seed_mean_equal_the_brute_force_bootstrap(n_seeds, metric, sk):
    y, new, base, clusters = _experiment(np.random.default_rng(3), seeds=n_seeds)
    got = stats.paired_gain(y, new, base, clusters, metric=metric, n=25, seed=5)
    want = _brute_force(y, [new, base], clusters, 25, 5, sk)
    assert (got.value, got.low, got.high) == pytest.approx(want[:3], abs=1e-12)
    assert got.n_boot == want[3]
    got = stats.seed_mean(y, new, clusters, metric=metric, n=25, seed=5, level=0.8)
    want = _brute_force(y, [new], clusters, 25, 5, sk, level=0.8)
    assert (got.value, got.low, got.high) == pytest.approx(want[:3], abs=1e-12)
    assert got.n_boot == want[3]


def test_any_other_metric_runs_the_slow_path_with_the_same_result():
    y, new, base, clusters = _experiment(np.random.default_rng(4))
    fast = stats.paired_gain(y, new, base, clusters, n=40, seed=1)
    slow = stats.paired_gain(y, new, base, clusters, n=40, seed=1,
                             metric=lambda a, b, w: stats.weighted_auroc(a, b, w))
    assert (slow.value, slow.low, slow.high) == pytest.approx((fast.value, fast.low, fast.high),
                                                              abs=1e-12)


def test_value_is_the_mean_over_seeds_of_the_macro_differences():
    y, new, base, clusters = _experiment(np.random.default_rng(5), k=3)
    y[:5, 2] = np.nan  # unknown labels are ignored
    for columns in (None, [0, 2], 1):
        want = np.mean([stats.macro(stats.weighted_auroc, y, new[s], columns=columns)
                        - stats.macro(stats.weighted_auroc, y, base[s], columns=columns)
                        for s in range(3)])
        got = stats.paired_gain(y, new, base, clusters, columns=columns, n=0)
        assert got.value == pytest.approx(want, abs=1e-12)
        assert math.isnan(got.low) and got.n_boot == 0


def test_identical_arms_give_zero_and_a_constant_improvement_a_positive_interval():
    y, new, base, clusters = _experiment(np.random.default_rng(6))
    same = stats.paired_gain(y, base, base.copy(), clusters, n=200, seed=0)
    assert (same.value, same.low, same.high, same.n_boot) == (0.0, 0.0, 0.0, 200)
    better = np.clip(base + 0.25 * y, 0, 1)  # every positive moves up: AUROC can only rise
    gain = stats.paired_gain(y, better, base, clusters, n=200, seed=0)
    assert 0 < gain.low <= gain.value <= gain.high
    ap = stats.paired_gain(y, better, base, clusters, metric=stats.weighted_average_precision,
                           n=200, seed=0)
    assert ap.low > 0


def test_seeded_reproducible_and_cluster_ids_may_be_strings():
    y, new, base, clusters = _experiment(np.random.default_rng(7))
    a = stats.paired_gain(y, new, base, clusters, n=100, seed=3)
    assert stats.paired_gain(y, new, base, clusters, n=100, seed=3) == a
    assert stats.paired_gain(y, new, base, clusters, n=100, seed=4) != a
    names = np.array([f"report-{c:03d}" for c in clusters])  # same sorted order as the ints
    assert stats.paired_gain(y, new, base, list(names), n=100, seed=3) == a
    one = stats.seed_mean(y[:, 0], new[:, :, 0], clusters, n=50, seed=1)  # 1-D labels, S x N
    assert one == stats.seed_mean(y, new, clusters, columns=0, n=50, seed=1)
    assert one.low <= one.value <= one.high


def test_seed_resampling_widens_the_interval():
    rng = np.random.default_rng(8)
    y, _, _, clusters = _experiment(rng, reports=100)
    noise = rng.normal(size=y.shape)
    # five seeds from useless to good: the seed draw must show in the interval
    spread = np.stack([1 / (1 + np.exp(-(q * y + noise))) for q in (0.0, 0.5, 1.0, 2.0, 4.0)])
    both = stats.seed_mean(y, spread, clusters, n=300, seed=0)
    copies = stats.seed_mean(y, np.repeat(spread[2:3], 5, axis=0), clusters, n=300, seed=0)
    assert both.high - both.low > 2 * (copies.high - copies.low)


def test_bad_shapes_and_settings_raise():
    y, new, base, clusters = _experiment(np.random.default_rng(9))
    with pytest.raises(InputError, match=r"paired_gain\(new\): shape \(3, 39, 2\)"):
        stats.paired_gain(y, new[:, 1:], base, clusters)
    with pytest.raises(InputError, match="different numbers of seeds"):
        stats.paired_gain(y, new, base[:2], clusters)
    with pytest.raises(InputError, match=r"\(clusters\): 39 cluster ids for 40"):
        stats.paired_gain(y, new, base, clusters[1:])
    with pytest.raises(ConfigError, match="level"):
        stats.seed_mean(y, new, clusters, level=95)
    with pytest.raises(ConfigError, match="columns"):
        stats.seed_mean(y, new, clusters, columns=[0, 5])


# --- coverage on simulated clustered data -------------------------------------------------
# 150 test reports x 3 renders. A report has one label (prevalence 0.3), a latent u shared by
# its renders, and a report-level share h of the new model's improvement (the gain differs
# between reports: this is what makes the renders of a report dependent for the gain). Each of
# the S paired seeds has its own discriminative strength (correlated between the two arms of
# a seed) and item-level score noise. Scores given the label are Gaussian, so the population
# AUROC of a seed is Phi(mean difference / sd of the difference), and averaging over the seed
# effect g ~ N(0, 1) gives E Phi((m + tau g) / s) = Phi(m / sqrt(s^2 + tau^2)).
A, D, ETA, SU, SE, SZ, TAU, RHO, PREV = 1.0, 0.4, 2.5, 1.0, 0.3, 0.5, 0.1, 0.5, 0.3


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _true_gain(tau: float = TAU) -> float:
    two_var = 2 * (SU**2 + SE**2 + SZ**2)
    return (_phi((A + D) / math.sqrt(two_var + (D * ETA) ** 2 + tau**2))
            - _phi(A / math.sqrt(two_var + tau**2)))


def _simulate(rng: np.random.Generator, reports: int = 150, renders: int = 3, seeds: int = 5,
              tau: float = TAU):
    clusters = np.repeat(np.arange(reports), renders)
    label = (rng.random(reports) < PREV).astype(float)
    share = 1 + ETA * rng.standard_normal(reports)
    latent = SU * rng.standard_normal(reports)
    y = label[clusters]
    image = latent[clusters] + SE * rng.standard_normal(len(y))  # the test image, all models
    g = rng.standard_normal((seeds, 1))
    g_new = RHO * g + math.sqrt(1 - RHO**2) * rng.standard_normal((seeds, 1))
    z = SZ * rng.standard_normal((seeds, len(y)))
    z_new = RHO * z + math.sqrt(1 - RHO**2) * SZ * rng.standard_normal((seeds, len(y)))
    base = (A + tau * g) * y + image + z
    new = (A + D * share[clusters] + tau * g_new) * y + image + z_new
    return y, new, base, clusters


def test_the_simulation_truth_matches_a_huge_sample():
    # without the seed effect one large test set gives the population AUROCs
    y, new, base, _ = _simulate(np.random.default_rng(0), reports=100_000, seeds=1, tau=0.0)
    big = stats.weighted_auroc(y, new[0]) - stats.weighted_auroc(y, base[0])
    assert big == pytest.approx(_true_gain(tau=0.0), abs=0.006)
    # and the average over the seed effect (Gauss-Hermite) is the closed form used
    x, wt = np.polynomial.hermite_e.hermegauss(40)
    wt = wt / wt.sum()
    two_var = 2 * (SU**2 + SE**2 + SZ**2)
    avg = sum(w * (_phi((A + D + TAU * g) / math.sqrt(two_var + (D * ETA) ** 2))
                   - _phi((A + TAU * g) / math.sqrt(two_var))) for g, w in zip(x, wt, strict=True))
    assert avg == pytest.approx(_true_gain(), abs=1e-9)


def test_two_stage_interval_covers_the_true_gain_and_an_image_level_one_does_not():
    true, trials = _true_gain(), 200
    rng = np.random.default_rng(2024)
    covered = covered_images = 0
    for t in range(trials):
        y, new, base, clusters = _simulate(rng)
        est = stats.paired_gain(y, new, base, clusters, n=200, seed=t)
        covered += est.low <= true <= est.high
        # the same bootstrap with every image its own cluster: ignores the report
        naive = stats.paired_gain(y, new, base, np.arange(len(y)), n=200, seed=t)
        covered_images += naive.low <= true <= naive.high
    coverage, coverage_images = covered / trials, covered_images / trials
    assert 0.85 <= coverage <= 0.995, coverage
    # over simulation seeds 0-5 and 2024: two-stage 0.905-0.97, image-level 0.755-0.85 (0.12-0.16
    # below the two-stage coverage of the same experiments)
    assert coverage_images <= 0.9 and coverage - coverage_images >= 0.07, (coverage,
                                                                            coverage_images)
