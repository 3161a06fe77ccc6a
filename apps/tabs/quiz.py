"""Quiz tab: spot the findings on phantom chest X-rays whose labels are exact.

Questions are phantoms (`biomed.imaging.phantom.render`), not generated images: a generated
image's labels are only as good as the model's fidelity, a phantom's are what was drawn. Each
question draws 0 to ``quiz.max_findings`` findings (sides and severities too) from its own
seeded stream (``[round seed, question number]``), so a teacher who sets ``quiz.seed`` gives
every student the same round. The student ticks findings; a question scores 1 when the ticks
are exactly right, else the share of right ticks among ticked and true findings (Jaccard); the
explanation is the report text of the drawn findings
(`biomed.imaging.reports.templates.write_report`) and the exact findings drawn. Progress over a
round (``quiz.questions``) lives in ``gr.State``: per browser session only, nothing is stored.

With a real labelled dataset configured (``data@quiz.dataset=<data config>``; default none),
a share ``quiz.real_fraction`` of the questions shows its images (the split ``quiz.split``),
the choices are its labels that the phantom vocabulary names, labels it does not know (NaN)
are not scored, and the explanation is the image's own report. Its labels are only as good as
the dataset's labeller, and the page says so.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apps.common import (
    DISCLAIMER,
    describe_findings,
    for_display,
    safe_errors,
)
from apps.context import AppContext
from biomed.imaging.core.findings import FINDING_NAMES, SIDES, PhantomFinding

log = logging.getLogger("apps")

NO_FINDING = "no_finding"
CHOICE_WORDS = {
    "cardiomegaly": "Enlarged heart (cardiomegaly)", "effusion": "Pleural effusion",
    "pneumothorax": "Pneumothorax", "nodule": "Nodule",
    "calcified_granuloma": "Calcified granuloma", "mass": "Mass",
    "consolidation": "Consolidation", "atelectasis": "Atelectasis", "edema": "Pulmonary edema",
    "emphysema": "Emphysema", "low_lung_volumes": "Low lung volumes",
    "support_devices": "Support device (tube or line)", NO_FINDING: "No finding",
}
# findings not drawn together: they contradict each other (hyper- and hypo-inflation)
EXCLUSIVE = (frozenset({"emphysema", "low_lung_volumes"}),)


@dataclass
class Question:
    """One question: the image (float H x W in [0, 1]) and what scores it."""

    image: np.ndarray
    choices: list[str]  # the values a student may tick
    truth: list[str]  # the right ones ([NO_FINDING] when nothing is there)
    explanation: str  # the report text
    drawn: str  # what the image shows, in words
    source: str  # "phantom" or the dataset's name
    unknown: list[str] = field(default_factory=list)  # choices whose truth is unknown


def settings(ctx: AppContext) -> dict[str, Any]:
    q = ctx.cfg.get("quiz") or {}
    seed = q.get("seed")
    return {"questions": max(1, int(q.get("questions", 5))), "size": int(q.get("size", 256)),
            "seed": None if seed is None else int(seed),
            "max_findings": max(0, int(q.get("max_findings", 2))),
            "severities": [int(s) for s in q.get("severities") or (2, 3)],
            "real_fraction": float(q.get("real_fraction", 0.5)),
            "split": str(q.get("split", "test"))}


def choice_pairs(values: Iterable[str]) -> list[tuple[str, str]]:
    """(words shown, value) for a CheckboxGroup."""
    return [(CHOICE_WORDS.get(v, v.replace("_", " ")), v) for v in values]


# ---------------------------------------------------------------------------------------------
# drawing questions


def phantom_question(ctx: AppContext, rng: np.random.Generator) -> Question:
    """A phantom with findings drawn from ``rng``: exact labels."""
    from biomed.imaging.phantom.render import render_with_info
    from biomed.imaging.reports.templates import write_report

    s = settings(ctx)
    most = s["max_findings"]
    weights = np.array([0.2] + [0.8 / most] * most) if most else np.ones(1)
    while True:
        n = int(rng.choice(most + 1, p=weights / weights.sum()))
        names = [str(x) for x in rng.choice(FINDING_NAMES, n, replace=False)]
        if not any(pair <= set(names) for pair in EXCLUSIVE):
            break
    findings = []
    for name in names:
        side = str(rng.choice(SIDES)) if PhantomFinding(name).lateral else None
        findings.append(PhantomFinding(name, side=side,
                                       severity=int(rng.choice(s["severities"]))))
    image, info = render_with_info(findings, int(rng.integers(2**31 - 1)), s["size"])
    drawn = info["findings"]
    impression, body = write_report(drawn, rng)
    truth = sorted({f.name for f in drawn}, key=FINDING_NAMES.index) or [NO_FINDING]
    return Question(image, [*FINDING_NAMES, NO_FINDING], truth, f"{impression} {body}",
                    describe_findings(drawn), "phantom")


@dataclass
class QuizDataset:
    """A real labelled split for the quiz: its choices and the rows that can be asked."""

    dataset: Any
    name: str
    choices: list[str]  # its label names in the phantom vocabulary, then NO_FINDING
    columns: list[int]  # the label column of each choice but NO_FINDING
    rows: np.ndarray  # rows with at least one known choice label


def load_quiz_dataset(ctx: AppContext) -> QuizDataset | None:
    """The configured dataset's split (``quiz.dataset``, ``quiz.split``), or None."""
    node = (ctx.cfg.get("quiz") or {}).get("dataset")
    if not node:
        return None
    from biomed.errors import ConfigError
    from biomed.imaging.data.splits import build_splits

    split = settings(ctx)["split"]
    ds = build_splits(node)[split]
    names = list(ds.label_names)
    choices = [n for n in FINDING_NAMES if n in names]
    name = str(node.get("name") or node.get("_target_", "dataset"))
    if not choices:
        raise ConfigError(f"quiz.dataset ({name}): none of its labels is in the phantom "
                          f"vocabulary ({', '.join(FINDING_NAMES)}); with its own label names "
                          "it cannot be scored (try quiz.dataset.labels=canonical)")
    columns = [names.index(c) for c in choices]
    labels = np.asarray(ds.labels, dtype=np.float32)[:, columns]
    rows = np.flatnonzero(np.isfinite(labels).any(axis=1))
    if not len(rows):
        raise ConfigError(f"quiz.dataset ({name}): no {split} row has a known label to ask")
    return QuizDataset(ds, name, [*choices, NO_FINDING], columns, rows)


def dataset_question(ctx: AppContext, qd: QuizDataset, rng: np.random.Generator) -> Question:
    """A real image of the configured dataset; unknown labels are not scored."""
    row = int(rng.choice(qd.rows))
    item = qd.dataset[row]
    labels = np.asarray(qd.dataset.labels, dtype=np.float32)[row, qd.columns]
    found = [c for c, v in zip(qd.choices, labels, strict=False) if v == 1]
    unknown = [c for c, v in zip(qd.choices, labels, strict=False) if not np.isfinite(v)]
    truth = found or [NO_FINDING]
    if not found and unknown:
        unknown.append(NO_FINDING)  # "nothing" cannot be known when a label is unknown
    report = str(item.get("report") or "").strip() or "(this dataset has no report text)"
    return Question(np.asarray(item["image"], np.float32), qd.choices, truth,
                    report, f"the dataset's labels: {', '.join(truth).replace('_', ' ')} "
                    "(only as good as its labeller)", qd.name, unknown)


# ---------------------------------------------------------------------------------------------
# a round


def _round_seed(ctx: AppContext, rounds: int) -> int:
    seed = settings(ctx)["seed"]
    if seed is None:
        return secrets.randbits(31)
    return int(np.random.SeedSequence([seed, rounds]).generate_state(1)[0] >> 1)


def new_question(ctx: AppContext, state: dict | None) -> tuple[Question, dict]:
    """The next question of the round in ``state`` (a new round when there is none or it is
    complete); returns it and the new state (the old one is not changed)."""
    s = settings(ctx)
    state = dict(state or {})
    if not state or len(state["points"]) >= s["questions"]:
        rounds = int(state.get("rounds", 0))
        state = {"round_seed": _round_seed(ctx, rounds), "asked": 0, "points": [],
                 "rounds": rounds + 1, "current": None}
    rng = np.random.default_rng([state["round_seed"], state["asked"]])
    qd = ctx.extras.get("quiz_dataset")
    real = qd is not None and rng.random() < s["real_fraction"]
    q = dataset_question(ctx, qd, rng) if real else phantom_question(ctx, rng)
    state["asked"] += 1
    state["current"] = {"choices": q.choices, "truth": q.truth, "unknown": q.unknown,
                        "explanation": q.explanation, "drawn": q.drawn, "source": q.source,
                        "answered": False}
    return q, state


def points(truth: Iterable[str], ticked: Iterable[str], unknown: Iterable[str] = ()) -> float:
    """1 when the ticks are exactly the truth, else right ticks / (ticked or true), leaving
    out the choices whose truth is unknown."""
    skip = set(unknown)
    t, a = set(truth) - skip, set(ticked) - skip
    return 1.0 if not (t | a) else len(t & a) / len(t | a)


def answer(ctx: AppContext, state: dict | None, ticked: Iterable[str] | None
           ) -> tuple[str, dict]:
    """Score the ticks against the current question: (feedback Markdown, new state)."""
    state = dict(state or {})
    cur = state.get("current")
    if not cur:
        return "Click **New question** first.", state
    if cur["answered"]:
        return "This question is already scored: click **New question**.", state
    ticked = [t for t in (ticked or []) if t in cur["choices"]]
    p = points(cur["truth"], ticked, cur["unknown"])
    state["current"] = {**cur, "answered": True}
    state["points"] = [*state["points"], p]
    truth, unknown = set(cur["truth"]), set(cur["unknown"])

    def words(values: Iterable[str]) -> str:
        return ", ".join(CHOICE_WORDS.get(v, v) for v in values) or "none"

    found = [c for c in cur["choices"] if c in truth and c in ticked and c not in unknown]
    missed = [c for c in cur["choices"] if c in truth and c not in ticked and c not in unknown]
    extra = [c for c in cur["choices"] if c in ticked and c not in truth and c not in unknown]
    verdict = "**Correct!**" if p == 1.0 else f"**Not quite**: {p:.2f} points."
    lines = [verdict, f"- Found: {words(found)}", f"- Missed: {words(missed)}",
             f"- Ticked but not there: {words(extra)}"]
    if unknown:
        lines.append(f"- Not known for this image (not scored): {words(sorted(unknown))}")
    lines += [f"\n**What the image shows** ({cur['source']}): {cur['drawn']}",
              f"\n**The report:** {cur['explanation']}"]
    return "\n".join(lines), state


def score_markdown(ctx: AppContext, state: dict | None) -> str:
    """Progress over the round."""
    n = settings(ctx)["questions"]
    got = list((state or {}).get("points") or [])
    if not got:
        return f"Round of {n} questions: no answer yet."
    total = sum(got)
    if len(got) >= n:
        return (f"**Round complete: {total:.1f} of {n} points.** Click **New question** for a "
                "new round.")
    return f"Question {len(got)} of {n} answered: {total:.1f} of {len(got)} points so far."


# ---------------------------------------------------------------------------------------------
# the page


def prepare(ctx: AppContext) -> None:
    """Load the configured dataset (if any; a failure is shown on the page, the quiz keeps its
    phantoms) and draw one phantom, so that the first question is quick."""
    from biomed.imaging.phantom.render import render

    render([], 0, settings(ctx)["size"])
    try:
        ctx.extras["quiz_dataset"] = load_quiz_dataset(ctx)
    except Exception as e:  # noqa: BLE001 - the operator's dataset must not stop the app
        ctx.extras["quiz_dataset"] = None
        ctx.extras["quiz_dataset_error"] = " ".join(str(e).split())[:300] or type(e).__name__
        log.warning("quiz dataset not loaded: %s", ctx.extras["quiz_dataset_error"])


def build(ctx: AppContext) -> None:
    import gradio as gr

    s = settings(ctx)
    gr.Markdown(DISCLAIMER)
    intro = (f"Spot the findings on phantom chest X-rays, whose labels are exact. Tick what you "
             f"see, then check. A round has {s['questions']} questions; your score stays in "
             "this browser tab only.")
    qd = ctx.extras.get("quiz_dataset")
    if qd is not None:
        intro += (f" Some questions show real images of **{qd.name}**, scored against that "
                  "dataset's labels, which are only as good as its labeller.")
    if ctx.extras.get("quiz_dataset_error"):
        intro += (f" (The configured dataset did not load: {ctx.extras['quiz_dataset_error']}; "
                  "the quiz uses phantoms only.)")
    gr.Markdown(intro)
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=200):
            image = gr.Image(label="Quiz X-ray: which findings does it show?", format="png",
                             interactive=False, elem_id="quiz-image",
                             alt_text="A phantom chest X-ray to read; the findings are the "
                                      "question")
        with gr.Column(scale=1, min_width=200):
            choices = gr.CheckboxGroup(choice_pairs([*FINDING_NAMES, NO_FINDING]),
                                       label="Tick every finding you see",
                                       elem_id="quiz-choices")
            with gr.Row():
                new = gr.Button("New question", elem_id="quiz-new")
                submit = gr.Button("Check my answer", variant="primary",
                                   elem_id="quiz-submit")
            score = gr.Markdown(score_markdown(ctx, None), elem_id="quiz-score")
    feedback = gr.Markdown("Click **New question** to start.", elem_id="quiz-feedback")

    @safe_errors
    def on_new(current):
        q, st = new_question(ctx, current)
        return (for_display(q.image), gr.CheckboxGroup(choices=choice_pairs(q.choices), value=[]),
                "Tick what you see, then **Check my answer**.", score_markdown(ctx, st), st)

    @safe_errors
    def on_answer(ticked, current):
        text, st = answer(ctx, current, ticked)
        return text, score_markdown(ctx, st), st

    new.click(on_new, [state], [image, choices, feedback, score, state], api_name="quiz_new")
    submit.click(on_answer, [choices, state], [feedback, score, state], api_name="quiz_answer")
