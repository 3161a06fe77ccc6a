"""`biomed evaluate-generation` (biomed.imaging.diffusion.evaluate) and the generation metrics
(biomed.imaging.diffusion.evaluate.instruments).

The fidelity tests use `BlobPhantoms`: the paired phantom dataset (`PhantomIU`, real mechanics:
reports -> findings -> renders, splits, exact labels, templated reports) with a cheap renderer
whose findings a tiny classifier learns in seconds (an effusion is a bright band low on the
patient's side, a pneumothorax a black apex on that side, cardiomegaly a wide heart). A
*perfect* generator renders the findings a prompt was written from; a *prompt-blind* one
renders findings chosen by the seed alone. The first must score high, the second about 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from scipy.signal import convolve2d

from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.imaging.classifier.model import load_classifier
from biomed.imaging.core.findings import PhantomFinding
from biomed.imaging.diffusion import evaluate as E
from biomed.imaging.diffusion.evaluate import command, scoring, tables
from biomed.imaging.diffusion.evaluate import instruments as G
from biomed.imaging.phantom.dataset import PhantomIU
from biomed.imaging.reports.iu import Report

SIZE = 32

# ---------------------------------------------------------------------------------------------
# a phantom dataset with a renderer a tiny CNN reads at 32 px


def blob_render(findings, seed, size):
    """``(findings, seed=, size=) -> (image, info)`` like the phantom renderer: a missing side
    of a lateral finding is picked from the seed (and returned resolved)."""
    rng = np.random.default_rng(int(seed))
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.03 * rng.standard_normal((size, size))
    drawn = []
    for f in findings:
        side = f.side or (str(rng.choice(["left", "right"])) if f.lateral else None)
        drawn.append(PhantomFinding(f.name, side, f.severity, f.zone, f.device))
    names = {f.name for f in drawn}
    radius = 0.2 + 0.03 * max((f.severity for f in drawn if f.name == "cardiomegaly"),
                              default=0) if "cardiomegaly" in names else 0.11
    img += 0.3 * (((yy - 0.55) ** 2 + (xx - 0.5) ** 2) < radius ** 2)
    for f in drawn:  # the patient's left is the image's right
        for side in (("left", "right") if f.side == "bilateral" else (f.side,)):
            cols = (xx > 0.56) if side == "left" else (xx < 0.44)
            if f.name == "effusion":
                img[(yy > 0.72) & cols] += 0.45
            elif f.name == "pneumothorax":
                img[(yy < 0.32) & cols] = 0.02
            elif f.name in ("nodule", "mass", "calcified_granuloma"):
                img[((yy - 0.4) ** 2 + (xx - (0.75 if side == "left" else 0.25)) ** 2)
                    < 0.06 ** 2] += 0.4
    return np.clip(img, 0, 1).astype(np.float32), {"findings": drawn, "attributes": {}}


blob_render.RENDERER_VERSION = "blob-1"

_TAGS = [["normal"], ["Pleural Effusion/left"], ["Pleural Effusion/right"],
         ["Pneumothorax/left"], ["Pneumothorax/right/small"], ["Cardiomegaly/mild"],
         ["Cardiomegaly/severe", "Pleural Effusion/bilateral"], ["normal"]]


class BlobPhantoms(PhantomIU):
    """`PhantomIU` over made-up reports (tags cycling through `_TAGS`), rendered in memory by
    `blob_render`; takes (and ignores) the other keys of ``conf/data/phantom_iu.yaml``."""

    def __init__(self, split=None, n_reports: int = 112, size: int = SIZE,
                 renders_per_report: int = 2, templates_per_finding: int = 1,
                 fractions=(0.5, 0.1, 0.4), seed: int = 0, **_ignored):
        reports = [Report(id=f"R{i}", impression=f"Report {i}: {'; '.join(tags)}.",
                          mesh_major=list(tags))
                   for i, tags in enumerate(_TAGS[i % len(_TAGS)] for i in range(n_reports))]
        super().__init__(reports, size=size, renders_per_report=renders_per_report,
                         templates_per_finding=templates_per_finding, split=split,
                         fractions=fractions, seed=seed, cache_dir=None, renderer=blob_render,
                         progress=False)


DATA = {"_target_": f"{__name__}.BlobPhantoms", "name": "blob_phantoms", "split": "test"}
TINY_CNN = ["classifier.model.stem_width=8", "classifier.model.widths=[16,32]",
            "classifier.model.strides=[2,2]", "classifier.model.dropout=0.0"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A small_cnn trained on the blob phantoms' train split through `train-classifier`."""
    from biomed.imaging.classifier import train as C

    run = tmp_path_factory.mktemp("classifier") / "run"
    cfg = compose("train_classifier", [
        "~data", f"paths.run_dir={run}", *TINY_CNN, "trainer.progress=false",
        "trainer.tensorboard=false", "trainer.threads=1", "trainer.max_time_s=null",
        "trainer.batch_size=16", "trainer.max_steps=150", "trainer.eval_every=0",
        "optim.optimizer.lr=3e-3", "optim.schedule.warmup_steps=5", "eval.n_boot=20",
        "eval.val_n_boot=10", "augment.enabled=false"])
    with open_dict(cfg):
        cfg.data = OmegaConf.create({**DATA, "split": "train"})
    C.run(cfg)
    return run


@pytest.fixture(scope="module")
def test_split() -> BlobPhantoms:
    return BlobPhantoms(split="test")


@pytest.fixture(scope="module")
def tool(classifier_dir) -> E.ClassifierTool:
    model, config = load_classifier(classifier_dir)
    return E.ClassifierTool(model, config["labels"], batch_size=64)


SETTINGS = dict(max_prompts=None, samples_per_prompt_diversity=3, diversity_prompts=4,
                laterality_per_side=12, negation_pairs=9, n_boot=50, ms_ssim_window=7,
                ms_ssim_scales=3, grid_prompts=2, progress=False)


def lookup(dataset: BlobPhantoms, settings: E.EvalSettings, seed: int = 0) -> dict:
    """prompt text -> the findings it was written from (held-out reports and both suites)."""
    held = E.held_out_prompts(dataset, settings.max_prompts, seed)
    table = {p: dataset.findings(rows[0]) for p, rows in zip(held.prompts, held.rows,
                                                              strict=True)}
    table.update({c.prompt: list(c.findings)
                  for c in E.laterality_cases(settings.laterality_per_side, seed)})
    for pair in E.negation_pairs(settings.negation_pairs, seed):
        table.update({c.prompt: list(c.findings) for c in (pair.negated, pair.stated)})
    return table


def perfect_generator(table: dict):
    def generate(prompts, seeds):
        return np.stack([blob_render(table[p], seed=s, size=SIZE)[0]
                         for p, s in zip(prompts, seeds, strict=True)])
    return generate


def prompt_blind_generator(table: dict):
    pool = list(table.values())

    def generate(prompts, seeds):
        picks = [pool[np.random.default_rng(s).integers(len(pool))] for s in seeds]
        return np.stack([blob_render(f, seed=s, size=SIZE)[0] for f, s in zip(picks, seeds,
                                                                              strict=True)])
    return generate


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_is_zero_for_identical_sets_and_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    var_a, var_b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 2.0, 1.5])
    a = rng.standard_normal((20000, 4)) * np.sqrt(var_a)
    assert G.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # the same covariance: exactly the squared mean shift
    assert G.frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-6)
    # independent draws of two diagonal Gaussians: |mu|^2 + sum (sqrt(va) - sqrt(vb))^2
    b = shift + rng.standard_normal((20000, 4)) * np.sqrt(var_b)
    closed = shift @ shift + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert G.frechet_distance(a, b) == pytest.approx(closed, abs=0.05)
    assert G.frechet_distance(a, a + 2 * shift) > G.frechet_distance(a, a + shift)


def test_frechet_distance_with_fewer_images_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    value = G.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    assert G.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert G.frechet_distance(a, a + 1.0) == pytest.approx(64.0, rel=1e-3)
    with pytest.raises(ValueError, match="N >= 2"):
        G.frechet_distance(a[:1], b)


# ---------------------------------------------------------------------------------------------
# MS-SSIM


def _ssim_reference(x: np.ndarray, y: np.ndarray, window: int, sigma: float
                    ) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) by the formula, in numpy ('valid' filtering)."""
    t = np.arange(window) - (window - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def f(z):
        return convolve2d(z, w, mode="valid")

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    return float((lum * cs).mean()), float(cs.mean())


def _smooth(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.02 * rng.standard_normal(
        (size, size))).clip(0, 1)


def test_ms_ssim_matches_the_formula_is_one_for_identical_images_and_falls_with_noise():
    rng = np.random.default_rng(0)
    x = _smooth(rng)
    y = (x + 0.1 * rng.standard_normal(x.shape)).clip(0, 1)
    st = G.ms_ssim_settings(64, scales=3, window=7)
    assert st.scales == 3 and sum(st.weights) == pytest.approx(1.0)
    assert np.allclose(st.weights, np.array(G.WANG_WEIGHTS[:3]) / sum(G.WANG_WEIGHTS[:3]))
    # three scales: cs at 64 and 32 px, the full SSIM at 16 px (2x2 average pooling)
    expected, a, b = 1.0, x, y
    for j, w in enumerate(st.weights):
        if j:
            a = a.reshape(a.shape[0] // 2, 2, -1, 2).mean(axis=(1, 3))
            b = b.reshape(b.shape[0] // 2, 2, -1, 2).mean(axis=(1, 3))
        ssim, cs = _ssim_reference(a, b, 7, 1.5)
        expected *= max(ssim if j == 2 else cs, 0.0) ** w
    got = G.ms_ssim(x, y, st)
    assert got.shape == (1,) and float(got[0]) == pytest.approx(expected, rel=1e-6)
    assert float(G.ms_ssim(x, x, st)[0]) == pytest.approx(1.0, abs=1e-9)
    noisier = [float(G.ms_ssim(x, (x + s * rng.standard_normal(x.shape)).clip(0, 1), st)[0])
               for s in (0.02, 0.1, 0.3)]
    assert noisier[0] > noisier[1] > noisier[2] and noisier[2] < 0.5
    assert float(G.ms_ssim(y, x, st)[0]) == pytest.approx(float(got[0]))


def test_ms_ssim_uses_fewer_scales_on_small_images_and_refuses_too_small_ones():
    assert G.ms_ssim_settings(128, scales=3, window=11).scales == 3
    st = G.ms_ssim_settings(32, scales=3, window=11)
    assert (st.scales, st.requested_scales) == (2, 3) and len(st.weights) == 2
    with pytest.raises(ConfigError, match="window"):
        G.ms_ssim_settings(8, scales=3, window=11)


def test_pairwise_ms_ssim_one_value_per_group():
    rng = np.random.default_rng(0)
    x = _smooth(rng, 32)
    same = np.stack([x, x, x])
    noisy = np.stack([(x + 0.2 * rng.standard_normal(x.shape)).clip(0, 1) for _ in range(3)])
    st = G.ms_ssim_settings(32, 3, 7)
    values = G.pairwise_ms_ssim([same, noisy, noisy[:1]], st)
    assert values.shape == (2,) and values[0] == pytest.approx(1.0) and values[1] < 0.8


def test_clip_score_is_100_times_the_cosine_clipped_at_zero():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    assert np.allclose(G.clip_scores(a, b), [100.0, 0.0, 0.0, 100 / np.sqrt(2)])


# ---------------------------------------------------------------------------------------------
# prompts


def test_suites_say_what_they_were_written_from():
    cases = E.laterality_cases(4, seed=3)
    assert len(cases) == 16 and len({c.seed for c in cases}) == 16
    for c in cases:
        assert c.side in c.prompt.split(".")[0].lower() and c.findings[0].side == c.side
        word = "effusion" if c.finding == "effusion" else "pneumothorax"
        assert word in c.prompt.split(".")[0].lower()
    assert len({c.prompt for c in cases}) > 8  # wordings vary
    pairs = E.negation_pairs(3, seed=3)
    assert [p.finding for p in pairs] == ["effusion"] * 3 + ["pneumothorax"] * 3 + \
        ["cardiomegaly"] * 3
    negation = {"effusion": "no pleural effusion", "pneumothorax": "pneumothorax",
                "cardiomegaly": "normal"}
    for p in pairs:
        assert p.negated.seed == p.stated.seed and p.negated.findings == ()
        assert p.stated.findings[0].name == p.finding
        assert negation[p.finding] in p.negated.prompt.lower()
        stem = {"effusion": "pleural effusion", "pneumothorax": "pneumothora",
                "cardiomegaly": "cardiomegaly"}[p.finding]
        assert stem in p.stated.prompt.split(".")[0].lower()
    assert E.laterality_cases(4, seed=3) == cases  # a function of the seed


def test_held_out_prompts_one_per_report_with_exact_labels(test_split):
    held = E.held_out_prompts(test_split, None, 0)
    assert len(held.prompts) == len(set(test_split.metadata["report_id"]))
    assert all(len(set(test_split.metadata["report_id"][i] for i in r)) == 1
               for r in held.rows)
    assert {"iu", "template"} == set(held.sources)
    i = held.rows[0][0]
    assert held.prompts[0] == test_split.report(i)
    assert np.array_equal(held.labels[0], test_split.labels[i])
    few = E.held_out_prompts(test_split, 5, 0)
    assert len(few.prompts) == 5 and set(few.report_ids) <= set(held.report_ids)


def test_penultimate_features_are_the_input_of_the_head(tool):
    x = np.random.default_rng(0).random((3, 48, 48)).astype(np.float32)  # resized to 32
    probs, feats = tool(x)
    head = tool.head
    with torch.no_grad():
        expected = torch.sigmoid(head(torch.from_numpy(feats))).numpy()
    assert probs.shape == (3, len(tool.labels)) and np.allclose(probs, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the evaluation can tell a faithful generator from a prompt-blind one


def test_perfect_generator_scores_high_and_a_prompt_blind_one_scores_chance(test_split, tool):
    st = E.EvalSettings(**SETTINGS)
    table = lookup(test_split, st)
    good = E.evaluate_generation(perfect_generator(table), test_split, tool, settings=st,
                                 log=lambda _: None).metrics
    blind = E.evaluate_generation(prompt_blind_generator(table), test_split, tool,
                                  settings=st, log=lambda _: None).metrics
    for name in ("cardiomegaly", "effusion", "pneumothorax"):
        assert good["fidelity"][name]["real"]["value"] >= 0.95, name  # the classifier sees it
        assert good[f"fidelity_auroc_{name}"] >= 0.9, name
        assert abs(blind[f"fidelity_auroc_{name}"] - 0.5) < 0.25, name
        assert good[f"negation_share_{name}"] >= 0.9, name
        assert blind[f"negation_share_{name}"] == 0.5  # same seed, prompt ignored: a tie
        assert blind["negation"][name]["ties"] == st.negation_pairs
        # fidelity over the held-out and the templated suite prompts: every suite prompt that
        # states the finding is a positive (laterality: 2 x per side; negation: one per pair)
        suites = good["fidelity_with_suites"][name]
        templated = st.negation_pairs + (2 * st.laterality_per_side
                                         if name in ("effusion", "pneumothorax") else 0)
        assert suites["n_pos_templated"] == templated, name
        assert suites["n_pos"] == templated + suites["n_pos_held_out"], name
        assert suites["n_pos_held_out"] == good["fidelity"][name]["n_pos"], name
        assert good[f"fidelity_suites_auroc_{name}"] >= 0.9, name
        assert abs(blind[f"fidelity_suites_auroc_{name}"] - 0.5) < 0.2, name
    for name in ("effusion", "pneumothorax"):
        assert good[f"laterality_accuracy_{name}"] >= 0.9, name
        assert abs(blind[f"laterality_accuracy_{name}"] - 0.5) <= 0.25, name
        assert good["laterality"][name]["n"] == 2 * st.laterality_per_side
    by = good["fidelity"]["effusion"]["by_source"]
    assert set(by) == {"iu", "template"} and by["iu"]["n_pos"] > 0
    assert good["images_generated"] == blind["images_generated"] > len(good["fidelity"])
    assert good["diverged"] == 0


def test_scores_rows_are_what_the_fidelity_with_suites_is_computed_from(test_split, tool):
    from sklearn.metrics import roc_auc_score

    st = E.EvalSettings(**SETTINGS)
    ev = E.evaluate_generation(perfect_generator(lookup(test_split, st)), test_split, tool,
                               settings=st, log=lambda _: None)
    rows = ev.scores
    groups = [r["group"] for r in rows]
    n_neg = st.negation_pairs * len(E.NEGATION_FINDINGS)
    assert groups.count("held_out") == ev.metrics["n_prompts"]
    assert groups.count("laterality") == 2 * st.laterality_per_side * 2
    assert groups.count("negation_negated") == groups.count("negation_stated") == n_neg
    stated = [r for r in rows if r["group"] == "negation_stated" and r["finding"] == "effusion"]
    assert all(r["label_effusion"] == 1 for r in stated)
    negated = [r for r in rows if r["group"] == "negation_negated"]
    assert all(r["label_effusion"] == 0 and r["label_cardiomegaly"] == 0 for r in negated)
    for name in ("cardiomegaly", "effusion", "pneumothorax"):
        scored = [r for r in rows if r[f"label_{name}"] != ""]
        auroc = roc_auc_score([r[f"label_{name}"] for r in scored],
                              [r[f"p_{name}"] for r in scored])
        assert auroc == pytest.approx(ev.metrics[f"fidelity_suites_auroc_{name}"], abs=1e-3), name
    left = [r for r in rows if r["group"] == "laterality" and r["side"] == "left"]
    assert left and all(r["p_effusion_left"] >= 0 for r in left)


def test_fid_and_diversity_catch_blank_and_collapsed_generators(test_split, tool):
    st = E.EvalSettings(**SETTINGS)
    table = lookup(test_split, st)
    good = E.evaluate_generation(perfect_generator(table), test_split, tool, settings=st,
                                 log=lambda _: None).metrics

    def collapsed(prompts, seeds):  # right findings, one seed: no diversity
        return perfect_generator(table)(prompts, [0] * len(seeds))

    def blank(prompts, seeds):
        return np.full((len(prompts), SIZE, SIZE), 0.3, np.float32)

    same = E.evaluate_generation(collapsed, test_split, tool, settings=st,
                                 log=lambda _: None).metrics
    flat = E.evaluate_generation(blank, test_split, tool, settings=st,
                                 log=lambda _: None).metrics
    assert same["ms_ssim_generated"] == pytest.approx(1.0)
    assert good["ms_ssim_generated"] < 0.95
    assert good["ms_ssim_real"] is not None and good["diversity"]["settings"]["scales"] == 3
    assert good["fid"]["n_real"] == good["n_prompts"]
    ref = good["fid"]["classifier"]["real_vs_real"]
    assert good["fid_classifier"] < 3 * ref + 1.0 < flat["fid_classifier"]


# ---------------------------------------------------------------------------------------------
# the command


def tiny_clip_dir(folder: Path) -> Path:
    """A random tiny open_clip folder in the workbench's format (32 px)."""
    from biomed.imaging.clip import model as cm

    texts = ["left pleural effusion", "no pneumothorax", "heart size is normal"] * 4
    tok = cm.train_report_tokenizer(texts, 300, context_length=32)
    tok_dir = cm.save_tokenizer(tok, folder / "tok")
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": SIZE, "layers": [1, 1, 1, 1],
                                                 "width": 8, "head_width": 64},
                 "text_cfg": cm.text_cfg_for(tok, {"context_length": 32, "width": 32,
                                                   "heads": 2, "layers": 1}, "eval-test-bpe")}
    torch.manual_seed(0)
    pp = {"mean": [0.3] * 3, "std": [0.2] * 3, "interpolation": "bicubic",
          "resize_mode": "squash"}
    model = cm.build_model("biomed-eval-test-clip", model_cfg, pp)
    return cm.save_clip(model, model_cfg, dict(model.visual.preprocess_cfg), tok_dir,
                        folder / "clip", "test card")


def eval_cfg(tmp_path: Path, *overrides: str):
    cfg = compose("evaluate_generation", [
        f"paths.run_dir={tmp_path / 'run'}", "progress=false", "eval.max_prompts=24",
        "eval.diversity_prompts=3", "eval.samples_per_prompt_diversity=3",
        "eval.laterality_per_side=4", "eval.negation_pairs=3", "eval.n_boot=20",
        "eval.ms_ssim.window=7", "eval.grid_prompts=2", *overrides])
    with open_dict(cfg):
        cfg.data = OmegaConf.create(DATA)
    return cfg


def test_run_writes_metrics_table_grid_and_report(tmp_path, classifier_dir, monkeypatch):
    test = BlobPhantoms(split="test")
    table = lookup(test, E.EvalSettings(**{**SETTINGS, "max_prompts": None,
                                           "laterality_per_side": 4, "negation_pairs": 3}))
    seen = {}

    def fake_make_generator(cfg, device=None):
        seen["model_dir"] = cfg.model_dir
        return perfect_generator(table)

    monkeypatch.setattr(command, "make_generator", fake_make_generator)
    clip_dir = tiny_clip_dir(tmp_path)
    cfg = eval_cfg(tmp_path, f"model_dir={tmp_path / 'model'}", f"classifier_dir={classifier_dir}",
                   f"clip_dir={clip_dir.parent}")
    metrics = command.run(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and seen["model_dir"] == str(tmp_path / "model")
    assert saved["n_prompts"] == 24 and saved["fid"]["n_real"] == 24
    assert saved["fid"]["clip"]["value"] is not None and saved["fid"]["classifier"]["dim"] > 0
    assert saved["clip_score_generated"] is not None and saved["clip_score_real"] is not None
    assert saved["fidelity_auroc_cardiomegaly"] == metrics["fidelity_auroc_cardiomegaly"]
    assert saved["diversity"]["settings"]["window"] == 7
    assert saved["sampler"]["scheduler"] == "dpmpp" and saved["data"] == "blob_phantoms"
    assert "fidelity_auroc_effusion" in saved["key_metrics"]
    text = (run / "table.md").read_text()
    for needle in ("FID, classifier", "FID, CXR-CLIP", "MS-SSIM diversity (3 scales, 7x7",
                   "CLIP score", "| cardiomegaly |", "| effusion |", "negated prompt lower",
                   "iu prompts"):
        assert needle in text, needle
    from biomed.imaging.core.pixels import png_text, read_image

    grid = read_image(run / "grid.png")
    assert grid.shape == (2 * SIZE + 2, 4 * SIZE + 3 * 2)  # 2 rows of real + 3 samples
    assert png_text(run / "grid.png")["synthetic"].startswith("true")
    assert "grid.png" in (run / "report.html").read_text()
    assert (run / "provenance.json").is_file()
    import pandas as pd

    scores = pd.read_csv(run / "scores.csv")
    # every image but the diversity samples after the first of each of the 3 prompts
    assert len(scores) == saved["images_generated"] - 3 * 2
    assert tuple(scores.columns[:len(E.SCORE_COLUMNS)]) == E.SCORE_COLUMNS
    assert {"p_effusion", "label_effusion"} <= set(scores.columns)
    assert saved["files"]["scores"] == "scores.csv"


def test_run_without_clip_skips_clip_metrics(tmp_path, classifier_dir, monkeypatch):
    test = BlobPhantoms(split="test")
    table = lookup(test, E.EvalSettings(**{**SETTINGS, "laterality_per_side": 4,
                                           "negation_pairs": 3}))
    monkeypatch.setattr(command, "make_generator", lambda cfg, device=None: perfect_generator(table))
    m = command.run(eval_cfg(tmp_path, "model_dir=x", f"classifier_dir={classifier_dir}"))
    assert m["clip_score"] == {"skipped": "no clip_dir"} and m["fid_clip"] is None
    assert m["fid_classifier"] is not None


def test_bad_folders_give_one_line_errors(tmp_path, classifier_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty") as e:
        command.run(eval_cfg(tmp_path, f"model_dir={tmp_path / 'empty'}",
                       f"classifier_dir={classifier_dir}"))
    assert "\n" not in str(e.value) and "model_index.json" in str(e.value)
    with pytest.raises(InputError, match="no such model folder"):
        command.run(eval_cfg(tmp_path, f"model_dir={tmp_path / 'nope'}",
                       f"classifier_dir={classifier_dir}"))
    with pytest.raises(ConfigError, match="model_dir=... and classifier_dir"):
        command.run(eval_cfg(tmp_path))
    monkeypatch.setattr(command, "make_generator", lambda cfg, device=None: None)
    with pytest.raises(InputError, match="not a classifier folder") as e:
        command.run(eval_cfg(tmp_path, "model_dir=x", f"classifier_dir={tmp_path / 'empty'}"))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="CLIP folder"):
        command.run(eval_cfg(tmp_path, "model_dir=x", f"classifier_dir={classifier_dir}",
                       f"clip_dir={tmp_path / 'empty'}"))


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys, "argv", ["evaluate-generation", f"model_dir={tmp_path / 'nope'}",
                                      f"classifier_dir={tmp_path}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        command.main()
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]


def test_a_saved_pipeline_is_sampled_through_generate_images(tmp_path, classifier_dir):
    """The wiring to `sample.generate_images`: a tiny random Stable-Diffusion-layout folder
    (32 px) evaluated end to end with two sampling steps; its numbers mean nothing."""
    from tests.helpers.diffusion import tiny_sd_folder

    model = tiny_sd_folder(tmp_path / "sd")
    cfg = eval_cfg(tmp_path, f"model_dir={model}", f"classifier_dir={classifier_dir}",
                   "eval.max_prompts=4", "eval.diversity_prompts=2",
                   "eval.samples_per_prompt_diversity=2", "eval.laterality_per_side=1",
                   "eval.negation_pairs=1", "sampler.steps=2", "sampler.batch_size=8",
                   "device=cpu")
    m = command.run(cfg)
    assert m["images_generated"] == 4 + 2 + 4 + 6 and m["image_size"] == [SIZE, SIZE]
    assert "weights-sha256" in m["model_id"] and 0 <= m["diverged"] <= m["images_generated"]
    assert m["prompt_max_tokens"] == 77 and 0 < m["prompts_truncated"] <= 4 + 4 + 6
    assert (tmp_path / "run" / "table.md").is_file()


def test_fidelity_leaves_out_prompts_whose_text_denies_or_hedges_their_tag():
    """A prompt tagged with an effusion it denies, and an untagged one that hedges it, score
    against their tags in ``fidelity_tag_labels`` and are left out of ``fidelity``."""
    names = ["no_finding", "effusion", "effusion_left", "effusion_right"]
    prompts = ["Small left pleural effusion.", "Moderate right pleural effusion.",
               "No definite pleural effusion seen.", "Possible small effusions.",
               "No pleural effusion.", "Normal chest."]
    labels = np.array([[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0],
                       [1, 0, 0, 0]], np.float32)
    held = E.HeldOut(prompts, [[i] for i in range(6)], labels, names, ["iu"] * 6,
                     [f"R{i}" for i in range(6)])
    # the generated images follow the prompts' text: no effusion for R2, some for R3
    p_eff = np.array([0.9, 0.8, 0.1, 0.85, 0.2, 0.1], np.float32)
    probs = np.stack([1 - p_eff, p_eff, p_eff, p_eff], axis=1)
    out = scoring.fidelity_both(held, probs, probs, names, True, n_boot=20, seed=0)
    checked, tags = out["fidelity"]["effusion"], out["fidelity_tag_labels"]["effusion"]
    assert (checked["n_pos"], checked["n_neg"]) == (2, 2)
    assert checked["generated"]["value"] == 1.0
    assert (tags["n_pos"], tags["n_neg"]) == (3, 3)
    assert tags["generated"]["value"] < 0.8
    left = out["prompt_label_check"]["left_out"]["effusion"]
    assert left == {"n": 2, "tag_positive": 1, "report_ids": ["R2", "R3"]}
    assert out["fidelity"]["effusion_left"]["n_pos"] == 1  # R2's side column left out too
    assert set(scoring.fidelity_both(held, probs, probs, names, False, n_boot=20, seed=0)) == \
        {"fidelity"}
    m = {"fidelity": out["fidelity"], "fidelity_tag_labels": out["fidelity_tag_labels"],
         "prompt_label_check": out["prompt_label_check"]}
    assert "R2, R3" in "\n".join(tables._label_check_rows(m))
