"""SophiaG against the paper's rule (Liu et al. 2023, Algorithms 2 and 3) on softmax regression.

Softmax regression has closed-form gradients, so the reference below is the paper's algorithm
written out in plain tensor algebra, independently of autograd and of the optimizer's code.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from biomed.lm.sophia import HessianCallback, SophiaG, gnb_backward

N, D, C = 16, 5, 3


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    w0 = 0.5 * torch.randn(C, D, generator=g)
    return x, y, w0


def grad_ce(w, x, labels):
    """d/dW of mean cross-entropy of softmax(x W^T) against ``labels``: (P - onehot)^T x / N."""
    p = torch.softmax(x @ w.T, dim=1)
    return (p - torch.nn.functional.one_hot(labels, C).float()).T @ x / len(x)


class FakeEngine:
    """The parts of biomed.engine.Engine that HessianCallback uses, on one CPU process."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.state = SimpleNamespace(step=0)
        self.accelerator = SimpleNamespace(device=torch.device("cpu"), process_index=0,
                                           num_processes=1, autocast=contextlib.nullcontext)


def sampled_labels(w, x, seed, step):
    """The GNB labels y^ ~ softmax(f(theta, x)) the callback draws at engine step ``step``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919)
    return torch.multinomial(torch.softmax(x @ w.T, dim=1), 1, generator=g).squeeze(-1)


def test_sophiag_follows_the_papers_algorithm():
    x, y, w0 = problem()
    lr, (b1, b2), gamma, wd, eps, k, seed, steps = 0.05, (0.9, 0.8), 0.5, 0.1, 1e-12, 3, 7, 8

    # the optimizer, driven as the engine drives it (estimate before step 1, after steps k, 2k)
    model = torch.nn.Linear(D, C, bias=False)
    model.weight.data.copy_(w0)
    opt = SophiaG(model.parameters(), lr=lr, betas=(b1, b2), gamma=gamma, weight_decay=wd,
                  eps=eps)
    engine = FakeEngine(opt)
    cb = HessianCallback(lambda step: x, lambda m, batch: m(batch), every=k, seed=seed)
    cb.on_train_begin(engine, model)
    for t in range(1, steps + 1):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        engine.state.step = t
        cb.on_step_end(engine, model, t)

    # the paper, Algorithm 3 with the GNB estimator of Algorithm 2
    w, m, h = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    clipped = unclipped = 0
    for t in range(1, steps + 1):
        if t % k == 1:  # h_t = b2 h_{t-k} + (1 - b2) h^_t, h^ = B * g^ (.) g^
            g_hat = grad_ce(w, x, sampled_labels(w, x, seed, t - 1))
            h = b2 * h + (1 - b2) * N * g_hat * g_hat
        m = b1 * m + (1 - b1) * grad_ce(w, x, y)
        w = w - lr * wd * w
        ratio = m / torch.clamp(gamma * h, min=eps)
        clipped += int((ratio.abs() >= 1).sum())
        unclipped += int((ratio.abs() < 1).sum())
        w = w - lr * ratio.clamp(-1, 1)

    assert cb.estimates == 3  # t = 1, 4, 7
    assert clipped and unclipped, "the problem must exercise both branches of the clip"
    torch.testing.assert_close(model.weight.data, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state[model.weight]["hessian"], h, rtol=1e-5, atol=1e-8)


def test_zero_curvature_gives_sign_steps_of_size_lr():
    """With h = 0 every coordinate is clipped: the step is lr * sign(m), whatever |m| is."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = SophiaG([p], lr=0.1, betas=(0.0, 0.99), gamma=0.04, weight_decay=0.0)
    p.grad = torch.tensor([1e-3, -50.0, 0.5])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.9, -1.9, 2.9]))
    assert opt.unclipped_fraction() == 0.0


def test_large_curvature_gives_newton_steps():
    """Where gamma h dominates, the step is lr * m / (gamma h): a preconditioned, unclipped one."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SophiaG([p], lr=1.0, betas=(0.0, 0.0), gamma=2.0, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -3.0])
    opt.update_hessian(batch_size=1)  # h = 1 * g^2 = [1, 9] (beta2 = 0: no EMA memory)
    opt.step()  # m = g; step = m / (2 h) = [0.5, -1/6]
    torch.testing.assert_close(p.data, torch.tensor([-0.5, 1.0 / 6.0]))
    assert opt.unclipped_fraction() == 1.0


def test_gnb_estimate_is_the_gauss_newton_diagonal_in_expectation():
    """E[B g^ (.) g^] = diag of the Gauss-Newton matrix: mean_n p_nc (1 - p_nc) x_nd^2."""
    x, _, w0 = problem()
    model = torch.nn.Linear(D, C, bias=False)
    model.weight.data.copy_(w0)
    g = torch.Generator().manual_seed(1)
    draws = 3000
    acc = torch.zeros_like(w0)
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        b = gnb_backward(model(x), g)
        acc += b * model.weight.grad ** 2
    p = torch.softmax(x @ w0.T, dim=1)
    gn_diag = (p * (1 - p)).T @ (x ** 2) / N
    torch.testing.assert_close(acc / draws, gn_diag, rtol=0.12, atol=1e-3)


def test_state_dict_round_trip_keeps_the_hessian(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = SophiaG([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.update_hessian(batch_size=4)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    fresh = SophiaG([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    fresh.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    state = next(iter(fresh.state.values()))
    torch.testing.assert_close(state["hessian"], torch.full((3,), 0.04))  # (1 - 0.99) * 4 * 1


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError):
        SophiaG([torch.nn.Parameter(torch.ones(1))], betas=(1.0, 0.99))
    with pytest.raises(ValueError):
        HessianCallback(lambda s: None, lambda m, b: None, every=0)
