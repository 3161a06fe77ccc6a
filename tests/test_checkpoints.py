"""Checkpoints and resume that cannot pick the wrong state: run identity and pruning, the
config fingerprint, torn logs, failed and killed saves, one run per folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biomed.engine import CheckpointError, ScheduleConfig, list_checkpoints, lr_multiplier, read_log
from biomed.engine.config import TrainerConfig
from biomed.engine.fingerprint import check_fingerprint, flatten
from biomed.engine.runfolder import RunLock
from biomed.errors import ConfigError
from tests.helpers.engine import train

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def helper_process(run: Path, *overrides: str) -> subprocess.Popen:
    """The tiny training as its own process (``python -m tests.helpers.engine``), 0.05 s/step."""
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.engine", str(run), *overrides],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the helper process ended before {path.name} appeared: "
                        f"{proc.stdout.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.02)


def run_ids(run: Path) -> dict[str, str]:
    return {p.name: json.loads((p / "trainer_state.json").read_text()).get("run_id")
            for p in list_checkpoints(run)}


# -- run identity: a fresh run never mixes with another run's checkpoints ------------------------

def test_fresh_run_refuses_a_folder_with_a_stale_higher_checkpoint(tmp_path):
    """An earlier run left checkpoint-20/30: a fresh run would prune its own checkpoint-10 at
    once and a later resume=latest would pick the old run's state. It is refused instead."""
    train(tmp_path, {"max_steps": 30, "checkpoint_every": 10})
    before = run_ids(tmp_path)
    assert list(before) == ["checkpoint-20", "checkpoint-30"] and len(set(before.values())) == 1
    with pytest.raises(ConfigError, match="holds checkpoints of another run") as err:
        train(tmp_path, {"max_steps": 20, "checkpoint_every": 10, "keep_checkpoints": 1})
    assert str(tmp_path) in str(err.value) and "trainer.resume=latest" in str(err.value)
    assert "\n" not in str(err.value)
    assert run_ids(tmp_path) == before  # nothing written, nothing pruned


def test_a_run_prunes_only_its_own_checkpoints(tmp_path):
    other = tmp_path / "other"
    train(other, {"max_steps": 3, "checkpoint_every": 3})
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(run, {"checkpoint_every": 5}, crash_at=13)
    shutil.copytree(other / "checkpoint-3", run / "checkpoint-3")  # another run's, lower
    train(run, {"checkpoint_every": 5, "keep_checkpoints": 1, "resume": "latest"})
    ids = run_ids(run)
    assert list(ids) == ["checkpoint-3", "checkpoint-20"]  # 10 and 15 pruned, not 3
    assert ids["checkpoint-3"] == run_ids(other)["checkpoint-3"] != ids["checkpoint-20"]


def test_resume_from_an_earlier_checkpoint_refuses_later_ones(tmp_path):
    train(tmp_path, {"max_steps": 10, "checkpoint_every": 5})
    with pytest.raises(ConfigError, match=r"holds checkpoint-10, later than the checkpoint"):
        train(tmp_path, {"max_steps": 10, "resume": str(tmp_path / "checkpoint-5")})


# -- the config fingerprint -------------------------------------------------------------------

def test_a_changed_learning_rate_is_refused_then_accepted_with_the_new_values(tmp_path):
    train(tmp_path, {"max_steps": 10, "checkpoint_every": 5})
    shutil.rmtree(tmp_path / "checkpoint-10")  # as if stopped after step 5
    new = {"optimizer": {"lr": 1e-3, "betas": [0.8, 0.9]}}
    with pytest.raises(ConfigError, match=r"optim\.optimizer\.lr 0\.01 -> 0\.001") as err:
        train(tmp_path, {"max_steps": 10, "resume": "latest"}, optim_overrides=new)
    assert "optim.optimizer.betas" in str(err.value)
    assert "trainer.resume_allow_changes=[optim.optimizer.betas,optim.optimizer.lr]" in \
        str(err.value)

    engine, result = train(tmp_path, {"max_steps": 10, "checkpoint_every": 5, "resume": "latest",
                                      "resume_allow_changes": ["optim.optimizer"]},
                           optim_overrides=new)
    assert result.step == 10 and len(result.losses) == 5
    group = engine.optimizer.param_groups[0]
    assert list(group["betas"]) == [0.8, 0.9]  # the new config won over the restored state
    sched = ScheduleConfig(warmup_steps=3)
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path) if "lr" in r}
    for step in range(6, 11):  # the new peak LR on the unchanged schedule
        assert lrs[step] == pytest.approx(1e-3 * lr_multiplier(step, 10, sched))
    assert lrs[5] == pytest.approx(1e-2 * lr_multiplier(5, 10, sched))  # the old run's rows
    saved = json.loads((tmp_path / "checkpoint-10" / "trainer_state.json").read_text())
    assert saved["fingerprint"]["optim.optimizer.lr"] == 1e-3  # later resumes compare with it


def test_a_changed_length_or_caller_config_is_named(tmp_path):
    train(tmp_path, {"max_steps": 10, "checkpoint_every": 5},
          fingerprint={"data": {"name": "a", "size": 32}})
    shutil.rmtree(tmp_path / "checkpoint-10")
    with pytest.raises(ConfigError, match=r"data\.name \"a\" -> \"b\"; trainer\.max_steps 10 -> 20"):
        train(tmp_path, {"max_steps": 20, "resume": "latest"},
              fingerprint={"data": {"name": "b", "size": 32}})
    _, result = train(tmp_path, {"max_steps": 20, "resume": "latest",
                                 "resume_allow_changes": True},
                      fingerprint={"data": {"name": "b", "size": 32}})
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path) if "lr" in r}
    sched = ScheduleConfig(warmup_steps=3)
    assert result.step == 20
    assert lrs[6] == pytest.approx(1e-2 * lr_multiplier(6, 20, sched))  # the new length


def test_fingerprint_helpers():
    from omegaconf import OmegaConf

    assert flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": (3,)})) == \
        {"a.b": 1, "a.c": [1, 2], "d": [3]}
    assert check_fingerprint("x", {}, {"a": 1}) == {}  # an old checkpoint: nothing to compare
    assert check_fingerprint("x", {"a": 1, "b": 2}, {"a": 1, "b": 3}, ["b"]) == {"b": (2, 3)}
    with pytest.raises(ConfigError, match=r"x: cannot resume.*c null -> 1"):
        check_fingerprint("x", {"a": 1}, {"a": 1, "c": 1}, ["a"])
    assert TrainerConfig.from_cfg({"resume_allow_changes": "a.b, c"}).resume_allow_changes == \
        ["a.b", "c"]
    with pytest.raises(ConfigError, match="resume_allow_changes"):
        TrainerConfig.from_cfg({"resume_allow_changes": [1]})


# -- the log ----------------------------------------------------------------------------------

def test_a_torn_last_log_line_is_cut_on_resume(tmp_path):
    _, full = train(tmp_path / "full", {"max_steps": 10, "checkpoint_every": 5})
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(run, {"max_steps": 10, "checkpoint_every": 5}, crash_at=8)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 8, "loss": 0.12')  # the disk filled up inside a row
    assert [r["step"] for r in read_log(run)] == list(range(1, 8))  # the torn row left out
    _, resumed = train(run, {"max_steps": 10, "checkpoint_every": 5, "resume": "latest"})
    assert resumed.losses == full.losses[5:]
    rows = [r for r in read_log(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert (run / "log.jsonl").read_text().endswith("}\n")
    assert not list(run.glob(".log.jsonl*"))  # the rewrite's temporary file is gone


# -- failed and killed saves ------------------------------------------------------------------

def test_a_failed_save_removes_its_partial_folder_and_says_so(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if str(f).endswith(".checkpoint-10.tmp/scheduler.pt"):  # weights and optimizer written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoint-10: saving the checkpoint failed "
                                              r"\(\[Errno 28\] No space left"):
        train(tmp_path, {"checkpoint_every": 5})
    assert "removed the partial .checkpoint-10.tmp" in capsys.readouterr().err
    assert not list(tmp_path.glob(".checkpoint-*"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5"]
    monkeypatch.setattr(torch, "save", real_save)
    _, resumed = train(tmp_path, {"checkpoint_every": 5, "resume": "latest"})  # lock released
    assert resumed.step == 20 and len(resumed.losses) == 15


def test_a_kill_during_save_keeps_the_last_complete_checkpoint(tmp_path, capsys):
    """SIGKILL while checkpoint-10 is written: checkpoint-5 is the latest, and the resumed run
    removes the unfinished folder (and says so)."""
    run = tmp_path / "run"
    proc = helper_process(run, "checkpoint_every=5", "max_steps=20", "kill_in_save=10")
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".checkpoint-10.tmp" / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-5"]
    capsys.readouterr()
    _, resumed = train(run, {"checkpoint_every": 5, "max_steps": 20, "resume": "latest"})
    assert "removed the unfinished checkpoint of an interrupted save" in capsys.readouterr().out
    assert resumed.step == 20 and len(resumed.losses) == 15
    assert not list(run.glob(".checkpoint-*"))
    assert [r["step"] for r in read_log(run) if "loss" in r] == list(range(1, 21))


# -- one run per folder ---------------------------------------------------------------------

def test_a_second_concurrent_run_is_refused_and_the_lock_dies_with_its_process(tmp_path):
    run = tmp_path / "run"
    proc = helper_process(run, "max_steps=400")  # 20 s of training unless killed
    try:
        wait_for(run / "log.jsonl", proc)  # the first run holds the folder
        with pytest.raises(ConfigError, match=r"another training run \(pid \d+\) is using") as e:
            train(run, {"max_steps": 3})
        assert str(run) in str(e.value) and str(proc.pid) in str(e.value)
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, after = train(run, {"max_steps": 3})  # killed: the kernel dropped its lock
    assert after.step == 3


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path), pytest.raises(ConfigError, match="another training run"):
        RunLock(tmp_path).acquire()
    with RunLock(tmp_path) as lock:  # released: free again
        assert lock.held


def test_quickstart_clears_a_training_stage_folder_before_it_reruns(tmp_path, monkeypatch):
    """The quickstart reruns a stage in its fixed folder when its inputs change: the folder is
    emptied first, so the stage's new training run does not meet the old run's checkpoints."""
    import biomed.imaging.classifier.train as classifier_train
    from biomed import quickstart
    from biomed.config import compose

    def fake_train_classifier(cfg, out):  # the engine in the stage's folder, with a checkpoint
        train(out, {"max_steps": 5, "checkpoint_every": 5})
        (out / "classifier").mkdir()
        (out / "classifier" / "model.safetensors").write_text("weights")
        return {"classifier_dir": str(out / "classifier"), "steps": int(cfg.trainer.max_steps)}

    monkeypatch.setattr(classifier_train, "train_classifier", fake_train_classifier)
    base = [f"paths.run_dir={tmp_path}", "stages=[classifier]"]
    quickstart.run(compose("quickstart", base))
    stage = tmp_path / "classifier"
    first = run_ids(stage)
    (stage / "left-by-the-first-run.txt").write_text("")
    m = quickstart.run(compose("quickstart", [*base,
                                              'stage_overrides.classifier=["trainer.max_steps=7"]']))
    assert m["classifier_steps"] == 7
    assert not (stage / "left-by-the-first-run.txt").exists()
    assert list(run_ids(stage)) == ["checkpoint-5"] and run_ids(stage) != first
