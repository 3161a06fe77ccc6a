"""The ``trainer`` config group as a typed dataclass (``conf/trainer/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from biomed.errors import ConfigError


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
    # config changes a resume accepts (biomed.engine.fingerprint): False, True (any), or keys /
    # key prefixes such as ["optim.optimizer.lr", "trainer.max_steps"]
    resume_allow_changes: bool | list[str] = False
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
        allow = tc.resume_allow_changes
        if isinstance(allow, str):  # one key, or keys separated by commas
            allow = [k.strip() for k in allow.split(",") if k.strip()]
        if not isinstance(allow, bool):
            if not all(isinstance(k, str) for k in allow):
                raise ConfigError("trainer.resume_allow_changes: true, false or a list of "
                                  f"config keys, not {allow!r}")
            tc.resume_allow_changes = list(allow)
        if tc.grad_accum < 1 or tc.batch_size < 1 or tc.max_steps < 0:
            raise ConfigError("trainer config: batch_size and grad_accum must be >= 1, "
                              "max_steps >= 0")
        return tc
