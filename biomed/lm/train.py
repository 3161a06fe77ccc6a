"""`biomed train-lm`: PubMed corpus -> BPE tokenizer -> token files -> GPT-2 -> ``model/``.

Every step is cached or resumable: the corpus extraction, the tokenizer and the token files are
keyed by the hashes of their inputs (a rerun reuses them), and training goes through the shared
engine (``trainer.checkpoint_every`` / ``trainer.resume=latest``). The run folder gets
``model/`` (``save_pretrained`` folder + tokenizer + model card), ``metrics.json`` (validation
loss and perplexity, the unigram perplexity of the same validation tokens, throughput) and the
engine's ``log.jsonl``/``tensorboard/``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from biomed import runs
from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app
from biomed.lm import model as lm_model
from biomed.lm import tokens as tok_data
from biomed.lm.fused_loss import linear_cross_entropy
from biomed.lm.model import token_nll

_NO_LOGITS = torch.empty(0, dtype=torch.long)  # logits_to_keep: project no position


def _fusable_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output projection when the loss may fuse it (a bias-free linear head on a model that
    is not sharded), else None: then the plain path computes the logits."""
    if "FullyShardedDataParallel" in type(model).__name__:
        return None
    plain = getattr(model, "module", model)  # DDP
    plain = getattr(plain, "_orig_mod", plain)  # torch.compile
    head = plain.get_output_embeddings() if hasattr(plain, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear) and head.bias is None:
        return head
    return None


def lm_loss(model: torch.nn.Module, batch: torch.Tensor, *,
            fused: bool | None = None, gemm: str = "auto") -> torch.Tensor:
    """Mean next-token cross-entropy of a (B, context + 1) batch of token chunks.

    ``fused``: the output projection and the loss are computed together in chunks of tokens
    (`biomed.lm.fused_loss`), never holding the whole batch's logits; the model is still
    called as a whole (so DDP's hooks and compilation see the forward pass), asked for its final
    hidden states and no logits. ``None`` (default) fuses on the CPU only: there it is faster
    (bench/lm_throughput.py), while on an H100 the plain path was 1.22x faster for GPT-2 124M
    under torch.compile (303k against 249k tokens/s, bench/lm_gpu.py, docs/results.md).
    ``gemm``: the fused loss's CPU product library (`biomed.lm.fused_loss.gemm_plan`).
    """
    if fused is None:
        fused = batch.device.type == "cpu"
    inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
    head = _fusable_head(model) if fused else None
    if head is None:
        logits = model(input_ids=inputs, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 targets)
    out = model(input_ids=inputs, use_cache=False, output_hidden_states=True,
                logits_to_keep=_NO_LOGITS.to(inputs.device))
    hidden = out.hidden_states[-1]  # after the final layer norm
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets,
                                gemm=gemm)


def make_model(lm: DictConfig, tokenizer) -> torch.nn.Module:
    if lm.get("pretrained"):
        return lm_model.load_pretrained(lm.pretrained,
                                        gradient_checkpointing=bool(lm.get("gradient_checkpointing")))
    multiple = int(lm.get("pad_vocab_multiple", 1) or 1)
    model = lm_model.build_model(lm, tokenizer)
    if multiple > 1 and model.config.vocab_size % multiple:
        model.resize_token_embeddings(model.config.vocab_size, pad_to_multiple_of=multiple)
    return model


class _HessianBatches:
    """Random training batches for Sophia's Hessian estimate, seeded by (seed, step)."""

    def __init__(self, data: tok_data.TokenChunks, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __call__(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step, 0x50F1A])
        return self.data.__getitems__(rng.integers(len(self.data), size=self.batch_size))


def _logits(model, batch):
    return model(input_ids=batch[:, :-1], use_cache=False).logits


def train_lm(cfg: DictConfig, run_dir: str | Path, log=print) -> dict[str, Any]:
    """Train (or fine-tune) the LM of ``cfg`` in ``run_dir``; returns the run's metrics.

    ``cfg`` holds ``seed``, ``lm``, ``trainer``, ``optim``, ``corpus``/``data.files``,
    ``val_fraction``, ``lm_cache`` and ``eval`` (see ``conf/train_lm.yaml``).
    """
    from accelerate import PartialState

    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    with PartialState().main_process_first():  # under a launcher: one process builds the cache
        corpus, corpus_sha, tokenizer, folder = tok_data.prepare_data(cfg, log=log)
    data_seconds = time.perf_counter() - t_start

    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))  # seeds everything before init
    model = make_model(cfg.lm, tokenizer)
    context = lm_model.context_length(model, cfg.lm.get("context"))
    train_tokens = tok_data.load_tokens(folder, "train")
    val_tokens = tok_data.load_tokens(folder, "val")
    train = tok_data.TokenChunks(train_tokens, context)
    ev = cfg.get("eval") or {}
    eval_bs = int(ev.get("batch_size", 32))
    val_periodic = tok_data.TokenChunks(val_tokens, context, max_tokens=ev.get("max_tokens"))
    val_final = tok_data.TokenChunks(val_tokens, context, max_tokens=ev.get("final_max_tokens"))
    if len(train) < engine.cfg.batch_size or len(val_final) == 0:
        raise ConfigError(f"corpus {corpus}: {len(train)} training chunks and {len(val_final)} "
                          f"validation chunks of {context + 1} tokens: too small for batch "
                          f"{engine.cfg.batch_size} (use a larger corpus or smaller lm.context)")
    params = lm_model.count_parameters(model)
    log(f"train-lm: {params['total']:,} parameters ({params['non_embedding']:,} non-embedding), "
        f"context {context}, {len(train_tokens):,} training tokens, "
        f"{len(val_tokens):,} validation tokens")

    def eval_fn(m) -> dict[str, float]:
        nll, n = token_nll(m, val_periodic, eval_bs, engine.accelerator.device)
        out = {"val_loss": nll / n, "val_ppl": math.exp(nll / n)}
        opt = getattr(engine.optimizer, "optimizer", engine.optimizer)
        if hasattr(opt, "unclipped_fraction"):
            out["sophia_unclipped"] = opt.unclipped_fraction()
        return out

    callbacks = []
    if cfg.optim.get("hessian_every"):
        from biomed.lm.sophia import HessianCallback

        callbacks.append(HessianCallback(
            _HessianBatches(train, engine.cfg.batch_size, int(cfg.seed)), _logits,
            every=int(cfg.optim.hessian_every), seed=int(cfg.seed)))
    result = engine.fit(model, train, lm_loss, optim=cfg.optim, eval_fn=eval_fn,
                        collate_fn=tok_data.TokenChunks.collate, callbacks=callbacks,
                        tokens_per_sample=context,
                        resume_fingerprint={"model": cfg.lm, "data": cfg.get("data")})

    metrics = _final_metrics(cfg, engine, result, train_tokens, val_final, folder, eval_bs)
    metrics.update(data_prep_seconds=data_seconds, corpus=str(corpus), corpus_sha256=corpus_sha)
    out = _save(cfg, engine, tokenizer, folder, metrics, run_dir / lm_model.MODEL_SUBDIR)
    metrics["model_dir"] = str(out)
    log(f"train-lm: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s "
        f"({metrics['tokens_per_s'] or 0:,.0f} tokens/s); validation perplexity "
        f"{metrics['val_ppl']:.1f}, unigram {metrics['unigram_ppl']:.1f} "
        f"(1/{metrics['ppl_ratio']:.2f}); model in {out}")
    return metrics


def _final_metrics(cfg, engine: Engine, result, train_tokens, val_final, folder,
                   eval_bs: int) -> dict[str, Any]:
    """The run's numbers: the final evaluation on the whole validation split (or
    ``eval.final_max_tokens``), its unigram floor, and throughput."""
    t0 = time.perf_counter()
    model = engine.model
    model.eval()
    nll, n = token_nll(model, val_final, eval_bs, engine.accelerator.device)
    eval_seconds = time.perf_counter() - t0
    val_loss = nll / n
    plain = engine.unwrap(model)
    vocab, context = int(plain.config.vocab_size), val_final.context
    unigram = tok_data.unigram_perplexity(train_tokens, val_final.targets(), vocab)
    val_stats = tok_data.split_stats(folder, "val")
    seconds = engine.state.train_seconds
    tokens_per_step = engine.cfg.batch_size * engine.cfg.grad_accum * context \
        * engine.accelerator.num_processes
    seen = result.step * tokens_per_step
    flops_tok = lm_model.flops_per_token(plain, context)
    params = lm_model.count_parameters(plain)
    metrics = {
        "val_loss": val_loss, "val_ppl": math.exp(val_loss), "unigram_ppl": unigram,
        "ppl_ratio": unigram / math.exp(val_loss),  # the quickstart's target: >= 5
        "val_bits_per_byte": val_loss * val_stats["tokens"] / val_stats["bytes"] / math.log(2),
        "val_tokens_evaluated": n, "train_loss": result.metrics.get("train_loss"),
        "steps": result.step, "train_tokens_seen": seen, "tokens_per_step": tokens_per_step,
        "train_seconds": seconds, "tokens_per_s": seen / seconds if seconds else None,
        "achieved_flops": flops_tok * seen / seconds if seconds else None,
        "flops_per_token": flops_tok, "params": params["total"],
        "params_non_embedding": params["non_embedding"], "context": context,
        "vocab_size": vocab, "epochs": seen / max(1, len(train_tokens)),
        "optimizer": cfg.optim.optimizer._target_.rsplit(".", 1)[-1],
        "precision": engine.precision, "lr": float(cfg.optim.optimizer.lr),
        "final_eval_seconds": eval_seconds, "token_dir": str(folder),
        "key_metrics": ["val_ppl", "unigram_ppl", "ppl_ratio", "tokens_per_s"],
    }
    if "sophia_unclipped" in result.metrics:
        metrics["sophia_unclipped"] = result.metrics["sophia_unclipped"]
    return metrics


def _save(cfg, engine: Engine, tokenizer, folder, metrics: dict, out: Path) -> Path:
    """``model/``: the weights, the tokenizer and the model card."""
    train_stats = tok_data.split_stats(folder, "train")
    val_stats = tok_data.split_stats(folder, "val")
    plain = engine.unwrap(engine.model)
    card = lm_model.model_card(
        name=str(cfg.lm.get("name", "lm")), params=lm_model.count_parameters(plain),
        config=plain.config.to_dict(),
        data={"docs": train_stats["docs"] + val_stats["docs"],
              "train_tokens": train_stats["tokens"], "val_tokens": val_stats["tokens"],
              "val_fraction": tok_data.fractions_of(cfg)[1],
              "files": [runs.file_digest(f) for f in _source_files(cfg)]},
        training={"steps": metrics["steps"], "tokens": metrics["train_tokens_seen"],
                  "seconds": metrics["train_seconds"], "device": engine.accelerator.device.type,
                  "optimizer": metrics["optimizer"], "precision": engine.precision,
                  "lr": metrics["lr"], "batch_tokens": metrics["tokens_per_step"]},
        metrics={k: metrics[k] for k in ("val_loss", "val_ppl", "unigram_ppl", "ppl_ratio",
                                         "val_bits_per_byte")},
        pretrained=cfg.lm.get("pretrained"))
    return lm_model.save_model(engine.model, tokenizer, out, card,
                               accelerator=engine.accelerator, context=metrics["context"])


def _source_files(cfg: DictConfig) -> list[str]:
    if cfg.get("corpus"):
        return [str(cfg.corpus)]
    return [str(f) for f in cfg.data.files] if "data" in cfg else []


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the language model of ``cfg`` (``conf/train_lm.yaml``) in its run folder."""
    return runs.train_command(cfg, train_lm, _source_files(cfg))


main = hydra_app("train_lm")(run)

if __name__ == "__main__":
    main()
