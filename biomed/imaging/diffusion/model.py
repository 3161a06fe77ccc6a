"""Latent diffusion components with Stable Diffusion's layout, and the ``pipeline/`` folder.

Components (diffusers + transformers): ``AutoencoderKL`` (VAE), ``UNet2DConditionModel``, a text
encoder and tokenizer (`biomed.imaging.diffusion.text_encoders`), a ``DDPMScheduler`` for training
(its config saved with the pipeline) and DPM-Solver++ for sampling. Either built from
``conf/diffusion/tiny.yaml`` (from scratch: a one-channel VAE, a small CLIP-style BPE tokenizer
trained offline on the training split's report text) or loaded from a local Stable Diffusion
folder (``diffusion.pretrained``: three-channel VAE, the gray image replicated).

Pixel boundary: the workbench's [0, 1] gray image becomes [-1, 1] here
(:func:`to_model_space`, replicated to the VAE's channel count) and comes back as the channel
mean, clipped to [0, 1] (:func:`to_image_space`).

The saved ``pipeline/`` is a ``StableDiffusionPipeline.save_pretrained`` folder (safetensors,
no safety checker or feature extractor) plus ``README.md`` (model card) and ``biomed.json`` (what
the workbench's sampler reads: prompt length, channels, image size, defaults). It loads with
``StableDiffusionPipeline.from_pretrained(folder)`` alone; diffusers 0.42 samples a one-channel
VAE as is (``output_type="pt"`` gives (N, 1, H, W), ``"np"`` (N, H, W, 1), ``"pil"`` mode "L"
images); :func:`generate` decodes itself to check each sample for divergence before clipping.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from biomed.errors import ConfigError, InputError
from biomed.imaging.diffusion.text_encoders import TextEncoder, build_text_encoder

PIPELINE_SUBDIR = "pipeline"
INFO_FILE = "biomed.json"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer split (transformers' CLIPTokenizer): words, single digits, punctuation runs
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
               r"""[\p{N}]|[^\s\p{L}\p{N}]+""")


# ---------------------------------------------------------------------------------------------
# pixels


def to_model_space(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) gray in [0, 1] -> (B, channels, H, W) in [-1, 1]."""
    if images.ndim == 3:
        images = images[:, None]
    x = images.float() * 2.0 - 1.0
    return x.expand(-1, channels, -1, -1) if channels != x.shape[1] else x


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) decoder output in about [-1, 1] -> (B, H, W) gray in [0, 1] (channel mean)."""
    return ((x.float().mean(1) + 1.0) / 2.0).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# the tokenizer


def build_tokenizer(texts: list[str], *, vocab_size: int, max_length: int,
                    min_frequency: int = 2):
    """A ``CLIPTokenizer`` whose BPE is learned here from ``texts`` (the training split's prompts).

    CLIP's own recipe (lower-case, its word/digit/punctuation split, byte-level symbols, ``</w>``
    word ends, ``<|startoftext|>``/``<|endoftext|>`` around every prompt, padding with
    ``<|endoftext|>``), with ``vocab_size`` tokens in all instead of CLIP's 49,408, which would be
    most of a tiny model's parameters: every byte symbol with and without ``</w>`` (so no text is
    unknown), the two special tokens, and ``vocab_size - 514`` merges (fewer when no pair occurs
    ``min_frequency`` times). The merges are learned by :func:`learn_merges`, deterministically
    (the ``tokenizers`` trainer breaks ties between equally frequent pairs differently from run to
    run, and a resumed run or another process must get the very same vocabulary).
    """
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                 normalizers.Lowercase()])
    split = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for piece, _ in split.pre_tokenize_str(norm.normalize_str(text)):
            if piece:
                words[(*piece[:-1], piece[-1] + "</w>")] += 1
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    vocab = {s: i for i, s in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    merges = learn_merges(words, max(0, vocab_size - len(vocab) - 2), min_frequency)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def learn_merges(words: dict[tuple[str, ...], int], n_merges: int,
                 min_frequency: int = 2) -> list[tuple[str, str]]:
    """Byte-pair-encoding merges (Sennrich et al. 2016) of ``words`` (symbol tuples -> counts):
    repeatedly the most frequent adjacent pair, ties broken by the pair's text, so the result
    depends only on the input."""
    import heapq
    from collections import defaultdict

    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
    words = dict(words)
    for w, c in words.items():
        for pair in zip(w, w[1:], strict=False):
            counts[pair] += c
            where[pair].add(w)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < n_merges:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < min_frequency:
            break
        merges.append(pair)
        changed: set[tuple[str, str]] = set()
        for w in sorted(where.pop(pair)):
            c = words.pop(w)
            for p in zip(w, w[1:], strict=False):
                counts[p] -= c
                where[p].discard(w)
                changed.add(p)
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    merged.append(w[i] + w[i + 1])
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            new = tuple(merged)
            words[new] = words.get(new, 0) + c
            for p in zip(new, new[1:], strict=False):
                counts[p] += c
                where[p].add(new)
                changed.add(p)
        counts.pop(pair, None)
        for p in changed:
            if counts.get(p, 0) > 0:
                heapq.heappush(heap, (-counts[p], p))
    return merges


def tokenizer_fingerprint(tokenizer) -> str:
    from biomed.lm.tokenizer import fingerprint

    return fingerprint(tokenizer)


# ---------------------------------------------------------------------------------------------
# components


def build_vae(v: DictConfig, *, channels: int, image_size: int):
    """A randomly initialised ``AutoencoderKL``: one down/up block per entry of
    ``block_out_channels``, so ``len - 1`` downsamplings (4 blocks: 128 px -> 16 x 16 latents)."""
    from diffusers import AutoencoderKL

    blocks = [int(c) for c in v.block_out_channels]
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, block_out_channels=blocks,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        layers_per_block=int(v.layers_per_block), latent_channels=int(v.latent_channels),
        norm_num_groups=int(v.norm_num_groups), sample_size=image_size,
        # without the global attention the VAE is fully convolutional: trained on crops, it
        # behaves the same on whole images
        mid_block_add_attention=bool(v.get("mid_attention", False)))


def build_unet(u: DictConfig, *, latent_channels: int, sample_size: int,
               text_dim: int):
    """A randomly initialised ``UNet2DConditionModel`` (cross-attention where
    ``u.attention`` says, per resolution level). When the text encoder's width ``text_dim``
    differs from ``u.cross_attention_dim`` the UNet carries the projection (``text_proj``).

    ``u.text_time_embedding``: also pool the prompt's states (diffusers' ``TextTimeEmbedding``:
    attention pooling, as in DeepFloyd IF's UNet) into a vector added to the timestep
    embedding, so every ResNet block sees the prompt, not only the cross-attention layers. It is
    computed from ``encoder_hidden_states`` alone (``addition_embed_type="text"``), so the saved
    pipeline still samples with plain diffusers.
    """
    from diffusers import UNet2DConditionModel

    blocks = [int(c) for c in u.block_out_channels]
    attn = [bool(a) for a in u.attention]
    if len(attn) != len(blocks):
        raise ConfigError("diffusion.unet: attention needs one flag per block_out_channels entry")
    cross = int(u.cross_attention_dim)
    extra: dict[str, Any] = {}
    if text_dim != cross:
        extra = {"encoder_hid_dim": text_dim, "encoder_hid_dim_type": "text_proj"}
    if u.get("text_time_embedding", False):
        # pools the states before text_proj: the encoder's own width, split into u.heads heads
        if text_dim % int(u.heads):
            raise ConfigError(f"diffusion.unet.text_time_embedding: the text width {text_dim} "
                              f"is not a multiple of diffusion.unet.heads {u.heads}")
        extra.update(addition_embed_type="text", addition_embed_type_num_heads=int(u.heads))
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=blocks,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        layers_per_block=int(u.layers_per_block), cross_attention_dim=cross,
        attention_head_dim=int(u.heads),  # diffusers' legacy name: the number of heads
        norm_num_groups=int(u.norm_num_groups), **extra)
    return unet


def attach_text_projection(unet, text_dim: int) -> None:
    """Give a pretrained UNet a ``text_proj`` input projection for a text encoder of another
    width (saved in its config, so the pipeline reloads it)."""
    cross = int(unet.config.cross_attention_dim)
    if text_dim == cross or unet.encoder_hid_proj is not None:
        return
    unet.encoder_hid_proj = torch.nn.Linear(text_dim, cross)
    unet.register_to_config(encoder_hid_dim=text_dim, encoder_hid_dim_type="text_proj")


def build_noise_scheduler(s: DictConfig | dict, base: dict | None = None):
    """The training ``DDPMScheduler``: ``base`` (a pretrained scheduler's config) updated with the
    non-null keys of ``s``. Latent diffusion never clips x0 (``clip_sample=False``)."""
    from diffusers import DDPMScheduler

    cfg = dict(base or {})
    own = OmegaConf.to_container(s, resolve=True) if isinstance(s, DictConfig) else dict(s)
    cfg.update({k: v for k, v in own.items() if v is not None})
    cfg["clip_sample"] = False
    known = inspect.signature(DDPMScheduler.__init__).parameters
    return DDPMScheduler(**{k: v for k, v in cfg.items() if k in known})


SAMPLERS = ("dpmpp", "ddim", "ddpm", "euler")


def sampling_scheduler(config: Any, kind: str = "dpmpp"):
    """A sampler from a scheduler config: ``dpmpp`` (DPM-Solver++ 2M, the default; lower order
    on the last steps, which keeps few-step samples from diverging), ``ddim``, ``ddpm``,
    ``euler``."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
    )

    if kind == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)
    if kind == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if kind == "ddpm":
        return DDPMScheduler.from_config(config, clip_sample=False)
    if kind == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ConfigError(f"scheduler={kind!r}: choose one of {', '.join(SAMPLERS)}")


@dataclass
class Components:
    """Everything a pipeline is made of, with the training schedule."""

    vae: Any
    unet: Any
    text: TextEncoder
    noise_scheduler: Any
    pretrained: str | None = None

    @property
    def channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _sd_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not (path / "model_index.json").is_file():
        raise InputError(path, "not a Stable Diffusion folder (no model_index.json)")
    return path


def load_pretrained_vae(path: str | Path):
    """The ``vae/`` of a local Stable Diffusion folder."""
    from diffusers import AutoencoderKL

    path = _sd_folder(path)
    try:
        return AutoencoderKL.from_pretrained(str(path), subfolder="vae")
    except (OSError, ValueError) as e:
        raise InputError(path / "vae", f"cannot load the VAE ({str(e).splitlines()[0]})") from e


def load_pretrained(path: str | Path, *, vae: bool = True) -> dict[str, Any]:
    """The components of a local Stable Diffusion folder (``vae/``, ``unet/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``): vae (unless ``vae=False``), unet, text_encoder, tokenizer,
    scheduler_config."""
    import transformers
    from diffusers import UNet2DConditionModel

    path = _sd_folder(path)
    classes = json.loads((path / "model_index.json").read_text())
    try:
        te_cls = getattr(transformers, classes.get("text_encoder", [None, "CLIPTextModel"])[1])
        tok_cls = getattr(transformers, classes.get("tokenizer", [None, "CLIPTokenizer"])[1])
        out = {
            "vae": load_pretrained_vae(path) if vae else None,
            "unet": UNet2DConditionModel.from_pretrained(str(path), subfolder="unet"),
            "text_encoder": te_cls.from_pretrained(str(path / "text_encoder")),
            "tokenizer": tok_cls.from_pretrained(str(path / "tokenizer")),
            "scheduler_config": json.loads(
                (path / "scheduler" / "scheduler_config.json").read_text()),
        }
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise InputError(path, f"cannot load the Stable Diffusion components "
                               f"({str(e).splitlines()[0]})") from e
    return out


def build_components(d: DictConfig, prompts: list[str], *, vae=None, log=print) -> Components:
    """The components of ``diffusion`` (``conf/diffusion/*.yaml``) before training.

    ``prompts``: the training split's prompts (the BPE tokenizer of a from-scratch ``clip``
    encoder is trained on them). ``vae``: a VAE already trained or loaded (else built).
    """
    max_length = int(d.prompt_length)
    te_cfg = d.text_encoder
    if d.get("pretrained"):
        sd = load_pretrained(d.pretrained, vae=vae is None)
        own = TextEncoder(sd["text_encoder"], sd["tokenizer"], "clip", True)
        text = build_text_encoder(te_cfg, max_length=max_length, pretrained=own)
        positions = getattr(text.model.config, "max_position_embeddings", max_length)
        if positions < max_length:
            raise ConfigError(f"diffusion.prompt_length={max_length} exceeds the text encoder's "
                              f"{positions} positions")
        unet = sd["unet"]
        attach_text_projection(unet, text.hidden_size)
        sched = build_noise_scheduler(d.scheduler, base=sd["scheduler_config"])
        return Components(vae if vae is not None else sd["vae"], unet, text, sched,
                          pretrained=str(d.pretrained))
    tokenizer = None
    if te_cfg.kind == "clip":
        tokenizer = build_tokenizer(prompts, vocab_size=int(d.tokenizer.vocab_size),
                                    max_length=max_length,
                                    min_frequency=int(d.tokenizer.get("min_frequency", 2)))
        log(f"train-diffusion: CLIP-style BPE tokenizer of {len(tokenizer)} tokens trained on "
            f"{len(prompts)} prompts")
    text = build_text_encoder(te_cfg, max_length=max_length, tokenizer=tokenizer)
    if vae is None:
        vae = build_vae(d.vae, channels=int(d.get("channels", 1)), image_size=int(d.image_size))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if int(d.image_size) % scale:
        raise ConfigError(f"diffusion.image_size={d.image_size} is not a multiple of the VAE's "
                          f"downsampling factor {scale}")
    unet = build_unet(d.unet, latent_channels=int(vae.config.latent_channels),
                      sample_size=int(d.image_size) // scale, text_dim=text.hidden_size)
    return Components(vae, unet, text, build_noise_scheduler(d.scheduler))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, shapes, dtypes, bytes): keys caches of its outputs."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the pipeline folder


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` without safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe, out: str | Path, *, card: str, info: dict[str, Any]) -> Path:
    """Write ``pipe`` to ``out`` (safetensors), with ``README.md`` and ``biomed.json``.

    Written to a temporary folder and renamed, so ``out`` is complete or absent. A tokenizer
    class that only transformers 5 knows (``TokenizersBackend``) is recorded as
    ``PreTrainedTokenizerFast``, which both transformers 4 and 5 load.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    index_path = tmp / "model_index.json"
    index = json.loads(index_path.read_text())
    if index.get("tokenizer", [None, None])[1] == "TokenizersBackend":
        index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        tok_cfg = tmp / "tokenizer" / "tokenizer_config.json"
        cfg = json.loads(tok_cfg.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_pipeline_dir(model_dir: str | Path) -> Path:
    """The pipeline folder of ``model_dir``: the folder itself or its ``pipeline/`` subfolder."""
    path = Path(str(model_dir)).expanduser()
    if not path.exists():
        raise InputError(path, "no such model folder")
    if not path.is_dir():
        raise InputError(path, "not a folder (give a train-diffusion run folder or its pipeline/)")
    for candidate in (path, path / PIPELINE_SUBDIR):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise InputError(path, "not a diffusers pipeline folder (no model_index.json in it or in its "
                           "pipeline/ subfolder)")


def pipeline_info(path: str | Path) -> dict[str, Any]:
    """The ``biomed.json`` of a pipeline folder ({} for a folder not written by the workbench)."""
    p = resolve_pipeline_dir(path) / INFO_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


# ---------------------------------------------------------------------------------------------
# sampling


# ---------------------------------------------------------------------------------------------
# the model card


def licence_of(data_name: str) -> str:
    name = data_name.lower()
    if "mimic" in name:
        return ("MIMIC-CXR (PhysioNet credentialed access): the PhysioNet Credentialed Health "
                "Data Use Agreement applies to this model; do not share it with people who have "
                "not signed it.")
    if any(k in name for k in ("phantom", "iu", "openi")):
        return ("Trained on the Indiana University / OpenI chest X-ray report text (CC BY-NC-ND "
                "4.0): the model inherits its terms: non-commercial use, attribution, research "
                "only.")
    return "Trained on user-supplied data: the terms of that data apply to this model."


def model_card(info: dict[str, Any], metrics: dict[str, Any]) -> str:
    """``README.md`` of a pipeline folder: data, licence, intended use, training, numbers."""
    data = str(info.get("data", "?"))
    phantom = "phantom" in data.lower()
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if isinstance(v, int | float | str))
    images = ("procedurally rendered **phantom** chest radiographs (not patients' images) "
              "paired with real Indiana University report text whose findings they render"
              if phantom else f"the `{data}` dataset")
    return f"""---
license: other
tags: [text-to-image, diffusers, chest-x-ray, research-only, synthetic]
---
# biomed text-to-chest-X-ray latent diffusion ({info.get('preset', '?')})

A `StableDiffusionPipeline` (VAE + conditional UNet + text encoder + scheduler) trained by
`biomed train-diffusion` in the manner of RoentGen (Chambon et al. 2022, arXiv 2211.12737).

## Data
Trained on {images}; prompts are the report's impression first, then its findings, truncated
to {info.get('prompt_length')} tokens.

## Licence and intended use
{licence_of(data)}
**Research only. Not for clinical use.** Every image this model makes is synthetic: it must be
labelled as such (the workbench's `biomed generate` writes provenance into each PNG/DICOM) and
must never be taken for a patient's radiograph.{' Trained on phantoms: conclusions about real '
'patients need real data.' if phantom else ''}

## Model
- image: {info.get('image_size')} px, {info.get('channels')} channel(s) (gray in [0, 1] mapped to
  [-1, 1]{'; replicated to 3 channels' if info.get('channels') == 3 else ''})
- text encoder: {info.get('text_encoder')} ({'trained' if info.get('text_encoder_trained')
  else 'frozen'}), tokenizer of {info.get('vocab_size')} tokens, {info.get('prompt_length')} max
- parameters: UNet {info.get('unet_params'):,}, text encoder {info.get('text_encoder_params'):,},
  VAE {info.get('vae_params'):,}
- noise schedule: {info.get('prediction_type')} prediction; EMA weights saved
- training: {info.get('training')}

## Use
```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("<this folder>")
image = pipe("Large right pleural effusion.", num_inference_steps=20,
             guidance_scale={info.get('guidance', 3.0)}).images[0]  # PIL, {'"L"' if info.get('channels') == 1 else '"RGB"'}
```

## Metrics
| metric | value |
|---|---|
{rows}
"""
