"""Screenshots of the teaching app's tabs for docs/app.md: one small PNG per tab.

Launches the app as ``biomed app`` serves it (by default on the latest quickstart's models, as
bench/app_latency.py does), opens it in headless Chromium (Debian's ``chromium``, driven by
Playwright), runs each tab's main action so the picture shows a result (Generate an image,
Compare two reports, a Quiz question, Read the RG1 example, continue a report), and writes
``<out>/<tab>.png``: the tab bar and the tab at ``--width`` pixels (at most ``--max_height``
tall), reduced to a 256-colour palette and optimised, shrunk until under ``--max_kb``.

    python bench/app_screenshots.py --out docs/app             # the quickstart's models
    python bench/app_screenshots.py --out /tmp/shots --tiny    # tiny seeded models (a check)

Without ``--out`` it writes nothing and says so (``make bench`` runs every script here and must
not rewrite the docs); without the models or Chromium it prints one line and exits with 0.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from app_latency import app_config, missing_models, tiny_config  # bench/ is sys.path[0]

FILES = {"tab-generate": "generate", "tab-compare": "compare", "tab-quiz": "quiz",
         "tab-read": "read", "tab-report": "report"}
TIMEOUT_MS = 180_000  # a real model on two cores: generation and reading take seconds


def small_png(png: bytes, max_height: int, max_kb: int) -> bytes:
    """A screenshot cropped to ``max_height``, as a 256-colour optimised PNG, scaled down by
    steps of 15 % until it is under ``max_kb``."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.crop((0, 0, img.width, min(img.height, max_height)))
    scale = 1.0
    while True:
        shown = img if scale == 1.0 else img.resize(
            (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        shown.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG",
                                                                         optimize=True)
        if buf.tell() <= max_kb * 1024 or scale < 0.4:
            return buf.getvalue()
        scale *= 0.85


def run_action(page, elem_id: str, example: str) -> None:
    """The tab's main action, waited for (so the screenshot shows a result)."""
    if elem_id == "tab-generate":
        page.locator("#generate-prompt textarea").fill(example)
        page.locator("#generate-button").click()
        page.locator("#generate-gallery img").first.wait_for()
    elif elem_id == "tab-compare":
        page.locator("#compare-button").click()
        page.locator("#compare-phantom-b img").wait_for()
        page.locator("#compare-diff img").wait_for()
    elif elem_id == "tab-quiz":
        page.locator("#quiz-new").click()
        page.locator("#quiz-image img").wait_for()
    elif elem_id == "tab-read":
        page.locator("#read-example-rg1").click()
        page.locator("#read-image img").wait_for()
    elif elem_id == "tab-report":
        page.locator("#report-input textarea").fill("FINDINGS: The heart is normal in size.")
        page.locator("#report-button").click()
        page.locator("#report-stats").get_by_text("token").first.wait_for()
    page.wait_for_timeout(500)  # images decode and the layout settles


def shoot(url: str, out: Path, examples: list[str], width: int, max_height: int,
          max_kb: int) -> list[tuple[Path, int]]:
    """Open the app in Chromium and write one PNG per tab; returns (file, bytes) per tab."""
    from playwright.sync_api import sync_playwright

    from apps.tabs import TABS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/
    from tests.helpers.app import open_tab  # one way to reach a tab, shared with the test

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator("#generate-prompt").wait_for()
            for tab in TABS:
                open_tab(page, tab.elem_id, tab.label)
                run_action(page, tab.elem_id, examples[0] if examples else "Cardiomegaly.")
                png = small_png(page.locator(".tabs").first.screenshot(), max_height, max_kb)
                path = out / f"{FILES.get(tab.elem_id, tab.elem_id)}.png"
                path.write_bytes(png)
                written.append((path, len(png)))
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the PNGs (docs/app)")
    ap.add_argument("--run", type=Path, default=None,
                    help="a quickstart run folder (default: the app's, outputs/quickstart/latest)")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--max_height", type=int, default=1500)
    ap.add_argument("--max_kb", type=int, default=150)
    ap.add_argument("--tiny", action="store_true", help="tiny seeded models (a check)")
    args = ap.parse_args(argv)

    if args.out is None:
        print("app_screenshots: nothing written; give --out docs/app to write the tab "
              "screenshots of docs/app.md")
        return 0
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("app_screenshots: no Chromium: apt-get install chromium")
        return 0
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="app_screenshots_") as tmp:
            return serve_and_shoot(args, tiny_config(20, None, Path(tmp)))
    return serve_and_shoot(args, app_config(args.run, 20, None, []))


def serve_and_shoot(args: argparse.Namespace, cfg) -> int:
    if missing := missing_models(cfg):
        print(f"app_screenshots: no {' or '.join(missing)} model: run `make quickstart` first "
              "(or give --run <a quickstart run folder>)")
        return 0
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from apps import build_app, launch_kwargs
    from apps.context import AppContext
    from apps.tabs.generate import limits

    t0 = time.perf_counter()
    ctx = AppContext.load(cfg)
    demo = None
    try:
        demo = build_app(cfg, ctx)
        demo.launch(prevent_thread_lock=True, **{**launch_kwargs(cfg), "quiet": True})
        args.out.mkdir(parents=True, exist_ok=True)
        written = shoot(demo.local_url, args.out, limits(ctx)["examples"], args.width,
                        args.max_height, args.max_kb)
    finally:
        if demo is not None:
            demo.close(verbose=False)
        ctx.close()
    for path, size in written:
        print(f"{path}: {size / 1024:.0f} KB")
    print(f"app_screenshots: {len(written)} tabs in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
