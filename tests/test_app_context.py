"""The teaching app's context and assembly (apps/__init__.py, apps/context.py, `biomed app`):
models load once or are named missing with the command that makes them, the app builds with
no model at all and with tiny ones, and it is served on this machine only by default."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from apps import build_app, header_markdown, launch_kwargs  # noqa: E402
from apps.context import KINDS, MAKES, AppContext, gradio_temp_dir, model_folder  # noqa: E402
from apps.tabs import TABS  # noqa: E402
from biomed.config import compose  # noqa: E402

NO_MODELS = [f"models.{k}=null" for k in KINDS]


@pytest.fixture(autouse=True)
def _restore_gradio_env(monkeypatch):
    """build_app points gradio at the context's private folder: put the variables back."""
    for name in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED"):
        monkeypatch.setenv(name, os.environ.get(name, ""))


def app_cfg(tmp_path: Path, *overrides: str):
    return compose("app", [f"paths.run_dir={tmp_path / 'run'}", "warmup=false", *overrides])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny pipeline, classifier, CLIP and LM, each as its training command saves it."""
    from tests.helpers.classifier import tiny_classifier_dir
    from tests.helpers.clip import tiny_clip_dir
    from tests.helpers.diffusion import tiny_sd_folder
    from tests.helpers.lm import random_model_dir

    root = tmp_path_factory.mktemp("models")
    return {"diffusion": tiny_sd_folder(root / "pipeline"),
            "classifier": tiny_classifier_dir(root / "clf", ["cardiomegaly", "effusion"]),
            "clip": tiny_clip_dir(root / "clip_run"),
            "lm": random_model_dir(root / "lm")}


def _config(demo) -> dict:
    return demo.get_config_file()


def _elem_ids(demo) -> list[str]:
    return [c["props"]["elem_id"] for c in _config(demo)["components"]
            if c.get("props", {}).get("elem_id")]


def _api_names(demo) -> set[str]:
    return {d.get("api_name") for d in _config(demo)["dependencies"]}


def test_launch_kwargs_default_to_this_machine_only(tmp_path):
    kw = launch_kwargs(app_cfg(tmp_path))
    assert kw["server_name"] == "127.0.0.1" and kw["share"] is False
    assert kw["allowed_paths"] == [] and kw["max_file_size"] == "20mb"
    assert kw["server_port"] == 7860 and kw["show_error"] is False and kw["ssr_mode"] is False
    kw = launch_kwargs(app_cfg(tmp_path, "server_port=7861", "share=true",
                               "max_file_size=5mb"))
    assert (kw["server_port"], kw["share"], kw["max_file_size"]) == (7861, True, "5mb")


def test_missing_and_broken_folders_leave_the_model_out_and_name_the_command(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    cfg = app_cfg(tmp_path, f"models.diffusion={broken}", f"models.classifier={tmp_path}/nope",
                  "models.clip=null", "models.lm=null")
    ctx = AppContext.load(cfg)
    try:
        assert ctx.pipeline is None and ctx.classifier is None and ctx.clip is None
        assert set(ctx.missing) >= {"diffusion", "classifier", "clip"}
        assert ctx.missing["diffusion"] == MAKES["diffusion"]
        errors = ctx.extras["load_errors"]
        assert "no such folder" in errors["classifier"] and errors["clip"] == "not configured"
        assert errors["diffusion"] and "broken" in errors["diffusion"]
        header = header_markdown(ctx)
        assert "Not for diagnosis" in header and "phantom or public data" in header
        for kind in ("diffusion", "classifier", "clip"):
            assert MAKES[kind] in header
        assert "biomed train-diffusion" in header and "biomed train-classifier" in header
        mode = stat.S_IMODE(ctx.work_dir.stat().st_mode)
        assert mode == 0o700
    finally:
        ctx.close()
    assert not ctx.work_dir.exists()


def test_lm_pretrained_overrides_the_lm_folder(tmp_path):
    cfg = app_cfg(tmp_path, "models.lm=/a", "lm.pretrained=/b")
    assert model_folder(cfg, "lm") == "/b" and model_folder(cfg, "clip").endswith(
        "quickstart/latest/clip")
    assert model_folder(app_cfg(tmp_path, "models.lm=null"), "lm") is None


def test_the_app_builds_with_no_model_at_all(tmp_path):
    ctx = AppContext.load(app_cfg(tmp_path, *NO_MODELS))
    try:
        assert set(ctx.missing) == set(KINDS)
        demo = build_app(ctx.cfg, ctx)
        assert os.environ["GRADIO_TEMP_DIR"] == str(gradio_temp_dir(ctx))
        assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
        ids = _elem_ids(demo)
        tab_ids = [i for i in ids if i.startswith("tab-")]
        assert tab_ids == [t.elem_id for t in TABS] == [
            "tab-generate", "tab-compare", "tab-quiz", "tab-read", "tab-report"]
        for key in ("generate-prompt", "generate-button", "generate-gallery", "generate-banner",
                    "generate-provenance", "compare-prompt-a", "compare-prompt-b",
                    "compare-button", "compare-model-a", "compare-model-b", "compare-diff",
                    "compare-phantom-a", "compare-phantom-b", "quiz-image", "quiz-choices",
                    "quiz-submit", "quiz-score"):
            assert key in ids, key
        assert {"generate", "compare", "quiz_new", "quiz_answer"} <= _api_names(demo)
        labels = [c["props"].get("label") for c in _config(demo)["components"]
                  if c["type"] in ("image", "gallery")]
        assert labels and all(labels), labels  # every image has its text
        button = next(c for c in _config(demo)["components"]
                      if c.get("props", {}).get("elem_id") == "generate-button")
        assert button["props"]["interactive"] is False  # nothing to generate with
        header = next(c for c in _config(demo)["components"]
                      if c.get("props", {}).get("elem_id") == "app-header")["props"]["value"]
        assert "Not for diagnosis" in header and "make quickstart" in header
        assert demo.delete_cache == (300, 900)
    finally:
        ctx.close()


def test_the_app_builds_with_tiny_models_and_warms_them_up(tmp_path, tiny_models):
    cfg = app_cfg(tmp_path, *(f"models.{k}={v}" for k, v in tiny_models.items()),
                  "generate.steps=2", "compare.steps=2")
    ctx = AppContext.load(cfg)
    try:
        assert ctx.missing == {} and set(ctx.sources) == set(KINDS)
        assert ctx.pipeline is not None and ctx.classifier is not None
        assert ctx.clip is not None and len(ctx.lm) == 2
        assert ctx.warm_up() == dict.fromkeys(KINDS, "ok")
        demo = build_app(cfg, ctx)
        assert "generate" in _api_names(demo)
        header = header_markdown(ctx)
        assert "missing" not in header and ctx.pipeline.model_id in header
        assert str(tiny_models["lm"].parent) not in header  # no full server paths
    finally:
        ctx.close()


def test_one_lock_per_model_kind(tmp_path):
    ctx = AppContext.load(app_cfg(tmp_path, *NO_MODELS))
    try:
        assert ctx.lock("diffusion") is ctx.lock("diffusion")
        assert ctx.lock("diffusion") is not ctx.lock("lm")
    finally:
        ctx.close()


def test_biomed_app_launches_prints_the_url_and_cleans_up(tmp_path, monkeypatch, capsys):
    """`biomed app`'s run(cfg): built, launched on 127.0.0.1, the URL printed; the private
    folder is gone when the server stops (block_thread returns at once here)."""
    import socket

    import gradio as gr

    from biomed import app_command
    from biomed.cli import EXPERIMENTS

    assert EXPERIMENTS["app"][0] == "biomed.app_command"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made: list[AppContext] = []
    real_load = AppContext.load.__func__
    monkeypatch.setattr(AppContext, "load", classmethod(
        lambda cls, cfg: made.append(real_load(cls, cfg)) or made[-1]))
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    out = app_command.run(app_cfg(tmp_path, *NO_MODELS, f"server_port={port}"))
    assert out["url"] == f"http://127.0.0.1:{port}/"
    assert f"serving on http://127.0.0.1:{port}/" in capsys.readouterr().out
    assert made and not made[0].work_dir.exists()
