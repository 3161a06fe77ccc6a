"""Generate tab (apps/tabs/generate.py) with a tiny seeded pipeline: images from report text,
the same seed gives the same image, every image marked SYNTHETIC with its provenance, 16-bit
PNG and DICOM downloads that carry it, and bad requests answered with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

from apps.common import SYNTHETIC, UserInputError, safe_errors  # noqa: E402
from apps.context import KINDS, AppContext  # noqa: E402
from apps.tabs import generate as G  # noqa: E402
from biomed.config import compose  # noqa: E402
from biomed.errors import InputError  # noqa: E402

PROMPT = "Opacity in the left lung."


def app_cfg(tmp_path: Path, *overrides: str):
    return compose("app", [f"paths.run_dir={tmp_path / 'run'}", "warmup=false",
                           *(f"models.{k}=null" for k in KINDS), *overrides])


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from tests.helpers.diffusion import tiny_sd_folder

    root = tmp_path_factory.mktemp("gen")
    folder = tiny_sd_folder(root / "pipeline")
    context = AppContext.load(app_cfg(root, f"models.diffusion={folder}", "generate.steps=2"))
    assert context.pipeline is not None, context.extras["load_errors"]
    yield context
    context.close()


def test_generates_with_provenance_png_and_dicom(ctx):
    import pydicom

    from biomed.imaging.core.pixels import png_text, read_image

    gen = G.generate(ctx, PROMPT, count=2, seed=3, guidance=2.0, steps=2)
    assert len(gen.images) == 2 and gen.images[0].shape == (32, 32)
    assert all(img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1
               for img in gen.images)
    assert not np.array_equal(gen.images[0], gen.images[1])  # one seed per image
    p = gen.provenance[0]
    assert p["synthetic"] is True and p["prompt"] == PROMPT and p["base_seed"] == 3
    assert (p["steps"], p["guidance"], p["scheduler"]) == (2, 2.0, "dpmpp")
    assert p["model_id"] == ctx.pipeline.model_id and "weights-sha256:" in p["model_id"]
    assert len(gen.files) == 4 and all(f.is_file() for f in gen.files)
    assert all(ctx.work_dir in f.parents for f in gen.files)
    png, dcm = gen.files[0], gen.files[1]
    chunks = png_text(png)
    assert chunks["synthetic"] == "true" and chunks["prompt"] == PROMPT
    assert chunks["seed"] == str(p["seed"]) and chunks["model_id"] == p["model_id"]
    assert chunks["scheduler"] == "dpmpp" and chunks["steps"] == "2"
    back = read_image(png)
    assert np.abs(back - gen.images[0]).max() <= 0.5 / 65535 + 1e-7  # 16-bit, not 8
    ds = pydicom.dcmread(dcm)
    assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert p["model_id"] in ds.DerivationDescription
    assert PROMPT not in ds.DerivationDescription  # DICOM records the prompt's hash only
    assert f"seed {p['seed']}" in ds.DerivationDescription
    assert ds.PatientName == "SYNTHETIC^NOT A PATIENT"
    # download names: the prompt's first words and hash, the typed seed, the image's number
    stem = G.download_stem(PROMPT)
    assert [f.name for f in gen.files] == [f"{stem}_seed3_{k}.{ext}" for k in (1, 2)
                                           for ext in ("png", "dcm")]
    other = G.download_stem(PROMPT + " Small left pneumothorax.")
    assert stem.startswith("synthetic_") and other != stem  # two prompts never share a name
    assert G.download_stem("../../etc/passwd").startswith("synthetic_etc-passwd_")
    assert G.download_stem("!!!").startswith("synthetic_prompt_")


def test_the_same_seed_gives_the_same_image(ctx):
    a = G.generate(ctx, PROMPT, count=1, seed=5, steps=2)
    b = G.generate(ctx, PROMPT, count=1, seed=5, steps=2)
    c = G.generate(ctx, PROMPT, count=1, seed=6, steps=2)
    assert np.array_equal(a.images[0], b.images[0])
    assert not np.array_equal(a.images[0], c.images[0])
    assert a.files[0].parent != b.files[0].parent  # one private folder per request


def test_every_image_is_marked_synthetic_on_the_page(ctx):
    gen = G.generate(ctx, PROMPT, count=2, seed=0, steps=2)
    assert SYNTHETIC in G.banner() and SYNTHETIC in G.banner(gen)
    caps = G.captions(gen)
    assert len(caps) == 2 and all(c.startswith(SYNTHETIC) for c in caps)
    md = G.provenance_markdown(gen)
    for part in (gen.provenance[0]["model_id"], "dpmpp", "2 steps", "guidance 4",
                 str(gen.provenance[1]["seed"])):
        assert part in md, part
    marked = G.provenance_markdown(G.Generated(gen.images[:1], [
        {**gen.provenance[0], "prompt": "<b>x</b> `y`"}]))
    assert "<b>" not in marked and "\\<b\\>" in marked  # user text stays text


@pytest.mark.parametrize("kwargs, words", [
    ({"prompt": "   "}, "type a report"),
    ({"prompt": "x" * 1001}, "at most 1000"),
    ({"prompt": None}, "give some text"),
    ({"count": 5}, "number of images"),
    ({"count": 1.5}, "number of images"),
    ({"seed": -1}, "seed"),
    ({"seed": "../etc/passwd"}, "not a number"),
    ({"steps": 0}, "steps"),
    ({"steps": 51}, "steps"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": 100}, "guidance"),
])
def test_bad_requests_are_refused_with_one_line(ctx, kwargs, words):
    args = {"prompt": PROMPT, "count": 1, "seed": 0, "guidance": 4.0, "steps": 2, **kwargs}
    with pytest.raises(UserInputError, match=words) as err:
        G.generate(ctx, **args)
    assert "\n" not in str(err.value)


def test_without_a_model_the_tab_names_the_command(tmp_path):
    bare = AppContext.load(app_cfg(tmp_path))
    try:
        with pytest.raises(UserInputError, match="make quickstart"):
            G.generate(bare, PROMPT)
    finally:
        bare.close()


def test_errors_become_one_line_on_the_page_not_a_traceback():
    import gradio as gr

    @safe_errors
    def known():
        raise InputError("/secret/path.dcm", "not a DICOM file")

    @safe_errors
    def unknown():
        raise RuntimeError("internal detail /home/user/x")

    with pytest.raises(gr.Error) as e:
        known()
    assert e.value.message == "/secret/path.dcm: not a DICOM file"
    with pytest.raises(gr.Error) as e:
        unknown()
    assert "internal detail" not in e.value.message and "RuntimeError" in e.value.message
