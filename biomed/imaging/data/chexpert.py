"""``data=chexpert``: CheXpert v1.0 (its train.csv and valid.csv, small or full resolution)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biomed.errors import InputError
from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import (
    Columns,
    existing_folder,
    iter_csv,
    label_matrix,
    label_values,
    resolve_uncertain,
)
from biomed.imaging.data.files import FileDataset, normal_view

__all__ = ["CheXpert"]


_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


class CheXpert(FileDataset):
    """CheXpert v1.0 (Irvin et al., AAAI 2019): 224,316 radiographs of 65,240 patients.

    ``root`` is the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder holding ``train.csv``
    and ``valid.csv``; the CSVs' ``Path`` column starts with that folder's name, which is
    stripped. Values: 1 positive, 0 negative, -1 uncertain (``uncertain``: ``ignore`` -> NaN,
    ``ones``, ``zeros``), blank not mentioned (NaN). The official split is train.csv -> train,
    valid.csv -> val (no public test list), so ``split_by="auto"`` hashes patients instead.
    """

    name = "chexpert"
    official_by_default = False

    def __init__(self, root: str | Path, *, csv_files: Sequence[str] | None = None,
                 uncertain: str = "ignore", **options: Any) -> None:
        root = existing_folder(root, "CheXpert")
        if csv_files is None:
            csv_files = ["train.csv"] + (["valid.csv"] if (root / "valid.csv").is_file() else [])
        cols = Columns()
        rows: list[list[float]] = []
        for csv_name in csv_files:
            _read_chexpert_csv(root, Path(csv_name), cols, rows)
        names = L.CHEXPERT_LABELS
        values = resolve_uncertain(label_matrix(rows, len(names)), uncertain)
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.CHEXPERT_TO_CANONICAL),
            **options)


def _read_chexpert_csv(root: Path, csv_name: Path, cols: Columns,
                       rows: list[list[float]]) -> None:
    """Append one CheXpert CSV's rows (metadata to ``cols``, raw values to ``rows``)."""
    names = L.CHEXPERT_LABELS
    path = csv_name if csv_name.is_absolute() else root / csv_name
    official = ("val" if csv_name.name.startswith("valid") else
                "test" if csv_name.name.startswith("test") else "train")
    for line, row in iter_csv(path, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                                      *names]):
        rel = row["Path"]
        if rel.startswith("CheXpert-v1.0") and "/" in rel:
            rel = rel.split("/", 1)[1]
        m = _CHEXPERT_PATIENT.search(rel)
        if m is None:
            raise InputError(path, f"line {line}: no patient id in Path {row['Path']!r}")
        frontal = row["Frontal/Lateral"] == "Frontal"
        cols.append({
            "id": rel.rsplit(".", 1)[0], "patient_id": m.group(1), "path": f"{root}/{rel}",
            "view": normal_view(row["AP/PA"]) if frontal else "LATERAL",
            "official_split": official, "source_csv": path.name,
            **{k: row[k] for k in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")}})
        rows.append(label_values(row, names, path, line))
