"""A cell's synthetic training set: which prompts and seeds (nested by ratio), and the dataset.

`plan` picks the first ``n`` items of a seeded order of the prompt pool (`biomed.augment.
subsets`), so the ratio-1 set of a cell is the first quarter of its ratio-4 set; item ``k`` has
its own image seed (`biomed.augment.sources.oracle_seed`, apart from the dataset's render
seeds), the same for the generator and the oracle, so the two sources draw the same prompts.
When ``n`` exceeds the pool the order repeats with new seeds.

`SyntheticSet` is a dataset of the contract (`biomed.imaging.data.contract.XrayDataset`):
images from the cache (resized to the real images' size when the generator's differs), the
prompt's labels (exact for the oracle; side columns unknown for a generated image, see
`biomed.augment.prompts`), ``patient_id`` ``syn:<prompt key>``, the prompt as ``report``.
``shuffled_labels`` permutes the label rows (the control that must not help); images that the
sampler flagged as diverged are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biomed.augment.cache import Request, SyntheticCache
from biomed.augment.prompts import PromptPool
from biomed.augment.sources import findings_key, oracle_seed
from biomed.augment.subsets import hashed_order, weighted_order
from biomed.imaging.data.contract import Table, XrayDataset

__all__ = ["Planned", "SyntheticSet", "build_synthetic", "plan", "requests", "resize"]


@dataclass(frozen=True)
class Planned:
    """Item ``k`` of a synthetic set: a prompt of the pool and an image seed."""

    prompt: int
    seed: int


def plan(pool: PromptPool, n: int, synthetic_seed: int, policy: str = "pool",
         avoid_seeds: frozenset[int] = frozenset()) -> list[Planned]:
    """The first ``n`` items of the pool's seeded order (nested in ``n``)."""
    if n <= 0 or len(pool) == 0:
        return []
    if policy == "balanced":
        order = weighted_order(pool.keys, pool.weights, synthetic_seed, salt="prompts")
    else:
        order = hashed_order(pool.keys, synthetic_seed, salt="prompts")
    return [Planned(int(order[k % len(order)]), oracle_seed(synthetic_seed, k, avoid_seeds))
            for k in range(int(n))]


def requests(pool: PromptPool, items: Sequence[Planned], source: str) -> list[Request]:
    """The cache requests of planned items for ``source`` (the oracle draws the findings)."""
    oracle = source == "phantom_oracle"
    return [Request(pool.texts[p.prompt], p.seed,
                    findings_key(pool.findings[p.prompt]) if oracle and pool.findings else None)
            for p in items]


def resize(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """N x H x W float32 images to ``size`` (area-averaged down, bilinear up)."""
    size = tuple(int(s) for s in size)
    if images.shape[1:] == size or len(images) == 0:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
    down = size[0] < images.shape[1]
    y = F.interpolate(x, size=size, mode="area") if down else F.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[:, 0].clamp(0, 1).numpy()


class SyntheticSet(XrayDataset):
    """Synthetic training images with their prompts' labels (see the module docstring)."""

    name = "synthetic"
    item_columns = ("patient_id", "source")
    _row_attrs = ("labels", "_slot")

    def __init__(self, images: np.ndarray, labels: np.ndarray, label_names: Sequence[str], *,
                 ids: Sequence[str], prompt_keys: Sequence[str], texts: Sequence[str],
                 source: str, name: str | None = None):
        metadata = Table({"id": list(ids), "patient_id": [f"syn:{k}" for k in prompt_keys],
                          "split": ["train"] * len(ids), "source": [source] * len(ids),
                          "report": list(texts)})
        super().__init__(metadata, labels, label_names, split="train", name=name)
        self._images = np.asarray(images, np.float32)
        self._slot = np.arange(len(ids), dtype=np.int64)
        self.dropped_diverged = 0

    def image(self, index: int) -> np.ndarray:
        return self._images[int(self._slot[index])]


def build_synthetic(pool: PromptPool, items: Sequence[Planned], source: str,
                    cache: SyntheticCache, size: Sequence[int], *,
                    shuffled_labels: bool = False, label_seed: int = 0) -> SyntheticSet:
    """The dataset of planned items whose images are in ``cache`` (built beforehand)."""
    reqs = requests(pool, items, source)
    diverged = cache.diverged()
    keep = [i for i, r in enumerate(reqs) if not diverged.get(r.key, False)]
    images = resize(cache.load([reqs[i].key for i in keep]), size)
    idx = np.array([items[i].prompt for i in keep], dtype=np.int64)
    exact = source == "phantom_oracle"
    base = pool.labels if exact else pool.text_labels
    labels = base[idx] if len(idx) else np.zeros((0, len(pool.label_names)), np.float32)
    if shuffled_labels and len(labels):
        labels = labels[np.random.default_rng([label_seed, 7]).permutation(len(labels))]
    out = SyntheticSet(images, labels, pool.label_names,
                       ids=[f"{source}-{items[i].prompt}-{items[i].seed}" for i in keep],
                       prompt_keys=[pool.keys[j] for j in idx],
                       texts=[pool.texts[j] for j in idx], source=source, name=source)
    out.dropped_diverged = len(reqs) - len(keep)
    return out
