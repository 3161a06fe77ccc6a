"""The one training engine every model shares: the loop and what it is made of.

- ``loop``: :class:`Engine` (``fit``), on Hugging Face accelerate.
- ``config``: :class:`TrainerConfig`, the ``trainer`` config group.
- ``optim``: the optimizer's weight-decay groups and the learning-rate schedule.
- ``sampler``: the data order, a function of (seed, epoch).
- ``checkpoints``: training state, atomic checkpoints, RNG states, resume.
- ``fingerprint``: the config a checkpoint must agree with to be resumed.
- ``runfolder``: one run per run folder (a lock), leftovers of interrupted saves.
- ``logs``: ``log.jsonl``, TensorBoard, the progress bar.
- ``devices``: device, dtype and precision choices (one ``pick_device`` for every command).
- ``cpu_gemm``, ``cpu_malloc``: CPU speed probes and settings.
"""

from biomed.engine.checkpoints import CheckpointError, TrainState, list_checkpoints
from biomed.engine.config import TrainerConfig
from biomed.engine.devices import auto_precision, pick_device, pick_dtype
from biomed.engine.logs import MetricsLog, read_log
from biomed.engine.loop import Engine, EvalFn, LossFn, TrainResult
from biomed.engine.optim import ScheduleConfig, build_optimizer, lr_multiplier
from biomed.engine.sampler import EpochSampler

__all__ = ["CheckpointError", "Engine", "EpochSampler", "EvalFn", "LossFn", "MetricsLog", "ScheduleConfig",
           "TrainResult", "TrainState", "TrainerConfig", "auto_precision", "build_optimizer",
           "list_checkpoints", "lr_multiplier", "pick_device", "pick_dtype", "read_log"]
