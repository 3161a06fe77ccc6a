"""The language model: transformers' GPT-2 built from ``conf/lm/*.yaml``, or any local Hugging Face
causal-LM folder (``lm.pretrained=/path``), and the shareable ``model/`` folder it is saved as.

A built model is a plain ``GPT2LMHeadModel`` (pre-LayerNorm, learned positions, GELU MLP of 4x
width, tied input/output embeddings, GPT-2's initialisation with residual projections scaled by
1/sqrt(2 n_layer)); attention is PyTorch's ``scaled_dot_product_attention``, chosen in the config
(transformers 5 reads ``attn_implementation`` from it).

Also what every reader of a saved model needs without the training code: loading it for
inference (``load_for_inference``: evaluate-lm, generate-text, the quickstart) and its summed
next-token loss on token chunks (``token_nll``: train-lm's evaluations and evaluate-lm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from biomed.engine.devices import pick_device, pick_dtype
from biomed.errors import ConfigError, InputError

MODEL_SUBDIR = "model"


class VocabSpec:
    """What the model config reads of a tokenizer, for models on synthetic tokens (benchmarks,
    tests): a vocabulary size and the special ids (0: end of text, 1: padding)."""

    bos_token_id = eos_token_id = 0
    pad_token_id = 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def gpt2_config(lm: DictConfig | dict, tokenizer):
    """A ``GPT2Config`` from the ``lm`` group and the tokenizer's vocabulary and special ids."""
    from transformers import GPT2Config

    if lm["n_embd"] % lm["n_head"]:
        raise ConfigError(f"lm: n_embd {lm['n_embd']} is not a multiple of n_head {lm['n_head']}")
    drop = float(lm.get("dropout", 0.0))
    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=int(lm["context"]), n_embd=int(lm["n_embd"]),
        n_layer=int(lm["n_layer"]), n_head=int(lm["n_head"]), resid_pdrop=drop, embd_pdrop=drop,
        attn_pdrop=drop, initializer_range=float(lm.get("init_std", 0.02)),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa", tie_word_embeddings=True,
        # GPT-2's tanh-approximated GELU as one fused kernel: the same function as GPT-2's
        # "gelu_new" (five elementwise ops), 1.07x faster per training step of lm=tiny on a CPU.
        activation_function=str(lm.get("activation", "gelu_pytorch_tanh")))


def build_model(lm: DictConfig | dict, tokenizer) -> torch.nn.Module:
    """A freshly initialised GPT-2 (fp32 weights; mixed precision is the engine's autocast)."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(gpt2_config(lm, tokenizer))
    if lm.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    return model


def load_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32,
                    gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Any local Hugging Face causal-LM folder (a BioMedLM download, one of our ``model/``
    folders, ...), with SDPA attention where the architecture has it."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                     attn_implementation="sdpa")
    except (ValueError, ImportError):  # an architecture without SDPA: its default attention
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except OSError as e:
        raise InputError(path, f"cannot load a causal LM ({str(e).splitlines()[0]})") from e
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder from a run folder (``<run>/model``) or the model folder itself."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file():
        return path
    if (path / MODEL_SUBDIR / "config.json").is_file():
        return path / MODEL_SUBDIR
    raise InputError(path, "not a model folder: no config.json here or in model/ "
                           "(give a train-lm run folder or a Hugging Face model folder)")


def context_length(model: torch.nn.Module, wanted: int | None = None) -> int:
    """The context to train/evaluate with: ``wanted``, capped by the model's positions."""
    cfg = model.config
    limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if wanted is None:
        if limit is None:
            raise ConfigError("the model config names no context length; set lm.context")
        return int(limit)
    return int(min(wanted, limit)) if limit else int(wanted)


def load_for_inference(model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode on its device, tokenizer, model folder) of a run folder or model
    folder; ``device``/``dtype`` as ``biomed.engine.pick_device``/``pick_dtype`` read them."""
    from biomed.lm.tokenizer import load_tokenizer

    folder = resolve_model_dir(model_dir)
    dev = pick_device(device)
    model = load_pretrained(folder, dtype=pick_dtype(dtype, dev)).to(dev).eval()
    return model, load_tokenizer(folder), folder


def token_nll(model: torch.nn.Module, chunks, batch_size: int,
              device: torch.device | str) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) over ``chunks`` (a ``TokenChunks``), and
    the number of tokens scored. The model should be in eval mode (no dropout)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks.__getitems__(range(start, min(len(chunks), start + batch_size)))
            batch = batch.to(device)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1),
                reduction="sum"))
            count += batch[:, 1:].numel()
    return total, count


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameters, counted once when tied; ``non_embedding`` leaves out token and position
    embeddings (the usual count for scaling laws)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"total": total, "non_embedding": total - emb}


def flops_per_token(model: torch.nn.Module, context: int, causal: bool = True) -> float:
    """Training FLOPs per token (forward + backward): 6 N + 6 n_layer context n_embd.

    N counts every matrix that multiplies activations: the non-embedding weights plus the output
    projection (the tied token embedding used as the LM head); the second term is the attention
    scores and weighted sum. The PaLM paper's MFU accounting counts 12 n_layer context n_embd,
    the full square; ``causal`` (the default) counts only the half a causal mask keeps, which is
    the work a flash-attention kernel does.
    """
    cfg = model.config
    n_layer = getattr(cfg, "n_layer", None) or getattr(cfg, "num_hidden_layers", 0)
    d = getattr(cfg, "n_embd", None) or getattr(cfg, "hidden_size", 0)
    params = count_parameters(model)
    head = model.get_output_embeddings().weight.numel()
    attention = (6.0 if causal else 12.0) * n_layer * context * d
    return 6.0 * (params["non_embedding"] + head) + attention


def save_model(model: torch.nn.Module, tokenizer, out_dir: str | Path, card: str, *,
               accelerator=None, context: int | None = None) -> Path:
    """Write the shareable folder: ``save_pretrained`` (safetensors) + tokenizer + README.md.

    Under accelerate (DDP/FSDP) every process must call this: the full state dict is gathered
    and the main process writes it.
    """
    out_dir = Path(out_dir)
    is_main = accelerator is None or accelerator.is_main_process
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    kwargs: dict[str, Any] = {}
    if accelerator is not None:
        kwargs = {"is_main_process": is_main, "save_function": accelerator.save,
                  "state_dict": accelerator.get_state_dict(model)}
    gen = unwrapped.generation_config
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, name, None) is None and getattr(tokenizer, name, None) is not None:
            setattr(gen, name, getattr(tokenizer, name))
    unwrapped.save_pretrained(str(out_dir), **kwargs)
    if is_main:
        if context:
            tokenizer.model_max_length = context
        tokenizer.save_pretrained(str(out_dir))
        cfg_path = out_dir / "tokenizer_config.json"
        tcfg = json.loads(cfg_path.read_text())
        if tcfg.get("tokenizer_class") == "TokenizersBackend":  # transformers 4 knows this name
            tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_path.write_text(json.dumps(tcfg, indent=2) + "\n")
        (out_dir / "README.md").write_text(card)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out_dir


def model_card(*, name: str, params: dict[str, int], config: dict, data: dict, training: dict,
               metrics: dict, pretrained: str | None = None) -> str:
    """The model card (``README.md`` of ``model/``): data, licence terms inherited, intended use."""
    def fmt(v):
        return f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    rows = "\n".join(f"| {k} | {fmt(v)} |" for k, v in metrics.items()
                     if isinstance(v, int | float))
    files = "\n".join(f"  - `{Path(f['path']).name}` (sha256 `{f.get('sha256', '?')}`)"
                      for f in data.get("files", [])) or "  - (a JSONL corpus given directly)"
    origin = (f"Fine-tuned from the local model folder `{pretrained}`; that model's own licence "
              "and terms apply in addition to those below." if pretrained else
              "Trained from scratch (random initialisation) by the biomed workbench.")
    arch = config.get("model_type", "gpt2")
    return f"""---
license: other
license_name: pubmed-nlm-terms-research-use
library_name: transformers
pipeline_tag: text-generation
language: [en]
tags: [biomedical, pubmed, {arch}, biomed-workbench, research-only]
---

# {name}: a causal language model of PubMed abstracts

{origin} Architecture `{arch}`: {config.get('n_layer', '?')} layers, width
{config.get('n_embd', '?')}, {config.get('n_head', '?')} heads, context
{config.get('n_positions', '?')}, vocabulary {config.get('vocab_size', '?'):,}
({params['total']:,} parameters, {params['non_embedding']:,} without embeddings). The tokenizer
is a byte-level BPE trained on the training split of the same corpus (or the pretrained model's
own tokenizer when fine-tuned).

## Training data

PubMed abstracts (title and abstract text; `<|endoftext|>` between documents):

- corpus: {data.get('docs', '?')} abstracts, split by a stable hash of the PMID into training
  ({data.get('train_tokens', '?'):,} tokens) and validation ({data.get('val_tokens', '?'):,}
  tokens, about {data.get('val_fraction', 0.01):.0%} of abstracts, never seen in training);
- source files:
{files}

## Training

{training.get('steps', '?')} optimizer steps, {training.get('tokens', 0):,} training tokens,
{training.get('seconds', 0):.0f} s of training on {training.get('device', '?')}
({training.get('precision', '?')}); optimizer {training.get('optimizer', '?')}, peak learning
rate {training.get('lr', '?')}, batch {training.get('batch_tokens', '?')} tokens per step.

## Evaluation (held-out validation abstracts)

| metric | value |
|---|---|
{rows}

`unigram_ppl` is the perplexity of a unigram model (token frequencies of the training split) on
the same validation tokens: a floor that any language model should beat by a wide margin.

## Licence terms inherited from the data

The abstracts come from PubMed/MEDLINE, **Courtesy of the U.S. National Library of Medicine**.
Citation records are NLM data; many abstracts are copyrighted by their publishers, and NLM's
terms permit their use for research. This model inherits those terms: research use, with the
credit line above. It is not endorsed by NLM. The workbench's code is Apache-2.0; that does not
extend to the data or to models trained on it.

## Intended use

**Research only**: studying biomedical language modelling, tokenization and optimisation, and
teaching. Not for clinical use: it must not inform diagnosis, treatment or any decision about a
patient. Its text can be fluent, confident and wrong (invented findings, drugs, doses and
citations), and it reflects the biases of the literature it was trained on.

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/model")
tokenizer = AutoTokenizer.from_pretrained("path/to/model")
```
"""
