"""The quickstart's report page (`biomed.quickstart_report`): one self-contained file, every
section, targets marked correctly, text escaped, missing and malformed parts said on the page.

The run folder is built by hand with the files and keys the real stages write (read from
biomed/quickstart.py, biomed/lm/train.py, biomed/imaging/classifier/evaluate.py,
biomed/imaging/clip/evaluate.py, biomed/imaging/diffusion/sample.py and evaluate/, and the
augment summary schema), so the test runs in a second without training anything.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomed.errors import InputError
from biomed.imaging.core.pixels import image_grid, write_png16
from biomed.quickstart_report import TARGETS, build_quickstart_report

EVIL = '<script>alert("x")</script> & <b>bold</b>'
SRC_HREF = re.compile(r"""\b(src|href)\s*=\s*["']([^"']*)["']""", re.I)
IMG = re.compile(r"<img\b[^>]*>", re.I)


def _ci(v: float, w: float = 0.02) -> dict:
    return {"value": v, "ci_low": v - w, "ci_high": v + w}


def _write(root: Path, rel: str, obj) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1))


def _image(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size), dtype=np.float32)


def _stages(ppl_ratio: float = 5.3, clear: float = 0.949, card: float | None = 0.91,
            eff: float = 0.5, eff_positives: int = 60) -> dict[str, dict]:
    """stages/<name>.json as biomed/quickstart.py writes them (``inputs`` is a hash)."""
    fid = {"fidelity_suites_auroc_effusion": eff, "fidelity_suites_n_pos_effusion": eff_positives,
           "laterality_accuracy_effusion": 1.0, "negation_share_effusion": 0.75}
    if card is not None:  # a finding with no positive prompt has no key at all
        fid["fidelity_suites_auroc_cardiomegaly"] = card
        fid["fidelity_suites_n_pos_cardiomegaly"] = 35
    s = {"corpus": {"pubmed_abstracts": 33272, "pubmed_records_read": 40000},
         "reports": {"iu_reports": 3955},
         "lm": {"lm_val_ppl": 280.0, "lm_unigram_ppl": 280.0 * ppl_ratio,
                "lm_ppl_ratio": ppl_ratio, "lm_steps": 2400, "lm_tokens_per_s": 8000.0},
         "phantom": {"phantom_images": 9000, "phantom_reports_used": 2700,
                     "phantom_templates": 1200},
         "classifier": {"classifier_clear_macro_auroc": clear, "classifier_macro_auroc": 0.88,
                        "classifier_lr_accuracy_effusion": 0.97, "classifier_steps": 489},
         "clip": {"clip_zs_auroc_cardiomegaly": 0.96, "clip_zs_auroc_effusion": 0.85,
                  "clip_i2t_R@5": 0.3, "clip_steps": 224},
         "diffusion": {"diffusion_steps": 211, "diffusion_val_loss": 0.08, "samples": 4,
                       "fid_classifier": 3.2, **fid},
         "augment": {"augment_gain_diffusion_mix_x1": [0.012, -0.003, 0.025],
                     "augment_cells": 12}}
    return {k: {**v, f"{k}_seconds": 10.0 * (i + 1), "inputs": "ab" * 32}
            for i, (k, v) in enumerate(s.items())}


def fake_run(root: Path, *, smoke: bool = False, **targets) -> Path:
    """A complete quickstart run folder (every part) with the real file shapes."""
    stages = ["corpus", "reports", "lm", "phantom", "classifier", "clip", "diffusion", "augment",
              "report"]
    _write(root, ".hydra/config.yaml", "command: quickstart\nseed: 0\nstages:\n"
           + "".join(f"- {s}\n" for s in stages) + f"debug: {'smoke' if smoke else 'null'}\n")
    _write(root, "provenance.json", {
        "command": "quickstart", "argv": ["biomed quickstart"] + (["debug=smoke"] if smoke else []),
        "started": "2026-12-01T23:00:00", "git": {"commit": "1123f5b" + "0" * 33, "dirty": False},
        "packages": {"torch": "2.14.1", "Pillow": "13.0.0", "missing-one": None},
        "python": "3.11.7", "platform": "Linux-x86_64", "data_files": []})
    for name, rec in _stages(**targets).items():
        _write(root, f"stages/{name}.json", rec)
    _write(root, "lm/metrics.json", {"val_loss": 5.6, "val_ppl": 280.0, "unigram_ppl": 1483.0,
                                     "ppl_ratio": 5.3, "steps": 2400, "tokens_per_s": 8123.4,
                                     "params": 3_500_000, "key_metrics": ["val_ppl"]})
    _write(root, "lm/samples.jsonl", "".join(json.dumps(
        {"prompt": p, "sample": 0, "text": t, "new_tokens": 8, "finished": False,
         "model": "lm/model", "seed": 0}) + "\n" for p, t in
        [("Pleural effusion", " is common."), ("The aim", " " + EVIL)]))
    _write(root, "phantom/stats.json", {
        "reports": {"total": 3955, "included": 3327, "used": 2700, "excluded": 628,
                    "excluded_by": {"other": 628}},
        "report_positives": {"cardiomegaly": 300, "effusion": 150}, "renders": 8100,
        "templates": 1200, "rows": 9300, "positives": {"train": {"iu": {"cardiomegaly": 1}}}})
    write_png16(root / "phantom/examples.png", image_grid([_image(i) for i in range(4)], 2))
    _write(root, "phantom/examples.txt", "CXR1#0: Normal chest.\nCXR7#0: " + EVIL + "\n")
    per_label = {"cardiomegaly": {"n_pos": 30, "n_neg": 300, "auroc": _ci(0.96),
                                  "ap": _ci(0.8), "ece": 0.02, "threshold": 0.4},
                 "atelectasis": {"n_pos": 0, "n_neg": 330, "auroc": None, "ap": None}}
    split = {"n": 330, "per_label": per_label, "macro_auroc": _ci(0.88),
             "clear_macro_auroc": _ci(0.949), "clear_findings_used": ["cardiomegaly"],
             "ece": 0.03, "left_right": {"effusion": {"n": 20, "accuracy": 0.95,
                                                      **_ci(0.95)}}}
    _write(root, "classifier/metrics.json", {
        "eval_split": "test", "labels": list(per_label), "val": split, "test": split,
        "macro_auroc": 0.88, "clear_macro_auroc": 0.949, "lr_accuracy_effusion": 0.95,
        "steps": 489, "classifier_dir": "classifier/classifier"})
    retrieval = {f"{w}@{k}": 0.1 * k / 10 for w in ("R", "chance") for k in (1, 5, 10)}
    _write(root, "clip/metrics.json", {
        "steps": 224, "zs_auroc_cardiomegaly": 0.965, "zs_auroc_effusion": 0.856,
        "evaluation": {"items": 300, "zero_shot": {
            f: {"auroc": v, "ci_low": v - 0.03, "ci_high": v + 0.03, "positives": 30,
                "negatives": 270} for f, v in (("cardiomegaly", 0.965), ("effusion", 0.856))},
            "retrieval": {"images": 300, "texts": 280, "reports": 280,
                          "image_to_text": retrieval, "text_to_image": retrieval}}})
    _write(root, "diffusion/metrics.json", {"steps": 211, "val_loss": 0.0812,
                                            "images_per_s": 7.1, "pipeline_dir": "x"})
    manifest = []
    for k in range(3):  # biomed/imaging/diffusion/sample.py: samples/<id>_<k>.png under samples/
        write_png16(root / f"samples/samples/p0000_{k}.png", _image(10 + k, 64))
        manifest.append({"file": f"samples/p0000_{k}.png", "prompt_policy": "text",
                         "prompt": "Moderate left " + EVIL, "prompt_id": "p0000",
                         "prompt_index": 0, "k": k, "seed": 100 + k, "base_seed": 0,
                         "steps": 20, "guidance": 4.0, "scheduler": "dpmpp", "model_id": "m",
                         "seconds": 0.5, "diverged": k == 2, "noise_score": 0.1})
    manifest.append({"file": "../../provenance.json", "prompt": "outside", "seed": 1})
    _write(root, "samples/manifest.jsonl", "".join(json.dumps(m) + "\n" for m in manifest)
           + "{torn line\n")
    write_png16(root / "samples/samples/grid.png", _image(20, 64))
    _write(root, "diffusion_eval/metrics.json", {
        "n_prompts": 100, "images_generated": 180, "diverged": 0, "fid_classifier": 3.21,
        "fidelity": {"cardiomegaly": {"n_pos": 10, "n_neg": 90, "generated": _ci(0.91),
                                      "real": _ci(0.99)},
                     "effusion": {"n_pos": 12, "n_neg": 88, "generated": _ci(0.5),
                                  "real": _ci(0.98)},
                     "mass": {"n_pos": 0, "n_neg": 100, "generated": None, "real": None}},
        "fidelity_with_suites": {"effusion": {"n_pos": 77, "n_neg": 120, "generated": _ci(0.88),
                                              "n_pos_templated": 64, "n_pos_held_out": 13}},
        "fidelity_macro_auroc": 0.705, "real_macro_auroc": 0.985,
        "laterality": {"effusion": {"n": 32, "accuracy": _ci(1.0, 0.0), "accuracy_left": 1.0,
                                    "accuracy_right": 1.0, "real": None},
                       "pneumothorax": {"skipped": "the classifier has no pneumothorax_left"}},
        "negation": {"effusion": {"n_pairs": 16, "share": _ci(0.75), "ties": 0,
                                  "mean_p_stated": 0.6, "mean_p_negated": 0.3}},
        "fidelity_auroc_cardiomegaly": 0.91, "fidelity_auroc_effusion": 0.5})
    write_png16(root / "diffusion_eval/grid.png", image_grid([_image(i) for i in range(6)], 3))
    gain = {"fraction": 0.05, "source": "diffusion", "mode": "mix", "ratio": 1,
            "shuffled_labels": False, "endpoint": "macro_clear", "metric": "auroc",
            "value": 0.012, "ci_low": -0.003, "ci_high": 0.025, "n_seeds": 2, "baseline": 0.85,
            "exploratory": False, "subgroup": "all"}
    _write(root, "augment/metrics.json", {
        "status": "completed", "title": "Synthetic augmentation: phantom_iu " + EVIL,
        "demonstration": True, "cells": {"planned": 12, "done": 12, "failed": []},
        "gains": [gain, {**gain, "source": "phantom_oracle", "mode": "pretrain", "ratio": 4,
                         "value": 0.031, "ci_low": 0.01, "ci_high": 0.05},
                  {**gain, "endpoint": "cardiomegaly", "value": 0.777, "exploratory": True},
                  {**gain, "subgroup": "sex=F", "value": 0.666}]})
    _write(root, "augment/report.html", "<!doctype html><title>sweep</title>")
    _write(root, "augment/results.csv", "cell,finding,auroc\n")
    return root


def _render(root: Path, **kw) -> str:
    return build_quickstart_report(root, **kw).read_text(encoding="utf-8")


def _stage_row(page: str, stage: str) -> str:
    m = re.search(rf"<tr><td>{stage}</td>.*?</tr>", page)
    assert m, f"no row for stage {stage}"
    return m.group(0)


def test_full_run_one_self_contained_page(tmp_path: Path) -> None:
    root = fake_run(tmp_path / "run")
    before = {p for p in root.rglob("*")}
    out = build_quickstart_report(root)
    assert out == root / "report.html"
    assert {p for p in root.rglob("*")} - before == {out}  # one file, no temp file left
    page = out.read_text(encoding="utf-8")
    for title in ("Language model", "Phantom chest X-rays", "Classifier", "CXR-CLIP",
                  "Diffusion", "Synthetic augmentation"):
        assert re.search(rf"<h2>{title}", page), title
    assert 'name="viewport"' in page and "overflow-x:auto" in page and "max-width" in page
    for attr, value in SRC_HREF.findall(page):
        if attr.lower() == "src":
            assert value.startswith("data:image/png;base64,")
        else:
            assert value == "augment/report.html"
    assert not re.search(r"<link|<script|@import|url\(", page, re.I)
    imgs = IMG.findall(page)
    assert len(imgs) == 1 + 3 + 1  # phantom sheet, 3 samples (not the one outside), eval grid
    assert all(re.search(r'alt="[^"]+"', i) for i in imgs)
    assert "not patients" in page and "phantoms" in page
    assert "debug=smoke" not in page
    assert "1123f5b" in page and "torch 2.14.1" in page and "CPU cores" in page


def test_samples_are_8bit_thumbnails_labelled_synthetic(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path))
    samples = [i for i in IMG.findall(page) if "for the prompt" in i]
    assert len(samples) == 3 and all("SYNTHETIC" in i for i in samples)
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', samples[0]).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
        assert im.mode == "L" and max(im.size) <= 192
    assert page.count('<span class="synth">SYNTHETIC</span>') >= 3
    assert "flagged diverged" in page  # the third sample
    assert "1 manifest line(s) could not be parsed" in page


def test_targets_marked_met_and_not_met(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path, ppl_ratio=5.3, clear=0.949, card=0.91, eff=0.5))
    assert 'class="met">met' in _stage_row(page, "lm")
    assert 'class="notmet">not met' in _stage_row(page, "classifier")
    diff = _stage_row(page, "diffusion")
    assert diff.count('class="met">met') == 1 and diff.count('class="notmet">not met') == 1
    assert "met" not in _stage_row(page, "clip")  # no target known
    page = _render(fake_run(tmp_path, ppl_ratio=4.9, clear=0.95, card=None, eff=0.85))
    assert 'class="notmet">not met' in _stage_row(page, "lm")  # val ppl above unigram/5
    assert 'class="met">met' in _stage_row(page, "classifier")  # at the threshold
    diff = _stage_row(page, "diffusion")  # cardiomegaly had no positive prompt: no number
    assert "n/a" in diff and diff.count('class="met">met') == 1
    assert {(t.stage, t.key) for t in TARGETS} >= {
        ("lm", "lm_ppl_ratio"), ("classifier", "classifier_clear_macro_auroc"),
        ("diffusion", "fidelity_suites_auroc_cardiomegaly"),
        ("diffusion", "fidelity_suites_auroc_effusion")}
    # a fidelity above the threshold on too few positive prompts is not met
    page = _render(fake_run(tmp_path, eff=0.95, eff_positives=12))
    diff = _stage_row(page, "diffusion")
    assert "not met: 12 positives &lt; 30" in diff and diff.count('class="met">met') == 1


def test_stage_times_and_headlines(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path))
    assert "10.0 s" in _stage_row(page, "corpus") and "33,272" in _stage_row(page, "corpus")
    assert "1 min 20 s" in _stage_row(page, "augment")  # the 8th stage: 80 s
    assert "0.012 [-0.003, 0.025]" in _stage_row(page, "augment")
    assert "running now" in _stage_row(page, "report")
    total = re.search(r"<b>total</b></td><td><b>([^<]+)</b>", page).group(1)
    assert total == "6 min 0 s"  # 10 + 20 + ... + 80


def test_text_from_files_is_escaped(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path))
    assert "<script>" not in page and "<b>bold</b>" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
    assert page.count(escaped) >= 4  # LM sample, phantom caption, sample prompts, augment title
    assert escaped in re.search(r"<h2>Language model.*?</section>", page, re.S).group(0)


def test_sections_numbers(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path))
    lm = re.search(r"<h2>Language model.*?</section>", page, re.S).group(0)
    assert "280.0" in lm and "1483.0" in lm and "5.30" in lm and "2,400" in lm
    assert "Pleural effusion</b> is common." in lm
    clf = re.search(r"<h2>Classifier.*?</section>", page, re.S).group(0)
    assert "0.949 [0.929, 0.969]" in clf and "0.960 [0.940, 0.980]" in clf
    assert "0.950 [0.930, 0.970] (n = 20)" in clf and "atelectasis" in clf
    clip = re.search(r"<h2>CXR-CLIP.*?</section>", page, re.S).group(0)
    assert "0.965 [0.935, 0.995]" in clip and "0.856" in clip and "0.050 (0.050)" in clip
    diff = re.search(r"<h2>Diffusion.*?</section>", page, re.S).group(0)
    assert "0.0812" in diff and "0.910 [0.890, 0.930]" in diff and "skipped" in diff
    assert "0.750 [0.730, 0.770]" in diff and "3.21" in diff
    assert "77 (64 + 13) / 120" in diff and "0.880 [0.860, 0.900]" in diff
    aug = re.search(r"<h2>Synthetic augmentation.*?</section>", page, re.S).group(0)
    assert "demonstration" in aug and "[-0.003, 0.025]" in aug and "0.031" in aug
    assert "0.777" not in aug and "0.666" not in aug  # exploratory and subgroup rows left out
    assert 'href="augment/report.html"' in aug


def test_smoke_run_flagged(tmp_path: Path) -> None:
    page = _render(fake_run(tmp_path, smoke=True))
    assert "debug=smoke run" in page and "mean nothing" in page


def test_missing_parts_say_which_stage_makes_them(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    page = _render(root)
    for rel, stage in (("lm/metrics.json", "lm"), ("phantom/stats.json", "phantom"),
                       ("classifier/metrics.json", "classifier"),
                       ("clip/metrics.json", "clip"), ("diffusion/metrics.json", "diffusion"),
                       ("samples/manifest.jsonl", "diffusion"),
                       ("diffusion_eval/metrics.json", "diffusion"),
                       ("augment/metrics.json", "augment")):
        assert (f"<code>{rel}</code> is missing; run <code>biomed quickstart</code> (its "
                f"<code>{stage}</code> stage") in page, rel
    assert ("<code>provenance.json</code> is missing; run <code>biomed quickstart</code> to make "
            "it") in page
    assert "could not be drawn" not in page
    assert _stage_row(page, "lm").count("not run") == 1


def test_one_part_missing_others_shown(tmp_path: Path) -> None:
    root = fake_run(tmp_path)
    (root / "augment" / "metrics.json").unlink()
    (root / "stages" / "augment.json").unlink()
    (root / "phantom" / "examples.png").unlink()
    page = _render(root)
    assert "<code>augment/metrics.json</code> is missing" in page
    assert "not run" in _stage_row(page, "augment")
    assert "<code>phantom/examples.png</code> is missing" in page
    assert "0.949 [0.929, 0.969]" in page  # the classifier section still there


def test_malformed_files_are_named(tmp_path: Path) -> None:
    root = fake_run(tmp_path)
    _write(root, "classifier/metrics.json", '{"macro_auroc": 0.9,')  # torn
    _write(root, "stages/clip.json", "[1, 2]")  # not an object
    _write(root, "clip/metrics.json", {"evaluation": {"zero_shot": ["not", "a", "dict"]}})
    _write(root, "diffusion_eval/metrics.json", {"fidelity": [1, 2], "laterality": "x"})
    (root / "diffusion_eval" / "grid.png").write_bytes(b"not a png")
    _write(root, ".hydra/config.yaml", "stages: [unclosed\n")
    page = _render(root)
    assert re.search(r"classifier/metrics\.json could not be parsed \(JSONDecodeError", page)
    assert "stages/clip.json could not be parsed (not a mapping)" in page
    assert ".hydra/config.yaml could not be parsed" in page
    assert "diffusion_eval/grid.png is not a readable image" in page
    clip = re.search(r"<h2>CXR-CLIP.*?</section>", page, re.S).group(0)
    assert "0.965" not in clip and "n/a" in clip  # a wrong shape reads as no numbers
    assert "0.949 [0.929, 0.969]" not in page  # the classifier file could not be read
    assert "Synthetic augmentation" in page and "0.031" in page  # the rest still renders


def test_out_elsewhere_links_relative_and_bad_folder_refused(tmp_path: Path) -> None:
    root = fake_run(tmp_path / "run")
    out = build_quickstart_report(root, tmp_path / "pages" / "qs.html")
    page = out.read_text(encoding="utf-8")
    assert 'href="../run/augment/report.html"' in page
    assert "running now" not in page and not (root / "report.html").exists()
    with pytest.raises(InputError, match="no such quickstart run folder"):
        build_quickstart_report(tmp_path / "nope")
