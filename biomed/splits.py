"""Train/validation/test assignment from a stable hash of an id.

One rule for the whole workbench: the split of an item depends only on the id of the unit that
must not leak between splits (patient id for images, report id for reports and their renders,
PMID for abstracts) and on the split fractions, never on the order, the seed or the machine. The
same patient therefore never lands in two splits, in any part of the workbench, in any run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def hash_fraction(key: str, salt: str = "biomed-split-v1") -> float:
    """A number in [0, 1) that depends only on ``key`` (sha256, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str | int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 names: Sequence[str] = SPLITS) -> str:
    """The split of one id: ``train`` / ``val`` / ``test`` by default (80/10/10)."""
    if len(fractions) != len(names) or any(f < 0 for f in fractions) \
            or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {list(fractions)} must be >= 0, one per split "
                         f"{list(names)}, and sum to 1")
    u = hash_fraction(str(key))
    edge = 0.0
    for name, frac in zip(names, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return names[-1]


def assign_splits(keys: Iterable[str | int], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  names: Sequence[str] = SPLITS) -> list[str]:
    return [assign_split(k, fractions, names) for k in keys]
