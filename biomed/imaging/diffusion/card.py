"""The model card (``README.md``) of a saved ``pipeline/`` folder: data, licence, intended use,
model, training and numbers; the licence follows the training data's terms."""

from __future__ import annotations

from typing import Any


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
    filtered = ("" if info.get("prompt_filter", "none") == "none" else
                f" Each prompt's denied clauses (\"No pleural effusion.\") are removed first "
                f"(`prompt_filter: {info.get('prompt_filter')}` in `biomed.json`, "
                "`biomed.imaging.reports.prompts`): the workbench's sampler does it, and any "
                "other loader must do the same.")
    return f"""---
license: other
tags: [text-to-image, diffusers, chest-x-ray, research-only, synthetic]
---
# biomed text-to-chest-X-ray latent diffusion ({info.get('preset', '?')})

A `StableDiffusionPipeline` (VAE + conditional UNet + text encoder + scheduler) trained by
`biomed train-diffusion` in the manner of RoentGen (Chambon et al. 2022, arXiv 2211.12737).

## Data
Trained on {images}; prompts are the report's impression first, then its findings, truncated
to {info.get('prompt_length')} tokens.{filtered}

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
