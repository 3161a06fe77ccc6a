"""The one training loop, shared by every model in the workbench.

A model brings a ``loss_fn(model, batch) -> loss`` (or ``(loss, {name: value})``) and, optionally,
an ``eval_fn(model) -> {name: value}``; the engine owns everything else: device and precision
through Hugging Face accelerate (fp32 on CPU, bf16 autocast where a config asks for it, bf16 by
default on GPU), CPU threads, gradient accumulation, clipping, the learning-rate schedule,
DDP/FSDP under ``accelerate launch``, periodic evaluation, atomic checkpoints with resume, a
progress bar, and metrics in ``log.jsonl`` and TensorBoard.

Resume is exact on one process: a checkpoint holds the model, optimizer, scheduler, every RNG
state and the position in the epoch, and the sampler's order depends only on (seed, epoch), so a
run killed after a checkpoint and resumed reproduces the uninterrupted run's per-step losses.

Checkpoint layout (``<run_dir>/checkpoint-<step>/``, written to a temporary folder then renamed)::

    model.safetensors      model weights (shared tensors stored once)
    optimizer.pt           optimizer state dict   } loaded with torch.load(weights_only=True)
    scheduler.pt           LR scheduler state     }
    rng-<rank>.pt          torch / cuda / numpy / python RNG states per process
    trainer_state.json     step, epoch, position in the epoch, seed, world size
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from biomed.errors import ConfigError, TrainingDiverged

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, float]]
LossFn = Callable[[torch.nn.Module, Any], LossOutput]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainerConfig:
    """What ``conf/trainer/*.yaml`` holds (see those files for the meaning of each field)."""

    accelerator: str = "cpu"  # cpu | cuda
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto (bf16 where measured faster)
    distributed: str = "none"  # none | ddp | fsdp (the process count comes from accelerate launch)
    threads: int | None = None  # CPU threads per process; None: all cores / processes per node
    num_workers: int = 0  # DataLoader workers (0 on CPU: a worker competes for the same cores)
    keep_heap: bool = True  # CPU: keep large freed buffers in glibc's heap (biomed.engine.cpu_malloc)
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float | None = 1.0
    max_time_s: float | None = None  # wall-clock budget of the training steps; None: steps only
    compile: bool = False  # torch.compile the prepared model (in place: state-dict keys unchanged)
    fused_optimizer: bool = False  # pass fused=True to optimizers that accept it (AdamW, Adam)
    eval_every: int = 0  # steps; 0: only at the end
    checkpoint_every: int = 0  # steps; 0: none
    keep_checkpoints: int = 2  # most recent checkpoints kept
    log_every: int = 1  # steps between log.jsonl / TensorBoard rows
    resume: str | None = None  # None | "latest" | path to a checkpoint folder
    tensorboard: bool = True
    progress: bool = True
    fsdp: dict = field(default_factory=dict)  # options for accelerate's FSDP plugin

    @classmethod
    def from_cfg(cls, cfg: DictConfig | dict) -> TrainerConfig:
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"trainer config: unknown keys {unknown}")
        tc = cls(**known)
        if tc.grad_accum < 1 or tc.batch_size < 1 or tc.max_steps < 0:
            raise ConfigError("trainer config: batch_size and grad_accum must be >= 1, "
                              "max_steps >= 0")
        return tc


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then cosine/linear decay or constant."""

    warmup_steps: int = 0
    decay: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak


def lr_multiplier(step: int, total: int, sched: ScheduleConfig,
                  time_progress: float | None = None) -> float:
    """LR factor for optimizer step ``step`` (0-based): warmup from 1/warmup, then decay.

    ``time_progress`` (elapsed / budget, under ``trainer.max_time_s``) moves the decay along
    with the clock when it is ahead of the step count, so a time-limited run still ends at
    the floor.
    """
    if sched.warmup_steps > 0 and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return 1.0
    if total <= sched.warmup_steps and time_progress is None:
        return 1.0
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total - sched.warmup_steps))
    if time_progress is not None:
        progress = max(progress, min(1.0, time_progress))
    floor = sched.min_lr_ratio
    if sched.decay == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if sched.decay == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    raise ConfigError(f"optim.schedule.decay: unknown schedule {sched.decay!r}")


def build_optimizer(optim_cfg: DictConfig, model: torch.nn.Module,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Build the optimizer from ``conf/optim/*.yaml`` with decoupled weight decay groups.

    Weight decay applies to matrices of linear/conv layers only, not to biases, norms or
    embeddings (as in GPT-2/nanoGPT and most transformer recipes). ``fused`` asks optimizers
    that take a ``fused`` argument (torch's AdamW/Adam, on CPU and CUDA) for their fused kernel.
    """
    import inspect

    from hydra.utils import instantiate

    decay, no_decay = [], []
    no_decay_ids = _no_decay_param_ids(model)
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(optim_cfg.weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    factory = instantiate(optim_cfg.optimizer)  # `_partial_: true`: the class with its settings
    extra = {}
    if fused and "fused" in inspect.signature(factory.func).parameters \
            and factory.keywords.get("fused") is None:
        extra["fused"] = True
    return factory([g for g in groups if g["params"]], **extra)


def _no_decay_param_ids(model: torch.nn.Module) -> set[int]:
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm,
                  torch.nn.Embedding)
    ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or name.endswith("bias") or p.ndim < 2 \
                    or "norm" in type(module).__name__.lower():
                ids.add(id(p))
    return ids


# ---------------------------------------------------------------------------------------------
# data order


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), sharded across processes.

    ``start`` skips the first samples of this process's shard, which is how a resumed run
    continues mid-epoch without reading the skipped batches.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world_size  # drop the tail so every rank sees as many batches
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start:])

    def __len__(self) -> int:
        return max(0, self.n // self.world_size - self.start)


# ---------------------------------------------------------------------------------------------
# state and checkpoints


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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in a run folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CKPT_RE.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ---------------------------------------------------------------------------------------------
# the engine


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]  # the last evaluation, plus final train loss
    losses: list[float] = field(default_factory=list)  # per-step train losses of this process run


class Engine:
    """Runs ``fit`` for any model; one instance per training run.

    Args:
        trainer: the ``trainer`` config group (``TrainerConfig`` fields).
        run_dir: the run folder (log.jsonl, tensorboard/, checkpoint-<step>/).
        seed: the run's seed (model init is the caller's, after ``Engine`` seeds everything).
    """

    def __init__(self, trainer: DictConfig | dict | TrainerConfig, run_dir: str | Path,
                 seed: int = 0):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = trainer if isinstance(trainer, TrainerConfig) else TrainerConfig.from_cfg(trainer)
        self.run_dir = Path(run_dir)
        self.seed = seed
        if self.cfg.accelerator == "cuda" and not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator=cuda but no CUDA device is visible; "
                              "use trainer=cpu")
        if self.cfg.accelerator == "cpu":  # before the probe below times anything
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(self.cfg.threads or max(1, (os.cpu_count() or 1) // local))
            if self.cfg.keep_heap:
                from biomed.engine import cpu_malloc

                cpu_malloc.keep_heap()
        self.precision = self.cfg.mixed_precision
        if self.precision == "auto":
            self.precision = auto_precision(self.cfg.accelerator)
        kwargs: dict[str, Any] = {"mixed_precision": self.precision,
                                  "cpu": self.cfg.accelerator == "cpu"}
        if self.cfg.distributed == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin
            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**self.cfg.fsdp)
        _reset_accelerate_state()
        self.accelerator = Accelerator(**kwargs)
        set_seed(seed)
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- public -----------------------------------------------------------------------------

    def fit(
        self,
        model: torch.nn.Module,
        train_data: Dataset,
        loss_fn: LossFn,
        *,
        optim: DictConfig,
        eval_fn: EvalFn | None = None,
        collate_fn: Callable | None = None,
        shuffle: bool = True,
        callbacks: Sequence[Any] = (),
        tokens_per_sample: int | None = None,
    ) -> TrainResult:
        """Train ``model`` for ``trainer.max_steps`` optimizer steps (or until
        ``trainer.max_time_s`` seconds of training steps); returns the final metrics.

        ``callbacks`` are objects with an ``on_step_end(engine, model, step)`` method, called
        after each optimizer step (e.g. an optimizer's periodic Hessian estimate), and optionally
        ``on_train_begin(engine, model)``, called once before the first step of this process
        run. From ``fit`` on, the engine exposes ``self.model`` and ``self.optimizer`` (as
        prepared: wrapped for DDP/FSDP, autocast, compiled) and ``self.state`` (step, epoch,
        ``train_seconds``). Callback time counts as training time.
        ``tokens_per_sample`` adds ``tokens_per_s`` to the log rows.
        """
        cfg, acc = self.cfg, self.accelerator
        optimizer = build_optimizer(optim, model, fused=cfg.fused_optimizer)
        sched_cfg = ScheduleConfig(**OmegaConf.to_container(optim.schedule, resolve=True))
        state = TrainState(seed=self.seed, world_size=acc.num_processes,
                           batch_size=cfg.batch_size, grad_accum=cfg.grad_accum)
        self.state = state

        def time_progress() -> float | None:
            return self.state.train_seconds / cfg.max_time_s if cfg.max_time_s else None

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, cfg.max_steps, sched_cfg, time_progress()))
        model, optimizer = acc.prepare(model, optimizer)
        if cfg.compile:
            model.compile()  # in place: checkpoints and unwrap see the same module and keys
        self.model, self.optimizer = model, optimizer

        sampler = EpochSampler(len(train_data), seed=self.seed, shuffle=shuffle,
                               rank=acc.process_index, world_size=acc.num_processes)
        if len(train_data) // acc.num_processes < cfg.batch_size:
            raise ConfigError(f"training data has {len(train_data)} items: fewer than one batch "
                              f"of {cfg.batch_size} per process")
        loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.num_workers, collate_fn=collate_fn, drop_last=True,
                            pin_memory=acc.device.type == "cuda",
                            # its own generator: creating an epoch's iterator must not draw from
                            # the global RNG, or a resumed run's dropout masks would shift
                            generator=torch.Generator().manual_seed(self.seed))

        ckpt = self._resolve_resume()
        if ckpt is not None:
            state = self._load_checkpoint(ckpt, model, optimizer, scheduler)
            self.state = state
        logger = _MetricsLog(self.run_dir, enabled=self.is_main, tensorboard=cfg.tensorboard,
                             truncate_after=state.step)
        batches = self._batches(loader, sampler, state)
        losses: list[float] = []
        metrics: dict[str, float] = {}
        bar = _progress(cfg.max_steps, state.step, enabled=self.is_main and cfg.progress)
        model.train()
        try:
            t0 = time.perf_counter()
            for cb in callbacks:
                if hasattr(cb, "on_train_begin"):
                    cb.on_train_begin(self, model)
            state.train_seconds += time.perf_counter() - t0
            while state.step < cfg.max_steps and not self._out_of_time(state):
                t0 = time.perf_counter()
                loss, extras, grad_norm = self._optimizer_step(model, optimizer, batches, loss_fn)
                state.step += 1
                losses.append(loss)
                for cb in callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(self, model, state.step)
                step_time = time.perf_counter() - t0
                state.train_seconds += step_time
                if cfg.max_time_s:  # every process must stop at the same step
                    state.train_seconds = _agreed_seconds(acc, state.train_seconds)
                scheduler.step()  # after the clock moved: a time budget's decay sees it
                row = {"step": state.step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                       "step_time_s": step_time, "time_s": state.train_seconds, **extras}
                if tokens_per_sample:
                    row["tokens_per_s"] = (tokens_per_sample * cfg.batch_size * cfg.grad_accum
                                           * acc.num_processes / step_time)
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                if cfg.log_every and state.step % cfg.log_every == 0:
                    logger.log(row)
                if cfg.max_time_s and state.train_seconds > 0:
                    # under a time budget the step count is an estimate: the steps done so far
                    # at the current rate, so that the bar's ETA is the budget's end
                    bar.total = min(cfg.max_steps, max(state.step + 1, round(
                        state.step * cfg.max_time_s / state.train_seconds)))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{row['lr']:.3g}", refresh=False)
                last = state.step == cfg.max_steps or self._out_of_time(state)
                if eval_fn is not None and (last or (cfg.eval_every and
                                                     state.step % cfg.eval_every == 0)):
                    metrics = self.evaluate(model, eval_fn)
                    logger.log({"step": state.step, "time_s": state.train_seconds, **metrics})
                if cfg.checkpoint_every and (state.step % cfg.checkpoint_every == 0 or last):
                    self._save_checkpoint(state, model, optimizer, scheduler)
        finally:
            bar.close()
            logger.close()
        if losses:
            metrics = {"train_loss": losses[-1], **metrics}
        return TrainResult(step=state.step, metrics=metrics, losses=losses)

    def _out_of_time(self, state: TrainState) -> bool:
        return bool(self.cfg.max_time_s) and state.train_seconds >= self.cfg.max_time_s

    def evaluate(self, model: torch.nn.Module, eval_fn: EvalFn) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            out = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
        return out

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model (no DDP/compile wrapper), e.g. to ``save_pretrained`` it."""
        return self.accelerator.unwrap_model(model)

    # -- the step -----------------------------------------------------------------------------

    def _batches(self, loader: DataLoader, sampler: EpochSampler,
                 state: TrainState) -> Iterator[Any]:
        """Endless micro-batches; keeps ``state.epoch``/``batches_in_epoch`` current."""
        while True:
            sampler.set_epoch(state.epoch, start=state.batches_in_epoch * self.cfg.batch_size)
            for batch in loader:
                state.batches_in_epoch += 1
                yield batch
            state.epoch += 1
            state.batches_in_epoch = 0

    def _optimizer_step(self, model, optimizer, batches, loss_fn):
        from accelerate.utils import send_to_device

        acc, k = self.accelerator, self.cfg.grad_accum
        total, extras = 0.0, {}
        for i in range(k):
            batch = send_to_device(next(batches), acc.device)
            sync = acc.no_sync(model) if i < k - 1 and acc.num_processes > 1 else _nullcontext()
            with sync:
                out = loss_fn(model, batch)
                loss, more = (out if isinstance(out, tuple) else (out, {}))
                acc.backward(loss / k)
            total += float(loss.detach()) / k
            for name, v in more.items():
                extras[name] = extras.get(name, 0.0) + float(v) / k
        if acc.num_processes > 1:  # the mean loss over processes: every rank sees the same value
            t = torch.tensor([total], device=acc.device)
            total = float(acc.reduce(t, reduction="mean"))
        if not math.isfinite(total):  # stop before a NaN/inf update reaches the weights
            raise TrainingDiverged(f"training loss is {total} at step {self.state.step + 1}; "
                                   f"lower the learning rate or check the data")
        grad_norm = None
        if self.cfg.clip_grad_norm:
            grad_norm = float(acc.clip_grad_norm_(model.parameters(), self.cfg.clip_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total, extras, grad_norm

    # -- checkpoints ----------------------------------------------------------------------------

    def _resolve_resume(self) -> Path | None:
        resume = self.cfg.resume
        if not resume:
            return None
        if resume == "latest":
            found = list_checkpoints(self.run_dir)
            if not found:
                if self.is_main:
                    print(f"resume=latest: no checkpoint in {self.run_dir}, starting fresh")
                return None
            return found[-1]
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(f"{path}: not a checkpoint folder (no trainer_state.json)")
        return path

    def _save_checkpoint(self, state: TrainState, model, optimizer, scheduler) -> Path:
        acc = self.accelerator
        final = self.run_dir / f"checkpoint-{state.step}"
        tmp = self.run_dir / f".checkpoint-{state.step}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if self.cfg.distributed == "fsdp":
            # FSDP shards parameters and optimizer state: accelerate writes the sharded state.
            acc.save_state(str(tmp / "accelerate"), safe_serialization=True)
        else:
            acc.save_model(model, str(tmp), safe_serialization=True,  # -> model.safetensors
                           max_shard_size="1000GB")  # one file, whatever the model size
            if self.is_main:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if self.is_main:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
        acc.wait_for_everyone()
        if self.is_main:
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # a checkpoint folder is complete or absent
            for old in list_checkpoints(self.run_dir)[:-max(1, self.cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path, model, optimizer, scheduler) -> TrainState:
        from safetensors.torch import load_model

        acc = self.accelerator
        state = TrainState(**json.loads((path / "trainer_state.json").read_text()))
        now = {"world_size": acc.num_processes, "seed": self.seed,
               "batch_size": self.cfg.batch_size, "grad_accum": self.cfg.grad_accum}
        changed = [f"{k} {getattr(state, k)} -> {v}" for k, v in now.items()
                   if getattr(state, k) != v]
        if changed:
            raise ConfigError(f"{path}: cannot resume with a different {', '.join(changed)}; "
                              f"the data order would not continue where the run stopped")
        if (path / "accelerate").is_dir():
            acc.load_state(str(path / "accelerate"))
        else:
            # read to CPU memory, then copy into the parameters wherever they live
            load_model(acc.unwrap_model(model), str(path / "model.safetensors"), device="cpu")
            # load_state_dict moves the state to each parameter's device
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                                 map_location="cpu"))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = path / f"rng-{acc.process_index}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=True))
        if self.is_main:
            print(f"resumed from {path} at step {state.step}")
        return state


def _agreed_seconds(acc, seconds: float) -> float:
    """The training clock, the same on every process (the slowest one's)."""
    if acc.num_processes == 1:
        return seconds
    return float(acc.gather(torch.tensor([seconds], device=acc.device)).max())


def auto_precision(accelerator: str) -> str:
    """``bf16`` where bf16 autocast is faster than fp32, else ``no``.

    CUDA: bf16 where the device supports it. CPU: measured, since it depends on the chip: with
    AMX or AVX512-BF16 bf16 matrix products run several times faster than fp32, while on
    AVX2-only CPUs they are emulated and run several times slower. The probe times a linear
    layer of transformer-like shape (2048 x 256 -> 1024) both ways (~0.1 s).
    """
    if accelerator == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    x, w = torch.randn(2048, 256), torch.randn(1024, 256)

    def best(autocast: bool) -> float:
        times = []
        for _ in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - t0)
        return min(times[1:])  # the first call pays one-off setup

    return "bf16" if best(True) < best(False) else "no"


def _reset_accelerate_state() -> None:
    """Let one process run several trainings with different precision (quickstart stages, tests).

    accelerate keeps its state in a process-wide singleton that refuses a second precision; the
    distributed part (process group, ranks) is kept, only the per-run part is reset.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, desc="train")


class _MetricsLog:
    """``log.jsonl`` (one JSON object per row) and TensorBoard scalars, main process only.

    On resume the rows after the checkpoint's step are dropped: they belong to the part of the
    interrupted run that the resumed run repeats.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, truncate_after: int):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= truncate_after]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=truncate_after + 1 if truncate_after else None)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``log.jsonl``."""
    p = Path(run_dir) / "log.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []
