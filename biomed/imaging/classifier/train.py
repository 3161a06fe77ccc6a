"""`biomed train-classifier`: fit a multi-label chest X-ray classifier under the shared engine,
evaluate it and save it.

`fit_classifier(cfg, splits, run_dir)` trains on the splits it is handed (train / val / test
datasets in the contract of `biomed.imaging.data`, e.g. a real subset wrapped with synthetic
samples by the augmentation loop), evaluates (`biomed.imaging.classifier.evaluate`) and saves
``classifier/`` (`biomed.imaging.classifier.model`, with the card of
`biomed.imaging.classifier.card`). `train_classifier(cfg, run_dir)` builds the splits of
``cfg.data`` and fits; `run` is the command.

Training: masked BCE-with-logits (NaN labels ignored), optional positive-class weights from the
training prevalence, and a random view of each training image
(`biomed.imaging.core.transforms.random_view_transform`: small affine, gamma, contrast,
brightness; never a horizontal flip, which would swap left and right findings).

The run folder gets ``classifier/`` (``model.safetensors``, ``config.json``, a model card
``README.md``), ``metrics.json`` and the engine's ``log.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from biomed import runs
from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.classifier.card import model_card
from biomed.imaging.classifier.data import (
    Collate,
    estimate_normalization,
    preload,
    select_labels,
)
from biomed.imaging.classifier.evaluate import evaluate_splits, macro_auroc, prevalence
from biomed.imaging.classifier.model import (
    CONFIG,
    FORMAT,
    PIXEL_CONVENTION,
    SUBDIR,
    XrayClassifier,
    architecture_kwargs,
    build_classifier,
    predict_batches,
    save_classifier,
)
from biomed.imaging.core.transforms import random_view_transform, view_transform_kwargs
from biomed.imaging.data.splits import build_splits
from biomed.splits import SPLITS

__all__ = ["fit_classifier", "main", "masked_bce", "pos_weights", "run",
           "train_classifier"]


# ---------------------------------------------------------------------------------------------
# loss


def masked_bce(logits: torch.Tensor, targets: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits over the known labels (NaN targets contribute nothing)."""
    known = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), torch.where(known, targets, 0.0).float(), reduction="none",
        pos_weight=None if pos_weight is None else pos_weight.to(logits.device))
    return (loss * known).sum() / known.sum().clamp_min(1)


def pos_weights(labels: np.ndarray, mode: str = "none", cap: float = 10.0) -> torch.Tensor | None:
    """Positive-class weights from the training prevalence: ``balanced`` = neg/pos, ``sqrt`` =
    its square root (a milder push that hurts calibration less), ``none``; clipped to
    [1/cap, cap]."""
    if mode in (None, "none", False):
        return None
    if mode not in ("balanced", "sqrt"):
        raise ConfigError(f"loss.class_weights={mode!r}: choose none, sqrt or balanced")
    pos = np.sum(labels == 1, axis=0).astype(np.float64)
    neg = np.sum(labels == 0, axis=0).astype(np.float64)
    ratio = neg / np.maximum(pos, 1.0)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    return torch.tensor(np.clip(ratio, 1.0 / cap, cap), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# fitting


def _data_name(cfg: DictConfig, dataset: Any) -> str:
    data = cfg.get("data") or {}
    return str(data.get("name") or getattr(dataset, "name", None)
               or str(data.get("_target_") or type(dataset).__name__).rsplit(".", 1)[-1])


def fit_classifier(cfg: DictConfig, splits: Mapping[str, Any], run_dir: str | Path,
                   log: Callable[[str], Any] = print, *,
                   reference: Any | None = None) -> dict[str, Any]:
    """Train the classifier of ``cfg`` (``conf/train_classifier.yaml``; ``cfg.data`` is not
    read) on ``splits["train"]``, evaluate it on ``splits["val"]`` and ``splits["test"]``
    (torch datasets in the contract: ``labels``, ``label_names``, items with ``image`` and
    ``labels``), save ``classifier/`` in ``run_dir``; returns the metrics (``{}`` on a process
    other than the main one of a multi-process launch).

    ``reference``: the dataset whose pixels give the normalisation and whose labels give the
    label columns (when ``classifier.labels`` is null) and ``pos_weight`` (default: the training
    split; the augmentation loop passes the real subset, so synthetic images change neither).
    ``eval.keep_best``: keep the weights of the best periodic validation macro AUROC
    (``trainer.eval_every``) instead of the last ones; ``best_step`` says which were kept."""
    run_dir = Path(run_dir)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ConfigError(f"fit_classifier: no {', '.join(missing)} split given (needs "
                          f"{', '.join(SPLITS)})")
    train, val, test = (splits[s] for s in SPLITS)
    if len(train) == 0:
        raise ConfigError(f"{_data_name(cfg, train)}: the training split is empty")
    reference = train if reference is None else reference
    columns = select_labels(reference, cfg.classifier.get("labels"))
    names = [train.label_names[c] for c in columns]
    norm = cfg.classifier.get("norm") or {}
    if norm.get("mean") is not None and norm.get("std") is not None:
        mean, std = float(norm.mean), float(norm.std)
    else:
        mean, std = estimate_normalization(reference, int(norm.get("sample") or 512))
    input_size = tuple(int(v) for v in np.shape(train[0]["image"]))

    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))  # seeds before the model's init
    model = build_classifier(cfg.classifier, len(names), mean=mean, std=std,
                             input_size=input_size)
    params = sum(p.numel() for p in model.parameters())
    pw = pos_weights(np.asarray(reference.labels)[:, columns], cfg.loss.get("class_weights", "none"),
                     float(cfg.loss.get("pos_weight_cap", 10.0)))
    log(f"train-classifier: {cfg.classifier.name} ({params:,} parameters) on "
        f"{_data_name(cfg, train)}: {len(train)} train / {len(val)} val / {len(test)} test "
        f"images of {model.input_size}, {len(names)} labels")
    view = view_transform_kwargs(cfg.get("augment"))

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_bce(m(random_view_transform(batch["image"], **view)), batch["labels"], pw)

    ev = cfg.eval
    device = engine.accelerator.device
    periodic = preload(val, columns, ev.get("periodic_max_items")) if len(val) else None

    keep_best = bool(ev.get("keep_best", False))
    best: dict[str, Any] = {"auroc": -np.inf, "state": None, "step": None}

    def eval_fn(m: nn.Module) -> dict[str, float]:
        p = predict_batches(m, periodic["image"], int(ev.batch_size), device)
        y = periodic["labels"].numpy()
        loss = masked_bce(torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6)),
                          periodic["labels"])
        auroc = macro_auroc(y, p)
        if keep_best and np.isfinite(auroc) and auroc > best["auroc"]:
            best.update(auroc=auroc, step=engine.state.step, state={
                k: v.detach().to("cpu", copy=True) for k, v in
                engine.unwrap(m).state_dict().items()})
        return {"val_macro_auroc": auroc, "val_loss": float(loss)}

    t0 = time.perf_counter()
    result = engine.fit(model, train, loss_fn, optim=cfg.optim, collate_fn=Collate(columns),
                        eval_fn=eval_fn if periodic is not None else None,
                        resume_fingerprint={"model": cfg.classifier, "data": cfg.get("data")})
    wall = time.perf_counter() - t0
    if not engine.is_main:
        return {}
    plain = engine.unwrap(engine.model)
    if best["state"] is not None:  # eval.keep_best: the best periodic validation weights
        plain.load_state_dict(best["state"])
        log(f"train-classifier: kept the weights of step {best['step']} (val macro AUROC "
            f"{best['auroc']:.3f})")
    metrics = _evaluate_and_save(cfg, plain, splits, columns, names, device, run_dir, log)
    seconds = engine.state.train_seconds
    images = result.step * engine.cfg.batch_size * engine.cfg.grad_accum \
        * engine.accelerator.num_processes
    metrics.update(steps=result.step, train_seconds=seconds, train_wall_seconds=wall,
                   images_per_s=images / seconds if seconds else None,
                   epochs=images / len(train), train_loss=result.metrics.get("train_loss"),
                   params=params, precision=engine.precision,
                   best_step=best["step"] if best["state"] is not None else result.step,
                   best_val_macro_auroc=None if best["state"] is None else best["auroc"])
    card = model_card(json.loads((Path(metrics["classifier_dir"]) / CONFIG).read_text()), metrics)
    (Path(metrics["classifier_dir"]) / "README.md").write_text(card)
    _log_summary(metrics, log)
    return metrics


def train_classifier(cfg: DictConfig, run_dir: str | Path,
                     log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build the train / val / test splits of ``cfg.data``
    (`biomed.imaging.data.splits.build_splits`), then `fit_classifier`."""
    from accelerate import PartialState

    with PartialState().main_process_first():  # under a launcher: one process builds caches
        splits = build_splits(cfg.data)
    return fit_classifier(cfg, splits, run_dir, log)


def _evaluate_and_save(cfg: DictConfig, model: XrayClassifier, splits: Mapping[str, Any],
                       columns: Sequence[int], names: Sequence[str], device: torch.device,
                       run_dir: Path, log) -> dict[str, Any]:
    """Thresholds on val, every metric on val and the eval split, ``classifier/`` saved."""
    ev = cfg.eval
    rule = str(ev.get("threshold_rule", "youden"))
    metrics, thresholds = evaluate_splits(
        model, splits, columns, names, eval_split=str(cfg.get("eval_split", "test")),
        batch_size=int(ev.batch_size), threshold_rule=rule, clear_findings=ev.clear_findings,
        n_boot=int(ev.n_boot), val_n_boot=int(ev.get("val_n_boot", ev.n_boot)),
        ece_bins=int(ev.get("ece_bins", 15)), seed=int(cfg.seed), device=device, log=log)
    arch, kwargs = architecture_kwargs(cfg.classifier)
    train = splits["train"]
    config = {
        "format": FORMAT, "version": 1, "architecture": arch, "name": str(cfg.classifier.name),
        "kwargs": kwargs, "labels": list(names), "input_size": list(model.input_size),
        "in_chans": model.in_chans,
        "normalization": {"mean": float(model.mean), "std": float(model.std),
                          "applied_inside_model": True},
        "pixel_convention": PIXEL_CONVENTION, "thresholds": thresholds,
        "threshold_rule": rule, "threshold_split": "val",
        "training_data": _data_name(cfg, train),
        "label_space": getattr(train, "label_space", None),
        "train_prevalence": prevalence(np.asarray(train.labels)[:, columns], names),
        "seed": int(cfg.seed), "pretrained": cfg.classifier.get("pretrained"),
    }
    out = save_classifier(model.cpu(), config, run_dir / SUBDIR)
    model.to(device)
    metrics["classifier_dir"] = str(out)
    return metrics


def _log_summary(metrics: Mapping[str, Any], log) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lr = ", ".join(f"left/right {k[len('lr_accuracy_'):]} {f(v)}" for k, v in metrics.items()
                   if k.startswith("lr_accuracy_"))
    log(f"train-classifier: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s; "
        f"{metrics['eval_split']}: macro AUROC {f(metrics.get('macro_auroc'))}, clear findings "
        f"{f(metrics.get('clear_macro_auroc'))}{', ' + lr if lr else ''}; "
        f"saved {metrics['classifier_dir']}")


# ---------------------------------------------------------------------------------------------
# the command


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the classifier of ``cfg`` (``conf/train_classifier.yaml``) in its run folder."""
    return runs.train_command(cfg, train_classifier, runs.data_files(cfg))


main = hydra_app("train_classifier")(run)

if __name__ == "__main__":
    main()
