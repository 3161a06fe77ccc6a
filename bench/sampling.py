"""DPM-Solver++ (20 steps) against DDPM (1000 steps) on the same saved pipeline: speed and fidelity.

Baseline: DDPM ancestral sampling with 1000 steps, the scheduler the model was trained with and
the one RoentGen's training code defaults to. Contender: `biomed generate`'s default,
DPM-Solver++ (2nd order multistep, first-order final step to sigma 0) with 20 steps. Both run
through :func:`biomed.imaging.diffusion.sample.generate_images` with the same prompts, seeds,
guidance (4, RoentGen's), batch size and latent clipping, after one warm-up batch each, so the
ratio is the sampler's alone. Target: >= 40x faster.

Fidelity (with ``--classifier_dir``): for each finding in ``FINDING_PROMPTS``, the classifier's
AUROC at telling images whose prompt states the finding from images whose prompt does not
(the other findings' prompts and the normal prompts), averaged over findings, for each sampler;
the difference is reported in AUROC points (target: within 2). Without a classifier, or when
``biomed.imaging.classifier.model`` is not available, fidelity is skipped with a message.

    python bench/sampling.py [--model_dir RUN_OR_PIPELINE] [--classifier_dir RUN_OR_DIR]
                             [--n 4] [--fast_steps 20] [--slow_steps 1000] [--batch_size 8]
                             [--guidance 4] [--device auto] [--threads N]

``--model_dir`` defaults to the newest ``outputs/train-diffusion/*/pipeline`` (else the
quickstart's). Prints the machine, the settings, both rates and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

FINDING_PROMPTS = {
    "cardiomegaly": ["Cardiomegaly.", "Moderate cardiomegaly. The lungs are clear.",
                     "The heart is enlarged. No pleural effusion."],
    "effusion": ["Large left pleural effusion.", "Small right pleural effusion.",
                 "Moderate bilateral pleural effusions. Normal heart size."],
}
NORMAL_PROMPTS = ["No acute cardiopulmonary abnormality.",
                  "Normal heart size. The lungs are clear. No pleural effusion.",
                  "The lungs are clear. No pneumothorax or effusion."]


def default_model_dir(root: Path = Path("outputs")) -> Path | None:
    """The newest trained pipeline under ``outputs/``: train-diffusion runs, then quickstart."""
    for pattern in ("train-diffusion/*/pipeline", "quickstart/latest/**/pipeline"):
        found = [p for p in root.glob(pattern) if (p / "model_index.json").is_file()]
        if found:
            return max(found, key=lambda p: (p / "model_index.json").stat().st_mtime)
    return None


def prompt_set(n: int) -> tuple[list[str], list[str], list[int]]:
    """(prompts, the finding each states or "" for none, seeds): ``n`` images per prompt."""
    from biomed.imaging.diffusion.sample import image_seed

    rows = [(p, f) for f, ps in FINDING_PROMPTS.items() for p in ps]
    rows += [(p, "") for p in NORMAL_PROMPTS]
    prompts, findings, seeds = [], [], []
    for i, (p, f) in enumerate(rows):
        for k in range(n):
            prompts.append(p)
            findings.append(f)
            seeds.append(image_seed(0, i, k))
    return prompts, findings, seeds


def timed(loaded, prompts, seeds, *, scheduler: str, steps: int, guidance: float,
          batch_size: int):
    """(images, diverged flags, seconds) after a one-batch warm-up."""
    from biomed.imaging.diffusion.sample import generate_images

    kw = {"scheduler": scheduler, "steps": steps, "guidance": guidance, "batch_size": batch_size}
    generate_images(loaded, prompts[:batch_size], seeds[:batch_size], **kw)  # warm-up
    t0 = time.perf_counter()
    out = generate_images(loaded, prompts, seeds, **kw)
    return out.images, out.diverged, time.perf_counter() - t0


def load_scorer(classifier_dir: str, device: str):
    """images (N x H x W in [0, 1]) -> (probabilities N x K, label names); None when the
    classifier module is not available."""
    try:
        from biomed.imaging.classifier.model import load_classifier, predict_batches
    except ImportError as e:
        print(f"fidelity skipped: biomed.imaging.classifier.model is not available ({e})")
        return None
    from biomed.imaging.core.pixels import resize

    model, config = load_classifier(classifier_dir, device=device)
    size = tuple(config["input_size"])

    def score(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        x = torch.from_numpy(np.stack([resize(img, size) for img in images]))[:, None]
        return predict_batches(model, x, device=device), list(config["labels"])

    return score


def fidelity(score, images: np.ndarray, findings: list[str]) -> dict[str, float]:
    """Per-finding AUROC (stating vs not stating the finding) and their mean."""
    from biomed.imaging.core.metrics import auroc

    probs, names = score(images)
    out = {}
    for f in FINDING_PROMPTS:
        if f not in names:
            print(f"fidelity: the classifier has no {f!r} output; skipped")
            continue
        y = np.array([1.0 if g == f else 0.0 for g in findings])
        out[f] = auroc(y, probs[:, names.index(f)])
    if out:
        out["mean"] = float(np.nanmean(list(out.values())))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_dir", default=None)
    ap.add_argument("--classifier_dir", default=None)
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--fast_steps", type=int, default=20)
    ap.add_argument("--slow_steps", type=int, default=1000)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from biomed.errors import BiomedError
    from biomed.imaging.diffusion.pipeline import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model_dir or default_model_dir()
    if model_dir is None:
        print("error: no trained pipeline under outputs/ (run `biomed train-diffusion` or "
              "`biomed quickstart`, or give --model_dir)", file=sys.stderr)
        return 2
    try:
        loaded = load_pipeline(model_dir, args.device)
        score = load_scorer(args.classifier_dir, str(loaded.pipe.device)) \
            if args.classifier_dir else None
    except BiomedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prompts, findings, seeds = prompt_set(args.n)
    warnings.simplefilter("ignore", UserWarning)  # prompt truncation: same for both samplers

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}, device {loaded.pipe.device}")
    print(f"model: {loaded.model_id}")
    print(f"settings: {len(prompts)} images ({args.n} per prompt), batch {args.batch_size}, "
          f"guidance {args.guidance:g}")
    runs = {}
    for name, scheduler, steps in (("DPM-Solver++", "dpmpp", args.fast_steps),
                                   ("DDPM", "ddpm", args.slow_steps)):
        images, diverged, seconds = timed(loaded, prompts, seeds, scheduler=scheduler,
                                          steps=steps, guidance=args.guidance,
                                          batch_size=args.batch_size)
        runs[name] = (images, seconds)
        print(f"{name:>13} {steps:5d} steps: {seconds:8.2f} s, {len(images) / seconds:8.3f} "
              f"images/s, {int(diverged.sum())} flagged diverged")
    ratio = runs["DDPM"][1] / runs["DPM-Solver++"][1]
    print(f"speed-up DPM-Solver++ {args.fast_steps} vs DDPM {args.slow_steps}: {ratio:.1f}x "
          f"(target >= 40x)")

    if args.classifier_dir is None:
        print("fidelity skipped: give --classifier_dir")
    elif score is not None:
        fid = {name: fidelity(score, images, findings) for name, (images, _) in runs.items()}
        for name, f in fid.items():
            print(f"fidelity AUROC {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()))
        if "mean" in fid["DPM-Solver++"] and "mean" in fid["DDPM"]:
            diff = 100 * (fid["DPM-Solver++"]["mean"] - fid["DDPM"]["mean"])
            print(f"fidelity difference (DPM-Solver++ - DDPM): {diff:+.1f} AUROC points "
                  f"(target within 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
