"""Report assistant tab (apps.tabs.report) on the tiny random GPT-2 of tests/helpers/lm.py:
the text is continued with the sampling controls, every value is checked, the page says which
model is loaded and what it was trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from apps.common import UserInputError
from apps.context import AppContext
from apps.tabs import report
from tests.helpers.lm import random_model_dir

PROMPT = "FINDINGS: Pleural effusion is common in adults"


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> tuple:
    from biomed.pretrained import load_lm

    folder = random_model_dir(tmp_path_factory.mktemp("lm"), context=64)
    model, tokenizer, _ = load_lm(folder, "cpu")
    return model, tokenizer, folder


def _ctx(tmp_path: Path, lm: tuple | None, cfg: dict | None = None) -> AppContext:
    sources = {"lm": str(lm[2])} if lm else {}
    missing = {} if lm else {"lm": "make quickstart (or: biomed train-lm)"}
    return AppContext(cfg=OmegaConf.create(cfg or {}), lm=(lm[0], lm[1]) if lm else None,
                      sources=sources, missing=missing, work_dir=tmp_path / "work")


def test_continues_the_text(tmp_path: Path, lm: tuple) -> None:
    ctx = _ctx(tmp_path, lm)
    out = report.continue_text(ctx, PROMPT, max_new_tokens=12, temperature=0.8, top_p=0.95,
                               seed=3)
    assert out["prompt"] == PROMPT and out["text"].startswith(PROMPT)
    assert 1 <= out["new_tokens"] <= 12 or out["finished"]
    assert out["continuation"] and out["text"].endswith(out["continuation"])
    again = report.continue_text(ctx, PROMPT, 12, 0.8, 0.95, 3)
    assert again["text"] == out["text"]  # same seed and settings: same text
    others = {report.continue_text(ctx, PROMPT, 12, 1.0, 1.0, s)["continuation"]
              for s in range(4)}
    assert len(others) > 1  # the seed changes the sample
    greedy = [report.continue_text(ctx, PROMPT, 8, 0.0, 1.0, s)["text"] for s in (0, 1)]
    assert greedy[0] == greedy[1]  # temperature 0: the most likely tokens, whatever the seed


def test_the_sections_of_a_report_stay_on_their_lines(tmp_path: Path, lm: tuple) -> None:
    ctx = _ctx(tmp_path, lm)
    typed = "FINDINGS:\n\n\n  The heart is   normal.\x07\n\nIMPRESSION:\n"
    out = report.continue_text(ctx, typed, 8, 0.0, 1.0, 0)
    assert out["prompt"] == "FINDINGS:\n\nThe heart is normal.\n\nIMPRESSION:"
    assert out["text"].startswith(out["prompt"])
    from biomed.lm.generate import generate

    model, tokenizer, _ = lm
    # the model reads the line breaks: the same continuation as generate on the kept text
    direct = generate(model, tokenizer, [out["prompt"]], max_new_tokens=8, temperature=0.0,
                      top_p=1.0, num_samples=1, batch_size=1, seed=0)[0]["text"]
    assert out["continuation"] == direct


@pytest.mark.parametrize("args, named", [
    (("", 8, 0.8, 0.9, 0), "report text"),
    (("x" * 1001, 8, 0.8, 0.9, 0), "report text"),
    ((PROMPT, 0, 0.8, 0.9, 0), "max new tokens"),
    ((PROMPT, 64, 0.8, 0.9, 0), "max new tokens"),  # no room left in a 64-token context
    ((PROMPT, 8, -0.1, 0.9, 0), "temperature"),
    ((PROMPT, 8, 0.8, 0.0, 0), "top-p"),
    ((PROMPT, 8, 0.8, 0.9, -1), "seed"),
    ((PROMPT, 8, 0.8, 0.9, 1.5), "seed"),
    ((PROMPT, "8; rm -rf /", 0.8, 0.9, 0), "max new tokens"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, lm: tuple, args: tuple,
                                        named: str) -> None:
    with pytest.raises(UserInputError) as e:
        report.continue_text(_ctx(tmp_path, lm), *args)
    assert str(e.value).startswith(named) and "\n" not in str(e.value)


def test_the_page_says_which_model_and_how_small(tmp_path: Path, lm: tuple) -> None:
    from biomed.lm.model import count_parameters

    info = report.model_info(_ctx(tmp_path, lm))
    params = count_parameters(lm[0])["total"]
    assert f"{params / 1e3:.0f} k parameters" in info and "context 64 tokens" in info
    assert "PubMed abstracts" in info and "not on radiology reports" in info
    assert "lm.pretrained=" in info and "Not for diagnosis" in info
    given = report.model_info(_ctx(tmp_path, lm, {"lm": {"pretrained": str(lm[2])}}))
    assert "PubMed abstracts" not in given and "given with `lm.pretrained=`" in given
    assert report.token_limit(_ctx(tmp_path, lm)) == 63  # below the 64-token context


def test_without_a_model_the_tab_names_the_command(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, None)
    assert "biomed train-lm" in report.model_info(ctx)
    with pytest.raises(UserInputError, match="biomed train-lm"):
        report.continue_text(ctx, PROMPT)


def test_the_page_has_the_contracts_ids(tmp_path: Path, lm: tuple) -> None:
    import gradio as gr

    with gr.Blocks() as demo, gr.Tab("Report assistant", elem_id="tab-report"):
        report.build(_ctx(tmp_path, lm))
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"tab-report", "report-input", "report-button", "report-output",
            "report-model-info"} <= ids
    assert "report_continue" in [d.get("api_name") for d in config["dependencies"]]


def test_a_text_longer_than_the_context_says_what_the_model_read(tmp_path: Path,
                                                                   lm: tuple) -> None:
    ctx = _ctx(tmp_path, lm)
    short = report.continue_text(ctx, PROMPT, 8, 0.0, 1.0, 0)
    assert short["read_tokens"] == short["prompt_tokens"]  # all of it
    assert "read only" not in report._stats(short)
    long_text = " ".join([PROMPT] * 20)[:990]  # far over the 64-token context
    out = report.continue_text(ctx, long_text, 8, 0.0, 1.0, 0)
    assert out["read_tokens"] == 64 - 8 < out["prompt_tokens"]
    assert f"read only the first {64 - 8} of your {out['prompt_tokens']} tokens" in \
        report._stats(out) or f"read only the last {64 - 8}" in report._stats(out)
