"""What a CLIP folder's ``open_clip_config.json`` may say, checked before open_clip reads it.

``open_clip.create_model_and_transforms("local-dir:<folder>")`` builds whatever the folder's
config describes: a ``vision_cfg.timm_model_name`` goes to ``timm.create_model`` (an
``hf-hub:`` name is a download, and ``timm_model_pretrained`` fetches weights), a
``text_cfg.hf_model_name`` to transformers' ``AutoConfig``/``AutoModel.from_pretrained`` (a
repository id is a download, a path loads a local file; ``hf_model_pretrained`` fetches
weights), and ``text_cfg.tokenizer_kwargs`` to ``AutoTokenizer.from_pretrained`` (where
``trust_remote_code`` would run the folder's code). A folder from elsewhere (a download, a
colleague's run, an upload) must not choose a file, a download or code that way, so
`biomed.imaging.clip.model.load_clip` reads the config through :func:`check_clip_config` first.

Allowed: the keys open_clip's own ``model_configs/*.json`` use (``ALLOWED``, per section: the
fields of ``CLIPVisionCfg``, ``CLIPTextCfg``, ``MultimodalCfg`` and ``PreprocessCfg``), with
plain values (numbers, flags, null, short words without ``:``, ``/`` or ``\\``, flat lists of
numbers); a timm, Hugging Face model or tokenizer name without a source prefix or a path; the
``*_pretrained`` flags only when false. Everything `biomed.imaging.clip.model.save_clip` writes
passes. Anything else is a one-line `InputError` naming ``open_clip_config.json`` and the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biomed.errors import InputError
from biomed.imaging.core.folder_values import is_plain, names_a_source

__all__ = ["ALLOWED", "check_clip_config", "config_problem"]

_TOWER_COMMON = ("act_kwargs", "block_type", "final_ln_after_pool", "layers", "ls_init_value",
                 "mlp_ratio", "norm_kwargs", "output_tokens", "pool_type", "qk_norm",
                 "scale_attn", "scale_attn_inner", "scale_fc", "scale_heads",
                 "scaled_cosine_attn", "width")
_TEXT = frozenset({
    *_TOWER_COMMON, "context_length", "embed_cls", "eos_id", "heads", "hf_model_name",
    "hf_model_pretrained", "hf_pooler_type", "hf_proj_type", "hf_tokenizer_name",
    "no_causal_mask", "pad_id", "proj_bias", "proj_type", "tokenizer_kwargs", "tokenizer_mode",
    "vocab_size"})
# open_clip passes these to its tokenizers (HFTokenizer or SimpleTokenizer); anything else
# would reach AutoTokenizer.from_pretrained (trust_remote_code, a revision, a cache dir)
_TOKENIZER_KWARGS = frozenset({"clean", "strip_sep_token", "language", "reduction_mask"})
ALLOWED: dict[str, frozenset[str]] = {
    "": frozenset({"model_cfg", "preprocess_cfg"}),
    "model_cfg": frozenset({"embed_dim", "vision_cfg", "text_cfg", "multimodal_cfg",
                            "quick_gelu", "custom_text", "init_logit_bias"}),
    "model_cfg.vision_cfg": frozenset({
        *_TOWER_COMMON, "attentional_pool", "attn_pooler_heads", "attn_pooler_queries",
        "head_width", "image_size", "no_ln_pre", "patch_dropout", "patch_size",
        "pos_embed_type", "timm_drop", "timm_drop_path", "timm_model_name",
        "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias"}),
    "model_cfg.text_cfg": _TEXT,
    "model_cfg.multimodal_cfg": frozenset({*_TEXT, "attn_pooler_heads", "dim_head",
                                           "n_queries"}),
    "preprocess_cfg": frozenset({"size", "mode", "mean", "std", "interpolation",
                                 "resize_mode", "fill_color"}),
    "model_cfg.text_cfg.tokenizer_kwargs": _TOKENIZER_KWARGS,
    "model_cfg.multimodal_cfg.tokenizer_kwargs": _TOKENIZER_KWARGS,
}
_NAMES = ("timm_model_name", "hf_model_name", "hf_tokenizer_name")  # registry names only
_PRETRAINED = ("timm_model_pretrained", "hf_model_pretrained")  # false only: a download
_KWARG_DICTS = ("act_kwargs", "norm_kwargs")  # plain values, passed to torch layers
_MAX_NUMBER = 2 ** 20  # open_clip's largest shipped vocabulary has 256,000 tokens


def _short(value: Any) -> str:
    return " ".join(json.dumps(value, default=str)[:80].split())


def config_problem(cfg: Any, section: str = "") -> tuple[str, str] | None:
    """(dotted key, reason) of the first thing in ``cfg`` (a section of an open_clip config,
    ``""`` for the whole file) that open_clip may not be given, or None."""
    if not isinstance(cfg, Mapping):
        return section or "(top level)", "not a JSON object"
    allowed = ALLOWED[section]
    for key, value in cfg.items():
        where = f"{section}.{key}" if section else str(key)
        if key not in allowed:
            return where, f"not an open_clip setting here (allowed: {', '.join(sorted(allowed))})"
        if where in ALLOWED:  # a nested section
            problem = config_problem(value, where)
            if problem:
                return problem
        elif key in _PRETRAINED:
            if value not in (False, None):
                return where, f"{_short(value)}: refused, it would download pretrained weights"
        elif key in _NAMES:
            if not isinstance(value, str) or not value or len(value) > 128:
                return where, f"{_short(value)} is not a model name"
            if names_a_source(value):
                return where, (f"{_short(value)} is a download source or a path (hf-hub:, "
                               "local-dir:, repository ids and paths are refused)")
        elif key in _KWARG_DICTS:
            if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and is_plain(v, _MAX_NUMBER) for k, v in value.items()):
                return where, f"{_short(value)} is not a mapping of plain values"
        elif not is_plain(value, _MAX_NUMBER):
            return where, f"{_short(value)} is not a number, a flag, a word or a list of numbers"
    return None


def check_clip_config(path: str | Path, cfg: Any) -> None:
    """Raise a one-line `InputError` naming ``path`` (the folder's ``open_clip_config.json``)
    and the key when ``cfg`` asks open_clip for anything beyond plain settings."""
    problem = config_problem(cfg)
    if problem:
        key, reason = problem
        raise InputError(path, f"{key}: {reason}")
