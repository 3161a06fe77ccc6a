"""Next-token cross-entropy fused with the output projection, in chunks of tokens.

The plain path materialises the logits of a whole batch (tokens x vocabulary: 1,024 x 8,192
floats = 34 MB for `lm=tiny` at batch 8), then their softmax and their gradient, each as large again: on
a CPU that traffic costs more than the projection's arithmetic. Here the projection, the
log-sum-exp and the gradients with respect to the hidden states and the weight are computed
chunk by chunk in the forward pass (as Liger-Kernel's fused linear cross-entropy does on GPUs),
so only one chunk of logits (``chunk`` x vocabulary) exists at a time and the backward pass
only scales the stored gradients. Same arithmetic as the plain path (three matrix products),
same result up to float rounding (tested).

On the CPU two of the products can run on oneDNN instead of MKL (`biomed.engine.cpu_gemm`): the
(chunk x d) @ (d x V) logits, and the weight gradient computed as (d x chunk) @ (chunk x V), i.e.
transposed, accumulated in a (d, V) buffer and transposed once at the end. Which library is
faster depends on the CPU, so each is timed once per process and shape (`gemm_plan`). On this
project's AMD EPYC oneDNN ran both ~1.3x faster than MKL in isolation, but only 1.00x-1.04x of
a whole training step when the two alternate step by step (b1a69bb;
docs/history/2026-11-27-lm-throughput.md).
"""

from __future__ import annotations

import functools

import torch

from biomed.engine import cpu_gemm

__all__ = ["GEMM_CHOICES", "gemm_plan", "linear_cross_entropy"]

GEMM_CHOICES = ("auto", "mkl", "onednn")  # which library computes the CPU products


@functools.cache
def gemm_plan(chunk: int, d: int, vocab: int, gemm: str = "auto") -> tuple[bool, bool]:
    """(logits by oneDNN?, weight gradient by oneDNN?) for fp32 CPU chunks of this shape.

    ``gemm``: ``auto`` times MKL against oneDNN for both products once (random operands of the
    chunk's shape and layout, ~0.5 s at 512 x 128 x 8,192); ``mkl`` or ``onednn`` chooses."""
    _check(gemm)
    if gemm == "mkl" or not cpu_gemm.available():
        return False, False
    if gemm == "onednn":
        return True, True
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(chunk, d, generator=g), torch.randn(vocab, d, generator=g)
    e = torch.rand(chunk, vocab, generator=g)
    gw, gw_t = torch.zeros(vocab, d), torch.zeros(d, vocab)
    logits = cpu_gemm.fastest({"mkl": lambda: torch.mm(h, w.T),
                               "onednn": lambda: cpu_gemm.onednn_mm(h, w.T)})
    grad_w = cpu_gemm.fastest({"mkl": lambda: gw.addmm_(e.T, h),
                               "onednn": lambda: gw_t.add_(cpu_gemm.onednn_mm(h.T, e))})
    return logits == "onednn", grad_w == "onednn"


def _check(gemm: str) -> None:
    if gemm not in GEMM_CHOICES:
        raise ValueError(f"gemm={gemm!r}: choose {', '.join(GEMM_CHOICES)}")


def _chunks(h32, w32, targets, chunk, total, grad_h, grad_w, gemm: str) -> None:
    """Accumulate the summed loss into ``total`` and its gradients into ``grad_h``/``grad_w``
    (either may be None: not needed), one chunk of tokens at a time.

    Per chunk the (chunk, V) logits are passed over five times: written by the product, max,
    exp in place (two passes in eager mode), summed; the gradients then read them once each.
    The softmax's normalisation 1/s and the one-hot term of d loss / d logits = softmax - onehot
    are folded into the (chunk, d)-sized sides of the products, never applied to the logits:

        d/dh = (e @ W) / s - W[t]        d/dW = e.T @ (h / s) - scatter(h at rows t)

    where e = exp(logits - max) and s its row sum.
    """
    cpu = h32.device.type == "cpu"
    dnn_logits, dnn_grad_w = gemm_plan(chunk, w32.shape[1], w32.shape[0], gemm) if cpu \
        else (False, False)
    grad_w_t = torch.zeros_like(w32.T) if dnn_grad_w and grad_w is not None else None  # (d, V)
    for s in range(0, h32.shape[0], chunk):
        h, t = h32[s:s + chunk], targets[s:s + chunk]
        logits = cpu_gemm.onednn_mm(h, w32.T) if dnn_logits else h @ w32.T  # (chunk, V)
        target_logit = logits.gather(1, t[:, None])
        top = logits.amax(dim=1, keepdim=True)
        e = logits.sub_(top).exp_()  # in place: no second (chunk, V) buffer
        row_sum = e.sum(dim=1, keepdim=True)
        total += (top + row_sum.log() - target_logit).sum()
        if grad_h is None and grad_w is None:
            continue
        inv = row_sum.reciprocal()
        if grad_h is not None:
            g = torch.mm(e, w32, out=grad_h[s:s + chunk])
            g.mul_(inv).sub_(w32[t])
        if grad_w is not None:
            h_scaled = h * inv
            if grad_w_t is not None:
                grad_w_t.add_(cpu_gemm.onednn_mm(h_scaled.T, e))
            else:
                grad_w.addmm_(e.T, h_scaled)
            grad_w.index_add_(0, t, h, alpha=-1.0)
    if grad_w_t is not None:
        grad_w.add_(grad_w_t.T)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int, gemm: str) -> torch.Tensor:
        n = hidden.shape[0]
        h32, w32 = hidden.float(), weight.float()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h32) if need_h else None
        grad_w = torch.zeros_like(w32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 whatever the autocast
            _chunks(h32, w32, targets, chunk, total, grad_h, grad_w, gemm)
        ctx.n = n
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.have = (need_h, need_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        saved = list(ctx.saved_tensors)
        scale = grad_out / ctx.n
        grad_h = saved.pop(0).mul(scale).to(ctx.dtypes[0]) if ctx.have[0] else None
        grad_w = saved.pop(0).mul(scale).to(ctx.dtypes[1]) if ctx.have[1] else None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 512, gemm: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (no bias) against ``targets``.

    hidden: (N, d) final hidden states; weight: (V, d) output embedding; targets: (N,) ids.
    Computed in fp32 whatever the input dtypes (as the plain path's ``.float()`` logits).
    gemm: on the CPU, which library computes the logits and weight-gradient products: ``auto``
    (the faster here, timed once per process: `gemm_plan`), ``mkl`` (torch's) or ``onednn``.
    """
    _check(gemm)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, gemm)
