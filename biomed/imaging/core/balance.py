"""Repeat-factor sampling: rows with rare findings appear more than once per epoch.

Gupta et al. 2019 (LVIS, section 4): for each label k, f_k is the share of rows where k is
present and its repeat factor is r_k = max(1, sqrt(t / f_k)) for a threshold t; a row's factor is
the largest r_k over the labels it has (1 for a row without any rare label). An epoch then holds
each row floor(r_i) times, plus once more with probability r_i - floor(r_i).

Unlike loss re-weighting, the model sees more *distinct draws* of the rare rows (other noise,
other timesteps, other dropout), and nothing changes for the common ones. Here the stochastic
rounding is drawn once from a seed, not per epoch, so the expanded index list has a fixed length
and a resumed run continues the same data order.

Labels follow the dataset contract (``labels``: N x K of 1/0/NaN): NaN counts as not present.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biomed.errors import ConfigError

__all__ = ["repeat_factors", "repeat_indices", "repeat_summary"]


def _present(labels: np.ndarray) -> np.ndarray:
    """(N, K) booleans: 1 is present; 0 and NaN (unknown) are not."""
    return np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) repeat factor of each row, >= 1.

    labels: (N, K) with 1 = present (0 or NaN otherwise); threshold: the label frequency below
    which a label is repeated (LVIS used 0.001 over 1,203 categories; with a few dozen findings
    0.05-0.3 is the useful range).
    """
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise ConfigError(f"repeat_factor_threshold {threshold}: must lie in (0, 1]")
    present = _present(labels)
    if present.ndim != 2:
        raise ConfigError(f"repeat-factor sampling needs (rows, labels) labels, got shape "
                          f"{present.shape}")
    freq = present.mean(axis=0) if len(present) else np.zeros(present.shape[1])
    per_label = np.ones_like(freq)
    seen = freq > 0
    per_label[seen] = np.maximum(1.0, np.sqrt(t / freq[seen]))
    per_row = np.where(present, per_label[None, :], 1.0)
    return per_row.max(axis=1) if per_row.shape[1] else np.ones(len(present))


def repeat_indices(factors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices of one expanded epoch (sorted; the engine's sampler shuffles them).

    Row i appears floor(r_i) times, plus once with probability r_i - floor(r_i).
    """
    r = np.asarray(factors, dtype=np.float64)
    whole = np.floor(r)
    extra = np.random.default_rng(seed).random(len(r)) < (r - whole)
    counts = (whole + extra).astype(np.int64)
    return np.repeat(np.arange(len(r)), counts)


def repeat_summary(labels: np.ndarray, names: Sequence[str], indices: np.ndarray,
                   top: int = 6) -> str:
    """One line: rows before -> after, and the rarest labels' share before -> after."""
    present = _present(labels)
    before = present.mean(axis=0)
    after = present[indices].mean(axis=0)
    order = [k for k in np.argsort(before) if before[k] > 0][:top]
    parts = ", ".join(f"{names[k]} {before[k]:.1%} -> {after[k]:.1%}" for k in order)
    return f"{len(present)} -> {len(indices)} rows per epoch; rarest: {parts}"
