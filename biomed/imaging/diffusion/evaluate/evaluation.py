"""`evaluate_generation`: plan the prompts, generate the images, measure them with the classifier
(and CXR-CLIP), score them; every metric the package docstring lists
(`biomed.imaging.diffusion.evaluate`).

It runs on any generator callable ``generate(prompts, seeds)`` that returns N x H x W images in
[0, 1] or `biomed.imaging.diffusion.sample.Samples` with divergence flags (a
`biomed.imaging.diffusion.sample.Generator` does), so tests run it without a diffusion model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.diffusion.evaluate.instruments import ClassifierTool
from biomed.imaging.diffusion.evaluate.scoring import (
    clip_space_metrics,
    diversity_metrics,
    fid_metrics,
    fidelity_both,
    fidelity_with_suites,
    flat_metrics,
    laterality_metrics,
    negation_metrics,
)
from biomed.imaging.diffusion.evaluate.settings import EvalSettings
from biomed.imaging.diffusion.evaluate.suites import Plan, make_plan, real_images

#: ``generate(prompts, seeds)`` -> N x H x W float images in [0, 1] (or ``Samples``).
GenerateFn = Callable[[list[str], list[int]], Any]


# ---------------------------------------------------------------------------------------------
# generation


def _unpack(out: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A generator's answer -> (N x H x W float32 in [0, 1], N diverged flags)."""
    if hasattr(out, "images"):
        images, diverged = out.images, getattr(out, "diverged", None)
    elif isinstance(out, tuple) and len(out) == 2:
        images, diverged = out
    else:
        images, diverged = out, None
    images = np.asarray(images, np.float32)
    if images.ndim != 3 or len(images) != n:
        raise ConfigError(f"the generator returned images of shape {images.shape} for {n} "
                          "prompts (expected N x H x W)")
    flags = np.zeros(n, bool) if diverged is None else np.asarray(diverged, bool)
    flags = flags | ~np.isfinite(images).all(axis=(1, 2))
    return np.clip(np.nan_to_num(images, nan=0.0), 0.0, 1.0), flags


def generate_all(generate: GenerateFn, requests: Sequence[tuple[str, int]], *, chunk: int = 64,
                 progress: bool = False) -> tuple[dict[tuple[str, int], np.ndarray],
                                                  dict[tuple[str, int], bool]]:
    """Generate one image per distinct (prompt, seed) request, ``chunk`` per call."""
    from tqdm.auto import tqdm

    unique = list(dict.fromkeys((str(p), int(s)) for p, s in requests))
    images: dict[tuple[str, int], np.ndarray] = {}
    diverged: dict[tuple[str, int], bool] = {}
    with tqdm(total=len(unique), desc="evaluate-generation: sampling", unit="img",
              disable=not progress, mininterval=1.0) as bar:
        for s in range(0, len(unique), max(1, int(chunk))):
            part = unique[s:s + max(1, int(chunk))]
            imgs, flags = _unpack(generate([p for p, _ in part], [sd for _, sd in part]),
                                  len(part))
            for key, img, flag in zip(part, imgs, flags, strict=True):
                images[key], diverged[key] = img, bool(flag)
            bar.update(len(part))
    return images, diverged


# ---------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class Evaluation:
    """Numbers (``metrics``) and the picture (``grid``: rows of real | samples)."""

    metrics: dict[str, Any]
    grid: np.ndarray | None = None
    grid_prompts: list[str] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)  # scores.csv: one row per image


def evaluate_generation(generate: GenerateFn, dataset: Any, tool: ClassifierTool, *,
                        clip: Any = None, settings: EvalSettings | None = None, seed: int = 0,
                        log: Callable[[str], None] = print) -> Evaluation:
    """Every metric of the package docstring for the images of ``generate`` on ``dataset``'s
    held-out reports, measured with the classifier ``tool`` (and ``clip``, a `LoadedClip`, for
    the CLIP-space metrics; None skips them)."""
    st = settings or EvalSettings()
    plan = make_plan(dataset, tool, st, seed)
    held, n_boot = plan.held, int(st.n_boot)
    requests = plan.requests()
    log(f"evaluate-generation: {len(held.prompts)} held-out prompts, {len(plan.laterality)} "
        f"laterality prompts, {len(plan.negation)} negation pairs; "
        f"{len(dict.fromkeys(requests))} images to generate")
    bank, diverged = generate_all(generate, requests, chunk=st.generation_chunk,
                                  progress=st.progress)
    gen = np.stack([bank[(p, held.image_seed(i))] for i, p in enumerate(held.prompts)])
    real = real_images(dataset, [r[0] for r in held.rows])
    probs_gen, feat_gen = tool(gen)
    probs_real, feat_real = tool(real)
    n_fid = len(gen) if st.fid_max_images is None else min(len(gen), int(st.fid_max_images))
    # the reports (among the FID set) with a second render: the real-vs-real reference
    twice = [i for i in range(n_fid) if len(held.rows[i]) >= 2]
    real2 = real_images(dataset, [held.rows[i][1] for i in twice]) if twice else None
    feats = {"classifier": (feat_real[:n_fid], feat_gen[:n_fid])}
    pairs = {} if real2 is None else {"classifier": (feat_real[twice], tool(real2)[1])}
    held_labels = _held_labels(held, st.text_check)  # the prompts' labels, checked once
    cases = plan.suite_cases()
    probs_suite = (tool(np.stack([bank[(c.prompt, c.seed)] for c in cases]))[0] if cases
                   else np.zeros((0, len(tool.labels)), np.float32))
    metrics: dict[str, Any] = {
        "n_prompts": len(held.prompts), "images_generated": len(bank),
        "diverged": int(sum(diverged.values())),
        "image_size": list(gen.shape[1:]), "classifier_labels": list(tool.labels),
        "sources": {s: held.sources.count(s) for s in sorted(set(held.sources)) if s},
        **fidelity_both(held, probs_gen, probs_real, tool.labels, st.text_check, n_boot, seed,
                        checked=held_labels if st.text_check else None),
        "fidelity_with_suites": fidelity_with_suites(
            held, probs_gen, held_labels, cases, probs_suite, tool,
            plan.suite_findings(), n_boot=n_boot, seed=seed),
        "laterality": laterality_metrics(plan.laterality, bank, tool, held, probs_real,
                                         n_boot=n_boot, seed=seed),
        "negation": negation_metrics(plan.negation, bank, tool, n_boot=n_boot, seed=seed),
        "diversity": diversity_metrics(plan, bank, dataset, st, seed),
    }
    if clip is not None:
        metrics["clip_score"] = clip_space_metrics(clip, gen, real, real2, held.prompts, feats,
                                                   pairs, n_fid, twice, n_boot, seed)
    else:
        metrics["clip_score"] = {"skipped": "no clip_dir"}
    metrics["fid"] = fid_metrics(feats, pairs, st.fid_eps)
    metrics["fid"]["features"] = {
        "classifier": f"input of the classifier's head ({type(tool.head).__name__}): the "
                      "penultimate-layer features", "clip": "normalised CXR-CLIP image embeddings"}
    metrics["fid"]["real_vs_real_what"] = "a second render of the same reports vs the first"
    metrics.update(flat_metrics(metrics))
    rows = min(int(st.grid_prompts), plan.diversity)
    grid = _grid(plan, bank, dataset, rows) if rows else None
    scores = score_rows(plan, held_labels, probs_gen, probs_suite, diverged, tool.labels)
    return Evaluation(metrics, grid, held.prompts[:rows], scores)


#: the leading columns of ``scores.csv``; then ``label_<finding>`` (the prompt's label, blank
#: where unknown) and ``p_<finding>`` (the classifier's probability) per classifier label
SCORE_COLUMNS = ("group", "item", "prompt", "seed", "finding", "side", "diverged")


def score_rows(plan: Plan, held_labels: np.ndarray, probs_gen: np.ndarray,
               probs_suite: np.ndarray, diverged: Mapping[tuple[str, int], bool],
               labels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per scored image (``scores.csv``): which prompt group it belongs to
    (``held_out``, ``laterality``, ``negation_negated``, ``negation_stated``), its prompt and
    seed, the prompt's labels and the classifier's probabilities: what a fidelity AUROC is
    computed from, so that a low one can be traced to the prompts behind it."""
    from biomed.imaging.diffusion.evaluate.scoring import suite_labels

    held = plan.held
    col = {n: j for j, n in enumerate(held.label_names)}
    rows: list[dict[str, Any]] = []

    def add(group: str, item: int, prompt: str, seed: int, finding: str, side: str | None,
            y: np.ndarray, p: np.ndarray) -> None:
        row = {"group": group, "item": item, "prompt": prompt, "seed": seed, "finding": finding,
               "side": side or "", "diverged": int(diverged.get((prompt, seed), False))}
        for name in labels:
            j = col.get(name)
            v = y[j] if j is not None else np.nan
            row[f"label_{name}"] = "" if not np.isfinite(v) else int(v)
        for k, name in enumerate(labels):
            row[f"p_{name}"] = round(float(p[k]), 5)
        rows.append(row)

    for i, prompt in enumerate(held.prompts):
        add("held_out", i, prompt, held.image_seed(i), "", None, held_labels[i], probs_gen[i])
    cases = plan.suite_cases()
    y_suite = suite_labels(cases, held.label_names)
    n_lat = len(plan.laterality)
    for i, c in enumerate(cases):
        if i < n_lat:
            group, item = "laterality", i
        else:  # suite_cases lists each pair's negated member, then its stated one
            group = ("negation_negated", "negation_stated")[(i - n_lat) % 2]
            item = (i - n_lat) // 2
        add(group, item, c.prompt, c.seed, c.finding, c.side, y_suite[i], probs_suite[i])
    return rows


def _held_labels(held: Any, text_check: bool) -> np.ndarray:
    if not text_check:
        return held.labels
    from biomed.imaging.reports.mentions import text_checked_labels

    return text_checked_labels(held.labels, held.label_names, held.prompts)


def _grid(plan: Plan, bank: Mapping, dataset: Any, rows: int) -> np.ndarray:
    from biomed.imaging.core.pixels import image_grid

    tiles = []
    for i in range(rows):
        samples = plan.samples_of(bank, i)
        tiles += [real_images(dataset, plan.held.rows[i][:1], samples.shape[1:])[0], *samples]
    return image_grid(tiles, cols=plan.samples + 1)
