"""`biomed train-lm` end to end on tiny models: the shipped configs, shrunk to seconds."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biomed import sources
from biomed.config import compose
from biomed.engine import list_checkpoints, read_log
from biomed.lm import train
from tests.helpers.lm import PUBMED_FIXTURES, TINY_LM, make_corpus, train_cfg

ROOT = Path(__file__).resolve().parent.parent
LEARN = ["optim.optimizer.lr=1e-2", "optim.schedule.warmup_steps=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One lm_cache for the module: the tokenizer and token files are built once."""
    return tmp_path_factory.mktemp("lm_cache")


def test_train_lm_learns_and_writes_a_loadable_model_folder(tmp_path, corpus, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    cfg = train_cfg(tmp_path, corpus, "trainer.max_steps=40", "trainer.eval_every=20", *LEARN,
                    cache=cache)
    m = train.run(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["key_metrics"][:3] == [
        "val_ppl", "unigram_ppl", "ppl_ratio"]
    assert m["steps"] == 40 and m["val_ppl"] < m["unigram_ppl"]  # it learned the corpus
    assert m["ppl_ratio"] == pytest.approx(m["unigram_ppl"] / m["val_ppl"])
    assert m["val_tokens_evaluated"] > 0 and m["tokens_per_s"] > 0 and m["val_bits_per_byte"] > 0
    rows = read_log(run)
    assert [r["step"] for r in rows if "val_loss" in r] == [20, 40]
    assert all("tokens_per_s" in r and "time_s" in r for r in rows if "loss" in r)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])

    model_dir = run / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # nothing pickled
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert isinstance(model, GPT2LMHeadModel) and model.config._attn_implementation == "sdpa"
    assert model.config.n_layer == 2 and model.config.vocab_size == len(tok) == 300
    assert tok.model_max_length == 32
    card = (model_dir / "README.md").read_text()
    for phrase in ("Courtesy of the U.S. National Library of Medicine", "Research only",
                   "Not for clinical use", "unigram_ppl"):
        assert phrase in card
    # the saved weights reproduce the run's validation perplexity
    from biomed.lm.model import token_nll
    from biomed.lm.tokens import TokenChunks, load_tokens

    val = TokenChunks(load_tokens(m["token_dir"], "val"), 32)
    nll, n = token_nll(model.eval(), val, 8, "cpu")
    assert math.exp(nll / n) == pytest.approx(m["val_ppl"], rel=1e-4)


def test_time_budget_stops_cleanly_with_final_eval_and_checkpoint(tmp_path, corpus, cache):
    cfg = train_cfg(tmp_path, corpus, "trainer.max_steps=100000", "trainer.max_time_s=1.5",
                    "trainer.checkpoint_every=100000", *LEARN, cache=cache)
    m = train.run(cfg)
    assert 1.5 <= m["train_seconds"] < 10 and 0 < m["steps"] < 100000
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == [f"checkpoint-{m['steps']}"]
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state["train_seconds"] == pytest.approx(m["train_seconds"])
    rows = read_log(tmp_path / "run")
    assert rows[-1]["step"] == m["steps"] and "val_loss" in rows[-1]
    last_lr = [r["lr"] for r in rows if "lr" in r][-1]
    assert last_lr == pytest.approx(1e-2 * 0.1, rel=0.05)  # the cosine reached its floor by time


def test_sophia_trains_and_resumes_exactly(tmp_path, corpus, cache):
    common = ["optim=sophia", "optim.hessian_every=2", "trainer.max_steps=6",
              "trainer.checkpoint_every=3", "optim.optimizer.lr=3e-3",
              "optim.schedule.warmup_steps=2"]
    full = train.run(train_cfg(tmp_path, corpus, *common, cache=cache))
    assert full["optimizer"] == "SophiaG" and 0 <= full["sophia_unclipped"] <= 1
    run = tmp_path / "run"
    opt_state = torch.load(run / "checkpoint-6" / "optimizer.pt", weights_only=True)
    assert any(float(s["hessian"].abs().sum()) > 0 for s in opt_state["state"].values())
    full_losses = [r["loss"] for r in read_log(run) if "loss" in r]

    # as if killed after the step-3 checkpoint: resume and redo steps 4-6
    shutil.rmtree(run / "checkpoint-6")
    resumed = train.run(train_cfg(tmp_path, corpus, *common, "trainer.resume=latest",
                                  cache=cache))
    resumed_losses = [r["loss"] for r in read_log(run) if "loss" in r]
    assert resumed_losses == full_losses  # Hessian estimates and their sampled labels included
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)


def test_fine_tunes_a_local_hf_folder_of_another_architecture(tmp_path, corpus, cache):
    """`lm.pretrained=` takes any causal LM folder with its own tokenizer (here a tiny Llama)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from biomed.lm.tokenizer import train_or_reuse
    from biomed.lm.tokens import file_sha256

    tok = train_or_reuse(corpus, file_sha256(corpus), tmp_path, vocab_size=300,
                         min_frequency=2, fractions=(0.9, 0.1))
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    folder = tmp_path / "downloaded-llama"
    llama.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    m = train.run(train_cfg(tmp_path, corpus, f"lm.pretrained={folder}", "lm.context=48",
                            "trainer.max_steps=3", cache=cache))
    assert m["context"] == 48 and m["vocab_size"] == len(tok)
    tuned = AutoModelForCausalLM.from_pretrained(m["model_dir"])
    assert type(tuned).__name__ == "LlamaForCausalLM"
    assert "Fine-tuned from the local model folder" in (Path(m["model_dir"]) / "README.md"
                                                       ).read_text()


def test_data_pubmed_path_extracts_the_xml_files(tmp_path):
    files = f"data.files=[{PUBMED_FIXTURES / 'baseline.xml'},{PUBMED_FIXTURES / 'update.xml'}]"
    cfg = compose("train_lm", [f"paths.run_dir={tmp_path / 'run'}", f"lm_cache={tmp_path}",
                               files, *TINY_LM, "val_fraction=0.5", "lm.context=8",
                               "trainer.batch_size=2", "trainer.max_steps=2"])
    m = train.run(cfg)
    assert m["steps"] == 2 and Path(m["corpus"]).is_relative_to(tmp_path / "corpus")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert [Path(d["path"]).name for d in prov["data_files"]] == ["baseline.xml", "update.xml"]


def test_too_small_a_corpus_is_a_clear_error(tmp_path):
    from biomed.errors import BiomedError

    tiny = make_corpus(tmp_path / "c.jsonl", n_docs=12)
    with pytest.raises(BiomedError, match="too small|split is empty"):
        train.run(train_cfg(tmp_path, tiny, "trainer.batch_size=64"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def test_shipped_presets_compose_with_their_trainers():
    for lm, trainer in (("tiny", "cpu"), ("gpt2_124m", "gpu"), ("biomedlm_2p7b", "fsdp")):
        cfg = compose("train_lm", [f"lm={lm}", f"trainer={trainer}", "paths.run_dir=/x"])
        assert cfg.trainer.fused_optimizer and cfg.lm.name == lm
    big = compose("train_lm", ["lm=biomedlm_2p7b", "trainer=fsdp", "paths.run_dir=/x"])
    assert (big.lm.n_layer, big.lm.n_embd, big.lm.n_head, big.lm.context,
            big.lm.tokenizer.vocab_size) == (32, 2560, 20, 1024, 28896)
    assert big.trainer.distributed == "fsdp"


def test_the_tiny_preset_is_the_sized_cpu_default():
    cfg = compose("train_lm", ["paths.run_dir=/x"])
    assert cfg.lm.name == "tiny" and cfg.trainer.max_time_s == 300
    assert cfg.trainer.mixed_precision == "auto" and cfg.lm.tokenizer.vocab_size == 8192
    from transformers import GPT2LMHeadModel

    from biomed.lm.model import VocabSpec, count_parameters, gpt2_config

    n = count_parameters(GPT2LMHeadModel(gpt2_config(cfg.lm, VocabSpec(8192))))
    assert 1.5e6 < n["total"] < 2.5e6  # the size argued in conf/lm/tiny.yaml


def test_cli_train_evaluate_generate_chain(tmp_path, corpus, cache, monkeypatch, capsys):
    """The three commands through `biomed`, each on the previous one's run folder (train-lm in
    a fresh process, the other two through the same dispatcher in this one)."""
    from biomed.cli import main

    outputs = tmp_path / "outputs"
    env = {**os.environ, "BIOMED_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "biomed", "train-lm", f"corpus={corpus}",
                           f"lm_cache={cache}", *TINY_LM, "trainer.max_steps=3"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((outputs / "train-lm").iterdir())
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "model" / "README.md").is_file()

    monkeypatch.setenv("BIOMED_OUTPUTS", str(outputs))
    fixtures = ROOT / "tests" / "fixtures" / "lm"
    assert main(["evaluate-lm", f"model_dir={run}", f"corpus={corpus}", f"lm_cache={cache}",
                 "val_fraction=0.1", f"mc=[{fixtures / 'medqa.jsonl'}]", "bootstrap=100"]) == 0
    ev = json.loads(next((outputs / "evaluate-lm").iterdir()).joinpath(
        "metrics.json").read_text())
    assert ev["status"] == "completed" and ev["medqa_n"] == 5 and "val_ppl" in ev
    assert main(["generate-text", f"model_dir={run}", "prompt=Drainage for",
                 "max_new_tokens=5"]) == 0
    gen = next((outputs / "generate-text").iterdir())
    assert json.loads((gen / "samples.jsonl").read_text().splitlines()[0])["prompt"] == \
        "Drainage for"
    assert "generate-text: 1 sample(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["generate-text", f"model_dir={tmp_path / 'nope'}", "hydra.run.dir=" +
              str(tmp_path / "bad")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "not a model folder" in err and "Traceback" not in err


needs_pubmed = pytest.mark.skipif(sources.status("pubmed") != "cached",
                                  reason="run `biomed data fetch pubmed` first")


@pytest.mark.slow
@pytest.mark.data
@needs_pubmed
def test_real_pubmed_smoke(tmp_path):
    """The embedded PubMed files through the default config, a few steps (extraction ~20 s)."""
    cfg = compose("train_lm", [f"paths.run_dir={tmp_path / 'run'}", f"lm_cache={tmp_path}",
                               "max_docs=3000", "lm.tokenizer.vocab_size=2048",
                               "trainer.max_time_s=null", "trainer.max_steps=5",
                               "trainer.progress=false"])
    m = train.run(cfg)
    assert m["steps"] == 5 and m["unigram_ppl"] > 100


def test_quickstart_lm_stage_trains_evaluates_samples_and_resumes(tmp_path, cache):
    from biomed import quickstart

    make_corpus(tmp_path / "corpus" / "pubmed.jsonl")
    shrink = [f"lm_stage.{o}" for o in TINY_LM] + [
        "lm_stage.trainer.max_steps=5", f"lm_stage.lm_cache={cache}", "lm_stage.max_new_tokens=8"]
    cfg = compose("quickstart", [f"paths.run_dir={tmp_path}", "stages=[lm]", *shrink])
    m = quickstart.run(cfg)
    assert m["lm_steps"] == 5 and m["lm_val_ppl"] > 0 and m["lm_unigram_ppl"] > 0
    # reloaded from disk in fp32, the model reproduces the training run's perplexity
    assert m["lm_val_ppl_reloaded_fp32"] == pytest.approx(m["lm_val_ppl"], rel=1e-4)
    samples = [json.loads(ln) for ln in (tmp_path / "lm" / "samples.jsonl").read_text()
               .splitlines()]
    assert [s["prompt"] for s in samples] == list(cfg.lm_stage.prompts)
    assert json.loads((tmp_path / "metrics.json").read_text())["key_metrics"] == [
        "lm_val_ppl", "lm_ppl_ratio"]
    assert (tmp_path / "lm" / "model" / "model.safetensors").is_file()
    again = quickstart.run(cfg)  # done: skipped, same numbers
    assert again["lm_val_ppl"] == m["lm_val_ppl"]


def test_quickstart_lm_stage_needs_the_corpus_stage(tmp_path):
    from biomed import quickstart
    from biomed.errors import ConfigError

    cfg = compose("quickstart", [f"paths.run_dir={tmp_path}", "stages=[lm]"])
    with pytest.raises(ConfigError, match="corpus stage"):
        quickstart.run(cfg)


def test_tiny_tunes_adamw_betas_and_leaves_sophia_its_own():
    """lm=tiny's beta2 0.99 reaches AdamW (train-lm and the quickstart's LM stage), while
    optim=sophia keeps the paper's (0.965, 0.99) and other models keep AdamW's 0.95."""
    from hydra.utils import instantiate

    def betas(node):
        return list(instantiate(node.optimizer).keywords["betas"])

    assert betas(compose("train_lm").optim) == [0.9, 0.99]
    assert betas(compose("quickstart").lm_stage.optim) == [0.9, 0.99]
    sophia = compose("train_lm", ["optim=sophia"]).optim
    assert instantiate(sophia.optimizer).func.__name__ == "SophiaG"
    assert betas(sophia) == [0.965, 0.99]
    assert betas(compose("train_lm", ["lm=gpt2_124m"]).optim) == [0.9, 0.95]
    assert betas(compose("train_classifier").optim) == [0.9, 0.95]
    assert betas(compose("train_lm", ["optim.optimizer.betas=[0.8,0.9]"]).optim) == [0.8, 0.9]
