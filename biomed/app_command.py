"""`biomed app`: serve the Gradio teaching app (`apps`) with the models of the latest quickstart.

    biomed app                        # http://127.0.0.1:7860, the quickstart's models
    biomed app server_port=7861 models.lm=null lm.pretrained=/models/BioMedLM

``run(cfg)`` loads the models once (`apps.context.AppContext.load`), builds the app
(`apps.build_app`: warm-up, tabs), launches it with `apps.launch_kwargs` (127.0.0.1, no share
link unless ``share=true``, which prints a warning), prints the local URL and serves until
Ctrl+C; the app's private temporary folder is removed on the way out.

``apps`` sits above ``biomed`` (it imports the workbench, never the reverse): it is imported
inside ``run`` only, and needs the ``app`` extra (``pip install -e '.[app]'``, which
``make app`` does).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from omegaconf import DictConfig

from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build and launch the app; returns when the server stops (``{"url": ...}``)."""
    try:
        import gradio  # noqa: F401 - only to say what is missing, before loading any model
    except ImportError:
        raise ConfigError("the teaching app needs the `app` extra: pip install -e '.[app]' "
                          "(or run `make app`)") from None
    from apps import build_app, launch_kwargs
    from apps.context import AppContext

    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    kwargs = launch_kwargs(cfg)
    # SIGTERM/SIGHUP (docker stop, systemd, a CI timeout) end it like Ctrl+C, so the `finally`
    # below removes the private folder with its uploads and images
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_cleanly)
    ctx = AppContext.load(cfg)
    url, demo = None, None
    try:
        demo = build_app(cfg, ctx)
        if kwargs["share"]:
            print("warning: share=true opens a public gradio.live link: anyone with it can use "
                  "this app and the models behind it", file=sys.stderr)
        demo.launch(prevent_thread_lock=True, **kwargs)
        url = demo.local_url
        print(f"biomed app: serving on {url} (Ctrl+C stops it)", flush=True)
        demo.block_thread()  # until Ctrl+C
    finally:
        if demo is not None:
            demo.close(verbose=False)  # frees the port (a no-op when already closed)
        ctx.close()
    return {"url": url}


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


main = hydra_app("app")(run)

if __name__ == "__main__":
    main()
