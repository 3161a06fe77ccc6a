"""Read an X-ray: upload a DICOM, PNG or JPEG (or load the real RG1 radiograph) and see what the
workbench's models make of it.

The page shows the image with window/level sliders, the classifier's probability per finding
with Grad-CAM overlays for the most probable findings, CLIP's zero-shot scores, the real IU
reports nearest to the image in CLIP space ("similar cases", with how often such a search finds
the right report), and, for a DICOM, what remains of its header after de-identification.

Uploads go through `apps.uploads` (size and pixel caps before decoding, DICOM de-identified in
memory with the app's own key, the file deleted after reading). Pixels follow the workbench's
one convention (`biomed.imaging.core.pixels`): float H x W in [0, 1], lungs dark. The models
were trained on phantoms: on a real film they are out of distribution, and the page says so.
Without a model the tab still reads and shows images (the DICOM viewer) and names the command
that makes the missing model.

Plain functions (`read_file`, `read_example`, `analyse`, `classify`, `gradcam_overlays`,
`zero_shot`, `similar_cases`, `window_image`) take and return numpy, str and dict; `build`
wires them to the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apps import retrieval, uploads
from apps.common import (
    DISCLAIMER,
    display_label,
    missing_note,
    safe_errors,
    session_key,
    to_uint8,
)
from biomed.errors import BiomedError, InputError
from biomed.imaging.core import pixels

if TYPE_CHECKING:
    from apps.context import AppContext

log = logging.getLogger("apps")

# conf/app.yaml ``read_xray:`` (every key optional; these are the defaults)
DEFAULTS: dict[str, Any] = {
    "example": "RG1_UNCI.dcm",  # a member of the chest_dicom data item (biomed data fetch)
    "gradcam_top": 3,  # Grad-CAM overlays for this many most probable findings
    "gradcam_size": 512,  # longer side of an overlay (pixels)
    "similar_k": 3,  # reports shown under "similar cases"
    "zero_shot_findings": None,  # null: the classifier's labels, else the canonical vocabulary
    "reports": None,  # the report bank: null = the cached IU tarball; or a .tgz / reports.jsonl
    "measure_images": 24,  # phantom test images to measure retrieval when the CLIP run has no
    # retrieval numbers in its metrics.json (0: do not measure)
}
OOD_NOTE = (
    "**Out of distribution.** The classifier and CLIP here were trained on *phantom* "
    "radiographs (procedural drawings rendered from report findings), not on real films. A "
    "real radiograph, such as the RG1 example or your upload, is unlike anything they have "
    "seen: their numbers below show what a research model does outside its training data, "
    "not what the image shows. " + DISCLAIMER)
NO_FINDING = "no_finding"


def _settings(ctx: AppContext) -> dict[str, Any]:
    section = ctx.cfg.get("read_xray") or {}
    return {k: v if section.get(k) is None else section.get(k) for k, v in DEFAULTS.items()}


@dataclass
class Reading:
    """What the models say about one image (empty parts where a model is missing)."""

    probabilities: dict[str, float] = field(default_factory=dict)  # classifier, per finding
    calls: dict[str, bool] = field(default_factory=dict)  # probability >= saved threshold
    gradcam: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (RGB uint8, caption)
    zero_shot: dict[str, float] = field(default_factory=dict)  # CLIP, per finding
    similar: list[retrieval.Hit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing and how to make it


# ---------------------------------------------------------------------------------------------
# launch


def prepare(ctx: AppContext) -> None:
    """At launch: the app's de-identifier (its own key), the report bank (CLIP text embeddings
    of the real IU reports) and the retrieval rate shown on the page."""
    ctx.extras["read_deid"] = uploads.app_deidentifier(ctx.cfg, session_key(ctx))
    if ctx.clip is None:
        return
    settings = _settings(ctx)
    try:
        reports = retrieval.load_reports(settings["reports"])
        source = str(settings["reports"] or "the IU reports (biomed data fetch iu_reports)")
        with ctx.lock("clip"):
            bank = retrieval.build_bank(ctx.clip, reports, source=source)
    except BiomedError as e:  # reports not fetched or unreadable: no similar cases
        ctx.extras["report_bank_error"] = str(e)
        log.warning("no report bank: %s", e)
        return
    ctx.extras["report_bank"] = bank
    ctx.extras["retrieval_rate"] = _retrieval_rate(ctx, bank, reports,
                                                   int(settings["measure_images"]))


def _retrieval_rate(ctx: AppContext, bank: retrieval.ReportBank, reports: list[Any],
                    n: int) -> retrieval.RetrievalRate | None:
    """The CLIP run's own test-split recall (metrics.json), else measured here on ``n``
    phantom test images; None when neither is possible."""
    clip_path = Path(getattr(ctx.clip, "path", "."))
    folders = [Path(f) for f in (ctx.sources.get("clip"),) if f] + [clip_path, clip_path.parent]
    rate = retrieval.rate_from_metrics(dict.fromkeys(folders))
    if rate is not None or n <= 0:
        return rate
    try:
        size = ctx.clip.preprocess_cfg.get("size", 224)
        images, ids = retrieval.phantom_sample(reports, n, size, seed=int(ctx.cfg.get("seed", 0)))
        with ctx.lock("clip"):
            return retrieval.measure_rate(ctx.clip, bank, images, ids, source=(
                "measured at launch on phantom_iu test images, searching this bank"))
    except Exception as e:  # noqa: BLE001 - the page then says the rate is unknown
        log.warning("retrieval rate not measured: %s", e)
        return None


# ---------------------------------------------------------------------------------------------
# reading a file


def _deid(ctx: AppContext) -> Any:
    deid = ctx.extras.get("read_deid")
    if deid is None:
        deid = ctx.extras["read_deid"] = uploads.app_deidentifier(ctx.cfg, session_key(ctx))
    return deid


def read_file(ctx: AppContext, path: str | Path, *, name: str | None = None,
              delete: bool = True, builtin: bool = False) -> uploads.Upload:
    """Check, decode and (DICOM) de-identify an uploaded file (`apps.uploads.read_upload`);
    the upload is deleted afterwards unless ``delete=False``."""
    return uploads.read_upload(path, _deid(ctx), ctx.cfg, name=name, delete=delete,
                               builtin=builtin)


def example_path(ctx: AppContext) -> Path:
    """The built-in real radiograph (RG1, a PA chest CR of the NEMA WG04 test set) in the data
    cache; `biomed.errors.DataNotFetched` naming ``biomed data fetch chest_dicom`` without it."""
    from biomed import sources

    return sources.path("chest_dicom", str(_settings(ctx)["example"]))


def read_example(ctx: AppContext) -> uploads.Upload:
    """The RG1 example, read like an upload (de-identified on arrival) but never deleted."""
    path = example_path(ctx)
    return read_file(ctx, path, name=f"{path.name} (built-in example)", delete=False,
                     builtin=True)


# ---------------------------------------------------------------------------------------------
# the models


def classify(ctx: AppContext, image: np.ndarray) -> tuple[dict[str, float], dict[str, bool]]:
    """(probability per finding, call at the model's saved threshold) of the classifier."""
    import torch

    from biomed.imaging.classifier.model import predict_batches

    config = ctx.classifier_config or {}
    labels = [str(n) for n in config.get("labels", [])]
    size = tuple(int(v) for v in config.get("input_size", image.shape))
    x = torch.from_numpy(pixels.resize(np.asarray(image, np.float32), size))[None, None]
    param = next(ctx.classifier.parameters())
    with ctx.lock("classifier"):
        probs = predict_batches(ctx.classifier, x.to(param.dtype), device=param.device)[0]
    thresholds = config.get("thresholds") or {}
    out = {n: float(p) for n, p in zip(labels, probs, strict=True)}
    calls = {n: p >= float(thresholds.get(n, 0.5)) for n, p in out.items()}
    return out, calls


def gradcam_overlays(ctx: AppContext, image: np.ndarray, probabilities: dict[str, float],
                     top: int | None = None) -> list[tuple[np.ndarray, str]]:
    """Grad-CAM overlays (RGB uint8, caption) of the ``top`` most probable findings
    (``no_finding`` has no place to point at and is skipped)."""
    from biomed.imaging.classifier.gradcam import grad_cam, overlay

    settings = _settings(ctx)
    top = int(settings["gradcam_top"] if top is None else top)
    labels = [str(n) for n in (ctx.classifier_config or {}).get("labels", [])]
    ranked = sorted((n for n in probabilities if n != NO_FINDING),
                    key=lambda n: -probabilities[n])[:max(0, top)]
    shown = _fit(image, int(settings["gradcam_size"]))
    out = []
    for name in ranked:
        with ctx.lock("classifier"):
            cam = grad_cam(ctx.classifier, shown, labels.index(name))
        caption = (f"Grad-CAM for {display_label(name)} (probability "
                   f"{probabilities[name]:.2f}): bright where the classifier found evidence")
        out.append((overlay(shown, cam), caption))
    return out


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape
    scale = side / max(h, w)
    if scale >= 1:
        return np.asarray(img, np.float32)
    return pixels.resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def zero_shot_findings(ctx: AppContext) -> list[str]:
    """The findings CLIP scores: ``read_xray.zero_shot_findings``, else the classifier's
    labels, else the canonical vocabulary."""
    from biomed.imaging.clip.model import default_findings

    given = _settings(ctx)["zero_shot_findings"]
    if given:
        return [str(f) for f in given]
    labels = (ctx.classifier_config or {}).get("labels")
    return [str(n) for n in labels] if labels else default_findings()


def zero_shot(ctx: AppContext, image: np.ndarray) -> tuple[dict[str, float], Any]:
    """(CLIP zero-shot probability per finding, the image's unit embedding): the steps of
    `biomed.imaging.clip.model.zero_shot_scores` on the model loaded at launch, keeping the
    embedding for the similar-cases search."""
    from biomed.imaging.clip.model import zero_shot_probabilities

    names = zero_shot_findings(ctx)
    with ctx.lock("clip"):
        emb = retrieval.image_embedding(ctx.clip, np.asarray(image, np.float32))  # on the CPU
        device = next(ctx.clip.model.parameters()).device
        probs = zero_shot_probabilities(ctx.clip.model, ctx.clip.tokenizer, emb, names,
                                        device)[0]
    return {n: float(p) for n, p in zip(names, probs, strict=True)}, emb[0]


def similar_cases(ctx: AppContext, image_emb: Any, k: int | None = None) -> list[retrieval.Hit]:
    """The ``k`` real IU report texts nearest to the image in CLIP space ([] without a bank)."""
    bank = ctx.extras.get("report_bank")
    if bank is None:
        return []
    return bank.search(image_emb, int(_settings(ctx)["similar_k"] if k is None else k))


def analyse(ctx: AppContext, image: np.ndarray) -> Reading:
    """Every model's output for one image (the model view of an `apps.uploads.Upload`)."""
    reading = Reading()
    if ctx.classifier is not None:
        reading.probabilities, reading.calls = classify(ctx, image)
        reading.gradcam = gradcam_overlays(ctx, image, reading.probabilities)
    else:
        reading.notes.append(missing_note(ctx, "classifier", "there are no finding "
                                          "probabilities or Grad-CAM maps"))
    if ctx.clip is not None:
        reading.zero_shot, emb = zero_shot(ctx, image)
        reading.similar = similar_cases(ctx, emb)
        if "report_bank" not in ctx.extras:
            why = ctx.extras.get("report_bank_error", "the report bank was not built")
            reading.notes.append(f"No similar cases: {why}.")
    else:
        reading.notes.append(missing_note(ctx, "clip", "there are no zero-shot scores or "
                                          "similar cases"))
    return reading


def window_image(base: np.ndarray, level: float, width: float) -> np.ndarray:
    """The full-range image through a window (level and width in [0, 1] of the range), as
    uint8 for display."""
    return to_uint8(uploads.apply_window(base, float(level), float(width)))


# ---------------------------------------------------------------------------------------------
# words on the page


def _escape(text: str) -> str:
    """Report text shown as Markdown, with the characters Markdown would act on escaped."""
    for ch in "\\`*_{}[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text


def similar_markdown(ctx: AppContext, hits: list[retrieval.Hit]) -> str:
    """The similar cases and how often retrieval finds the right report."""
    bank = ctx.extras.get("report_bank")
    rate = ctx.extras.get("retrieval_rate")
    lines = ["**Similar cases**: the real IU reports (CC BY-NC-ND 4.0; `XXXX` is the "
             "dataset's own redaction) whose CLIP text embedding is closest to the image's."]
    for h in hits:
        more = f" and {len(h.ids) - 1} more with the same text" if len(h.ids) > 1 else ""
        lines.append(f"{h.rank}. *{h.ids[0]}{more}*, similarity {h.score:.2f}: "
                     f"{_escape(h.text[:500])}")
    if not hits:
        lines.append("(none: no CLIP model or report bank is loaded)")
    if rate is not None:
        lines.append("\n" + rate.sentence(len(bank) if bank is not None else None))
    elif bank is not None:
        lines.append("\nHow often retrieval finds the right report is unknown here (the CLIP "
                     "run has no retrieval numbers and none were measured at launch).")
    return "\n".join(lines)


def status_markdown(upload: uploads.Upload, reading: Reading) -> str:
    """What was read, how it was windowed, and what is missing."""
    kind = {"dicom": "DICOM (de-identified on arrival with the app's own key)",
            "png": "PNG", "jpeg": "JPEG"}[upload.kind]
    h, w = upload.image.shape
    lines = [f"Read **{_escape(upload.name)}**: {kind}, shown at {w} x {h} pixels; "
             f"the models see {_escape(upload.voi)}."]
    lines += [f"- {_escape(n)}" for n in upload.notes[:5]]
    lines += [f"- {n}" for n in reading.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the page


def _outputs(ctx: AppContext, upload: uploads.Upload) -> tuple:
    """The values of the page's outputs for one read image (see `build`)."""
    reading = analyse(ctx, upload.image)

    def shown(scores: dict[str, float]) -> dict[str, float] | None:
        return {display_label(n): p for n, p in scores.items()} or None

    return (window_image(upload.base, upload.level, upload.width),
            shown(reading.probabilities), reading.gradcam, shown(reading.zero_shot),
            similar_markdown(ctx, reading.similar), upload.header,
            status_markdown(upload, reading), upload.base,
            round(upload.level, 4), round(upload.width, 4))


def _refused(message: str) -> tuple:
    """The page's outputs after a refused upload: cleared, with the reason."""
    import gradio as gr

    gr.Warning(message)
    return (None, None, [], None, "", [], f"**Could not read the file.** {message}", None,
            0.5, 1.0)


def _was_uploaded(blocks: Any, path: str) -> bool:
    """Whether gradio recorded ``path`` as a file uploaded to this app (``upload_file_set``)."""
    files = getattr(blocks, "upload_file_set", None)
    if files is None:  # a gradio without the record: its own cache check is all there is
        return True
    real = str(Path(path).resolve())
    return any(str(Path(f).resolve()) == real for f in files)


def build(ctx: AppContext) -> None:
    """The tab's components and events (called inside ``gr.Tab``)."""
    import gradio as gr

    cap = uploads.upload_limits(ctx.cfg).max_file_bytes / 2**20
    gr.Markdown(OOD_NOTE, elem_id="read-ood-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(label=f"Upload a chest X-ray: DICOM, PNG or JPEG (at most "
                             f"{cap:.0f} MiB; deleted after reading)", type="filepath",
                             file_count="single", elem_id="read-upload")
            example = gr.Button("Load the example: RG1, a real PA chest radiograph (DICOM)",
                                elem_id="read-example-rg1")
            status = gr.Markdown(elem_id="read-status")
            shown = gr.Image(label="The radiograph at the chosen window and level", type="numpy",
                             image_mode="L", format="png", interactive=False,
                             alt_text="The chest radiograph being read", elem_id="read-image")
            level = gr.Slider(0.0, 1.0, value=0.5, step=0.005, label="Level (window centre, "
                              "fraction of the full range)", elem_id="read-level")
            width = gr.Slider(0.005, 1.0, value=1.0, step=0.005, label="Window width "
                              "(fraction of the full range)", elem_id="read-width")
        with gr.Column(scale=1, min_width=300):
            # no headline class: on a real film the top label must not read as a diagnosis
            probs = gr.Label(label="Classifier: probability per finding (each on its own)",
                             num_top_classes=8, show_heading=False,
                             elem_id="read-probabilities")
            cams = gr.Gallery(label="Grad-CAM: where the classifier found evidence for its "
                              "most probable findings", columns=3, height="auto", format="png",
                              elem_id="read-gradcam")
            zero = gr.Label(label="CLIP zero-shot: each finding against its absence (they do "
                            "not add up to 100%)", num_top_classes=8, show_heading=False,
                            elem_id="read-zero-shot")
            similar = gr.Markdown(elem_id="read-similar")
    header = gr.Dataframe(headers=["Tag", "Attribute", "Value"], label="The DICOM header after "
                          "de-identification (what remains)", interactive=False, wrap=True,
                          elem_id="read-header")
    base = gr.State(None)
    outputs = [shown, probs, cams, zero, similar, header, status, base, level, width]

    blocks = gr.context.Context.root_block  # the app being built: its record of uploads

    @safe_errors
    def on_upload(path: str | None) -> tuple:
        if not path:
            return _refused("No file was uploaded.")
        if blocks is not None and not _was_uploaded(blocks, path):
            # a file of gradio's cache that no one uploaded (another session's image): never
            # read or delete it
            return _refused("That file was not uploaded to this app: upload it again.")
        try:
            return _outputs(ctx, read_file(ctx, path))
        except InputError as e:  # a bad upload: a message, never a traceback
            return _refused(str(e))

    @safe_errors
    def on_example() -> tuple:
        try:
            return _outputs(ctx, read_example(ctx))
        except InputError as e:
            return _refused(str(e))

    @safe_errors
    def on_window(image: np.ndarray | None, lev: float, wid: float) -> np.ndarray | None:
        from apps.common import float_in

        if image is None:
            return None
        return window_image(image, float_in(lev, 0.0, 1.0, "level"),
                            float_in(wid, 0.001, 1.0, "window width"))

    upload.upload(on_upload, inputs=[upload], outputs=outputs, api_name="read_xray")
    # clearing the upload clears its results too (nothing of a removed file stays on the page)
    upload.clear(lambda: (None, None, [], None, "", [], "", None, 0.5, 1.0), inputs=[],
                 outputs=outputs, api_visibility="private")
    example.click(on_example, inputs=[], outputs=outputs, api_name="read_example")
    gr.on([level.input, width.input], on_window, inputs=[base, level, width], outputs=[shown],
          api_name="read_window", trigger_mode="always_last", show_progress="hidden")
