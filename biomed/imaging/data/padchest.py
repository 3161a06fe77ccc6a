"""``data=padchest``: PadChest, its 160k-row label CSV (Python list literals) and image folders."""

from __future__ import annotations

import ast
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import Columns, existing_folder, find_file, iter_csv
from biomed.imaging.data.files import FileDataset, normal_view

__all__ = ["PadChest"]

log = logging.getLogger(__name__)


_PADCHEST_SIDE = re.compile(r"^(.*?) (left|right|both) sides?$")
_PADCHEST_KEEP = (  # metadata columns kept (the report is stemmed Spanish: metadata only)
    "ImageDir", "StudyDate_DICOM", "StudyID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM",
    "Manufacturer_DICOM", "PhotometricInterpretation_DICOM", "BitsStored_DICOM", "Rows_DICOM",
    "Columns_DICOM", "ReportID", "Report", "MethodLabel",
)
_QUOTED = r"'[^'\\]*'"
_FLAT_LIST = re.compile(rf"\[(?:{_QUOTED}(?:, *{_QUOTED})*)?\]")
_NESTED_LIST = re.compile(rf"\[(?:{_FLAT_LIST.pattern}(?:, *{_FLAT_LIST.pattern})*)?\]")
_ITEM = re.compile(r"'([^'\\]*)'")
_INNER = re.compile(r"\[([^\[\]]*)\]")


def _literal_list(raw: str) -> list | None:
    """A Python list literal from PadChest's CSV; None for blank / 'nan' / not a list.

    Lists of quoted strings (and lists of them) take a regex; anything else goes through
    ``ast.literal_eval`` (ten times slower: 160,861 rows twice).
    """
    raw = raw.strip()
    if raw in ("", "nan", "None"):
        return None
    if _FLAT_LIST.fullmatch(raw):
        return _ITEM.findall(raw)
    if _NESTED_LIST.fullmatch(raw):
        return [_ITEM.findall(inner) for inner in _INNER.findall(raw[1:-1])]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _loc_side(locs: Sequence[str]) -> str | None:
    left = any("left" in x for x in locs)
    right = any("right" in x for x in locs)
    if any("bilateral" in x for x in locs) or (left and right):
        return "bilateral"
    return "left" if left else ("right" if right else None)


def _padchest_mentions(raw: str) -> dict[str, list[str | None]]:
    """Side mentions of effusion / pneumothorax in ``LabelsLocalizationsBySentence``.

    Only physician-labelled rows have sentences (lists of lists); model-labelled rows hold a
    flat list and give no side. A side comes from the sentence-level label itself
    ('pleural effusion left side'), else from the sentence's 'loc left/right/bilateral' when the
    finding is the sentence's only label (with other labels, the location may be theirs).
    """
    value = _literal_list(raw)
    if not value or not all(isinstance(s, list) for s in value):
        return {}
    out: dict[str, list[str | None]] = {}
    for sentence in value:
        items = [x.strip() for x in sentence if isinstance(x, str)]
        locs = [x for x in items if x.startswith("loc ")]
        found = [x for x in items if x and not x.startswith("loc ")]
        for label in found:
            m = _PADCHEST_SIDE.match(label)
            base, side = (m.group(1), m.group(2)) if m else (label, None)
            if side == "both":
                side = "bilateral"
            if side is None and len(set(found)) == 1:
                side = _loc_side(locs)
            for parent in L.PADCHEST_SIDED_LABELS.get(base, ()):
                out.setdefault(parent, []).append(side)
    return out


def _padchest_canonical(found: Sequence[list[str] | None], sentences: Sequence[str]
                        ) -> np.ndarray:
    """Canonical labels of PadChest rows: label lists mapped, sides from the sentences."""
    sets, sides = [], []
    for labs, raw in zip(found, sentences, strict=True):
        targets = None if labs is None else {
            t for lab in labs for t in L.PADCHEST_TO_CANONICAL.get(lab, ())}
        sets.append(targets)
        mentions = _padchest_mentions(raw) if targets else {}
        sides.append({p: L.side_values(m) for p, m in mentions.items() if p in targets})
    return L.canonical_from_sets(sets, sides, L.mapped_targets(L.PADCHEST_TO_CANONICAL))


class PadChest(FileDataset):
    """PadChest (Bustos et al., Medical Image Analysis 2020): 160,861 images, 67,625 patients.

    ``root`` holds ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (plain or .gz) and
    the PNGs, either in the download's numbered folders (``<image_dir>/<ImageDir>/<ImageID>``)
    or all in one (``<image_dir>/<ImageID>``); ``image_dir`` defaults to ``root``. Own labels:
    the 193 label strings of `labels.PADCHEST_LABELS`, from the ``Labels`` column (a Python
    list literal; the file pads many entries with a leading blank, which is stripped). Rows
    whose labels are missing ('nan') or empty are unknown (NaN). Strings outside the vocabulary
    are counted in ``unknown_labels`` and ignored. No official split: patients are hashed.
    """

    name = "padchest"
    official_by_default = False

    def __init__(self, root: str | Path, *, csv_file: str | Path | None = None,
                 image_dir: str | Path | None = None, **options: Any) -> None:
        root = existing_folder(root, "PadChest")
        csv_path = (root / csv_file if csv_file else find_file(
            root, ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"], "PadChest CSV"))
        images = Path(image_dir).expanduser() if image_dir else root
        names = L.PADCHEST_LABELS
        col_of = {n: j for j, n in enumerate(names)}
        subdir: dict[str, bool] = {}
        cols = Columns()
        found: list[list[str] | None] = []  # each row's labels (None: unlabelled)
        sentences: list[str] = []
        self.unknown_labels: Counter = Counter()
        for _, row in iter_csv(csv_path, ["ImageID", "ImageDir", "PatientID", "Projection",
                                           "Labels", "LabelsLocalizationsBySentence"]):
            raw = _literal_list(row["Labels"])
            labs = [x.strip() for x in raw or () if isinstance(x, str) and x.strip()] or None
            self.unknown_labels.update(lab for lab in labs or () if lab not in col_of)
            found.append(labs)
            sentences.append(row["LabelsLocalizationsBySentence"])
            d = row["ImageDir"]
            if d not in subdir:
                subdir[d] = (images / d).is_dir()
            cols.append({"id": row["ImageID"], "patient_id": row["PatientID"],
                         "path": (f"{images}/{d}/{row['ImageID']}" if subdir[d] else
                                  f"{images}/{row['ImageID']}"),
                         "view": normal_view(row["Projection"]),
                         **{k: row.get(k, "") for k in _PADCHEST_KEEP}})
        if self.unknown_labels:
            log.warning("%s: %d label string(s) outside PadChest's vocabulary ignored: %s",
                        csv_path, sum(self.unknown_labels.values()),
                        ", ".join(list(self.unknown_labels)[:5]))
        values = np.zeros((len(found), len(names)), np.float32)  # 160k x 193: fill in place
        for i, labs in enumerate(found):
            if labs is None:
                values[i] = np.nan
            else:
                values[i, [col_of[lab] for lab in labs if lab in col_of]] = 1.0
        super().__init__(Table(cols), values, names,
                         canonical=lambda: _padchest_canonical(found, sentences), **options)
