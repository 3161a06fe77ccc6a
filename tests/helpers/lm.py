"""Tiny LM builders for tests: a seeded synthetic PubMed-like corpus, the shipped train_lm config
shrunk to seconds, and a random tiny GPT-2 saved as train-lm saves it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig

from biomed.config import compose

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lm"
PUBMED_FIXTURES = Path(__file__).parents[1] / "fixtures" / "pubmed"

_FINDINGS = ["pleural effusion", "cardiomegaly", "pneumothorax", "atelectasis", "consolidation",
             "pulmonary edema", "a lung nodule", "emphysema"]
_TREATMENTS = ["drainage", "diuretics", "antibiotics", "oxygen therapy", "surgery", "observation"]
_GROUPS = ["adults", "children", "older patients", "smokers", "women", "men"]


def make_corpus(path: Path, n_docs: int = 400, seed: int = 0) -> Path:
    """A deterministic JSONL corpus in `biomed pubmed extract`'s format: templated abstracts
    whose regularities a tiny model learns in a few steps."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_docs):
            finding, treat, group = (rng.choice(_FINDINGS), rng.choice(_TREATMENTS),
                                     rng.choice(_GROUPS))
            n = rng.randint(20, 400)
            abstract = (f"BACKGROUND: {finding.capitalize()} is common in {group}.\n"
                        f"METHODS: We studied {n} {group} with {finding} treated with {treat}.\n"
                        f"RESULTS: {treat.capitalize()} improved outcomes in {group} with "
                        f"{finding}.\nCONCLUSIONS: {treat.capitalize()} helps {finding}.")
            rec = {"pmid": str(20000 + i), "title": f"{treat.capitalize()} for {finding} in "
                   f"{group}", "abstract": abstract, "year": 2000 + i % 20, "language": "eng",
                   "mesh": [finding.title()]}
            f.write(json.dumps(rec) + "\n")
    return path


TINY_LM = ["lm.n_layer=2", "lm.n_embd=32", "lm.n_head=2", "lm.context=32",
           "lm.tokenizer.vocab_size=300", "trainer.batch_size=8", "trainer.max_time_s=null",
           "trainer.max_steps=4", "trainer.progress=false", "trainer.tensorboard=false",
           "trainer.mixed_precision=no", "trainer.threads=1", "val_fraction=0.1",
           "eval.batch_size=8"]


def train_cfg(tmp_path: Path, corpus: Path, *overrides: str,
              cache: Path | None = None) -> DictConfig:
    """The shipped train_lm config shrunk to seconds (tiny model, a few steps, tmp folders);
    ``cache``: an lm_cache shared between tests (tokenizer and token files built once)."""
    return compose("train_lm", [f"paths.run_dir={tmp_path / 'run'}", f"corpus={corpus}",
                                f"lm_cache={cache or tmp_path / 'cache'}", *TINY_LM, *overrides])


def random_model_dir(tmp: Path, context: int = 64) -> Path:
    """A random tiny GPT-2 with a 300-token BPE, saved as train-lm saves it (for tests of
    scoring and decoding, where quality does not matter)."""
    import torch
    from omegaconf import OmegaConf

    from biomed.lm.model import build_model, save_model
    from biomed.lm.tokenizer import train_or_reuse
    from biomed.lm.tokens import file_sha256

    corpus = make_corpus(tmp / "corpus.jsonl", n_docs=100)
    tok = train_or_reuse(corpus, file_sha256(corpus), tmp, vocab_size=300, min_frequency=2,
                         fractions=(0.9, 0.1))
    torch.manual_seed(0)
    lm = OmegaConf.create({"context": context, "n_layer": 2, "n_embd": 32, "n_head": 2})
    return save_model(build_model(lm, tok), tok, tmp / "model", "card", context=context)
