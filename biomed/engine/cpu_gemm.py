"""fp32 CPU matrix products through oneDNN, where they measure faster than torch's default (MKL).

torch computes CPU fp32 ``mm`` with MKL. oneDNN, which torch also ships
(``torch.ops.mkldnn._linear_pointwise``), has its own JIT-compiled kernels, and for some shapes
it is the faster of the two: on this project's 2-core AMD EPYC, the fused loss's
(512 x 128) @ (128 x 8,192) logits product ran at 117 GFLOP/s in oneDNN against 92 in MKL, while
most of the model's own products ran faster in MKL (``bench/cpu_gemm.py``, docs/results.md).
Which is faster depends on the CPU and the shape, so callers time both once per process
(`fastest`) instead of assuming.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping

import torch

__all__ = ["available", "fastest", "onednn_mm"]


@functools.cache
def available() -> bool:
    """Whether this torch build computes fp32 products with oneDNN (checked once, by use)."""
    try:
        a, b = torch.ones(2, 3), torch.ones(3, 4)
        return bool(torch.equal(onednn_mm(a, b), a @ b))
    except (AttributeError, RuntimeError):
        return False


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D fp32 CPU tensors, computed by oneDNN (a new contiguous tensor).

    ``_linear_pointwise`` computes ``x @ w.T`` with the weight ``w`` stored as (out, in)."""
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


def fastest(candidates: Mapping[str, Callable[[], object]], *, repeats: int = 5) -> str:
    """The name of the fastest of ``candidates`` (functions without arguments doing the same
    work), by best-of-``repeats`` wall time after one warm-up call each; the candidates are
    timed alternately so a drifting machine favours none. ``BIOMED_CPU_GEMM=<name>`` picks one
    without timing (``mkl`` or ``onednn`` where a caller names its candidates so)."""
    forced = os.environ.get("BIOMED_CPU_GEMM", "").strip().lower()
    if forced in candidates:
        return forced
    for fn in candidates.values():
        fn()
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return min(best, key=best.__getitem__)
