"""Tiny diffusion builders for tests: a tiny synthetic paired dataset, tiny configs, and
small folders in the layouts the workbench reads (a Stable Diffusion folder, a VAE folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from biomed.config import compose
from biomed.imaging.data.contract import Table
from biomed.splits import SPLITS

_SENTENCES = {
    "left": ["Opacity in the left lung.", "Left lung opacity, new.",
             "There is a left sided opacity."],
    "right": ["Opacity in the right lung.", "Right lung opacity, new.",
              "There is a right sided opacity."],
    "none": ["No acute abnormality.", "The lungs are clear.", "Normal chest."],
}
PROMPTS = ["Opacity in the left lung.", "Opacity in the right lung.", "No acute abnormality."]


class BlobPairs(Dataset):
    """Synthetic (report, image) pairs: a bright blob on the patient's left (the image's right
    half), right (the image's left half) or none, with a sentence that says which.

    Follows the dataset contract (``image`` float32 H x W in [0, 1], ``report``, ``labels``,
    ``id``, ``index``; ``metadata`` with ``id``/``split``/``report``); unknown keyword arguments
    (the keys of the data config it replaces) are ignored.
    """

    label_names = ["blob_left", "blob_right"]

    def __init__(self, split: str | None = "train", size: int = 32, n: int = 48, seed: int = 0,
                 blank_reports: bool = False, **ignored):
        split = split or "train"
        count = n if split == "train" else max(8, n // 4)
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.size = int(size)
        sides = [("left", "right", "none")[i % 3] for i in range(count)]
        reports = [_SENTENCES[s][int(rng.integers(3))] for s in sides]
        if blank_reports:  # a dataset without report text
            reports = [""] * count
        self._images = np.stack([self._draw(s, rng) for s in sides])
        self.labels = np.array([[s == "left", s == "right"] for s in sides], np.float32)
        self.metadata = Table({"id": [f"{split}-{i}" for i in range(count)],
                               "split": [split] * count, "report": reports})

    def _draw(self, side: str, rng: np.random.Generator) -> np.ndarray:
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        img = 0.15 + 0.1 * yy + 0.02 * rng.standard_normal((s, s)).astype(np.float32)
        if side != "none":  # the patient's left is the image's right
            cx = (0.72 if side == "left" else 0.28) + 0.04 * rng.standard_normal()
            cy = 0.5 + 0.05 * rng.standard_normal()
            img += 0.7 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.1 ** 2))
        return np.clip(img, 0, 1).astype(np.float32)

    def __len__(self) -> int:
        return len(self._images)

    def report(self, index: int) -> str:
        return self.metadata["report"][index]

    def reports(self) -> list[str]:
        """Every row's report text (the dataset contract's accessor)."""
        return list(self.metadata["report"])

    def __getitem__(self, index: int) -> dict:
        return {"image": self._images[index].copy(), "labels": self.labels[index].copy(),
                "report": self.report(index), "id": self.metadata["id"][index], "index": index}


DATA = ["data._target_=tests.helpers.diffusion.BlobPairs", "data.name=blob_pairs",
        "data.size=32"]
TRAINER = ["trainer.batch_size=8", "trainer.max_steps=3", "trainer.max_time_s=null",
           "trainer.eval_every=0", "trainer.checkpoint_every=0", "trainer.progress=false",
           "trainer.tensorboard=false", "trainer.threads=1", "optim.schedule.warmup_steps=1"]
VALIDATION = [f"diffusion.validation.prompts=[{','.join(repr(p) for p in PROMPTS[:2])}]",
              "diffusion.validation.seeds=[0]", "diffusion.validation.steps=2",
              "diffusion.validation.max_items=8", "diffusion.validation.batch_size=8"]
TINY = ["diffusion.image_size=32", "diffusion.prompt_length=16",
        "diffusion.tokenizer.vocab_size=600",
        "diffusion.vae.block_out_channels=[8,16]", "diffusion.vae.norm_num_groups=4",
        "diffusion.vae.crop=16", "diffusion.vae.eval_images=4",
        "diffusion.vae.trainer.batch_size=8", "diffusion.vae.trainer.max_steps=3",
        "diffusion.vae.trainer.max_time_s=null", "diffusion.vae.trainer.checkpoint_every=0",
        "diffusion.unet.block_out_channels=[16,32]", "diffusion.unet.attention=[true,false]",
        "diffusion.unet.cross_attention_dim=32", "diffusion.unet.heads=2",
        "diffusion.unet.norm_num_groups=4", *VALIDATION, *TRAINER, *DATA]
TINY_CLIP = ["diffusion.text_encoder.hidden_size=32", "diffusion.text_encoder.layers=2",
             "diffusion.text_encoder.heads=2", "diffusion.text_encoder.intermediate_size=64"]


def train_cfg(tmp_path: Path, *overrides: str, clip: bool = True,
              cache: Path | None = None) -> DictConfig:
    """The shipped train_diffusion config (diffusion=tiny) shrunk to seconds: 32 px, tiny
    widths, 3 steps per stage, the synthetic set; ``cache``: a diffusion_cache to share."""
    return compose("train_diffusion", [
        f"paths.run_dir={tmp_path / 'run'}", f"diffusion_cache={cache or tmp_path / 'cache'}",
        *TINY, *(TINY_CLIP if clip else []), *overrides])


def tiny_vae(channels: int = 1, blocks: tuple[int, ...] = (8, 16), seed: int = 0):
    """A random tiny ``AutoencoderKL`` (one downsampling per extra block)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=channels, out_channels=channels,
                         block_out_channels=list(blocks), layers_per_block=1,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks), latent_channels=4,
                         norm_num_groups=4, sample_size=32)


def tiny_vae_dir(folder: Path, channels: int = 1) -> Path:
    """A random tiny VAE saved as ``<folder>/vae`` (for ``diffusion.vae.from_dir``)."""
    vae = tiny_vae(channels)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    return folder


def clip_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiny CLIP vocabulary and merges, written out by hand: every byte symbol with and
    without ``</w>``, and each word merged left to right into one token."""
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for s in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(s, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in sorted(set(words)):
        parts = [*w[:-1], w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def tiny_sd_folder(folder: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-layout folder with tiny random components, as a real SD 1.x download
    is laid out: 3-channel VAE, CLIPTextModel + CLIPTokenizer (77 tokens), UNet at 4 latent
    channels with cross-attention width 32, PNDM scheduler config with SD's schedule."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    words = [w.strip(".,").lower() for s in sum(_SENTENCES.values(), []) for w in s.split()]
    vocab, merges = clip_vocab(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=2,
                                norm_num_groups=4)
    vae = tiny_vae(3, seed=seed)
    vae.register_to_config(scaling_factor=0.18215)
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                          set_alpha_to_one=False)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(
        str(folder), safe_serialization=True)
    return folder
