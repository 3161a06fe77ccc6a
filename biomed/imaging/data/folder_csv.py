"""``data=folder_csv``: any folder of images with a CSV of paths and label columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biomed.errors import InputError
from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import (
    Columns,
    csv_header,
    existing_folder,
    iter_csv,
    label_matrix,
    label_values,
    resolve_uncertain,
)
from biomed.imaging.data.files import FileDataset, normal_view
from biomed.splits import SPLITS

__all__ = ["FolderCSV"]


_RESERVED = ("id", "patient_id", "report", "split", "view")


class FolderCSV(FileDataset):
    """A folder of images and a CSV: a ``path`` column (relative to ``root`` or absolute) and
    one column per label (1, 0, -1 uncertain, blank unknown).

    Optional columns: ``id`` (default: the path), ``patient_id`` (default: the id, i.e. every
    image its own patient: give it whenever patients have several images), ``report``,
    ``view`` and ``split`` (train / val / validate / test: the official split). Label columns
    are ``label_columns``, or every other column. Columns named like canonical labels map onto
    them as they are; ``canonical_map`` ({column: [canonical, ...]}) maps others.
    """

    name = "folder_csv"

    def __init__(self, root: str | Path, *, csv_file: str | Path = "labels.csv",
                 path_column: str = "path", label_columns: Sequence[str] | None = None,
                 uncertain: str = "ignore",
                 canonical_map: Mapping[str, Sequence[str]] | None = None,
                 **options: Any) -> None:
        root = existing_folder(root, "image")
        csv_path = Path(csv_file).expanduser()
        csv_path = csv_path if csv_path.is_absolute() else root / csv_path
        header = csv_header(csv_path)
        names = list(label_columns) if label_columns is not None else [
            c for c in header if c and c != path_column and c not in _RESERVED]
        if not names:
            raise InputError(csv_path, f"no label columns besides {path_column!r}")
        cols = Columns()
        rows: list[list[float]] = []
        for line, row in iter_csv(csv_path, [path_column, *names]):
            rid = row.get("id") or row[path_column]
            p = row[path_column]
            rec = {"id": rid, "patient_id": row.get("patient_id") or rid,
                   "path": p if Path(p).is_absolute() else f"{root}/{p}",
                   "view": normal_view(row.get("view", ""))}
            if "split" in header:
                rec["official_split"] = _folder_split(row["split"], csv_path, line)
            if "report" in header:
                rec["report"] = row["report"]
            cols.append(rec)
            rows.append(label_values(row, names, csv_path, line))
        values = resolve_uncertain(label_matrix(rows, len(names)), uncertain)
        mapping = dict(canonical_map) if canonical_map is not None else {
            n: (n,) for n in names if n in L.CANONICAL_NAMES}
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, mapping), **options)


def _folder_split(raw: str, path: Path, line: int) -> str:
    s = {"validate": "val", "valid": "val", "validation": "val"}.get(raw.strip(), raw.strip())
    if s not in (*SPLITS, ""):
        raise InputError(path, f"line {line}: unknown split {raw!r} (train, val, test)")
    return s
