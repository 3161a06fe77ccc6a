"""Next-token cross-entropy fused with the output projection, in chunks of tokens.

The plain path materialises the logits of a whole batch (tokens x vocabulary: 4,096 x 8,192
floats = 134 MB for `lm=tiny`), then their softmax and their gradient, each as large again: on
a CPU that traffic costs more than the projection's arithmetic. Here the projection, the
log-sum-exp and the gradients with respect to the hidden states and the weight are computed
chunk by chunk in the forward pass (as Liger-Kernel's fused linear cross-entropy does on GPUs),
so only one chunk of logits (``chunk`` x vocabulary) exists at a time and the backward pass
only scales the stored gradients. Same arithmetic as the plain path (three matrix products),
same result up to float rounding (tested).
"""

from __future__ import annotations

import torch

__all__ = ["linear_cross_entropy"]


def _chunks(h32, w32, targets, chunk, total, grad_h, grad_w) -> None:
    """Accumulate the summed loss into ``total`` and its gradients into ``grad_h``/``grad_w``
    (either may be None: not needed), one chunk of tokens at a time."""
    for s in range(0, h32.shape[0], chunk):
        h, t = h32[s:s + chunk], targets[s:s + chunk]
        logits = h @ w32.T  # (chunk, V)
        lse = torch.logsumexp(logits, dim=-1)
        total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
        if grad_h is None and grad_w is None:
            continue
        p = torch.exp(logits.sub_(lse[:, None]), out=logits)  # softmax, in place
        p[torch.arange(len(t), device=p.device), t] -= 1.0  # d(sum of losses) / d(logits)
        if grad_h is not None:
            grad_h[s:s + chunk] = p @ w32
        if grad_w is not None:
            grad_w.addmm_(p.T, h)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        h32, w32 = hidden.float(), weight.float()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h32) if need_h else None
        grad_w = torch.zeros_like(w32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 whatever the autocast
            _chunks(h32, w32, targets, chunk, total, grad_h, grad_w)
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
        return grad_h, grad_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (no bias) against ``targets``.

    hidden: (N, d) final hidden states; weight: (V, d) output embedding; targets: (N,) ids.
    Computed in fp32 whatever the input dtypes (as the plain path's ``.float()`` logits).
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
