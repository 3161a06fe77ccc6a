"""biomed.engine.cpu_gemm: oneDNN products equal torch's; the timing choice picks the faster."""

from __future__ import annotations

import time

import pytest
import torch

from biomed.engine import cpu_gemm
from biomed.lm.fused_loss import gemm_plan


@pytest.mark.skipif(not cpu_gemm.available(), reason="no oneDNN linear op in this torch build")
def test_onednn_products_match_torch_in_every_layout():
    torch.manual_seed(0)
    a, b = torch.randn(9, 5), torch.randn(5, 7)
    for x in (a, a.t().contiguous().t()):
        for y in (b, b.t().contiguous().t()):
            out = cpu_gemm.onednn_mm(x, y)
            assert out.shape == (9, 7) and out.is_contiguous()
            torch.testing.assert_close(out, a @ b, rtol=1e-5, atol=1e-5)


def test_fastest_picks_the_quicker_candidate_unless_told(monkeypatch):
    monkeypatch.delenv("BIOMED_CPU_GEMM", raising=False)
    calls = {"slow": 0, "quick": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.004)

    def quick():
        calls["quick"] += 1

    assert cpu_gemm.fastest({"slow": slow, "quick": quick}, repeats=3) == "quick"
    assert calls == {"slow": 4, "quick": 4}  # one warm-up each, then alternating
    monkeypatch.setenv("BIOMED_CPU_GEMM", "slow")
    assert cpu_gemm.fastest({"slow": slow, "quick": quick}) == "slow"
    assert calls["slow"] == 4  # forced: nothing timed


def test_gemm_plan_choices():
    assert gemm_plan(8, 4, 16, "mkl") == (False, False)
    if cpu_gemm.available():
        assert gemm_plan(8, 4, 16, "onednn") == (True, True)
    auto = gemm_plan(8, 4, 16, "auto")
    assert len(auto) == 2 and all(isinstance(v, bool) for v in auto)
    with pytest.raises(ValueError, match="gemm='blas'"):
        gemm_plan(8, 4, 16, "blas")
