"""The dataset contract: what every chest X-ray dataset of the workbench exposes.

Every dataset a model trains or is evaluated on (the real-data loaders of
`biomed.imaging.data.files`, the phantom set `biomed.imaging.phantom.dataset.PhantomIU`, the
concatenation of `biomed.imaging.data.merge`) is an `XrayDataset`:

- ``labels``: N x K float32, 1 / 0 / NaN (NaN = unknown); ``label_names``: the K names.
- ``metadata``: a row-aligned `Table` with at least ``id``, ``patient_id`` (the unit that must
  not leak between splits) and ``split``; ``ids`` / ``patient_ids`` are its columns.
- ``ds[i]``: a dict with ``image`` (float32 H x W in [0, 1], lungs dark:
  `biomed.imaging.core.pixels`), ``labels`` (K float32), ``id``, ``index``, the columns a
  dataset names in ``item_columns`` (``patient_id`` for the loaders) and, for a dataset with
  report text, ``report`` ("" where a row's report is unknown, so that batches still collate).
- ``reports()``: the report text of every row, aligned with the rows ("" where a row has none,
  every row "" for a dataset without reports), read without decoding any image: the one way
  CLIP and diffusion read a dataset's text.
- ``subset(indices)`` / ``with_split(split)``: new datasets of some rows, sharing the images.

A subclass builds its `Table` and label matrix, calls ``XrayDataset.__init__`` and implements
``image(index)``; everything else comes from here. A subclass that keeps more per-row arrays
(cache slots, a second label matrix) names them in ``_row_attrs`` so that ``subset`` takes them
along.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from biomed.errors import ConfigError
from biomed.splits import SPLITS

__all__ = ["Table", "XrayDataset"]


class Table:
    """A small column-oriented table: row-aligned metadata without pandas.

    ``t["view"]`` is a column (a list), ``t[3]`` a row (a dict), ``len(t)`` the row count.
    Columns are lists so that 377,000 MIMIC rows cost a few lists rather than 377,000 dicts.
    """

    def __init__(self, columns: Mapping[str, Sequence[Any]] | None = None):
        self._cols: dict[str, list] = {k: v if type(v) is list else list(v)
                                       for k, v in (columns or {}).items()}
        lengths = {len(v) for v in self._cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns differ in length: {sorted(lengths)}")
        self._n = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self._n

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._cols[key]
        i = range(self._n)[key]
        return {k: v[i] for k, v in self._cols.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            yield self[i]

    def __repr__(self) -> str:
        return f"Table({self._n} rows: {', '.join(self._cols)})"

    def get(self, name: str, default: Any = None) -> Any:
        """A column, or ``default`` when there is no such column."""
        return self._cols.get(name, default)

    def add(self, name: str, values: Sequence[Any]) -> None:
        """Add or replace a column."""
        if self._cols and len(values) != self._n:
            raise ValueError(f"column {name!r} has {len(values)} values for {self._n} rows")
        self._cols[name] = list(values)
        self._n = len(values)

    def take(self, indices: Sequence[int]) -> Table:
        """The rows at ``indices``, in that order."""
        return Table({k: [v[i] for i in indices] for k, v in self._cols.items()})

    def to_dicts(self) -> list[dict[str, Any]]:
        return list(self)


class XrayDataset(Dataset):
    """The base class of every dataset of the contract (see the module docstring).

    Args:
        metadata: one row per item, with at least ``id``, ``patient_id`` and ``split``.
        labels: N x K label values (1 / 0 / NaN); stored as float32.
        label_names: the K label names.
        split: the split this dataset holds (``train`` / ``val`` / ``test``), None for all rows.
        transform: applied to the image array of each item.
        name: a short name for messages (default: the class's ``name``).
    """

    name = "xray"
    #: metadata columns copied into every item besides ``id`` (and ``report``).
    item_columns: tuple[str, ...] = ()
    #: per-row arrays that `subset` takes along with ``metadata`` (None entries are skipped).
    _row_attrs: tuple[str, ...] = ("labels",)

    def __init__(self, metadata: Table, labels: np.ndarray, label_names: Sequence[str], *,
                 split: str | None = None, transform: Callable | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        if name:
            self.name = name
        if "id" not in metadata:
            raise ValueError(f"{self.name}: the metadata table has no 'id' column")
        self.metadata: Table = metadata
        self.labels: np.ndarray = np.asarray(labels, dtype=np.float32).reshape(
            len(metadata), len(label_names))
        self.label_names: list[str] = list(label_names)
        self.split = split
        self.transform = transform

    # -- what a subclass provides ---------------------------------------------------------

    def image(self, index: int) -> np.ndarray:
        """The image of a row in the workbench convention (float32 H x W in [0, 1])."""
        raise NotImplementedError(f"{type(self).__name__} does not implement image()")

    # -- rows -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def ids(self) -> list[str]:
        return self.metadata["id"]

    @property
    def patient_ids(self) -> list[str]:
        return self.metadata["patient_id"]

    def _take(self, keep: Sequence[int]) -> None:
        """Keep only the rows at ``keep`` (in place): metadata and every ``_row_attrs`` array."""
        keep = np.asarray(keep, dtype=np.int64)
        self.metadata = self.metadata.take(keep)
        for attr in self._row_attrs:
            values = getattr(self, attr, None)
            if values is not None:
                setattr(self, attr, values[keep])

    def subset(self, indices: Sequence[int]) -> XrayDataset:
        """A new dataset of the rows at ``indices``, in that order (sharing the images)."""
        new = copy.copy(self)
        new._take(indices)
        return new

    def with_split(self, split: str) -> XrayDataset:
        """The rows of one split, without reading the tables again: build the dataset once
        with ``split=None`` and take train, val and test from it."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
        new = self.subset([i for i, s in enumerate(self.metadata["split"]) if s == split])
        new.split = split
        return new

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per label: how many rows are positive, negative and unknown."""
        out = {}
        for j, n in enumerate(self.label_names):
            col = self.labels[:, j]
            out[n] = {"positive": int(np.sum(col == 1)), "negative": int(np.sum(col == 0)),
                      "unknown": int(np.sum(np.isnan(col)))}
        return out

    # -- report text ----------------------------------------------------------------------

    @property
    def has_reports(self) -> bool:
        """Whether rows carry report text (items then have a ``report`` key)."""
        return "report" in self.metadata

    def report(self, index: int) -> str:
        """The report text of a row ("" when unknown)."""
        column = self.metadata.get("report")
        return str(column[index] or "") if column is not None else ""

    def reports(self) -> list[str]:
        """The report text of every row, in row order ("" where unknown); no image is read."""
        column = self.metadata.get("report")
        if column is not None:
            return [str(t or "") for t in column]
        if self.has_reports:
            return [self.report(i) for i in range(len(self))]
        return [""] * len(self)

    # -- items ----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        m = self.metadata
        item = {"image": img, "labels": self.labels[index].copy(), "id": m["id"][index],
                **{c: m[c][index] for c in self.item_columns}, "index": index}
        if self.has_reports:
            item["report"] = self.report(index)
        return item

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
                f"split={self.split!r}, labels={len(self.label_names)})")
