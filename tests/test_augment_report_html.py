"""The augmentation report page: self-contained, escaped, flagged when it should be, robust to
a sparse summary. The summary is built by hand following the augment summary schema."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomed.augment.report_html import render_report
from biomed.errors import InputError

FINDINGS = ["cardiomegaly", "effusion", "edema", "nodule", "pneumothorax", "<script>x</script>"]
CLEAR = FINDINGS[:4]
FRACTIONS = [0.01, 0.05, 0.1, 1.0]
IMG_RE = re.compile(r"<img\b[^>]*>")


def _gain(rng: np.random.Generator, source: str, mode: str, ratio: int, endpoint: str,
          metric: str = "auroc", shuffled: bool = False, subgroup: str = "all") -> dict:
    v = float(rng.normal(0.01, 0.01))
    return {"fraction": 0.05, "source": source, "mode": mode, "ratio": ratio,
            "shuffled_labels": shuffled, "endpoint": endpoint, "metric": metric, "value": v,
            "ci_low": v - 0.015, "ci_high": v + 0.015, "n_seeds": 5, "baseline": 0.85,
            "exploratory": endpoint not in ("macro_clear", "macro_all"), "subgroup": subgroup}


def full_summary(*, phantom: bool = True, demo: bool = False) -> dict:
    rng = np.random.default_rng(0)
    gains = []
    for source in ("diffusion", "phantom_oracle"):
        for mode in ("mix", "pretrain"):
            for ratio in (1, 4):
                for ep in ("macro_clear", "macro_all", *FINDINGS):
                    gains += [_gain(rng, source, mode, ratio, ep, m) for m in ("auroc", "ap")]
    for mode in ("mix", "pretrain"):
        gains += [_gain(rng, "diffusion", mode, 4, "macro_clear", shuffled=True),
                  _gain(rng, "duplicates", mode, 4, "macro_clear")]
    gains.append(_gain(rng, "diffusion", "mix", 4, "macro_clear", subgroup="sex=F"))
    synth = {"images": 1700, "generated": 1700, "from_cache": 0, "seconds": 300.0,
             "prevalence": {f: 0.1 for f in FINDINGS},
             "label_accuracy": {f: {"auroc": 0.97, "accuracy": 0.93, "n_pos": 200}
                                for f in FINDINGS}}
    return {
        "title": "Synthetic augmentation: phantom_iu, real_fraction 0.05",
        "created": "2026-12-01T23:59:00Z", "commit": "1123f5b", "machine": "2-core CPU",
        "demonstration": demo,
        "data": {"name": "phantom_iu", "kind": "phantom" if phantom else "real",
                 "train_pool": 8260, "val": 1030, "test": 1010, "test_reports": 337,
                 "image_size": 128, "subgroups": ["sex"]},
        "generator": {"model_id": "pipeline@ab12cd34ef", "id": "k123", "trained_on": "phantom_iu",
                      "sampler": {"scheduler": "dpmpp", "steps": 20, "guidance": 4.0}},
        "prompts": {"pool": "the whole real training split", "policy": "pool"},
        "clear_findings": CLEAR, "findings": FINDINGS,
        "steps": {"0.05": {"S": 250, "max_steps": 400, "chosen_by": "best val macro AUROC",
                           "curve": [[25, 0.71], [50, 0.8], [250, 0.86], [400, 0.85]]}},
        "modes": {"mix": "train on the union", "pretrain": "S/2 synthetic then S/2 real"},
        "synthetic": {"diffusion": synth,
                      "phantom_oracle": dict(synth, label_accuracy=None)},
        "gains": gains,
        "real_curve": [{"fraction": f, "endpoint": "macro_clear", "metric": "auroc",
                        "value": 0.7 + 0.1 * i, "ci_low": 0.68 + 0.1 * i,
                        "ci_high": 0.72 + 0.1 * i, "n_seeds": 5} for i, f in enumerate(FRACTIONS)],
        "worth": [{"source": "phantom_oracle", "mode": "mix", "ratio": 4,
                   "endpoint": "macro_clear", "equivalent_fraction": 0.08,
                   "text": "worth about 0.08 of the real pool"}],
        "not_improved": ["diffusion mix x1: macro_clear gain -0.004 [-0.02, 0.01]",
                         "duplicates pretrain x4: macro_clear gain 0.001 [-0.01, 0.01]"],
        "correction": "none: per-finding CIs are unadjusted 95% intervals, exploratory",
        "notes": ["On phantom data the oracle <script>alert(1)</script> draws from the test set"],
        "cells": {"planned": 75, "done": 74, "failed": [{"cell": "c9", "error": "out of memory"}]},
        "timing": {"generation_s": 300.0, "cells_s": 2900.0},
    }


def _samples() -> dict:
    rng = np.random.default_rng(1)
    def imgs(n: int) -> list[np.ndarray]:
        return [rng.random((16, 16), dtype=np.float32) for _ in range(n)]
    out = {f: {"real": imgs(3), "diffusion": imgs(3), "phantom_oracle": imgs(3)}
           for f in (*FINDINGS[:2], FINDINGS[5])}
    out["edema"] = {"real": imgs(2), "phantom_oracle": imgs(2)}  # no diffusion: skipped
    return out


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def _section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}")
    end = page.find("<h2>", start + 1)
    return page[start:end if end >= 0 else len(page)]


def test_full_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    out = render_report(full_summary(), tmp_path / "report.html", samples=_samples())
    assert out == tmp_path / "report.html" and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp left, one file
    page = out.read_text(encoding="utf-8")
    for bad in ('src="http', "src='http", 'href="http', "href='http", "<link", "@import",
                "url(", "<script src", "//cdn"):
        assert bad not in page, bad
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell it
    assert "http" not in text.lower() and "src=" not in text.replace('src=""', "")
    # one figure per figure section, and a grid per finding with samples
    for heading in ("Setup", "Primary endpoint", "Mix against pretrain",
                    "Diffusion against the oracle", "Per-finding gains", "Real-data curve"):
        assert "data:image/png;base64," in _section(page, heading), heading
    assert _section(page, "Sample images").count("data:image/png;base64,") == 4
    imgs = IMG_RE.findall(page)
    assert len(imgs) == 6 + 4
    for tag in imgs:
        alt = re.search(r'alt="([^"]*)"', tag)
        assert alt and alt.group(1).strip(), tag
    png = Image.open(io.BytesIO(_pngs(page)[0]))
    png.verify()
    assert png.format == "PNG" and png.size[0] > 100
    # the lead paragraph answers the question per source x mode at the highest ratio
    assert "Did synthetic images help?" in page
    assert "diffusion pretrain x4" in page and "phantom_oracle mix x4" in page
    assert "CI includes zero" in page or "CI excludes zero" in page
    # flagged notes, escaping, lists
    assert "Phantom data" in page and "Demonstration" not in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    for item in full_summary()["not_improved"]:
        assert item in page
    assert "c9: out of memory" in page
    assert "sex=F" in page and "worth about 0.08 of the real pool" in page
    assert "unadjusted 95% intervals" in page
    assert page.index("Primary endpoint") < page.index("Mix against pretrain") \
        < page.index("Real-data curve") < page.index("Sample images") \
        < page.index("What did not improve")


def test_flags_control_the_banners(tmp_path: Path) -> None:
    page = render_report(full_summary(phantom=False, demo=True), tmp_path / "r.html").read_text()
    assert "Demonstration" in page and 'class="banner"' in page
    assert "Phantom data" not in page and 'class="note"' not in page
    assert "Sample images are not available" in page


def test_lead_states_whether_ci_excludes_zero(tmp_path: Path) -> None:
    s = full_summary()
    for r in s["gains"]:
        if r["endpoint"] == "macro_clear" and r["source"] == "diffusion" and r["mode"] == "mix":
            r.update(value=0.03, ci_low=0.01, ci_high=0.05)
        elif r["endpoint"] == "macro_clear":
            r.update(value=0.0, ci_low=-0.01, ci_high=0.01)
    page = render_report(s, tmp_path / "r.html").read_text()
    lead = page[page.index("Did synthetic images help?"):]
    lead = lead[:lead.index("</p>")]
    assert "above zero for 1 of 4 synthetic-image arms and below zero for 0." in lead
    assert "diffusion mix x4: gain +0.030 [0.010, 0.050], CI excludes zero." in lead
    assert "diffusion pretrain x4: gain +0.000 [-0.010, 0.010], CI includes zero." in lead
    assert "duplicates mix x4 (control): gain +0.000" in lead
    assert "shuffled" not in lead


def test_minimal_summary_renders(tmp_path: Path) -> None:
    s = {"title": "real only", "data": {"name": "phantom_iu", "kind": "real"}, "generator": None,
         "gains": [], "not_improved": [],
         "real_curve": [{"fraction": 0.05, "endpoint": "macro_clear", "metric": "auroc",
                         "value": 0.8, "ci_low": None, "ci_high": float("nan"), "n_seeds": 1},
                        {"fraction": 0.5, "endpoint": "macro_clear", "metric": "auroc",
                         "value": 0.9, "ci_low": None, "ci_high": None, "n_seeds": 1}]}
    page = render_report(s, tmp_path / "sub" / "r.html").read_text()
    assert "Every tested arm improved" in page and "cannot say" in page
    assert "n/a" in page and "none (no diffusion generator" in page
    assert _section(page, "Real-data curve").count("data:image/png;base64,") == 1
    assert all(Image.open(io.BytesIO(b)).format == "PNG" for b in _pngs(page))


def test_single_seed_gains_without_ci(tmp_path: Path) -> None:
    s = full_summary()
    for r in s["gains"]:
        r.update(ci_low=None, ci_high=None, n_seeds=1)
    page = render_report(s, tmp_path / "r.html").read_text()
    assert "CI n/a" in page and len(_pngs(page)) == 6


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="summary"):
        render_report([], tmp_path / "r.html")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="2-D"):
        render_report(full_summary(), tmp_path / "r.html",
                      samples={"edema": {"real": [np.zeros((2, 3, 4))]}})
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_tolerates_odd_but_valid_inputs(tmp_path: Path) -> None:
    s = full_summary()
    s["gains"] = [r for r in s["gains"] if r["endpoint"] == "macro_clear"][:6]
    s["gains"].append(dict(s["gains"][0], ratio=None, value="0.02"))  # missing ratio, str value
    s["gains"][1]["value"] = float("nan")
    for k in ("steps", "synthetic", "worth", "notes", "cells", "timing", "modes", "prompts"):
        s.pop(k)
    stacked = {"effusion": {"real": np.full((2, 8, 8), 0.5, np.float32), "diffusion": None}}
    page = render_report(s, tmp_path / "r.html", samples=stacked).read_text()
    assert "No synthetic sets" in page and "n/a" in page
    assert "Thumbnails for effusion: real images" in page
    assert _section(page, "Sample images").count("data:image/png;base64,") == 1
