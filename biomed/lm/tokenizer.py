"""Byte-level BPE tokenizer trained on the training split of a PubMed corpus.

GPT-2's scheme, as BioMedLM used it for its 28,896-token PubMed vocabulary: text is mapped to
bytes shown as printable characters (so every string is encodable, no unknown token), split by
GPT-2's pre-tokenizer regex, then merged by BPE. Two special tokens: ``<|endoftext|>`` separates
documents (and is the BOS/EOS/UNK token, as in GPT-2) and ``<|pad|>`` pads batches. The result is
saved with ``save_pretrained`` (``tokenizer.json`` + ``tokenizer_config.json``) and loads with
``AutoTokenizer.from_pretrained``.

Only training-split documents are seen by the BPE trainer (the split is the workbench's stable
hash of the PMID), so validation text never shapes the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from biomed.errors import InputError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOS, PAD)
FORMAT_VERSION = 1  # bump when the tokenizer recipe changes: cached tokenizers are rebuilt


def document_text(record: dict) -> str:
    """The text of one corpus record as the LM sees it: title, newline, abstract."""
    title, abstract = record.get("title") or "", record.get("abstract") or ""
    return f"{title}\n{abstract}" if title else abstract


def split_of(pmid: str, fractions: tuple[float, ...]) -> str:
    """``train`` / ``val`` (/ ``test``) of one abstract: the workbench's stable PMID hash."""
    from biomed.splits import SPLITS, assign_split

    return assign_split(pmid, fractions, SPLITS[:len(fractions)])


def iter_corpus(path: str | Path, *, max_docs: int | None = None) -> Iterator[dict]:
    """Records of a JSONL corpus (``biomed pubmed extract`` output), at most ``max_docs``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such corpus file (run `biomed pubmed extract` or the "
                               "quickstart's corpus stage)")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if max_docs is not None and n >= max_docs:
                return
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"line {n + 1} is not JSON ({e.msg})") from e
            if not isinstance(rec, dict) or "pmid" not in rec:
                raise InputError(path, f"line {n + 1}: not a corpus record (no 'pmid')")
            yield rec


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                    model_max_length: int = 1024, length: int | None = None):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast``.

    ``vocab_size`` counts the 256 byte symbols and the two special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens of a byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=length)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, pad_token=PAD, model_max_length=model_max_length)


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """``save_pretrained``, with ``tokenizer_class`` spelled so that transformers 4 loads it too."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def load_tokenizer(path: str | Path):
    """A tokenizer folder (ours, or a pretrained model's) through ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot load a tokenizer ({str(e).splitlines()[0]})") from e
    if tok.pad_token is None:  # GPT-2-family tokenizers have none: pad with EOS (never a target)
        tok.pad_token = tok.eos_token
    return tok


def fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does (its full serialised pipeline), for cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and special tokens stand for it
        text = json.dumps([sorted(tokenizer.get_vocab().items()),
                           tokenizer.all_special_tokens], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def train_or_reuse(corpus: str | Path, corpus_sha: str, cache_root: str | Path, *,
                   vocab_size: int, min_frequency: int, fractions: tuple[float, ...],
                   max_train_docs: int | None = None, max_docs: int | None = None, log=print):
    """The tokenizer for this corpus and recipe, trained once and cached by key.

    The key covers the corpus content (``corpus_sha``), the split fractions and every training
    setting, so a rerun with the same inputs loads the cached tokenizer in milliseconds.
    ``max_train_docs`` caps the training documents (the first ones of the training split; a full
    PubMed baseline does not need every abstract to learn 30k merges).
    """
    key = hashlib.sha256(json.dumps({
        "v": FORMAT_VERSION, "corpus": corpus_sha, "vocab": vocab_size, "min_freq": min_frequency,
        "fractions": list(fractions), "max_train_docs": max_train_docs, "max_docs": max_docs,
    }, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_root) / "tokenizers" / f"bpe{vocab_size}-{key}"
    if (out / "tokenizer.json").is_file():
        log(f"tokenizer: reusing {out}")
        return load_tokenizer(out)

    def texts() -> Iterator[str]:
        n = 0
        for rec in iter_corpus(corpus, max_docs=max_docs):
            if split_of(rec["pmid"], fractions) != "train":
                continue
            yield document_text(rec)
            n += 1
            if max_train_docs is not None and n >= max_train_docs:
                return

    log(f"tokenizer: training a {vocab_size}-token byte-level BPE on the training split of "
        f"{corpus}")
    tok = train_tokenizer(texts(), vocab_size, min_frequency=min_frequency)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tokenizer(tok, tmp)
    (tmp / "biomed_tokenizer.json").write_text(json.dumps({
        "corpus": str(corpus), "corpus_sha256": corpus_sha, "vocab_size": vocab_size,
        "min_frequency": min_frequency, "split_fractions": list(fractions),
        "max_train_docs": max_train_docs, "max_docs": max_docs}, indent=2) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)  # complete or absent
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out)
