"""The dataset contract (biomed.imaging.data.contract), the merge dataset and build_splits.

One contract test runs over a real-data loader (with and without report text), the phantom set
and a merge of both: every dataset a model is handed must pass it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from biomed.errors import ConfigError
from biomed.imaging.core.labels import CANONICAL_NAMES
from biomed.imaging.data.contract import Table, XrayDataset
from biomed.imaging.data.folder_csv import FolderCSV
from biomed.imaging.data.merge import MergeDataset
from biomed.imaging.data.mimic_cxr_jpg import MimicCxrJpg
from biomed.imaging.data.splits import build_splits
from biomed.splits import SPLITS
from tests.helpers.data import copy_fixture, with_images
from tests.helpers.phantom import build

nan = np.nan


class Tiny(XrayDataset):
    """The least a subclass writes: a table, labels, ``image`` and, because its images are
    addressed by row, the image array named among the per-row arrays that `subset` takes."""

    name = "tiny"
    _row_attrs = ("labels", "_images")

    def __init__(self, n: int = 6, *, label_names=("a", "b"), reports: bool = True,
                 prefix: str = "r", split: str | None = None):
        rng = np.random.default_rng(n)
        self._images = rng.random((n, 4, 5), dtype=np.float32)
        columns = {"id": [f"{prefix}{i}" for i in range(n)],
                   "patient_id": [f"p{i // 2}" for i in range(n)],
                   "split": [SPLITS[i % 3] for i in range(n)]}
        if reports:
            columns["report"] = [f"report {i}" if i % 3 else None for i in range(n)]
        labels = np.where(rng.random((n, len(label_names))) < 0.5, 1.0, 0.0)
        super().__init__(Table(columns), labels, label_names, split=split)

    def image(self, index: int) -> np.ndarray:
        return self._images[index]


# ---------------------------------------------------------------------------------------------
# what a subclass gets for free


def test_a_subclass_gets_rows_items_reports_and_subsets():
    ds = Tiny()
    assert len(ds) == 6 and ds.ids == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert ds.patient_ids[:3] == ["p0", "p0", "p1"] and ds.labels.dtype == np.float32
    item = ds[-1]
    assert set(item) == {"image", "labels", "id", "index", "report"}
    assert item["id"] == "r5" and item["index"] == 5 and item["report"] == "report 5"
    np.testing.assert_array_equal(item["image"], ds.image(5))
    item["labels"][:] = 7  # items hold copies
    assert (ds.labels <= 1).all()
    assert ds.reports() == ["", "report 1", "report 2", "", "report 4", "report 5"]
    part = ds.subset([4, 1])
    assert part.ids == ["r4", "r1"] and part.reports() == ["report 4", "report 1"]
    np.testing.assert_array_equal(part.labels, ds.labels[[4, 1]])
    np.testing.assert_array_equal(part[0]["image"], ds[4]["image"])
    assert len(ds) == 6  # the original is untouched
    val = ds.with_split("val")
    assert val.split == "val" and val.ids == ["r1", "r4"]
    assert ds.label_counts()["a"]["positive"] == int(ds.labels[:, 0].sum())
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ConfigError, match="split='dev'"):
        ds.with_split("dev")


def test_without_reports_items_have_no_report_and_reports_are_blank():
    ds = Tiny(reports=False)
    assert not ds.has_reports and "report" not in ds[0]
    assert ds.reports() == [""] * 6 and ds.report(0) == ""


def test_row_attrs_travel_with_subset_and_image_is_required():
    class WithSlots(Tiny):
        _row_attrs = ("labels", "_slots")

        def __init__(self):
            super().__init__()
            self._slots = np.arange(len(self))[::-1].copy()

        def image(self, index: int) -> np.ndarray:
            return self._images[self._slots[index]]

    ds = WithSlots()
    part = ds.subset([0, 5])
    assert part._slots.tolist() == [5, 0]
    np.testing.assert_array_equal(part[1]["image"], ds[5]["image"])

    class NoImage(XrayDataset):
        pass

    bare = NoImage(Table({"id": ["x"], "patient_id": ["x"], "split": ["train"]}),
                   np.zeros((1, 1)), ["a"])
    with pytest.raises(NotImplementedError, match="image"):
        bare[0]
    with pytest.raises(ValueError, match="no 'id' column"):
        NoImage(Table({"path": ["x"]}), np.zeros((1, 1)), ["a"])


# ---------------------------------------------------------------------------------------------
# one contract for every dataset


def _folder(tmp_path: Path) -> XrayDataset:
    root = copy_fixture("folder", tmp_path)
    return with_images(FolderCSV(root))


def _mimic(tmp_path: Path) -> XrayDataset:
    root = copy_fixture("mimic", tmp_path)
    with_images(MimicCxrJpg(root))
    return MimicCxrJpg(root, reports_dir=root, labels="canonical")


def _phantom(tmp_path: Path) -> XrayDataset:
    return build(tmp_path, renders_per_report=1, templates_per_finding=0)


def _merged(tmp_path: Path) -> XrayDataset:
    return MergeDataset([_mimic(tmp_path / "m"), _phantom(tmp_path / "p")])


@pytest.mark.parametrize("make", [_folder, _mimic, _phantom, _merged],
                         ids=["folder_csv", "mimic_cxr_jpg", "phantom_iu", "merge"])
def test_every_dataset_satisfies_the_contract(make, tmp_path: Path):
    ds = make(tmp_path)
    n = len(ds)
    assert isinstance(ds, XrayDataset) and n >= 4
    assert ds.labels.shape == (n, len(ds.label_names)) and ds.labels.dtype == np.float32
    assert np.isin(ds.labels[~np.isnan(ds.labels)], (0.0, 1.0)).all()
    assert len(ds.metadata) == n and {"id", "patient_id", "split"} <= set(ds.metadata.columns)
    assert ds.ids == ds.metadata["id"] and len(set(ds.ids)) == n
    assert len(ds.patient_ids) == n

    texts = ds.reports()
    assert len(texts) == n and all(isinstance(t, str) for t in texts)
    for i in range(n):
        item = ds[i]
        assert {"image", "labels", "id", "index"} <= set(item)
        assert ("report" in item) == ds.has_reports
        assert item["id"] == ds.ids[i] and item["index"] == i
        assert item["image"].dtype == np.float32 and item["image"].ndim == 2
        assert item["image"].min() >= 0 and item["image"].max() <= 1
        np.testing.assert_array_equal(item["labels"], ds.labels[i])
        assert item.get("report", "") == texts[i]
    if not ds.has_reports:
        assert texts == [""] * n

    rows = [n - 1, 0, n // 2]
    part = ds.subset(rows)
    assert type(part) is type(ds) and part.ids == [ds.ids[i] for i in rows]
    assert part.reports() == [texts[i] for i in rows]
    np.testing.assert_array_equal(part.labels, ds.labels[rows])
    np.testing.assert_array_equal(part[0]["image"], ds[n - 1]["image"])

    parts = {s: ds.with_split(s) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == n
    for s, p in parts.items():
        assert set(p.metadata["split"]) <= {s} and p.split == s

    same_size = [i for i in range(n) if ds[i]["image"].shape == ds[0]["image"].shape][:2]
    batch = next(iter(DataLoader(ds.subset(same_size), batch_size=2)))
    assert tuple(batch["labels"].shape) == (len(same_size), len(ds.label_names))
    assert pickle.loads(pickle.dumps(ds)).ids == ds.ids  # DataLoader workers under spawn


# ---------------------------------------------------------------------------------------------
# the merge dataset


def test_merge_unions_labels_with_nan_and_names_sources():
    real = Tiny(6, label_names=("a", "b"), prefix="x")
    synthetic = Tiny(4, label_names=("b", "c"), reports=False, prefix="x")
    synthetic.name = "synthetic"
    ds = MergeDataset([real, synthetic])
    assert len(ds) == 10 and ds.label_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.labels[:6, :2], real.labels)
    np.testing.assert_array_equal(ds.labels[6:, 1:], synthetic.labels)
    assert np.isnan(ds.labels[:6, 2]).all() and np.isnan(ds.labels[6:, 0]).all()
    assert ds.metadata["source"] == ["tiny"] * 6 + ["synthetic"] * 4
    assert ds.ids[0] == "tiny:x0" and ds.ids[6] == "synthetic:x0"  # both had x0: still unique
    assert ds.patient_ids[6] == "synthetic:p0" and ds.metadata["split"][:3] == list(SPLITS)
    assert "report" not in ds.metadata  # reached through the sources
    assert ds.reports() == real.reports() + [""] * 4
    item = ds[7]
    assert item["source"] == "synthetic" and item["report"] == "" and item["id"] == "synthetic:x1"
    np.testing.assert_array_equal(item["image"], synthetic[1]["image"])
    np.testing.assert_array_equal(item["labels"], [nan, *synthetic.labels[1]])


def test_merge_subsets_splits_and_feeds_a_loader():
    a, b = Tiny(6, prefix="a"), Tiny(6, prefix="b")
    ds = MergeDataset([a, b], names=["real", "synthetic"])
    part = ds.subset([8, 1, 7])
    assert part.ids == ["synthetic:b2", "real:a1", "synthetic:b1"]
    assert part.reports() == [b.report(2), a.report(1), b.report(1)]
    assert part.metadata["source"] == ["synthetic", "real", "synthetic"]
    np.testing.assert_array_equal(part[0]["image"], b[2]["image"])
    train = ds.with_split("train")
    assert train.ids == ["real:a0", "real:a3", "synthetic:b0", "synthetic:b3"]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 4, 5) and batch["source"] == ["real"] * 4
    assert "MergeDataset(n=12" in repr(ds) and "'synthetic': 6" in repr(ds)


def test_merge_keeps_the_phantoms_own_source_column(tmp_path: Path):
    phantom = build(tmp_path, renders_per_report=1)
    ds = MergeDataset([phantom, Tiny(3)], names=["phantom", "other"])
    assert ds.label_names[: len(CANONICAL_NAMES)] == list(CANONICAL_NAMES)
    assert set(ds.metadata["source_kind"][: len(phantom)]) == {"iu", "template"}
    assert ds.metadata["source_kind"][len(phantom):] == [""] * 3
    assert ds.metadata["report_id"][0] == phantom.metadata["report_id"][0]
    assert ds.reports()[: len(phantom)] == phantom.reports()


def test_merge_refuses_what_it_cannot_merge():
    with pytest.raises(ConfigError, match="distinct names"):
        MergeDataset([Tiny(), Tiny()])
    with pytest.raises(ConfigError, match="not a dataset of the contract"):
        MergeDataset([Tiny(), [1, 2, 3]])
    with pytest.raises(ConfigError, match="no datasets"):
        MergeDataset([])


# ---------------------------------------------------------------------------------------------
# build_splits


def test_build_splits_parses_a_contract_dataset_once(tmp_path: Path):
    root = copy_fixture("folder", tmp_path)
    cfg = OmegaConf.create({"_target_": "biomed.imaging.data.folder_csv.FolderCSV",
                            "root": str(root), "split": "train"})
    splits = build_splits(cfg)
    assert list(splits) == list(SPLITS)
    for s in SPLITS:
        assert splits[s].ids == FolderCSV(root, split=s).ids and splits[s].split == s
    blobs = build_splits(OmegaConf.create({"_target_": "tests.helpers.classifier.BlobData",
                                           "n": 4}))
    assert {s: d.split for s, d in blobs.items()} == {s: s for s in SPLITS}
    with pytest.raises(ConfigError, match=r"data: set root=\.\.\."):
        build_splits(OmegaConf.create({"_target_": "biomed.imaging.data.folder_csv.FolderCSV",
                                       "root": "???"}))
