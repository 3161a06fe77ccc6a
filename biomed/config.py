"""Where the Hydra configs live, and the resolvers they use.

``conf/`` sits at the top of the repository and is also carried inside the wheel as
``biomed/conf`` (pyproject maps it), so both a source checkout and a non-editable install find it.
Tests and other code compose configs with :func:`compose`, exactly as the CLI would.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from biomed.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The folder holding the primary configs: ``biomed/conf`` in a wheel, else ``<repo>/conf``."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "paths").is_dir():
            return candidate
    raise ConfigError(f"{_PACKAGE_DIR}: no conf/ folder found beside or inside the package")


@functools.cache
def run_stamp() -> str:
    """Timestamp naming a run folder, the same in every process of one launch.

    ``accelerate launch`` / ``torchrun`` start several processes that each compose the config; a
    per-process ``${now:}`` could differ by a second and split one run across two folders. Under
    a launcher (``LOCAL_RANK`` set) all processes of a node share their parent's start time, so
    they agree. Multi-node runs must name the folder (``hydra.run.dir=...``) or set
    ``BIOMED_RUN_STAMP``.
    """
    if stamp := os.environ.get("BIOMED_RUN_STAMP"):
        return stamp
    if "LOCAL_RANK" in os.environ:
        world, local_world = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
        if world and local_world and world != local_world:
            raise ConfigError("multi-node launch: set hydra.run.dir=... (or BIOMED_RUN_STAMP) so "
                              "that every node writes to the same run folder")
        started = _process_start_time(os.getppid())
        if started is not None:
            return started.strftime("%Y-%m-%d_%H-%M-%S")
    return _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _process_start_time(pid: int) -> _dt.datetime | None:
    """Start time of a process from /proc (Linux); None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return _dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def register_resolvers() -> None:
    """Register the ``${run_stamp:}`` resolver used by ``conf/hydra/default.yaml``."""
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp)


register_resolvers()


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a shipped primary config with overrides, as the CLI would (for tests and tools).

    The result has no Hydra runtime; callers set ``paths.run_dir=...`` for ``run(cfg)``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # Inside a running Hydra app (a quickstart stage composing another command's config) the
    # app's own GlobalHydra is put back afterwards.
    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)
