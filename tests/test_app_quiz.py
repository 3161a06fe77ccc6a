"""Quiz tab (apps/tabs/quiz.py): phantom questions with exact labels drawn from a seeded
per-question stream, scoring, a round kept in the session's state, the report text as the
explanation, and a configured real dataset whose unknown labels are not scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

from apps.context import KINDS, AppContext  # noqa: E402
from apps.tabs import quiz as Q  # noqa: E402
from biomed.config import compose  # noqa: E402
from biomed.imaging.core.findings import FINDING_NAMES  # noqa: E402

BLOBS = ["+quiz.dataset._target_=tests.helpers.classifier.BlobData", "+quiz.dataset.size=32",
         "+quiz.dataset.n=40", "+quiz.dataset.name=blobs"]


def app_cfg(tmp_path: Path, *overrides: str):
    return compose("app", [f"paths.run_dir={tmp_path / 'run'}", "warmup=false",
                           "quiz.size=64", *(f"models.{k}=null" for k in KINDS), *overrides])


@pytest.fixture
def make_ctx(tmp_path):
    made = []

    def make(*overrides: str) -> AppContext:
        made.append(AppContext.load(app_cfg(tmp_path, *overrides)))
        return made[-1]

    yield make
    for ctx in made:
        ctx.close()


def test_a_fixed_seed_gives_every_session_the_same_round(make_ctx):
    ctx = make_ctx("quiz.seed=7")
    q1, s1 = Q.new_question(ctx, None)
    q2, s2 = Q.new_question(ctx, None)
    assert np.array_equal(q1.image, q2.image) and q1.truth == q2.truth
    q3, s3 = Q.new_question(ctx, s1)  # the round's next question: its own stream
    assert s3["asked"] == 2 and s1["asked"] == 1  # the old state is not changed
    assert not np.array_equal(q1.image, q3.image)
    assert q1.image.shape == (64, 64) and q1.source == "phantom"


def test_phantom_labels_are_exactly_what_was_drawn(make_ctx):
    from biomed.imaging.reports.mentions import stance

    ctx = make_ctx("quiz.seed=1", "quiz.questions=40")
    state, counts = None, set()
    for _ in range(25):
        q, state = Q.new_question(ctx, state)
        counts.add(len(q.truth) if q.truth != [Q.NO_FINDING] else 0)
        assert q.choices == [*FINDING_NAMES, Q.NO_FINDING]
        assert all(t in q.choices for t in q.truth)
        assert not any(pair <= set(q.truth) for pair in Q.EXCLUSIVE)
        for name in q.truth:
            if name != Q.NO_FINDING:
                assert name.replace("_", " ") in q.drawn
        if "effusion" in q.truth:  # the explanation is the report of the drawn findings
            assert stance(q.explanation, "effusion") == "affirmed"
        elif "effusion" not in q.truth and "pneumothorax" not in q.truth:
            assert "no pleural effusion" in q.explanation.lower() or \
                "no pneumothorax or pleural effusion" in q.explanation.lower()
    assert counts == {0, 1, 2}  # 0 to quiz.max_findings findings per question


def test_points_exact_partial_and_unknown():
    assert Q.points(["effusion"], ["effusion"]) == 1.0
    assert Q.points(["effusion", "mass"], ["effusion"]) == 0.5
    assert Q.points(["effusion"], ["effusion", "nodule"]) == 0.5
    assert Q.points([Q.NO_FINDING], ["effusion"]) == 0.0
    assert Q.points(["effusion", "mass"], ["effusion"], unknown=["mass"]) == 1.0


def test_a_round_is_scored_and_then_a_new_one_starts(make_ctx):
    ctx = make_ctx("quiz.seed=3", "quiz.questions=3")
    text, state = Q.answer(ctx, None, ["effusion"])
    assert "New question" in text and not state.get("points")
    q, state = Q.new_question(ctx, None)
    text, state = Q.answer(ctx, state, q.truth)
    assert text.startswith("**Correct!**") and q.explanation in text and state["points"] == [1.0]
    again, state = Q.answer(ctx, state, q.truth)
    assert "already scored" in again and state["points"] == [1.0]
    q, state = Q.new_question(ctx, state)
    wrong = ["support_devices"] if "support_devices" not in q.truth else ["mass"]
    text, state = Q.answer(ctx, state, wrong + ["../../etc/passwd"])  # unknown ticks ignored
    assert "Not quite" in text and "Missed" in text and state["points"][1] < 1.0
    assert "2 of 3 answered" in Q.score_markdown(ctx, state)
    q, state = Q.new_question(ctx, state)
    _, state = Q.answer(ctx, state, q.truth)
    assert "Round complete" in Q.score_markdown(ctx, state)
    assert Q.score_markdown(ctx, state).startswith(f"**Round complete: {sum(state['points']):.1f}")
    _, state = Q.new_question(ctx, state)
    assert state["rounds"] == 2 and state["points"] == [] and state["asked"] == 1


def test_a_configured_dataset_asks_its_real_labels(make_ctx):
    ctx = make_ctx("quiz.seed=0", "quiz.real_fraction=1.0", "quiz.split=val", *BLOBS)
    Q.prepare(ctx)
    qd = ctx.extras["quiz_dataset"]
    assert qd is not None and qd.name == "blobs" and "quiz_dataset_error" not in ctx.extras
    assert qd.choices == ["cardiomegaly", "effusion", Q.NO_FINDING]
    state, seen_unknown = None, False
    for _ in range(40):
        q, state = Q.new_question(ctx, state)
        assert q.source == "blobs" and q.choices == qd.choices and q.image.shape == (32, 32)
        row = np.asarray(qd.dataset.labels)
        # the question's truth is a row of the dataset's labels
        assert any(
            [c for c, v in zip(qd.choices, r[[0, 1]], strict=False) if v == 1] == [
                t for t in q.truth if t != Q.NO_FINDING] for r in row)
        seen_unknown |= "cardiomegaly" in q.unknown
        text, state = Q.answer(ctx, state, q.truth)
        assert text.startswith("**Correct!**") and "only as good as its labeller" in text
    assert seen_unknown  # BlobData leaves about one cardiomegaly label in ten unknown


def test_a_dataset_without_the_vocabulary_leaves_the_phantoms(make_ctx):
    ctx = make_ctx("quiz.real_fraction=1.0", "quiz.split=val",
                   "+quiz.dataset._target_=tests.helpers.diffusion.BlobPairs",
                   "+quiz.dataset.name=blob_pairs")
    Q.prepare(ctx)
    assert ctx.extras["quiz_dataset"] is None
    assert "phantom vocabulary" in ctx.extras["quiz_dataset_error"]
    q, _ = Q.new_question(ctx, None)
    assert q.source == "phantom"
