"""The denoising objective of train-diffusion's stage 2: the trained module and its loss.

:class:`DiffusionModel` holds the UNet and the text encoder (and their EMA copies) and computes
the loss of a batch of cached latents: a latent sampled from the VAE posterior (``mean + std *
eps``, or its mean) and scaled by the VAE's ``scaling_factor``; Gaussian noise (plus
``noise_offset`` times a per-channel constant); timesteps uniform over the training schedule; the
noisy latent as ``DDPMScheduler.add_noise`` makes it; the target the scheduler's
``prediction_type`` names (epsilon: the noise; v_prediction: ``sqrt(a) * noise - sqrt(1 - a) *
latent``; sample: the latent); classifier-free-guidance prompt dropout (a row gets the empty
prompt's states with probability ``cond_dropout``); per-sample MSE, weighted by min-SNR-gamma
(:func:`min_snr_weights`) when ``snr_gamma`` is set. Noise and timesteps come from the global RNG
in training (the engine restores it on resume) or from a given generator (the held-out loss).

:class:`EmaCallback` moves the EMA weights after every optimizer step; sampling and the saved
pipeline use them.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig

from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.imaging.diffusion.text_encoders import encode


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), per sample.

    With SNR(t) = alpha_bar / (1 - alpha_bar), the weight on the x0-space loss is min(SNR, gamma).
    Predicting epsilon, the MSE equals SNR times the x0 MSE, so the weight is min(SNR, gamma) / SNR;
    predicting v, the MSE equals (SNR + 1) times it, so min(SNR, gamma) / (SNR + 1).
    """
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1.0 - a)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "sample":
        return clipped
    raise ConfigError(f"diffusion.scheduler.prediction_type={prediction_type!r}: "
                      f"epsilon | v_prediction | sample")


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device)


class DiffusionModel(torch.nn.Module):
    """Stage 2's trained module: UNet + text encoder, their EMA copies and the loss.

    The EMA copies are submodules with ``requires_grad=False``: the optimizer skips them, the
    engine's checkpoints carry them, and sampling and saving use them.
    """

    def __init__(self, unet, text_encoder, *, train_text_encoder: bool, noise_scheduler,
                 scaling_factor: float, training: DictConfig, empty: dict[str, torch.Tensor],
                 empty_states: torch.Tensor | None = None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.train_text_encoder = train_text_encoder
        text_encoder.requires_grad_(train_text_encoder)
        self.prediction_type = str(noise_scheduler.config.prediction_type)
        self.num_timesteps = int(noise_scheduler.config.num_train_timesteps)
        self.scaling_factor = float(scaling_factor)
        self.cond_dropout = float(training.get("cond_dropout") or 0.0)
        self.snr_gamma = training.get("snr_gamma")
        self.noise_offset = float(training.get("noise_offset") or 0.0)
        self.latent_sample = bool(training.get("latent_sample", True))
        decay = training.get("ema_decay")
        self.ema_decay = float(decay) if decay else None
        self.ema_unet = self.ema_text_encoder = None
        if self.ema_decay:
            self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
            if train_text_encoder:
                self.ema_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone().float(),
                             persistent=False)
        self.register_buffer("empty_ids", empty["input_ids"][0].clone(), persistent=False)
        self.register_buffer("empty_mask", empty["attention_mask"][0].clone(), persistent=False)
        self.register_buffer("empty_states", None if empty_states is None
                             else empty_states.float(), persistent=False)

    @property
    def sampling_unet(self):
        return self.ema_unet if self.ema_unet is not None else self.unet

    @property
    def sampling_text_encoder(self):
        return self.ema_text_encoder if self.ema_text_encoder is not None else self.text_encoder

    def condition(self, batch: dict, text_encoder, dropout: float,
                  generator: torch.Generator | None) -> torch.Tensor:
        """(B, L, D) text states; with probability ``dropout`` a row gets the empty prompt's."""
        ref = batch["mean"]
        n = ref.shape[0]
        drop = None
        if dropout > 0:
            u = torch.rand(n, generator=generator, device=generator.device) if generator \
                else torch.rand(n, device=ref.device)
            drop = (u < dropout).to(ref.device)
        if "text_states" in batch:
            states = batch["text_states"]
            if drop is not None:
                states = torch.where(drop[:, None, None], self.empty_states, states)
            return states
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if drop is not None:
            ids = torch.where(drop[:, None], self.empty_ids, ids)
            mask = torch.where(drop[:, None], self.empty_mask, mask)
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return encode(text_encoder, ids, mask)

    def loss(self, batch: dict, *, unet, text_encoder, dropout: float = 0.0,
             generator: torch.Generator | None = None):
        """(weighted loss, plain MSE) of one batch; ``generator`` fixes the noise and timesteps
        (the held-out loss), else the global RNG (training; restored on resume)."""
        mean = batch["mean"].float()
        latents = mean
        if self.latent_sample and "std" in batch:
            latents = mean + batch["std"].float() * _randn(mean.shape, mean, generator)
        latents = latents * self.scaling_factor
        b = latents.shape[0]
        noise = _randn(latents.shape, latents, generator)
        if self.noise_offset:
            noise = noise + self.noise_offset * _randn((b, latents.shape[1], 1, 1), latents,
                                                       generator)
        if generator is None:
            t = torch.randint(0, self.num_timesteps, (b,), device=latents.device)
        else:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator,
                              device=generator.device).to(latents.device)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # DDPMScheduler.add_noise
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * latents  # DDPMScheduler.get_velocity
        else:
            target = latents
        states = self.condition(batch, text_encoder, dropout, generator)
        pred = unet(noisy, t, encoder_hidden_states=states).sample
        mse = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        weights = torch.ones_like(mse) if not self.snr_gamma else min_snr_weights(
            self.alphas_cumprod, t, float(self.snr_gamma), self.prediction_type)
        return (mse * weights).mean(), mse.mean()

    def forward(self, batch: dict):
        loss, mse = self.loss(batch, unet=self.unet, text_encoder=self.text_encoder,
                              dropout=self.cond_dropout)
        return loss, {"mse": float(mse.detach())}

    @torch.no_grad()
    def update_ema(self, step: int) -> float:
        """One EMA step; the decay warms up as (1 + step) / (10 + step) up to ``ema_decay``."""
        if not self.ema_decay:
            return 0.0
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        pairs = [(self.ema_unet, self.unet)]
        if self.ema_text_encoder is not None:
            pairs.append((self.ema_text_encoder, self.text_encoder))
        for ema, live in pairs:
            e = [p for p in ema.parameters() if p.dtype.is_floating_point]
            v = [p.detach() for p in live.parameters() if p.dtype.is_floating_point]
            torch._foreach_lerp_(e, v, 1.0 - decay)
        return decay


class EmaCallback:
    """The engine callback that moves the EMA weights after every optimizer step."""

    def on_step_end(self, engine: Engine, model: torch.nn.Module, step: int) -> None:
        engine.unwrap(model).update_ema(step)
