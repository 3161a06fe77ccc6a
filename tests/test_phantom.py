"""The phantom chest radiograph renderer, its lung-shape bank and the `biomed phantom` tool."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from biomed import sources
from biomed.cli import main as cli_main
from biomed.errors import DataNotFetched
from biomed.imaging.core.findings import FINDING_NAMES, PhantomFinding, labels_of
from biomed.imaging.core.labels import CANONICAL_NAMES
from biomed.imaging.core.pixels import png_text, read_image
from biomed.imaging.phantom import lesions, tool
from biomed.imaging.phantom import render as phantom
from biomed.imaging.phantom import scene as phantom_scene
from biomed.imaging.phantom import shapes as lung_shapes
from biomed.imaging.phantom.dataset import PhantomIU
from biomed.imaging.reports.iu import Report

COL = {n: i for i, n in enumerate(CANONICAL_NAMES)}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def shapes():
    """The parametric bank: fast, and the same with or without the fetched data."""
    return lung_shapes.parametric_shapes(64, n=8)


def halves(img: np.ndarray, info: dict | None = None, margin: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """(image-left, image-right) of the patient's midline (or of the image's centre), each
    ``margin`` pixels short of it: the patient's right and left."""
    mid = round(info["attributes"]["midline_col"]) if info else img.shape[1] // 2
    return img[:, :mid - margin], img[:, mid + margin:]


def test_pixel_convention_and_determinism(shapes):
    for size in (64, 128):
        a = phantom.render(["nodule", "effusion"], 5, size, shapes=shapes)
        b = phantom.render(["nodule", "effusion"], 5, size, shapes=shapes)
        assert a.dtype == np.float32 and a.shape == (size, size)
        assert a.min() >= 0.0 and a.max() <= 1.0 and np.isfinite(a).all()
        assert np.array_equal(a, b)  # bit-identical for the same findings, seed and size
        assert not np.array_equal(a, phantom.render(["nodule", "effusion"], 6, size,
                                                    shapes=shapes))
    batch = phantom.render_batch([[], ["mass"]], [3, 4], 64, shapes=shapes)
    assert batch.shape == (2, 64, 64)
    assert np.array_equal(batch[1], phantom.render(["mass"], 4, 64, shapes=shapes))


def test_reads_as_a_radiograph(shapes):
    """Lungs darker than the mediastinum and the abdomen; air outside the body black."""
    img = phantom.render([], 0, 128, shapes=shapes)
    lung = np.r_[img[50:70, 25:40].ravel(), img[50:70, 88:103].ravel()].mean()
    assert img[40:60, 60:68].mean() > lung + 0.2  # mediastinum
    assert img[115:125, 40:90].mean() > lung + 0.2  # below the diaphragm
    assert img[60:80, :3].mean() < 0.1  # outside the body


def test_resolved_findings_are_the_ground_truth(shapes):
    found = [PhantomFinding("effusion"), "nodule", {"name": "support_devices"},
             {"name": "pneumothorax", "severity": 3}, "cardiomegaly"]
    _, info = phantom.render_with_info(found, 11, 64, shapes=shapes)
    got = {f.name: f for f in info["findings"]}
    assert len(info["findings"]) == 5
    for name in ("effusion", "nodule", "pneumothorax"):
        assert got[name].side in ("left", "right", "bilateral")
    assert got["nodule"].zone in ("upper", "middle", "lower")
    assert got["support_devices"].device in ("endotracheal_tube", "central_line")
    assert got["cardiomegaly"].side is None
    labels = labels_of(info["findings"])
    assert not np.isnan(labels).any()
    side = got["pneumothorax"].side
    assert labels[COL[f"pneumothorax_{side}"]] == 1
    assert labels[COL["pneumothorax_" + ("left" if side == "right" else "right")]] == 0
    json.dumps(info["attributes"])  # JSON-ready
    for key in ("patient_size", "tilt_deg", "inspiration", "exposure", "cardiothoracic_ratio",
                "lung_shape_index"):
        assert key in info["attributes"]


def test_left_effusion_brightens_the_image_right_base(shapes):
    for seed in SEEDS:
        base = phantom.render([], seed, 128, shapes=shapes)
        eff, info = phantom.render_with_info([PhantomFinding("effusion", "left", 3)], seed, 128,
                                             shapes=shapes)
        left_img, right_img = halves(eff - base, info, margin=3)
        assert np.array_equal(left_img, np.zeros_like(left_img))  # the patient's right: same
        assert right_img[64:].mean() > 0.03  # lower image-right: brighter
        assert abs(right_img[:40].mean()) < 0.005  # the upper zone barely changes


def test_cardiomegaly_raises_the_measured_ratio(shapes):
    for seed in SEEDS:
        ctr = [phantom.render_with_info([], seed, 128, shapes=shapes)[1]["attributes"]
               ["cardiothoracic_ratio"]]
        for sev in (1, 2, 3):
            _, info = phantom.render_with_info([PhantomFinding("cardiomegaly", severity=sev)],
                                               seed, 128, shapes=shapes)
            ctr.append(info["attributes"]["cardiothoracic_ratio"])
        assert 0.38 < ctr[0] < 0.5 < ctr[1] < ctr[2] < ctr[3] < 0.75, ctr


def test_pneumothorax_darkens_its_side_and_removes_markings(shapes, monkeypatch):
    f = PhantomFinding("pneumothorax", "right", 3)
    bare = np.zeros_like(phantom_scene.vessel_bank())
    for seed in SEEDS:
        base = phantom.render([], seed, 128, shapes=shapes)
        ptx, info = phantom.render_with_info([f], seed, 128, shapes=shapes)
        left_img, right_img = halves(ptx - base, info, margin=3)
        assert np.array_equal(right_img, np.zeros_like(right_img))  # the patient's left: same
        space = np.zeros(ptx.shape, bool)
        space[:, :left_img.shape[1]] = left_img < -0.03  # darker: air without lung markings
        assert space[:64].sum() > 60  # at the apex and laterally

        # the vascular markings: what the vessel trees add; none of it in the space
        with monkeypatch.context() as m:
            m.setattr(phantom_scene, "vessel_bank", lambda: bare)  # where the scene looks it up
            base_bare = phantom.render([], seed, 128, shapes=shapes)
            ptx_bare = phantom.render([f], seed, 128, shapes=shapes)
        inner = ndimage.binary_erosion(space, iterations=2)  # clear of the line and the blur
        assert inner.sum() > 30
        assert np.abs(base - base_bare)[inner].max() > 0.02  # markings there before
        assert np.abs(ptx - ptx_bare)[inner].max() < 0.002  # and none left


@pytest.mark.parametrize("name", ["nodule", "calcified_granuloma", "mass", "consolidation",
                                  "atelectasis"])
def test_focal_findings_are_drawn_on_their_side(shapes, name):
    for side, other in (("left", 0), ("right", 1)):
        f = PhantomFinding(name, side, severity=2 if name != "atelectasis" else 1)
        img, info = phantom.render_with_info([f], 4, 128, shapes=shapes)
        h = halves(np.abs(img - phantom.render([], 4, 128, shapes=shapes)), info, margin=3)
        assert h[other].sum() == 0 and h[1 - other].max() > 0.05, (name, side)


def test_whole_lung_findings(shapes):
    seed = 2
    base, info0 = phantom.render_with_info([], seed, 128, shapes=shapes)
    lung_area = (base < 0.4).sum()
    emph, info = phantom.render_with_info(["emphysema"], seed, 128, shapes=shapes)
    assert info["attributes"]["inspiration"] > info0["attributes"]["inspiration"]
    assert (emph < 0.4).sum() > lung_area * 1.1  # large dark lungs
    low = phantom.render([PhantomFinding("low_lung_volumes", severity=3)], seed, 128,
                         shapes=shapes)
    assert (low < 0.4).sum() < lung_area * 0.9
    oedema = phantom.render([PhantomFinding("edema", severity=3)], seed, 128, shapes=shapes)
    left_img, right_img = halves(oedema - base)
    assert left_img.mean() > 0.01 and right_img.mean() > 0.01  # bilateral


def test_support_devices_draw_bright_lines(shapes):
    base = phantom.render([], 1, 128, shapes=shapes)
    for device in ("endotracheal_tube", "central_line"):
        img, info = phantom.render_with_info([PhantomFinding("support_devices", device=device)],
                                             1, 128, shapes=shapes)
        diff = img - base
        assert diff.max() > 0.05 and (diff > 0.03).sum() < 0.05 * diff.size  # thin
        detail = info["attributes"]["details"]["support_devices"][0]
        if device == "endotracheal_tube":  # tip above the carina
            assert detail["tip_row"] < detail["carina_row"]


def test_parametric_fallback_without_data(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        bank = lung_shapes.load_lung_shapes(64)
    assert bank.source == "parametric" and len(bank) > 0
    assert "parametric" in caplog.text
    lab = bank.labels()
    cols = np.arange(64)
    assert (lab == 1).any() and (lab == 2).any()
    assert ((lab == 1) * cols).sum() / (lab == 1).sum() < ((lab == 2) * cols).sum() / (
        lab == 2).sum()  # the patient's right lung on the image's left
    img = phantom.render(["effusion"], 0, 64)  # the default bank falls back too
    assert img.shape == (64, 64)
    with pytest.raises(DataNotFetched):
        lung_shapes.load_lung_shapes(64, fallback=False)


def test_normalise_mask_keeps_two_lungs_and_rejects_odd_ones():
    m = np.zeros((100, 120), bool)
    m[10:90, 10:50] = True  # the patient's right lung (image left), the larger
    m[15:88, 70:105] = True
    m[5, 115] = True  # a speck: not one of the two largest
    right, left, mid, aspect = lung_shapes.normalise_mask(m, 32)
    assert right.shape == left.shape == (32, 32)
    assert right[:, :12].mean() > 200 and left[:, -10:].mean() > 200
    assert 0.4 < mid < 0.7 and aspect == pytest.approx(80 / 95)
    one = np.zeros((50, 50), bool)
    one[10:40, 10:40] = True
    assert lung_shapes.normalise_mask(one, 32) == "one component"
    assert lung_shapes.normalise_mask(np.zeros((50, 50), bool), 32) == "empty"
    odd = m.copy()
    odd[15:88, 70:105] = False
    odd[40:45, 80:84] = True
    assert lung_shapes.normalise_mask(odd, 32) in ("asymmetric", "tiny")


@pytest.mark.data
@pytest.mark.skipif(sources.status("lung_masks") != "cached",
                    reason="run `biomed data fetch lung_masks` first")
def test_real_lung_shape_bank_is_built_and_cached():
    bank = lung_shapes.load_lung_shapes(128, fallback=False)
    assert bank.source == "masks"
    assert 300 < bank.stats["accepted"] == len(bank) <= bank.stats["read"] == 517
    cached = bank.stats["cache"]
    assert cached.endswith(".npz") and sources.cache_dir().as_posix() in cached
    again = lung_shapes.load_lung_shapes(128, fallback=False)  # from the cache
    assert np.array_equal(again.right, bank.right) and np.array_equal(again.left, bank.left)
    lab = bank.labels()
    cols = np.arange(128)
    assert ((lab == 1) * cols).sum() / (lab == 1).sum() < 60 < ((lab == 2) * cols).sum() / (
        lab == 2).sum()
    img, info = phantom.render_with_info(["cardiomegaly"], 0, 64, shapes=bank)
    assert info["attributes"]["lung_shape_source"] == "masks" and img.shape == (64, 64)


def test_parse_finding_spec():
    f = tool.parse_finding_spec("effusion:left:3")
    assert (f.name, f.side, f.severity) == ("effusion", "left", 3)
    f = tool.parse_finding_spec("nodule:upper:right")
    assert (f.side, f.zone, f.severity) == ("right", "upper", 2)
    assert tool.parse_finding_spec("support_devices:central_line").device == "central_line"
    for bad in ("effusion:up", "effusion:left:right", "effusion:7", "no_such_finding"):
        with pytest.raises(ValueError):
            tool.parse_finding_spec(bad)


def test_cli_render_writes_a_16_bit_png_with_provenance(tmp_path, capsys):
    out = tmp_path / "x.png"
    rc = cli_main(["phantom", "render", "--finding", "effusion:left:3", "--finding",
                   "nodule:right", "--seed", "0", "--size", "64", "--out", str(out)])
    assert rc == 0
    img = read_image(out)
    assert img.shape == (64, 64) and img.dtype == np.float32
    text = png_text(out)
    assert text["synthetic"] == "phantom" and text["seed"] == "0"
    drawn = json.loads(text["findings"])
    assert drawn[0] == {"name": "effusion", "side": "left", "severity": 3}
    assert drawn[1]["side"] == "right" and drawn[1]["zone"] in ("upper", "middle", "lower")
    expected = phantom.render([tool.parse_finding_spec("effusion:left:3"),
                               tool.parse_finding_spec("nodule:right")], 0, 64)
    assert np.abs(img - expected).max() <= 1 / 65535


def test_cli_rejects_a_bad_finding(tmp_path, capsys):
    rc = cli_main(["phantom", "render", "--finding", "effusion:sideways", "--out",
                   str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_grid_has_every_finding(tmp_path, shapes):
    grid = tool.phantom_grid(32, shapes=shapes)
    rows = tool._grid_rows()
    names = {spec.get("name") for _, specs in rows for spec in specs}
    assert names - {None} == set(FINDING_NAMES)
    assert grid.shape[0] == max(18, 32 // 6) + 32 * len(rows) and grid.dtype == np.float32
    out = tmp_path / "grid.png"
    assert tool.phantom_main(["grid", "--out", str(out), "--size", "24"]) == 0
    assert png_text(out)["synthetic"] == "phantom" and read_image(out).shape[0] > 24 * 20


def test_every_finding_has_a_drawer_or_a_reshaper():
    """`lesions` is where a finding goes: each one of the vocabulary acts through a registry."""
    assert set(FINDING_NAMES) == set(lesions.DRAWERS) | set(lesions.RESHAPERS)


# ---------------------------------------------------------------------------------------------
# what rendered sets are keyed by: every renderer module and the lung shapes used


def test_renderer_modules_cover_the_package():
    """A new module of the renderer is part of the cache key (only the dataset, which keys its
    cache by it, and the command-line tool, which draws nothing of its own, are not)."""
    package = Path(phantom.__file__).parent
    modules = {f"biomed.imaging.phantom.{p.stem}" for p in package.glob("*.py")}
    outside = {"biomed.imaging.phantom.__init__", "biomed.imaging.phantom.dataset",
               "biomed.imaging.phantom.tool"}
    assert modules - outside <= set(phantom.RENDERER_MODULES)
    assert "biomed.imaging.core.findings" in phantom.RENDERER_MODULES  # defaults, vocabulary


def test_renderer_fingerprint_follows_the_sources_and_the_lung_shapes(shapes, monkeypatch,
                                                                      tmp_path):
    key = phantom.renderer_fingerprint(shapes)
    assert key == phantom.renderer_fingerprint(shapes)
    assert key.endswith("/" + shapes.fingerprint()) and shapes.fingerprint().startswith(
        "parametric-")
    masks = _as_masks(lung_shapes.parametric_shapes(64, n=8, seed=1))
    assert phantom.renderer_fingerprint(masks).split("/")[1].startswith("masks-")
    assert phantom.renderer_fingerprint(masks) != key
    # any edit of any renderer module gives another key
    for name in ("biomed.imaging.phantom.lesions", "biomed.imaging.phantom.scene"):
        module = importlib.import_module(name)
        edited = tmp_path / f"{name}.py"
        edited.write_bytes(Path(module.__file__).read_bytes() + b"\n# an edit\n")
        with monkeypatch.context() as m:
            m.setattr(module, "__file__", str(edited))
            assert phantom.renderer_fingerprint(shapes) != key


def _as_masks(bank: lung_shapes.LungShapes) -> lung_shapes.LungShapes:
    """Another bank that says it holds real masks (stands in for the fetched data)."""
    return lung_shapes.LungShapes(bank.right, bank.left, bank.midline, bank.aspect, "masks")


def test_phantom_set_is_rendered_again_once_the_real_lung_shapes_arrive(monkeypatch, tmp_path):
    """A set rendered on the parametric fallback (before `biomed data fetch`) is not reused
    once the real masks are there: the cache key names the lung shapes used."""
    monkeypatch.setenv("BIOMED_CACHE", str(tmp_path / "no_data"))  # nothing fetched
    monkeypatch.setattr(lung_shapes, "_SHAPES", {})
    reports = [Report(id=f"CXR{i}", impression=f"Impression {i}.",
                      mesh_major=[["normal"], ["Pleural Effusion"]][i % 2]) for i in range(4)]

    def build() -> PhantomIU:
        return PhantomIU(reports, size=16, renders_per_report=1, templates_per_finding=0,
                         cache_dir=tmp_path / "sets", progress=False, workers=1)

    before = build()
    assert before.renders == 4 and build().renders == 0  # the same shapes: reused
    assert json.loads(before.metadata["attributes"][0])["lung_shape_source"] == "parametric"
    # the data arrives; a new process loads the real bank
    real = _as_masks(lung_shapes.parametric_shapes(128, n=8, seed=1))
    monkeypatch.setattr(lung_shapes, "_SHAPES", {})
    monkeypatch.setattr(lung_shapes, "load_lung_shapes", lambda grid=128, **kw: real)
    after = build()
    assert after.fingerprint != before.fingerprint and after.renders == 4
    assert json.loads(after.metadata["attributes"][0])["lung_shape_source"] == "masks"
