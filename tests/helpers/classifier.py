"""Tiny classifier builders for tests: `BlobData`, a seeded synthetic set under the dataset
contract with findings a tiny CNN learns in seconds, the tiny small_cnn overrides, and a random
small_cnn saved as train-classifier saves it (for tests where quality is not the point).

In `BlobData` a bright blob low in one lung field is an effusion on that side (the patient's
left is the image's right) and a large central disk is cardiomegaly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from biomed.imaging.data.contract import Table
from biomed.splits import SPLITS

BLOB_LABELS = ["cardiomegaly", "effusion", "effusion_left", "effusion_right"]
TINY_CNN = ["classifier.model.stem_width=8", "classifier.model.widths=[16,32]",
            "classifier.model.strides=[2,2]", "classifier.model.dropout=0.0"]
BLOB_TARGET = "tests.helpers.classifier.BlobData"



def blob_image(size: int, rng: np.random.Generator, side: str | None,
               big_heart: bool) -> np.ndarray:
    """Noise over a dim chest, a central disk (large: cardiomegaly) and an optional bright blob
    low in the patient's ``side`` lung (the patient's left is on the image's right)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.25 + 0.05 * rng.standard_normal((size, size))
    r = 0.24 if big_heart else 0.13
    img += 0.3 * (((yy - 0.55) ** 2 + (xx - 0.5) ** 2) < r ** 2)
    if side is not None:
        cx = (0.78 if side == "left" else 0.22) + rng.uniform(-0.05, 0.05)
        cy = 0.72 + rng.uniform(-0.06, 0.06)
        img += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.07 ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


class BlobData:
    """Blobs per split (``split`` seeds it), labels in `BLOB_LABELS` order; about one in ten
    cardiomegaly labels is unknown (NaN), to exercise the masked loss."""

    label_names = BLOB_LABELS

    def __init__(self, split: str = "train", size: int = 32, n: int | None = None,
                 seed: int = 0, name: str = "blobs"):
        n = n if n is not None else {"train": 320, "val": 96, "test": 128}[split]
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.name, self.split = name, split
        self.images, rows = [], []
        for _ in range(n):
            side = rng.choice(["left", "right", None, None])
            heart = bool(rng.random() < 0.4)
            self.images.append(blob_image(size, rng, side, heart))
            cardio = np.nan if rng.random() < 0.1 else float(heart)
            rows.append([cardio, float(side is not None), float(side == "left"),
                         float(side == "right")])
        self.labels = np.array(rows, dtype=np.float32).reshape(n, len(BLOB_LABELS))
        self.metadata = Table({"id": [f"{split}-{i}" for i in range(n)], "split": [split] * n})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "labels": self.labels[i].copy(), "report": "",
                "id": self.metadata["id"][i], "index": i}



def tiny_classifier_dir(run_dir: Path, labels: list[str], *, size: int = 32,
                        thresholds: dict[str, float] | None = None, seed: int = 0) -> Path:
    """A random small_cnn (seeded) saved as train-classifier saves it, in ``run_dir/classifier``;
    returns ``run_dir``. ``thresholds`` default to 0.5 for every label."""
    from biomed.imaging.classifier import model as C

    torch.manual_seed(seed)
    kwargs = {"stem_width": 8, "widths": [16, 32], "strides": [2, 2]}
    model = C.build_classifier(OmegaConf.create({"arch": "small_cnn", "name": "small_cnn",
                                                 "model": kwargs}), len(labels),
                               mean=0.4, std=0.2)
    config = {"format": C.FORMAT, "version": 1, "architecture": "small_cnn",
              "name": "small_cnn", "kwargs": kwargs, "labels": list(labels),
              "input_size": [size, size], "in_chans": 1,
              "normalization": {"mean": 0.4, "std": 0.2},
              "pixel_convention": C.PIXEL_CONVENTION,
              "thresholds": thresholds or {n: 0.5 for n in labels},
              "threshold_rule": "youden", "training_data": "test"}
    C.save_classifier(model, config, Path(run_dir) / "classifier", "card")
    return Path(run_dir)
