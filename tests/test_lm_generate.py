"""`biomed generate-text`: batched, KV-cached sampling that matches one-at-a-time decoding."""

from __future__ import annotations

import json

import pytest
import torch

from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.lm import generate as gen
from biomed.lm.model import load_for_inference
from tests.helpers.lm import FIXTURES, random_model_dir

PROMPTS = ["Drainage for pleural effusion", "BACKGROUND: Cardiomegaly is common in older",
           "Antibiotics"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    model, tok, _ = load_for_inference(model_dir, "cpu", "float32")
    return model, tok


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(loaded):
    model, tok = loaded
    batched = gen.generate(model, tok, PROMPTS, max_new_tokens=12, temperature=0.0,
                           batch_size=3)
    alone = [gen.generate(model, tok, [p], max_new_tokens=12, temperature=0.0)[0]
             for p in PROMPTS]
    assert [s["text"] for s in batched] == [s["text"] for s in alone]
    assert [s["prompt"] for s in batched] == PROMPTS


def test_kv_cache_decoding_equals_full_recomputation(loaded):
    model, tok = loaded
    enc = tok(PROMPTS[:1], return_tensors="pt")
    common = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        cached = model.generate(**enc, use_cache=True, **common)
        recomputed = model.generate(**enc, use_cache=False, **common)
    assert torch.equal(cached, recomputed)
    ours = gen.generate(model, tok, PROMPTS[:1], max_new_tokens=10, temperature=0.0)[0]
    assert ours["text"] == tok.decode(cached[0, enc["input_ids"].shape[1]:])


def test_sampling_is_reproducible_by_seed(loaded):
    model, tok = loaded

    def texts(seed):
        return [s["text"] for s in gen.generate(model, tok, PROMPTS, max_new_tokens=8,
                                                temperature=1.0, top_p=0.9, num_samples=2,
                                                seed=seed)]

    first = texts(1)
    assert len(first) == 6 and texts(1) == first and texts(2) != first


def test_long_prompts_keep_their_end_and_limits_are_checked(loaded):
    model, tok = loaded
    long = " ".join(["effusion"] * 200) + " Drainage"
    s = gen.generate(model, tok, [long], max_new_tokens=4, temperature=0.0)[0]
    assert s["new_tokens"] <= 4
    with pytest.raises(ConfigError, match="no room for the prompt"):
        gen.generate(model, tok, ["x"], max_new_tokens=64)
    with pytest.raises(ConfigError, match="top_p"):
        gen.generate(model, tok, ["x"], top_p=0.0)


def test_prompts_file_lines_and_json_lines(tmp_path):
    assert gen.read_prompts(None, str(FIXTURES / "prompts.txt")) == [
        "Drainage for pleural effusion", "BACKGROUND: Cardiomegaly is common in", "Antibiotics"]
    assert gen.read_prompts("hello", None) == ["hello"]
    with pytest.raises(InputError, match="no such prompts file"):
        gen.read_prompts(None, str(tmp_path / "none.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(InputError, match="prompt"):
        gen.read_prompts(None, str(bad))


def test_generate_text_run_writes_samples_jsonl(tmp_path, model_dir):
    cfg = compose("generate_text", [f"paths.run_dir={tmp_path}", f"model_dir={model_dir}",
                                    f"prompts_file={FIXTURES / 'prompts.txt'}", "num_samples=2",
                                    "max_new_tokens=6", "seed=5", "device=cpu"])
    m = gen.run(cfg)
    rows = [json.loads(ln) for ln in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert m["samples"] == len(rows) == 6 and m["prompts"] == 3
    assert {r["sample"] for r in rows} == {0, 1}
    assert all(r["seed"] == 5 and r["max_new_tokens"] == 6 and r["model"] == str(model_dir)
               for r in rows)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
