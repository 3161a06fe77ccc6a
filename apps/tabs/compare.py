"""Compare tab: one seed, two reports, side by side: what does "moderate left pleural effusion"
change? The teaching core of the app.

The two reports are built from structured findings (`PhantomFinding`: name, side, severity),
so that the phantom renderer can draw exactly the same findings with the same seed: the ground
truth stands beside what the diffusion model learned. The controls edit prompt B from prompt A
(add or remove a finding, change its side or severity); each report's text is the templated
impression of its findings (`biomed.imaging.reports.templates.write_report`), one sentence per
finding from its own seeded stream, so that changing one finding changes one sentence. The
prompts stay editable: the model reads the text in the boxes, the phantom the findings listed
under them.

Both model images share one seed (the same starting noise), both phantoms another (the renderer
keeps the anatomy and the other findings of a seed when a finding is added), so the difference
maps (B - A, in the colour-blind-safe diverging map ``RdBu_r`` with symmetric limits and a
colour bar) show what the change of text did. Without a diffusion model the phantom pair and
its difference are still shown, with the command that makes the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apps.common import (
    DISCLAIMER,
    SEVERITY_WORDS,
    UserInputError,
    describe_findings,
    difference_figure,
    float_in,
    for_display,
    int_in,
    missing_note,
    prompt_text,
    safe_errors,
    symmetric_limit,
)
from apps.context import AppContext
from biomed.imaging.core.findings import FINDING_NAMES, SEVERITIES, SIDES, PhantomFinding

MAX_SEED = 2**31 - 1
DEFAULT_A: list[dict[str, Any]] = []  # a normal chest
DEFAULT_B: list[dict[str, Any]] = [{"name": "effusion", "side": "left", "severity": 2}]


# ---------------------------------------------------------------------------------------------
# findings and the prompts made from them


def as_findings(items: Iterable[Mapping[str, Any] | PhantomFinding] | None
                ) -> list[PhantomFinding]:
    """Findings from the dicts the page keeps (`PhantomFinding.to_dict`); a bad entry is a
    `UserInputError`."""
    out = []
    for it in items or []:
        try:
            out.append(it if isinstance(it, PhantomFinding) else PhantomFinding(**dict(it)))
        except (TypeError, ValueError) as e:
            raise UserInputError(f"finding {it!r}: {e}") from None
    return out


def edit_findings(findings: Sequence[Mapping[str, Any]] | None, action: str, name: str,
                  side: str | None = None, severity: Any = 2) -> list[dict[str, Any]]:
    """A copy of ``findings`` with ``name`` set ("add": added, or its side and severity
    changed in place, so the other findings keep their places) or removed ("remove").
    ``side`` matters only for findings that have one (left when not given)."""
    if name not in FINDING_NAMES:
        raise UserInputError(f"finding {name!r}: one of {', '.join(FINDING_NAMES)}")
    current = [f.to_dict() for f in as_findings(findings)]
    if action == "remove":
        return [f for f in current if f["name"] != name]
    if action != "add":
        raise UserInputError(f"action {action!r}: add or remove")
    sev = int_in(severity, min(SEVERITIES), max(SEVERITIES), "severity")
    proto = PhantomFinding(name)
    if proto.lateral:
        side = side or "left"
        if side not in SIDES:
            raise UserInputError(f"side {side!r}: one of {', '.join(SIDES)}")
    else:
        side = None
    new = PhantomFinding(name, side=side, severity=sev,
                         device="endotracheal_tube" if name == "support_devices" else None)
    new_dict = new.to_dict()
    for i, f in enumerate(current):
        if f["name"] == name:
            current[i] = new_dict
            return current
    return [*current, new_dict]


def phrase(finding: PhantomFinding, seed: int = 0) -> str:
    """The templated impression sentence of one finding, from its own stream of ``seed``."""
    from biomed.imaging.reports.templates import write_report

    rng = np.random.default_rng([seed, FINDING_NAMES.index(finding.name)])
    impression, _ = write_report([finding], rng)
    first = re.sub(r"^\d+\.\s*", "", impression).split(". ")[0].rstrip(".")
    return first + "."


def prompt_of(findings: Iterable[Mapping[str, Any] | PhantomFinding] | None,
              seed: int = 0) -> str:
    """The report text of a finding list: one impression sentence per finding (a normal
    chest's impression when there is none)."""
    from biomed.imaging.reports.templates import write_report

    fs = as_findings(findings)
    if not fs:
        return write_report([], seed)[0]
    return " ".join(phrase(f, seed) for f in fs)


def describe(findings: Iterable[Mapping[str, Any] | PhantomFinding] | None) -> str:
    """A plain list of findings for the page ("moderate left effusion; ...")."""
    return describe_findings(as_findings(findings))


# ---------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Compared:
    """Both sides of a comparison: images float H x W in [0, 1], differences B - A."""

    phantom_a: np.ndarray
    phantom_b: np.ndarray
    phantom_drawn: tuple[list[PhantomFinding], list[PhantomFinding]]  # resolved: exact truth
    model_a: np.ndarray | None = None
    model_b: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def phantom_diff(self) -> np.ndarray:
        return self.phantom_b - self.phantom_a

    @property
    def model_diff(self) -> np.ndarray | None:
        if self.model_a is None or self.model_b is None:
            return None
        return self.model_b - self.model_a


def settings(ctx: AppContext) -> dict[str, Any]:
    c = ctx.cfg.get("compare") or {}
    g = ctx.cfg.get("generate") or {}
    return {"size": int(c.get("size", 256)), "steps": int(c.get("steps", 20)),
            "guidance": float(c.get("guidance", 4.0)),
            "scheduler": str(g.get("scheduler", "dpmpp")),
            "max_steps": int(g.get("max_steps", 50)),
            "max_guidance": float(g.get("max_guidance", 15.0))}


def compare(ctx: AppContext, prompt_a: Any, prompt_b: Any,
            findings_a: Sequence[Mapping[str, Any]] | None,
            findings_b: Sequence[Mapping[str, Any]] | None, seed: Any = 0,
            steps: Any = None, guidance: Any = None) -> Compared:
    """The phantom pair of the two finding lists (one seed) and, with a diffusion model, the
    model's pair of the two prompts (one seed: the same starting noise)."""
    from biomed.imaging.phantom.render import render_with_info

    s = settings(ctx)
    seed = int_in(seed, 0, MAX_SEED, "seed")
    fa, fb = as_findings(findings_a), as_findings(findings_b)
    pa, info_a = render_with_info(fa, seed, s["size"])
    pb, info_b = render_with_info(fb, seed, s["size"])
    out = Compared(pa, pb, (info_a["findings"], info_b["findings"]))
    if ctx.pipeline is None:
        out.notes.append(missing_note(ctx, "diffusion", "only the phantoms are compared"))
        return out
    from biomed.imaging.diffusion.sample import generate_images

    text_a, text_b = prompt_text(prompt_a, "prompt A"), prompt_text(prompt_b, "prompt B")
    steps = int_in(s["steps"] if steps is None else steps, 1, s["max_steps"], "steps")
    guidance = float_in(s["guidance"] if guidance is None else guidance, 0.0,
                        s["max_guidance"], "guidance")
    with ctx.lock("diffusion"):
        images, diverged = generate_images(ctx.pipeline, [text_a, text_b], [seed, seed],
                                           scheduler=s["scheduler"], steps=steps,
                                           guidance=guidance, batch_size=2)
    out.model_a, out.model_b = images[0], images[1]
    if diverged.any():
        out.notes.append("The sampler diverged on at least one side (it looks like noise): "
                         "try another seed or fewer steps.")
    if text_a == text_b:
        out.notes.append("The two prompts are the same text: the model's images are the same.")
    return out


def hand_edit_note(text_a: str, text_b: str, a: Any, b: Any) -> str:
    """A warning when a report's text is no longer the one its finding list writes (typed by
    hand, or sent by a script): the phantom still draws the list, not the text."""
    edited = [name for name, text, found in (("A", text_a, a), ("B", text_b, b))
              if " ".join(str(text or "").split()) != " ".join(prompt_of(found).split())]
    if not edited:
        return ""
    which = " and ".join(f"report {n}" for n in edited)
    return (f"\n\n**Note:** {which} was edited by hand, so the phantom beside it still draws "
            "the finding list above, not the text. Use Add or change / Remove to change what "
            "the phantom draws.")


def notes_markdown(ctx: AppContext, result: Compared) -> str:
    """What the student reads under the images: what each phantom drew, and the notes."""
    drawn_a, drawn_b = result.phantom_drawn
    lines = [f"**Phantom A draws:** {describe(drawn_a)}", f"**Phantom B draws:** "
             f"{describe(drawn_b)}",
             "The phantoms are the ground truth (exact findings); the model's images show what "
             "it learned from report text. Difference maps: red where B is brighter than A, blue "
             "where darker, white where unchanged."]
    if ctx.pipeline is not None:
        lines.append(f"Model: `{ctx.pipeline.model_id}`. Its images are SYNTHETIC.")
    return "\n\n".join(lines + result.notes)


# ---------------------------------------------------------------------------------------------
# the page


def prepare(ctx: AppContext) -> None:
    """Load the phantom's lung shapes and draw once, so the first comparison is quick."""
    from biomed.imaging.phantom.render import render

    render([], 0, settings(ctx)["size"])


def build(ctx: AppContext) -> None:
    import gradio as gr

    s = settings(ctx)
    gr.Markdown(DISCLAIMER)
    gr.Markdown("Change one finding between report A and report B and see what changes, in "
                "the model's images and in the phantom's exact drawing of the same findings.")
    if ctx.pipeline is None:
        gr.Markdown(missing_note(ctx, "diffusion", "only the phantoms are compared"),
                    elem_id="compare-missing")
    state_a, state_b = gr.State(list(DEFAULT_A)), gr.State(list(DEFAULT_B))
    with gr.Row():
        with gr.Column(min_width=200):
            prompt_a = gr.Textbox(value=prompt_of(DEFAULT_A), label="Report A", lines=2,
                                  max_length=1000, elem_id="compare-prompt-a")
            listed_a = gr.Markdown(f"Phantom A: {describe(DEFAULT_A)}")
        with gr.Column(min_width=200):
            prompt_b = gr.Textbox(value=prompt_of(DEFAULT_B), label="Report B", lines=2,
                                  max_length=1000, elem_id="compare-prompt-b")
            listed_b = gr.Markdown(f"Phantom B: {describe(DEFAULT_B)}")
    with gr.Accordion("Build report B from report A (or edit A)", open=True):
        with gr.Row():
            target = gr.Radio(["B", "A"], value="B", label="Edit report")
            name = gr.Dropdown([(n.replace("_", " "), n) for n in FINDING_NAMES],
                               value="effusion", label="Finding")
            side = gr.Radio(list(SIDES), value="left",
                            label="Side (the patient's; ignored where a finding has none)")
            severity = gr.Radio([(SEVERITY_WORDS[v], v) for v in SEVERITIES], value=2,
                                label="Severity")
        with gr.Row():
            add = gr.Button("Add or change", elem_id="compare-add")
            remove = gr.Button("Remove", elem_id="compare-remove")
            copy = gr.Button("Copy A to B", elem_id="compare-copy")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                         label="Seed (shared by both sides)", min_width=160)
        steps = gr.Slider(1, s["max_steps"], value=s["steps"], step=1, label="Sampling steps",
                          min_width=160)
        guidance = gr.Slider(0.0, s["max_guidance"], value=s["guidance"], step=0.5,
                             label="Guidance", min_width=160)
    button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    with gr.Row():
        model_a = gr.Image(label="Model, report A (SYNTHETIC)", format="png", interactive=False,
                           alt_text="The diffusion model's image for report A",
                           elem_id="compare-model-a", min_width=160)
        model_b = gr.Image(label="Model, report B (SYNTHETIC)", format="png", interactive=False,
                           alt_text="The diffusion model's image for report B",
                           elem_id="compare-model-b", min_width=160)
        diff = gr.Image(label="Model difference B - A (colour bar: red brighter in B)",
                        format="png", interactive=False, elem_id="compare-diff", min_width=160,
                        alt_text="Difference map of the model's images, B minus A")
    with gr.Row():
        phantom_a = gr.Image(label="Phantom, findings A (ground truth)", format="png",
                             interactive=False, elem_id="compare-phantom-a", min_width=160,
                             alt_text="The phantom renderer's drawing of findings A")
        phantom_b = gr.Image(label="Phantom, findings B (ground truth)", format="png",
                             interactive=False, elem_id="compare-phantom-b", min_width=160,
                             alt_text="The phantom renderer's drawing of findings B")
        phantom_diff = gr.Image(label="Phantom difference B - A", format="png",
                                interactive=False, elem_id="compare-phantom-diff",
                                min_width=160,
                                alt_text="Difference map of the phantoms, B minus A")
    notes = gr.Markdown(elem_id="compare-notes")

    def _listing(findings, which):
        return f"Phantom {which}: {describe(findings)}"

    @safe_errors
    def on_edit(action, which, a, b, name_value, side_value, severity_value):
        fa, fb = (edit_findings(a, action, name_value, side_value, severity_value), b) \
            if which == "A" else (a, edit_findings(b, action, name_value, side_value,
                                                   severity_value))
        return (fa, fb, prompt_of(fa), prompt_of(fb), _listing(fa, "A"), _listing(fb, "B"))

    def on_add(which, a, b, name_value, side_value, severity_value):
        return on_edit("add", which, a, b, name_value, side_value, severity_value)

    def on_remove(which, a, b, name_value, side_value, severity_value):
        return on_edit("remove", which, a, b, name_value, side_value, severity_value)

    edits = [target, state_a, state_b, name, side, severity]
    outs = [state_a, state_b, prompt_a, prompt_b, listed_a, listed_b]
    add.click(on_add, edits, outs, api_visibility="private")
    remove.click(on_remove, edits, outs, api_visibility="private")

    def on_copy(a):
        return list(a), prompt_of(a), _listing(a, "B")

    copy.click(on_copy, [state_a], [state_b, prompt_b, listed_b], api_visibility="private")

    @safe_errors
    def on_compare(text_a, text_b, seed_value, steps_value, guidance_value, a, b):
        r = compare(ctx, text_a, text_b, a, b, seed_value, steps_value, guidance_value)
        model_diff = r.model_diff
        # one colour scale for both maps, so that equal colours mean equal changes
        limit = max(symmetric_limit(r.phantom_diff),
                    0.0 if model_diff is None else symmetric_limit(model_diff))
        return (None if r.model_a is None else for_display(r.model_a),
                None if r.model_b is None else for_display(r.model_b),
                None if model_diff is None else difference_figure(model_diff, "Model: B - A",
                                                                  limit),
                for_display(r.phantom_a), for_display(r.phantom_b),
                difference_figure(r.phantom_diff, "Phantom: B - A", limit),
                notes_markdown(ctx, r) + hand_edit_note(text_a, text_b, a, b))

    button.click(on_compare, [prompt_a, prompt_b, seed, steps, guidance, state_a, state_b],
                 [model_a, model_b, diff, phantom_a, phantom_b, phantom_diff, notes],
                 api_name="compare")
