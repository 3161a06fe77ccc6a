"""Training state and checkpoints: what a run saves so that a resumed run continues exactly.

Checkpoint layout (``<run_dir>/checkpoint-<step>/``, written to a temporary folder then renamed,
so a checkpoint folder is complete or absent)::

    model.safetensors      model weights (shared tensors stored once)
    optimizer.pt           optimizer state dict   } loaded with torch.load(weights_only=True)
    scheduler.pt           LR scheduler state     }
    rng-<rank>.pt          torch / cuda / numpy / python RNG states per process
    trainer_state.json     step, epoch, position in the epoch, seed, world size, the run's id
                           and its config fingerprint (``fingerprint.py``); written last

Under FSDP the model and optimizer are sharded, and accelerate's ``save_state`` writes them to
``accelerate/`` inside the checkpoint instead of the two files above.

A checkpoint belongs to one run (``run_id``): a run prunes its own checkpoints only. The files
and the folders are fsynced before and after the rename, so that a power cut cannot leave a
renamed but empty checkpoint; a save that fails (a full disk) removes its temporary folder and
raises :class:`CheckpointError` on every process, and the earlier checkpoints stay.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomed.engine.fingerprint import check_fingerprint
from biomed.errors import BiomedError, ConfigError

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(BiomedError):
    """A checkpoint could not be written (disk full, I/O error); nothing partial was kept."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch (this process)
    seed: int = 0
    world_size: int = 1
    batch_size: int = 0  # per process and micro-batch (with seed and world size: the data order)
    grad_accum: int = 1
    train_seconds: float = 0.0  # time spent in training steps (what trainer.max_time_s limits)
    run_id: str = ""  # which run wrote the checkpoint ("" for checkpoints older than run ids)
    fingerprint: dict = field(default_factory=dict)  # the config that shapes the result


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in a run folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CKPT_RE.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def read_state(path: Path) -> TrainState | None:
    """A checkpoint's ``trainer_state.json``, or None where it cannot be read."""
    try:
        data = json.loads((Path(path) / "trainer_state.json").read_text())
        return TrainState(**{k: v for k, v in data.items() if k in TrainState.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def checkpoint_step(path: Path) -> int:
    """A checkpoint's step: from its name, else from its state."""
    m = _CKPT_RE.match(Path(path).name)
    if m:
        return int(m.group(1))
    state = read_state(path)
    return state.step if state else -1


def prune_checkpoints(run_dir: Path, run_id: str, keep: int) -> None:
    """Delete the run's own checkpoints but the ``keep`` most recent; another run's stay."""
    own = [p for p in list_checkpoints(run_dir)
           if (s := read_state(p)) is not None and s.run_id == run_id]
    for old in own[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict:
    """Every RNG this process draws from (torch, CUDA, numpy's global, Python's), as tensors
    and plain values so that ``torch.load(weights_only=True)`` reads it back."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def resolve_resume(resume: str | None, run_dir: Path, *, verbose: bool = True) -> Path | None:
    """The checkpoint ``trainer.resume`` names: None, ``latest`` in ``run_dir``, or a folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            if verbose:
                print(f"resume=latest: no checkpoint in {run_dir}, starting fresh")
            return None
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"{path}: not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(acc: Any, run_dir: Path, state: TrainState, model, optimizer, scheduler, *,
                    sharded: bool, keep: int) -> Path:
    """Write ``checkpoint-<step>/`` atomically (every process calls it) and keep this run's
    ``keep`` most recent checkpoints. ``sharded``: FSDP, whose state accelerate writes.

    Raises CheckpointError on every process when any process failed to write its part; the
    temporary folder is then gone and the earlier checkpoints are untouched.
    """
    is_main = acc.is_main_process
    final = run_dir / f"checkpoint-{state.step}"
    tmp = run_dir / f".checkpoint-{state.step}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    error: BaseException | None = None
    try:  # each process writes its part
        if sharded:
            # FSDP shards parameters and optimizer state: accelerate writes the sharded state.
            acc.save_state(str(tmp / "accelerate"), safe_serialization=True)
        else:
            acc.save_model(model, str(tmp), safe_serialization=True,  # -> model.safetensors
                           max_shard_size="1000GB")  # one file, whatever the model size
            if is_main:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if is_main:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
    except Exception as e:  # noqa: BLE001 (disk full, I/O error: reported below, on every process)
        error = e
    if _any_process(acc, error is not None) and error is None:
        error = CheckpointError("another process failed to write its part")
    if error is None and is_main:
        try:  # the state last: it marks the folder as a checkpoint; then make it durable
            _write_durably(tmp / "trainer_state.json", json.dumps(asdict(state), indent=2))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # a checkpoint folder is complete or absent
            _fsync_dir(run_dir)
        except Exception as e:  # noqa: BLE001
            error = e
    if _any_process(acc, error is not None) and error is None:
        error = CheckpointError("the main process failed to finish it")
    if error is not None:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"warning: {final}: saving failed ({_one_line(error)}); removed the partial "
                  f"{tmp.name}", file=sys.stderr)
        raise CheckpointError(f"{final}: saving the checkpoint failed ({_one_line(error)}); "
                              f"removed the partial {tmp.name}, the earlier checkpoints are "
                              f"kept") from error
    if is_main:
        prune_checkpoints(run_dir, state.run_id, keep)
    acc.wait_for_everyone()
    return final


def _any_process(acc: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective: every process must call it)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (the data before the rename that
    publishes it)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the files are durable already
        pass
    finally:
        os.close(fd)


def load_checkpoint(acc: Any, path: Path, model, optimizer, scheduler, *,
                    expect: dict[str, int], fingerprint: dict[str, Any] | None = None,
                    allow_changes: bool | list[str] = False) -> tuple[TrainState, dict]:
    """Restore a checkpoint into ``model``/``optimizer``/``scheduler`` and the RNGs; returns its
    state (carrying this run's ``fingerprint`` from now on) and the accepted config changes
    (``{key: (old, new)}``).

    ``expect`` holds what must not change across a resume (seed, world size, batch size,
    accumulation): with another value the data order would not continue where the run stopped.
    ``fingerprint`` is this run's (``fingerprint.py``): a difference from the checkpoint's is
    refused unless ``allow_changes`` accepts it; when accepted, the new config's optimizer
    hyperparameters (learning rate, betas, weight decay...) replace the restored ones.
    """
    from safetensors.torch import load_model

    state = read_state(path)
    if state is None:
        raise ConfigError(f"{path}: unreadable trainer_state.json")
    changed = [f"{k} {getattr(state, k)} -> {v}" for k, v in expect.items()
               if getattr(state, k) != v]
    if changed:
        raise ConfigError(f"{path}: cannot resume with a different {', '.join(changed)}; "
                          f"the data order would not continue where the run stopped")
    accepted = check_fingerprint(path, state.fingerprint, fingerprint or {}, allow_changes)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        if (path / "accelerate").is_dir():
            acc.load_state(str(path / "accelerate"))
        else:
            # read to CPU memory, then copy into the parameters wherever they live
            load_model(acc.unwrap_model(model), str(path / "model.safetensors"), device="cpu")
            # load_state_dict moves the state to each parameter's device
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                                 map_location="cpu"))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    except (RuntimeError, ValueError, KeyError) as e:  # another model or optimizer layout
        raise ConfigError(f"{path}: does not fit this model or optimizer ({e})") from e
    if accepted:
        _use_new_hyperparameters(optimizer, scheduler, fresh)
    rng = path / f"rng-{acc.process_index}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    if fingerprint is not None:
        state.fingerprint = dict(fingerprint)
    if acc.is_main_process:
        print(f"resumed from {path} at step {state.step}")
        if accepted:
            print(f"resume: accepted config changes: {', '.join(accepted)}")
    return state, accepted


def _use_new_hyperparameters(optimizer, scheduler, fresh: list[dict]) -> None:
    """After a resume with accepted changes: the new config's hyperparameters win over the
    restored ones (``load_state_dict`` restores the old learning rate, betas, ...), and the
    schedule restarts from the new peak learning rate (``base_lrs``). The current ``lr`` is
    set by the caller from the schedule, which needs the restored clock."""
    groups = optimizer.param_groups
    if len(groups) != len(fresh):
        return
    for g, new in zip(groups, fresh, strict=True):
        for k, v in new.items():
            if k != "lr":
                g[k] = v
    scheduler.base_lrs = [new.get("initial_lr", new["lr"]) for new in fresh]
