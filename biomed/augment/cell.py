"""One cell of the augmentation experiment: one classifier fit on a real subset plus synthetic
images, evaluated on the held-out real test split.

- Real subset: ``fraction`` of the real training split, nested by patient hash
  (`biomed.augment.subsets.real_subset`); validation is the whole real val split.
- Label set: fixed for every cell (the columns with both classes in the whole training pool),
  so that a finding without positives in a small subset still has a column.
- Normalisation and ``pos_weight`` come from the real subset (``reference`` of
  `fit_classifier`), never from the synthetic images.
- Steps: every cell of a fraction trains the same ``S`` optimizer steps (chosen once on
  validation, `biomed.augment.sweep`), and keeps the weights of its best periodic validation
  macro AUROC (``eval.keep_best``).
- Modes: ``mix`` trains on the union (`biomed.imaging.data.merge.MergeDataset`) for S steps;
  ``pretrain`` trains round(S * pretrain_share) steps on the synthetic set alone (its last
  weights kept), then the rest on the real subset starting from those weights with a new
  optimizer and a restarted schedule (warm-up and cosine decay again); ``real`` (ratio 0) is
  the baseline of both.

A cell's folder: ``classifier/`` (the model kept), ``pretrain/`` (the synthetic phase, pretrain
mode), ``predictions.npz`` (test probabilities, labels, ids, clusters = test report ids and
any subgroup columns), ``cell.json`` (what the cell is), ``metrics.json`` and ``DONE`` last.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.augment.subsets import real_subset
from biomed.errors import ConfigError
from biomed.imaging.data.contract import XrayDataset

__all__ = ["MODES", "SUBGROUP_COLUMNS", "Cell", "InMemory", "RealData", "cell_config", "run_cell"]

MODES = ("real", "mix", "pretrain")
SUBGROUP_COLUMNS = ("sex", "age_band", "view")  # metadata columns that give subgroup rows


@dataclass(frozen=True)
class Cell:
    """What one cell trains on (see the module docstring)."""

    fraction: float
    ratio: float
    mode: str  # real (ratio 0) | mix | pretrain
    source: str  # none | diffusion | phantom_oracle | duplicates
    seed: int
    shuffled_labels: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"cell mode {self.mode!r}: one of {', '.join(MODES)}")
        if (self.ratio == 0) != (self.mode == "real") or (self.ratio == 0) != (
                self.source == "none"):
            raise ConfigError(f"cell {self.name}: ratio 0 goes with mode real and source none")

    @property
    def name(self) -> str:
        tail = "-shuffled" if self.shuffled_labels else ""
        return (f"f{self.fraction:g}-r{self.ratio:g}-{self.mode}-{self.source}{tail}"
                f"-s{self.seed}")

    @property
    def baseline(self) -> Cell:
        return Cell(self.fraction, 0, "real", "none", self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(float(d["fraction"]), float(d["ratio"]), str(d["mode"]), str(d["source"]),
                   int(d["seed"]), bool(d.get("shuffled_labels", False)))


class InMemory(XrayDataset):
    """A dataset's rows with their images read once and resized to ``size`` (area average),
    kept in memory: the sweep trains at a smaller size than the data renders (the phantoms and
    the generator at 128 px, the cells at 64 px) with one resampling for real, oracle and
    generated images alike."""

    _row_attrs = ("labels", "_slot")

    def __init__(self, base: XrayDataset, size: Sequence[int], chunk: int = 512):
        from biomed.augment.synthetic import resize

        super().__init__(base.metadata, base.labels, base.label_names, split=base.split,
                         name=base.name)
        parts = [resize(np.stack([np.asarray(base.image(i), np.float32)
                                  for i in range(a, min(a + chunk, len(base)))]), size)
                 for a in range(0, len(base), chunk)]
        self._images = np.concatenate(parts) if parts else np.zeros((0, *size), np.float32)
        self._slot = np.arange(len(base), dtype=np.int64)
        self.item_columns = tuple(getattr(base, "item_columns", ()))

    def image(self, index: int) -> np.ndarray:
        return self._images[int(self._slot[index])]


class RealData:
    """The real splits of a data config, built once per process, and the fixed label set;
    ``image_size`` resizes every image (`InMemory`), None keeps the data's size."""

    def __init__(self, data_cfg: DictConfig, image_size: int | None = None):
        from biomed.imaging.classifier.data import select_labels
        from biomed.imaging.data.splits import build_splits

        splits = build_splits(data_cfg)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        self.native_size = tuple(int(v) for v in np.shape(self.train[0]["image"]))
        if image_size and (int(image_size),) * 2 != self.native_size:
            size = (int(image_size),) * 2
            self.train, self.val, self.test = (InMemory(ds, size)
                                               for ds in (self.train, self.val, self.test))
        self.name = str(data_cfg.get("name") or getattr(self.train, "name", "data"))
        self.label_names = [self.train.label_names[c] for c in select_labels(self.train, None)]
        self.size = tuple(int(v) for v in np.shape(self.train[0]["image"]))
        self._test: dict[str, Any] | None = None

    def subset(self, fraction: float, seed: int):
        return self.train.subset(real_subset(self.train.patient_ids, fraction, seed))

    def test_arrays(self) -> dict[str, Any]:
        """Test images (N x 1 x H x W), labels (label set order), ids, clusters, subgroups."""
        if self._test is None:
            import torch

            t = self.test
            cols = [t.label_names.index(n) for n in self.label_names]
            images = np.stack([np.asarray(t.image(i), np.float32) for i in range(len(t))])
            m = t.metadata
            self._test = {
                "images": torch.from_numpy(images)[:, None],
                "labels": np.asarray(t.labels)[:, cols].astype(np.float32),
                "ids": np.array([str(i) for i in m["id"]]),
                "clusters": np.array([str(p) for p in m["patient_id"]]),
                "subgroups": {c: np.array([str(v) for v in m[c]])
                              for c in SUBGROUP_COLUMNS if c in m}}
        return self._test


def cell_config(base: DictConfig, *, steps: int, seed: int, labels: list[str],
                eval_every: int, keep_best: bool = True) -> DictConfig:
    """The train-classifier config of a cell: ``base`` (conf/train_classifier.yaml as the sweep
    composed it) with the cell's steps, seed and label set, no time budget, no periodic
    checkpoints, the whole val split for the periodic evaluation and no bootstrap (the sweep's
    report computes the intervals)."""
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    cfg.seed = int(seed)
    cfg.classifier.labels = list(labels)
    cfg.trainer.max_steps = int(steps)
    cfg.trainer.max_time_s = None
    cfg.trainer.eval_every = int(eval_every)
    cfg.trainer.checkpoint_every = 0
    cfg.trainer.progress = False
    cfg.trainer.tensorboard = False
    cfg.trainer.resume = None
    cfg.eval.keep_best = bool(keep_best)
    cfg.eval.periodic_max_items = None
    cfg.eval.n_boot = 0
    cfg.eval.val_n_boot = 0
    return cfg


def _quiet(msg: str) -> None:
    pass


def run_cell(base: DictConfig, cell: Cell, data: RealData, synthetic, *, steps: int,
             out_dir: str | Path, eval_every: int, pretrain_share: float = 0.5,
             log=_quiet) -> dict[str, Any]:
    """Train, evaluate and save one cell (see the module docstring); a finished cell (its
    ``DONE``) is read back, an unfinished one is cleared and trained again."""
    from biomed.imaging.classifier.model import load_classifier, predict_batches
    from biomed.imaging.classifier.train import fit_classifier
    from biomed.imaging.data.merge import MergeDataset

    out = Path(out_dir)
    if (out / "DONE").exists():
        return json.loads((out / "metrics.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    real = data.subset(cell.fraction, cell.seed)
    if len(real) == 0:
        raise ConfigError(f"cell {cell.name}: the real subset is empty (real_fraction "
                          f"{cell.fraction} of {len(data.train)} rows)")
    cfg = cell_config(base, steps=steps, seed=cell.seed, labels=data.label_names,
                      eval_every=eval_every)
    splits = {"val": data.val, "test": data.test}
    n_syn = 0 if synthetic is None else len(synthetic)
    info: dict[str, Any] = {"n_real": len(real), "n_real_patients": len(set(real.patient_ids)),
                            "n_synthetic": n_syn, "steps": int(steps),
                            "dropped_diverged": getattr(synthetic, "dropped_diverged", 0)}
    if cell.mode == "pretrain":
        if not n_syn:
            raise ConfigError(f"cell {cell.name}: no synthetic images to pretrain on")
        if int(steps) < 2:
            raise ConfigError(f"cell {cell.name}: pretrain mode needs S >= 2 steps (one for "
                              f"each phase), not {steps}")
        first = max(1, min(int(steps) - 1, round(int(steps) * float(pretrain_share))))
        cfg1 = cell_config(base, steps=first, seed=cell.seed, labels=data.label_names,
                           eval_every=0, keep_best=False)  # its last weights are kept
        fit_classifier(cfg1, {**splits, "train": synthetic}, out / "pretrain", log,
                       reference=real)
        cfg.trainer.max_steps = int(steps) - first
        cfg.classifier.pretrained = str(out / "pretrain" / "classifier")
        info.update(pretrain_steps=first, finetune_steps=int(steps) - first)
        metrics = fit_classifier(cfg, {**splits, "train": real}, out, log, reference=real)
    else:
        train = real if not n_syn else MergeDataset([real, synthetic],
                                                    names=["real", cell.source])
        metrics = fit_classifier(cfg, {**splits, "train": train}, out, log, reference=real)

    model, config = load_classifier(out / "classifier")
    if list(config["labels"]) != data.label_names:
        raise ConfigError(f"{out}: the saved labels differ from the sweep's label set")
    test = data.test_arrays()
    probs = predict_batches(model, test["images"], int(cfg.eval.batch_size))
    np.savez_compressed(out / "predictions.npz", probs=probs.astype(np.float32),
                        labels=test["labels"], ids=test["ids"], clusters=test["clusters"],
                        label_names=np.array(data.label_names),
                        **{f"subgroup_{k}": v for k, v in test["subgroups"].items()})
    info["cell_seconds"] = round(time.perf_counter() - t0, 2)
    keep = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | type(None))}
    keep["last_fit_steps"] = keep.pop("steps", None)  # the real phase's, in pretrain mode
    record = {"cell": cell.to_dict(), **keep, **info}  # info's steps: the cell's S
    runs.write_json(out / "cell.json", cell.to_dict())
    runs.write_json(out / "metrics.json", record)
    (out / "DONE").write_text("")
    return record
