"""Nested, seeded choices of the augmentation experiment: the real subset and the order of
synthetic items.

Real subset. A patient (the contract's ``patient_id``: a report for the phantom set) is kept at
``real_fraction`` when ``u(seed, patient) < real_fraction``, with ``u`` a uniform number in
[0, 1) from a SHA-256 hash of the seed and the patient id. So every image of a patient goes in
or out together, the 5% subset of a seed sits inside its 10% subset (the same ``u``, a higher
threshold), and another seed draws another subset. The kept share of images is close to, not
exactly, ``real_fraction`` (patients differ in image count); the cell records what it got.

Synthetic order. `hashed_order` ranks candidate items by the same kind of hash, so the ratio-1
set (the first N of the order) sits inside the ratio-4 set (the first 4N); `weighted_order`
does the same with weights (Efraimidis & Spirakis 2006: key ``u ** (1 / w)``, a weighted sample
without replacement), for the ``balanced`` prompt policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["hashed_order", "real_subset", "unit_hash", "weighted_order"]


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across runs, machines, processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def real_subset(patient_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Row indices (ascending) of the patients kept at ``fraction`` for ``seed`` (all rows at
    fraction >= 1)."""
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"real_fraction={fraction}: must be in (0, 1]")
    if float(fraction) >= 1.0:
        return np.arange(len(patient_ids), dtype=np.int64)
    u = {p: unit_hash("real", seed, p) for p in dict.fromkeys(patient_ids)}
    return np.array([i for i, p in enumerate(patient_ids) if u[p] < fraction], dtype=np.int64)


def hashed_order(keys: Sequence[str], seed: int, salt: str = "order") -> np.ndarray:
    """A seeded permutation of ``range(len(keys))``, by the hash of each key."""
    u = np.array([unit_hash(salt, seed, k) for k in keys])
    return np.argsort(u, kind="stable")


def weighted_order(keys: Sequence[str], weights: Sequence[float], seed: int,
                   salt: str = "order") -> np.ndarray:
    """A seeded order in which an item of weight ``w`` comes early ``w`` times as often: the
    order of a weighted sample without replacement (keys ``u ** (1 / w)``, descending)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(keys) or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("weighted_order: one positive finite weight per key")
    u = np.array([unit_hash(salt, seed, k) for k in keys])
    return np.argsort(-np.log(np.maximum(u, 1e-300)) / w, kind="stable")
