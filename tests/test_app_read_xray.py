"""Read an X-ray tab (apps.tabs.read_xray) and its report bank (apps.retrieval), on the tiny
seeded classifier and CLIP of tests/helpers: probabilities, Grad-CAM, zero-shot scores,
similar cases and the retrieval rate; without models, the DICOM viewer still works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from apps import retrieval
from apps.common import display_label
from apps.context import AppContext
from apps.tabs import read_xray
from biomed import sources
from biomed.imaging.clip.evaluate import retrieval_metrics
from biomed.imaging.reports.iu import Report
from tests.helpers.classifier import tiny_classifier_dir
from tests.helpers.clip import PairedShapes, tiny_clip_dir
from tests.helpers.dicom import identifying_values, make_dataset, save

LABELS = ["no_finding", "cardiomegaly", "effusion", "effusion_left", "effusion_right"]
needs_rg1 = pytest.mark.skipif(sources.status("chest_dicom") != "cached",
                               reason="run `biomed data fetch chest_dicom` first")


def _reports(n: int = 40) -> list[Report]:
    """IU-like reports with the sentences of `PairedShapes` (what the tiny CLIP can read)."""
    shapes = PairedShapes(split=None, n_reports=n, renders=1)
    return [Report(id=f"CXR{i + 1}", findings=text) for i, text in enumerate(shapes.reports())]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from biomed.pretrained import load_classifier, load_clip

    root = tmp_path_factory.mktemp("models")
    cls_dir = tiny_classifier_dir(root / "classifier_run", LABELS, size=32)
    clip_dir = tiny_clip_dir(root / "clip_run")
    reports = root / "reports.jsonl"
    reports.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _reports()))
    classifier, config = load_classifier(cls_dir, "cpu")
    return {"classifier": classifier, "config": config, "clip": load_clip(clip_dir, "cpu"),
            "clip_dir": clip_dir, "classifier_dir": cls_dir, "reports": reports}


def _cfg(tmp_path: Path, **read) -> OmegaConf:
    return OmegaConf.create({"seed": 0, "uploads": {"key_file": str(tmp_path / "app.key"),
                                                         "delete_after_s": 0},
                             "read_xray": {"measure_images": 0, **read}})


@pytest.fixture
def ctx(tmp_path: Path, models: dict) -> AppContext:
    c = AppContext(cfg=_cfg(tmp_path, reports=str(models["reports"])),
                   classifier=models["classifier"], classifier_config=models["config"],
                   clip=models["clip"], work_dir=tmp_path / "work",
                   sources={"classifier": str(models["classifier_dir"]),
                            "clip": str(models["clip_dir"])})
    read_xray.prepare(c)
    return c


def _upload(tmp_path: Path) -> Path:
    return Path(save(make_dataset("holloway", rows=64, cols=48), tmp_path / "patient.dcm"))


def test_reading_a_dicom_with_the_models(tmp_path: Path, ctx: AppContext) -> None:
    up = read_xray.read_file(ctx, _upload(tmp_path))
    assert not (tmp_path / "patient.dcm").exists()
    shown = "\n".join(" ".join(r) for r in up.header)
    assert not [v for v in identifying_values("holloway") if v in shown]
    reading = read_xray.analyse(ctx, up.image)
    assert list(reading.probabilities) == LABELS
    assert all(0.0 <= p <= 1.0 for p in reading.probabilities.values())
    assert set(reading.calls) == set(LABELS)
    # Grad-CAM for the 3 most probable findings other than no_finding, as RGB overlays
    ranked = sorted((n for n in LABELS if n != "no_finding"),
                    key=lambda n: -reading.probabilities[n])[:3]
    assert [c.split(" (probability")[0] for _, c in reading.gradcam] == [
        f"Grad-CAM for {display_label(n)}" for n in ranked]
    for rgb, _ in reading.gradcam:
        assert rgb.dtype == np.uint8 and rgb.shape == (*up.image.shape, 3)
    assert list(reading.zero_shot) == LABELS  # CLIP scores the classifier's findings
    assert all(0.0 <= p <= 1.0 for p in reading.zero_shot.values())
    # similar cases: the 3 nearest distinct report texts, best first
    assert len(reading.similar) == 3
    scores = [h.score for h in reading.similar]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert all(h.ids[0].startswith("CXR") for h in reading.similar)
    assert reading.notes == []
    page = read_xray.similar_markdown(ctx, reading.similar)
    assert reading.similar[0].ids[0] in page and "unknown here" in page  # no rate measured


def test_the_page_shows_labels_in_words(tmp_path: Path, ctx: AppContext) -> None:
    assert [display_label(n) for n in ("effusion_right", "no_finding", "low_lung_volumes",
                                       "pneumothorax_left", "cardiomegaly")] == [
        "effusion (right)", "no finding", "low lung volumes", "pneumothorax (left)",
        "cardiomegaly"]
    up = read_xray.read_file(ctx, _upload(tmp_path))
    out = read_xray._outputs(ctx, up)
    probs, zero = out[1], out[3]
    assert list(probs) == [display_label(n) for n in LABELS] == list(zero)
    assert "effusion (left)" in probs and not any("_" in k for k in probs)


def test_probabilities_match_the_classifier(ctx: AppContext, models: dict) -> None:
    from biomed.imaging.core import pixels

    rng = np.random.default_rng(0)
    img = rng.random((50, 40)).astype(np.float32)
    probs, calls = read_xray.classify(ctx, img)
    with torch.no_grad():
        x = torch.from_numpy(pixels.resize(img, (32, 32)))[None, None]
        want = torch.sigmoid(models["classifier"](x))[0].numpy()
    assert np.allclose([probs[n] for n in LABELS], want, atol=1e-6)
    assert calls == {n: probs[n] >= 0.5 for n in LABELS}


def test_the_bank_finds_a_text_by_its_own_embedding(ctx: AppContext, models: dict) -> None:
    from biomed.imaging.clip.model import encode_texts

    bank = ctx.extras["report_bank"]
    texts = {" ".join(r.text.split()) for r in _reports()}
    assert len(bank) == len(texts) and bank.reports == 40
    clip = models["clip"]
    for u in (0, len(bank) // 2, len(bank) - 1):
        query = encode_texts(clip.model, clip.tokenizer, [bank.texts[u]])[0]
        hit = bank.search(query, k=1)[0]
        assert hit.text == bank.texts[u] and hit.score == pytest.approx(1.0, abs=1e-4)
        assert bank.index_of(hit.ids[0]) == u


def test_measured_retrieval_rate(ctx: AppContext, models: dict) -> None:
    bank = ctx.extras["report_bank"]
    shapes = PairedShapes(split=None, n_reports=40, renders=1)
    images = np.stack([shapes[i]["image"] for i in range(len(shapes))])
    ids = [f"CXR{i + 1}" for i in range(len(shapes))]
    rate = retrieval.measure_rate(models["clip"], bank, images, ids, ks=(1, 5))
    assert rate.images == 40 and rate.candidates == len(bank)
    assert rate.chance == {1: 1 / len(bank), 5: 5 / len(bank)}
    assert 0.0 <= rate.recall[1] <= rate.recall[5] <= 1.0
    # the same count by hand: the right text's rank among the bank's similarities
    sim = bank.scores(retrieval.image_embedding(models["clip"], images))
    right = torch.tensor([bank.index_of(i) for i in ids])
    top5 = sim.topk(5, dim=1).indices
    assert rate.recall[5] == pytest.approx(float((top5 == right[:, None]).any(1).float().mean()))
    assert "40 held-out phantom images" in rate.sentence()


def test_rate_read_from_the_clip_runs_metrics(tmp_path: Path, models: dict) -> None:
    rng = np.random.default_rng(1)
    img, txt = (torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 8))).float(),
                                              dim=1) for n in (12, 6))
    ev = retrieval_metrics(img, txt, [f"t{i % 6}" for i in range(12)],
                           [f"r{i % 6}" for i in range(12)])
    run = tmp_path / "clip_run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"eval_split": "test",
                                                  "evaluation": {"retrieval": ev}}))
    rate = retrieval.rate_from_metrics([tmp_path / "nothing", run])
    assert rate is not None and rate.images == 12 and rate.candidates == 6
    assert rate.recall == {k: ev["image_to_text"][f"R@{k}"] for k in (1, 5, 10)}
    assert rate.chance[1] == ev["image_to_text"]["chance@1"]
    assert "test-split evaluation" in rate.sentence()
    # the page shows it when the CLIP run folder has it
    c = AppContext(cfg=_cfg(tmp_path, reports=str(models["reports"])), clip=models["clip"],
                   sources={"clip": str(run)}, work_dir=tmp_path / "work")
    read_xray.prepare(c)
    assert c.extras["retrieval_rate"] == rate
    assert "held-out phantom images" in read_xray.similar_markdown(c, [])


def test_without_models_the_viewer_still_works(tmp_path: Path) -> None:
    ctx = AppContext(cfg=_cfg(tmp_path), work_dir=tmp_path / "work",
                     missing={"classifier": "make quickstart (or: biomed train-classifier)",
                              "clip": "make quickstart (or: biomed train-clip)"})
    read_xray.prepare(ctx)
    up = read_xray.read_file(ctx, _upload(tmp_path))
    reading = read_xray.analyse(ctx, up.image)
    assert reading.probabilities == {} and reading.gradcam == [] and reading.similar == []
    assert any("biomed train-classifier" in n for n in reading.notes)
    assert any("biomed train-clip" in n for n in reading.notes)
    shown = read_xray.window_image(up.base, 0.5, 0.25)
    assert shown.dtype == np.uint8 and shown.shape == up.base.shape
    assert (shown == 0).any() and (shown == 255).any()  # a narrow window clips both ends
    assert "de-identified" in read_xray.status_markdown(up, reading)


@pytest.mark.data
@needs_rg1
def test_the_rg1_example(ctx: AppContext) -> None:
    up = read_xray.read_example(ctx)
    assert up.kind == "dicom" and max(up.image.shape) == 1024
    assert sources.path("chest_dicom", "RG1_UNCI.dcm").is_file()  # never deleted
    shown = "\n".join(" ".join(r) for r in up.header)
    assert "Patient Identity Removed YES" in shown
    for value in ("CompressedSamples", "9RG1", "Philips Medical Systems Hamburg", "THORAX"):
        assert value not in shown
    reading = read_xray.analyse(ctx, up.image)
    assert len(reading.probabilities) == len(LABELS) and len(reading.similar) == 3


def test_the_page_has_the_contracts_ids(ctx: AppContext) -> None:
    import gradio as gr

    with gr.Blocks() as demo, gr.Tab("Read an X-ray", elem_id="tab-read"):
        read_xray.build(ctx)
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"tab-read", "read-upload", "read-example-rg1", "read-probabilities",
            "read-gradcam", "read-header", "read-similar", "read-ood-note"} <= ids
    names = [d.get("api_name") for d in config["dependencies"]]
    assert "read_xray" in names and "read_example" in names
