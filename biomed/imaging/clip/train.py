"""`biomed train-clip`: a CXR-CLIP trained contrastively on image-report pairs.

`fit_clip(cfg, splits, run_dir)` trains on the splits it is handed (datasets in the contract of
`biomed.imaging.data` whose items carry ``report`` text), evaluates on the held-out one
(`biomed.imaging.clip.evaluate`) and saves ``clip/`` (`biomed.imaging.clip.model.save_clip`,
with the card of `biomed.imaging.clip.card`); `train_clip(cfg, run_dir)` builds the splits of
``cfg.data`` and fits; `run` is the command.

Training: the report tokenizer (a small BPE on the training split's reports, trained and saved by
the main process of a launch and loaded by the others, or the tokenizer of ``clip.pretrained``),
the open_clip model (`biomed.imaging.clip.model`), the InfoNCE loss of CLIP (Radford et al.
2021) with a learnable temperature, through the shared engine, with a random view of each image
(`biomed.imaging.core.transforms.random_view_transform`; no horizontal flip: it swaps left and
right findings). Renders of one report share their text: the pairs of a batch with the same text
are all positives of each other (soft targets), so which copy pairs with which image does not
matter, and the loss has a floor of log(copies) rather than 0 on such a batch.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from biomed import runs
from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.clip import model as cm
from biomed.imaging.clip.card import model_card
from biomed.imaging.clip.evaluate import (
    EvalItems,
    evaluate_clip,
    flat_metrics,
    load_eval_items,
    retrieval_metrics,
)
from biomed.imaging.core.transforms import random_view_transform, view_transform_kwargs

__all__ = ["ContrastiveLoss", "PairCollate", "fit_clip", "info_nce", "main", "report_tokenizer",
           "run", "text_group", "train_clip"]


# ---------------------------------------------------------------------------------------------
# the loss and the batches


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on L2-normalised B x D embeddings. ``groups`` (B ints): pairs
    with the same group (the same report text) are all positives, with equal weight."""
    logits = logit_scale.float() * image_emb.float() @ text_emb.float().t()  # fp32 under bf16
    if groups is None:
        target = torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    else:
        same = (groups[:, None] == groups[None, :]).to(logits.dtype)
        target = same / same.sum(1, keepdim=True)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, target) + ce(logits.t(), target)) / 2


def text_group(text: str) -> int:
    """A stable integer per report text (duplicates within a batch share it)."""
    return zlib.crc32(text.strip().lower().encode("utf-8"))


class PairCollate:
    """Dataset items -> {"image": B x h x w in [0, 1], "text": B x context ids, "group": B}."""

    def __init__(self, tokenizer, preprocess_cfg: dict[str, Any]):
        self.tokenizer, self.preprocess_cfg = tokenizer, preprocess_cfg

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        texts = [str(it.get("report") or "") for it in items]
        images = cm.fit_images([it["image"] for it in items], self.preprocess_cfg)
        return {"image": torch.from_numpy(images), "text": self.tokenizer(texts),
                "group": torch.tensor([text_group(t) for t in texts], dtype=torch.int64)}


class ContrastiveLoss:
    """``loss_fn(model, batch)`` for the engine: a random view of each image (in training mode,
    with the ``augment`` settings; None: none), normalise, InfoNCE. The temperature is the
    model's learnable ``logit_scale``, capped at 100 as in CLIP."""

    def __init__(self, preprocess_cfg: dict[str, Any], augment: Mapping[str, Any] | None = None,
                 max_logit_scale: float = 100.0):
        self.preprocess_cfg = preprocess_cfg
        self.augment = view_transform_kwargs(augment) if augment else None
        self.max_logit_scale = max_logit_scale

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        if self.augment and model.training:
            images = random_view_transform(images, **self.augment)
        out = model(image=cm.to_model_input(images, self.preprocess_cfg), text=batch["text"])
        scale = out[2].clamp(max=self.max_logit_scale)
        return info_nce(out[0], out[1], scale, batch["group"]), {"logit_scale": float(scale.detach())}


# ---------------------------------------------------------------------------------------------
# the tokenizer and the model


def _report_texts(ds) -> list[str]:
    """The report text of every row: the contract's ``reports()``
    (`biomed.imaging.data.contract.XrayDataset`), which reads no image."""
    if not callable(getattr(ds, "reports", None)):
        raise ConfigError(f"{type(ds).__name__}: a CLIP training set needs report text: the "
                          "dataset contract's reports() (biomed.imaging.data.contract)")
    return [str(t or "") for t in ds.reports()]


def report_tokenizer(clip: DictConfig, texts: Sequence[str], tok_dir: Path, context: int,
                     accelerator: Any):
    """The BPE of ``clip.tokenizer`` on ``texts``, saved in ``tok_dir``.

    Under a multi-process launch only the main process trains and writes it; the others wait
    for it (``accelerator.main_process_first``) and load it from ``tok_dir``, so every process
    has the same vocabulary and no two processes write one folder.
    """
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            tok = cm.train_report_tokenizer(sorted(set(texts)), int(clip.tokenizer.vocab_size),
                                            min_frequency=int(clip.tokenizer.min_frequency),
                                            context_length=context)
            cm.save_tokenizer(tok, tok_dir)
        else:
            tok = cm.load_report_tokenizer(tok_dir)
    return tok


def _make_model(cfg: DictConfig, run_dir: Path, train_ds, train_idx: list[int],
                texts: list[str], accelerator: Any, log) -> tuple[Any, Any, dict, Path]:
    """(model, tokenizer, model_cfg, tokenizer folder): ``clip.pretrained``'s, or a new model
    from ``clip.model`` with a BPE trained on the training split's distinct report texts."""
    clip = cfg.clip
    if clip.get("pretrained"):
        loaded = cm.load_clip(clip.pretrained)
        log(f"train-clip: starting from {loaded.path}")
        return loaded.model, loaded.tokenizer, loaded.model_cfg, loaded.path
    model_cfg = OmegaConf.to_container(clip.model, resolve=True)
    context = int(model_cfg["text_cfg"].get("context_length", 77))
    tok_dir = run_dir / "tokenizer"
    tok = report_tokenizer(clip, texts, tok_dir, context, accelerator)
    model_cfg["text_cfg"] = cm.text_cfg_for(tok, model_cfg["text_cfg"], f"{clip.name}-bpe")
    pp = OmegaConf.to_container(clip.preprocess, resolve=True)
    if pp.get("mean") is None or pp.get("std") is None:  # from the training images
        mean, std = cm.image_stats([train_ds[i]["image"] for i in train_idx[:256]])
        pp["mean"], pp["std"] = [mean] * 3, [std] * 3
    model = cm.build_model(str(clip.name), model_cfg, pp)
    return model, cm.open_clip_tokenizer(tok_dir, context), model_cfg, tok_dir


# ---------------------------------------------------------------------------------------------
# fitting


def _items(splits: Mapping[str, Any], split: str | None, pp: dict,
           max_items: int | None) -> EvalItems | None:
    """The evaluation items of ``splits[split]`` (None without that split or when it is empty)."""
    ds = splits.get(split) if split else None
    return load_eval_items(ds, pp, max_items) if ds is not None and len(ds) else None


def _val_numbers(model, tokenizer, val: EvalItems, batch_size: int, device) -> dict[str, float]:
    """The periodic evaluation: InfoNCE on validation batches and recall@5 both ways."""
    pp = dict(model.visual.preprocess_cfg)
    img = cm.encode_images(model, val.images, pp, batch_size, device)
    txt = cm.encode_texts(model, tokenizer, val.texts, device=device)
    groups = torch.tensor([text_group(t) for t in val.texts])
    scale = model.logit_scale.exp().clamp(max=100.0).float().cpu()
    losses = [float(info_nce(img[s:s + batch_size], txt[s:s + batch_size], scale,
                             groups[s:s + batch_size]))
              for s in range(0, len(img), batch_size) if len(img[s:s + batch_size]) > 1]
    first = {t: i for i, t in reversed(list(enumerate(val.texts)))}
    distinct = txt[[first[t] for t in dict.fromkeys(val.texts)]]
    r = retrieval_metrics(img, distinct, val.texts, val.groups, ks=(5,))
    out = {"val_i2t_R@5": r["image_to_text"]["R@5"], "val_t2i_R@5": r["text_to_image"]["R@5"]}
    if losses:
        out["val_loss"] = float(np.mean(losses))
    return out


def _check_pretrained(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.clip, "pretrained"):
        raise ConfigError("clip=pretrained needs clip.pretrained=/path/to/an/open_clip/folder "
                          "(local-dir format, or a train-clip run folder)")


def _data_description(cfg: DictConfig, dataset: Any) -> tuple[str, str]:
    """(name, target) of the training data: ``cfg.data``'s, else the dataset's own."""
    data = cfg.get("data") or {}
    if data:
        return str(data.get("name", "?")), str(data.get("_target_"))
    return str(getattr(dataset, "name", "?")), f"{type(dataset).__module__}.{type(dataset).__name__}"


def fit_clip(cfg: DictConfig, splits: Mapping[str, Any], run_dir: str | Path,
             log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train (``trainer.max_steps > 0``) the CLIP of ``cfg`` (``conf/train_clip.yaml``;
    ``cfg.data`` is not read) on ``splits["train"]``, with periodic numbers on
    ``splits[cfg.eval.val_split]`` and the final ones on ``splits[cfg.eval.split]`` (either may
    be absent); writes ``clip/`` in ``run_dir`` and returns the metrics (the evaluation and
    ``clip_dir`` only on the main process of a multi-process launch)."""
    from torch.utils.data import Subset

    run_dir = Path(run_dir)
    _check_pretrained(cfg)
    train_ds = splits["train"]
    texts = _report_texts(train_ds)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if len(idx) < 2:
        raise ConfigError(f"data={_data_description(cfg, train_ds)[0]}: {len(idx)} training "
                          f"items with report text; CLIP needs image-report pairs")
    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))  # seeds before the model's init
    model, tokenizer, model_cfg, tok_dir = _make_model(cfg, run_dir, train_ds, idx,
                                                       [texts[i] for i in idx],
                                                       engine.accelerator, log)
    pp = dict(model.visual.preprocess_cfg)
    ev, device = cfg.eval, engine.accelerator.device
    bs = int(ev.batch_size)
    params = cm.count_parameters(model)
    log(f"train-clip: {params['total']:,} parameters (image {params['visual']:,}, text "
        f"{params['text']:,}), {len(idx)} training pairs, input {pp['size']} px")
    val = _items(splits, ev.val_split, pp, ev.val_max_items)
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None
    result = None
    if int(cfg.trainer.max_steps) > 0:
        result = engine.fit(
            model, Subset(train_ds, idx), ContrastiveLoss(pp, augment), optim=cfg.optim,
            eval_fn=(lambda m: _val_numbers(engine.unwrap(m), tokenizer, val, bs, device))
            if val is not None else None, collate_fn=PairCollate(tokenizer, pp),
            resume_fingerprint={"model": cfg.clip, "data": cfg.get("data")})
        plain = engine.unwrap(engine.model)
        state = engine.accelerator.get_state_dict(engine.model)
    else:  # evaluate only (e.g. a pretrained folder as it is)
        plain, state = model.to(device), None

    metrics: dict[str, Any] = {
        "steps": result.step if result else 0,
        "train_seconds": engine.state.train_seconds if result else 0.0,
        "train_loss": result.metrics.get("train_loss") if result else None,
        "train_items": len(idx), "params": params["total"], "batch_size": engine.cfg.batch_size,
        "pretrained": cfg.clip.get("pretrained"), "eval_split": ev.split,
        **{k: v for k, v in (result.metrics if result else {}).items() if k.startswith("val_")}}
    if engine.is_main:
        t0 = time.perf_counter()
        test = _items(splits, ev.split, pp, ev.max_items)
        final = evaluate_clip(plain, tokenizer, test, findings=ev.findings, batch_size=bs,
                              n_boot=int(ev.n_boot), seed=int(cfg.seed), device=device) \
            if test is not None else {"items": 0}
        metrics.update(evaluation=final, eval_seconds=time.perf_counter() - t0,
                       **flat_metrics(final))
        metrics["key_metrics"] = [k for k in ("zs_auroc_cardiomegaly", "zs_auroc_effusion",
                                              "i2t_R@10", "t2i_R@10", "zs_macro_auroc")
                                  if k in metrics]
        out = _save(cfg, plain, state, model_cfg, pp, tok_dir, run_dir / cm.CLIP_SUBDIR,
                    metrics, params, len(idx), engine, train_ds)
        metrics["clip_dir"] = str(out)
        log(f"train-clip: {metrics['steps']} steps; " + ", ".join(
            f"{k} {metrics[k]:.3f}" for k in metrics["key_metrics"]) + f"; clip in {out}")
    engine.accelerator.wait_for_everyone()
    return metrics


def load_clip_splits(cfg: DictConfig) -> dict[str, Any]:
    """The splits `fit_clip` reads from ``cfg.data``: train, ``eval.val_split`` and
    ``eval.split`` (each instantiated with ``split=<name>``)."""
    from accelerate import PartialState
    from hydra.utils import instantiate

    names = dict.fromkeys(s for s in ("train", cfg.eval.val_split, cfg.eval.split) if s)
    with PartialState().main_process_first():  # under a launcher: one process builds caches
        return {s: instantiate(cfg.data, split=s) for s in names}


def train_clip(cfg: DictConfig, run_dir: str | Path,
               log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build the splits of ``cfg.data``, then `fit_clip`; writes ``clip/``."""
    _check_pretrained(cfg)
    return fit_clip(cfg, load_clip_splits(cfg), run_dir, log)


def _save(cfg, plain, state, model_cfg, pp, tok_dir, out: Path, metrics, params, n_train,
          engine: Engine, train_ds) -> Path:
    """``clip/``: open_clip local-dir folder with the model card."""
    shown = {k: (round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k])
             for k in metrics if k.startswith(("zs_", "i2t_", "t2i_"))}
    name, target = _data_description(cfg, train_ds)
    card = model_card(
        name=str(cfg.clip.get("name") or "cxr-clip"), params=params, model_cfg=model_cfg,
        data={"description": f"data={name} ({target})",
              "train_items": n_train, "eval_items": metrics["evaluation"].get("items"),
              "eval_split": cfg.eval.split},
        training={"steps": metrics["steps"], "seconds": round(metrics["train_seconds"], 1),
                  "batch_size": metrics["batch_size"], "device": engine.accelerator.device.type,
                  "precision": engine.precision, "lr": float(cfg.optim.optimizer.lr),
                  "loss": "symmetric InfoNCE, learnable temperature, soft targets over "
                          "identical report texts"},
        metrics=shown, pretrained=cfg.clip.get("pretrained"))
    return cm.save_clip(plain, model_cfg, pp, tok_dir, out, card, state_dict=state)


# ---------------------------------------------------------------------------------------------
# the command

def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or fine-tune, or only evaluate) the CLIP of ``cfg`` (``conf/train_clip.yaml``)."""
    def timed(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics = train_clip(cfg, run_dir)
        return {**metrics, "total_seconds": time.perf_counter() - t0}

    return runs.train_command(cfg, timed, runs.data_files(cfg))


main = hydra_app("train_clip")(run)

if __name__ == "__main__":
    main()
