"""``data=openi``: the Indiana University chest X-rays (OpenI), one row per image, with the
report text and MeSH labels of `biomed.imaging.reports.iu`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biomed.imaging.core import labels as L
from biomed.imaging.data.contract import Table
from biomed.imaging.data.csv_tables import Columns, existing_folder, label_matrix
from biomed.imaging.data.files import FileDataset

__all__ = ["OpenI"]


class OpenI(FileDataset):
    """The Indiana University chest X-rays (Demner-Fushman et al., 2016), one row per image.

    ``reports`` is the report tarball ``NLMCXR_reports.tgz`` (None: the cached one from
    ``biomed data fetch iu_reports``); ``image_dir`` the folder of ``NLMCXR_png.tgz``, named by
    the reports' image ids (``CXR1_1_IM-0001-3001.png``). The report text is the impression
    then the findings (`biomed.imaging.reports.iu.Report.text`). Patients are not identified in
    OpenI, so the report id stands for the patient. Own labels: "normal" and every MeSH major
    term in the reports (or ``label_names``); reports tagged "No Indexing" are unknown (NaN).
    Reports without images are left out (counted in ``reports_without_images``). Views are
    unknown (the reports do not say).
    """

    name = "openi"
    official_by_default = False

    def __init__(self, image_dir: str | Path, *, reports: str | Path | None = None,
                 label_names: Sequence[str] | None = None, **options: Any) -> None:
        from biomed.imaging.reports.iu import read_reports

        folder = existing_folder(image_dir, "OpenI image")
        all_reports = read_reports(reports)
        names = list(label_names) if label_names is not None else _iu_label_names(all_reports)
        col_of = {n.lower(): j for j, n in enumerate(names)}
        cols = Columns()
        rows, canon = [], []
        self.reports_without_images = sum(not r.image_ids for r in all_reports)
        for r in all_reports:
            vec = np.full(len(names), np.nan, np.float32)
            if r.indexed:
                vec[:] = 0.0
                for t in ["normal"] if r.normal else [f.term for f in r.structured]:
                    if t.lower() in col_of:
                        vec[col_of[t.lower()]] = 1.0
            crow = _iu_canonical(r)
            for image_id in r.image_ids:
                cols.append({"id": image_id, "patient_id": r.id,
                             "path": f"{folder}/{image_id}.png", "view": "", "report_id": r.id,
                             "report": r.text, "mesh_major": "; ".join(r.mesh_major)})
                rows.append(vec)
                canon.append(crow)
        values = label_matrix(rows, len(names))
        canonical = label_matrix(canon, len(L.CANONICAL_NAMES))
        super().__init__(Table(cols), values, names, canonical=lambda: canonical, **options)


def _iu_label_names(reports: Sequence) -> list[str]:
    """"normal" and every MeSH major term, one column per term whatever its case in the file
    (it has 'Thoracic Vertebrae' and 'Thoracic vertebrae'): the most frequent spelling wins."""
    spelled: dict[str, Counter] = {}
    for r in reports:
        for f in r.structured:
            spelled.setdefault(f.term.lower(), Counter())[f.term] += 1
    best = {min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in spelled.values()}
    return ["normal", *sorted(best - {"normal"})]


_IU_MAP = {k.lower(): v for k, v in L.IU_MESH_TO_CANONICAL.items()}


def _iu_canonical(report) -> np.ndarray:
    """Canonical labels of one IU report from its MeSH major tags (terms, modifiers, sides)."""
    if not report.indexed:
        return np.full(len(L.CANONICAL_NAMES), np.nan, np.float32)
    found: set[str] = set()
    mentions: dict[str, list[str | None]] = {}
    tags = [("normal", [], None)] if report.normal else [
        (f.term, f.location + f.severity + f.other, f.side) for f in report.structured]
    for term, modifiers, side in tags:
        keys = [term.lower()] + [f"{term}/{m}".lower() for m in modifiers]
        for target in {t for k in keys for t in _IU_MAP.get(k, ())}:
            found.add(target)
            if target in L.SIDED:
                mentions.setdefault(target, []).append(side)
    sides = {p: L.side_values(m) for p, m in mentions.items()}
    return L.canonical_from_sets([found], [sides])[0]
