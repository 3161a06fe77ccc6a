"""Sizing `lm=tiny`: validation perplexity at equal training-token budgets, per configuration.

What a configuration reaches after a given number of training tokens does not depend on the
machine (fp32, same seed, same data order), only how long those tokens take does. So this
script trains each candidate for the number of steps that this project's 2-core CPU affords in
the quickstart's 5 minutes (``--budget-tokens``, from the measured tokens/s of that
configuration there), and prints the validation perplexity against the unigram baseline of the
same validation tokens. Candidates run as parallel processes (``--threads`` each), so a
many-core machine sweeps in the time of one run; the wall-clock numbers it prints are not this
CPU's.

    python bench/lm_tiny_sweep.py --token-dir ~/.cache/biomed/lm/tokens/<key> \
        --run "b32:32:3e-3:4:128:1050000" --run "b8:8:6e-3:4:128:1400000"

A run spec is ``name:batch:lr:n_layer:n_embd:budget_tokens[:warmup]`` (context 128, 4 heads of
width n_embd/4, the 8k vocabulary of the token folder, AdamW + cosine as `conf/optim/adamw.yaml`).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time

CONTEXT = 128


def train_one(spec: str, token_dir: str, threads: int, seed: int) -> dict:
    from omegaconf import OmegaConf

    from biomed.config import compose
    from biomed.engine import Engine
    from biomed.lm import model as lm_model
    from biomed.lm import tokens as tok_data
    from biomed.lm.evaluate import token_nll
    from biomed.lm.train import lm_loss

    name, batch, lr, n_layer, n_embd, budget, *rest = spec.split(":")
    batch, lr, n_layer, n_embd, budget = int(batch), float(lr), int(n_layer), int(n_embd), \
        int(float(budget))
    warmup = int(rest[0]) if rest else 40
    steps = max(1, budget // (batch * CONTEXT))
    cfg = compose("train_lm", [f"trainer.batch_size={batch}", f"trainer.max_steps={steps}",
                               "trainer.max_time_s=null", "trainer.mixed_precision=no",
                               f"trainer.threads={threads}", "trainer.progress=false",
                               "trainer.tensorboard=false", f"optim.optimizer.lr={lr}",
                               f"optim.schedule.warmup_steps={warmup}", "paths.run_dir=unused"])
    train_tokens = tok_data.load_tokens(token_dir, "train")
    val_tokens = tok_data.load_tokens(token_dir, "val")
    vocab = int(tok_data.read_meta(token_dir)["vocab_size"])
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(cfg.trainer, run_dir, seed=seed)
        lm = OmegaConf.create({"context": CONTEXT, "n_layer": n_layer, "n_embd": n_embd,
                               "n_head": 4, "dropout": 0.0, "init_std": 0.02})
        model = lm_model.build_model(lm, lm_model.VocabSpec(vocab))
        train = tok_data.TokenChunks(train_tokens, CONTEXT)
        t0 = time.perf_counter()
        engine.fit(model, train, lm_loss, optim=cfg.optim, collate_fn=tok_data.TokenChunks.collate)
        seconds = time.perf_counter() - t0
        val = tok_data.TokenChunks(val_tokens, CONTEXT)
        model.eval()
        nll, n = token_nll(model, val, 32, "cpu")
    unigram = tok_data.unigram_perplexity(train_tokens, val.targets(), vocab)
    ppl = math.exp(nll / n)
    params = sum(p.numel() for p in model.parameters())
    return {"name": name, "batch": batch, "lr": lr, "n_layer": n_layer, "n_embd": n_embd,
            "warmup": warmup, "steps": steps, "tokens": steps * batch * CONTEXT,
            "params": params, "val_ppl": ppl, "unigram_ppl": unigram, "ratio": unigram / ppl,
            "seconds_here": seconds, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--token-dir", required=True)
    ap.add_argument("--run", action="append", required=True, help="name:batch:lr:layers:width:tokens")
    ap.add_argument("--threads", type=int, default=2, help="threads per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one spec, print JSON
    ap.add_argument("--out", help="also write the JSON lines here")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(train_one(args.one, args.token_dir, args.threads, args.seed)))
        return
    procs = [subprocess.Popen([sys.executable, __file__, "--token-dir", args.token_dir,
                               "--run", spec, "--one", spec, "--threads", str(args.threads),
                               "--seed", str(args.seed)], stdout=subprocess.PIPE, text=True)
             for spec in args.run]
    rows = []
    for spec, p in zip(args.run, procs, strict=True):
        out, _ = p.communicate()
        line = [x for x in out.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{spec}: failed (exit {p.returncode})")
            continue
        rows.append(json.loads(line[-1][7:]))
    print(f"{'run':<10}{'batch':>6}{'lr':>8}{'shape':>8}{'params':>10}{'steps':>7}{'tokens':>10}"
          f"{'val ppl':>9}{'unigram':>9}{'ratio':>7}")
    for r in rows:
        shape = f"{r['n_layer']}x{r['n_embd']}"
        print(f"{r['name']:<10}{r['batch']:>6}{r['lr']:>8.0e}{shape:>8}{r['params']:>10,}"
              f"{r['steps']:>7}{r['tokens']:>10,}{r['val_ppl']:>9.1f}"
              f"{r['unigram_ppl']:>9.1f}{r['ratio']:>7.2f}")
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
