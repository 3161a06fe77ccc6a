"""Load any saved model of the workbench for inference: the one place the app, the augmentation
loop and scripts go to.

| function | model | folder (a run folder, or the artefact folder inside it) |
|---|---|---|
| `load_classifier` | chest X-ray classifier | ``biomed train-classifier`` run, or its ``classifier/`` |
| `load_clip` | CXR-CLIP (open_clip) | ``biomed train-clip`` run, or its ``clip/`` |
| `load_pipeline` | text-to-X-ray diffusion pipeline | ``biomed train-diffusion`` run, or its ``pipeline/`` |
| `load_lm` | biomedical causal LM | ``biomed train-lm`` run, or its ``model/`` (any local Hugging Face causal-LM folder) |

Each delegates to the model package's own loader (``biomed.imaging.classifier.model``,
``biomed.imaging.clip.model``, ``biomed.imaging.diffusion.pipeline``, ``biomed.lm.model``) and
imports it inside the function, so importing this module costs nothing and loading one kind of
model never imports the libraries of another (open_clip, diffusers). Nothing here imports
training code (a ``*.train`` module) or Hydra; a test checks that in a fresh interpreter.

``device``: None or ``"auto"`` is CUDA when visible, else the CPU (`biomed.engine.pick_device`);
or a named device. Bad folders raise `biomed.errors.InputError` with a one-line reason.

Layering: this module sits above the model packages (``imaging/diffusion``,
``imaging/classifier``, ``imaging/clip``, ``lm``) and below ``augment`` and ``apps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only: nothing is imported at run time
    import torch

    from biomed.imaging.classifier.model import XrayClassifier
    from biomed.imaging.clip.model import LoadedClip
    from biomed.imaging.diffusion.pipeline import LoadedPipeline

__all__ = ["load_classifier", "load_clip", "load_lm", "load_pipeline"]


def _device(device: str | torch.device | None) -> torch.device:
    from biomed.engine.devices import pick_device

    return pick_device(None if device is None else str(device))


def load_classifier(path: str | Path, device: str | torch.device | None = None
                    ) -> tuple[XrayClassifier, dict[str, Any]]:
    """(classifier in eval mode, its ``config.json``: labels, input size, thresholds ...).

    The model takes B x 1 x H x W images in the workbench convention at ``input_size`` and
    returns one logit per label (`biomed.imaging.classifier.model.XrayClassifier`)."""
    from biomed.imaging.classifier.model import load_classifier as load

    return load(path, _device(device))


def load_clip(path: str | Path, device: str | torch.device | None = None) -> LoadedClip:
    """The CXR-CLIP of an open_clip local-dir folder: model in eval mode, tokenizer,
    preprocess config (`biomed.imaging.clip.model.LoadedClip`; zero-shot scores with
    `biomed.imaging.clip.model.zero_shot_scores`)."""
    from biomed.imaging.clip.model import load_clip as load

    return load(path, device=_device(device))


def load_pipeline(path: str | Path, device: str | torch.device | None = None,
                  dtype: str | None = None) -> LoadedPipeline:
    """The diffusers ``StableDiffusionPipeline`` of a pipeline folder, with its model id and
    scheduler config (`biomed.imaging.diffusion.pipeline.LoadedPipeline`); ``dtype``: None or
    ``"auto"`` is bf16 on CUDA, fp32 elsewhere. Cached per folder, device and dtype."""
    from biomed.imaging.diffusion.pipeline import load_pipeline as load

    return load(path, None if device is None else str(device), dtype)


def load_lm(path: str | Path, device: str | torch.device | None = None,
            dtype: str | None = None) -> tuple[Any, Any, Path]:
    """(causal LM in eval mode, its tokenizer, the model folder); ``dtype`` as for
    `load_pipeline`."""
    from biomed.lm.model import load_for_inference

    return load_for_inference(path, "auto" if device is None else str(device),
                              "auto" if dtype is None else dtype)
