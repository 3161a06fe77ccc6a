"""`biomed evaluate-generation`: how good, how diverse and how faithful to the prompt are the
images of a text-to-X-ray diffusion model.

RoentGen's evaluation (Chambon et al. 2022, arXiv 2211.12737) measured image quality as FID in
domain feature spaces, diversity as MS-SSIM between samples of one prompt, and text alignment;
this command does the same on the held-out split of the data (``data.split: test``) and adds
what none of those measures: whether the image shows what the prompt says, measured with the
project classifier on prompts whose ground truth is exact (the phantom's findings).

1. **FID** between the real held-out images and images generated from their reports (one per
   report), in the classifier's penultimate-layer features (a forward hook on the input of its
   head) and in the CXR-CLIP image tower's normalised embeddings (`gen_metrics.frechet_distance`).
   Reference: FID between two renders of the same reports (the floor at this N; FID is biased
   upwards at small N, so N is reported beside it).
2. **MS-SSIM diversity**: ``samples_per_prompt_diversity`` samples per prompt (other seeds), mean
   pairwise MS-SSIM (lower = more diverse); reference: the renders of the same report.
3. **CLIP score** (x100, clipped at 0) of generated image / prompt pairs in the CXR-CLIP space;
   reference: the real image / report pairs.
4. **Prompt fidelity per finding**: the classifier's AUROC at telling images whose prompt states a
   finding (the report's exact phantom labels) from images whose prompt does not, with bootstrap
   95% CIs, split by the prompt's source (IU report / template) when both occur; reference: the
   same classifier on the real held-out images (the ceiling). With ``eval.text_check`` (default)
   a prompt whose text denies or hedges a finding its tags give it, or affirms or hedges one
   they do not, is left out of that finding's AUROC (`report_mentions.text_checked_labels`:
   "no definite pleural effusion seen" tagged ``Pleural Effusion``); the AUROCs on the tags
   alone are reported beside them (``fidelity_tag_labels``).
5. **Laterality suite**: templated prompts (`report_templates.write_report`) for left and right
   effusion and pneumothorax; accuracy of the classifier's side call (``p(<f>_left) >
   p(<f>_right)`` is "left").
6. **Negation suite**: pairs of a normal report ("No pleural effusion or pneumothorax. Heart size
   is normal. ...") and a report stating the finding, both written from one writer seed and
   sampled with one image seed; the share of pairs where the negated prompt gives the lower
   probability of the finding (a tie counts one half: a prompt-blind model scores 0.5).

Everything is built on a generator callable ``generate(prompts, seeds) -> N x H x W images in
[0, 1]`` (or `sample.Samples` with divergence flags), so it runs without a diffusion model in
tests; `run` makes it from ``model_dir`` with `sample.generate_images`. The run folder gets
``metrics.json``, ``table.md`` (for docs/results.md), ``grid.png`` (real | samples per prompt)
and ``report.html``.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from biomed import runs
from biomed.errors import BiomedError, ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.core import metrics as M
from biomed.imaging.core import pixels
from biomed.imaging.core.findings import SEVERITIES, PhantomFinding
from biomed.imaging.diffusion import gen_metrics as G
from biomed.imaging.reports.templates import write_report

__all__ = ["LATERALITY_FINDINGS", "NEGATION_FINDINGS", "Case", "ClassifierTool",
           "EvalSettings", "Evaluation", "Generator", "HeldOut", "NegationPair",
           "evaluate_generation", "generate_all", "held_out_prompts", "laterality_cases",
           "make_generator", "markdown_table", "negation_pairs", "penultimate_layer", "run"]

#: ``generate(prompts, seeds)`` -> N x H x W float images in [0, 1] (or ``Samples``).
Generator = Callable[[list[str], list[int]], Any]

LATERALITY_FINDINGS = ("effusion", "pneumothorax")
NEGATION_FINDINGS = ("effusion", "pneumothorax", "cardiomegaly")
_HELD_OUT, _LATERALITY, _NEGATION = 0, 1, 2  # seed streams


def suite_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``keys`` (one stream per suite/item)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0]
               & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------
# settings


@dataclass
class EvalSettings:
    """The ``eval`` node of ``conf/evaluate_generation.yaml`` (defaults match the file)."""

    max_prompts: int | None = 200
    samples_per_prompt_diversity: int = 4
    diversity_prompts: int = 16
    laterality_per_side: int = 32
    negation_pairs: int = 32
    n_boot: int = 1000
    fid_max_images: int | None = None
    fid_eps: float = 1e-6
    ms_ssim_scales: int = 3
    ms_ssim_window: int = 11
    ms_ssim_sigma: float = 1.5
    classifier_batch_size: int = 64
    generation_chunk: int = 64
    grid_prompts: int = 4
    text_check: bool = True
    progress: bool = True

    @classmethod
    def from_cfg(cls, node: Mapping[str, Any] | DictConfig, **extra: Any) -> EvalSettings:
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) \
            else dict(node)
        ms = raw.pop("ms_ssim", None) or {}
        raw.update({f"ms_ssim_{k}": v for k, v in ms.items()}, **extra)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"eval: unknown keys {unknown}")
        out = cls(**raw)
        for name in ("samples_per_prompt_diversity",):
            if int(getattr(out, name)) < 2:
                raise ConfigError(f"eval.{name}={getattr(out, name)}: at least 2 (pairs)")
        for name in ("diversity_prompts", "laterality_per_side", "negation_pairs", "n_boot"):
            if int(getattr(out, name)) < 0:
                raise ConfigError(f"eval.{name}={getattr(out, name)} must be >= 0")
        return out


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class Case:
    """One suite prompt: its text, the findings it was written from, its image seed."""

    prompt: str
    findings: tuple[PhantomFinding, ...]
    seed: int
    finding: str
    side: str | None = None


@dataclass(frozen=True)
class NegationPair:
    """A normal report and a report stating ``finding``, sampled with one seed."""

    finding: str
    negated: Case
    stated: Case


def _text(findings: Sequence[PhantomFinding], writer: Sequence[int]) -> str:
    """Report text (impression first, then findings: the shape of ``Report.text``)."""
    impression, body = write_report(list(findings), np.random.default_rng(list(writer)))
    return f"{impression} {body}"


def laterality_cases(per_side: int, seed: int = 0,
                     findings: Sequence[str] = LATERALITY_FINDINGS) -> list[Case]:
    """``per_side`` left and ``per_side`` right prompts per finding, severities cycling, each
    with its own wording (writer seed) and image seed."""
    out = []
    for fi, name in enumerate(findings):
        for si, side in enumerate(("left", "right")):
            for k in range(int(per_side)):
                f = PhantomFinding(name, side=side, severity=SEVERITIES[k % len(SEVERITIES)])
                keys = (_LATERALITY, fi, si, k)
                out.append(Case(_text([f], (seed, *keys)), (f,), suite_seed(seed, *keys),
                                name, side))
    return out


def negation_pairs(n_pairs: int, seed: int = 0,
                   findings: Sequence[str] = NEGATION_FINDINGS) -> list[NegationPair]:
    """``n_pairs`` pairs per finding: sides cycle left/right/bilateral for lateral findings,
    severities cycle; both members share the writer seed and the image seed."""
    out = []
    for fi, name in enumerate(findings):
        lateral = PhantomFinding(name).lateral
        for k in range(int(n_pairs)):
            side = ("left", "right", "bilateral")[k % 3] if lateral else None
            f = PhantomFinding(name, side=side, severity=SEVERITIES[(k // 3) % len(SEVERITIES)])
            keys = (_NEGATION, fi, k)
            writer, image = (seed, *keys), suite_seed(seed, *keys)
            out.append(NegationPair(name, Case(_text([], writer), (), image, name),
                                    Case(_text([f], writer), (f,), image, name, side)))
    return out


@dataclass
class HeldOut:
    """Held-out report prompts: one per report, with the dataset rows of its renders."""

    prompts: list[str]
    rows: list[list[int]]  # dataset rows of each report; rows[p][0] is the reference image
    labels: np.ndarray  # P x K, the dataset's labels of rows[p][0] (phantoms: exact)
    label_names: list[str]
    sources: list[str]  # metadata "source" (iu / template), "" when the dataset has none
    report_ids: list[str]
    seed: int = 0

    def image_seed(self, p: int, k: int = 0) -> int:
        return suite_seed(self.seed, _HELD_OUT, p, k)


def _texts(dataset: Any) -> list[str]:
    meta = getattr(dataset, "metadata", None)
    if meta is not None and "report" in meta:
        return [str(t or "") for t in meta["report"]]
    if callable(getattr(dataset, "report", None)):
        return [str(dataset.report(i) or "") for i in range(len(dataset))]
    return [str(dataset[i].get("report") or "") for i in range(len(dataset))]


def held_out_prompts(dataset: Any, max_prompts: int | None = None, seed: int = 0) -> HeldOut:
    """One prompt per report of ``dataset`` (rows grouped by metadata ``report_id``/``study_id``,
    else one per row; rows without text skipped); at most ``max_prompts`` reports, drawn with a
    seeded generator so that every source keeps its share, kept in dataset order."""
    meta = getattr(dataset, "metadata", None)
    texts = _texts(dataset)
    column = next((c for c in ("report_id", "study_id") if meta is not None and c in meta), None)
    keys = [str(k) for k in meta[column]] if column else [str(i) for i in range(len(texts))]
    groups: dict[str, list[int]] = {}
    for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
        if text.strip():
            groups.setdefault(key, []).append(i)
    chosen = list(groups)
    if max_prompts is not None and len(chosen) > int(max_prompts):
        pick = np.random.default_rng([int(seed), _HELD_OUT]).choice(
            len(chosen), int(max_prompts), replace=False)
        chosen = [chosen[i] for i in sorted(pick)]
    rows = [groups[k] for k in chosen]
    first = [r[0] for r in rows]
    sources = meta.get("source") if meta is not None else None
    labels = np.asarray(dataset.labels, np.float32)
    return HeldOut([texts[i] for i in first], rows,
                   labels[first] if first else np.zeros((0, labels.shape[1]), np.float32),
                   list(dataset.label_names),
                   [str(sources[i]) if sources else "" for i in first], chosen, int(seed))


# ---------------------------------------------------------------------------------------------
# instruments


def penultimate_layer(model: nn.Module) -> nn.Module:
    """The classifier's head (its input is the penultimate-layer feature vector): timm's
    ``get_classifier()``, a ``head``/``classifier``/``fc`` linear layer, else the last linear
    layer of the network."""
    net = getattr(model, "net", model)
    getter = getattr(net, "get_classifier", None)
    if callable(getter) and isinstance(getter(), nn.Module) \
            and any(p.numel() for p in getter().parameters()):
        return getter()
    for name in ("head", "classifier", "fc"):
        layer = getattr(net, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError(f"{type(net).__name__}: no linear head to read features before")
    return linear[-1]


class ClassifierTool:
    """A loaded classifier as a measuring instrument: images (any size: resized to its input)
    -> (sigmoid probabilities N x K, penultimate-layer features N x D)."""

    def __init__(self, model: nn.Module, labels: Sequence[str], *,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 input_size: Sequence[int] | None = None):
        self.model = model.to(device).eval()
        self.labels = list(labels)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        size = input_size or getattr(model, "input_size", None)
        self.input_size = tuple(int(v) for v in size) if size else None
        self.head = penultimate_layer(model)

    def index(self, name: str) -> int | None:
        return self.labels.index(name) if name in self.labels else None

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if self.input_size and images.shape[1:] != self.input_size:
            images = np.stack([pixels.resize(im, self.input_size) for im in images])
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(
            lambda _m, inputs: captured.append(inputs[0].detach().flatten(1).float().cpu()))
        probs = []
        try:
            for s in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[s:s + self.batch_size])[:, None].to(self.device)
                probs.append(torch.sigmoid(self.model(x).float()).cpu())
        finally:
            hook.remove()
        if not probs:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, 0), np.float32)
        return torch.cat(probs).numpy(), torch.cat(captured).numpy()


def clip_embeddings(clip: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Normalised CXR-CLIP image embeddings (N x D) of workbench images of any size."""
    from biomed.imaging.clip import model as cm
    from biomed.imaging.clip.train import encode_images

    device = next(clip.model.parameters()).device
    fitted = cm.fit_images(list(images), clip.preprocess_cfg)
    return encode_images(clip.model, fitted, clip.preprocess_cfg, batch_size, device).numpy()


def clip_text_embeddings(clip: Any, texts: Sequence[str]) -> np.ndarray:
    from biomed.imaging.clip.train import encode_texts

    device = next(clip.model.parameters()).device
    return encode_texts(clip.model, clip.tokenizer, list(texts), device=device).numpy()


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


def generate_all(generate: Generator, requests: Sequence[tuple[str, int]], *, chunk: int = 64,
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
# metrics


def _est(e: M.Estimate | None) -> dict[str, float | None] | None:
    """An estimate for JSON: NaN -> None; None when the value itself is undefined."""
    if e is None or not np.isfinite(e.value):
        return None
    return {k: (float(v) if np.isfinite(v) else None) for k, v in e.to_dict().items()}


def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> dict[str, float | None] | None:
    values = np.asarray(values, np.float64)
    return _est(M.bootstrap(np.mean, values, n=n_boot, seed=seed)) if len(values) else None


def _auroc_entry(y: np.ndarray, gen: np.ndarray, real: np.ndarray | None, n_boot: int,
                 seed: int) -> dict[str, Any]:
    known = ~np.isnan(y)
    out: dict[str, Any] = {"n_pos": int((y[known] == 1).sum()),
                           "n_neg": int((y[known] == 0).sum()), "generated": None, "real": None}
    if out["n_pos"] and out["n_neg"]:
        out["generated"] = _est(M.bootstrap(M.auroc, y, gen, n=n_boot, seed=seed))
        if real is not None:
            out["real"] = _est(M.bootstrap(M.auroc, y, real, n=n_boot, seed=seed))
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


def _fd(a: np.ndarray, b: np.ndarray, eps: float) -> float | None:
    return G.frechet_distance(a, b, eps) if min(len(a), len(b)) >= 2 else None


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


# ---------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class Evaluation:
    """Numbers (``metrics``) and the picture (``grid``: rows of real | samples)."""

    metrics: dict[str, Any]
    grid: np.ndarray | None = None
    grid_prompts: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    held: HeldOut
    diversity: int  # prompts with several samples
    samples: int
    laterality: list[Case]
    negation: list[NegationPair]

    def requests(self) -> list[tuple[str, int]]:
        h = self.held
        out = [(p, h.image_seed(i)) for i, p in enumerate(h.prompts)]
        out += [(h.prompts[i], h.image_seed(i, k)) for i in range(self.diversity)
                for k in range(self.samples)]
        out += [(c.prompt, c.seed) for c in self.laterality]
        out += [(c.prompt, c.seed) for p in self.negation for c in (p.negated, p.stated)]
        return out

    def samples_of(self, bank: Mapping, i: int) -> np.ndarray:
        return np.stack([bank[(self.held.prompts[i], self.held.image_seed(i, k))]
                         for k in range(self.samples)])


def _plan(dataset: Any, tool: ClassifierTool, st: EvalSettings, seed: int) -> _Plan:
    held = held_out_prompts(dataset, st.max_prompts, seed)
    if not held.prompts:
        raise ConfigError(f"{getattr(dataset, 'name', 'the data')}: no held-out items with "
                          "report text to prompt with")
    sided = [f for f in LATERALITY_FINDINGS
             if tool.index(f"{f}_left") is not None and tool.index(f"{f}_right") is not None]
    known = [f for f in NEGATION_FINDINGS if tool.index(f) is not None]
    return _Plan(held, min(int(st.diversity_prompts), len(held.prompts)),
                 int(st.samples_per_prompt_diversity),
                 laterality_cases(st.laterality_per_side, seed, sided),
                 negation_pairs(st.negation_pairs, seed, known))


def _real_images(dataset: Any, rows: Sequence[int], size: tuple[int, int] | None = None
                 ) -> np.ndarray:
    images = [np.asarray(dataset[int(i)]["image"], np.float32) for i in rows]
    if size is not None:
        images = [pixels.resize(im, size) for im in images]
    return np.stack(images)


def diversity_metrics(plan: _Plan, bank: Mapping, dataset: Any, st: EvalSettings,
                      seed: int) -> dict[str, Any]:
    """Mean pairwise MS-SSIM of the samples of each diversity prompt, and of the real renders
    of the same reports (resized to the generated size) as the reference."""
    if plan.diversity == 0:
        return {"skipped": "eval.diversity_prompts=0"}
    gen = [plan.samples_of(bank, i) for i in range(plan.diversity)]
    size = gen[0].shape[1:]
    ms = G.ms_ssim_settings(size, st.ms_ssim_scales, st.ms_ssim_window, st.ms_ssim_sigma)
    per_gen = G.pairwise_ms_ssim(gen, ms)
    real_rows = [r[:plan.samples] for r in plan.held.rows[:plan.diversity] if len(r) >= 2]
    per_real = G.pairwise_ms_ssim([_real_images(dataset, r, size) for r in real_rows], ms)
    return {"settings": ms.to_dict(), "image_size": list(size),
            "generated": {"ms_ssim": _mean_ci(per_gen, st.n_boot, seed),
                          "prompts": plan.diversity, "samples_per_prompt": plan.samples},
            "real": {"ms_ssim": _mean_ci(per_real, st.n_boot, seed), "reports": len(real_rows),
                     "what": "renders of the same report (phantom anatomy and noise differ)"}}


def evaluate_generation(generate: Generator, dataset: Any, tool: ClassifierTool, *,
                        clip: Any = None, settings: EvalSettings | None = None, seed: int = 0,
                        log: Callable[[str], None] = print) -> Evaluation:
    """Every metric of the module docstring for the images of ``generate`` on ``dataset``'s
    held-out reports, measured with the classifier ``tool`` (and ``clip``, a `LoadedClip`, for
    the CLIP-space metrics; None skips them)."""
    st = settings or EvalSettings()
    plan = _plan(dataset, tool, st, seed)
    held, n_boot = plan.held, int(st.n_boot)
    requests = plan.requests()
    log(f"evaluate-generation: {len(held.prompts)} held-out prompts, {len(plan.laterality)} "
        f"laterality prompts, {len(plan.negation)} negation pairs; "
        f"{len(dict.fromkeys(requests))} images to generate")
    bank, diverged = generate_all(generate, requests, chunk=st.generation_chunk,
                                  progress=st.progress)
    gen = np.stack([bank[(p, held.image_seed(i))] for i, p in enumerate(held.prompts)])
    real = _real_images(dataset, [r[0] for r in held.rows])
    probs_gen, feat_gen = tool(gen)
    probs_real, feat_real = tool(real)
    n_fid = len(gen) if st.fid_max_images is None else min(len(gen), int(st.fid_max_images))
    # the reports (among the FID set) with a second render: the real-vs-real reference
    twice = [i for i in range(n_fid) if len(held.rows[i]) >= 2]
    real2 = _real_images(dataset, [held.rows[i][1] for i in twice]) if twice else None
    feats = {"classifier": (feat_real[:n_fid], feat_gen[:n_fid])}
    pairs = {} if real2 is None else {"classifier": (feat_real[twice], tool(real2)[1])}
    metrics: dict[str, Any] = {
        "n_prompts": len(held.prompts), "images_generated": len(bank),
        "diverged": int(sum(diverged.values())),
        "image_size": list(gen.shape[1:]), "classifier_labels": list(tool.labels),
        "sources": {s: held.sources.count(s) for s in sorted(set(held.sources)) if s},
        **_fidelity_both(held, probs_gen, probs_real, tool.labels, st.text_check, n_boot, seed),
        "laterality": laterality_metrics(plan.laterality, bank, tool, held, probs_real,
                                         n_boot=n_boot, seed=seed),
        "negation": negation_metrics(plan.negation, bank, tool, n_boot=n_boot, seed=seed),
        "diversity": diversity_metrics(plan, bank, dataset, st, seed),
    }
    if clip is not None:
        metrics["clip_score"] = _clip_space(clip, gen, real, real2, held.prompts, feats, pairs,
                                            n_fid, twice, n_boot, seed)
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
    return Evaluation(metrics, grid, held.prompts[:rows])


def _fidelity_both(held: HeldOut, probs_gen: np.ndarray, probs_real: np.ndarray,
                   labels: Sequence[str], text_check: bool, n_boot: int, seed: int
                   ) -> dict[str, Any]:
    """``fidelity`` (on the text-checked prompt labels when ``text_check``), and with the check
    also ``fidelity_tag_labels`` (the tags alone) and ``prompt_label_check`` (what it left out:
    per finding, the prompts set unknown and their report ids)."""
    if not text_check:
        return {"fidelity": fidelity_metrics(held, probs_gen, probs_real, labels,
                                             n_boot=n_boot, seed=seed)}
    from biomed.imaging.reports.mentions import MENTION_PATTERNS, text_checked_labels

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


def _clip_space(clip: Any, gen: np.ndarray, real: np.ndarray, real2: np.ndarray | None,
                prompts: Sequence[str], feats: dict, pairs: dict, n_fid: int,
                twice: Sequence[int], n_boot: int, seed: int) -> dict[str, Any]:
    """CLIP scores of generated and real images with the prompts; adds the CLIP embeddings
    to the FID feature sets ``feats`` and ``pairs``."""
    emb_gen, emb_real = clip_embeddings(clip, gen), clip_embeddings(clip, real)
    feats["clip"] = (emb_real[:n_fid], emb_gen[:n_fid])
    if real2 is not None:
        pairs["clip"] = (emb_real[list(twice)], clip_embeddings(clip, real2))
    text = clip_text_embeddings(clip, prompts)
    return {"generated": _mean_ci(G.clip_scores(emb_gen, text), n_boot, seed),
            "real": _mean_ci(G.clip_scores(emb_real, text), n_boot, seed), "n": len(gen),
            "what": "100 * max(cos(image, prompt), 0) in the CXR-CLIP space (Hessel et al.)"}


def _grid(plan: _Plan, bank: Mapping, dataset: Any, rows: int) -> np.ndarray:
    from biomed.imaging.core.pixels import image_grid

    tiles = []
    for i in range(rows):
        samples = plan.samples_of(bank, i)
        tiles += [_real_images(dataset, plan.held.rows[i][:1], samples.shape[1:])[0], *samples]
    return image_grid(tiles, cols=plan.samples + 1)


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


# ---------------------------------------------------------------------------------------------
# the table


def _f(entry: Any, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    if isinstance(entry, Mapping):
        if entry.get("value") is None:
            return "n/a"
        ci = "" if entry.get("ci_low") is None else \
            f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
        return f"{entry['value']:.{digits}f}{ci}"
    return f"{entry:.{digits}f}"


def _summary_rows(m: Mapping[str, Any]) -> list[str]:
    fid, div, cs = m["fid"], m["diversity"], m["clip_score"]
    rows = ["| metric | generated | real reference | n |", "|---|---|---|---|"]
    for space, label in (("classifier", "classifier penultimate features"),
                         ("clip", "CXR-CLIP image embeddings")):
        if space in fid:
            rows.append(f"| FID, {label} ({fid[space]['dim']}-d) | {_f(fid[space]['value'], 2)} "
                        f"| {_f(fid[space]['real_vs_real'], 2)} (render vs render, n = "
                        f"{fid['n_real_pairs']}) | {fid['n_real']} real vs {fid['n_generated']} "
                        "generated |")
    if "settings" in div:
        s = div["settings"]
        rows.append(f"| MS-SSIM diversity ({s['scales']} scales, {s['window']}x{s['window']} "
                    f"Gaussian, sigma {s['sigma']:g}; lower = more diverse) | "
                    f"{_f(div['generated']['ms_ssim'])} | {_f(div['real']['ms_ssim'])} (renders "
                    f"of one report) | {div['generated']['prompts']} prompts x "
                    f"{div['generated']['samples_per_prompt']} |")
    if "generated" in cs:
        rows.append(f"| CLIP score (x100, clipped at 0) | {_f(cs['generated'], 2)} | "
                    f"{_f(cs['real'], 2)} (real image, its report) | {cs['n']} |")
    return rows


def _fidelity_rows(m: Mapping[str, Any]) -> list[str]:
    sources = list(m.get("sources") or {}) if len(m.get("sources") or {}) > 1 else []
    head = "| finding | n pos / neg | generated | real phantoms (ceiling) |" + \
        "".join(f" {s} prompts |" for s in sources)
    rows = [head, "|---" * (4 + len(sources)) + "|"]
    for name, e in m["fidelity"].items():
        by = e.get("by_source", {})
        rows.append(f"| {name} | {e['n_pos']} / {e['n_neg']} | {_f(e['generated'])} | "
                    f"{_f(e['real'])} |" + "".join(f" {_f(by.get(s, {}).get('generated'))} |"
                                                   for s in sources))
    rows.append(f"| macro | | {_f(m.get('fidelity_macro_auroc'))} | "
                f"{_f(m.get('real_macro_auroc'))} |" + " |" * len(sources))
    return rows


def _label_check_rows(m: Mapping[str, Any]) -> list[str]:
    check = m.get("prompt_label_check")
    if not check:
        return []
    tags = m.get("fidelity_tag_labels") or {}
    rows = ["Prompts left out of a finding's AUROC because their text does not support its "
            "label (denied or hedged; `biomed.imaging.reports.mentions`), and the AUROC on the "
            "tags alone:", "", "| finding | left out (tag positive) | report ids | "
            "generated, tags alone | real, tags alone |", "|---|---|---|---|---|"]
    for name, e in check["left_out"].items():
        t = tags.get(name, {})
        rows.append(f"| {name} | {e['n']} ({e['tag_positive']}) | "
                    f"{', '.join(e['report_ids']) or '-'} | {_f(t.get('generated'))} | "
                    f"{_f(t.get('real'))} |")
    return [*rows, ""]


def _suite_rows(m: Mapping[str, Any]) -> list[str]:
    rows = ["| finding | n | side accuracy | left prompts | right prompts | real phantoms |",
            "|---|---|---|---|---|---|"]
    for name, e in m["laterality"].items():
        if "skipped" in e:
            rows.append(f"| {name} | | skipped: {e['skipped']} | | | |")
            continue
        real = e.get("real") or {}
        rows.append(f"| {name} | {e['n']} | {_f(e['accuracy'])} | {_f(e['accuracy_left'])} | "
                    f"{_f(e['accuracy_right'])} | {_f(real.get('accuracy'))} (n = "
                    f"{real.get('n', 0)}) |")
    rows += ["", "| finding | pairs | negated prompt lower | ties | mean p stated / negated |",
             "|---|---|---|---|---|"]
    for name, e in m["negation"].items():
        if "skipped" in e:
            rows.append(f"| {name} | | skipped: {e['skipped']} | | |")
            continue
        rows.append(f"| {name} | {e['n_pairs']} | {_f(e['share'])} | {e['ties']} | "
                    f"{e['mean_p_stated']:.3f} / {e['mean_p_negated']:.3f} |")
    return rows


def markdown_table(m: Mapping[str, Any]) -> str:
    """The run's numbers as Markdown (for docs/results.md)."""
    sampler = m.get("sampler") or {}
    data = str(m.get("data", "?"))
    phantom = "phantom" in data
    lines = [
        "# Generation evaluation" + (" (phantom data)" if phantom else ""), "",
        f"Model `{m.get('model_id', m.get('model_dir', '?'))}`; classifier "
        f"`{m.get('classifier_dir', '?')}`; CXR-CLIP `{m.get('clip_dir') or 'none'}`; data "
        f"`{data}` ({m.get('split', '?')} split, {m['n_prompts']} report prompts); sampler "
        f"{sampler.get('scheduler', '?')}, {sampler.get('steps', '?')} steps, guidance "
        f"{sampler.get('guidance', '?')}; seed {m.get('seed', '?')}. Images generated: "
        f"{m['images_generated']} ({m['diverged']} flagged as diverged), "
        f"{'x'.join(map(str, m['image_size']))} px. Bootstrap 95% CIs in brackets." +
        (f" {m['prompts_truncated']} distinct prompts were longer than the model's "
         f"{m.get('prompt_max_tokens')} tokens and truncated (as in training)."
         if m.get("prompts_truncated") else ""), "",
        *_summary_rows(m), "",
        "## Prompt fidelity per finding (classifier AUROC: prompt states the finding or not)", "",
        *_fidelity_rows(m), "",
        "Side columns (`*_left`, `*_right`) use the side the phantom drew, which an IU prompt "
        "may not state; the laterality suite below uses prompts that do.", "",
        *_label_check_rows(m),
        "## Laterality and negation suites (templated prompts)", "", *_suite_rows(m), ""]
    if phantom:
        lines += ["Measured on phantoms (procedural radiographs with exact findings) and the "
                  "classifier trained on them; conclusions about real patients need real data.",
                  ""]
    return "\n".join(lines)


def _report_html(table: str, grid: bool, prompts: Sequence[str]) -> str:
    items = "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
    picture = (f"<h2>Samples</h2><p>Each row: the real phantom of a held-out report, then "
               f"samples from its text (synthetic).</p><img src='grid.png' "
               f"style='image-rendering:pixelated;width:640px'><ol>{items}</ol>") if grid else ""
    return ("<!doctype html><meta charset='utf-8'><title>evaluate-generation</title>"
            f"<pre>{html.escape(table)}</pre>{picture}\n")


def write_outputs(run_dir: Path, metrics: dict[str, Any], ev: Evaluation) -> dict[str, str]:
    """``table.md``, ``grid.png`` (when there are samples) and ``report.html``."""
    files = {"table": "table.md", "report": "report.html"}
    table = markdown_table(metrics)
    (run_dir / "table.md").write_text(table, encoding="utf-8")
    if ev.grid is not None:
        pixels.write_png16(run_dir / "grid.png", ev.grid, text={
            "synthetic": "true (column 1 of each row is the real phantom; the others are "
                         "generated)", "software": "biomed evaluate-generation",
            "model_id": str(metrics.get("model_id", ""))})
        files["grid"] = "grid.png"
    (run_dir / "report.html").write_text(_report_html(table, ev.grid is not None,
                                                      ev.grid_prompts), encoding="utf-8")
    return files


# ---------------------------------------------------------------------------------------------
# the command


class PipelineGenerator:
    """``generate(prompts, seeds)`` over a saved pipeline with the ``sampler`` settings."""

    def __init__(self, model_dir: str | Path, sampler: Mapping[str, Any],
                 device: str | torch.device | None = None):
        from biomed.imaging.diffusion import sample

        self.sampler = dict(sampler)
        self.loaded = sample.load_pipeline(model_dir, None if device is None else str(device),
                                           self.sampler.get("dtype"))
        self.model_id = self.loaded.model_id
        self.max_tokens = int(self.loaded.pipe.tokenizer.model_max_length)
        self.truncated: set[str] = set()  # distinct prompts longer than the tokenizer's limit

    def __call__(self, prompts: list[str], seeds: list[int]):
        from biomed.imaging.diffusion import sample

        tokenizer = self.loaded.pipe.tokenizer
        self.truncated.update(p for p in dict.fromkeys(prompts)
                              if p not in self.truncated and sample.count_truncated(tokenizer, [p]))
        s = self.sampler
        return sample.generate_images(
            self.loaded, prompts, seeds, scheduler=str(s.get("scheduler", "dpmpp")),
            steps=int(s.get("steps", 20)), guidance=float(s.get("guidance", 4.0)),
            batch_size=int(s.get("batch_size", 16)), latent_clip=s.get("latent_clip", 4.0))


def make_generator(cfg: DictConfig, device: str | torch.device | None = None) -> Generator:
    """The generator of ``cfg.model_dir`` (a train-diffusion run folder or its pipeline/);
    one-line `InputError` when the folder is not a pipeline."""
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else {}
    return PipelineGenerator(cfg.model_dir, sampler, device)


def _check_required(cfg: DictConfig) -> None:
    missing = [k for k in ("model_dir", "classifier_dir") if OmegaConf.is_missing(cfg, k)
               or not cfg.get(k)]
    if missing:
        raise ConfigError(f"evaluate-generation: set {' and '.join(f'{k}=...' for k in missing)}"
                          " (run folders of train-diffusion and train-classifier)")


def _dataset(cfg: DictConfig) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    split = cfg.data.get("split") or "test"
    try:
        return instantiate(cfg.data, split=split)
    except InstantiationException as e:
        if isinstance(e.__cause__, BiomedError):
            raise e.__cause__ from None
        raise


def _data_files(cfg: DictConfig) -> list[str]:
    data = cfg.get("data") or {}
    return [str(data[k]) for k in ("root", "csv_file", "reports") if data.get(k)
            and not str(data[k]).startswith("???")]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the pipeline of ``cfg.model_dir`` (``conf/evaluate_generation.yaml``)."""
    from biomed.imaging.classifier.train import load_classifier
    from biomed.imaging.diffusion.sample import pick_device

    _check_required(cfg)
    st = EvalSettings.from_cfg(cfg.eval, progress=bool(cfg.get("progress", True)))
    device = pick_device(cfg.get("device"))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    generate = make_generator(cfg, device)
    model, ccfg = load_classifier(cfg.classifier_dir, device)
    tool = ClassifierTool(model, ccfg["labels"], device=device,
                          batch_size=st.classifier_batch_size)
    clip = None
    if cfg.get("clip_dir"):
        from biomed.imaging.clip.model import load_clip

        clip = load_clip(cfg.clip_dir, device=device)
    with runs.experiment(cfg, _data_files(cfg)) as run_dir:
        dataset = _dataset(cfg)
        ev = evaluate_generation(generate, dataset, tool, clip=clip, settings=st,
                                 seed=int(cfg.seed))
        sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
        metrics = {"model_dir": str(cfg.model_dir),
                   "model_id": getattr(generate, "model_id", str(cfg.model_dir)),
                   "classifier_dir": str(cfg.classifier_dir),
                   "clip_dir": str(cfg.clip_dir) if cfg.get("clip_dir") else None,
                   "data": str(cfg.data.get("name") or getattr(dataset, "name", "?")),
                   "split": str(cfg.data.get("split") or "test"), "seed": int(cfg.seed),
                   "sampler": sampler, **ev.metrics}
        if hasattr(generate, "truncated"):
            metrics["prompts_truncated"] = len(generate.truncated)
            metrics["prompt_max_tokens"] = getattr(generate, "max_tokens", None)
        metrics["files"] = write_outputs(run_dir, metrics, ev)
        metrics["run_dir"] = str(run_dir)
        runs.finish_run(run_dir, metrics)
    _log_summary(metrics)
    return metrics


def _log_summary(m: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    parts = [f"{k}={f(m.get(k))}" for k in ("fidelity_auroc_cardiomegaly",
                                            "fidelity_auroc_effusion",
                                            "laterality_accuracy_effusion",
                                            "negation_share_effusion", "fid_classifier",
                                            "ms_ssim_generated", "clip_score_generated")]
    log(f"evaluate-generation: {' '.join(parts)}; {m['run_dir']}/table.md")


main = hydra_app("evaluate_generation")(run)

if __name__ == "__main__":
    main()
