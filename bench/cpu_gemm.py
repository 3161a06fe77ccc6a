"""fp32 matrix products on this CPU: torch's default (MKL) against oneDNN (`biomed.engine.cpu_gemm`).

Baseline: ``torch.mm`` (MKL). Candidate: the same product by `biomed.engine.cpu_gemm.onednn_mm`.
Shapes: two squares (the machine's peak) and the products of one `lm=tiny` training step at
batch 8 (1,024 tokens, width 128, MLP 512, vocabulary 8,192; the fused loss works on chunks of
512 tokens), forward and backward layouts. The two sides alternate, ``--repeats`` times, and the
best time of each is kept (this machine's speed drifts by up to 20% over minutes).

    python bench/cpu_gemm.py [--seconds 0.5] [--repeats 3] [--threads N]

Prints GFLOP/s per side and their ratio, and which code path MKL reports for this CPU.
Never run it while anything else uses the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import torch

from biomed.engine import cpu_gemm

# name, (rows of a, inner, columns of b), transpose a?, transpose b?
SHAPES = [
    ("square 1024", (1024, 1024, 1024), False, False),
    ("square 2048", (2048, 2048, 2048), False, False),
    ("qkv forward", (1024, 128, 384), False, True),
    ("mlp up forward", (1024, 128, 512), False, True),
    ("mlp down forward", (1024, 512, 128), False, True),
    ("mlp down grad input", (1024, 128, 512), False, False),
    ("mlp down grad weight", (512, 1024, 128), True, False),
    ("loss logits (chunk 512)", (512, 128, 8192), False, True),
    ("loss grad hidden", (512, 8192, 128), False, False),
    ("loss grad weight", (8192, 512, 128), True, False),
    ("loss grad weight, (d, V)", (128, 512, 8192), True, False),
]


def operands(m: int, k: int, n: int, ta: bool, tb: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, k) and (k, n) operands, stored transposed where the training step's are."""
    a = torch.randn(k, m).t() if ta else torch.randn(m, k)
    b = torch.randn(n, k).t() if tb else torch.randn(k, n)
    return a, b


def best_time(fn, seconds: float) -> float:
    fn()
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def mkl_path() -> str:
    """The code path MKL names for this CPU (its first MKL_VERBOSE line), or '?'."""
    code = "import torch; a = torch.ones(8, 8); a @ a"
    try:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MKL_VERBOSE": "1"},
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = next((line for line in out.splitlines() if "MKL_VERBOSE" in line), "")
    return first.split(" for ", 1)[-1].split(",")[0].strip() or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="timing per side and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shapes", type=int, default=None, help="only the first N shapes (smoke)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_gemm.available():
        print("this torch build has no oneDNN linear op: nothing to compare")
        return 1
    print(f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; MKL path: {mkl_path()}")
    print(f"{'product':26s} {'m x k x n':>18s} {'MKL':>8s} {'oneDNN':>8s}  ratio  (GFLOP/s)")
    torch.manual_seed(0)
    ratios = []
    for name, (m, k, n), ta, tb in SHAPES[: args.shapes]:
        a, b = operands(m, k, n, ta, tb)
        err = float((cpu_gemm.onednn_mm(a, b) - a @ b).abs().max())
        assert err < 1e-3 * max(1.0, k ** 0.5), (name, err)

        def onednn(a=a, b=b):
            return cpu_gemm.onednn_mm(a, b)

        t_mkl = t_dnn = float("inf")
        for _ in range(args.repeats):
            t_mkl = min(t_mkl, best_time(lambda a=a, b=b: torch.mm(a, b), args.seconds))
            t_dnn = min(t_dnn, best_time(onednn, args.seconds))
        flop = 2.0 * m * k * n
        ratios.append(t_mkl / t_dnn)
        print(f"{name:26s} {f'{m}x{k}x{n}':>18s} {flop / t_mkl / 1e9:8.1f} "
              f"{flop / t_dnn / 1e9:8.1f}  {t_mkl / t_dnn:5.2f}x", flush=True)
    geo = float(torch.tensor(ratios).log().mean().exp())
    print(f"geometric mean oneDNN/MKL speed ratio over {len(ratios)} shapes: {geo:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
