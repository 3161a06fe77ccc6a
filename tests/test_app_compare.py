"""Compare tab (apps/tabs/compare.py): report B built from report A one finding at a time, the
phantom's exact drawing of both beside the model's images (same seed), difference maps in a
diverging colour map with symmetric limits; without a model, the phantoms alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

from apps.common import (  # noqa: E402
    UserInputError,
    difference_figure,
    diverging_rgb,
    symmetric_limit,
)
from apps.context import KINDS, AppContext  # noqa: E402
from apps.tabs import compare as C  # noqa: E402
from biomed.config import compose  # noqa: E402

EFFUSION_LEFT = {"name": "effusion", "side": "left", "severity": 2}


def app_cfg(tmp_path: Path, *overrides: str):
    return compose("app", [f"paths.run_dir={tmp_path / 'run'}", "warmup=false",
                           "compare.size=96", *(f"models.{k}=null" for k in KINDS),
                           *overrides])


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    ctx = AppContext.load(app_cfg(tmp_path_factory.mktemp("bare")))
    yield ctx
    ctx.close()


def test_edits_add_change_and_remove_one_finding_in_place():
    a = C.edit_findings([], "add", "cardiomegaly", "left", 1)
    assert a == [{"name": "cardiomegaly", "severity": 1}]  # no side: cardiomegaly has none
    b = C.edit_findings(a, "add", "effusion", "right", 3)
    b = C.edit_findings(b, "add", "effusion", "left", 2)  # changed, not added twice
    assert b == [{"name": "cardiomegaly", "severity": 1}, EFFUSION_LEFT]
    assert a == [{"name": "cardiomegaly", "severity": 1}]  # A is not changed
    assert C.edit_findings(b, "remove", "cardiomegaly") == [EFFUSION_LEFT]
    assert C.edit_findings([], "add", "support_devices")[0]["device"] == "endotracheal_tube"
    for bad in (("add", "fracture", "left", 2), ("add", "effusion", "up", 2),
                ("add", "effusion", "left", 4), ("swap", "effusion", "left", 2)):
        with pytest.raises(UserInputError):
            C.edit_findings([], *bad)
    with pytest.raises(UserInputError):
        C.as_findings([{"name": "effusion", "severity": "lots"}])


def test_changing_one_finding_changes_one_sentence_of_the_prompt():
    base = [{"name": "cardiomegaly", "severity": 1}, EFFUSION_LEFT]
    a = C.prompt_of(base)
    b = C.prompt_of(C.edit_findings(base, "add", "effusion", "left", 3))
    sa, sb = a.split(". "), b.split(". ")
    assert len(sa) == len(sb) == 2 and sa[0] == sb[0] and sa[1] != sb[1]
    assert "left" in sa[1].lower() and "effusion" in sa[1].lower()
    assert C.prompt_of(base) == a  # deterministic
    assert "no acute" in C.prompt_of([]).lower()
    assert C.describe([EFFUSION_LEFT]) == "moderate left effusion"


def test_without_a_model_the_phantoms_are_compared_and_the_command_named(bare):
    r = C.compare(bare, "ignored", "ignored", [], [EFFUSION_LEFT], seed=4)
    assert r.model_a is None and r.model_diff is None
    assert r.phantom_a.shape == (96, 96) and r.phantom_drawn[0] == []
    assert [f.name for f in r.phantom_drawn[1]] == ["effusion"]
    assert any("make quickstart" in n for n in r.notes)
    diff = r.phantom_diff
    h, w = diff.shape
    # a left effusion: fluid (brighter) low in the patient's left, the image's right half
    low_right, low_left = diff[h // 2:, w // 2:], diff[h // 2:, :w // 2]
    assert low_right.mean() > 0.02 and low_right.mean() > 5 * abs(low_left.mean())
    same = C.compare(bare, "x", "x", [EFFUSION_LEFT], [EFFUSION_LEFT], seed=4)
    assert np.array_equal(same.phantom_a, same.phantom_b)
    text = C.notes_markdown(bare, r)
    assert "moderate left effusion" in text and "make quickstart" in text


def test_with_a_model_both_sides_share_one_seed(tmp_path):
    from tests.helpers.diffusion import tiny_sd_folder

    folder = tiny_sd_folder(tmp_path / "pipeline")
    ctx = AppContext.load(app_cfg(tmp_path, f"models.diffusion={folder}"))
    try:
        r = C.compare(ctx, "Opacity in the left lung.", "Opacity in the right lung.", [],
                      [EFFUSION_LEFT], seed=1, steps=2)
        assert r.model_a.shape == r.model_b.shape == (32, 32)
        assert np.abs(r.model_diff).max() > 0  # the text changed the image
        same = C.compare(ctx, "Opacity in the left lung.", "Opacity in the left lung.", [],
                         [], seed=1, steps=2)
        assert np.array_equal(same.model_a, same.model_b)  # one seed: the same noise
        assert any("same text" in n for n in same.notes)
        with pytest.raises(UserInputError, match="prompt B"):
            C.compare(ctx, "a", " ", [], [], seed=1, steps=2)
    finally:
        ctx.close()


def test_difference_maps_are_diverging_symmetric_and_have_a_colour_bar():
    assert symmetric_limit(np.array([[-0.3, 0.1]])) == pytest.approx(0.3)
    assert symmetric_limit(np.zeros((2, 2))) == pytest.approx(0.02)  # no amplified noise
    rgb = diverging_rgb(np.array([[-1.0, 0.0, 1.0]]), 1.0)[0].astype(int)
    blue, white, red = rgb
    assert blue[2] > blue[0] + 50 and red[0] > red[2] + 50  # RdBu_r: blue low, red high
    assert white.min() > 230  # zero is (near) white
    fig = difference_figure(np.outer(np.linspace(-1, 1, 32), np.ones(32)), "B - A")
    assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3
    assert fig.shape[1] > fig.shape[0] * 0.9  # the image plus its colour bar beside it


def test_a_hand_edited_report_is_flagged_the_phantom_draws_the_list() -> None:
    from apps.tabs.compare import DEFAULT_A, DEFAULT_B, hand_edit_note, prompt_of

    a, b = DEFAULT_A, DEFAULT_B
    assert hand_edit_note(prompt_of(a), prompt_of(b), a, b) == ""
    note = hand_edit_note(prompt_of(a), "Large right pneumothorax.", a, b)
    assert "report B was edited by hand" in note and "report A" not in note
