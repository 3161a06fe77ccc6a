"""Turn an experiment's ``run(cfg) -> dict`` into a Hydra command line.

The experiment module keeps ``run`` testable (tests compose the shipped config and call it);
this wrapper adds Hydra's command line, overrides and sweeps, and turns a ``BiomedError`` into
one line on stderr and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from biomed.config import config_dir, register_resolvers
from biomed.errors import BiomedError

RunFn = Callable[[DictConfig], dict[str, Any]]


def hydra_app(config_name: str) -> Callable[[RunFn], Callable[[], Any]]:
    """Decorator factory: ``main = hydra_app("quickstart")(run)``."""
    register_resolvers()

    def wrap(run: RunFn) -> Callable[[], Any]:
        @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
        def main(cfg: DictConfig) -> Any:
            # paths.run_dir is ${hydra:runtime.output_dir}: resolve it while Hydra is running
            OmegaConf.resolve(cfg)
            try:
                return run(cfg)
            except BiomedError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(e.exit_code)
            except OSError as e:  # the output side: disk full, no permission, a file for a folder
                print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
                sys.exit(1)

        main.__doc__ = run.__doc__
        return main

    return wrap
