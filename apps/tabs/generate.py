"""Generate tab: report text in, synthetic chest X-rays out, each with its provenance.

The loaded pipeline samples with DPM-Solver++ (`biomed.imaging.diffusion.sample.generate_images`,
the sampler of ``biomed generate``); image ``k`` gets the seed ``biomed generate`` would give it
(`image_seed(seed, 0, k)`), so any image can be made again from its provenance. Every image is
marked SYNTHETIC as page text (the banner and its caption), and its downloads carry the same
provenance the workbench writes everywhere: a 16-bit PNG with text chunks
(`biomed.imaging.core.pixels.write_png16`) and a DICOM Secondary Capture with ConversionType
SYN, ImageType DERIVED\\SECONDARY and a DerivationDescription
(`biomed.imaging.dicom.write.write_synthetic_dicom`; the prompt as a hash under the app's own
session key, as DICOM always records it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps.common import (
    DISCLAIMER,
    SYNTHETIC,
    SYNTHETIC_BANNER,
    UserInputError,
    float_in,
    for_display,
    fresh_folder,
    int_in,
    missing_note,
    prompt_text,
    safe_errors,
    session_key,
)
from apps.context import AppContext

MAX_SEED = 2**31 - 1
SOFTWARE = "biomed app"


@dataclass
class Generated:
    """What one click makes: images (float H x W in [0, 1]), their provenance, their files."""

    images: list[np.ndarray] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # per image: the PNG, then the DICOM


def limits(ctx: AppContext) -> dict[str, Any]:
    """The tab's defaults and limits (``generate`` in conf/app.yaml)."""
    g = ctx.cfg.get("generate") or {}
    return {"scheduler": str(g.get("scheduler", "dpmpp")), "steps": int(g.get("steps", 20)),
            "guidance": float(g.get("guidance", 4.0)), "max_steps": int(g.get("max_steps", 50)),
            "max_count": int(g.get("max_count", 4)),
            "max_guidance": float(g.get("max_guidance", 15.0)),
            "examples": [str(e) for e in g.get("examples") or []]}


def generate(ctx: AppContext, prompt: Any, count: Any = 1, seed: Any = 0,
             guidance: Any = None, steps: Any = None) -> Generated:
    """Sample ``count`` images of ``prompt`` and write their PNG and DICOM downloads into a fresh
    folder under ``ctx.work_dir``. Every value is checked (a client can send anything);
    `UserInputError` names the bad one, or the command that makes the missing model."""
    from biomed.imaging.core.pixels import write_png16
    from biomed.imaging.dicom.write import prompt_provenance, write_synthetic_dicom
    from biomed.imaging.diffusion.sample import generate_images, image_seed

    if ctx.pipeline is None:
        raise UserInputError(missing_note(ctx, "diffusion", "nothing can be generated"))
    lim = limits(ctx)
    text = prompt_text(prompt)
    count = int_in(count, 1, lim["max_count"], "number of images")
    seed = int_in(seed, 0, MAX_SEED, "seed")
    steps = int_in(lim["steps"] if steps is None else steps, 1, lim["max_steps"], "steps")
    guidance = float_in(lim["guidance"] if guidance is None else guidance, 0.0,
                        lim["max_guidance"], "guidance")
    seeds = [image_seed(seed, 0, k) for k in range(count)]
    with ctx.lock("diffusion"):
        images, diverged = generate_images(ctx.pipeline, [text] * count, seeds,
                                           scheduler=lim["scheduler"], steps=steps,
                                           guidance=guidance, batch_size=count)
    model_id = ctx.pipeline.model_id
    out = Generated()
    folder = fresh_folder(ctx, "generate")
    stem = download_stem(text)
    for k, (img, s, flag) in enumerate(zip(images, seeds, diverged, strict=True)):
        prov = {"synthetic": True, "model_id": model_id, **prompt_provenance(text, "text"),
                "seed": s, "base_seed": seed, "k": k, "steps": steps, "guidance": guidance,
                "scheduler": lim["scheduler"], "diverged": bool(flag)}
        chunks = {"synthetic": "true", "model_id": model_id, "prompt_policy": "text",
                  "prompt": text, "seed": str(s), "steps": str(steps),
                  "guidance": f"{guidance:g}", "scheduler": lim["scheduler"],
                  "software": SOFTWARE}
        name = f"{stem}_seed{seed}_{k + 1}"
        png = write_png16(folder / f"{name}.png", img, text=chunks)
        dcm = write_synthetic_dicom(folder / f"{name}.dcm", img, model_id=model_id, prompt=text,
                                    salt=session_key(ctx), seed=s, steps=steps,
                                    guidance=guidance)
        out.images.append(img)
        out.provenance.append(prov)
        out.files += [png, dcm]
    return out


def download_stem(prompt: str, words: int = 4) -> str:
    """The start of a download's file name: ``synthetic_`` + the prompt's first words + a short
    hash of the whole prompt, so that images of two prompts never share a name
    (``synthetic_moderate-left-pleural-effusion_3f9a1c``)."""
    import hashlib
    import re

    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:words])[:40] or "prompt"
    return f"synthetic_{slug}_{hashlib.sha256(prompt.encode()).hexdigest()[:6]}"


def banner(gen: Generated | None = None) -> str:
    """The SYNTHETIC banner: before any image, and for what was just made."""
    if not gen or not gen.images:
        return (f"Images made here are **{SYNTHETIC}**: drawn by a research model from text, "
                "they show no patient.")
    n = len(gen.images)
    return (f"{SYNTHETIC_BANNER} ({n} image{'s' if n > 1 else ''}, model "
            f"`{gen.provenance[0]['model_id']}`)")


def captions(gen: Generated) -> list[str]:
    """One caption per image: SYNTHETIC, its number and seed (and a divergence warning)."""
    out = []
    for k, p in enumerate(gen.provenance):
        note = " - flagged: looks like noise (the sampler diverged)" if p["diverged"] else ""
        out.append(f"{SYNTHETIC} image {k + 1}, seed {p['seed']}{note}")
    return out


def provenance_markdown(gen: Generated) -> str:
    """Provenance as a Markdown table: model (folder name and weights hash), prompt, seed,
    steps, guidance, scheduler."""
    if not gen.images:
        return ""
    p0 = gen.provenance[0]
    rows = [f"| {k + 1} | {p['seed']} | {'yes' if p['diverged'] else 'no'} |"
            for k, p in enumerate(gen.provenance)]
    return "\n".join([
        f"**Provenance** (also in each PNG's text chunks and each DICOM's DerivationDescription)"
        f"\n\n- model: `{p0['model_id']}`\n- prompt: {_md_escape(p0['prompt'])}"
        f"\n- sampler: {p0['scheduler']} (DPM-Solver++ when dpmpp), {p0['steps']} steps, "
        f"guidance {p0['guidance']:g}; base seed {p0['base_seed']}\n",
        "| image | seed | flagged as noise |", "|---|---|---|", *rows])


def _md_escape(text: str) -> str:
    """User text shown inside Markdown as text, not markup."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~" else c for c in text)


# ---------------------------------------------------------------------------------------------
# the page


def prepare(ctx: AppContext) -> None:
    """Nothing beyond the context's warm-up of the pipeline."""


def build(ctx: AppContext) -> None:
    import gradio as gr

    lim = limits(ctx)
    gr.Markdown(DISCLAIMER)
    if ctx.pipeline is None:
        gr.Markdown(missing_note(ctx, "diffusion", "this tab cannot generate images"),
                    elem_id="generate-missing")
    with gr.Row():
        with gr.Column(scale=2, min_width=240):
            prompt = gr.Textbox(label="Report text: what the X-ray should show", lines=3,
                                max_lines=8, max_length=1000, elem_id="generate-prompt",
                                placeholder="e.g. Moderate left pleural effusion.")
            if lim["examples"]:
                gr.Examples(examples=[[e] for e in lim["examples"]], inputs=[prompt],
                            label="Example reports (click one)")
        with gr.Column(scale=1, min_width=200):
            count = gr.Slider(1, lim["max_count"], value=1, step=1, label="Number of images")
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                             label="Seed (the same seed and text give the same image)")
            guidance = gr.Slider(0.0, lim["max_guidance"], value=lim["guidance"], step=0.5,
                                 label="Guidance: how strongly the text steers the image")
            steps = gr.Slider(1, lim["max_steps"], value=lim["steps"], step=1,
                              label="Sampling steps (DPM-Solver++)")
            button = gr.Button("Generate", variant="primary", elem_id="generate-button",
                               interactive=ctx.pipeline is not None)
    shown_banner = gr.Markdown(banner(), elem_id="generate-banner")
    gallery = gr.Gallery(label=f"Generated chest X-rays ({SYNTHETIC}: not patients)", columns=2,
                         format="png", object_fit="contain", height="auto",
                         elem_id="generate-gallery", interactive=False)
    provenance = gr.Markdown(elem_id="generate-provenance")
    files = gr.File(label="Downloads: 16-bit PNG and DICOM, each with its provenance",
                    file_count="multiple", interactive=False, elem_id="generate-downloads")

    @safe_errors
    def on_generate(prompt_value, count_value, seed_value, guidance_value, steps_value):
        gen = generate(ctx, prompt_value, count_value, seed_value, guidance_value, steps_value)
        items = [(for_display(img), cap) for img, cap in zip(gen.images, captions(gen),
                                                              strict=True)]
        return items, banner(gen), provenance_markdown(gen), [str(f) for f in gen.files]

    button.click(on_generate, [prompt, count, seed, guidance, steps],
                 [gallery, shown_banner, provenance, files], api_name="generate")
