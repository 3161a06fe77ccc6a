"""Several datasets of the contract as one, in the manner of torchxrayvision's ``Merge_Dataset``.

The augmentation loop adds synthetic images to a real training split this way
(``MergeDataset([real_train, synthetic])``); any datasets of the contract
(`biomed.imaging.data.contract.XrayDataset`) merge the same way:

- Rows: every source's rows in order, source after source; images are read from the source
  (its ``image``; the sources' own ``transform`` is not applied, the merged one is).
- Labels: the union of the sources' label names (first appearance first); a label a source
  does not have is NaN (unknown) on its rows, which a masked loss skips. Merge sources in one
  label space (``labels=canonical`` for real data) for the columns to line up.
- Metadata: the union of the sources' columns ("" where a source lacks one) and ``source``,
  the name of the dataset a row came from (a source's own ``source`` column, such as the
  phantom's iu / template, is kept as ``source_kind``). ``id`` and ``patient_id`` are prefixed
  with ``<source>:``, so ids stay unique and patients of different datasets stay apart; the
  ``split`` column is the source's.
- Reports: ``reports()`` and items' ``report`` pass through to the sources ("" on the rows of
  a source without report text); the report columns are not copied, so that nothing (a MIMIC
  report file per row) is read up front.

``subset`` and ``with_split`` work as for any dataset of the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.data.contract import Table, XrayDataset

__all__ = ["MergeDataset"]

_NOT_COPIED = ("report", "report_path")  # reached through the source's report()


class MergeDataset(XrayDataset):
    """The rows of ``datasets`` as one dataset.

    Args:
        datasets: the sources (datasets of the contract), in row order.
        names: one name per source, used in ``source`` and the id prefixes (default: each
            dataset's ``name``; they must differ).
        transform: applied to each item's image.
        name: a short name for messages.
    """

    name = "merge"
    item_columns = ("patient_id", "source")
    _row_attrs = ("labels", "_src", "_row")

    def __init__(self, datasets: Sequence[XrayDataset], *, names: Sequence[str] | None = None,
                 transform: Callable | None = None, name: str | None = None) -> None:
        sources = list(datasets)
        if not sources:
            raise ConfigError("MergeDataset: no datasets to merge")
        for ds in sources:
            if not isinstance(ds, XrayDataset):
                raise ConfigError(f"MergeDataset: {type(ds).__name__} is not a dataset of the "
                                  "contract (biomed.imaging.data.contract.XrayDataset)")
        names = [str(n) for n in (names if names is not None else [ds.name for ds in sources])]
        if len(names) != len(sources) or len(set(names)) != len(names):
            raise ConfigError(f"MergeDataset: the sources need distinct names, one each (got "
                              f"{names}); pass names=[...]")
        self.sources: list[XrayDataset] = sources
        self.source_names: list[str] = names
        label_names = list(dict.fromkeys(n for ds in sources for n in ds.label_names))
        splits = {ds.split for ds in sources}
        super().__init__(_merged_metadata(sources, names), _merged_labels(sources, label_names),
                         label_names, split=splits.pop() if len(splits) == 1 else None,
                         transform=transform, name=name)
        self._src = np.concatenate([np.full(len(ds), k, np.int64)
                                    for k, ds in enumerate(sources)])
        self._row = np.concatenate([np.arange(len(ds), dtype=np.int64) for ds in sources])

    def image(self, index: int) -> np.ndarray:
        return self.sources[int(self._src[index])].image(int(self._row[index]))

    @property
    def has_reports(self) -> bool:
        return any(ds.has_reports for ds in self.sources)

    def report(self, index: int) -> str:
        return self.sources[int(self._src[index])].report(int(self._row[index]))

    def reports(self) -> list[str]:
        """Every row's report text, read from each source's rows in one call per source."""
        out = [""] * len(self)
        for k, ds in enumerate(self.sources):
            where = np.flatnonzero(self._src == k)
            if len(where) and ds.has_reports:
                texts = ds.subset(self._row[where]).reports()
                for i, text in zip(where, texts, strict=True):
                    out[i] = text
        return out

    def __repr__(self) -> str:
        counts = {n: int(np.sum(self._src == k)) for k, n in enumerate(self.source_names)}
        return (f"MergeDataset(n={len(self)}, split={self.split!r}, "
                f"labels={len(self.label_names)}, sources={counts})")


def _merged_labels(sources: Sequence[XrayDataset], label_names: list[str]) -> np.ndarray:
    """The sources' label matrices stacked on the union of their names (NaN where missing)."""
    col = {n: j for j, n in enumerate(label_names)}
    out = np.full((sum(len(ds) for ds in sources), len(label_names)), np.nan, np.float32)
    start = 0
    for ds in sources:
        out[start: start + len(ds), [col[n] for n in ds.label_names]] = ds.labels
        start += len(ds)
    return out


def _merged_metadata(sources: Sequence[XrayDataset], names: Sequence[str]) -> Table:
    """The union of the sources' metadata columns, with ``source`` and prefixed ids."""
    renamed = {"source": "source_kind"}
    columns = list(dict.fromkeys(["id", "patient_id", "split"] + [
        renamed.get(c, c) for ds in sources for c in ds.metadata.columns
        if c not in _NOT_COPIED]))
    out: dict[str, list[Any]] = {c: [] for c in [*columns, "source"]}
    for ds, name in zip(sources, names, strict=True):
        meta, n = ds.metadata, len(ds)
        own = {renamed.get(c, c): meta[c] for c in meta.columns if c not in _NOT_COPIED}
        own["id"] = [f"{name}:{i}" for i in meta["id"]]
        own["patient_id"] = [f"{name}:{p}" for p in meta.get("patient_id", meta["id"])]
        for c in columns:
            out[c].extend(own[c] if c in own else [""] * n)
        out["source"].extend([name] * n)
    return Table(out)
