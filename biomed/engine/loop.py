"""The one training loop, shared by every model in the workbench.

A model brings a ``loss_fn(model, batch) -> loss`` (or ``(loss, {name: value})``) and, optionally,
an ``eval_fn(model) -> {name: value}``; the engine owns everything else: device and precision
through Hugging Face accelerate (fp32 on CPU, bf16 autocast where a config asks for it, bf16 by
default on GPU), CPU threads, gradient accumulation, clipping, the learning-rate schedule
(``optim.py``), DDP/FSDP under ``accelerate launch``, periodic evaluation, atomic checkpoints with
resume (``checkpoints.py``), a progress bar, and metrics in ``log.jsonl`` and TensorBoard
(``logs.py``).

A run owns its run folder while it trains (``runfolder.py``): one run at a time (a lock), no
fresh start beside another run's checkpoints, and a resume only into the config it was saved
with (``fingerprint.py``) unless ``trainer.resume_allow_changes`` accepts the difference.

Resume is exact on one process: a checkpoint holds the model, optimizer, scheduler, every RNG
state and the position in the epoch, and the sampler's order depends only on (seed, epoch)
(``sampler.py``), so a run killed after a checkpoint and resumed reproduces the uninterrupted
run's per-step losses.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from biomed.engine.checkpoints import (
    TrainState,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from biomed.engine.config import TrainerConfig
from biomed.engine.devices import auto_precision
from biomed.engine.fingerprint import run_fingerprint
from biomed.engine.logs import MetricsLog, progress_bar
from biomed.engine.optim import ScheduleConfig, build_optimizer, lr_multiplier
from biomed.engine.runfolder import RunLock, check_start, remove_unfinished_saves
from biomed.engine.sampler import EpochSampler
from biomed.errors import ConfigError, TrainingDiverged

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, float]]
LossFn = Callable[[torch.nn.Module, Any], LossOutput]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


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
                import biomed.engine.cpu_malloc as cpu_malloc

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
        resume_fingerprint: dict | None = None,
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
        ``resume_fingerprint``: the caller's config that shapes the result beyond what the
        engine sees (e.g. ``{"model": cfg.lm, "data": cfg.data}``); a resume refuses a change
        (``fingerprint.py``).

        The run folder is this run's while ``fit`` runs (a lock); a fresh start refuses a folder
        holding another run's checkpoints.
        """
        fingerprint = run_fingerprint(model, len(train_data), shuffle, self.cfg, optim,
                                      resume_fingerprint)
        lock = RunLock(self.run_dir)
        try:
            ckpt, run_id = self._claim_run_folder(lock)
            return self._fit(model, train_data, loss_fn, optim=optim, eval_fn=eval_fn,
                             collate_fn=collate_fn, shuffle=shuffle, callbacks=callbacks,
                             tokens_per_sample=tokens_per_sample, ckpt=ckpt, run_id=run_id,
                             fingerprint=fingerprint)
        finally:
            lock.release()

    def _claim_run_folder(self, lock: RunLock) -> tuple[Path | None, str]:
        """Lock the run folder (main process), clear interrupted saves, find the checkpoint to
        resume and refuse a start that would mix runs; every process gets the same answer
        (or the same one-line error). Returns the checkpoint to resume and the run's id."""
        acc = self.accelerator
        error: BaseException | None = None
        ckpt: Path | None = None
        run_id = uuid.uuid4().hex[:12]
        if self.is_main:
            try:
                lock.acquire()
                for p in remove_unfinished_saves(self.run_dir):
                    print(f"{p}: removed the unfinished checkpoint of an interrupted save")
                ckpt = resolve_resume(self.cfg.resume, self.run_dir, verbose=True)
                check_start(self.run_dir, ckpt, list_checkpoints(self.run_dir), checkpoint_step)
            except Exception as e:  # noqa: BLE001 (raised below, once every process knows)
                error = e
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [str(error) if error else None, str(ckpt) if ckpt else None, run_id]
            broadcast_object_list(box, from_process=0)
            message, path, run_id = box
            if message and error is None:
                error = ConfigError(message)
            ckpt = Path(path) if path else None
        if error is not None:
            raise error
        return ckpt, run_id

    def _fit(self, model, train_data, loss_fn, *, optim, eval_fn, collate_fn, shuffle,
             callbacks, tokens_per_sample, ckpt, run_id, fingerprint) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        optimizer = build_optimizer(optim, model, fused=cfg.fused_optimizer)
        sched_cfg = ScheduleConfig(**OmegaConf.to_container(optim.schedule, resolve=True))
        state = TrainState(seed=self.seed, world_size=acc.num_processes,
                           batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                           run_id=run_id, fingerprint=fingerprint)
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

        if ckpt is not None:
            state, accepted = self._load_checkpoint(ckpt, model, optimizer, scheduler,
                                                    fingerprint)
            self.state = state
            if accepted:  # the new peak LR or length: the current LR from the new schedule
                _set_scheduled_lr(scheduler)
        logger = MetricsLog(self.run_dir, enabled=self.is_main, tensorboard=cfg.tensorboard,
                            truncate_after=state.step)
        batches = self._batches(loader, sampler, state)
        losses: list[float] = []
        metrics: dict[str, float] = {}
        bar = progress_bar(cfg.max_steps, state.step, enabled=self.is_main and cfg.progress)
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

    def _save_checkpoint(self, state: TrainState, model, optimizer, scheduler) -> Path:
        return save_checkpoint(self.accelerator, self.run_dir, state, model, optimizer,
                               scheduler, sharded=self.cfg.distributed == "fsdp",
                               keep=self.cfg.keep_checkpoints)

    def _load_checkpoint(self, path: Path, model, optimizer, scheduler,
                         fingerprint: dict) -> tuple[TrainState, dict]:
        expect = {"world_size": self.accelerator.num_processes, "seed": self.seed,
                  "batch_size": self.cfg.batch_size, "grad_accum": self.cfg.grad_accum}
        return load_checkpoint(self.accelerator, path, model, optimizer, scheduler,
                               expect=expect, fingerprint=fingerprint,
                               allow_changes=self.cfg.resume_allow_changes)


def _set_scheduled_lr(scheduler) -> None:
    """Set each group's learning rate to what the (new) schedule gives at the current step."""
    lrs = [base * fn(scheduler.last_epoch)
           for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _agreed_seconds(acc, seconds: float) -> float:
    """The training clock, the same on every process (the slowest one's)."""
    if acc.num_processes == 1:
        return seconds
    return float(acc.gather(torch.tensor([seconds], device=acc.device)).max())


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
