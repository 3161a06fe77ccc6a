"""The Gradio teaching app: generate and compare chest X-rays from report text, a quiz on
phantoms, reading a real X-ray, a report assistant. For teachers, students and curious
clinicians; research models on phantom or public data, not for diagnosis.

- `build_app(cfg)`: the ``gr.Blocks`` (queued, not launched): a header that says what the app is
  and which models are loaded or missing (with the command that makes each), then one tab per
  module of `apps.tabs` in the order of `apps.tabs.TABS`.
- `launch_kwargs(cfg)`: what ``Blocks.launch`` gets: this machine only (127.0.0.1) unless told
  otherwise, no share link unless ``share=true``, an upload size limit, no file outside gradio's
  own cache reachable (``allowed_paths`` empty), no SSR server, no MCP server.

``biomed app`` (`biomed.app_command`) loads the context, builds, launches and prints the URL.
Gradio is imported inside the functions: importing ``apps`` costs nothing.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from apps.common import DISCLAIMER
from apps.context import AppContext, gradio_temp_dir
from apps.tabs import TABS, Tab

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_app", "header_markdown", "launch_kwargs"]

log = logging.getLogger("apps")
TITLE = "biomed teaching app"
# which tabs use which model (for the header)
USED_BY = {"diffusion": "Generate, Compare", "classifier": "Read an X-ray",
           "clip": "Read an X-ray", "lm": "Report assistant"}


def launch_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The keyword arguments of ``Blocks.launch`` for ``cfg`` (conf/app.yaml)."""
    port = cfg.get("server_port")
    return {
        "server_name": str(cfg.get("server_name") or "127.0.0.1"),
        "server_port": int(port) if port else None,
        "share": bool(cfg.get("share", False)),
        "max_file_size": cfg.get("max_file_size") or "20mb",
        "allowed_paths": [],  # nothing outside gradio's own cache can be fetched
        "show_error": False,  # errors are one line on the page (apps.common.safe_errors)
        "ssr_mode": False,  # no Node server beside the app
        "mcp_server": False,
        "pwa": False,
        "enable_monitoring": False,
        "quiet": True,  # `biomed app` prints the URL (gradio's banner would suggest share=True)
    }


def header_markdown(ctx: AppContext) -> str:
    """What the app is, that it is not for diagnosis, and which models are loaded or missing."""
    errors = ctx.extras.get("load_errors") or {}
    lines = [f"# {TITLE}", DISCLAIMER, ""]
    for kind in ("diffusion", "classifier", "clip", "lm"):
        used = f"({USED_BY[kind]})"
        if ctx.loaded(kind):
            name = ctx.pipeline.model_id if kind == "diffusion" else _shown(ctx.sources[kind])
            lines.append(f"- **{kind}** {used}: loaded, `{name}`")
        else:
            why = errors.get(kind, "not loaded")
            lines.append(f"- **{kind}** {used}: **missing** ({_shorten(why)}). Make it with "
                         f"`{ctx.missing.get(kind, '?')}`")
    return "\n".join(lines)


def _shown(folder: str) -> str:
    """A model folder as the page shows it: relative to the working folder when inside it,
    else its last two parts (no full path of the server's disk on the page)."""
    path = Path(folder).resolve()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return "/".join(path.parts[-2:])


def _shorten(reason: str) -> str:
    """A load error for the page, with folders shortened as `_shown` does."""
    head, sep, tail = reason.partition(": ")
    if sep and ("/" in head or os.sep in head):
        return f"{_shown(head)}: {tail}"[:200]
    return reason[:200]


def _tab_module(tab: Tab) -> ModuleType | None:
    """The tab's module, or None when it is not there (only that: a module that is there but
    fails to import raises)."""
    try:
        return importlib.import_module(tab.module)
    except ModuleNotFoundError as e:
        if e.name != tab.module:
            raise
        log.warning("tab %r: module %s is missing; the tab says so", tab.label, tab.module)
        return None


#: the events (api names) that share the ``models`` queue (``queue.concurrency`` at a time)
HEAVY_EVENTS = frozenset({"generate", "compare", "quiz_new", "read_xray", "read_example",
                          "read_window", "report_continue"})


def build_app(cfg: DictConfig, ctx: AppContext | None = None) -> gr.Blocks:
    """The app's Blocks for ``cfg``, queued, not launched. ``ctx``: a loaded `AppContext`
    (default: `AppContext.load(cfg)`). Sets gradio's temporary folder to the context's private
    one and turns analytics off; warms the models up (``cfg.warmup``); runs each tab's
    ``prepare`` once, then ``build`` inside its ``gr.Tab``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    ctx = ctx if ctx is not None else AppContext.load(cfg)
    # before any component exists: each one records its cache folder when made
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_temp_dir(ctx))
    # example caching is off, but gradio serves its examples cache folder: keep it private too
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(gradio_temp_dir(ctx) / "examples")
    import gradio as gr

    if cfg.get("warmup", True):
        ctx.warm_up()
    modules = [(tab, _tab_module(tab)) for tab in TABS]
    failed: dict[str, str] = {}
    for tab, module in modules:
        prepare = getattr(module, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare(ctx)
        except Exception as e:  # noqa: BLE001 - one tab's launch work must not stop the app
            failed[tab.elem_id] = " ".join(str(e).split())[:300] or type(e).__name__
            log.exception("tab %r: prepare failed", tab.label)
    frequency, age = (int(v) for v in (cfg.get("delete_cache") or (300, 900)))
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(frequency, age)) as demo:
        gr.Markdown(header_markdown(ctx), elem_id="app-header")
        with gr.Tabs():
            for tab, module in modules:
                with gr.Tab(tab.label, id=tab.elem_id, elem_id=tab.elem_id):
                    if module is None:
                        gr.Markdown(f"The {tab.label} tab is not part of this build.")
                        continue
                    if tab.elem_id in failed:
                        gr.Markdown(f"This tab could not get ready at launch "
                                    f"({failed[tab.elem_id]}); it does what it can.")
                    module.build(ctx)
    queue = cfg.get("queue") or {}
    limit = int(queue.get("concurrency", 1))
    # one queue for every event that runs a model or renders phantoms, whichever tab it comes
    # from: queue.concurrency is then a limit on the whole app's CPU work, not per button
    for fn in demo.fns.values():
        if fn.api_name in HEAVY_EVENTS:
            fn.concurrency_id, fn.concurrency_limit = "models", limit
    demo.queue(default_concurrency_limit=limit, max_size=int(queue.get("max_size", 16)))
    return demo
