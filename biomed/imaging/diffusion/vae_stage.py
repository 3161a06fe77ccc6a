"""Stage 1 of train-diffusion: the VAE, trained from scratch through the shared engine.

One channel, trained on random crops (``diffusion.vae.crop``; the VAE is fully convolutional, so
it behaves the same on whole images) with L1 + L2 reconstruction and a small KL term
(:class:`VaeTrainer`), in ``<run>/vae_stage/`` with its own checkpoints and log; the held-out
reconstructions are drawn into ``reconstructions.png``. A pretrained VAE
(``diffusion.pretrained``) or one reused from another run (``diffusion.vae.from_dir``) skips the
training (:func:`prepare_vae`); either way it is frozen for stage 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from biomed.engine import Engine
from biomed.imaging.core import pixels
from biomed.imaging.diffusion import components as dc
from biomed.imaging.diffusion.pipeline import PIPELINE_SUBDIR

VAE_STAGE = "vae_stage"  # stage 1's folder inside the run folder


class VaeTrainer(torch.nn.Module):
    """Stage 1: the VAE's loss on random crops (L1 + L2 reconstruction + KL)."""

    def __init__(self, vae, *, crop: int | None, l2_weight: float, kl_weight: float):
        super().__init__()
        self.vae, self.crop = vae, crop
        self.l2_weight, self.kl_weight = l2_weight, kl_weight

    def _crops(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        if not self.crop or self.crop >= size:
            return images
        c = int(self.crop)
        offsets = torch.randint(0, size - c + 1, (images.shape[0], 2))
        return torch.stack([img[:, y:y + c, x:x + c]
                            for img, (y, x) in zip(images, offsets.tolist(), strict=True)])

    def forward(self, images: torch.Tensor):
        x = dc.to_model_space(self._crops(images), int(self.vae.config.in_channels))
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample
        err = rec.float() - x
        l1, l2 = err.abs().mean(), err.pow(2).mean()
        kl = post.kl().float().mean() / x[0].numel()  # summed over the latent, per image pixel
        loss = l1 + self.l2_weight * l2 + self.kl_weight * kl
        return loss, {"l1": float(l1.detach()), "kl": float(kl.detach())}


def _stage_trainer(cfg: DictConfig, extra: DictConfig | None) -> DictConfig:
    return OmegaConf.merge(cfg.trainer, extra or {})


def load_vae_dir(path: str | Path):
    """A VAE from a train-diffusion run, a pipeline folder, or a ``vae/`` folder."""
    from diffusers import AutoencoderKL

    from biomed.errors import InputError

    path = Path(path).expanduser()
    for c in (path, path / "vae", path / PIPELINE_SUBDIR / "vae", path / VAE_STAGE / "vae"):
        if (c / "config.json").is_file() and (c / "diffusion_pytorch_model.safetensors").is_file():
            return AutoencoderKL.from_pretrained(str(c))
    raise InputError(path, "no VAE here (a train-diffusion run, pipeline/ or vae/ folder)")


def train_vae(cfg: DictConfig, stage_dir: Path, items: Dataset, val_items: Dataset,
              log=print) -> tuple[Any, dict[str, Any]]:
    """Stage 1 through the engine; returns the trained VAE (eval mode, frozen) and its numbers."""
    d, v = cfg.diffusion, cfg.diffusion.vae
    engine = Engine(_stage_trainer(cfg, v.get("trainer")), stage_dir, seed=int(cfg.seed))
    vae = dc.build_vae(v, channels=int(d.get("channels", 1)), image_size=int(d.image_size))
    model = VaeTrainer(vae, crop=v.get("crop"), l2_weight=float(v.get("l2_weight", 0.0)),
                       kl_weight=float(v.kl_weight))
    optim = OmegaConf.merge(cfg.optim, {"optimizer": {"lr": float(v.lr)},
                                        "schedule": {"warmup_steps": int(v.warmup_steps)}})
    n_eval = min(len(val_items), int(v.get("eval_images") or 0))

    def eval_fn(m) -> dict[str, float]:
        if n_eval == 0:
            return {}
        plain = engine.unwrap(m).vae
        x = torch.stack([val_items[i] for i in range(n_eval)]).to(engine.accelerator.device)
        xm = dc.to_model_space(x, int(plain.config.in_channels))
        rec = plain.decode(plain.encode(xm).latent_dist.mean).sample.float()
        out = dc.to_image_space(rec)
        mse = float((out - x[:, 0]).pow(2).mean())
        if engine.is_main:
            grid = pixels.image_grid(torch.cat([x[:, 0], out]).cpu().numpy(), cols=n_eval)
            pixels.write_png16(stage_dir / "reconstructions.png", grid)
        return {"vae_val_l1": float((out - x[:, 0]).abs().mean()),
                "vae_val_psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}

    log(f"train-diffusion: stage 1, VAE of {dc.count_parameters(vae):,} parameters on "
        f"{len(items)} images ({v.get('crop') or 'whole'} px crops)")
    result = engine.fit(model, items, lambda m, b: m(b), optim=optim, eval_fn=eval_fn)
    vae = engine.unwrap(engine.model).vae.eval().requires_grad_(False)
    metrics = {"vae_steps": result.step, "vae_train_seconds": engine.state.train_seconds,
               "vae_train_loss": result.metrics.get("train_loss"),
               **{k: v for k, v in result.metrics.items() if k.startswith("vae_val")}}
    return vae, metrics


def prepare_vae(cfg: DictConfig, run_dir: Path, train_items: Dataset, val_items: Dataset,
                log=print) -> tuple[Any, bool, dict[str, Any]]:
    """The VAE of this run (reused from ``diffusion.vae.from_dir``, the pretrained folder's, the
    one stage 1 saved before a resume, or trained now), whether its scaling factor is still to
    be set, and stage 1's numbers."""
    from diffusers import AutoencoderKL

    d = cfg.diffusion
    if d.vae.get("from_dir"):
        log(f"train-diffusion: reusing the VAE of {d.vae.from_dir} (frozen)")
        return load_vae_dir(d.vae.from_dir), False, {}
    if d.get("pretrained"):
        return dc.load_pretrained_vae(d.pretrained), False, {}
    saved = run_dir / VAE_STAGE / "vae"
    if cfg.trainer.get("resume") and (saved / "config.json").is_file():
        log(f"train-diffusion: stage 1 done earlier, reusing {saved}")
        done = json.loads((run_dir / VAE_STAGE / "done.json").read_text())
        return AutoencoderKL.from_pretrained(str(saved)), False, done
    vae, metrics = train_vae(cfg, run_dir / VAE_STAGE, train_items, val_items, log=log)
    return vae, True, metrics
