"""The optimizer study: the sweep config runs, and the summary reads the run folders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from biomed.config import compose
from biomed.lm import study
from tests.helpers.lm import TINY_LM, make_corpus

ROOT = Path(__file__).resolve().parent.parent


def fake_run(folder: Path, optimizer: str, lr: float, seed: int, final: float,
             curve: list[tuple[int, float]], seconds: float = 100.0) -> None:
    """A completed train-lm run folder as the summary reads it."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    OmegaConf.save({"seed": seed}, folder / ".hydra" / "config.yaml")
    steps = curve[-1][0]
    (folder / "metrics.json").write_text(json.dumps({
        "status": "completed", "val_loss": final, "optimizer": optimizer, "lr": lr,
        "steps": steps, "train_seconds": seconds, "tokens_per_s": 1000.0}))
    (folder / "log.jsonl").write_text("".join(
        json.dumps({"step": s, "time_s": seconds * s / steps, "val_loss": v}) + "\n"
        for s, v in curve))


def test_summary_picks_best_lr_compares_and_counts_steps_to_reach(tmp_path):
    n = 0
    for seed in (0, 1, 2):
        for lr, shift in ((1e-3, 0.3), (2e-3, 0.0), (4e-3, 0.2)):
            # AdamW: 100 steps, loss 5 -> 3 (+ shift); at lr 2e-3 it reaches 3.0
            fake_run(tmp_path / str(n), "AdamW", lr, seed, 3.0 + shift + 0.01 * seed,
                     [(s, 5 - 2 * s / 100 + shift + 0.01 * seed) for s in (25, 50, 75, 100)])
            n += 1
        for lr, shift in ((1e-3, 0.1), (2e-3, 0.05), (4e-3, 0.0)):
            # Sophia: 90 steps in the same time; best at the grid's edge (4e-3)
            fake_run(tmp_path / str(n), "SophiaG", lr, seed, 3.2 + shift + 0.01 * seed,
                     [(s, 5 - 2 * s / 100 + shift + 0.01 * seed) for s in (30, 60, 90)])
            n += 1
    summary = study.summarize(study.find_runs([tmp_path]), n_boot=500)
    best = summary["best"]
    assert best["AdamW"]["lr"] == 2e-3 and not best["AdamW"]["lr_on_grid_edge"]
    assert best["SophiaG"]["lr"] == 4e-3 and best["SophiaG"]["lr_on_grid_edge"]
    assert best["AdamW"]["val_loss"] == pytest.approx(3.01)
    lo, hi = best["AdamW"]["val_loss_ci"]
    assert lo <= 3.01 <= hi
    comp = summary["comparison"]
    assert comp["val_loss_diff"] == pytest.approx(3.01 - 3.21)  # paired by seed
    assert comp["equal_steps"]["step"] == 90
    assert comp["equal_steps"]["AdamW"] == pytest.approx(5 - 1.8 + 0.01)
    reach = comp["steps_to_reach_other_final"]
    # Sophia ends at 5 - 1.8 + 0.01 = 3.21 (step 90); AdamW gets there at step 90 too
    assert reach["AdamW"]["steps"] == pytest.approx(90.0)
    assert reach["SophiaG"]["steps"] is None  # never reaches AdamW's 3.01
    text = study.format_markdown(summary)
    assert "**best**" in text and "on the edge of its grid" in text and "not reached" in text


def test_summary_cli_writes_markdown_and_json(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "0", "AdamW", 1e-3, 0, 3.0, [(10, 4.0), (20, 3.0)])
    out, js = tmp_path / "study.md", tmp_path / "study.json"
    assert study.main([str(tmp_path / "runs"), "--out", str(out), "--json", str(js)]) == 0
    assert "| AdamW **best** | 0.001 | 1 | 3.0000 | n/a (1 seed)" in out.read_text()
    assert json.loads(js.read_text())["runs"] == 1
    assert study.main([str(tmp_path / "empty")]) == 1


def test_study_config_sweeps_optimizers_lrs_and_seeds():
    cfg = compose("train_lm", ["experiment=lm_optimizer_study", "paths.run_dir=/x"])
    params = cfg.hydra.sweeper.params if "hydra" in cfg else None
    assert cfg.trainer.max_time_s == 300 and cfg.trainer.eval_every == 50
    assert params is None or set(params) == {"optim", "optim.optimizer.lr", "seed"}
    assert not math.isnan(cfg.eval.max_tokens)


def test_study_sweep_runs_end_to_end_at_tiny_scale(tmp_path):
    """`biomed train-lm experiment=lm_optimizer_study` (2 runs: AdamW and Sophia, one LR, one
    seed, 1 s each), then the summary on its sweep folder."""
    corpus = make_corpus(tmp_path / "corpus.jsonl")
    env = {**os.environ, "BIOMED_OUTPUTS": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "biomed", "train-lm", "experiment=lm_optimizer_study",
         f"corpus={corpus}", f"lm_cache={tmp_path / 'cache'}", *TINY_LM,
         "trainer.max_steps=1000000", "trainer.max_time_s=1", "trainer.eval_every=5",
         "optim.optimizer.lr=3e-3", "seed=0", "optim.schedule.warmup_steps=2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "train-lm" / "multirun").iterdir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    summary = study.summarize(study.find_runs([sweep]), n_boot=100)
    assert set(summary["best"]) == {"AdamW", "SophiaG"}
    assert summary["comparison"]["equal_steps"]["step"] > 0
