"""`biomed predict`: a saved classifier (or a CLIP's zero-shot scores) over a folder of PNG,
JPEG and DICOM files, with a corrupt file skipped and counted, de-identified ids, and the
classifier's preprocessing matching a direct call of the model."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.imaging.classifier import model as C
from biomed.imaging.classifier import predict as P
from biomed.imaging.core import pixels
from biomed.imaging.dicom import deid
from biomed.imaging.dicom.read import ReadOptions
from biomed.imaging.dicom.write import synthetic_dataset
from tests.helpers.classifier import tiny_classifier_dir

LABELS = ["cardiomegaly", "effusion_left", "effusion_right"]
PATIENT, MRN = "HOLLOWAY^JUNE", "MRN-4471923"
UID = "1.2.826.0.1.3680043.8.498.11223344556677"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A small random small_cnn saved as train-classifier saves it (quality is not the point)."""
    return tiny_classifier_dir(tmp_path_factory.mktemp("clf") / "run", LABELS, thresholds={
        "cardiomegaly": 0.5, "effusion_left": 0.0, "effusion_right": 1.01})


def gradient(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy * 3 + xx * (seed + 1)) % 97 / 96).astype(np.float32)


def patient_dicom(path: Path, img: np.ndarray, burned_in: bool = False) -> Path:
    """A DICOM file that names a patient, with an original SOP Instance UID as its file name's
    source (what a PACS export looks like)."""
    ds = synthetic_dataset(img, model_id="test", prompt="x", salt=b"0123456789abcdef")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT, MRN, "19500101"
    ds.InstitutionName = "St Elsewhere"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    pixels.write_png16(folder / "a.png", gradient(40, 36, 0))
    Image.fromarray((gradient(30, 30, 1) * 255).astype(np.uint8)).save(folder / "b.jpg",
                                                                      quality=95)
    patient_dicom(folder / PATIENT.split("^")[0] / f"{UID}.dcm", gradient(48, 44, 2))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    (folder / ".DS_Store").write_bytes(b"hidden files are ignored")
    return folder


def predict_cfg(tmp_path: Path, *overrides: str):
    return compose("predict", [f"paths.run_dir={tmp_path / 'out'}",
                               f"key_file={tmp_path / 'deid.key'}", *overrides])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_folder_with_png_jpeg_dicom_and_a_corrupt_file(tmp_path, inputs,
                                                               classifier_dir):
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                                f"inputs={inputs}"))
    out = tmp_path / "out"
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["id", "source", "kind", *LABELS, *[f"{n}_call" for n in LABELS]]
    assert [r["kind"] for r in rows] == ["image", "image", "dicom"]
    assert all(r["source"].startswith("hash:") for r in rows)  # by default: no path, no name
    assert metrics["predicted"] == 3 and metrics["skipped"] == 1 and metrics["inputs"] == 4
    skipped = read_csv(out / "skipped.csv")
    assert len(skipped) == 1 and skipped[0]["source"].startswith("hash:")
    assert "not a readable image" in skipped[0]["reason"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["skipped"] == 1

    # probabilities are the model's on the image squashed to its input size; calls follow the
    # saved thresholds (0.0: always positive, 1.01: never)
    model, _ = C.load_classifier(classifier_dir)
    key = deid.load_or_create_key(tmp_path / "deid.key")
    for row, img in ((rows[0], pixels.read_image(inputs / "a.png")),
                     (rows[2], gradient(48, 44, 2))):
        with torch.no_grad():
            want = torch.sigmoid(model(torch.from_numpy(pixels.resize(img, 32))[None, None]))[0]
        got = [float(row[n]) for n in LABELS]
        np.testing.assert_allclose(got, want.numpy(), atol=2e-5)
        assert (row["effusion_left_call"], row["effusion_right_call"]) == ("1", "0")
        assert row["cardiomegaly_call"] == str(int(float(row["cardiomegaly"]) >= 0.5))
    # ids: keyed hashes of the path in the folder, as `biomed dicom ingest` names its images
    hasher = deid.Deidentifier(key)
    assert rows[2]["id"] == hasher.hash_text(f"id:HOLLOWAY/{UID}.dcm")
    assert len({r["id"] for r in rows}) == 3


def test_nothing_identifying_reaches_the_outputs(tmp_path, inputs, classifier_dir):
    P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}", f"inputs={inputs}"))
    out = tmp_path / "out"
    text = "".join((out / n).read_text() for n in ("predictions.csv", "skipped.csv",
                                                   "metrics.json"))
    for secret in ("HOLLOWAY", "JUNE", MRN, UID, "Elsewhere", "19500101"):
        assert secret not in text


def test_burned_in_dicom_is_skipped_unless_allowed(tmp_path, classifier_dir):
    folder = tmp_path / "in"
    patient_dicom(folder / "x.dcm", gradient(32, 32, 3), burned_in=True)
    pixels.write_png16(folder / "ok.png", gradient(32, 32, 4))
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                                f"inputs={folder}"))
    assert metrics["predicted"] == 1 and metrics["skipped"] == 1
    reason = read_csv(tmp_path / "out" / "skipped.csv")[0]
    assert "Burned In Annotation" in reason["reason"] and reason["source"].startswith("hash:")
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                                f"inputs={folder}", "allow_burned_in=true"))
    assert metrics["predicted"] == 2 and metrics["skipped"] == 0


def test_lists_globs_and_the_classifier_subfolder(tmp_path, inputs, classifier_dir):
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir / 'classifier'}",
                                f"inputs=[{inputs / 'a.png'},{inputs}/*.jpg,{inputs / 'a.png'}]",
                                "hash_paths=true"))
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert metrics["predicted"] == 2 and len(rows) == 2  # a.png listed twice: scored once
    assert all(r["source"].startswith("hash:") for r in rows)
    P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}", f"inputs={inputs}",
                      "hash_paths=false"))  # PNG/JPEG paths in plain when asked, never DICOM
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["source"] for r in rows[:2]] == ["a.png", "b.jpg"]
    assert rows[2]["source"].startswith("hash:")


def test_input_and_model_mistakes_are_one_line_errors(tmp_path, inputs, classifier_dir):
    with pytest.raises(ConfigError, match="exactly one"):
        P.run(predict_cfg(tmp_path, f"inputs={inputs}"))
    with pytest.raises(ConfigError, match="exactly one"):
        P.run(predict_cfg(tmp_path, f"inputs={inputs}", f"classifier_dir={classifier_dir}",
                          f"clip_dir={classifier_dir}"))
    with pytest.raises(InputError, match="no such file or folder"):
        P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                          f"inputs={tmp_path / 'nowhere'}"))
    with pytest.raises(InputError, match="no file matches"):
        P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                          f"inputs={inputs}/*.tif"))
    with pytest.raises(InputError, match="not a classifier folder"):
        P.run(predict_cfg(tmp_path, f"classifier_dir={inputs}", f"inputs={inputs}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                          f"inputs={tmp_path / 'empty'}"))


def test_clip_dir_gives_zero_shot_scores(tmp_path, inputs, monkeypatch):
    calls = []

    def zero_shot_scores(clip_dir, images):
        images = np.asarray(images)
        calls.append((clip_dir, images.shape))
        means = images.mean(axis=(1, 2))
        return np.stack([means, 1 - means], 1), ["cardiomegaly", "effusion"]

    fake = types.ModuleType("biomed.imaging.clip.model")
    fake.zero_shot_scores = zero_shot_scores
    monkeypatch.setitem(sys.modules, "biomed.imaging.clip.model", fake)
    clip_dir = tmp_path / "clip_run"
    (clip_dir / "clip").mkdir(parents=True)
    (clip_dir / "clip" / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {}, "preprocess_cfg": {"size": 24, "mean": [0.5] * 3, "std": [0.2] * 3}}))
    metrics = P.run(predict_cfg(tmp_path, f"clip_dir={clip_dir}", f"inputs={inputs}",
                                "batch_size=2"))
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == ["id", "source", "kind", "cardiomegaly", "effusion"]
    assert metrics["model"] == "clip" and metrics["predicted"] == 3 and metrics["skipped"] == 1
    assert calls == [(str(clip_dir), (2, 24, 24)), (str(clip_dir), (1, 24, 24))]
    want = pixels.resize(pixels.read_image(inputs / "a.png"), 24).mean()
    assert float(rows[0]["cardiomegaly"]) == pytest.approx(want, abs=1e-5)


class PanicException(BaseException):
    """What a Rust decoder raises (pyo3): a BaseException that `except Exception` misses."""


def test_any_decoder_failure_is_one_skipped_file(tmp_path, inputs, classifier_dir,
                                                 monkeypatch):
    def panic(self, ds, path, **kw):
        raise PanicException(f"index out of bounds reading {path}")

    monkeypatch.setattr(deid.Deidentifier, "deidentify", panic)
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                                f"inputs={inputs}"))
    assert metrics["predicted"] == 2 and metrics["skipped"] == 2
    reasons = [r["reason"] for r in read_csv(tmp_path / "out" / "skipped.csv")]
    assert "cannot read: PanicException: index out of bounds reading <file>" in reasons
    assert not [r for r in reasons if "HOLLOWAY" in r or UID in r]

    def interrupted(self, ds, path, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(deid.Deidentifier, "deidentify", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops
        P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}", f"inputs={inputs}"))


def test_the_run_records_no_input_path(tmp_path, classifier_dir, monkeypatch):
    """provenance.json's command line, .hydra/ and a failure's message: the inputs= paths of a
    run whose inputs are de-identified appear as keyed hashes only."""
    folder = tmp_path / "DOE_JOHN_123"
    pixels.write_png16(folder / "a.png", gradient(32, 32, 0))
    overrides = [f"classifier_dir={classifier_dir}", f"inputs={folder}"]
    monkeypatch.setattr(sys, "argv", ["biomed", "predict", *overrides])
    P.run(predict_cfg(tmp_path, *overrides))
    out = tmp_path / "out"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["argv"][-1].startswith("inputs=<input:") and prov["argv"][-2] == overrides[0]
    for path in out.rglob("*"):
        if path.is_file():
            assert "DOE_JOHN_123" not in path.read_text(errors="replace"), path

    gone = [f"classifier_dir={classifier_dir}", f"inputs={tmp_path / 'SMITH_JANE_456'}"]
    monkeypatch.setattr(sys, "argv", ["biomed", "predict", *gone])
    with pytest.raises(InputError, match="SMITH_JANE_456: no such file"):  # the user sees it
        P.run(predict_cfg(tmp_path, *gone))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "no such file" in metrics["error"]
    for path in out.rglob("*"):
        if path.is_file():
            assert "SMITH_JANE_456" not in path.read_text(errors="replace"), path


def test_pillow_images_are_capped(tmp_path, classifier_dir, monkeypatch):
    from biomed.imaging.dicom import guard

    folder = tmp_path / "in"
    pixels.write_png16(folder / "a.png", gradient(32, 32, 0))
    pixels.write_png16(folder / "big.png", gradient(64, 64, 0))
    monkeypatch.setattr(P, "ReadOptions", lambda **kw: ReadOptions(
        **kw, limits=guard.Limits(max_pixels=2000)))
    metrics = P.run(predict_cfg(tmp_path, f"classifier_dir={classifier_dir}",
                                f"inputs={folder}"))
    assert metrics["predicted"] == 1 and metrics["skipped"] == 1
    [row] = read_csv(tmp_path / "out" / "skipped.csv")
    assert "image too large: the image header declares 64x64" in row["reason"]
