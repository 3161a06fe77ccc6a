"""Latent diffusion components with Stable Diffusion's layout: VAE, UNet, text encoder,
tokenizer and schedulers, built from a config or loaded from a local Stable Diffusion folder.

Components (diffusers + transformers): ``AutoencoderKL`` (VAE), ``UNet2DConditionModel``, a text
encoder and tokenizer (`biomed.imaging.diffusion.text_encoders`), a ``DDPMScheduler`` for training
(its config saved with the pipeline) and DPM-Solver++ for sampling. Either built from
``conf/diffusion/tiny.yaml`` (from scratch: a one-channel VAE, a small CLIP-style BPE tokenizer
trained offline on the training split's report text) or loaded from a local Stable Diffusion
folder (``diffusion.pretrained``: three-channel VAE, the gray image replicated).

Pixel boundary: the workbench's [0, 1] gray image becomes [-1, 1] here
(:func:`to_model_space`, replicated to the VAE's channel count) and comes back as the channel
mean, clipped to [0, 1] (:func:`to_image_space`).

The saved ``pipeline/`` folder (write, find, load for sampling) is
`biomed.imaging.diffusion.pipeline`; its model card `biomed.imaging.diffusion.card`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from biomed.errors import ConfigError, InputError
from biomed.imaging.diffusion.model_index import check_model_index
from biomed.imaging.diffusion.text_encoders import TextEncoder, build_text_encoder

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


def _sd_folder(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A local Stable Diffusion folder and its allow-listed ``model_index.json``."""
    path = Path(path).expanduser()
    if not (path / "model_index.json").is_file():
        raise InputError(path, "not a Stable Diffusion folder (no model_index.json)")
    return path, check_model_index(path)


def load_pretrained_vae(path: str | Path):
    """The ``vae/`` of a local Stable Diffusion folder."""
    from diffusers import AutoencoderKL

    path, _ = _sd_folder(path)
    try:
        return AutoencoderKL.from_pretrained(str(path), subfolder="vae")
    except (OSError, ValueError) as e:
        raise InputError(path / "vae", f"cannot load the VAE ({str(e).splitlines()[0]})") from e


def load_pretrained(path: str | Path, *, vae: bool = True) -> dict[str, Any]:
    """The components of a local Stable Diffusion folder (``vae/``, ``unet/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``): vae (unless ``vae=False``), unet, text_encoder, tokenizer,
    scheduler_config. The text encoder and tokenizer classes are those the folder's
    ``model_index.json`` names, once allow-listed (`check_model_index`)."""
    import transformers
    from diffusers import UNet2DConditionModel

    path, classes = _sd_folder(path)
    te_name = (classes.get("text_encoder") or [None, None])[1] or "CLIPTextModel"
    tok_name = (classes.get("tokenizer") or [None, None])[1] or "CLIPTokenizer"
    try:
        te_cls = getattr(transformers, te_name)
        tok_cls = getattr(transformers, tok_name)
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
