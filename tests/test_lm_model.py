"""The model module: GPT-2 from the lm presets, parameter and FLOP counts, model folders."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from biomed.errors import ConfigError, InputError
from biomed.lm import model as lm_model
from biomed.lm.train import make_model

LM = {"context": 16, "n_layer": 2, "n_embd": 32, "n_head": 4}


def test_gpt2_with_sdpa_tied_embeddings_and_special_ids():
    m = lm_model.build_model(OmegaConf.create(LM), lm_model.VocabSpec(300))
    assert type(m).__name__ == "GPT2LMHeadModel" and m.config._attn_implementation == "sdpa"
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    assert (m.config.vocab_size, m.config.n_positions, m.config.pad_token_id) == (300, 16, 1)
    with pytest.raises(ConfigError, match="multiple of n_head"):
        lm_model.gpt2_config({**LM, "n_head": 5}, lm_model.VocabSpec(300))


def test_parameter_and_flop_counts_follow_the_formulas():
    m = lm_model.build_model(OmegaConf.create(LM), lm_model.VocabSpec(300))
    d, n_layer, vocab, ctx = 32, 2, 300, 16
    per_layer = 12 * d * d + 13 * d  # attention and MLP matrices, biases, two LayerNorms
    counts = lm_model.count_parameters(m)
    assert counts["non_embedding"] == n_layer * per_layer + 2 * d  # + the final LayerNorm
    assert counts["total"] == counts["non_embedding"] + vocab * d + ctx * d
    assert lm_model.flops_per_token(m, ctx) == 6 * (counts["non_embedding"] + vocab * d) \
        + 6 * n_layer * ctx * d


def test_vocabulary_padding_for_tensor_cores():
    lm = OmegaConf.create({**LM, "pad_vocab_multiple": 64, "tokenizer": {"vocab_size": 300}})
    assert make_model(lm, lm_model.VocabSpec(300)).config.vocab_size == 320
    assert make_model(OmegaConf.create(LM), lm_model.VocabSpec(300)).config.vocab_size == 300


def test_model_dir_from_run_folder_or_model_folder(tmp_path):
    from tests.helpers.lm import random_model_dir

    folder = random_model_dir(tmp_path, context=16)
    assert lm_model.resolve_model_dir(tmp_path) == folder == lm_model.resolve_model_dir(folder)
    with pytest.raises(InputError, match="not a model folder"):
        lm_model.resolve_model_dir(tmp_path / "corpus.jsonl")
    loaded = lm_model.load_pretrained(folder)
    assert lm_model.context_length(loaded) == 16 and lm_model.context_length(loaded, 8) == 8
    assert next(loaded.parameters()).dtype == torch.float32


def test_model_card_states_data_terms_and_intended_use():
    card = lm_model.model_card(
        name="tiny", params={"total": 10, "non_embedding": 4},
        config={"n_layer": 2, "n_embd": 8, "n_head": 2, "n_positions": 16, "vocab_size": 300},
        data={"docs": 5, "train_tokens": 100, "val_tokens": 10, "files": [
            {"path": "/c/pubmed20n0014.xml.gz", "sha256": "ab12"}]},
        training={"steps": 3, "tokens": 96, "seconds": 1.0}, metrics={"val_ppl": 12.5})
    assert card.startswith("---\nlicense: other")
    for text in ("pubmed20n0014.xml.gz", "ab12", "Courtesy of the U.S. National Library of "
                 "Medicine", "Research only", "Not for clinical use", "| val_ppl | 12.5 |"):
        assert text in card


@pytest.mark.parametrize(("chunk", "gemm"), [(7, "mkl"), (1024, "mkl"), (7, "onednn"),
                                           (1024, "auto")])
def test_fused_linear_cross_entropy_matches_the_plain_loss_and_gradients(chunk, gemm):
    from biomed.engine import cpu_gemm
    from biomed.lm.fused_loss import linear_cross_entropy

    if gemm == "onednn" and not cpu_gemm.available():
        pytest.skip("no oneDNN linear op in this torch build")

    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    t = torch.randint(0, 300, (50,))
    t[:10] = 5  # a target repeated within and across chunks: its weight row's gradient adds up
    plain = torch.nn.functional.cross_entropy(h @ w.T, t)
    gh, gw = torch.autograd.grad(2.0 * plain, (h, w))
    fused = linear_cross_entropy(h, w, t, chunk=chunk, gemm=gemm)
    fh, fw = torch.autograd.grad(2.0 * fused, (h, w))
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(fh, gh, atol=1e-5) and torch.allclose(fw, gw, atol=1e-5)


def test_lm_loss_fused_path_equals_the_logits_path():
    from omegaconf import OmegaConf

    from biomed.lm.model import VocabSpec, build_model
    from biomed.lm.train import lm_loss

    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"context": 16, "n_layer": 2, "n_embd": 32,
                                          "n_head": 2}), VocabSpec(200))
    batch = torch.randint(0, 200, (3, 17))
    plain = lm_loss(model, batch, fused=False)
    plain.backward()
    g_plain = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    fused = lm_loss(model, batch)
    fused.backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, g_plain, atol=1e-5)
