"""The teaching app (`apps`) for server-level and browser tests: a folder of tiny seeded models,
the app's config pointing at them, and the app launched in-process on 127.0.0.1.

- `tiny_models(folder)`: every model kind the app loads, tiny and seeded, in the layouts the
  workbench's loaders read (a Stable Diffusion pipeline, a small_cnn classifier run, an open_clip
  local-dir CLIP run, a GPT-2 LM folder) plus a made-up IU report tarball for the similar-cases
  bank. Seconds on two cores.
- `app_cfg(models, tmp, *overrides)`: ``conf/app.yaml`` composed as ``biomed app`` composes it,
  pointing at those models, with a free port, 2-step sampling and every app file (the
  de-identification key) inside ``tmp``.
- `serve(cfg)`: a context manager that loads the models (`apps.context.AppContext.load`),
  builds the app (`apps.build_app`), launches it with the app's own `apps.launch_kwargs` (so the
  tests check what ``biomed app`` really serves) without blocking, yields a `Served` (URL,
  Blocks, context, launch arguments), then closes the server, deletes the app's private folder
  and puts back the environment variables the launch set.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from biomed.config import compose

# the classifier's outputs: names CLIP's zero-shot table knows, and "no_finding"
LABELS = ["cardiomegaly", "effusion", "pneumothorax", "no_finding"]
PROMPT = "Opacity in the left lung."  # words the tiny SD tokenizer knows (tests.helpers.diffusion)
# environment variables gradio or the app's launch may set; restored by `serve`
_ENV = ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "GRADIO_EXAMPLES_CACHE",
        "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_SHARE")


def tiny_models(folder: Path) -> dict[str, Path]:
    """Tiny seeded models of every kind in ``folder`` (kind -> the folder to configure) and
    ``reports``: a tarball of 40 made-up IU reports (`tests.helpers.phantom.make_reports`)."""
    from tests.helpers.classifier import tiny_classifier_dir
    from tests.helpers.clip import tiny_clip_dir
    from tests.helpers.diffusion import tiny_sd_folder
    from tests.helpers.lm import random_model_dir
    from tests.helpers.phantom import make_reports, make_tgz

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "diffusion": tiny_sd_folder(folder / "diffusion"),
        "classifier": tiny_classifier_dir(folder / "classifier", LABELS, size=32),
        "clip": tiny_clip_dir(folder / "clip"),
        "lm": random_model_dir(folder / "lm", context=64),
        "reports": make_tgz(folder / "reports.tgz", make_reports(40)),
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_cfg(models: dict[str, Path], tmp: Path, *overrides: str) -> DictConfig:
    """``conf/app.yaml`` composed with the tiny ``models`` (`tiny_models`), a free port, 2-step
    sampling, no warm-up, the retrieval rate not measured, and the app's key file in ``tmp``;
    ``overrides`` come last (Hydra syntax; ``++key=value`` adds or sets a key)."""
    tmp = Path(tmp)
    return compose("app", [
        f"models.diffusion={models['diffusion']}", f"models.classifier={models['classifier']}",
        f"models.clip={models['clip']}", f"models.lm={models['lm']}",
        f"server_port={free_port()}", "device=cpu", "warmup=false",
        "generate.steps=2", "compare.steps=2", "compare.size=64", "quiz.size=64",
        f"++read_xray.reports={models['reports']}", "++read_xray.measure_images=0",
        "++read_xray.gradcam_size=128",
        f"++uploads.key_file={tmp / 'app.key'}", "uploads.delete_after_s=0", *overrides])


@dataclass
class Served:
    """A launched app: its URL (``http://127.0.0.1:<port>/``), the Blocks, its `AppContext`
    and the keyword arguments it was launched with."""

    url: str
    demo: Any  # gr.Blocks
    ctx: Any  # apps.context.AppContext
    kwargs: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


def _wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextlib.contextmanager
def serve(cfg: DictConfig) -> Iterator[Served]:
    """Load the models (`apps.context.AppContext.load`), build the app (`apps.build_app`) and
    launch it in this process as ``biomed app`` does (``demo.launch(prevent_thread_lock=True,
    **apps.launch_kwargs(cfg))``, quietly); yield it; close the server and delete the app's
    private folder.

    The environment variables gradio reads (`_ENV`) are put back afterwards, so one test's
    launch does not change another's."""
    from apps import build_app, launch_kwargs
    from apps.context import AppContext

    saved = {k: os.environ.get(k) for k in _ENV}
    demo, ctx = None, AppContext.load(cfg)
    try:
        demo = build_app(cfg, ctx)
        kwargs = {**launch_kwargs(cfg), "quiet": True}
        demo.launch(prevent_thread_lock=True, **kwargs)
        url = f"http://127.0.0.1:{demo.server_port}/"
        _wait_until_up(url)
        yield Served(url, demo, ctx, kwargs)
    finally:
        if demo is not None:
            with contextlib.suppress(Exception):
                demo.close(verbose=False)
        ctx.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_tab(page, elem_id: str, label: str) -> None:
    """Click a tab's button (``#<elem_id>-button``); at narrow widths gradio moves some tabs
    into its "More tabs" menu, so open that first when the button is hidden."""
    button = page.locator(f"#{elem_id}-button")
    if not button.is_visible():
        page.get_by_role("button", name="More tabs").click()
        button = page.locator(".overflow-dropdown button", has_text=label)
    button.click()
    page.locator(f"#{elem_id}").wait_for(state="visible")
