"""SophiaG: second-order clipped stochastic optimization (Liu et al. 2023, arXiv:2305.14342).

Algorithm 3 of the paper with the Gauss-Newton-Bartlett (GNB) estimator of Algorithm 2, for
step t = 1, 2, ...::

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    if t mod k == 1:  h_t = beta2 * h_{t-k} + (1 - beta2) * h^_t        (else h_t = h_{t-1})
    theta_t   = theta_t - lr_t * lambda * theta_t                        (decoupled weight decay)
    theta_t+1 = theta_t - lr_t * clip(m_t / max(gamma * h_t, eps), 1)    (clip to [-1, 1])

GNB estimate: on a minibatch of B examples (tokens, for a language model), sample labels
y^_b ~ softmax(f(theta, x_b)) from the model's own predictive distribution, take the gradient g^
of the mean cross-entropy against those sampled labels, and return h^ = B * g^ (.) g^. In
expectation that is the diagonal of the Gauss-Newton matrix of the loss, which is positive, so
no negative curvature reaches the preconditioner.

The optimizer stores h in those units; ``gamma`` is the paper's gamma (called ``rho`` in the
authors' code, where their ``bs`` factor is the paper's B). Coordinates whose Hessian estimate
is tiny get the clipped step ``lr * sign(m)``; the fraction that does not is reported by
:meth:`SophiaG.unclipped_fraction` (the authors' "win rate"; they tune gamma for 10-50%).

The estimate needs a forward/backward pass of its own every k steps: :class:`HessianCallback`
does it through the training engine's callback hooks (``on_train_begin`` for t = 1 and
``on_step_end`` after steps k, 2k, ..., i.e. before steps 1 + k, 1 + 2k, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class SophiaG(Optimizer):
    """SophiaG with a GNB Hessian-diagonal EMA; call :meth:`update_hessian` every k steps.

    Args:
        lr: peak learning rate (the largest step of any coordinate: updates are clipped to 1).
        betas: (beta1, beta2): EMA of the gradient, and of the Hessian estimates.
        gamma: scale of the preconditioner (the paper's gamma, the authors' code's ``rho``).
        weight_decay: decoupled, multiplied by the learning rate (as AdamW).
        eps: floor of ``gamma * h`` (avoids dividing by zero).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.965, 0.99), gamma: float = 0.04,
                 weight_decay: float = 0.1, eps: float = 1e-15):
        if lr < 0 or gamma < 0 or weight_decay < 0 or eps <= 0:
            raise ValueError("SophiaG: lr, gamma and weight_decay must be >= 0, eps > 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"SophiaG: betas {betas} must lie in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "gamma": gamma,
                                  "weight_decay": weight_decay, "eps": eps})

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, batch_size: int) -> None:
        """Fold the GNB estimate ``B * g (.) g`` into the Hessian EMA.

        Call after ``backward()`` of the mean loss against labels sampled from the model
        (:func:`gnb_backward`); ``batch_size`` is that loss's B (examples or tokens averaged).
        """
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self._state(p)["hessian"]
                h.mul_(beta2).addcmul_(p.grad, p.grad, value=(1 - beta2) * batch_size)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, gamma, eps = group["lr"], group["weight_decay"], group["gamma"], group["eps"]
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SophiaG does not support sparse gradients")
                state = self._state(p)
                state["step"] += 1
                m, h = state["exp_avg"], state["hessian"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                if wd:
                    p.mul_(1 - lr * wd)
                ratio = m / torch.clamp(h * gamma, min=eps)
                p.add_(ratio.clamp_(-1.0, 1.0), alpha=-lr)
        return loss

    @torch.no_grad()
    def unclipped_fraction(self) -> float:
        """Fraction of coordinates whose current |m| / max(gamma h, eps) is below 1: those whose
        step is the preconditioned one rather than the clipped ``lr * sign(m)`` (the authors'
        "win rate"). Computed on demand, not in ``step``."""
        n = total = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                bound = torch.clamp(state["hessian"] * group["gamma"], min=group["eps"])
                n += int((state["exp_avg"].abs() < bound).sum())
                total += p.numel()
        return n / total if total else float("nan")


def gnb_backward(logits: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """Backward of the GNB loss: mean cross-entropy of ``logits`` (..., V) against labels
    sampled from ``softmax(logits)``. Returns B, the number of examples averaged."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    with torch.no_grad():
        probs = torch.softmax(flat, dim=-1)
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    loss = torch.nn.functional.cross_entropy(flat, labels)
    loss.backward()
    return flat.shape[0]


class HessianCallback:
    """Engine callback: a GNB Hessian estimate for :class:`SophiaG` every ``every`` steps.

    ``batch_fn(step) -> batch`` gives the minibatch of the estimate and ``logits_fn(model,
    batch) -> logits`` the model's logits on it. Estimates are taken before step 1 and after
    steps k, 2k, ... (the paper's t mod k == 1). Under mixed precision the forward runs in the
    engine's autocast; label sampling uses a generator seeded by (seed, step), so a resumed run
    draws the same labels as an uninterrupted one. Does nothing when the optimizer is not
    SophiaG.
    """

    def __init__(self, batch_fn: Callable[[int], Any], logits_fn: Callable[[Any, Any], Any],
                 every: int = 10, seed: int = 0):
        if every < 1:
            raise ValueError("hessian_every must be >= 1")
        self.batch_fn, self.logits_fn, self.every, self.seed = batch_fn, logits_fn, every, seed
        self.estimates = 0

    def on_train_begin(self, engine, model) -> None:
        if engine.state.step == 0:
            self._estimate(engine, model, 0)

    def on_step_end(self, engine, model, step: int) -> None:
        if step % self.every == 0:
            self._estimate(engine, model, step)

    def _estimate(self, engine, model, step: int) -> None:
        from accelerate.utils import send_to_device

        opt = getattr(engine.optimizer, "optimizer", engine.optimizer)  # accelerate's wrapper
        if not isinstance(opt, SophiaG):
            return
        acc = engine.accelerator
        batch = send_to_device(self.batch_fn(step), acc.device)
        g = torch.Generator(device=acc.device).manual_seed(
            self.seed * 1_000_003 + step * 7919 + acc.process_index)
        opt.zero_grad(set_to_none=True)
        with acc.autocast():
            logits = self.logits_fn(model, batch)
        n = gnb_backward(logits, g) * acc.num_processes  # DDP averages the gradient globally
        opt.update_hessian(n)
        opt.zero_grad(set_to_none=True)
        self.estimates += 1
