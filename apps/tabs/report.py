"""Report assistant: the workbench's language model continues a findings or impression text.

The continuation is sampled by `biomed.lm.generate.generate` (what ``biomed generate-text``
runs: nucleus sampling at a temperature, the KV cache, a seed) with the sampling controls on
the page. The page says which model is loaded, how many parameters it has and what it was
trained on: the quickstart's LM is a small demo trained on PubMed abstracts, not on radiology
reports, so its text reads like an abstract and means little; a real local Hugging Face
causal-LM folder (``biomed app lm.pretrained=/models/...``) gives meaningful text.

Plain functions (`model_info`, `continue_text`) take and return str and dict; `build` wires
them to the page. The text typed is only ever text given to the tokenizer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.common import (
    DISCLAIMER,
    UserInputError,
    float_in,
    int_in,
    missing_note,
    prompt_text,
    safe_errors,
)

if TYPE_CHECKING:
    from apps.context import AppContext

# conf/app.yaml ``report:`` (every key optional; these are the defaults)
DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "max_new_tokens_limit": 256,  # the slider's top (also capped below the model's context)
    "temperature": 0.8,  # 0: greedy
    "top_p": 0.95,
    "seed": 0,
    "examples": [
        "FINDINGS: The heart is normal in size. There is a small left pleural effusion",
        "FINDINGS: The lungs are clear. No pneumothorax. The cardiomediastinal silhouette",
        "IMPRESSION: Mild cardiomegaly with",
    ],
}
MAX_SEED = 2**31 - 1


def _settings(ctx: AppContext) -> dict[str, Any]:
    section = ctx.cfg.get("report") or {}
    return {k: v if section.get(k) is None else section.get(k) for k, v in DEFAULTS.items()}


def _model(ctx: AppContext) -> tuple[Any, Any]:
    if ctx.lm is None:
        raise UserInputError(f"No language model is loaded: make one with "
                             f"`{ctx.missing.get('lm', 'make quickstart')}` and restart the app")
    return ctx.lm[0], ctx.lm[1]


def token_limit(ctx: AppContext) -> int:
    """The most new tokens a request may ask for: ``report.max_new_tokens_limit``, and below
    the model's context (the prompt needs room)."""
    from biomed.lm.model import context_length

    limit = int(_settings(ctx)["max_new_tokens_limit"])
    if ctx.lm is not None:
        limit = min(limit, context_length(ctx.lm[0]) - 1)
    return max(1, limit)


def model_info(ctx: AppContext) -> str:
    """Which model is loaded, how big it is, what it was trained on (Markdown)."""
    from biomed.lm.model import context_length, count_parameters

    if ctx.lm is None:
        return missing_note(ctx, "lm", "the Report assistant cannot write") + \
            " " + DISCLAIMER
    model = ctx.lm[0]
    folder = Path(ctx.sources.get("lm", "?"))
    params = count_parameters(model)["total"]
    size = f"{params / 1e6:.1f} M" if params >= 1e6 else f"{params / 1e3:.0f} k"
    pretrained = (ctx.cfg.get("lm") or {}).get("pretrained")
    if pretrained:
        what = ("a local model folder given with `lm.pretrained=`: its text is only as good "
                "as that model")
    else:
        what = ("the workbench's **demo** LM, trained on PubMed abstracts, **not on radiology "
                "reports**: it writes abstract-like prose, not a reliable report. For "
                "meaningful text, start the app with `lm.pretrained=<a local Hugging Face "
                "causal-LM folder>`")
    return (f"Model: **{folder.name or folder}** ({type(model).__name__}, {size} parameters, "
            f"context {context_length(model)} tokens): {what}. {DISCLAIMER}")


def continue_text(ctx: AppContext, text: Any, max_new_tokens: Any = 64,
                  temperature: Any = 0.8, top_p: Any = 0.95, seed: Any = 0) -> dict[str, Any]:
    """Sample one continuation of ``text``; every value is checked (a client can send
    anything). Returns the prompt, the continuation, ``text`` (both joined), the number of new
    tokens, whether the model ended the text itself, and the seconds taken."""
    from biomed.lm.generate import generate

    model, tokenizer = _model(ctx)
    prompt = prompt_text(text, "report text", keep_lines=True)  # sections stay lines
    n = int_in(max_new_tokens, 1, token_limit(ctx), "max new tokens")
    temp = float_in(temperature, 0.0, 2.0, "temperature")
    p = float_in(top_p, 0.01, 1.0, "top-p")
    s = int_in(seed, 0, MAX_SEED, "seed")
    t0 = time.perf_counter()
    with ctx.lock("lm"):
        sample = generate(model, tokenizer, [prompt], max_new_tokens=n, temperature=temp,
                          top_p=p, num_samples=1, batch_size=1, seed=s)[0]
    continuation = sample["text"]
    joiner = "" if not continuation or continuation[:1].isspace() else " "
    # biomed.lm.generate keeps (context - new tokens) prompt tokens: say so when it cut the text
    from biomed.lm.model import context_length

    room = context_length(model) - n
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    read = {"prompt_tokens": prompt_tokens, "read_tokens": min(prompt_tokens, room),
            "read_from": getattr(tokenizer, "truncation_side", "right")}
    return {"prompt": prompt, "continuation": continuation,
            "text": prompt + joiner + continuation, "new_tokens": int(sample["new_tokens"]),
            "finished": bool(sample["finished"]), "seconds": time.perf_counter() - t0, **read}


def _stats(result: dict[str, Any]) -> str:
    end = "the model ended the text" if result["finished"] else "stopped at the token limit"
    cut = ""
    if result.get("read_tokens", 0) < result.get("prompt_tokens", 0):
        part = "first" if result.get("read_from") == "right" else "last"
        cut = (f" The model read only the {part} {result['read_tokens']} of your "
               f"{result['prompt_tokens']} tokens (its context holds the text and the new "
               "tokens): shorten the text or ask for fewer new tokens.")
    return (f"{result['new_tokens']} new tokens in {result['seconds']:.1f} s ({end}).{cut} "
            "Sampled text from a research model: not a report about anyone.")


def build(ctx: AppContext) -> None:
    """The tab's components and events (called inside ``gr.Tab``)."""
    import gradio as gr

    s = _settings(ctx)
    limit = token_limit(ctx)
    gr.Markdown(model_info(ctx), elem_id="report-model-info")
    text = gr.Textbox(label="Findings or impression to continue", lines=4, max_length=1000,
                      placeholder="FINDINGS: The heart is normal in size. There is",
                      elem_id="report-input")
    with gr.Row():
        n = gr.Slider(1, limit, value=min(int(s["max_new_tokens"]), limit), step=1,
                      label="Max new tokens", elem_id="report-max-new-tokens")
        temp = gr.Slider(0.0, 2.0, value=float(s["temperature"]), step=0.05,
                         label="Temperature (0: always the most likely token)",
                         elem_id="report-temperature")
        top_p = gr.Slider(0.05, 1.0, value=float(s["top_p"]), step=0.05,
                          label="Top-p (sample from this share of the probability)",
                          elem_id="report-top-p")
        seed = gr.Number(value=int(s["seed"]), precision=0, minimum=0, maximum=MAX_SEED,
                         label="Seed (same seed and settings: same text)",
                         elem_id="report-seed")
    button = gr.Button("Continue the text", variant="primary", elem_id="report-button",
                       interactive=ctx.lm is not None)
    output = gr.Textbox(label="Your text, continued by the model", lines=6,
                        interactive=False, elem_id="report-output")
    stats = gr.Markdown(elem_id="report-stats")
    gr.Examples([[e] for e in s["examples"]], inputs=[text], label="Examples to start from")

    @safe_errors
    def on_continue(t: str, tokens: float, temperature: float, p: float,
                    sd: float) -> tuple[str, str]:
        result = continue_text(ctx, t, tokens, temperature, p, sd)
        return result["text"], _stats(result)

    inputs, outputs = [text, n, temp, top_p, seed], [output, stats]
    button.click(on_continue, inputs=inputs, outputs=outputs, api_name="report_continue")
    text.submit(on_continue, inputs=inputs, outputs=outputs, api_visibility="private")
