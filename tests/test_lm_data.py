"""The LM's data path: corpus extraction cache, BPE tokenizer (train split only), token files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomed.errors import DataNotFetched, InputError
from biomed.lm import tokens as tok_data
from biomed.lm.tokenizer import (
    EOS,
    PAD,
    document_text,
    fingerprint,
    iter_corpus,
    split_of,
    train_or_reuse,
)
from tests.helpers.lm import PUBMED_FIXTURES, make_corpus

FRACTIONS = (0.9, 0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", n_docs=300)
    # a word that only validation abstracts use: the tokenizer must not learn it
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    for r in recs:
        if split_of(r["pmid"], FRACTIONS) == "val":
            r["abstract"] += " Zyqxwv zyqxwv zyqxwv zyqxwv."
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    tok = train_or_reuse(corpus, tok_data.file_sha256(corpus), cache, vocab_size=320,
                         min_frequency=2, fractions=FRACTIONS)
    return tok, cache


def test_tokenizer_is_byte_level_bpe_with_special_tokens_loadable_by_autotokenizer(tokenizer):
    from transformers import AutoTokenizer

    tok, cache = tokenizer
    folder = next((cache / "tokenizers").iterdir())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    loaded = AutoTokenizer.from_pretrained(str(folder))
    assert len(loaded) == 320 and loaded.eos_token == EOS and loaded.pad_token == PAD
    assert loaded.eos_token_id != loaded.pad_token_id
    text = "Effusion (n = 303,612) δH µg/mL — ≥ 5 mm\nRESULTS: 😀"
    assert loaded.decode(loaded(text)["input_ids"]) == text  # lossless: no unknown token
    assert fingerprint(loaded) == fingerprint(tok)


def test_tokenizer_never_sees_validation_text(tokenizer):
    tok, _ = tokenizer
    assert not any("zyq" in t.lower() or "qxw" in t.lower() for t in tok.get_vocab())
    assert len(tok.tokenize(" with")) == 1  # frequent training-split words do get merged


def test_tokenizer_is_cached_by_corpus_and_settings(corpus, tokenizer):
    tok, cache = tokenizer
    lines = []
    again = train_or_reuse(corpus, tok_data.file_sha256(corpus), cache, vocab_size=320,
                           min_frequency=2, fractions=FRACTIONS, log=lines.append)
    assert lines and lines[0].startswith("tokenizer: reusing")
    assert fingerprint(again) == fingerprint(tok)
    other = train_or_reuse(corpus, tok_data.file_sha256(corpus), cache, vocab_size=300,
                           min_frequency=2, fractions=FRACTIONS, log=lines.append)
    assert len(other) == 300 and len(list((cache / "tokenizers").iterdir())) == 2


def test_token_files_hold_each_split_in_corpus_order_with_eos(corpus, tokenizer):
    tok, cache = tokenizer
    sha = tok_data.file_sha256(corpus)
    folder = tok_data.ensure_token_files(corpus, sha, tok, cache, fractions=FRACTIONS)
    meta = tok_data.read_meta(folder)
    assert meta["dtype"] == "uint16" and meta["eos_id"] == tok.eos_token_id
    for split in ("train", "val"):
        docs = [document_text(r) for r in iter_corpus(corpus)
                if split_of(r["pmid"], FRACTIONS) == split]
        expected = [t for d in docs for t in (*tok(d)["input_ids"], tok.eos_token_id)]
        got = tok_data.load_tokens(folder, split)
        assert got.dtype == np.uint16 and got.tolist() == expected
        stats = tok_data.split_stats(folder, split)
        assert stats == {"tokens": len(expected), "docs": len(docs),
                         "bytes": sum(len(d.encode()) for d in docs)}
    lines = []
    again = tok_data.ensure_token_files(corpus, sha, tok, cache, fractions=FRACTIONS,
                                        log=lines.append)
    assert again == folder and lines == [f"tokens: reusing {folder}"]
    # another split fraction is another key (a different partition of the abstracts)
    other = tok_data.ensure_token_files(corpus, sha, tok, cache, fractions=(0.8, 0.2))
    assert other != folder


class _BigVocab:
    """A tokenizer stand-in with ids above 65,535 and no Rust backend (the slow path)."""

    eos_token_id = 69_999

    def __len__(self):
        return 70_000

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[66_000 + len(t) % 7, 5] for t in texts]}

    def get_vocab(self):
        return {"a": 5}

    all_special_tokens = ["<eos>"]


def test_token_files_are_uint32_when_the_vocabulary_does_not_fit_uint16(corpus, tmp_path):
    folder = tok_data.ensure_token_files(corpus, "sha", _BigVocab(), tmp_path,
                                         fractions=FRACTIONS, splits=("val",))
    toks = tok_data.load_tokens(folder, "val")
    assert toks.dtype == np.uint32 and toks.max() == 69_999 and toks.min() == 5
    assert not (folder / "train.bin").exists()  # only the splits asked for are built
    assert tok_data.dtype_for(65_536) == np.uint16 and tok_data.dtype_for(65_537) == np.uint32


def test_token_chunks_overlap_by_one_and_batch_in_one_gather():
    tokens = np.arange(23, dtype=np.uint16)
    chunks = tok_data.TokenChunks(tokens, context=5)
    assert len(chunks) == 4  # (23 - 1) // 5
    assert chunks[1].tolist() == [5, 6, 7, 8, 9, 10]
    batch = tok_data.TokenChunks.collate(chunks.__getitems__([3, 0]))
    assert batch.shape == (2, 6) and batch.dtype.is_floating_point is False
    assert batch[0].tolist() == [15, 16, 17, 18, 19, 20]
    assert chunks.targets().tolist() == list(range(1, 21))
    assert len(tok_data.TokenChunks(tokens, context=5, max_tokens=10)) == 2


def test_unigram_perplexity_of_uniform_tokens_is_the_vocabulary_size():
    train = np.tile(np.arange(4), 1000)
    assert tok_data.unigram_perplexity(train, np.array([0, 1, 2, 3]), 4) == pytest.approx(4.0)
    # add-one smoothing: an unseen token has a finite, small probability
    assert tok_data.unigram_perplexity(train, np.array([4]), 5) == pytest.approx(4005.0)


def test_pubmed_files_are_extracted_once_and_reused(tmp_path):
    files = [PUBMED_FIXTURES / "baseline.xml", PUBMED_FIXTURES / "update.xml"]
    logs = []
    path, sha = tok_data.prepare_corpus(None, files, tmp_path, log=logs.append)
    assert path.is_file() and len(path.read_text().splitlines()) > 5
    again, sha2 = tok_data.prepare_corpus(None, files, tmp_path, log=logs.append)
    assert again == path and sha2 == sha and logs[-1].startswith("corpus: reusing")
    with pytest.raises(DataNotFetched, match="biomed data fetch"):
        tok_data.prepare_corpus(None, [tmp_path / "nope.xml.gz"], tmp_path)
    with pytest.raises(InputError, match="no such corpus"):
        tok_data.prepare_corpus(str(tmp_path / "nope.jsonl"), [], tmp_path)


def test_a_corpus_too_small_for_the_split_is_a_clear_error(tmp_path, tokenizer):
    tok, _ = tokenizer
    path = make_corpus(tmp_path / "c.jsonl", n_docs=3)
    with pytest.raises(InputError, match="split is empty"):
        tok_data.ensure_token_files(path, "x", tok, tmp_path, fractions=(0.999, 0.001))
