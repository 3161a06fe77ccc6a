"""Data-parallel training on the CPU (gloo): two processes, shards, shared checkpoints, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from biomed.engine import list_checkpoints, read_log

ROOT = Path(__file__).resolve().parent.parent


def torchrun(run_dir: Path, *overrides: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", "-m", "tests.helpers.engine", str(run_dir),
                    "checkpoint_every=10", *overrides], check=True, env=env,
                   capture_output=True, timeout=300)


def test_ddp_two_processes_checkpoint_and_exact_resume(tmp_path):
    torchrun(tmp_path / "full")
    state = json.loads((tmp_path / "full" / "checkpoint-20" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    # 96 samples, 2 ranks x batch 8: 6 batches per epoch and rank; 20 steps = 3 epochs + 2
    assert (state["epoch"], state["batches_in_epoch"]) == (3, 2)
    assert {p.name for p in (tmp_path / "full" / "checkpoint-20").glob("rng-*.pt")} == \
        {"rng-0.pt", "rng-1.pt"}
    full = [r["loss"] for r in read_log(tmp_path / "full") if "loss" in r]
    assert len(full) == 20

    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-20")
    assert list_checkpoints(tmp_path / "resumed")[-1].name == "checkpoint-10"
    torchrun(tmp_path / "resumed", "resume=latest")
    assert [r["loss"] for r in read_log(tmp_path / "resumed") if "loss" in r] == full
