"""`biomed evaluate-lm`: the multiple-choice formats, option scoring, bootstrap CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biomed.config import compose
from biomed.errors import InputError
from biomed.lm import evaluate
from biomed.lm.evaluate import MCItem, load_mc, mc_metrics, score_options
from biomed.lm.model import load_for_inference
from biomed.stats import mean_ci
from tests.helpers.lm import FIXTURES, random_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("lm"))


def test_pubmedqa_official_layout():
    items = load_mc(FIXTURES / "pubmedqa.json")
    assert [it.id for it in items] == ["90000001", "90000002", "90000003", "90000004"]
    assert all(it.options == ["yes", "no", "maybe"] for it in items)
    assert [it.answer for it in items] == [0, 1, 2, 1]
    first = items[0].prompt
    assert first.startswith("Context: BACKGROUND: Pleural effusion is common")
    assert "\nMETHODS: We studied 120 adults" in first
    assert first.endswith("\nQuestion: Does drainage improve outcomes in adults with pleural "
                          "effusion?\nAnswer:")


def test_pubmedqa_hugging_face_layout_reads_the_same(tmp_path):
    official = json.loads((FIXTURES / "pubmedqa.json").read_text())
    rows = [{"pubid": int(k), "question": r["QUESTION"],
             "context": {"contexts": r["CONTEXTS"], "labels": r["LABELS"],
                         "meshes": r["MESHES"]},
             "long_answer": r["LONG_ANSWER"], "final_decision": r["final_decision"]}
            for k, r in official.items()]
    path = tmp_path / "pqa_labeled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_mc(path) == load_mc(FIXTURES / "pubmedqa.json")


def test_medqa_layouts():
    items = load_mc(FIXTURES / "medqa.jsonl")
    assert len(items) == 5 and all(len(it.options) == 4 for it in items)
    assert [it.answer for it in items] == [1, 0, 2, 3, 0]
    assert items[0].options[1] == "Pleural effusion"
    assert items[0].prompt.startswith("Question: A 64-year-old man") and \
        items[0].prompt.endswith("\nAnswer:")
    assert load_mc(FIXTURES / "medqa.jsonl", "medqa") == items


def test_medqa_option_lists_and_key_value_lists(tmp_path):
    rows = [{"question": "Q1?", "options": ["a", "b", "c"], "answer_idx": 2},
            {"question": "Q2?", "options": [{"key": "A", "value": "x"}, {"key": "B", "value": "y"}],
             "answer_idx": "B"},
            {"question": "Q3?", "options": ["p", "q"], "answer": "p"}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows))
    items = load_mc(path)
    assert [(it.options, it.answer) for it in items] == [(["a", "b", "c"], 2), (["x", "y"], 1),
                                                        (["p", "q"], 0)]


@pytest.mark.parametrize("content, message", [
    ('[{"question": "Q?", "options": {"A": "x"}, "answer_idx": "C"}]', "not one of the options"),
    ('{"1": {"QUESTION": "Q?", "final_decision": "perhaps"}}', "yes/no/maybe"),
    ('[{"text": "no question here"}]', "cannot tell the format"),
    ("[]", "no question records"),
    ("{not json", "neither a JSON document nor JSON lines"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as exc:
        load_mc(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def _loglik_alone(model, tok, prompt_ids, option_ids):
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(option_ids))


def test_batched_scoring_equals_scoring_each_sequence_alone(model_dir):
    model, tok, _ = load_for_inference(model_dir, "cpu", "float32")
    items = load_mc(FIXTURES / "medqa.jsonl")[:3] + load_mc(FIXTURES / "pubmedqa.json")[:2]
    scores = score_options(model, tok, items, context=64, batch_size=4)
    for it, sc in zip(items, scores, strict=True):
        p_ids = tok(it.prompt)["input_ids"]
        for opt, (s, n) in zip(it.options, sc, strict=True):
            o_ids = tok(" " + opt)["input_ids"]
            keep = p_ids[-(64 - len(o_ids)):]  # long prompts lose their beginning
            assert n == len(o_ids)
            assert s == pytest.approx(_loglik_alone(model, tok, keep, o_ids), abs=1e-3)


def test_raw_and_length_normalised_accuracy_and_bootstrap():
    items = [MCItem(str(i), "Q", ["short", "a much longer option"], 1) for i in range(4)]
    # raw sums favour the 1-token option; per token, the 5-token option wins
    scores = [[(-2.0, 1), (-5.0, 5)]] * 4
    m = mc_metrics(items, scores, n_boot=500)
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0 and m["chance"] == 0.5
    assert m["acc_norm_ci"] == (1.0, 1.0)
    correct = np.array([1, 0] * 50, dtype=float)
    lo, hi = mean_ci(correct, 2000, seed=3)
    assert lo < 0.5 < hi and hi - lo < 0.25 and (lo, hi) == mean_ci(correct, 2000, seed=3)
    lo_small, hi_small = mean_ci(correct[:10], 2000, seed=3)
    assert hi_small - lo_small > hi - lo  # fewer questions, wider interval


def test_evaluate_run_writes_metrics_and_per_question_records(tmp_path, model_dir):
    cfg = compose("evaluate_lm", [f"paths.run_dir={tmp_path}", f"model_dir={model_dir}",
                                  "val=false", "bootstrap=200", "device=cpu",
                                  f"mc=[{FIXTURES / 'pubmedqa.json'},{{path: "
                                  f"{FIXTURES / 'medqa.jsonl'}, name: usmle}}]"])
    m = evaluate.run(cfg)
    assert m["pubmedqa_n"] == 4 and m["usmle_n"] == 5 and m["usmle_chance"] == 0.25
    for name in ("pubmedqa", "usmle"):
        lo, hi = m[f"{name}_acc_ci"]
        assert 0 <= lo <= m[f"{name}_acc"] <= hi <= 1
    rows = [json.loads(ln) for ln in (tmp_path / "mc_usmle.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and len(rows[0]["loglik"]) == 4 and rows[0]["answer"] == 1
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["key_metrics"] == ["pubmedqa_acc", "pubmedqa_acc_norm", "usmle_acc",
                                    "usmle_acc_norm"]
