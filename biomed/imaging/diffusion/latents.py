"""The caches train-diffusion computes once and reuses: every training image's VAE latent, and a
frozen text encoder's states per distinct prompt.

Latents: the posterior mean and std of each image (float16, memory-mapped ``mean.npy`` and
``std.npy``), in ``<diffusion_cache>/latents/<key>/``, keyed by the VAE's weights and the data's
fingerprint (:func:`data_fingerprint`). Text states: ``<diffusion_cache>/text_states/<key>.npy``,
keyed by the encoder's weights, its tokenizer and the prompts. Both are written to a temporary
name and renamed into place, so a reader never sees a half-written cache and concurrent
processes can race safely. :func:`latent_std` gives the VAE's ``scaling_factor``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from biomed.imaging.diffusion import components as dc
from biomed.imaging.diffusion.text_encoders import TextEncoder, encode, tokenize

CACHE_VERSION = 1  # bump when the latent/text-state cache layout or recipe changes


def data_fingerprint(data_cfg: DictConfig, split: str, ds: Dataset, ids: list[str],
                     first_image: np.ndarray) -> str:
    """What the latents of these rows depend on besides the VAE: the dataset's own fingerprint
    where it has one (phantom_iu: its reports and rendering settings), else its config; the
    split, the row ids and the first image's pixels."""
    own = getattr(ds, "fingerprint", None)
    if own:
        spec: Any = str(own)
    else:
        spec = OmegaConf.to_container(data_cfg, resolve=True)
        for k in ("split", "progress", "workers", "num_workers"):  # do not change the pixels
            spec.pop(k, None)
    h = hashlib.sha256(json.dumps({"data": spec, "split": split, "ids": ids},
                                  sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(first_image, dtype=np.float32).tobytes())
    return h.hexdigest()


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished cache folder into place (a concurrent writer may have won)."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)


@torch.inference_mode()
def encode_latents(vae, items: Dataset, out: Path, *, batch_size: int, device: torch.device,
                   num_workers: int = 0, bf16: bool = False, progress: bool = True) -> Path:
    """Encode ``items`` with ``vae`` into ``out/{mean,std}.npy`` (float16, N x C x h x w)."""
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    channels = int(vae.config.in_channels)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    mean = std = None
    k = 0
    vae.eval()
    for batch in tqdm(loader, desc="encode latents", disable=not progress, unit="batch"):
        x = dc.to_model_space(batch.to(device), channels)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            dist = vae.encode(x.to(vae.dtype)).latent_dist
        if mean is None:
            shape = (len(items), *dist.mean.shape[1:])
            mean = open_memmap(tmp / "mean.npy", mode="w+", dtype=np.float16, shape=shape)
            std = open_memmap(tmp / "std.npy", mode="w+", dtype=np.float16, shape=shape)
        n = x.shape[0]
        mean[k:k + n] = dist.mean.float().cpu().numpy()
        std[k:k + n] = dist.std.float().cpu().numpy()
        k += n
    mean.flush()
    std.flush()
    (tmp / "meta.json").write_text(json.dumps({"n": len(items), "shape": list(mean.shape[1:])}))
    _publish(tmp, out)
    return out


def cached_latents(vae, items: Dataset, data_fp: str, cache_root: Path, *, batch_size: int,
                   device: torch.device, num_workers: int = 0, bf16: bool = False,
                   progress: bool = True, log=print) -> tuple[np.ndarray, np.ndarray, Path]:
    """(mean, std) memory maps of the rows' latents, computed once per (VAE, data)."""
    key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "vae": dc.module_hash(vae),
                                     "data": data_fp}).encode()).hexdigest()[:20]
    folder = cache_root / "latents" / key
    if (folder / "meta.json").is_file():
        log(f"train-diffusion: reusing cached latents {folder}")
    else:
        log(f"train-diffusion: encoding {len(items)} images into {folder}")
        encode_latents(vae, items, folder, batch_size=batch_size, device=device,
                       num_workers=num_workers, bf16=bf16, progress=progress)
    return (np.load(folder / "mean.npy", mmap_mode="r"), np.load(folder / "std.npy", mmap_mode="r"),
            folder)


@torch.no_grad()
def cached_text_states(text: TextEncoder, prompts: list[str], cache_root: Path, *,
                       device: torch.device, batch_size: int = 64,
                       log=print) -> tuple[np.ndarray, np.ndarray]:
    """A frozen encoder's states, once per distinct prompt: (table (U + 1, L, D) float16 whose
    last row is the empty prompt's, row index of each prompt)."""
    unique = sorted(set(prompts))
    rows = [*unique, ""]
    key = hashlib.sha256(json.dumps({
        "v": CACHE_VERSION, "encoder": dc.module_hash(text.model),
        "tokenizer": dc.tokenizer_fingerprint(text.tokenizer),
        "max_length": int(text.tokenizer.model_max_length), "prompts": rows}).encode()
    ).hexdigest()[:20]
    path = cache_root / "text_states" / f"{key}.npy"
    if not path.is_file():
        log(f"train-diffusion: encoding {len(rows)} distinct prompts with the frozen "
            f"{text.kind} encoder into {path}")
        model = text.model.to(device).eval()
        chunks = []
        for s in range(0, len(rows), batch_size):
            tok = tokenize(text.tokenizer, rows[s:s + batch_size])
            out = encode(model, tok["input_ids"].to(device), tok["attention_mask"].to(device))
            chunks.append(out.float().cpu().numpy().astype(np.float16))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.concatenate(chunks))
        os.replace(tmp, path)
    where = {p: i for i, p in enumerate(unique)}
    return np.load(path, mmap_mode="r"), np.array([where[p] for p in prompts], np.int64)


def latent_std(mean: np.ndarray, std: np.ndarray | None = None, chunk: int = 4096) -> float:
    """The standard deviation of the latents the diffusion model is trained on: of the posterior
    means, or (``std`` given: latents sampled from q(z|x)) sqrt(Var[mean] + E[std^2])."""
    n, s1, s2, s3 = 0, 0.0, 0.0, 0.0
    for i in range(0, len(mean), chunk):
        m = np.asarray(mean[i:i + chunk], np.float64)
        n, s1, s2 = n + m.size, s1 + m.sum(), s2 + (m * m).sum()
        if std is not None:
            s3 += (np.asarray(std[i:i + chunk], np.float64) ** 2).sum()
    mu = s1 / n
    return math.sqrt(max(s2 / n - mu * mu, 0.0) + s3 / n)
