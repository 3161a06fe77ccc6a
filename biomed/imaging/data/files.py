"""The base of the real-data loaders: image files listed in a table, with the user's options.

Every loader (MIMIC-CXR-JPG, CheXpert, NIH ChestX-ray14, OpenI, PadChest, a generic folder +
CSV; one module each in this package) parses its files into a `Table` and a label matrix and
hands them to `FileDataset`, which adds what every real dataset shares, in the manner of
torchxrayvision:

- Label spaces: a dataset's own label names are the default (``labels="dataset"``);
  ``labels="canonical"`` maps them onto the workbench vocabulary (`biomed.imaging.core.labels`).
  Both stay available as ``dataset_labels`` / ``dataset_label_names``.
- Splits: ``split="train" | "val" | "test"`` selects rows by patient
  (`biomed.imaging.data.splits.row_splits`: ``split_by="hash"`` or ``"official"``; ``"auto"``,
  the default, takes the official split where the dataset has one). Parsing a 160k-row table
  takes seconds: build once with ``split=None`` and take ``ds.with_split(s)``.
- Views: ``views`` keeps only some views (``PA``, ``AP``, ``LATERAL``, ... or ``frontal`` /
  ``lateral``).
- Images: ``size`` resizes every image (squashed to a square for an int: the aspect ratio of a
  radiograph is not a finding); with ``cache_dir`` the images are decoded and resized once into
  a memory-mapped cache (`biomed.imaging.data.image_cache`) that every epoch and run reads, and
  unreadable files are dropped from the dataset with their reason in ``skipped``.

The metadata has the columns ``id``, ``patient_id``, ``path``, ``view``, ``split`` and the
dataset's own fields; report text comes from a ``report`` column or, read on demand, from a
``report_path`` column. Missing files and malformed tables raise `InputError` naming the file
and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.core import labels as L
from biomed.imaging.core import pixels
from biomed.imaging.data.contract import Table, XrayDataset
from biomed.imaging.data.image_cache import ImageCache
from biomed.imaging.data.read import read_xray
from biomed.imaging.data.splits import SPLIT_BY, row_splits
from biomed.splits import DEFAULT_FRACTIONS, SPLITS

__all__ = ["LABEL_SPACES", "VIEW_ALIASES", "FileDataset", "normal_view"]

log = logging.getLogger(__name__)

LABEL_SPACES = ("dataset", "canonical")
VIEW_ALIASES = {"frontal": ("PA", "AP"), "lateral": ("LATERAL", "LL", "RL")}


def normal_view(raw: str) -> str:
    """A view name as the loaders store it (upper case; ``L`` / ``LAT`` -> ``LATERAL``,
    PadChest's ``AP_horizontal`` -> ``AP``)."""
    v = (raw or "").strip().upper()
    return {"L": "LATERAL", "AP_HORIZONTAL": "AP", "LAT": "LATERAL"}.get(v, v)


class FileDataset(XrayDataset):
    """Base of every real-data loader: label spaces, splits, views, resizing and the image cache.

    Loaders parse their files into a `Table` (with at least ``id``, ``patient_id``, ``path``
    and ``view``; optionally ``official_split``, ``report`` or ``report_path``) and a label
    matrix, then call this constructor with the user's options:

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or None (every row).
        split_by: ``"auto"``, ``"hash"`` (80/10/10 by patient, `biomed.splits`) or
            ``"official"``.
        fractions: train/val/test fractions for ``hash`` (and the train/val ratio inside an
            official train+val list, as NIH's).
        labels: ``"dataset"`` (the dataset's own names) or ``"canonical"``.
        views: keep only these views (``PA``, ``AP``, ``LATERAL``, ... or ``frontal`` /
            ``lateral``); None keeps all.
        size: resize every image to this (int: square; or (height, width)).
        cache_dir: decode and resize once into a memory-mapped cache there (needs ``size``).
        transform: applied to the image array of each item.
        name: a short name for messages (defaults to the config name).
        progress: show a progress bar while building the cache.
        workers: threads decoding while building the cache (default: up to 4).
        prompt_policy: what provenance of images generated from this dataset's reports records
            of each prompt: ``"hash"`` (the default: a real dataset's reports may not be
            redistributed) or ``"text"`` (public report text); see
            `biomed.imaging.dicom.write.PROMPT_POLICIES`.
    """

    name = "xray"
    #: When ``split_by="auto"``: use the official split if the dataset has one.
    official_by_default = True
    item_columns = ("patient_id",)
    _row_attrs = ("labels", "dataset_labels", "_slots")

    def __init__(self, table: Table, values: np.ndarray, names: Sequence[str], *,
                 canonical: Callable[[], np.ndarray] | None = None,
                 split: str | None = None, split_by: str = "auto",
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, labels: str = "dataset",
                 views: Sequence[str] | None = None, size: int | Sequence[int] | None = None,
                 cache_dir: str | Path | None = None, transform: Callable | None = None,
                 name: str | None = None, progress: bool = True,
                 workers: int | None = None, prompt_policy: str = "hash") -> None:
        from biomed.imaging.dicom.write import check_prompt_policy

        self.prompt_policy = check_prompt_policy(prompt_policy)
        name = name or self.name
        if labels not in LABEL_SPACES:
            raise ConfigError(f"labels={labels!r}: choose 'dataset' or 'canonical'")
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLITS)} or null")
        if split_by not in SPLIT_BY:
            raise ConfigError(f"split_by={split_by!r}: choose one of {', '.join(SPLIT_BY)}")
        values = np.asarray(values, dtype=np.float32).reshape(len(table), len(names))
        self.dataset_labels: np.ndarray = values
        self.dataset_label_names: list[str] = list(names)
        self.label_space = labels
        if labels == "canonical":
            if canonical is None:
                raise ConfigError(f"{name}: no mapping onto the canonical labels")
            label_values, label_names = canonical(), L.CANONICAL_NAMES
        else:
            label_values, label_names = values, names
        table.add("split", row_splits(table, split_by, fractions,
                                      official_by_default=self.official_by_default, name=name))
        super().__init__(table, label_values, label_names, split=split, transform=transform,
                         name=name)
        self.size: tuple[int, int] | None = (
            None if size is None else
            (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1])))
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of rows dropped as unreadable
        self._cache: ImageCache | None = None
        self._slots: np.ndarray | None = None

        keep = np.arange(len(table))
        if views:
            keep = keep[self._view_mask(views)[keep]]
        if split is not None:
            col = self.metadata["split"]
            keep = np.array([i for i in keep if col[i] == split], dtype=np.int64)
        if len(keep) != len(table):
            self._take(keep)
        if cache_dir is not None:
            self._build_cache(cache_dir, progress, workers)

    # -- construction helpers -------------------------------------------------------------

    def _view_mask(self, views: Sequence[str]) -> np.ndarray:
        wanted: set[str] = set()
        for v in views:
            wanted.update(VIEW_ALIASES.get(str(v).lower(), (str(v).upper(),)))
        col = self.metadata["view"]
        if not any(col):
            raise ConfigError(f"{self.name}: views={list(views)} but this dataset has no view "
                              "information; use views=null")
        return np.array([v in wanted for v in col], dtype=bool)

    def _build_cache(self, cache_dir: str | Path, progress: bool, workers: int | None) -> None:
        if self.size is None:
            raise ConfigError(f"{self.name}: cache_dir needs a size (the cache stores resized "
                              "images)")
        self._cache = ImageCache(cache_dir, self.size)
        res = self._cache.build(self.metadata["path"], self._decode_for_cache,
                                variant=self.cache_variant, workers=workers, progress=progress,
                                desc=f"{self.name}: caching")
        keep = [i for i, s in enumerate(res.slots) if s is not None]
        paths = self.metadata["path"]
        self.skipped = [(paths[i], res.bad.get(paths[i], "unreadable"))
                        for i, s in enumerate(res.slots) if s is None]
        self._slots = np.array([s if s is not None else -1 for s in res.slots], dtype=np.int64)
        if self.skipped:
            log.warning("%s: skipped %d of %d image(s) that could not be read (e.g. %s: %s)",
                        self.name, len(self.skipped), len(paths), *self.skipped[0])
            self._take(keep)

    @property
    def cache_variant(self) -> str:
        """Names the decoder settings in cache keys (a subclass reading differently changes it)."""
        return "v1"

    @staticmethod
    def _decode_for_cache(path: Path, size: tuple[int, int]) -> np.ndarray:
        return read_xray(path, size)

    # -- rows, reports and images ---------------------------------------------------------

    @property
    def paths(self) -> list[str]:
        return self.metadata["path"]

    @property
    def has_reports(self) -> bool:
        return "report" in self.metadata or "report_path" in self.metadata

    def report(self, index: int) -> str:
        """The report text of a row ("" when unknown): the ``report`` column, else the file of
        ``report_path`` read by the loader's ``_read_report``."""
        if "report" in self.metadata:
            return self.metadata["report"][index]
        if "report_path" in self.metadata:
            return self._read_report(self.metadata["report_path"][index])
        return ""

    def _read_report(self, path: str) -> str:
        return ""

    def image(self, index: int) -> np.ndarray:
        """The image of a row in the workbench convention (resized when ``size`` is set)."""
        if self._slots is not None and self._cache is not None:
            return self._cache.read(int(self._slots[index]))
        img = read_xray(self.metadata["path"][index], self.size)
        return pixels.resize(img, self.size) if self.size is not None else img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, split={self.split!r}, "
                f"labels={self.label_space!r} ({len(self.label_names)}), size={self.size})")
