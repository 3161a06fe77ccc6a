"""`biomed train-diffusion`: (report, image) pairs -> a RoentGen-style latent diffusion pipeline.

Two stages, each one call of the shared engine, each resumable (``trainer.resume=latest``):

1. The VAE (``diffusion=tiny``, from scratch): one channel, trained on random crops with
   L1 + L2 reconstruction and a small KL term, in ``<run>/vae_stage/``. Then every training image
   is encoded once into a latent cache (mean and std, float16, memory-mapped) keyed by the VAE's
   weights and the data's fingerprint, and the VAE's ``scaling_factor`` becomes 1/std of its
   latents. A pretrained or reused VAE (``diffusion.pretrained``, ``diffusion.vae.from_dir``) is
   frozen and skips the training; its latents are cached all the same.
2. UNet + text encoder on the cached latents, in ``<run>/``: classifier-free-guidance prompt
   dropout, min-SNR-gamma loss weights (epsilon or v prediction), noise offset, EMA weights (an
   engine callback; they live inside the trained module, so checkpoints carry them), learning
   rates per component, a held-out loss and a validation grid (DPM-Solver++, fixed prompts and
   seeds, checked for divergence) at every ``trainer.eval_every``. A frozen text encoder's
   states are computed once per distinct prompt and cached too.

The run folder gets ``pipeline/`` (a ``StableDiffusionPipeline`` folder of the EMA weights, with
model card and ``biomed.json``), ``validation/step-<n>.png``, ``metrics.json`` and the engine's
``log.jsonl``/checkpoints (stage 1's under ``vae_stage/``).

This module holds the data (rows with report text, images), stage 2's rows and per-component
learning rates, the validation and the command; stage 1 is `biomed.imaging.diffusion.vae_stage`,
the caches `biomed.imaging.diffusion.latents`, the loss and EMA
`biomed.imaging.diffusion.objective`, the components `biomed.imaging.diffusion.components`.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from biomed import runs
from biomed.engine import Engine
from biomed.errors import ConfigError
from biomed.hydra_app import hydra_app
from biomed.imaging.core import balance, pixels
from biomed.imaging.diffusion import components as dc
from biomed.imaging.diffusion.card import model_card
from biomed.imaging.diffusion.latents import (
    cached_latents,
    cached_text_states,
    data_fingerprint,
    latent_std,
)
from biomed.imaging.diffusion.objective import DiffusionModel, EmaCallback
from biomed.imaging.diffusion.pipeline import PIPELINE_SUBDIR, make_pipeline, save_pipeline
from biomed.imaging.diffusion.sample import generate_images
from biomed.imaging.diffusion.text_encoders import tokenize
from biomed.imaging.diffusion.vae_stage import VAE_STAGE, prepare_vae

# ---------------------------------------------------------------------------------------------
# data


def prompt_text(text: Any) -> str:
    """A report as a prompt: whitespace collapsed (the tokenizer truncates it)."""
    return " ".join(str(text or "").split())


def load_split(cfg: DictConfig, split: str) -> Dataset:
    from hydra.utils import instantiate

    return instantiate(cfg.data, split=split)


def dataset_prompts(ds: Dataset, prompt_filter: str | None = None) -> list[str]:
    """Every row's report text as a prompt: the dataset contract's ``reports()``
    (`biomed.imaging.data.contract.XrayDataset`), which decodes no image; through
    ``prompt_filter`` (`biomed.imaging.reports.prompts`) when one is given. A row without text
    stays empty."""
    from biomed.imaging.reports.prompts import apply_prompt_filter

    return apply_prompt_filter(prompt_filter, [prompt_text(t) for t in ds.reports()])


def dataset_ids(ds: Dataset) -> list[str]:
    meta = getattr(ds, "metadata", None)
    if meta is not None and "id" in meta:
        return [str(i) for i in meta["id"]]
    return [str(ds[i]["id"]) for i in range(len(ds))]


def read_image(ds: Dataset, index: int, size: int) -> np.ndarray:
    """Row ``index`` as float32 (size, size) in [0, 1]."""
    img = ds.image(index) if callable(getattr(ds, "image", None)) else ds[index]["image"]
    img = np.asarray(img, dtype=np.float32)
    return pixels.resize(img, size) if img.shape != (size, size) else img


class ImageItems(Dataset):
    """Rows of a dataset as (1, size, size) float tensors in [0, 1], from a preloaded uint16
    array (``load_images``) or decoded on each read."""

    def __init__(self, ds: Dataset | None, indices: list[int], size: int,
                 array: np.ndarray | None = None):
        self.ds, self.indices, self.size, self.array = ds, list(indices), size, array

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        if self.array is not None:
            img = self.array[k].astype(np.float32) / np.float32(65535.0)
        else:
            img = read_image(self.ds, self.indices[k], self.size)
        return torch.from_numpy(np.ascontiguousarray(img))[None]


def load_images(ds: Dataset, indices: list[int], size: int, progress: bool) -> np.ndarray:
    """The rows' images decoded once into memory (uint16, round(x * 65535))."""
    from tqdm.auto import tqdm

    out = np.empty((len(indices), size, size), np.uint16)
    for k, i in enumerate(tqdm(indices, desc="images", disable=not progress, unit="img")):
        out[k] = pixels.to_uint16(read_image(ds, i, size))
    return out


# ---------------------------------------------------------------------------------------------
# stage 2's rows and optimizer


class LatentPairs(Dataset):
    """Stage 2's rows: cached latent mean/std and token ids (or a frozen encoder's states)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, tokens: dict[str, torch.Tensor],
                 states: np.ndarray | None = None, state_rows: np.ndarray | None = None):
        self.mean, self.std, self.tokens = mean, std, tokens
        self.states, self.state_rows = states, state_rows

    def __len__(self) -> int:
        return len(self.mean)

    def __getitems__(self, idx) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        out = {"mean": torch.from_numpy(self.mean[idx].astype(np.float32)),
               "std": torch.from_numpy(self.std[idx].astype(np.float32))}
        if self.states is not None:
            out["text_states"] = torch.from_numpy(
                self.states[self.state_rows[idx]].astype(np.float32))
        else:
            t = torch.from_numpy(idx)
            out["input_ids"] = self.tokens["input_ids"][t]
            out["attention_mask"] = self.tokens["attention_mask"][t]
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    @staticmethod
    def collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch  # __getitems__ already returns the batch


def per_component_optimizer(params, *, base, fused: bool | None = None):
    """``base`` (a partial optimizer such as AdamW) with learning rates per component.

    ``biomed.engine.build_optimizer`` passes its weight-decay groups; each is split by the
    ``lr_scale`` tag that :func:`tag_learning_rate` put on the parameters (the text encoder's
    lr / the UNet's lr), and each group gets ``lr * scale``. The engine's schedule multiplies
    every group's own base rate by the same factor.
    """
    lr = float(base.keywords["lr"])
    groups = []
    for g in params:
        by_scale: dict[float, list] = {}
        for p in g["params"]:
            by_scale.setdefault(float(getattr(p, "lr_scale", 1.0)), []).append(p)
        groups += [{**g, "params": ps, "lr": lr * s} for s, ps in sorted(by_scale.items())]
    extra = {}
    if fused is not None and "fused" in inspect.signature(base.func).parameters:
        extra["fused"] = fused
    return base(groups, **extra)


def component_optim(optim_cfg: DictConfig) -> DictConfig:
    """``optim`` with its optimizer wrapped by :func:`per_component_optimizer`."""
    out = OmegaConf.create(OmegaConf.to_container(optim_cfg, resolve=True))
    out.optimizer = {"_target_": f"{__name__}.per_component_optimizer", "_partial_": True,
                     "base": out.optimizer}
    return out


def tag_learning_rate(module: torch.nn.Module, scale: float) -> None:
    for p in module.parameters():
        p.lr_scale = scale


# ---------------------------------------------------------------------------------------------
# validation


class Validation:
    """The engine's ``eval_fn`` of stage 2: held-out loss and a sample grid, EMA weights."""

    def __init__(self, engine: Engine, vae, tokenizer, scheduler_config, val: LatentPairs | None,
                 v: DictConfig, out_dir: Path, bf16: bool, log=print,
                 prompt_filter: str | None = None):
        self.engine, self.vae, self.tokenizer = engine, vae, tokenizer
        self.scheduler_config, self.val, self.v = scheduler_config, val, v
        self.out_dir, self.bf16, self.log = out_dir, bf16, log
        self.prompt_filter = prompt_filter  # the run's: the grid samples what the pipeline will

    def __call__(self, model) -> dict[str, float]:
        plain = self.engine.unwrap(model)
        device = self.engine.accelerator.device
        self.vae.to(device)
        out: dict[str, float] = {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.val is not None and len(self.val):
                out.update(self.held_out_loss(plain, device))
            if self.v.prompts:
                out.update(self.grid(plain))
        return out

    def held_out_loss(self, plain: DiffusionModel, device) -> dict[str, float]:
        """Held-out loss with each image's prompt, and its MSE with the empty prompt instead
        (the same noise and timesteps): ``val_prompt_gain`` = 1 - mse(prompt) / mse(empty) is
        the share of the error the prompt explains, 0 for a model that ignores its prompt."""
        bs = int(self.v.get("batch_size", 64))
        total = mse_total = empty_total = 0.0
        n = len(self.val)
        for s in range(0, n, bs):
            batch = {k: t.to(device) for k, t in
                     self.val.__getitems__(list(range(s, min(n, s + bs)))).items()}
            k = batch["mean"].shape[0]
            for dropout in (0.0, 1.0):  # one seed per batch: both passes draw the same noise
                g = torch.Generator().manual_seed(1234 + s)
                loss, mse = plain.loss(batch, unet=plain.sampling_unet, dropout=dropout,
                                       text_encoder=plain.sampling_text_encoder, generator=g)
                if dropout:
                    empty_total += float(mse) * k
                else:
                    total, mse_total = total + float(loss) * k, mse_total + float(mse) * k
        return {"val_loss": total / n, "val_mse": mse_total / n,
                "val_mse_empty_prompt": empty_total / n,
                "val_prompt_gain": 1.0 - mse_total / empty_total if empty_total else 0.0}

    def grid(self, plain: DiffusionModel) -> dict[str, float]:
        from biomed.imaging.reports.prompts import apply_prompt_filter

        prompts, seeds = list(self.v.prompts), [int(s) for s in self.v.seeds]
        shown = apply_prompt_filter(self.prompt_filter, prompts)
        pipe = make_pipeline(self.vae, plain.sampling_text_encoder, self.tokenizer,
                                plain.sampling_unet,
                                dc.sampling_scheduler(self.scheduler_config, "dpmpp"))
        samples = generate_images(pipe, [p for p in shown for _ in seeds],
                                  [s for _ in prompts for s in seeds], steps=int(self.v.steps),
                                  guidance=float(self.v.guidance))
        step = self.engine.state.step
        if self.engine.is_main:
            grid = pixels.image_grid(samples.images, cols=len(seeds))
            pixels.write_png16(self.out_dir / f"step-{step:06d}.png", grid, text={
                "biomed:synthetic": "true", "prompts": json.dumps(prompts), "seeds":
                json.dumps(seeds), "steps": str(self.v.steps), "guidance": str(self.v.guidance)})
        bad = int(samples.diverged.sum())
        if bad:
            self.log(f"train-diffusion: warning: {bad} of {len(samples.diverged)} validation "
                     f"samples diverged (non-finite or noise) at step {step}")
        return {"val_samples_diverged": float(samples.diverged.mean())}


# ---------------------------------------------------------------------------------------------
# the command


def _rows(cfg: DictConfig, split: str, log=print) -> tuple[Dataset, list[int], list[str]]:
    """A split's dataset, the rows with report text, and their prompts."""
    ds = load_split(cfg, split)
    prompts = dataset_prompts(ds, cfg.diffusion.get("prompt_filter"))
    keep = [i for i, p in enumerate(prompts) if p]
    if split == "train" and not keep:
        raise ConfigError(f"data={cfg.data.get('name', '?')}: no training row has report text "
                          f"(for MIMIC-CXR-JPG set data.reports_dir)")
    if len(keep) < len(prompts):
        log(f"train-diffusion: {split}: {len(prompts) - len(keep)} rows without report text "
            f"skipped")
    return ds, keep, [prompts[i] for i in keep]


def _limit(keep: list[int], n: int | None) -> list[int]:
    return keep if n is None else keep[:int(n)]


def train_diffusion(cfg: DictConfig, run_dir: str | Path, log=print) -> dict[str, Any]:
    """Both stages of ``cfg`` (``conf/train_diffusion.yaml``) in ``run_dir``; the metrics."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    run_dir = Path(run_dir)
    state = PartialState()
    d = cfg.diffusion
    size = int(d.image_size)
    cache_root = Path(cfg.diffusion_cache)
    progress = bool(cfg.trainer.get("progress", True)) and state.is_main_process
    t0 = time.perf_counter()
    train_ds, keep, prompts = _rows(cfg, "train", log)
    val_ds, val_keep, val_prompts = _rows(cfg, "val", log)
    val_keep = _limit(val_keep, d.validation.get("max_items"))
    val_prompts = val_prompts[:len(val_keep)]
    preload = len(keep) * size * size * 2 <= float(d.vae.get("preload_max_bytes") or 0)
    array = load_images(train_ds, keep, size, progress) if preload else None
    train_items = ImageItems(train_ds, keep, size, array)
    val_items = ImageItems(val_ds, val_keep, size)

    vae, rescale, vae_metrics = prepare_vae(cfg, run_dir, train_items, val_items, log)
    device = state.device
    vae.to(device).eval().requires_grad_(False)
    _sdpa(vae)
    bf16 = device.type == "cuda" and str(cfg.trainer.mixed_precision) in ("bf16", "auto")
    enc = {"batch_size": int(d.validation.get("batch_size", 64)), "device": device,
           "num_workers": int(cfg.trainer.num_workers), "bf16": bf16, "progress": progress,
           "log": log}
    ids = dataset_ids(train_ds)
    with state.main_process_first():
        fp = data_fingerprint(cfg.data, "train", train_ds, [ids[i] for i in keep],
                              train_items[0].numpy())
        mean, std, latent_dir = cached_latents(vae, train_items, fp, cache_root, **enc)
        val_mean = val_std = None
        if val_keep:
            vids = dataset_ids(val_ds)
            vfp = data_fingerprint(cfg.data, "val", val_ds, [vids[i] for i in val_keep],
                                   val_items[0].numpy())
            val_mean, val_std, _ = cached_latents(vae, val_items, vfp, cache_root, **enc)
    if rescale:  # a VAE trained here: unit-variance latents for the diffusion model
        sampled = bool(d.training.get("latent_sample", True))
        vae.register_to_config(scaling_factor=1.0 / latent_std(mean, std if sampled else None))
        vae_metrics["scaling_factor"] = float(vae.config.scaling_factor)
        if state.is_main_process:
            vae.save_pretrained(str(run_dir / VAE_STAGE / "vae"), safe_serialization=True)
            runs.write_json(run_dir / VAE_STAGE / "done.json", vae_metrics)
        state.wait_for_everyone()
    prep_seconds = time.perf_counter() - t0

    set_seed(int(cfg.seed))  # the UNet and text encoder initialise the same on every run
    comps = dc.build_components(d, prompts, vae=vae, log=log)
    metrics = train_unet(cfg, run_dir, comps, prompts, (mean, std), val_prompts,
                         (val_mean, val_std), log=log, row_labels=_row_labels(train_ds, keep))
    metrics.update(vae_metrics)
    metrics.update(prep_seconds=prep_seconds, latent_cache=str(latent_dir),
                   scaling_factor=float(vae.config.scaling_factor),
                   train_items=len(keep), val_items=len(val_keep))
    return metrics


def _row_labels(ds: Dataset, keep: list[int]) -> tuple[np.ndarray, list[str]] | None:
    """(labels of the kept rows, label names), or None for a dataset without labels."""
    labels = getattr(ds, "labels", None)
    if labels is None or np.ndim(labels) != 2:
        return None
    return np.asarray(labels)[keep], list(getattr(ds, "label_names", []))


def balanced(train: Dataset, cfg: DictConfig, row_labels, log) -> Dataset:
    """``train`` with repeat-factor sampling when ``diffusion.training.repeat_factor_threshold``
    is set (rows in ``train`` are the rows of ``row_labels``)."""
    threshold = cfg.diffusion.training.get("repeat_factor_threshold")
    if threshold is None:
        return train
    if row_labels is None:
        raise ConfigError(f"diffusion.training.repeat_factor_threshold={threshold}: data="
                          f"{cfg.data.get('name', '?')} has no labels to balance by")
    labels, names = row_labels
    idx = balance.repeat_indices(balance.repeat_factors(labels, threshold), seed=int(cfg.seed))
    log(f"train-diffusion: repeat-factor sampling (threshold {threshold}): "
        f"{balance.repeat_summary(labels, names, idx)}")
    return torch.utils.data.Subset(train, idx.tolist())


def _sdpa(module) -> None:
    """PyTorch's scaled_dot_product_attention in every diffusers attention layer."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(module, "set_attn_processor") and getattr(module, "attn_processors", None):
        module.set_attn_processor(AttnProcessor2_0())


def _pairs(comps: dc.Components, prompts: list[str], latents, cache_root: Path, device,
           log) -> tuple[LatentPairs, torch.Tensor | None]:
    tokens = tokenize(comps.text.tokenizer, prompts)
    if comps.text.trainable:
        return LatentPairs(latents[0], latents[1], tokens), None
    table, rows = cached_text_states(comps.text, prompts, cache_root, device=device, log=log)
    return LatentPairs(latents[0], latents[1], tokens, table, rows), torch.from_numpy(
        np.asarray(table[-1:], np.float32))


def train_unet(cfg: DictConfig, run_dir: Path, comps: dc.Components, prompts: list[str],
               latents, val_prompts: list[str], val_latents, log=print,
               row_labels: tuple[np.ndarray, list[str]] | None = None) -> dict[str, Any]:
    """Stage 2 through the engine, then ``pipeline/``; returns the run's metrics."""
    from accelerate import PartialState

    d, state = cfg.diffusion, PartialState()
    cache_root = Path(cfg.diffusion_cache)
    with state.main_process_first():
        train, empty_states = _pairs(comps, prompts, latents, cache_root, state.device, log)
        val = None
        if val_latents[0] is not None:
            val, _ = _pairs(comps, val_prompts, val_latents, cache_root, state.device, log)
    train = balanced(train, cfg, row_labels, log)
    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))
    unet, text = comps.unet, comps.text
    _sdpa(unet)
    if d.unet.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    if text.trainable and d.text_encoder.get("gradient_checkpointing"):
        text.model.gradient_checkpointing_enable()
    unet_lr = float(cfg.optim.optimizer.lr)
    te_lr = float(d.text_encoder.get("lr") or unet_lr)
    if text.trainable:
        tag_learning_rate(text.model, te_lr / unet_lr)
    model = DiffusionModel(unet, text.model, train_text_encoder=text.trainable,
                           noise_scheduler=comps.noise_scheduler,
                           scaling_factor=float(comps.vae.config.scaling_factor),
                           training=d.training, empty=tokenize(text.tokenizer, [""]),
                           empty_states=empty_states)
    bf16 = engine.precision == "bf16"
    validation = Validation(engine, comps.vae, text.tokenizer, comps.noise_scheduler.config, val,
                            d.validation, run_dir / "validation", bf16, log=log,
                            prompt_filter=d.get("prompt_filter"))
    params = {"unet_params": dc.count_parameters(unet),
              "text_encoder_params": dc.count_parameters(text.model),
              "vae_params": dc.count_parameters(comps.vae)}
    log(f"train-diffusion: stage 2, UNet {params['unet_params']:,} + {text.kind} text encoder "
        f"{params['text_encoder_params']:,} ({'trained' if text.trainable else 'frozen'}) "
        f"parameters on {len(train)} cached latents {tuple(latents[0].shape[1:])}")
    result = engine.fit(model, train, lambda m, b: m(b), optim=component_optim(cfg.optim),
                        eval_fn=validation, collate_fn=LatentPairs.collate,
                        callbacks=[EmaCallback()],
                        resume_fingerprint={"model": cfg.diffusion, "data": cfg.get("data")})
    seconds = engine.state.train_seconds
    images = result.step * engine.cfg.batch_size * engine.cfg.grad_accum * \
        engine.accelerator.num_processes
    metrics: dict[str, Any] = {
        "steps": result.step, "train_seconds": seconds,
        "images_per_s": images / seconds if seconds else None,
        **result.metrics, **params, "vocab_size": len(text.tokenizer),
        "prompt_length": int(text.tokenizer.model_max_length),
        "latent_shape": list(latents[0].shape[1:]), "rows_per_epoch": len(train),
        "text_encoder": text.kind,
        "text_encoder_trained": text.trainable, "unet_lr": unet_lr, "text_encoder_lr": te_lr,
        "prediction_type": model.prediction_type, "precision": engine.precision,
        "key_metrics": ["val_loss", "val_prompt_gain", "val_samples_diverged", "images_per_s",
                        "steps"]}
    if state.is_main_process:
        out = save(cfg, engine, comps, metrics, run_dir / PIPELINE_SUBDIR)
        metrics["pipeline_dir"] = str(out)
        log(f"train-diffusion: {result.step} steps in {seconds:.0f} s "
            f"({metrics['images_per_s'] or 0:.1f} images/s); val_loss "
            f"{metrics.get('val_loss', float('nan')):.4f}; pipeline in {out}")
    state.wait_for_everyone()
    return metrics


def save(cfg: DictConfig, engine: Engine, comps: dc.Components, metrics: dict[str, Any],
         out: Path) -> Path:
    """``pipeline/`` from the EMA weights, with the model card and ``biomed.json``."""
    d = cfg.diffusion
    plain = engine.unwrap(engine.model)
    pipe = make_pipeline(comps.vae, plain.sampling_text_encoder, comps.text.tokenizer,
                            plain.sampling_unet,
                            dc.sampling_scheduler(comps.noise_scheduler.config, "dpmpp"))
    data_name = str(cfg.data.get("name") or cfg.data.get("_target_", "?"))
    info = {
        "format": "biomed-diffusion-v1", "preset": str(d.name), "data": data_name,
        "image_size": int(d.image_size), "channels": comps.channels,
        "prompt_length": metrics["prompt_length"], "vocab_size": metrics["vocab_size"],
        "prompt_format": "report impression first, then findings; whitespace collapsed; "
                         "truncated by the tokenizer at prompt_length tokens",
        # applied by the workbench's sampler to every prompt (biomed.imaging.reports.prompts)
        "prompt_filter": str(d.get("prompt_filter") or "none"),
        "text_encoder": comps.text.kind, "text_encoder_trained": comps.text.trainable,
        "pretrained": comps.pretrained, "prediction_type": metrics["prediction_type"],
        "noise_scheduler": {k: v for k, v in comps.noise_scheduler.config.items()
                            if not k.startswith("_")},
        "sampler": "dpmpp", "steps": 20, "guidance": float(d.validation.guidance),
        "ema": bool(plain.ema_decay), "unet_params": metrics["unet_params"],
        "text_encoder_params": metrics["text_encoder_params"],
        "vae_params": metrics["vae_params"], "scaling_factor": float(
            comps.vae.config.scaling_factor),
        "training": f"{metrics['steps']} steps at batch {engine.cfg.batch_size} x "
                    f"{engine.cfg.grad_accum} x {engine.accelerator.num_processes}, "
                    f"lr UNet {metrics['unet_lr']:g} / text encoder {metrics['text_encoder_lr']:g}, "
                    f"{'fp32' if engine.precision == 'no' else engine.precision}, seed {cfg.seed}",
    }
    shown = {k: metrics[k] for k in ("steps", "train_seconds", "images_per_s", "val_loss",
                                     "val_mse", "val_samples_finite", "vae_val_psnr")
             if metrics.get(k) is not None}
    return save_pipeline(pipe, out, card=model_card(info, shown), info=info)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the text-to-X-ray diffusion model of ``cfg`` (``conf/train_diffusion.yaml``)."""
    return runs.train_command(cfg, train_diffusion, runs.data_files(cfg))


main = hydra_app("train_diffusion")(run)

if __name__ == "__main__":
    main()
