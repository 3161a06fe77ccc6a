"""LM training throughput: the workbench (train-lm's path) against Hugging Face `Trainer`.

Baseline: `transformers.Trainer` configured as a user would for this job: the identical GPT-2
(same config and initialisation), the same token chunks, batch size and precision (bf16
autocast: `bf16=True`, or fp32), the same learning rate and schedule; everything else at its
defaults (fused AdamW, `default_data_collator` on dicts of `input_ids`/`labels`, the model's own
loss). Both sides use every core, and every run is a fresh process (spawned), so neither side
inherits the other's allocator state or settings. Each side is timed at steady state: the wall-clock time
between the ends of optimizer steps `warmup` and `steps`, so data loading, forward, backward,
clipping, the optimizer, the schedule and logging all count.

Also printed: this machine's measured matrix-multiply peak (fp32 and bf16) and the achieved
model FLOP/s (6 N + 6 n_layer context width per token) as a fraction of it.

    python bench/lm_throughput.py                          # lm=tiny, train-lm's precision
    python bench/lm_throughput.py --precision fp32         # both sides in fp32 (or bf16)
    python bench/lm_throughput.py --variants default,compile,unfused,plain_loss,mkl_loss
    python bench/lm_throughput.py --tiny                   # seconds: a smoke run of the script
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import tempfile
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from biomed.config import compose
from biomed.engine import Engine
from biomed.lm import model as lm_model
from biomed.lm import tokens as tok_data
from biomed.lm.train import lm_loss

VARIANTS = {  # trainer overrides of the workbench side ("loss": the loss function's options)
    "default": {},
    "compile": {"compile": True},
    "unfused": {"fused_optimizer": False},
    "plain_loss": {"loss": {"fused": False}},  # whole-batch logits, as before the fused loss
    "mkl_loss": {"loss": {"gemm": "mkl"}},  # the fused loss's products all in MKL (torch's)
    "onednn_loss": {"loss": {"gemm": "onednn"}},  # logits and weight gradient in oneDNN
    "auto_loss": {"loss": {"gemm": "auto"}},  # whichever wins in isolation (gemm_plan)
    "glibc_default": {"keep_heap": False},  # glibc's own malloc thresholds (biomed.engine.cpu_malloc)
    "mkl_loss_glibc": {"loss": {"gemm": "mkl"}, "keep_heap": False},
    "onednn_loss_glibc": {"loss": {"gemm": "onednn"}, "keep_heap": False},
}
TINY = ["lm.n_layer=2", "lm.n_embd=32", "lm.n_head=2", "lm.context=32", "trainer.batch_size=8"]



def matmul_peak(precision: str, n: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matrix product over about ``seconds``.

    bf16 is timed as training runs it (``F.linear`` under bf16 autocast, oneDNN on CPU) and as a
    plain bf16 ``mm``; the faster counts.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    if precision == "fp32":
        fns = [lambda: a @ b]
    else:
        a16, b16 = a.bfloat16(), b.bfloat16()

        def autocast_linear():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.nn.functional.linear(a, b)

        fns = [autocast_linear, lambda: a16 @ b16]
    best = 0.0
    for fn in fns:
        fn()  # warm up
        end = time.perf_counter() + seconds / len(fns)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def token_data(cfg, synthetic: bool, n_tokens: int) -> tuple[np.ndarray, int, str]:
    """(training tokens, vocabulary size, description)."""
    vocab = int(cfg.lm.tokenizer.vocab_size)
    if not synthetic:
        from biomed import sources
        from biomed.lm.tokens import prepare_data

        if sources.status("pubmed") == "cached":
            _, _, tok, folder = prepare_data(cfg)
            return (np.asarray(tok_data.load_tokens(folder, "train")), len(tok),
                    f"embedded PubMed train split ({folder})")
        print("PubMed not fetched (`biomed data fetch pubmed`): using synthetic tokens")
    rng = np.random.default_rng(0)
    return rng.integers(2, vocab, n_tokens).astype(np.uint16), vocab, "synthetic tokens"


def fresh_model(cfg, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return lm_model.build_model(cfg.lm, lm_model.VocabSpec(vocab))


class StepClock:
    """Wall-clock time at the end of each optimizer step."""

    def __init__(self):
        self.t: list[float] = []

    def on_step_end(self, *args, **kwargs):  # engine callback and TrainerCallback alike
        self.t.append(time.perf_counter())


def steady_rate(clock: StepClock, warmup: int, tokens_per_step: int) -> float:
    t = clock.t
    return (len(t) - warmup) * tokens_per_step / (t[-1] - t[warmup - 1])


def run_workbench(cfg, tokens, vocab, steps, warmup, overrides: dict) -> float:
    context, bs = int(cfg.lm.context), int(cfg.trainer.batch_size)
    overrides = dict(overrides)
    loss_fn = functools.partial(lm_loss, **overrides.pop("loss", {}))
    trainer = OmegaConf.merge(cfg.trainer, {"max_steps": steps, "max_time_s": None,
                                            "progress": False, "tensorboard": False,
                                            "eval_every": 0, "checkpoint_every": 0,
                                            **overrides})
    model = fresh_model(cfg, vocab)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(trainer, run_dir, seed=0)
        engine.fit(model, tok_data.TokenChunks(tokens, context), loss_fn, optim=cfg.optim,
                   collate_fn=tok_data.TokenChunks.collate, callbacks=[clock])
    return steady_rate(clock, warmup, bs * context)


class _HFBlocks(torch.utils.data.Dataset):
    """What a user feeds Trainer: blocks of `context` tokens as input_ids, labels = input_ids."""

    def __init__(self, tokens: np.ndarray, context: int):
        self.tokens, self.context = tokens, context

    def __len__(self):
        return len(self.tokens) // self.context

    def __getitem__(self, i):
        ids = torch.tensor(self.tokens[i * self.context:(i + 1) * self.context], dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


def run_hf_trainer(cfg, tokens, vocab, steps, warmup, precision: str) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    context, bs = int(cfg.lm.context), int(cfg.trainer.batch_size)
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.on_step_end()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=bs, max_steps=steps,
            learning_rate=float(cfg.optim.optimizer.lr), lr_scheduler_type="cosine",
            warmup_steps=int(cfg.optim.schedule.warmup_steps),
            weight_decay=float(cfg.optim.weight_decay), bf16=precision == "bf16",
            use_cpu=cfg.trainer.accelerator == "cpu", report_to="none", save_strategy="no",
            seed=0, disable_tqdm=True)
        Trainer(model=fresh_model(cfg, vocab), args=args,
                train_dataset=_HFBlocks(tokens, context), callbacks=[Clock()]).train()
    return steady_rate(clock, warmup, bs * context)


def isolated(fn, *args):
    """``fn(*args)`` in a fresh spawned process using every core: process-wide state (glibc's
    malloc thresholds, set by the workbench's engine; torch's caches) never leaks between runs."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_with_threads, os.cpu_count() or 1, fn, *args).result()


def _with_threads(threads: int, fn, *args):
    torch.set_num_threads(threads)
    return fn(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved; best of N per side")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="both sides; auto: what train-lm picks here (bf16 only if faster)")
    ap.add_argument("--variants", default="default",
                    help=f"workbench variants, comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--lm", default="tiny", help="lm preset (conf/lm/)")
    ap.add_argument("--synthetic", action="store_true", help="random tokens, not PubMed")
    ap.add_argument("--no-hf", action="store_true", help="skip the Trainer baseline")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.repeats, args.synthetic = 4, 1, 1, True
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    if args.precision == "auto":
        from biomed.engine import auto_precision

        args.precision = "bf16" if auto_precision("cpu") == "bf16" else "fp32"
    mp = "bf16" if args.precision == "bf16" else "no"
    cfg = compose("train_lm", [f"lm={args.lm}", "paths.run_dir=/tmp/unused",
                               f"trainer.mixed_precision={mp}", *(TINY if args.tiny else [])])
    context, bs = int(cfg.lm.context), int(cfg.trainer.batch_size)
    tokens, vocab, source = token_data(cfg, args.synthetic, (args.steps + 1) * bs * context * 2)
    model = fresh_model(cfg, vocab)
    flops_tok = lm_model.flops_per_token(model, context)
    params = lm_model.count_parameters(model)["total"]
    size = 256 if args.tiny else 1024
    peak = {name: matmul_peak(name, size, 0.2 if args.tiny else 2.0) for name in ("fp32", "bf16")}

    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: lm={args.lm}, {params:,} parameters, context {context}, batch {bs}, "
          f"vocab {vocab}, {flops_tok / 1e6:.1f} MFLOP/token; data: {source}")
    print(f"settings: {args.precision}, {args.steps} steps, timed after {args.warmup}, "
          f"best of {args.repeats}")
    print(f"matmul peak ({size}^3): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s (bf16/fp32 {peak['bf16'] / peak['fp32']:.2f})")

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs: dict[str, list[float]] = {v: [] for v in variants}
    hf_runs: list[float] = []
    for _ in range(args.repeats):  # interleaved: robust to a noisy neighbour
        for v in variants:
            runs[v].append(isolated(run_workbench, cfg, tokens, vocab, args.steps, args.warmup,
                                    VARIANTS[v]))
        if not args.no_hf:
            hf_runs.append(isolated(run_hf_trainer, cfg, tokens, vocab, args.steps, args.warmup,
                                    args.precision))
    best = {v: max(r) for v, r in runs.items()}
    hf = max(hf_runs, default=0.0)
    ref_peak = peak[args.precision]
    rows = [(f"workbench ({v})", r) for v, r in best.items()]
    if hf:
        rows.append(("HF Trainer (defaults)", hf))
    print(f"best of {args.repeats} runs per side:")
    for name, rate in rows:
        achieved = rate * flops_tok
        print(f"{name:<28} {rate:10,.0f} tokens/s   {achieved / 1e9:7.1f} GFLOP/s = "
              f"{achieved / ref_peak:6.1%} of the {args.precision} matmul peak")
    if hf:
        for v, rate in best.items():
            # each repeat's workbench run against the Trainer run right after it: the machine's
            # drift over minutes moves both, so the median of these pairs is the steadier figure
            paired = [w / h for w, h in zip(runs[v], hf_runs, strict=True)]
            print(f"ratio workbench ({v}) / HF Trainer: {rate / hf:.2f}x best of each side; "
                  f"{float(np.median(paired)):.2f}x median of {len(paired)} paired runs "
                  f"({', '.join(f'{p:.2f}' for p in paired)})  (target >= 1.3x)")
    if math.isnan(sum(best.values())):
        raise SystemExit("no timing")


if __name__ == "__main__":
    main()
