"""The text encoders a diffusion model can be conditioned on (``diffusion/text_encoder=...``).

- ``clip``: a CLIP-style text transformer (transformers' ``CLIPTextModel``) trained from scratch
  with the UNet, on the workbench's own small CLIP-style BPE (RoentGen's choice: UNet and text
  encoder both trained). With ``diffusion.pretrained`` it is the Stable Diffusion folder's own.
- ``pubmed_lm``: the project's PubMed GPT-2 (a ``model/`` folder of ``biomed train-lm``), its
  transformer body (``GPT2Model``, no LM head); frozen or trained. GPT-2 is causal: the UNet
  cross-attends to the whole sequence of last hidden states, where position i summarises only
  tokens 0..i (no pooling; the last real token is the only one that has read the whole prompt).
  Its tokenizer gets a leading ``<|endoftext|>`` (GPT-2's document separator), so that an empty
  prompt is one real token and not an all-padding sequence.
- ``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder of the embedded data (a 6-layer
  BERT, 384-d), frozen; the UNet projects its 384-d states to its own width (``encoder_hid_dim``
  with ``text_proj``), so the saved pipeline still loads with diffusers alone.

How ``StableDiffusionPipeline`` calls a text encoder, which training copies exactly (see
:func:`encode`): ``text_encoder(input_ids, attention_mask=mask)[0]``, where ``mask`` is passed only
when ``text_encoder.config.use_attention_mask`` is true, and prompts are tokenized with
``padding="max_length"``, ``max_length=tokenizer.model_max_length``, ``truncation=True``. BERT and
GPT-2 return ``last_hidden_state`` first, so ``[0]`` is the sequence output for all three; the two
that need a mask (BERT, and GPT-2 for its padded positions) get ``use_attention_mask=True`` in
their saved config. The UNet itself never receives a mask (the pipeline passes none), so padded
positions stay visible to cross-attention in training as in sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from biomed.errors import ConfigError, InputError

KINDS = ("clip", "pubmed_lm", "minilm")


@dataclass
class TextEncoder:
    """A text encoder, its tokenizer, and how it is trained."""

    model: torch.nn.Module  # a transformers PreTrainedModel
    tokenizer: Any
    kind: str
    trainable: bool

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None) -> dict:
    """Token ids and attention masks exactly as ``StableDiffusionPipeline.encode_prompt`` makes
    them (padded to ``model_max_length``, truncated there)."""
    enc = tokenizer(list(prompts), padding="max_length",
                    max_length=max_length or tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def encode(text_encoder: torch.nn.Module, input_ids: torch.Tensor,
           attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) conditioning states, computed the way the pipeline computes them."""
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    return text_encoder(input_ids, attention_mask=attention_mask if use_mask else None)[0]


def build_text_encoder(te: DictConfig, *, max_length: int, tokenizer=None,
                       pretrained: TextEncoder | None = None) -> TextEncoder:
    """The text encoder of ``diffusion.text_encoder`` (``kind``: clip | pubmed_lm | minilm).

    ``tokenizer``: the small CLIP-style BPE for ``clip`` from scratch. ``pretrained``: the Stable
    Diffusion folder's own encoder, used for ``clip`` when fine-tuning a pretrained pipeline.
    """
    kind = str(te.kind)
    if kind not in KINDS:
        raise ConfigError(f"diffusion.text_encoder.kind={kind!r}: choose one of {', '.join(KINDS)}")
    train = bool(te.get("train", True))
    if kind == "clip":
        if pretrained is not None:
            out = pretrained
        else:
            if tokenizer is None:
                raise ConfigError("diffusion.text_encoder=clip from scratch needs a tokenizer")
            out = TextEncoder(clip_text_model(te, tokenizer, max_length), tokenizer, kind, train)
    elif kind == "pubmed_lm":
        out = pubmed_lm(te, max_length)
    else:
        out = minilm(te, max_length)
    out.trainable = train
    out.tokenizer.model_max_length = max_length
    out.model.requires_grad_(train)
    return out


def clip_text_model(te: DictConfig, tokenizer, max_length: int) -> torch.nn.Module:
    """A randomly initialised ``CLIPTextModel`` sized by the config, for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    hidden, heads = int(te.hidden_size), int(te.heads)
    if hidden % heads:
        raise ConfigError(f"diffusion.text_encoder: hidden_size {hidden} is not a multiple of "
                          f"heads {heads}")
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_attention_heads=heads,
        num_hidden_layers=int(te.layers), intermediate_size=int(te.intermediate_size),
        max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa")
    return CLIPTextModel(cfg)


def pubmed_lm(te: DictConfig, max_length: int) -> TextEncoder:
    """The body of a ``biomed train-lm`` model (or any local causal-LM folder) and its tokenizer."""
    from tokenizers import processors
    from transformers import AutoModel

    from biomed.lm.model import resolve_model_dir
    from biomed.lm.tokenizer import load_tokenizer

    if not te.get("model_dir"):
        raise ConfigError("diffusion/text_encoder=pubmed_lm needs "
                          "diffusion.text_encoder.model_dir=<a train-lm run or model/ folder>")
    folder = resolve_model_dir(te.model_dir)
    try:
        model = AutoModel.from_pretrained(str(folder), attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise InputError(folder, f"cannot load the language model ({str(e).splitlines()[0]})"
                         ) from e
    positions = getattr(model.config, "n_positions", None) or \
        getattr(model.config, "max_position_embeddings", max_length)
    if positions < max_length:
        raise ConfigError(f"{folder}: the LM has {positions} positions, fewer than "
                          f"diffusion.prompt_length={max_length}")
    tok = load_tokenizer(folder)
    bos = tok.bos_token or tok.eos_token
    backend = getattr(tok, "backend_tokenizer", None)
    if bos is not None and backend is not None:  # a leading separator token, as documents begin
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    model.config.use_attention_mask = True  # the pipeline passes the mask on
    return TextEncoder(model, tok, "pubmed_lm", True)


def minilm(te: DictConfig, max_length: int) -> TextEncoder:
    """The embedded all-MiniLM-L6-v2 BERT (``biomed data fetch minilm``) and its tokenizer."""
    from transformers import AutoTokenizer, BertModel

    from biomed import sources

    folder = Path(te.model_dir) if te.get("model_dir") else sources.path("minilm")
    try:
        model = BertModel.from_pretrained(str(folder), attn_implementation="sdpa")
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise InputError(folder, f"cannot load the MiniLM encoder ({str(e).splitlines()[0]})"
                         ) from e
    model.config.use_attention_mask = True  # BERT must not attend to padding
    return TextEncoder(model, tok, "minilm", False)
