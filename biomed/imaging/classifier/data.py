"""What the classifier reads from a dataset in the contract (`biomed.imaging.data`): the label
columns it learns, batches of images and labels, and the pixel normalisation it stores.

Training (`biomed.imaging.classifier.train`) and evaluation (`biomed.imaging.classifier.evaluate`)
share these; nothing here loads a dataset: the caller hands it over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from biomed.errors import ConfigError

__all__ = ["Collate", "estimate_normalization", "preload", "select_labels", "spread_indices"]


def select_labels(dataset: Any, wanted: Sequence[str] | None) -> list[int]:
    """Label columns to learn: ``wanted`` by name, or (None) every column with both classes
    in ``dataset`` (the training split)."""
    names = list(dataset.label_names)
    if wanted is not None:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError(f"classifier.labels: {missing} not in the dataset's labels {names}")
        return [names.index(w) for w in wanted]
    y = np.asarray(dataset.labels)
    cols = [k for k in range(len(names)) if (y[:, k] == 1).any() and (y[:, k] == 0).any()]
    if not cols:
        raise ConfigError(f"{getattr(dataset, 'name', 'dataset')}: no label has both classes in "
                          f"the training split ({len(y)} rows)")
    return cols


class Collate:
    """Items -> ``{"image": B x 1 x H x W, "labels": B x K}`` for the chosen label columns."""

    def __init__(self, columns: Sequence[int]):
        self.columns = np.asarray(columns, dtype=np.int64)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        shapes = {np.shape(it["image"]) for it in items}
        if len(shapes) > 1:
            raise ConfigError(f"images of different sizes {sorted(shapes)} in one batch: set "
                              "data.size so that every image is resized alike")
        images = np.stack([np.asarray(it["image"], dtype=np.float32) for it in items])
        labels = np.stack([np.asarray(it["labels"], dtype=np.float32)[self.columns]
                           for it in items])
        return {"image": torch.from_numpy(images)[:, None], "labels": torch.from_numpy(labels)}


def spread_indices(n: int, k: int | None) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them for k None)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(k)).round().astype(np.int64))


def estimate_normalization(dataset: Any, sample: int = 512) -> tuple[float, float]:
    """Pixel mean and standard deviation of up to ``sample`` evenly spread training images."""
    imgs = np.stack([np.asarray(dataset[int(i)]["image"], np.float32)
                     for i in spread_indices(len(dataset), sample)])
    return float(imgs.mean()), float(max(imgs.std(), 1e-3))


def preload(dataset: Any, columns: Sequence[int],
            limit: int | None) -> dict[str, torch.Tensor]:
    """One batch of up to ``limit`` evenly spread items (the periodic validation set)."""
    idx = spread_indices(len(dataset), limit)
    return Collate(columns)([dataset[int(i)] for i in idx])
