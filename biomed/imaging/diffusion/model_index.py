"""What a pipeline folder's ``model_index.json`` may name: the (library, class) pairs the
workbench reads, checked before diffusers or transformers resolve any of them.

diffusers turns each ``"name": [library, class]`` entry into an import of ``library`` (any
installed module, or a ``<name>/<library>.py`` file beside the weights) and a class lookup; a
list-valued ``_class_name`` names a custom pipeline class in a ``.py`` file of the folder. A
folder from elsewhere (a download, a colleague's run, an upload) must not choose code that way,
so the loaders (`biomed.imaging.diffusion.pipeline.load_pipeline`,
`biomed.imaging.diffusion.components.load_pretrained`) read the index through
:func:`check_model_index` first.

Allowed, per component: the workbench's own (``UNet2DConditionModel``, ``AutoencoderKL``, the
text encoders of `biomed.imaging.diffusion.text_encoders` with their tokenizers, the schedulers
``StableDiffusionPipeline`` takes) and what a real Stable Diffusion folder carries besides
(``safety_checker``, ``feature_extractor``: present, never loaded). ``[null, null]`` (an absent
component) and plain flags (``requires_safety_checker``) pass; anything else, a ``_class_name``
other than ``StableDiffusionPipeline``, or a ``.py`` file in the folder is a one-line
`InputError` naming ``model_index.json`` and the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biomed.errors import InputError

INDEX = "model_index.json"
PIPELINE_CLASSES = frozenset({"StableDiffusionPipeline"})

_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
               "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
               "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
               "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
               "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler",
               "UniPCMultistepScheduler", "LCMScheduler")
_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast",
               "BertTokenizer", "BertTokenizerFast", "PreTrainedTokenizerFast",
               "TokenizersBackend")

ALLOWED: dict[str, frozenset[tuple[str, str]]] = {
    "unet": frozenset({("diffusers", "UNet2DConditionModel")}),
    "vae": frozenset({("diffusers", "AutoencoderKL")}),
    "scheduler": frozenset(("diffusers", c) for c in _SCHEDULERS),
    # clip (and Stable Diffusion's own), pubmed_lm (a GPT-2 body), minilm (BERT)
    "text_encoder": frozenset(("transformers", c)
                              for c in ("CLIPTextModel", "GPT2Model", "BertModel")),
    "tokenizer": frozenset(("transformers", c) for c in _TOKENIZERS),
    # carried by real Stable Diffusion folders; the loaders pass None for both
    "safety_checker": frozenset({("stable_diffusion", "StableDiffusionSafetyChecker")}),
    "feature_extractor": frozenset(("transformers", c) for c in (
        "CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor")),
    "image_encoder": frozenset(),  # only ever [null, null] here
}


def _one_line(value: Any) -> str:
    return " ".join(json.dumps(value)[:120].split())


def _check_entry(where: Path, name: str, value: Any) -> None:
    if name.startswith("_"):
        if name == "_class_name" and not (isinstance(value, str)
                                          and value in PIPELINE_CLASSES):
            raise InputError(where, f"_class_name {_one_line(value)} is not "
                                    f"{' or '.join(sorted(PIPELINE_CLASSES))} (custom pipeline "
                                    "code is never loaded)")
        return  # other metadata (_diffusers_version, _name_or_path): diffusers ignores it
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise InputError(where, f"entry {name!r} {_one_line(value)} is not a "
                                    "[library, class] pair")
        if value[0] is None and value[1] is None:
            return  # an absent component
        pair = (value[0], value[1])
        if name not in ALLOWED or not all(isinstance(v, str) for v in pair):
            raise InputError(where, f"entry {name!r} {_one_line(value)} is not a component "
                                    "the workbench loads")
        if pair not in ALLOWED[name]:
            allowed = ", ".join(f"{lib}.{cls}" for lib, cls in sorted(ALLOWED[name])) or "none"
            raise InputError(where, f"entry {name!r} names {_one_line(value)}, which the "
                                    f"workbench does not load (allowed: {allowed})")
        return
    if name in ALLOWED or not (value is None or isinstance(value, bool | int | float)):
        raise InputError(where, f"entry {name!r} {_one_line(value)} is neither a [library, "
                                "class] pair nor a flag")


def check_model_index(folder: str | Path) -> dict[str, Any]:
    """The parsed ``model_index.json`` of a pipeline folder, every entry allow-listed.

    Also refuses ``.py`` files at the top of the folder and in its component folders: diffusers
    looks there for custom pipeline and component code (``<folder>/<name>.py``,
    ``<component>/<library>.py``)."""
    folder = Path(folder)
    where = folder / INDEX
    try:
        index = json.loads(where.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(where, f"cannot load it ({e.strerror or type(e).__name__})") from None
    except (UnicodeDecodeError, ValueError):
        raise InputError(where, "cannot load it: not valid JSON") from None
    if not isinstance(index, dict):
        raise InputError(where, "not a JSON object of components")
    for name, value in index.items():
        _check_entry(where, str(name), value)
    code = sorted(p for d in (folder, *(folder / n for n in index if n in ALLOWED))
                  if d.is_dir() for p in d.glob("*.py"))
    if code:
        raise InputError(where, f"the folder holds Python code ({code[0].relative_to(folder)}); "
                                "a model folder must carry none")
    return index
