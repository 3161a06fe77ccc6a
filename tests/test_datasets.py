"""The dataset loaders, their one contract, splits and the decode-once image cache.

Fixtures in tests/fixtures/datasets/ are hand-written tables with the exact real headers
(MIMIC-CXR-JPG's three CSVs and report files, CheXpert's train/valid CSVs, NIH's
Data_Entry_2017_v2020.csv and split lists, PadChest's 36-column CSV, a folder CSV); OpenI uses
the IU report fixtures of tests/fixtures/iu/. Tests copy them to tmp_path and write small
generated images where the tables point. Tests marked ``data`` take the real header and first
rows of the label tables cached by ``biomed data fetch label_tables``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import tarfile
import types
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomed import sources
from biomed.errors import ConfigError, InputError
from biomed.imaging.core import labels as L
from biomed.imaging.core import pixels
from biomed.imaging.data import files
from biomed.imaging.data.chexpert import CheXpert
from biomed.imaging.data.contract import XrayDataset
from biomed.imaging.data.folder_csv import FolderCSV
from biomed.imaging.data.image_cache import ImageCache
from biomed.imaging.data.mimic_cxr_jpg import MimicCxrJpg
from biomed.imaging.data.nih14 import NIHChestXray14
from biomed.imaging.data.openi import OpenI
from biomed.imaging.data.padchest import PadChest
from biomed.imaging.data.read import read_xray
from biomed.imaging.reports.mimic import mimic_report_text
from tests.helpers.data import copy_fixture, with_images, write_image

IU = Path(__file__).parent / "fixtures" / "iu"
CONF = Path(__file__).parents[1] / "conf"
nan = np.nan

needs_tables = pytest.mark.skipif(
    sources.status("label_tables") != "cached",
    reason="real label tables not cached: run `biomed data fetch label_tables`")


# ---------------------------------------------------------------------------------------------
# helpers


def iu_tgz(path: Path) -> Path:
    """The IU report fixtures packed like NLMCXR_reports.tgz."""
    with tarfile.open(path, "w:gz") as tar:
        for xml in sorted(IU.glob("*.xml")):
            data = xml.read_bytes()
            info = tarfile.TarInfo(f"ecgen-radiology/{xml.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def col(ds: XrayDataset, name: str) -> np.ndarray:
    return ds.labels[:, ds.label_names.index(name)]


def assert_patient_disjoint(make) -> None:
    """No patient in two splits, and the splits together are every row."""
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "val", "test"):
        part = make(split)
        total += len(part)
        for p in part.patient_ids:
            assert seen.setdefault(p, split) == split, f"patient {p} in {seen[p]} and {split}"
    assert total == len(make(None))


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


@pytest.fixture
def mimic(tmp_path: Path) -> Path:
    root = copy_fixture("mimic", tmp_path)
    with_images(MimicCxrJpg(root))
    return root


def test_mimic_contract_labels_paths_and_reports(mimic: Path):
    ds = MimicCxrJpg(mimic, reports_dir=mimic)
    assert len(ds) == 6 and ds.label_names == list(L.MIMIC_CHEXPERT_LABELS)
    assert ds.labels.shape == (6, 14) and ds.labels.dtype == np.float32
    assert ds.paths[0] == str(mimic / "files/p10/p10000032/s50414267/"
                                      "0a1b2c3d-11111111-22222222-33333333-44444444.jpg")
    # labels are per study: both images of s50414267 share them
    np.testing.assert_array_equal(ds.labels[0], ds.labels[1])
    assert col(ds, "No Finding")[0] == 1 and np.isnan(col(ds, "Cardiomegaly")[0])
    # uncertain (-1) is NaN under the default 'ignore' policy
    assert np.isnan(col(ds, "Consolidation")[3]) and col(ds, "Pneumothorax")[3] == 0
    assert np.isnan(ds.labels[5]).all()  # study missing from the label CSV: unknown
    assert ds.metadata["view"] == ["PA", "LATERAL", "AP", "PA", "", "AP"]
    assert ds.metadata[2]["PerformedProcedureStepDescription"] == "CHEST (PORTABLE AP)"

    item = ds[0]
    assert set(item) == {"image", "labels", "id", "patient_id", "index", "report"}
    assert item["image"].dtype == np.float32 and item["image"].shape == (20, 16)
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["id"] == "0a1b2c3d-11111111-22222222-33333333-44444444"
    assert item["patient_id"] == "10000032"
    assert item["report"] == "No acute cardiopulmonary process."  # the impression
    assert ds.report(2) == "Heart size is normal. Lungs are clear. No pleural effusion."
    assert ds.report(3) == ""  # no report file
    assert ds.report(4) == "Cardiomegaly and small left pleural effusion."  # stops at NOTE..
    assert "report" not in MimicCxrJpg(mimic)[0]  # no reports_dir: no report key


@pytest.mark.parametrize("policy,expected", [("ignore", nan), ("ones", 1.0), ("zeros", 0.0)])
def test_mimic_uncertain_policies(mimic: Path, policy: str, expected: float):
    ds = MimicCxrJpg(mimic, uncertain=policy)
    np.testing.assert_array_equal(col(ds, "Pneumonia")[3], expected)
    assert col(ds, "Lung Opacity")[3] == 1 and col(ds, "Pneumothorax")[3] == 0


def test_mimic_official_split_and_views(mimic: Path):
    ds = MimicCxrJpg(mimic)
    assert ds.metadata["split"] == ["train", "train", "train", "val", "test", "train"]
    assert MimicCxrJpg(mimic, split="val").ids == [
        "2c3d4e5f-11111111-22222222-33333333-44444444"]
    assert len(MimicCxrJpg(mimic, views=["frontal"])) == 4
    assert MimicCxrJpg(mimic, views=["lateral"]).metadata["view"] == ["LATERAL"]
    assert_patient_disjoint(lambda s: MimicCxrJpg(mimic, split=s))
    assert_patient_disjoint(lambda s: MimicCxrJpg(mimic, split=s, split_by="hash"))


def test_mimic_canonical(mimic: Path):
    ds = MimicCxrJpg(mimic, labels="canonical", reports_dir=mimic)
    assert ds.label_names == list(L.CANONICAL_NAMES)
    assert ds.dataset_label_names == list(L.MIMIC_CHEXPERT_LABELS)
    row = dict(zip(ds.label_names, ds.labels[4], strict=True))
    assert row["effusion"] == 1 and np.isnan(row["effusion_left"])  # side unknown to CheXpert
    assert row["cardiomegaly"] == 1 and row["no_finding"] == 0 and row["edema"] == 0
    assert np.isnan(row["nodule"])  # CheXpert cannot say: unknown, not 0
    assert ds[4]["labels"].shape == (len(L.CANONICAL_NAMES),)


def test_mimic_report_text():
    text = ("FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS:\n\n Lungs clear.\n\n"
            " IMPRESSION:\n\n  No acute\n process.\n")
    assert mimic_report_text(text) == "No acute process."
    assert mimic_report_text("FINDINGS: Small effusion.\n") == "Small effusion."
    assert mimic_report_text("WET READ: none\n") == ""
    assert mimic_report_text("IMPRESSION:\n\nFINDINGS: Clear.") == "Clear."  # empty section


# ---------------------------------------------------------------------------------------------
# CheXpert


@pytest.fixture
def chexpert(tmp_path: Path) -> Path:
    root = copy_fixture("chexpert", tmp_path)
    with_images(CheXpert(root))
    return root


@pytest.mark.parametrize("policy,expected", [("ignore", nan), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertain_policies(chexpert: Path, policy: str, expected: float):
    ds = CheXpert(chexpert, uncertain=policy)
    np.testing.assert_array_equal(col(ds, "Cardiomegaly")[1], expected)  # -1.0 in the file
    assert col(ds, "Lung Opacity")[1] == 1 and np.isnan(col(ds, "Pneumothorax")[1])  # blank
    assert col(ds, "Pneumothorax")[0] == 0
    assert not (ds.labels == -1).any()


def test_chexpert_contract(chexpert: Path):
    ds = CheXpert(chexpert)
    assert len(ds) == 7 and ds.label_names == list(L.CHEXPERT_LABELS)
    assert ds.paths[0] == str(chexpert / "train/patient00101/study1/view1_frontal.jpg")
    assert ds.patient_ids == ["patient00101"] + ["patient00102"] * 3 + [
        "patient00103", "patient64601", "patient64602"]
    assert ds.ids[5] == "valid/patient64601/study1/view1_frontal"
    assert ds.metadata["view"][:3] == ["AP", "PA", "LATERAL"]
    assert ds.metadata["official_split"] == ["train"] * 5 + ["val"] * 2
    assert ds[2]["image"].shape == (20, 16) and "report" not in ds[2]
    # auto = hash by patient (the official split has no test set)
    assert_patient_disjoint(lambda s: CheXpert(chexpert, split=s))
    assert CheXpert(chexpert, split="val", split_by="official").patient_ids == [
        "patient64601", "patient64602"]
    assert len(CheXpert(chexpert, split="test", split_by="official")) == 0
    assert len(CheXpert(chexpert, csv_files=["valid.csv"])) == 2


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


@pytest.fixture
def nih(tmp_path: Path) -> Path:
    root = copy_fixture("nih", tmp_path)
    with_images(NIHChestXray14(root))
    return root


def test_nih_contract(nih: Path):
    ds = NIHChestXray14(nih)
    assert ds.label_names == list(L.NIH_LABELS) and len(ds) == 6
    assert ds.paths[0] == str(nih / "images" / "00000101_000.png")
    assert ds.labels.sum(axis=1).tolist() == [1, 2, 1, 3, 1, 3]
    assert col(ds, "No Finding").tolist() == [0, 0, 1, 0, 0, 0]
    assert col(ds, "Pleural_Thickening")[3] == 1 and not np.isnan(ds.labels).any()
    assert ds.metadata[0]["original_width"] == "2682"  # the split "OriginalImage[Width" column
    assert ds.metadata[0]["pixel_spacing_y"] == "0.14300000000000002"
    assert ds[1]["patient_id"] == "101" and ds[1]["image"].shape == (20, 16)


def test_nih_official_lists_and_hash(nih: Path):
    ds = NIHChestXray14(nih)
    assert ds.metadata["official_split"] == ["trainval"] * 3 + ["test"] + ["trainval"] * 2
    assert NIHChestXray14(nih, split="test").ids == ["00000103_000.png"]
    assert_patient_disjoint(lambda s: NIHChestXray14(nih, split=s))
    assert_patient_disjoint(lambda s: NIHChestXray14(nih, split=s, split_by="hash"))
    for s in ("train", "val", "test"):  # taken from one parse: the same rows
        assert ds.with_split(s).ids == NIHChestXray14(nih, split=s).ids
    (nih / "test_list.txt").unlink()  # without the lists: hash
    assert "official_split" not in NIHChestXray14(nih).metadata
    with pytest.raises(ConfigError, match="no official split"):
        NIHChestXray14(nih, split_by="official")


def test_nih_sharded_image_folders(nih: Path):
    (nih / "images_001" / "images").mkdir(parents=True)
    (nih / "images_002" / "images").mkdir(parents=True)
    for i, p in enumerate(sorted((nih / "images").iterdir())):
        p.rename(nih / f"images_00{1 + i % 2}" / "images" / p.name)
    (nih / "images").rmdir()
    ds = NIHChestXray14(nih)
    assert ds.paths[1] == str(nih / "images_002" / "images" / "00000101_001.png")
    assert ds[1]["image"].shape == (20, 16)


def test_nih_canonical(nih: Path):
    ds = NIHChestXray14(nih, labels="canonical")
    row = dict(zip(ds.label_names, ds.labels[5], strict=True))
    assert row["pneumothorax"] == 1 and np.isnan(row["pneumothorax_right"])
    assert row["emphysema"] == 1 and row["effusion"] == 0 and row["effusion_left"] == 0
    assert row["no_finding"] == 0 and np.isnan(row["support_devices"])  # NIH cannot say
    assert dict(zip(ds.label_names, ds.labels[2], strict=True))["no_finding"] == 1


# ---------------------------------------------------------------------------------------------
# OpenI


@pytest.fixture
def openi(tmp_path: Path) -> tuple[Path, Path]:
    tgz = iu_tgz(tmp_path / "NLMCXR_reports.tgz")
    folder = tmp_path / "NLMCXR_png"
    folder.mkdir()
    with_images(OpenI(folder, reports=tgz))
    return folder, tgz


def test_openi_rows_labels_and_reports(openi):
    folder, tgz = openi
    ds = OpenI(folder, reports=tgz)
    assert len(ds) == 9  # one row per image: 2 + 1 + 4 + 2
    assert ds.ids[0] == "CXR1_1_IM-0001-3001" and ds.paths[0] == str(
        folder / "CXR1_1_IM-0001-3001.png")
    assert ds.patient_ids[:3] == ["CXR1", "CXR1", "CXR2"]  # natural report order
    assert ds.label_names[0] == "normal" and "Pleural Effusion" in ds.label_names
    assert col(ds, "normal")[0] == 1 and col(ds, "Cardiomegaly")[0] == 0
    assert np.isnan(ds.labels[ds.ids.index("CXR10_IM-0010-1001")]).all()  # "No Indexing"
    item = ds[2]  # CXR2: impression first, then findings
    assert item["report"].startswith("1. Small left pleural effusion. 2. Mild cardiomegaly. "
                                     "Small left pleural effusion with patchy")
    assert item["report"] == ds.metadata[2]["report"] == ds.report(2)
    assert_patient_disjoint(lambda s: OpenI(folder, reports=tgz, split=s))
    with pytest.raises(ConfigError, match="no view information"):
        OpenI(folder, reports=tgz, views=["PA"])


def test_openi_canonical_sides(openi):
    folder, tgz = openi
    ds = OpenI(folder, reports=tgz, labels="canonical")

    def row(report_id: str) -> dict[str, float]:
        return dict(zip(ds.label_names, ds.labels[ds.patient_ids.index(report_id)], strict=True))

    cxr2 = row("CXR2")  # Pleural Effusion/left/small, Cardiomegaly, Lung/hypoinflation, Nodule
    assert (cxr2["effusion"], cxr2["effusion_left"], cxr2["effusion_right"]) == (1, 1, 0)
    assert cxr2["cardiomegaly"] == cxr2["low_lung_volumes"] == cxr2["nodule"] == 1
    assert cxr2["no_finding"] == 0 and cxr2["pneumothorax"] == 0
    cxr100 = row("CXR100")  # effusion right + left, pneumothorax right, tube, airspace disease
    assert (cxr100["effusion_left"], cxr100["effusion_right"]) == (1, 1)
    assert (cxr100["pneumothorax_left"], cxr100["pneumothorax_right"]) == (0, 1)
    assert cxr100["support_devices"] == cxr100["consolidation"] == 1
    assert row("CXR1")["no_finding"] == 1 and row("CXR1")["effusion_left"] == 0
    assert np.isnan(list(row("CXR10").values())).all()


# ---------------------------------------------------------------------------------------------
# PadChest


@pytest.fixture
def padchest(tmp_path: Path) -> Path:
    root = copy_fixture("padchest", tmp_path)
    (root / "0").mkdir()
    (root / "1").mkdir()
    with_images(PadChest(root))
    return root


def test_padchest_labels(padchest: Path):
    ds = PadChest(padchest)
    assert len(ds) == 9 and ds.label_names == list(L.PADCHEST_LABELS)
    assert ds.paths[0] == str(padchest / "0" / "1001_aa.png")
    assert ds.paths[4] == str(padchest / "1" / "1004_aa.png")
    assert col(ds, "cardiomegaly")[0] == 1  # ' cardiomegaly' with the file's leading blank
    assert col(ds, "NSG tube")[5] == 1 and col(ds, "pleural effusion")[5] == 1
    assert col(ds, "normal")[4] == 1 and col(ds, "normal")[0] == 0
    assert np.isnan(ds.labels[6]).all() and np.isnan(ds.labels[7]).all()  # 'nan' and ['']
    assert ds.unknown_labels == {"hypothetical new label": 1}
    assert ds.metadata["view"][:4] == ["PA", "LATERAL", "PA", "AP"]  # L, AP_horizontal
    assert ds.metadata[0]["MethodLabel"] == "Physician"
    img = ds[4]["image"]
    assert img.dtype == np.float32 and img.shape == (20, 16)
    np.testing.assert_allclose(img, pixels.read_image(ds.paths[4]))
    assert_patient_disjoint(lambda s: PadChest(padchest, split=s))


def test_padchest_canonical_sides(padchest: Path):
    ds = PadChest(padchest, labels="canonical")
    rows = [dict(zip(ds.label_names, r, strict=True)) for r in ds.labels]
    sides = [(r["effusion"], r["effusion_left"], r["effusion_right"]) for r in rows]
    assert sides[0] == (1, 1, 0)  # 'pleural effusion left side'
    assert sides[2][0] == 1 and np.isnan(sides[2][1:]).all()  # sentence shared with pneumonia
    assert sides[5][0] == 1 and np.isnan(sides[5][1:]).all()  # model-labelled row: no side
    assert sides[4] == (0, 0, 0)
    assert (rows[3]["pneumothorax_left"], rows[3]["pneumothorax_right"]) == (0, 1)
    assert rows[3]["support_devices"] == 1 and rows[3]["no_finding"] == 0
    assert rows[8]["nodule"] == 1 and rows[8]["no_finding"] == 0  # 'normal' beside a nodule
    assert rows[4]["no_finding"] == 1 and rows[4]["edema"] == 0 and not np.isnan(rows[4]["mass"])
    assert np.isnan(ds.labels[6]).all()


def test_padchest_flat_image_folder(tmp_path: Path):
    root = copy_fixture("padchest", tmp_path)
    ds = PadChest(root)
    assert ds.paths[0] == str(root / "1001_aa.png")


# ---------------------------------------------------------------------------------------------
# folder + CSV


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = copy_fixture("folder", tmp_path)
    with_images(FolderCSV(root))
    return root


def test_folder_csv(folder: Path):
    ds = FolderCSV(folder)
    assert ds.label_names == ["cardiomegaly", "effusion_left", "effusion_right", "Opacity"]
    np.testing.assert_array_equal(ds.labels[:, 3], [nan, nan, 1, 0])  # -1 ignored -> NaN
    assert FolderCSV(folder, uncertain="ones").labels[1, 3] == 1
    assert ds.metadata["split"] == ["train", "train", "val", "test"]  # 'validate' -> val
    assert ds.paths[3] == str(folder / "img" / "d.jpg")
    assert ds[3]["image"].shape == (20, 16)
    canon = FolderCSV(folder, labels="canonical")
    row = dict(zip(canon.label_names, canon.labels[0], strict=True))
    assert (row["effusion"], row["effusion_left"], row["effusion_right"]) == (1, 0, 1)
    assert np.isnan(row["nodule"])
    row = dict(zip(canon.label_names, canon.labels[2], strict=True))
    assert row["effusion"] == 1 and np.isnan(row["cardiomegaly"])
    mapped = FolderCSV(folder, labels="canonical", canonical_map={"Opacity": ["consolidation"]})
    assert col(mapped, "consolidation")[2] == 1 and np.isnan(col(mapped, "cardiomegaly")).all()
    assert_patient_disjoint(lambda s: FolderCSV(folder, split=s, split_by="hash"))
    assert FolderCSV(folder, label_columns=["cardiomegaly"]).label_names == ["cardiomegaly"]


# ---------------------------------------------------------------------------------------------
# the image cache


def counting(calls: list[Path]):
    def decode(path: Path, size: tuple[int, int]) -> np.ndarray:
        calls.append(path)
        return read_xray(path, size)

    return decode


def test_cache_decodes_each_file_once(tmp_path: Path):
    paths = [tmp_path / "img" / f"{i}.png" for i in range(5)] + [tmp_path / "img" / "5.jpg"]
    for i, p in enumerate(paths):
        write_image(p, i, (40, 30))
    calls: list[Path] = []
    cache = ImageCache(tmp_path / "cache", 16, shard_size=4)  # two shards
    res = cache.build(paths, counting(calls), progress=False)
    assert res.decoded == 6 and len(calls) == 6 and all(s is not None for s in res.slots)
    for p, s in zip(paths, res.slots, strict=True):
        direct = pixels.resize(read_xray(p, (16, 16)), 16)
        np.testing.assert_allclose(cache.read(s), direct, atol=0.5 / 65535 + 1e-6)
    # again, and from a new instance (another epoch, another run): nothing decoded
    assert cache.build(paths, counting(calls), progress=False).reused == 6
    again = ImageCache(tmp_path / "cache", 16)
    res2 = again.build(paths + paths[:1], counting(calls), progress=False)
    assert len(calls) == 6 and res2.decoded == 0 and res2.slots[:6] == res.slots
    assert sorted(p.name for p in (tmp_path / "cache" / "16x16").glob("shard-*.npy")) == [
        "shard-00000.npy", "shard-00001.npy"]
    # an edited file is decoded again; the others are not
    write_image(paths[2], 99, (40, 30))
    import os
    os.utime(paths[2], ns=(1, 1))
    again.build(paths, counting(calls), progress=False)
    assert calls[6:] == [paths[2]]


def test_reduced_jpeg_decoding_matches_a_full_decode(tmp_path: Path):
    """A JPEG decoded at 1/4 scale for a small target is the full decode resized, near enough."""
    yy, xx = np.mgrid[0:400, 0:320]
    img = (128 + 100 * np.sin(yy / 40.0) * np.cos(xx / 30.0)).astype(np.uint8)
    Image.fromarray(img).convert("RGB").save(tmp_path / "x.jpg", quality=95)
    reduced = read_xray(tmp_path / "x.jpg", (64, 64))
    assert reduced.shape == (100, 80)  # 1/4 scale: still at least 64 x 64
    full = pixels.read_image(tmp_path / "x.jpg")
    diff = np.abs(pixels.resize(reduced, 64) - pixels.resize(full, 64))
    assert diff.mean() < 0.01 and diff.max() < 0.06
    Image.fromarray(img).save(tmp_path / "png.jpg", format="PNG")  # misnamed: still read
    np.testing.assert_allclose(read_xray(tmp_path / "png.jpg", (64, 64)), img / 255, atol=1e-6)


def test_cache_resumes_after_an_interruption(tmp_path: Path):
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for i, p in enumerate(paths):
        write_image(p, i)
    ImageCache(tmp_path / "c", 8).build(paths[:3], counting([]), progress=False)
    index = tmp_path / "c" / "8x8" / "index.jsonl"
    with open(index, "a") as f:
        f.write('{"key": "torn')  # killed in the middle of an append
    calls: list[Path] = []
    res = ImageCache(tmp_path / "c", 8).build(paths, counting(calls), progress=False)
    assert calls == [paths[3]] and res.slots == [0, 1, 2, 3]
    assert index.read_text().count("\n") == 5  # header + 4 entries, torn line gone
    with pytest.raises(ConfigError, match="not a biomed-image-cache-v2 index"):
        index.write_text('{"format": "other"}\n')
        ImageCache(tmp_path / "c", 8)


def test_cache_records_bad_files_and_never_retries_them(tmp_path: Path):
    good = tmp_path / "good.png"
    write_image(good, 1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    missing = tmp_path / "missing.png"
    calls: list[Path] = []
    cache = ImageCache(tmp_path / "c", 8)
    res = cache.build([good, broken, missing], counting(calls), progress=False)
    assert res.slots[0] is not None and res.slots[1:] == [None, None]
    assert "not a readable image" in res.bad[str(broken)]
    assert res.bad[str(missing)] == "file not found"
    res = ImageCache(tmp_path / "c", 8).build([good, broken, missing], counting(calls),
                                              progress=False)
    assert calls == [good, broken] and len(res.bad) == 2  # the broken file was not retried


def test_cache_index_names_no_source_file(tmp_path: Path):
    """Index keys are hashes: no folder or file name of a source (good, bad or missing) is in
    the cache, and lookups still find every file."""
    src = tmp_path / "DOE_JOHN_123"
    good, broken, missing = src / "IM_SMITH.png", src / "IM_BROKEN.png", src / "IM_GONE.png"
    write_image(good, 1)
    broken.write_bytes(b"\x89PNG not really")
    cache = ImageCache(tmp_path / "c", 8)
    res = cache.build([good, broken, missing], counting([]), progress=False)
    raw = b"".join(f.read_bytes() for f in (tmp_path / "c").rglob("*") if f.is_file())
    for name in ("DOE_JOHN_123", "IM_SMITH", "IM_BROKEN", "IM_GONE", str(tmp_path)):
        assert name.encode() not in raw, name
    assert cache.slot_of(good) == res.slots[0] is not None
    assert ImageCache(tmp_path / "c", 8).slot_of(good) == res.slots[0]


def test_an_old_cache_keyed_by_paths_is_rebuilt(tmp_path: Path, caplog):
    """A v1 index (plain paths as keys) is removed with its shards and rebuilt, one warning."""
    paths = [tmp_path / "DOE_JOHN_123" / f"{i}.png" for i in range(2)]
    for i, p in enumerate(paths):
        write_image(p, i)
    folder = tmp_path / "c" / "8x8"
    folder.mkdir(parents=True)
    header = {"format": "biomed-image-cache-v1", "size": [8, 8], "dtype": "uint16",
              "shard_size": 1024}
    (folder / "index.jsonl").write_text(json.dumps(header) + "\n" + "".join(
        json.dumps({"key": f"{p}|1|2|", "slot": i}) + "\n" for i, p in enumerate(paths)))
    np.save(folder / "shard-00000.npy", np.zeros((1024, 8, 8), np.uint16))
    calls: list[Path] = []
    cache = ImageCache(tmp_path / "c", 8)
    assert len(cache) == 0 and cache.slot_of(paths[0]) is None  # read as empty
    with caplog.at_level("WARNING"):
        res = cache.build(paths, counting(calls), progress=False)
    assert calls == paths and res.slots == [0, 1]
    warning = [r.getMessage() for r in caplog.records if "old format" in r.getMessage()]
    assert len(warning) == 1 and "\n" not in warning[0], warning
    assert b"DOE_JOHN_123" not in (folder / "index.jsonl").read_bytes()
    assert json.loads((folder / "index.jsonl").read_text().splitlines()[0])["format"] == \
        "biomed-image-cache-v2"
    np.testing.assert_allclose(cache.read(0), pixels.resize(read_xray(paths[0], (8, 8)), 8),
                               atol=0.5 / 65535 + 1e-6)


def test_dataset_reads_from_the_cache_and_drops_bad_rows(nih: Path, tmp_path: Path,
                                                         monkeypatch):
    (nih / "images" / "00000102_000.png").write_bytes(b"garbage")
    (nih / "images" / "00000104_000.png").unlink()
    ds = NIHChestXray14(nih, size=12, cache_dir=tmp_path / "cache", progress=False,
                          labels="canonical")
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert dict(ds.skipped)[str(nih / "images" / "00000104_000.png")] == "file not found"
    assert "00000102_000.png" not in ds.ids and ds.labels.shape == (4, len(L.CANONICAL_NAMES))
    assert ds.metadata["id"] == ds.ids and len(ds.metadata) == 4
    ref = [pixels.resize(read_xray(p), 12) for p in ds.paths]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file that is in the cache")

    monkeypatch.setattr(files, "read_xray", no_decoding)  # where the loaders call it
    again = NIHChestXray14(nih, size=12, cache_dir=tmp_path / "cache", progress=False)
    assert len(again) == 4 and len(again.skipped) == 2
    for i in range(4):
        assert again[i]["image"].shape == (12, 12)
        np.testing.assert_allclose(again[i]["image"], ref[i], atol=1e-4)
    # the test split of the cached dataset is a subset of the same rows
    assert NIHChestXray14(nih, size=12, cache_dir=tmp_path / "cache", progress=False,
                            split="test").ids == ["00000103_000.png"]


def test_items_collate_into_batches(nih: Path):
    from torch.utils.data import DataLoader

    ds = NIHChestXray14(nih, size=8, labels="canonical")
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert tuple(batch["image"].shape) == (3, 8, 8)
    assert tuple(batch["labels"].shape) == (3, len(L.CANONICAL_NAMES))
    assert batch["id"] == ds.ids[:3]


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_paths_go_through_the_dicom_reader(tmp_path: Path, monkeypatch):
    dcm = tmp_path / "a.dcm"
    dcm.write_bytes(b"DICM")
    fake = types.ModuleType("biomed.imaging.dicom.read")

    class Options:
        def __init__(self, decode_size=None):
            self.decode_size, self.limits = decode_size, None

    seen = {}

    def read_dicom(path, options=None):
        seen["size"] = options.decode_size if options else None
        return types.SimpleNamespace(image=np.full((6, 5), 0.25, np.float32))

    fake.read_dicom, fake.ReadOptions = read_dicom, Options
    fake.read_dataset = lambda path, limits=None: {}  # a header with no burned-in flags
    fake.dataset_to_image = lambda ds, path, options: read_dicom(path, options)
    monkeypatch.setitem(sys.modules, "biomed.imaging.dicom.read", fake)
    import biomed.imaging.dicom

    monkeypatch.setattr(biomed.imaging.dicom, "read", fake, raising=False)
    img = read_xray(dcm, (4, 3))
    assert img.shape == (6, 5) and seen["size"] == (4, 3)
    del fake.read_dicom
    with pytest.raises(InputError, match="a.dcm: cannot read DICOM"):
        read_xray(dcm)
    with pytest.raises(InputError, match="file not found"):
        read_xray(tmp_path / "missing.dcm")


@pytest.mark.data
@pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                    reason="real DICOM not cached: run `biomed data fetch chest_dicom`")
def test_real_dicom_in_a_folder_dataset(tmp_path: Path):
    """The real MONOCHROME1 JPEG 2000 radiograph through a folder dataset and the cache."""
    dcm = sources.path("chest_dicom", "RG1_J2KR.dcm")
    (tmp_path / "labels.csv").write_text(f"path,cardiomegaly\n{dcm},0\n")
    ds = FolderCSV(tmp_path, size=64, cache_dir=tmp_path / "cache", progress=False)
    img = ds[0]["image"]
    assert img.shape == (64, 64) and img.dtype == np.float32 and not ds.skipped
    # lungs (upper thirds, either side of the midline) darker than the mediastinum and spine
    lungs = np.r_[img[16:40, 8:24].ravel(), img[16:40, 40:56].ravel()].mean()
    assert lungs < img[16:40, 29:35].mean()


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_are_one_line_errors(nih: Path, chexpert: Path, tmp_path: Path):
    with pytest.raises(InputError, match="NIH ChestX-ray14 folder not found"):
        NIHChestXray14(tmp_path / "nowhere")
    with pytest.raises(InputError, match="Data_Entry CSV not found"):
        NIHChestXray14(tmp_path)
    csv_path = nih / "Data_Entry_2017_v2020.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("Finding Labels", "Findings"))
    with pytest.raises(InputError, match="missing required column.*'Finding Labels'"):
        NIHChestXray14(nih)
    csv_path.write_text(text + "00000105_000.png,Cardiomegaly,0,105\n")
    with pytest.raises(InputError, match="line 8: 4 fields, the header has 11"):
        NIHChestXray14(nih)
    csv_path.write_text(text + "00000105_000.png,Cardiomegally,0,105,1,M,PA,1,1,1,1\n")
    with pytest.raises(InputError, match="unknown finding 'Cardiomegally'"):
        NIHChestXray14(nih)
    csv_path.write_bytes(b"\xff\xfe\x00garbage\x00")
    with pytest.raises(InputError, match="Data_Entry_2017_v2020.csv: unreadable CSV"):
        NIHChestXray14(nih)
    csv_path.write_text(text)

    (nih / "images" / "00000101_000.png").unlink()
    ds = NIHChestXray14(nih)
    with pytest.raises(InputError) as err:
        ds[0]
    assert str(err.value) == f"{nih / 'images' / '00000101_000.png'}: file not found"

    train = chexpert / "train.csv"
    train.write_text(train.read_text().replace(",1.0,,,,,,,,,0.0,", ",yes,,,,,,,,,0.0,"))
    with pytest.raises(InputError, match="line 2: column 'No Finding' has 'yes'"):
        CheXpert(chexpert)
    with pytest.raises(ConfigError, match="uncertain='maybe'"):
        CheXpert(chexpert, csv_files=["valid.csv"], uncertain="maybe")
    with pytest.raises(ConfigError, match="split='training'"):
        NIHChestXray14(nih, split="training")
    with pytest.raises(ConfigError, match="labels='mesh'"):
        NIHChestXray14(nih, labels="mesh")
    with pytest.raises(ConfigError, match="cache_dir needs a size"):
        NIHChestXray14(nih, cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="sum to 1"):
        NIHChestXray14(nih, fractions=[0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="line 2: column 'Opacity' has 'x'"):
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / "labels.csv").write_text("path,Opacity\na.png,x\n")
        FolderCSV(tmp_path / "f")
    with pytest.raises(InputError, match="no label columns"):
        (tmp_path / "f" / "labels.csv").write_text("path,id\na.png,a\n")
        FolderCSV(tmp_path / "f")


# ---------------------------------------------------------------------------------------------
# the shipped configs


@pytest.mark.parametrize("config,fixture,overrides", [
    ("mimic_cxr_jpg", "mimic", {"reports_dir": "ROOT"}),
    ("chexpert", "chexpert", {}),
    ("nih14", "nih", {}),
    ("padchest", "padchest", {}),
    ("folder_csv", "folder", {}),
    ("openi", None, {}),
])
def test_data_configs_instantiate(config, fixture, overrides, tmp_path: Path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"paths": OmegaConf.load(CONF / "paths" / "default.yaml"),
                            "data": OmegaConf.load(CONF / "data" / f"{config}.yaml")})
    cfg.paths.run_dir = str(tmp_path / "run")
    assert "${paths.cache_dir}" in (CONF / "data" / f"{config}.yaml").read_text()
    if fixture is None:
        cfg.data.image_dir = str(tmp_path / "png")
        cfg.data.reports = str(iu_tgz(tmp_path / "NLMCXR_reports.tgz"))
        (tmp_path / "png").mkdir()
    else:
        root = copy_fixture(fixture, tmp_path)
        cfg.data.root = str(root)
        for k, v in overrides.items():
            cfg.data[k] = str(root) if v == "ROOT" else v
    cfg.data.cache_dir = None  # the shipped default caches under paths.cache_dir
    cfg.data.split = None
    ds = instantiate(cfg.data)
    assert isinstance(ds, XrayDataset) and ds.name == config and len(ds) > 0
    assert ds.size == (512, 512) and ds.labels.shape[0] == len(ds.metadata) == len(ds)
    assert ds.labels.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# the real tables (header + first rows), with generated images


def real_rows(member: str, n: int) -> tuple[list[str], list[list[str]]]:
    with gzip.open(sources.path("label_tables", member), "rt", newline="",
                   encoding="utf-8") as f:
        reader = csv.reader(f)
        return next(reader), list(islice(reader, n))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.data
@needs_tables
def test_nih_on_real_rows(tmp_path: Path):
    header, rows = real_rows("Data_Entry_2017_v2020.csv.gz", 60)
    write_csv(tmp_path / "Data_Entry_2017_v2020.csv", header, rows)
    ds = with_images(NIHChestXray14(tmp_path, split=None))
    for i, r in enumerate(rows):
        assert ds.ids[i] == r[0] and ds.patient_ids[i] == r[3]
        assert {n for n, v in zip(ds.label_names, ds.labels[i], strict=True) if v == 1} == set(
            r[1].split("|"))
    assert ds[0]["image"].shape == (20, 16)
    assert_patient_disjoint(lambda s: NIHChestXray14(tmp_path, split=s))
    canon = NIHChestXray14(tmp_path, labels="canonical")
    assert col(canon, "cardiomegaly")[0] == 1  # 00000001_000.png: Cardiomegaly


@pytest.mark.data
@needs_tables
def test_chexpert_on_real_rows(tmp_path: Path):
    header, rows = real_rows("chexpert_train.csv.gz", 60)
    write_csv(tmp_path / "train.csv", header, rows)
    raw = np.array([[_VALUES[v] for v in r[5:]] for r in rows], np.float32)
    for policy, fill in (("ignore", nan), ("ones", 1.0), ("zeros", 0.0)):
        ds = CheXpert(tmp_path, uncertain=policy)
        expected = np.where(raw == -1, fill, raw)
        np.testing.assert_array_equal(ds.labels, expected)
    ds = with_images(CheXpert(tmp_path))
    assert ds.paths[0] == str(tmp_path / "train/patient00001/study1/view1_frontal.jpg")
    assert ds[3]["image"].shape == (20, 16) and ds.metadata["view"][3] == "LATERAL"
    assert_patient_disjoint(lambda s: CheXpert(tmp_path, split=s))


_VALUES = {"": nan, "1.0": 1.0, "0.0": 0.0, "-1.0": -1.0}


@pytest.mark.data
@needs_tables
def test_padchest_on_real_rows(tmp_path: Path):
    header, rows = real_rows("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", 40)
    write_csv(tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", header, rows)
    for d in {r[2] for r in rows}:
        (tmp_path / d).mkdir(exist_ok=True)
    ds = with_images(PadChest(tmp_path, split=None))
    assert len(ds) == 40 and not ds.unknown_labels
    assert ds.paths[0] == str(tmp_path / rows[0][2] / rows[0][1])
    assert col(ds, "normal")[0] == 1  # the first real row: ['normal']
    assert col(ds, "pulmonary fibrosis")[1] == 1 and col(ds, "kyphosis")[1] == 1
    assert ds[0]["image"].shape == (20, 16)
    canon = PadChest(tmp_path, labels="canonical")
    assert canon.labels.shape == (40, len(L.CANONICAL_NAMES))
    assert col(canon, "no_finding")[0] == 1
    assert_patient_disjoint(lambda s: PadChest(tmp_path, split=s))
