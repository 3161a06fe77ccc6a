"""``data=mimic_cxr_jpg``: MIMIC-CXR-JPG v2.0.0, with the MIMIC-CXR report text when given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomed.errors import InputError
from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import (
    Columns,
    existing_folder,
    find_file,
    iter_csv,
    label_matrix,
    label_values,
    resolve_uncertain,
)
from biomed.imaging.data.files import FileDataset, normal_view
from biomed.imaging.reports.mimic import mimic_report_text
from biomed.splits import SPLITS

__all__ = ["MimicCxrJpg"]


class MimicCxrJpg(FileDataset):
    """MIMIC-CXR-JPG v2.0.0 (Johnson et al., PhysioNet): 377,110 JPEGs of 65,379 patients.

    ``root`` holds ``mimic-cxr-2.0.0-metadata.csv``, ``-chexpert.csv`` and ``-split.csv``
    (plain or .gz) and ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` (or ``image_dir`` holds
    ``p10/...``). Labels are the CheXpert labeler's 14, per study (every image of a study
    shares them; studies missing from the label CSV are all NaN); ``uncertain`` resolves -1.
    ``reports_dir``, when given, is the folder holding the MIMIC-CXR reports tree
    ``files/p10/p10000032/s50414267.txt`` (``mimic-cxr-reports.zip``); each item's ``report``
    is then its IMPRESSION, falling back to FINDINGS. The split CSV is the official split
    (``validate`` -> ``val``).
    """

    name = "mimic_cxr_jpg"

    def __init__(self, root: str | Path, *, uncertain: str = "ignore",
                 reports_dir: str | Path | None = None, image_dir: str | Path | None = None,
                 **options: Any) -> None:
        root = existing_folder(root, "MIMIC-CXR-JPG")
        files = str(Path(image_dir).expanduser() if image_dir else root / "files")
        reports = None
        if reports_dir is not None:
            reports = existing_folder(reports_dir, "MIMIC-CXR reports")
        names = L.MIMIC_CHEXPERT_LABELS
        meta_csv = find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "metadata CSV")
        study_labels, by_study = _mimic_study_labels(root, uncertain)
        official = _mimic_official(root)
        cols = Columns()
        study_index: list[int] = []
        for _, row in iter_csv(meta_csv, ["dicom_id", "subject_id", "study_id",
                                           "ViewPosition"]):
            sid, study, did = row["subject_id"], row["study_id"], row["dicom_id"]
            folder = f"p{sid[:2]}/p{sid}/s{study}"
            rec = {"id": did, "patient_id": sid, "path": f"{files}/{folder}/{did}.jpg",
                   "view": normal_view(row["ViewPosition"]), **row}
            if official is not None:
                rec["official_split"] = official.get(did, "")
            if reports is not None:
                rec["report_path"] = f"{reports}/files/{folder}.txt"
            cols.append(rec)
            study_index.append(by_study.get((sid, study), -1))
        idx = np.asarray(study_index, dtype=np.int64)
        values = np.full((len(idx), len(names)), np.nan, np.float32)
        values[idx >= 0] = study_labels[idx[idx >= 0]]
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.CHEXPERT_TO_CANONICAL),
            **options)

    def _read_report(self, path: str) -> str:
        try:
            return mimic_report_text(Path(path).read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return ""


def _mimic_study_labels(root: Path, uncertain: str
                        ) -> tuple[np.ndarray, dict[tuple[str, str], int]]:
    """The study-level label matrix of mimic-cxr-2.0.0-chexpert.csv and its row index."""
    path = find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "CheXpert label CSV")
    names = L.MIMIC_CHEXPERT_LABELS
    rows: list[list[float]] = []
    by_study: dict[tuple[str, str], int] = {}
    for line, row in iter_csv(path, ["subject_id", "study_id", *names]):
        by_study[(row["subject_id"], row["study_id"])] = len(rows)
        rows.append(label_values(row, names, path, line))
    return resolve_uncertain(label_matrix(rows, len(names)), uncertain), by_study


def _mimic_official(root: Path) -> dict[str, str] | None:
    """dicom_id -> train / val / test from mimic-cxr-2.0.0-split.csv (None when absent)."""
    try:
        path = find_file(root, ["mimic-cxr-2.0.0-split.csv"], "split CSV")
    except InputError:
        return None
    out: dict[str, str] = {}
    for line, row in iter_csv(path, ["dicom_id", "split"]):
        s = {"validate": "val"}.get(row["split"], row["split"])
        if s not in SPLITS:
            raise InputError(path, f"line {line}: unknown split {row['split']!r}")
        out[row["dicom_id"]] = s
    return out
