"""The canonical finding vocabulary and the dataset label mappings (biomed.imaging.core.labels).

Tests marked ``data`` check the hard-coded label lists against the real label tables cached by
``biomed data fetch label_tables``.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from biomed import sources
from biomed.imaging.core import labels as L

nan = np.nan


def _tables_cached() -> bool:
    return sources.status("label_tables") == "cached"


needs_tables = pytest.mark.skipif(
    not _tables_cached(), reason="real label tables not cached: run `biomed data fetch "
                                 "label_tables`")


def _rows(member: str, n: int | None = None) -> tuple[list[str], list[list[str]]]:
    with gzip.open(sources.path("label_tables", member), "rt", newline="",
                   encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(islice(reader, n))


# ---------------------------------------------------------------------------------------------
# the vocabulary


def test_vocabulary_is_snake_case_unique_and_sided():
    names = L.CANONICAL_NAMES
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    for parent, (left, right) in L.SIDED.items():
        assert {parent, left, right} <= set(names)
        assert left.endswith("_left") and right.endswith("_right")
        by_name = {f.name: f for f in L.CANONICAL}
        assert by_name[left].parent == parent and by_name[right].parent == parent
    # what the phantom must render: every sign of the design's list
    drawn = {f.name for f in L.CANONICAL if f.phantom}
    assert {"cardiomegaly", "effusion_left", "effusion_right", "pneumothorax_left",
            "pneumothorax_right", "nodule", "calcified_granuloma", "mass", "consolidation",
            "atelectasis", "edema", "emphysema", "low_lung_volumes", "support_devices",
            "no_finding"} <= drawn


@pytest.mark.parametrize("labels,mapping", [
    (L.CHEXPERT_LABELS, L.CHEXPERT_TO_CANONICAL),
    (L.MIMIC_CHEXPERT_LABELS, L.CHEXPERT_TO_CANONICAL),
    (L.NIH_LABELS, L.NIH_TO_CANONICAL),
    (L.VINDR_LABELS, L.VINDR_TO_CANONICAL),
])
def test_every_source_label_is_decided(labels, mapping):
    """Each label of a fixed-vocabulary dataset is mapped or explicitly left out (empty)."""
    assert set(mapping) == set(labels)
    assert all(t in L.CANONICAL_NAMES for ts in mapping.values() for t in ts)


def test_open_vocabulary_mappings_target_the_vocabulary():
    assert set(L.PADCHEST_TO_CANONICAL) <= set(L.PADCHEST_LABELS)
    assert len(L.PADCHEST_LABELS) == len(set(L.PADCHEST_LABELS)) == 193
    for mapping in (L.PADCHEST_TO_CANONICAL, L.IU_MESH_TO_CANONICAL):
        assert all(t in L.CANONICAL_NAMES for ts in mapping.values() for t in ts)
    assert set(L.PADCHEST_SIDED_LABELS) <= set(L.PADCHEST_LABELS)


# ---------------------------------------------------------------------------------------------
# mapping rules


def _canon(row: np.ndarray, *names: str) -> list[float]:
    return [row[L.CANONICAL_NAMES.index(n)] for n in names]


def test_map_uses_three_valued_or_and_nan_for_unmapped():
    names = ["A", "B", "C"]
    mapping = {"A": ("nodule",), "B": ("nodule",), "C": ("mass",)}
    values = np.array([[1, nan, 0], [0, 0, nan], [0, nan, 1], [nan, nan, 0]], np.float32)
    out = L.map_to_canonical(values, names, mapping)
    assert out.shape == (4, len(L.CANONICAL_NAMES))
    np.testing.assert_array_equal(out[:, L.CANONICAL_NAMES.index("nodule")], [1, 0, nan, nan])
    np.testing.assert_array_equal(out[:, L.CANONICAL_NAMES.index("mass")], [0, nan, 1, 0])
    assert np.isnan(out[:, L.CANONICAL_NAMES.index("edema")]).all()  # no source: unknown
    with pytest.raises(KeyError, match="unknown canonical"):
        L.map_to_canonical(values, names, {"A": ("not_a_label",)})


def test_sides_and_parent_stay_consistent():
    names = ["eff", "l", "r"]
    mapping = {"eff": ("effusion",), "l": ("effusion_left",), "r": ("effusion_right",)}
    values = np.array([
        [1, nan, nan],  # effusion, side unknown
        [0, nan, nan],  # no effusion: no side has one
        [nan, 1, 0],  # a left effusion makes the parent positive
        [nan, 0, 0],  # two clear sides make it negative
        [nan, 0, nan],  # one side clear, the other unknown: unknown
    ], np.float32)
    out = L.map_to_canonical(values, names, mapping)
    got = [_canon(r, "effusion", "effusion_left", "effusion_right") for r in out]
    np.testing.assert_array_equal(got, [[1, nan, nan], [0, 0, 0], [1, 1, 0], [0, 0, 0],
                                        [nan, 0, nan]])


def test_a_positive_finding_clears_no_finding():
    names = ["No Finding", "Cardiomegaly", "Support Devices"]
    values = np.array([[nan, 1, nan], [1, 0, 1], [nan, nan, nan]], np.float32)
    out = L.map_to_canonical(values, names, L.CHEXPERT_TO_CANONICAL)
    assert _canon(out[0], "no_finding")[0] == 0  # CheXpert leaves it blank beside a finding
    assert _canon(out[1], "no_finding", "support_devices") == [1, 1]  # devices are no finding
    assert np.isnan(_canon(out[2], "no_finding")[0])


def test_side_values():
    assert L.side_values([]) == (0.0, 0.0)
    assert L.side_values(["left"]) == (1.0, 0.0)
    assert L.side_values(["bilateral"]) == (1.0, 1.0)
    assert L.side_values(["right", "left"]) == (1.0, 1.0)
    left, right = L.side_values(["left", None])
    assert left == 1.0 and np.isnan(right)
    assert all(np.isnan(v) for v in L.side_values([None]))


def test_canonical_from_sets():
    out = L.canonical_from_sets(
        [{"effusion", "cardiomegaly"}, set(), None],
        [{"effusion": (0.0, 1.0)}, {}, {}],
        mapped={"effusion", "cardiomegaly", "no_finding", "nodule"})
    assert _canon(out[0], "effusion", "effusion_left", "effusion_right", "cardiomegaly",
                  "no_finding", "nodule") == [1, 0, 1, 1, 0, 0]
    assert _canon(out[1], "effusion", "effusion_left", "no_finding") == [0, 0, 0]
    assert np.isnan(_canon(out[1], "edema")[0])  # not expressible: unknown, not 0
    assert np.isnan(out[2]).all()


# ---------------------------------------------------------------------------------------------
# the real tables


@pytest.mark.data
@needs_tables
def test_nih_vocabulary_matches_the_real_table():
    header, rows = _rows("Data_Entry_2017_v2020.csv.gz")
    assert header[:7] == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                          "Patient Age", "Patient Gender", "View Position"]
    seen = Counter(f for r in rows for f in r[1].split("|"))
    assert set(seen) == set(L.NIH_LABELS)
    assert len(rows) == 112120 and seen["No Finding"] == 60361


@pytest.mark.data
@needs_tables
def test_chexpert_vocabulary_and_values_match_the_real_table():
    header, rows = _rows("chexpert_train.csv.gz", 20000)
    assert header == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *L.CHEXPERT_LABELS]
    values = {v for r in rows for v in r[5:]}
    assert values == {"", "1.0", "0.0", "-1.0"}
    assert {r[0].split("/")[0] for r in rows} == {"CheXpert-v1.0-small"}


@pytest.mark.data
@needs_tables
def test_padchest_labels_of_the_real_table_are_in_the_vocabulary():
    import ast

    header, rows = _rows("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", 40000)
    assert header[0] == "" and header[1] == "ImageID" and len(header) == 36
    col = header.index("Labels")
    found = Counter()
    for r in rows:
        if r[col] != "nan":
            found.update(x.strip() for x in ast.literal_eval(r[col]) if x.strip())
    assert set(found) <= set(L.PADCHEST_LABELS)
    assert any(x.startswith(" ") for r in rows if r[col] != "nan"
               for x in ast.literal_eval(r[col]))  # leading blanks: from row 39060 on


@pytest.mark.data
@needs_tables
def test_vindr_class_names_match_the_real_table():
    header, rows = _rows("vinbigdata-train.csv.gz")
    assert header[:3] == ["image_id", "class_name", "class_id"]
    assert {r[1] for r in rows} == set(L.VINDR_LABELS)
