"""Token files: a corpus tokenized once into one memory-mapped array per split.

Layout of a token folder (``<cache>/tokens/<key>/``, the key hashing the corpus content, the
tokenizer's full pipeline and the split fractions)::

    meta.json        dtype, vocab size, EOS id, tokenizer fingerprint, corpus sha256, fractions
    train.bin        the training split's tokens, documents joined by EOS (raw uint16/uint32)
    train.json       {"tokens": N, "docs": D, "bytes": B}   B: UTF-8 bytes of the split's text
    val.bin, val.json

Tokens are uint16 when every id fits (vocabulary <= 65,536), else uint32. Each document is
``document_text(record)`` followed by EOS, as in GPT-2's training data. A split's files are
written under temporary names and renamed when complete, and a split is only built when asked
for (evaluating a pretrained model tokenizes the validation split alone), so a rerun with the
same corpus and tokenizer reuses them.

``prepare_data`` is the whole path from a run's config to its token folder (corpus, tokenizer,
token files), shared by train-lm and evaluate-lm.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from biomed.errors import ConfigError, InputError
from biomed.lm.model import resolve_model_dir
from biomed.lm.tokenizer import (
    document_text,
    fingerprint,
    iter_corpus,
    load_tokenizer,
    split_of,
    train_or_reuse,
)

FORMAT_VERSION = 1
_BATCH_DOCS = 2048  # documents per tokenizer call (the Rust tokenizer parallelises a batch)


def token_dir_key(corpus_sha: str, tokenizer_fp: str, fractions: Iterable[float],
                  max_docs: int | None = None) -> str:
    return hashlib.sha256(json.dumps({
        "v": FORMAT_VERSION, "corpus": corpus_sha, "tokenizer": tokenizer_fp,
        "fractions": list(fractions), "max_docs": max_docs}, sort_keys=True).encode()
    ).hexdigest()[:16]


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def ensure_token_files(corpus: str | Path, corpus_sha: str, tokenizer, cache_root: str | Path,
                       *, fractions: tuple[float, ...], splits: Iterable[str] = ("train", "val"),
                       max_docs: int | None = None, log=print) -> Path:
    """The token folder for (corpus, tokenizer, fractions), with ``splits`` present.

    Missing splits are built in one pass over the corpus; present ones are reused.
    """
    fp = fingerprint(tokenizer)
    folder = Path(cache_root) / "tokens" / token_dir_key(corpus_sha, fp, fractions, max_docs)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError(getattr(tokenizer, "name_or_path", "tokenizer"),
                         "the tokenizer has no end-of-text token to separate documents")
    meta = {"format": FORMAT_VERSION, "dtype": dtype_for(vocab).name, "vocab_size": vocab,
            "eos_id": int(eos), "tokenizer_fingerprint": fp, "corpus": str(corpus),
            "corpus_sha256": corpus_sha, "split_fractions": list(fractions), "max_docs": max_docs}
    _write_json(folder / "meta.json", meta)
    missing = [s for s in splits if not (folder / f"{s}.json").is_file()]
    if missing:
        log(f"tokens: tokenizing the {'/'.join(missing)} split(s) of {corpus} into {folder}")
        _build(corpus, tokenizer, folder, missing, fractions, np.dtype(meta["dtype"]), int(eos),
               max_docs)
    else:
        log(f"tokens: reusing {folder}")
    return folder


def _build(corpus, tokenizer, folder: Path, splits: list[str], fractions, dtype: np.dtype,
           eos: int, max_docs: int | None) -> None:
    backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
    tmp = {s: folder / f".{s}.bin.{os.getpid()}.tmp" for s in splits}
    files = {s: tmp[s].open("wb") for s in splits}
    stats = {s: {"tokens": 0, "docs": 0, "bytes": 0} for s in splits}
    pending: dict[str, list[str]] = {s: [] for s in splits}

    def flush(split: str) -> None:
        texts = pending[split]
        if not texts:
            return
        if backend is not None:  # the Rust tokenizer, no special tokens added
            ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64,
                           count=int(lengths.sum()))
        flat = np.insert(flat, np.cumsum(lengths), eos)  # EOS after each document
        if flat.size and flat.max() > np.iinfo(dtype).max:
            raise InputError(folder, f"token id {flat.max()} does not fit {dtype.name}")
        flat.astype(dtype).tofile(files[split])
        stats[split]["tokens"] += int(flat.size)
        stats[split]["docs"] += len(texts)
        stats[split]["bytes"] += sum(len(t.encode()) for t in texts)
        texts.clear()

    try:
        for rec in iter_corpus(corpus, max_docs=max_docs):
            split = split_of(rec["pmid"], fractions)
            if split in pending:
                pending[split].append(document_text(rec))
                if len(pending[split]) >= _BATCH_DOCS:
                    flush(split)
        for s in splits:
            flush(s)
    finally:
        for f in files.values():
            f.close()
    for s in splits:
        if stats[s]["tokens"] == 0:
            tmp[s].unlink(missing_ok=True)
            raise InputError(corpus, f"the {s} split is empty ({stats[s]['docs']} documents); "
                                     "the corpus is too small for the split fractions "
                                     f"{list(fractions)}")
        os.replace(tmp[s], folder / f"{s}.bin")
        _write_json(folder / f"{s}.json", stats[s])  # written last: marks the split complete


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text())


def split_stats(folder: str | Path, split: str) -> dict:
    return json.loads((Path(folder) / f"{split}.json").read_text())


def load_tokens(folder: str | Path, split: str) -> np.memmap:
    """The split's tokens as a read-only memory map."""
    folder = Path(folder)
    meta = read_meta(folder)
    path = folder / f"{split}.bin"
    if not (folder / f"{split}.json").is_file():
        raise InputError(path, "token split missing or incomplete")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class TokenChunks(Dataset):
    """Consecutive chunks of ``context + 1`` tokens (inputs and their next-token targets).

    Chunk ``i`` covers tokens ``[i * context, (i + 1) * context]``: consecutive chunks share one
    token, so every token after the first is a target exactly once. ``__getitems__`` gathers a
    whole batch with one NumPy index (the DataLoader calls it instead of one item at a time);
    use ``collate_fn=TokenChunks.collate``.
    """

    def __init__(self, tokens: np.ndarray, context: int, max_tokens: int | None = None):
        if context < 1:
            raise ValueError("context must be >= 1")
        n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
        self.tokens, self.context = tokens, context
        self.n_chunks = max(0, (n - 1) // context)
        self._offsets = np.arange(context + 1)

    def __len__(self) -> int:
        return self.n_chunks

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)[:, None] * self.context + self._offsets
        return torch.from_numpy(self.tokens[idx].astype(np.int64))

    @staticmethod
    def collate(batch):
        """The batch ``__getitems__`` already stacked, or single items to stack."""
        return batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))

    def targets(self) -> np.ndarray:
        """Every target token of the chunks, in order (what a unigram baseline is scored on)."""
        return np.asarray(self.tokens[1:self.n_chunks * self.context + 1])


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities fitted on the training tokens."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)


def unigram_perplexity(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Perplexity of a train-fitted unigram model on ``targets`` (the LM's baseline)."""
    logp = unigram_log_probs(train_tokens, vocab_size)
    return float(np.exp(-logp[np.asarray(targets, dtype=np.int64)].mean()))


# ---------------------------------------------------------------------------------------------
# the corpus a run reads


def file_sha256(path: str | Path) -> str:
    from biomed import sources

    return sources.known_sha256(path) or sources.sha256_file(path)


def prepare_corpus(corpus: str | None, data_files: Iterable[str], cache_root: str | Path,
                   log=print) -> tuple[Path, str]:
    """The JSONL corpus of a run and its sha256.

    ``corpus`` (a ``biomed pubmed extract`` output) is used as is; otherwise the PubMed XML
    ``data_files`` are extracted once into ``<cache_root>/corpus/<key>/pubmed.jsonl``, the key
    hashing the files' content and order, and reused by later runs.
    """
    from biomed.errors import DataNotFetched
    from biomed.lm.corpus import extract

    if corpus:
        path = Path(corpus)
        if not path.is_file():
            raise InputError(path, "no such corpus file")
        return path, file_sha256(path)
    files = [Path(f) for f in data_files]
    if not files:
        raise InputError("data.files", "no PubMed files and no corpus= given")
    for f in files:
        if not f.is_file():
            raise DataNotFetched(f"{f}: missing; run `biomed data fetch pubmed` (or give "
                                 "data.files=[...] / corpus=...)")
    key = hashlib.sha256(json.dumps([file_sha256(f) for f in files]).encode()).hexdigest()[:16]
    out = Path(cache_root) / "corpus" / key / "pubmed.jsonl"
    if not out.is_file():
        log(f"corpus: extracting {len(files)} PubMed file(s) into {out}")
        extract(files, out, log=log)  # written atomically
    else:
        log(f"corpus: reusing {out}")
    return out, file_sha256(out)


# ---------------------------------------------------------------------------------------------
# a run's data, from its config


def fractions_of(cfg: DictConfig) -> tuple[float, float]:
    """(train, val) fractions of the abstracts from ``cfg.val_fraction`` (default 0.01)."""
    val = float(cfg.get("val_fraction", 0.01))
    if not 0.0 < val < 1.0:
        raise ConfigError(f"val_fraction {val} must lie strictly between 0 and 1")
    return (1.0 - val, val)


def prepare_data(cfg: DictConfig, *, splits=("train", "val"), tokenizer=None, log=print):
    """(corpus path, corpus sha256, tokenizer, token folder) for a run's config.

    The tokenizer is the pretrained model's when ``lm.pretrained`` is set (or ``tokenizer`` is
    given), else a BPE trained on this corpus's training split (cached).
    """
    cache = Path(cfg.lm_cache)
    data_files = list(cfg.data.files) if "data" in cfg and cfg.data.get("files") else []
    corpus, sha = prepare_corpus(cfg.get("corpus"), data_files, cache, log=log)
    fractions = fractions_of(cfg)
    max_docs = cfg.get("max_docs")
    if tokenizer is None:
        lm = cfg.lm
        if lm.get("pretrained"):
            tokenizer = load_tokenizer(resolve_model_dir(lm.pretrained))
        else:
            t = lm.tokenizer
            tokenizer = train_or_reuse(corpus, sha, cache, vocab_size=int(t.vocab_size),
                                       min_frequency=int(t.get("min_frequency", 2)),
                                       fractions=fractions, max_docs=max_docs,
                                       max_train_docs=t.get("max_train_docs"), log=log)
    folder = ensure_token_files(corpus, sha, tokenizer, cache, fractions=fractions,
                                splits=splits, max_docs=max_docs, log=log)
    return corpus, sha, tokenizer, folder
