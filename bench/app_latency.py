"""Teaching app latency: what a user waits for, through the server, against the same work in-process.

Contender: the app as ``biomed app`` serves it (`apps.build_app` + `apps.launch_kwargs`, models
loaded and warmed up at launch), driven over HTTP with gradio_client the way the page drives it:

- ``/generate``: one image, DPM-Solver++, 20 steps (the app's defaults), from the request to the
  generated image's bytes fetched from the server (what the browser does before showing it);
- ``/read_xray``: the real RG1 radiograph (7.2 MB DICOM) uploaded and read: classifier
  probabilities, Grad-CAM, CLIP scores, similar cases, header; until the shown image is fetched;
- ``/read_example``: the same reading started by the page's RG1 button (no upload).

Baseline, measured in the same run on the same loaded models: each tab's plain function called
directly in this process, without the server (``apps.tabs.generate.generate``;
``apps.tabs.read_xray.read_file`` / ``read_example`` then ``analyse``). The ratio server /
direct is the server's overhead (queue, JSON, file cache, upload and fetch over loopback).
Requests alternate with direct calls, so drift of the shared machine hits both alike; the first
request after launch is reported on its own (cold), then the median, min and max of the
repeats.

Targets (issue 18, this 2-core CPU, the quickstart's models): the first image within 5 s of the
click; a Read-an-X-ray answer within 2 s.

    python bench/app_latency.py                         # outputs/quickstart/latest
    python bench/app_latency.py --run outputs/quickstart/<run> --repeats 5 --threads 2
    python bench/app_latency.py --tiny                  # seconds: a smoke run with tiny models

Without the quickstart's models it prints one line saying to run ``make quickstart`` and exits
cleanly (status 0, so ``make bench`` goes on).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "Moderate left pleural effusion. Heart size is normal."
TARGETS_S = {"generate": 5.0, "read": 2.0}  # issue 18
NEEDED = ("diffusion", "classifier")  # the models the measured tabs cannot do without


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_config(run: Path | None, steps: int, threads: int | None, extra: list[str]):
    """conf/app.yaml as ``biomed app`` composes it; ``run``: a quickstart run folder whose
    ``diffusion``, ``classifier``, ``clip`` and ``lm`` sub-folders are served."""
    from biomed.config import compose

    overrides = [f"server_port={free_port()}", f"generate.steps={steps}",
                 "generate.scheduler=dpmpp"]
    if run is not None:
        overrides += [f"models.{k}={run / k}" for k in ("diffusion", "classifier", "clip", "lm")]
    if threads:
        overrides.append(f"threads={threads}")
    return compose("app", [*overrides, *extra])


def tiny_config(steps: int, threads: int | None, tmp: Path):
    """The app config of the tests' tiny seeded models, built in ``tmp`` (``--tiny``: a smoke
    run of this script)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.app import app_cfg, tiny_models

    cfg = app_cfg(tiny_models(tmp / "models"), tmp, f"generate.steps={steps}",
                  "generate.scheduler=dpmpp", "warmup=true")
    if threads:
        cfg.threads = threads
    return cfg


def missing_models(cfg) -> list[str]:
    from apps.context import model_folder

    return [k for k in NEEDED if not (model_folder(cfg, k) and Path(model_folder(cfg, k)).exists())]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fetch(file_data: dict) -> int:
    """GET one output file from the server (as the browser does before showing it)."""
    with urllib.request.urlopen(file_data["url"], timeout=60) as r:
        return len(r.read())


def summary(seconds: list[float]) -> str:
    return (f"{statistics.median(seconds):7.3f} s (min {min(seconds):.3f}, "
            f"max {max(seconds):.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=None,
                    help="a quickstart run folder (default: the app's, outputs/quickstart/latest)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tiny", action="store_true", help="tiny seeded models: a smoke run")
    ap.add_argument("overrides", nargs="*", help="more conf/app.yaml overrides (key=value)")
    args = ap.parse_args(argv)

    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="app_latency_") as tmp:
            return measure(args, tiny_config(args.steps, args.threads, Path(tmp)))
    return measure(args, app_config(args.run, args.steps, args.threads, args.overrides))


def measure(args: argparse.Namespace, cfg) -> int:
    """Launch the app of ``cfg`` and print the table (see the module docstring)."""
    if missing := missing_models(cfg):
        from apps.context import model_folder

        where = ", ".join(f"{k}: {model_folder(cfg, k)}" for k in missing)
        print(f"app_latency: no trained model ({where}): run `make quickstart` first "
              "(or give --run <a quickstart run folder>)")
        return 0
    try:
        import gradio  # noqa: F401
        from gradio_client import Client, handle_file
    except ImportError:
        print("app_latency: gradio is not installed: pip install -e '.[app]' (or `make app`)")
        return 0

    import torch

    from apps import build_app, launch_kwargs
    from apps.context import AppContext
    from apps.tabs import generate as gen_tab
    from apps.tabs import read_xray as read_tab
    from biomed.errors import BiomedError

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    t0 = time.perf_counter()
    ctx = AppContext.load(cfg)
    if missing := [k for k in NEEDED if not ctx.loaded(k)]:
        errors = ctx.extras.get("load_errors", {})
        print("app_latency: " + "; ".join(f"{k} did not load ({errors.get(k)})" for k in missing)
              + ": run `make quickstart` first")
        ctx.close()
        return 0
    demo = None
    try:
        demo = build_app(cfg, ctx)  # warms the models up (cfg.warmup)
        demo.launch(prevent_thread_lock=True, **{**launch_kwargs(cfg), "quiet": True})
        launch_s = time.perf_counter() - t0
        try:
            rg1 = read_tab.example_path(ctx)
        except BiomedError as e:
            rg1 = None
            print(f"read skipped: {e}")

        lim = gen_tab.limits(ctx)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"{cores} cores available ({os.cpu_count()} in all), torch threads "
              f"{torch.get_num_threads()}, device {ctx.pipeline.pipe.device}")
        print("models: " + ", ".join(f"{k} {v}" for k, v in ctx.sources.items())
              + "".join(f"; {k} not loaded" for k in ctx.missing))
        print(f"settings: /generate 1 image, {lim['scheduler']} {lim['steps']} steps, guidance "
              f"{lim['guidance']:g}, prompt {PROMPT!r}; /read_xray and /read_example on "
              f"{rg1.name if rg1 else '(no RG1)'}; {args.repeats} repeats after one cold "
              f"request; queue concurrency {cfg.queue.concurrency}; launch (load, warm-up, "
              f"build, serve) {launch_s:.1f} s")

        client = Client(demo.local_url, verbose=False, download_files=False)
        seed = iter(range(10**6))

        def server_generate() -> None:
            gallery = client.predict(PROMPT, 1, next(seed), lim["guidance"], lim["steps"],
                                     api_name="/generate")[0]
            fetch(gallery[0]["image"])

        def direct_generate() -> None:
            gen_tab.generate(ctx, PROMPT, 1, next(seed), lim["guidance"], lim["steps"])

        def server_read_upload() -> None:
            out = client.predict(handle_file(str(rg1)), api_name="/read_xray")
            assert out[1], f"no probabilities: {out[6]}"
            fetch(out[0])

        def server_read_example() -> None:
            out = client.predict(api_name="/read_example")
            assert out[1], f"no probabilities: {out[6]}"
            fetch(out[0])

        def direct_read() -> None:
            up = read_tab.read_file(ctx, rg1, delete=False)
            read_tab.analyse(ctx, up.image)

        def direct_read_example() -> None:
            read_tab.analyse(ctx, read_tab.read_example(ctx).image)

        rows = [("/generate, first image", "generate", server_generate, direct_generate)]
        if rg1 is not None:
            rows += [("/read_xray, RG1 uploaded", "read", server_read_upload, direct_read),
                     ("/read_example, RG1 button", "read", server_read_example,
                      direct_read_example)]
        print(f"{'request':<27} {'cold':>8}  {'server: median (min, max)':<33} "
              f"{'direct: median (min, max)':<33} {'overhead':>8}  target")
        verdicts = []
        for name, kind, server, direct in rows:
            cold = timed(server)
            s_times, d_times = [], []
            for _ in range(args.repeats):
                s_times.append(timed(server))
                d_times.append(timed(direct))
            med = statistics.median(s_times)
            ratio = med / statistics.median(d_times)
            target = TARGETS_S[kind]
            met = "met" if med <= target else "NOT met"
            verdicts.append(f"{name} <= {target:g} s: {met} (median {med:.2f} s)")
            print(f"{name:<27} {cold:7.3f}s  {summary(s_times):<33} {summary(d_times):<33} "
                  f"{ratio:7.2f}x  <= {target:g} s: {met}")
        print("targets (issue 18): " + "; ".join(verdicts))
    finally:
        if demo is not None:
            demo.close(verbose=False)
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
