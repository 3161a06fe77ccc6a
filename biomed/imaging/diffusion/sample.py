"""`biomed generate`: synthetic chest X-rays sampled from report text, each carrying provenance.

(About 560 lines: the sampler, the `Generator` contract with `PipelineGenerator`, and the command
that writes images with their provenance; the next split would move the command to its own
module so that importing `Generator` stops importing Hydra.)

A saved ``pipeline/`` (``StableDiffusionPipeline.save_pretrained``: a one-channel VAE for the tiny
model, a three-channel one for Stable Diffusion fine-tunes) is loaded with diffusers alone, its
UNet run with the chosen scheduler (default DPM-Solver++, 20 steps, guidance 4 as RoentGen
sampled) to latents, which the VAE decodes here: the decoder output in [-1, 1] becomes the
workbench's single-channel float32 in [0, 1] (a three-channel decoder's channels are averaged).

Divergence guard. A few DPM-Solver++ samples of a tiny model at guidance 3 have been seen to blow
up into noise. Prevention: the solver's predicted clean latent is clipped at every step to
``latent_clip`` standard deviations (the VAE's ``scaling_factor`` makes latents unit-variance; the
DPM-Solver++ paper's thresholding, but clip-only, since dividing by the percentile as Imagen's
dynamic thresholding does would shrink legitimate latents), the last step is first order
(``lower_order_final``, ``euler_at_final``) down to sigma zero, and the decoded image is clipped.
Detection: a sample is flagged ``diverged`` when its decoded image is non-finite or looks like
noise (see :func:`noise_scores`); the manifest records it and ``metrics.json`` counts it.

Seeds: image ``k`` of prompt ``p`` gets its own seed from ``(seed, p, k)`` (:func:`image_seed`)
and its own generator, so any image can be regenerated alone from its manifest line.

Prompts in provenance follow the prompt policy (`biomed.imaging.dicom.write.PROMPT_POLICIES`):
``text`` records the prompt, ``hash`` a hash of it under the secret de-identification key
(for prompts from restricted datasets: MIMIC-CXR reports may not be redistributed). ``biomed
generate`` takes ``prompt_policy``, by default ``text`` for a typed ``prompt`` and ``hash`` for
a ``prompts_file``; a loop over a dataset takes its data config's ``prompt_policy``. Provenance
names the model by folder name and weights hash, never by path.

The contract other parts consume is :class:`Generator` (prompts and seeds -> gray float32 images
in [0, 1] with divergence flags, an ``id`` to cache them by, and each image's provenance);
:class:`PipelineGenerator` is the one over a saved pipeline folder, and the command below samples
through it. Loading the folder is `biomed.imaging.diffusion.pipeline.load_pipeline`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from omegaconf import DictConfig

from biomed import runs
from biomed.errors import ConfigError, InputError
from biomed.hydra_app import hydra_app
from biomed.imaging.core.pixels import image_grid
from biomed.imaging.dicom.write import check_prompt_policy, prompt_provenance
from biomed.imaging.diffusion.pipeline import LoadedPipeline, load_pipeline, resolve_pipeline_dir

SCHEDULERS = ("dpmpp", "ddim", "ddpm")
LATENT_CLIP = 4.0  # in latent standard deviations: beyond 99.99 % of a unit Gaussian
# loggers that warn per batch about long prompts (we warn once per call instead)
_TRUNCATION_LOGGERS = ("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
                       "transformers.tokenization_utils_base")

# noise detector (see noise_scores / flag_diverged)
NOISE_SCORE = 0.75  # white noise scores 1.0, smooth radiographs well under 0.2
RELATIVE_FACTOR = 3.0  # ... or this many times the batch median,
RELATIVE_FLOOR = 0.25  # ... and above this
_AMPLITUDE = 0.02  # images with a smaller standard deviation (in [0, 1] units) score low


# ---------------------------------------------------------------------------------------------
# Loading


def _as_loaded(pipe_or_dir: Any, device: str | None) -> LoadedPipeline:
    if isinstance(pipe_or_dir, LoadedPipeline):
        return pipe_or_dir
    if isinstance(pipe_or_dir, str | Path):
        return load_pipeline(pipe_or_dir, device)
    pipe = pipe_or_dir  # an in-memory pipeline (training's validation, tests)
    cfg = getattr(pipe, "_biomed_scheduler_config", None)
    if cfg is None:  # remember the original: make_scheduler replaces pipe.scheduler
        cfg = pipe._biomed_scheduler_config = dict(pipe.scheduler.config)
    name = Path(str(getattr(pipe, "name_or_path", None) or "")).name or type(pipe).__name__
    return LoadedPipeline(pipe, None, f"{name} (in memory)", cfg)  # a name, never a path


# ---------------------------------------------------------------------------------------------
# Schedulers


@functools.cache
def _clip_only_dpmpp():
    from diffusers import DPMSolverMultistepScheduler

    class ClippedDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
        """DPM-Solver++ whose thresholding clips the predicted clean latent to
        ``[-sample_max_value, sample_max_value]`` without Imagen's division by the percentile
        (made for pixels in [-1, 1]; latents have unit variance and legitimately exceed 1)."""

        def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
            bound = float(self.config.sample_max_value)
            return sample.clamp(-bound, bound)

    return ClippedDPMSolverMultistepScheduler


def make_scheduler(name: str, base_config: dict, latent_clip: float | None = LATENT_CLIP):
    """A sampling scheduler built from the saved scheduler config (betas, prediction type).

    ``dpmpp``: DPM-Solver++ (2nd order, multistep) ending with a first-order step to sigma 0;
    ``ddim``: deterministic DDIM; ``ddpm``: ancestral DDPM (RoentGen's training scheduler; give it
    ``steps=1000``). ``latent_clip``: clip each step's predicted clean latent to this many
    standard deviations (None: no clipping).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    clip = latent_clip is not None and latent_clip > 0
    bound = float(latent_clip) if clip else 1.0
    if name == "dpmpp":
        return _clip_only_dpmpp().from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
            euler_at_final=True, final_sigmas_type="zero", thresholding=clip,
            sample_max_value=bound, use_karras_sigmas=False)
    if name in ("ddim", "ddpm"):
        cls = DDIMScheduler if name == "ddim" else DDPMScheduler
        # diffusers' default clip_sample=True clips to [-1, 1], wrong for latents: be explicit
        return cls.from_config(base_config, clip_sample=clip, clip_sample_range=bound,
                               thresholding=False)
    raise ConfigError(f"scheduler={name!r}: one of {', '.join(SCHEDULERS)}")


# ---------------------------------------------------------------------------------------------
# Seeds and divergence


def image_seed(seed: int, prompt_index: int, k: int) -> int:
    """The seed of image ``k`` of prompt ``prompt_index`` in a run with ``seed`` (32-bit)."""
    if min(seed, prompt_index, k) < 0:
        raise ConfigError(f"seed {seed}: seeds must be >= 0")
    return int(np.random.SeedSequence([seed, prompt_index, k]).generate_state(1)[0])


def noise_scores(images: np.ndarray) -> np.ndarray:
    """How much each image (N x H x W) looks like white noise: the energy of neighbour
    differences over what white noise of the same variance would have (4 var). White noise
    scores about 1, a one-pixel checkerboard 2, smooth images near 0; images whose standard
    deviation is below ``_AMPLITUDE`` are damped towards 0. Non-finite images score inf."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    out = np.full(len(x), np.inf)
    for i, img in enumerate(x):
        if not np.isfinite(img).all():
            continue
        hf = np.mean(np.diff(img, axis=0) ** 2) + np.mean(np.diff(img, axis=1) ** 2)
        out[i] = hf / (4.0 * (img.var() + _AMPLITUDE ** 2))
    return out


def flag_from_scores(scores: np.ndarray, *, noise_score: float = NOISE_SCORE,
                     factor: float = RELATIVE_FACTOR,
                     floor: float = RELATIVE_FLOOR) -> np.ndarray:
    """Diverged: non-finite, or noise-like in itself (>= ``noise_score``), or much noisier than
    the batch (> ``factor`` x the median of the finite scores, and above ``floor``)."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    median = float(np.median(s[finite])) if finite.any() else 0.0
    return ~finite | (s >= noise_score) | ((s > floor) & (s > factor * median))


def flag_diverged(images: np.ndarray, **kwargs) -> np.ndarray:
    """Per-image diverged flags of decoded images (N x H x W, [0, 1] scale, unclipped)."""
    return flag_from_scores(noise_scores(images), **kwargs)


def finish_images(raw: np.ndarray) -> np.ndarray:
    """Decoded images into the pixel convention: non-finite pixels to 0, clipped to [0, 1]."""
    return np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) \
        .astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sampling


def count_truncated(tokenizer, prompts: list[str]) -> int:
    """How many prompts are longer than the tokenizer's ``model_max_length`` (special tokens
    included): the pipeline truncates them, as training did."""
    limit = int(tokenizer.model_max_length)
    ids = tokenizer(list(prompts), truncation=False, padding=False, verbose=False)["input_ids"]
    return sum(len(i) > limit for i in ids)


@contextlib.contextmanager
def _quiet_pipeline():
    """Silence the per-batch truncation warnings of diffusers and transformers."""
    loggers = [logging.getLogger(name) for name in _TRUNCATION_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode latents to N x H x W float32 on the [0, 1] scale, unclipped (a one-channel VAE
    as is; a three-channel one averaged over channels)."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents + shift
    with torch.inference_mode():
        img = vae.decode(latents, return_dict=False)[0]  # B x C x H x W, about [-1, 1]
    img = img.float().mean(dim=1)
    return ((img + 1.0) / 2.0).cpu().numpy()


def sample_batch(loaded: LoadedPipeline, prompts: list[str], seeds: list[int], *,
                 scheduler: str = "dpmpp", steps: int = 20, guidance: float = 4.0,
                 latent_clip: float | None = LATENT_CLIP, height: int | None = None,
                 width: int | None = None) -> np.ndarray:
    """One batch: raw decoded images (N x H x W, [0, 1] scale, unclipped, maybe non-finite)."""
    pipe = loaded.pipe
    prompts = loaded.model_prompts(prompts)  # the pipeline's prompt filter, as in training
    pipe.scheduler = make_scheduler(scheduler, loaded.scheduler_config, latent_clip)
    # one CPU generator per image: the same noise on any device and in any batch
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with _quiet_pipeline():
        latents = pipe(prompt=list(prompts), num_inference_steps=int(steps),
                       guidance_scale=float(guidance), generator=generators,
                       output_type="latent", height=height, width=width).images
    return decode_latents(pipe, latents)


def _check_sampling(scheduler: str, steps: int, guidance: float, batch_size: int) -> None:
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler={scheduler!r}: one of {', '.join(SCHEDULERS)}")
    if int(steps) < 1 or int(batch_size) < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    if not np.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance={guidance} must be a finite number >= 0")


class Samples(NamedTuple):
    """What `generate_images` returns; unpacks as ``images, diverged = ...``."""

    images: np.ndarray  # N x H x W float32 in [0, 1]
    diverged: np.ndarray  # N bool


def generate_images(pipe_or_dir: Any, prompts: list[str], seeds: list[int], *,
                    scheduler: str = "dpmpp", steps: int = 20, guidance: float = 4.0,
                    batch_size: int = 8, device: str | None = None,
                    latent_clip: float | None = LATENT_CLIP, height: int | None = None,
                    width: int | None = None, warn_truncated: bool = True) -> Samples:
    """Sample one image per (prompt, seed) pair, in batches; for in-process callers (evaluation,
    augmentation). ``pipe_or_dir``: a pipeline folder or run folder (loaded once and cached), a
    :class:`LoadedPipeline` or a ``StableDiffusionPipeline``; ``device`` applies to folders (auto:
    CUDA in bfloat16 when there is one, else CPU in float32). Returns ``(images, diverged)``.
    ``warn_truncated``: warn when prompts exceed the tokenizer (callers that sample many batches
    and keep their own count, as `PipelineGenerator` does, turn it off)."""
    if len(prompts) != len(seeds):
        raise ConfigError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    _check_sampling(scheduler, steps, guidance, batch_size)
    loaded = _as_loaded(pipe_or_dir, device)
    prompts = [str(p) for p in prompts]
    if warn_truncated:
        _warn_truncated(loaded.pipe.tokenizer, loaded.model_prompts(prompts))
    raw = [sample_batch(loaded, prompts[i:i + batch_size], seeds[i:i + batch_size],
                        scheduler=scheduler, steps=steps, guidance=guidance,
                        latent_clip=latent_clip, height=height, width=width)
           for i in range(0, len(prompts), batch_size)]
    if not raw:
        return Samples(np.zeros((0, 0, 0), np.float32), np.zeros(0, bool))
    images = np.concatenate(raw)
    return Samples(finish_images(images), flag_diverged(images))


def _warn_truncated(tokenizer, prompts: list[str]) -> int:
    n = count_truncated(tokenizer, prompts)
    if n:
        warnings.warn(f"{n} of {len(prompts)} prompt(s) exceed the tokenizer's "
                      f"{tokenizer.model_max_length} tokens and are truncated, as in training",
                      stacklevel=3)
    return n


# ---------------------------------------------------------------------------------------------
# The generator contract


@runtime_checkable
class Generator(Protocol):
    """What makes synthetic images for evaluate-generation and the augmentation loop.

    ``generator(prompts, seeds)`` returns one image per (prompt, seed) pair as `Samples`: images
    N x H x W, float32 in [0, 1], single channel (the workbench's pixel convention), and a
    diverged flag per image. The same (prompt, seed) gives the same image on the same device and
    dtype, so ``id`` keys a cache of images: it changes whenever the weights or the sampling
    settings do. ``provenance(prompt, seed)`` is what goes beside each image (manifest line,
    PNG text chunks, DICOM): model id (no path), the prompt or its salted hash (by the prompt
    policy), seed and the sampler's settings.
    """

    id: str

    def __call__(self, prompts: list[str], seeds: list[int]) -> Samples: ...

    def provenance(self, prompt: str, seed: int) -> dict[str, Any]: ...


class PipelineGenerator:
    """A `Generator` over a saved pipeline folder (a train-diffusion run folder or its
    ``pipeline/``), loaded once, sampled with fixed ``sampler`` settings (the ``sampler`` node of
    ``conf/evaluate_generation.yaml``: scheduler, steps, guidance, batch_size, latent_clip,
    dtype; missing keys take `generate_images`' defaults, batch_size 16).

    ``id``: sha256 (20 hex) of the weights' sha256, the settings that change the images
    (scheduler, steps, guidance, latent_clip) and the dtype and device type they were computed
    in. ``model_id``: the readable id the manifests and PNG chunks record. ``truncated``: the
    distinct prompts seen so far that were longer than the tokenizer's ``max_tokens``.
    ``prompt_policy``: ``text`` or ``hash`` (the data config's; ``hash`` needs ``salt``, the
    secret de-identification key), what `provenance` records of each prompt.
    """

    def __init__(self, model_dir: str | Path, sampler: Mapping[str, Any] | None = None,
                 device: str | torch.device | None = None, *, prompt_policy: str = "text",
                 salt: bytes | None = None):
        self.prompt_policy = check_prompt_policy(prompt_policy)
        if prompt_policy == "hash" and salt is None:
            raise ConfigError("prompt_policy=hash needs a salt (the de-identification key)")
        self.salt = salt
        self.sampler = dict(sampler or {})
        s = self.sampler
        self.scheduler = str(s.get("scheduler", "dpmpp"))
        self.steps = int(s.get("steps", 20))
        self.guidance = float(s.get("guidance", 4.0))
        self.batch_size = int(s.get("batch_size", 16))
        self.latent_clip = s.get("latent_clip", LATENT_CLIP)
        self.loaded = load_pipeline(model_dir, None if device is None else str(device),
                                    s.get("dtype"))
        self.model_id = self.loaded.model_id
        self.max_tokens = int(self.loaded.pipe.tokenizer.model_max_length)
        self.truncated: set[str] = set()  # distinct prompts longer than the tokenizer's limit
        pipe = self.loaded.pipe
        key = {"weights": self.loaded.weights_sha256, "scheduler": self.scheduler,
               "steps": self.steps, "guidance": self.guidance, "latent_clip": self.latent_clip,
               "dtype": str(pipe.unet.dtype), "device": pipe.unet.device.type}
        self.id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def __call__(self, prompts: list[str], seeds: list[int]) -> Samples:
        tokenizer = self.loaded.pipe.tokenizer
        new = [p for p in dict.fromkeys(prompts) if p not in self.truncated
               and count_truncated(tokenizer, self.loaded.model_prompts([p]))]
        if new and not self.truncated:  # once per generator: callers sample many batches
            warnings.warn(f"{len(new)} of {len(set(prompts))} prompt(s) exceed the tokenizer's "
                          f"{self.max_tokens} tokens and are truncated, as in training (said "
                          "once; the generator's `truncated` counts them all)", stacklevel=2)
        self.truncated.update(new)
        return generate_images(self.loaded, prompts, seeds, scheduler=self.scheduler,
                               steps=self.steps, guidance=self.guidance,
                               batch_size=self.batch_size, latent_clip=self.latent_clip,
                               warn_truncated=False)

    def raw(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """One batch, decoded but not finished: N x H x W on the [0, 1] scale, unclipped, maybe
        non-finite (for callers that flag divergence over more than one batch)."""
        return sample_batch(self.loaded, prompts, seeds, scheduler=self.scheduler,
                            steps=self.steps, guidance=self.guidance,
                            latent_clip=self.latent_clip)

    def provenance(self, prompt: str, seed: int) -> dict[str, Any]:
        return {**prompt_provenance(prompt, self.prompt_policy, self.salt), "seed": int(seed),
                "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
                "model_id": self.model_id}


# ---------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompt:
    """One prompt: its id (names the image files), text, and labels carried to the manifest."""

    id: str
    prompt: str
    labels: Any = None


def _safe_id(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_")[:80] or "prompt"


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[Prompt]:
    """Prompts from ``prompts_file`` (one per line, or JSON lines with ``prompt`` and optional
    ``id`` and ``labels``) or else the single ``prompt``."""
    if not prompts_file:
        if prompt is None or str(prompt) == "":
            raise ConfigError("give prompt=... or prompts_file=...")
        return [Prompt("p0000", str(prompt))]
    path = Path(str(prompts_file)).expanduser()
    if not path.is_file():
        raise InputError(path, "no such prompts file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: list[Prompt] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pid = f"p{len(out):04d}"
        if line.lstrip().startswith("{"):
            try:
                rec = json.loads(line)
                text = rec["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(path, f"line {n}: a JSON line needs a \"prompt\" ({e})") \
                    from None
            if not isinstance(text, str):
                raise InputError(path, f"line {n}: \"prompt\" must be a string")
            out.append(Prompt(_safe_id(str(rec.get("id", pid))), text, rec.get("labels")))
        else:
            out.append(Prompt(pid, line.strip()))
    if not out:
        raise InputError(path, "no prompts (the file is empty)")
    seen: set[str] = set()
    for p in out:
        if p.id in seen:
            raise InputError(path, f"prompt id {p.id!r} repeats (ids name the image files)")
        seen.add(p.id)
    return out


# ---------------------------------------------------------------------------------------------
# Outputs


def _write_image(run_dir: Path, name: str, img: np.ndarray, meta: dict, prompt: str,
                 salt: bytes | None) -> dict:
    """The PNG (text chunks: the manifest's provenance, the prompt as its policy says) and, with
    a ``salt``, the DICOM (which records the prompt's salted hash only)."""
    from biomed.imaging.core.pixels import write_png16
    from biomed.imaging.dicom.write import write_synthetic_dicom

    said = {k: meta[k] for k in ("prompt_policy", "prompt", "prompt_hash") if k in meta}
    text = {"synthetic": "true", "model_id": meta["model_id"], **said,
            "seed": str(meta["seed"]), "steps": str(meta["steps"]),
            "guidance": f"{meta['guidance']:g}", "scheduler": meta["scheduler"],
            "software": "biomed generate"}
    files = {"file": f"samples/{name}.png"}
    write_png16(run_dir / files["file"], img, text=text)
    if salt is not None:
        files["dicom"] = f"samples/{name}.dcm"
        write_synthetic_dicom(run_dir / files["dicom"], img, model_id=meta["model_id"],
                              prompt=prompt, salt=salt, seed=meta["seed"], steps=meta["steps"],
                              guidance=meta["guidance"])
    return files


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="img", desc="generate")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``n`` images per prompt (``conf/generate.yaml``) into ``samples/``, with
    ``manifest.jsonl`` and ``metrics.json``."""
    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompts_file"))
    n, seed = int(cfg.n), int(cfg.seed)
    scheduler, steps, guidance = str(cfg.scheduler), int(cfg.steps), float(cfg.guidance)
    batch_size = int(cfg.batch_size)
    _check_sampling(scheduler, steps, guidance, batch_size)
    if n < 1 or seed < 0:
        raise ConfigError(f"n={n} must be >= 1 and seed={seed} >= 0")
    folder = resolve_pipeline_dir(cfg.model_dir)
    policy = check_prompt_policy(cfg.get("prompt_policy") or
                                 ("hash" if cfg.get("prompts_file") else "text"))
    salt = None
    if policy == "hash" or cfg.dicom:  # the machine's secret, never written to the run folder
        from biomed.imaging.dicom.keys import default_key_file, load_or_create_key

        salt = load_or_create_key(cfg.get("key_file") or default_key_file())
    data_files = [cfg.prompts_file] if cfg.get("prompts_file") else []
    with runs.experiment(cfg, data_files) as run_dir:
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        gen = PipelineGenerator(folder, {
            "scheduler": scheduler, "steps": steps, "guidance": guidance,
            "batch_size": batch_size, "latent_clip": cfg.get("latent_clip"),
            "dtype": cfg.get("dtype")}, cfg.get("device"), prompt_policy=policy, salt=salt)
        jobs = [(p_i, p, k, image_seed(seed, p_i, k)) for p_i, p in enumerate(prompts)
                for k in range(n)]
        truncated = _warn_truncated(gen.loaded.pipe.tokenizer,
                                    gen.loaded.model_prompts([p.prompt for p in prompts]))
        lines, scores, first = [], [], []
        bar = _progress(len(jobs), bool(cfg.get("progress", True)))
        t_start = time.perf_counter()
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b:b + batch_size]
            t0 = time.perf_counter()
            # raw, not finished: divergence is flagged against the whole run's scores below
            raw = gen.raw([j[1].prompt for j in batch], [j[3] for j in batch])
            seconds = (time.perf_counter() - t0) / len(batch)
            scores.extend(noise_scores(raw).tolist())
            images = finish_images(raw)
            for (p_i, p, k, s), img in zip(batch, images, strict=True):
                prov = gen.provenance(p.prompt, s)  # keys in the manifest's order
                said = {f: prov.pop(f) for f in ("prompt_policy", "prompt", "prompt_hash")
                        if f in prov}
                meta = {**said, "prompt_id": p.id, "prompt_index": p_i,
                        "k": k, "seed": prov.pop("seed"), "base_seed": seed, **prov,
                        "seconds": seconds}
                if p.labels is not None:
                    meta["labels"] = p.labels
                files = _write_image(run_dir, f"{p.id}_{k}", img, meta, p.prompt,
                                     salt if cfg.dicom else None)
                lines.append({**files, **meta})
                if len(first) < int(cfg.grid):
                    first.append(img)
            bar.update(len(batch))
        bar.close()
        total = time.perf_counter() - t_start
        diverged = flag_from_scores(np.array(scores))
        with (run_dir / "manifest.jsonl").open("w", encoding="utf-8") as f:
            for line, flag, score in zip(lines, diverged, scores, strict=True):
                line.update(diverged=bool(flag), noise_score=_json_float(score))
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        grid = None
        if first:
            from biomed.imaging.core.pixels import write_png16

            grid = write_png16(run_dir / "samples" / "grid.png",
                               image_grid(first, cols=min(n, 8) if n > 1 else None),
                               text={"synthetic": "true", "model_id": gen.model_id,
                                     "contents": f"the first {len(first)} samples"})
        metrics = {"count": len(lines), "prompts": len(prompts), "n": n, "seconds": total,
                   "images_per_s": len(lines) / total if total > 0 else None,
                   "diverged": int(diverged.sum()),
                   "diverged_files": [ln["file"] for ln in lines if ln["diverged"]],
                   "truncated_prompts": truncated, "scheduler": scheduler, "steps": steps,
                   "guidance": guidance, "model_id": gen.model_id,
                   "model_dir": str(gen.loaded.folder),
                   "manifest": str(run_dir / "manifest.jsonl"),
                   "grid": str(grid) if grid else None,
                   "key_metrics": ["count", "images_per_s", "diverged"]}
        runs.finish_run(run_dir, metrics)
    print(f"generate: {len(lines)} image(s) from {len(prompts)} prompt(s), "
          f"{metrics['diverged']} flagged diverged, in {total:.1f} s; {run_dir / 'samples'}")
    return metrics


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


main = hydra_app("generate")(run)

if __name__ == "__main__":
    main()
