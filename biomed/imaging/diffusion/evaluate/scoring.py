"""The numbers of evaluate-generation from what the instruments measured: prompt-fidelity AUROCs
per finding (with and without the text check of the prompts' labels), laterality and negation
scores, FID per feature space, MS-SSIM diversity and CLIP scores, each with bootstrap 95% CIs; and
the flat top-level numbers (``fidelity_auroc_<finding>``...) for `biomed runs` and the quickstart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biomed import stats
from biomed.imaging.core import metrics as M
from biomed.imaging.diffusion.evaluate.instruments import (
    ClassifierTool,
    clip_embeddings,
    clip_scores,
    clip_text_embeddings,
    frechet_distance,
    ms_ssim_settings,
    pairwise_ms_ssim,
)
from biomed.imaging.diffusion.evaluate.settings import EvalSettings
from biomed.imaging.diffusion.evaluate.suites import (
    Case,
    HeldOut,
    NegationPair,
    Plan,
    real_images,
)

# ---------------------------------------------------------------------------------------------
# estimates


def _est(e: stats.Estimate | None) -> dict[str, float | None] | None:
    """An estimate for JSON: NaN -> None; None when the value itself is undefined."""
    if e is None or not np.isfinite(e.value):
        return None
    return {k: (float(v) if np.isfinite(v) else None) for k, v in e.to_dict().items()}


def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> dict[str, float | None] | None:
    values = np.asarray(values, np.float64)
    return _est(stats.bootstrap(np.mean, values, n=n_boot, seed=seed)) if len(values) else None


# ---------------------------------------------------------------------------------------------
# prompt fidelity


def _auroc_entry(y: np.ndarray, gen: np.ndarray, real: np.ndarray | None, n_boot: int,
                 seed: int) -> dict[str, Any]:
    known = ~np.isnan(y)
    out: dict[str, Any] = {"n_pos": int((y[known] == 1).sum()),
                           "n_neg": int((y[known] == 0).sum()), "generated": None, "real": None}
    if out["n_pos"] and out["n_neg"]:
        out["generated"] = _est(stats.bootstrap(M.auroc, y, gen, n=n_boot, seed=seed))
        if real is not None:
            out["real"] = _est(stats.bootstrap(M.auroc, y, real, n=n_boot, seed=seed))
    return out


def fidelity_metrics(held: HeldOut, probs_gen: np.ndarray, probs_real: np.ndarray | None,
                     labels: Sequence[str], *, n_boot: int, seed: int,
                     prompt_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Per classifier label known to the data: AUROC of the classifier on generated images
    (and on the real ones: the ceiling) against the prompts' labels (``prompt_labels``, P x K
    in ``held.label_names`` order, NaN = unknown; default ``held.labels``), split by source."""
    out: dict[str, Any] = {}
    sources = np.array(held.sources)
    distinct = sorted({s for s in held.sources if s})
    truth = held.labels if prompt_labels is None else prompt_labels
    for k, name in enumerate(labels):
        if name not in held.label_names:
            continue
        y = truth[:, held.label_names.index(name)]
        real = None if probs_real is None else probs_real[:, k]
        entry = _auroc_entry(y, probs_gen[:, k], real, n_boot, seed)
        if len(distinct) > 1:
            entry["by_source"] = {
                s: _auroc_entry(y[sources == s], probs_gen[sources == s, k],
                                None if real is None else real[sources == s], n_boot, seed)
                for s in distinct}
        out[name] = entry
    return out


def fidelity_both(held: HeldOut, probs_gen: np.ndarray, probs_real: np.ndarray,
                   labels: Sequence[str], text_check: bool, n_boot: int, seed: int,
                   checked: np.ndarray | None = None) -> dict[str, Any]:
    """``fidelity`` (on the text-checked prompt labels when ``text_check``), and with the check
    also ``fidelity_tag_labels`` (the tags alone) and ``prompt_label_check`` (what it left out:
    per finding, the prompts set unknown and their report ids)."""
    if not text_check:
        return {"fidelity": fidelity_metrics(held, probs_gen, probs_real, labels,
                                             n_boot=n_boot, seed=seed)}
    from biomed.imaging.reports.mentions import MENTION_PATTERNS, text_checked_labels

    if checked is None:  # the text-checked labels, when the caller has not made them yet
        checked = text_checked_labels(held.labels, held.label_names, held.prompts)
    left_out: dict[str, Any] = {}
    for name in MENTION_PATTERNS:
        if name in held.label_names:
            k = held.label_names.index(name)
            gone = np.flatnonzero(np.isnan(checked[:, k]) & ~np.isnan(held.labels[:, k]))
            left_out[name] = {"n": int(len(gone)),
                              "tag_positive": int((held.labels[gone, k] == 1).sum()),
                              "report_ids": [held.report_ids[i] for i in gone]}
    return {"fidelity": fidelity_metrics(held, probs_gen, probs_real, labels, n_boot=n_boot,
                                         seed=seed, prompt_labels=checked),
            "fidelity_tag_labels": fidelity_metrics(held, probs_gen, probs_real, labels,
                                                    n_boot=n_boot, seed=seed),
            "prompt_label_check": {
                "what": "prompts whose text denies or hedges a finding their tags give, or "
                        "affirms or hedges one they do not (biomed.imaging.reports.mentions), "
                        "left out of that finding's fidelity AUROC", "left_out": left_out}}


def suite_labels(cases: Sequence[Case], names: Sequence[str]) -> np.ndarray:
    """The exact labels (C x len(names), NaN where a name is not a canonical finding) of suite
    prompts: a templated prompt states exactly its findings, so every canonical column is 0/1."""
    from biomed.imaging.core.findings import labels_of
    from biomed.imaging.core.labels import CANONICAL_NAMES

    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    out = np.full((len(cases), len(names)), np.nan, np.float32)
    for i, c in enumerate(cases):
        vec = labels_of(c.findings)
        for k, name in enumerate(names):
            if name in col:
                out[i, k] = vec[col[name]]
    return out


def fidelity_with_suites(held: HeldOut, probs_gen: np.ndarray, held_labels: np.ndarray,
                         cases: Sequence[Case], probs_suite: np.ndarray, tool: ClassifierTool,
                         findings: Sequence[str], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Prompt fidelity on every prompt the evaluation sampled: the held-out report prompts (their
    text-checked labels ``held_labels``) plus the templated suite prompts ``cases`` (laterality
    and both members of each negation pair, whose labels are exact; ``probs_suite``: the
    classifier's probabilities of their images, one row per case). Few held-out reports state a
    finding (3-18 of 100-200), so this is where a finding gets 30+ positive prompts; the
    templated share of the positives is reported beside the AUROC."""
    out: dict[str, Any] = {}
    if not cases:
        return out
    y_suite = suite_labels(cases, held.label_names)
    for name in findings:
        k, j = tool.index(name), (held.label_names.index(name)
                                  if name in held.label_names else None)
        if k is None or j is None:
            continue
        y = np.concatenate([held_labels[:, j], y_suite[:, j]])
        p = np.concatenate([probs_gen[:, k], probs_suite[:, k]])
        entry = _auroc_entry(y, p, None, n_boot, seed)
        entry.pop("real", None)
        entry["n_pos_templated"] = int((y_suite[:, j] == 1).sum())
        entry["n_pos_held_out"] = int((held_labels[:, j] == 1).sum())
        out[name] = entry
    return out


# ---------------------------------------------------------------------------------------------
# laterality and negation


def _side_accuracy(p_left: np.ndarray, p_right: np.ndarray, is_left: np.ndarray,
                   n_boot: int, seed: int) -> dict[str, Any]:
    correct = ((p_left > p_right) == is_left).astype(np.float64)
    return {"n": int(len(correct)), "accuracy": _mean_ci(correct, n_boot, seed)}


def laterality_metrics(cases: Sequence[Case], bank: Mapping[tuple[str, int], np.ndarray],
                       tool: ClassifierTool, held: HeldOut, probs_real: np.ndarray | None, *,
                       n_boot: int, seed: int) -> dict[str, Any]:
    """Per sided finding: accuracy of the side call on the suite's images, per side, and on
    the real held-out images with the finding on exactly one side (the reference)."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(c.finding for c in cases):
        left, right = tool.index(f"{name}_left"), tool.index(f"{name}_right")
        if left is None or right is None:
            out[name] = {"skipped": f"the classifier has no {name}_left/{name}_right outputs"}
            continue
        mine = [c for c in cases if c.finding == name]
        probs, _ = tool(np.stack([bank[(c.prompt, c.seed)] for c in mine]))
        is_left = np.array([c.side == "left" for c in mine])
        entry = _side_accuracy(probs[:, left], probs[:, right], is_left, n_boot, seed)
        for side, mask in (("left", is_left), ("right", ~is_left)):
            entry[f"accuracy_{side}"] = float(((probs[mask, left] > probs[mask, right])
                                               == is_left[mask]).mean()) if mask.any() else None
        entry["real"] = _real_side_accuracy(name, held, probs_real, left, right, n_boot, seed)
        out[name] = entry
    return out


def _real_side_accuracy(name: str, held: HeldOut, probs_real: np.ndarray | None, left: int,
                        right: int, n_boot: int, seed: int) -> dict[str, Any] | None:
    cols = [f"{name}_left", f"{name}_right"]
    if probs_real is None or not all(c in held.label_names for c in cols):
        return None
    yl, yr = (held.labels[:, held.label_names.index(c)] for c in cols)
    one = ((yl == 1) & (yr == 0)) | ((yl == 0) & (yr == 1))
    if not one.any():
        return None
    return _side_accuracy(probs_real[one, left], probs_real[one, right], yl[one] == 1, n_boot,
                          seed)


def negation_metrics(pairs: Sequence[NegationPair], bank: Mapping[tuple[str, int], np.ndarray],
                     tool: ClassifierTool, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Per finding: the share of pairs whose negated prompt gives the lower probability of the
    finding (ties count one half), with the mean probabilities of both members."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(p.finding for p in pairs):
        k = tool.index(name)
        if k is None:
            out[name] = {"skipped": f"the classifier has no {name} output"}
            continue
        mine = [p for p in pairs if p.finding == name]
        neg, _ = tool(np.stack([bank[(p.negated.prompt, p.negated.seed)] for p in mine]))
        pos, _ = tool(np.stack([bank[(p.stated.prompt, p.stated.seed)] for p in mine]))
        score = np.where(neg[:, k] < pos[:, k], 1.0, np.where(neg[:, k] == pos[:, k], 0.5, 0.0))
        out[name] = {"n_pairs": len(mine), "share": _mean_ci(score, n_boot, seed),
                     "ties": int((neg[:, k] == pos[:, k]).sum()),
                     "mean_p_stated": float(pos[:, k].mean()),
                     "mean_p_negated": float(neg[:, k].mean())}
    return out


# ---------------------------------------------------------------------------------------------
# image quality and diversity


def _fd(a: np.ndarray, b: np.ndarray, eps: float) -> float | None:
    return frechet_distance(a, b, eps) if min(len(a), len(b)) >= 2 else None


def fid_metrics(feats: Mapping[str, tuple[np.ndarray, np.ndarray]],
                pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], eps: float
                ) -> dict[str, Any]:
    """FID per feature space: ``feats[space]`` = (real, generated) features of the same
    prompts; ``pairs[space]`` = (first render, second render) features of the reports with two
    renders: the real-vs-real reference at (about) the same N."""
    n = min(len(v[0]) for v in feats.values())
    n_pairs = min((len(v[0]) for v in pairs.values()), default=0)
    out: dict[str, Any] = {"n_real": n, "n_generated": n, "n_real_pairs": n_pairs}
    for space, (real, gen) in feats.items():
        ref = pairs.get(space)
        out[space] = {"value": _fd(real, gen, eps), "dim": int(real.shape[1]),
                      "real_vs_real": None if ref is None else _fd(ref[0], ref[1], eps)}
    return out


def diversity_metrics(plan: Plan, bank: Mapping, dataset: Any, st: EvalSettings,
                      seed: int) -> dict[str, Any]:
    """Mean pairwise MS-SSIM of the samples of each diversity prompt, and of the real renders
    of the same reports (resized to the generated size) as the reference."""
    if plan.diversity == 0:
        return {"skipped": "eval.diversity_prompts=0"}
    gen = [plan.samples_of(bank, i) for i in range(plan.diversity)]
    size = gen[0].shape[1:]
    ms = ms_ssim_settings(size, st.ms_ssim_scales, st.ms_ssim_window, st.ms_ssim_sigma)
    per_gen = pairwise_ms_ssim(gen, ms)
    real_rows = [r[:plan.samples] for r in plan.held.rows[:plan.diversity] if len(r) >= 2]
    per_real = pairwise_ms_ssim([real_images(dataset, r, size) for r in real_rows], ms)
    return {"settings": ms.to_dict(), "image_size": list(size),
            "generated": {"ms_ssim": _mean_ci(per_gen, st.n_boot, seed),
                          "prompts": plan.diversity, "samples_per_prompt": plan.samples},
            "real": {"ms_ssim": _mean_ci(per_real, st.n_boot, seed), "reports": len(real_rows),
                     "what": "renders of the same report (phantom anatomy and noise differ)"}}


def clip_space_metrics(clip: Any, gen: np.ndarray, real: np.ndarray, real2: np.ndarray | None,
                prompts: Sequence[str], feats: dict, pairs: dict, n_fid: int,
                twice: Sequence[int], n_boot: int, seed: int) -> dict[str, Any]:
    """CLIP scores of generated and real images with the prompts; adds the CLIP embeddings
    to the FID feature sets ``feats`` and ``pairs``."""
    emb_gen, emb_real = clip_embeddings(clip, gen), clip_embeddings(clip, real)
    feats["clip"] = (emb_real[:n_fid], emb_gen[:n_fid])
    if real2 is not None:
        pairs["clip"] = (emb_real[list(twice)], clip_embeddings(clip, real2))
    text = clip_text_embeddings(clip, prompts)
    return {"generated": _mean_ci(clip_scores(emb_gen, text), n_boot, seed),
            "real": _mean_ci(clip_scores(emb_real, text), n_boot, seed), "n": len(gen),
            "what": "100 * max(cos(image, prompt), 0) in the CXR-CLIP space (Hessel et al.)"}


# ---------------------------------------------------------------------------------------------
# flat numbers


def _value(entry: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(entry, Mapping):
            return None
        entry = entry.get(key)
    return entry if isinstance(entry, int | float) else None


def flat_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level numbers (``fidelity_auroc_<finding>``, ``fid_classifier``...) for `biomed runs`
    and the quickstart; the nested entries keep the CIs."""
    out: dict[str, Any] = {}
    for name, e in m["fidelity"].items():
        out[f"fidelity_auroc_{name}"] = _value(e, "generated", "value")
        out[f"real_auroc_{name}"] = _value(e, "real", "value")
    for name, e in (m.get("fidelity_tag_labels") or {}).items():
        out[f"fidelity_auroc_{name}_tags"] = _value(e, "generated", "value")
    for key, which in (("fidelity_macro_auroc", "generated"), ("real_macro_auroc", "real")):
        values = [_value(e, which, "value") for e in m["fidelity"].values()]
        values = [v for v in values if v is not None]
        out[key] = float(np.mean(values)) if values else None
    for name, e in (m.get("fidelity_with_suites") or {}).items():
        out[f"fidelity_suites_auroc_{name}"] = _value(e, "generated", "value")
        out[f"fidelity_suites_n_pos_{name}"] = e.get("n_pos")
    for name, e in m["laterality"].items():
        out[f"laterality_accuracy_{name}"] = _value(e, "accuracy", "value")
    for name, e in m["negation"].items():
        out[f"negation_share_{name}"] = _value(e, "share", "value")
    for space in ("classifier", "clip"):
        out[f"fid_{space}"] = _value(m["fid"], space, "value")
    out["fid_n"] = m["fid"]["n_real"]
    for which in ("generated", "real"):
        out[f"ms_ssim_{which}"] = _value(m["diversity"], which, "ms_ssim", "value")
        out[f"clip_score_{which}"] = _value(m["clip_score"], which, "value")
    out["key_metrics"] = [k for k in ("fidelity_auroc_cardiomegaly", "fidelity_auroc_effusion",
                                      "laterality_accuracy_effusion", "negation_share_effusion",
                                      "fid_classifier") if out.get(k) is not None]
    return out
