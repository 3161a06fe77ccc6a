"""`biomed generate` on a tiny random Stable-Diffusion-layout pipeline (one-channel VAE, 32 px):
files and provenance, seeds, schedulers, the divergence guard, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.imaging.core.pixels import png_text, read_image, to_uint16
from biomed.imaging.dicom.write import prompt_hash
from biomed.imaging.diffusion import pipeline, sample

PROMPTS = ["Moderate cardiomegaly.", "Large left pleural effusion with adjacent atelectasis."]
FAST = ["steps=3", "progress=false", "threads=1", "batch_size=3", "device=cpu"]  # fp32: exact


def _tiny_tokenizer(folder: Path, max_length: int = 64):
    """A CLIPTokenizer from a handwritten vocabulary: letters (word-final and not) and a few
    merges, like the tiny model's small BPE; nothing downloaded."""
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz.,")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [c + "</w>" for c in letters] + ["ef", "fu", "ar", "ca"]:
        vocab.setdefault(tok, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\ne f\nf u\na r\nc a\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=max_length, pad_token="<|endoftext|>")


def tiny_pipeline(run_dir: Path, vae_channels: int = 1):
    """A random 32 px pipeline (one-channel VAE like the tiny model; 3 like Stable Diffusion)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = _tiny_tokenizer(run_dir / "vocab")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    vae = AutoencoderKL(in_channels=vae_channels, out_channels=vae_channels, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        norm_num_groups=4, sample_size=32)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, steps_offset=1)  # as SD saves it
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny_pipeline(run_dir: Path) -> Path:
    """Save a random tiny pipeline as train-diffusion does: ``<run_dir>/pipeline``."""
    pipe = tiny_pipeline(run_dir)
    out = run_dir / "pipeline"
    pipe.save_pretrained(out)
    (out / "README.md").write_text("# tiny random test pipeline\n")
    (out / "biomed.json").write_text(json.dumps({"preset": "tiny-test"}))
    return out


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("train-diffusion"))


def gen_cfg(tmp_path: Path, model_dir: Path, *overrides: str, name: str = "run"):
    return compose("generate", [f"paths.run_dir={tmp_path / name}", f"model_dir={model_dir}",
                                f"key_file={tmp_path / 'deid.key'}", *FAST, *overrides])


def manifest(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# the command


def test_generate_from_a_prompt_writes_pngs_with_provenance(tmp_path, pipeline_dir):
    cfg = gen_cfg(tmp_path, pipeline_dir.parent, f"prompt={PROMPTS[0]}", "n=2", "guidance=3")
    m = sample.run(cfg)  # a run folder as model_dir: its pipeline/ is found
    run = tmp_path / "run"
    assert m["count"] == 2 and m["prompts"] == 1 and m["images_per_s"] > 0
    assert m["model_dir"] == str(pipeline_dir.resolve())
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["diverged"] == m["diverged"]
    assert (run / "provenance.json").is_file() and (run / ".hydra" / "config.yaml").is_file()
    lines = manifest(run)
    assert [ln["file"] for ln in lines] == ["samples/p0000_0.png", "samples/p0000_1.png"]
    assert lines[0]["seed"] != lines[1]["seed"]
    for ln in lines:
        assert {"prompt", "prompt_id", "seed", "steps", "guidance", "scheduler", "model_id",
                "diverged", "seconds"} <= set(ln)
        assert ln["prompt"] == PROMPTS[0] and ln["scheduler"] == "dpmpp" and ln["steps"] == 3
        assert ln["model_id"].startswith("pipeline preset tiny-test weights-sha256:")
        assert str(tmp_path) not in json.dumps(ln) and isinstance(ln["diverged"], bool)
        img = read_image(run / ln["file"])
        assert img.shape == (32, 32) and img.dtype == np.float32
        text = png_text(run / ln["file"])
        assert text["synthetic"] == "true" and text["prompt"] == PROMPTS[0]
        assert text["model_id"] == ln["model_id"] and text["seed"] == str(ln["seed"])
        assert (text["steps"], text["guidance"], text["scheduler"]) == ("3", "3", "dpmpp")
    grid = read_image(run / "samples" / "grid.png")
    assert grid.shape == (32, 66)  # two images side by side, 2 px gap
    assert png_text(run / "samples" / "grid.png")["synthetic"] == "true"


def test_generate_from_a_prompts_file_jsonl_and_text(tmp_path, pipeline_dir):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": PROMPTS[0], "id": "cardio 1",
                                 "labels": {"cardiomegaly": 1}}) + "\n\n"
                     + json.dumps({"prompt": PROMPTS[1]}) + "\n")
    m = sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompts_file={jsonl}", "n=2"))
    lines = manifest(tmp_path / "run")
    assert m["count"] == 4 and m["prompts"] == 2
    assert [ln["file"] for ln in lines] == ["samples/cardio_1_0.png", "samples/cardio_1_1.png",
                                            "samples/p0001_0.png", "samples/p0001_1.png"]
    assert lines[0]["labels"] == {"cardiomegaly": 1} and "labels" not in lines[2]
    assert [ln["prompt_id"] for ln in lines] == ["cardio_1", "cardio_1", "p0001", "p0001"]
    assert len({ln["seed"] for ln in lines}) == 4
    assert all((tmp_path / "run" / ln["file"]).is_file() for ln in lines)

    txt = tmp_path / "prompts.txt"
    txt.write_text(f"{PROMPTS[1]}\n\n{PROMPTS[0]}\n")
    assert [(p.id, p.prompt) for p in sample.read_prompts("ignored", str(txt))] == [
        ("p0000", PROMPTS[1]), ("p0001", PROMPTS[0])]


def test_same_seed_same_image_bit_for_bit_and_one_image_regenerates_alone(tmp_path,
                                                                          pipeline_dir):
    def pixels(name, seed):
        sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompt={PROMPTS[1]}", "n=3",
                           f"seed={seed}", name=name))
        lines = manifest(tmp_path / name)
        return lines, [read_image(tmp_path / name / ln["file"]) for ln in lines]

    lines, first = pixels("a", 5)
    _, again = pixels("b", 5)
    _, other = pixels("c", 6)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    # image 2 alone, from its manifest seed: same image up to float batch effects (< 1 quantum)
    alone = sample.generate_images(pipeline_dir, [lines[2]["prompt"]], [lines[2]["seed"]],
                                   steps=3, guidance=lines[2]["guidance"], device="cpu")
    assert np.abs(alone.images[0] - first[2]).max() <= 1.5 / 65535
    assert lines[2]["seed"] == sample.image_seed(5, 0, 2)


def test_pipeline_generator_is_the_generator_the_command_samples_through(tmp_path, pipeline_dir):
    """`PipelineGenerator` keeps the `Generator` contract (gray float32 in [0, 1], flags, an id
    that changes with what changes the images, provenance) and gives the command's images."""
    settings = {"steps": 3, "guidance": 4.0, "batch_size": 3, "dtype": "float32"}
    gen = sample.PipelineGenerator(pipeline_dir.parent, settings, "cpu")
    assert isinstance(gen, sample.Generator)
    seeds = [sample.image_seed(0, 0, k) for k in range(2)]
    out = gen([PROMPTS[0]] * 2, seeds)
    assert out.images.shape == (2, 32, 32) and out.images.dtype == np.float32
    assert 0 <= out.images.min() <= out.images.max() <= 1 and out.diverged.dtype == bool
    assert gen.id == sample.PipelineGenerator(pipeline_dir, settings, "cpu").id
    assert gen.id != sample.PipelineGenerator(pipeline_dir, {**settings, "steps": 4}, "cpu").id
    assert gen.provenance(PROMPTS[0], seeds[1]) == {
        "prompt": PROMPTS[0], "seed": seeds[1], "steps": 3, "guidance": 4.0,
        "scheduler": "dpmpp", "model_id": gen.model_id, "prompt_policy": "text"}
    sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompt={PROMPTS[0]}", "n=2", "guidance=4"))
    lines = manifest(tmp_path / "run")
    for ln, img in zip(lines, out.images, strict=True):
        assert {k: ln[k] for k in gen.provenance(PROMPTS[0], ln["seed"])} == \
            gen.provenance(PROMPTS[0], ln["seed"])
        assert np.array_equal(to_uint16(read_image(tmp_path / "run" / ln["file"])),
                              to_uint16(img))


def test_dicom_output_is_marked_synthetic(tmp_path, pipeline_dir):
    sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompt={PROMPTS[0]}", "n=1", "dicom=true",
                       "seed=3"))
    (line,) = manifest(tmp_path / "run")
    ds = pydicom.dcmread(tmp_path / "run" / line["dicom"])
    assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert line["model_id"] in ds.DerivationDescription
    key = (tmp_path / "deid.key").read_text().strip()
    assert prompt_hash(PROMPTS[0], bytes.fromhex(key)) in ds.DerivationDescription
    assert key not in (tmp_path / "run" / line["dicom"]).read_bytes().hex()
    assert f"seed {line['seed']}" in ds.DerivationDescription
    png = np.round(read_image(tmp_path / "run" / line["file"]) * 65535).astype(np.uint16)
    assert np.array_equal(ds.pixel_array, png)


def test_prompts_from_a_file_are_hashed_unless_the_policy_says_text(tmp_path, pipeline_dir):
    """A prompts file may hold a restricted dataset's reports (MIMIC-CXR): by default the PNG
    chunks and the manifest record a salted hash of each prompt, never its text."""
    prompts = tmp_path / "reports.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompts_file={prompts}", "n=1", "dicom=true"))
    key = bytes.fromhex((tmp_path / "deid.key").read_text().strip())
    lines = manifest(tmp_path / "run")
    for ln, prompt in zip(lines, PROMPTS, strict=True):
        assert ln["prompt_policy"] == "hash" and "prompt" not in ln
        assert ln["prompt_hash"] == prompt_hash(prompt, key)
        assert png_text(tmp_path / "run" / ln["file"])["prompt_hash"] == ln["prompt_hash"]
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert not any(p.encode() in path.read_bytes() for p in PROMPTS), path
    sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompts_file={prompts}", "n=1",
                       "prompt_policy=text", name="public"))
    assert [ln["prompt"] for ln in manifest(tmp_path / "public")] == PROMPTS
    with pytest.raises(ConfigError, match="prompt_policy='secret'"):
        sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompt={PROMPTS[0]}",
                           "prompt_policy=secret", name="bad"))


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_other_schedulers_sample(pipeline_dir, name):
    out = sample.generate_images(pipeline_dir, PROMPTS, [1, 2], scheduler=name, steps=4,
                                 batch_size=2, device="cpu")
    assert out.images.shape == (2, 32, 32) and out.images.dtype == np.float32
    assert np.isfinite(out.images).all() and 0 <= out.images.min() <= out.images.max() <= 1
    assert out.diverged.shape == (2,) and out.diverged.dtype == bool
    loaded = pipeline.load_pipeline(pipeline_dir, "cpu")
    assert type(loaded.pipe.scheduler).__name__ == f"{name.upper()}Scheduler"
    assert loaded.pipe.scheduler.config.clip_sample_range == sample.LATENT_CLIP


def test_three_channel_vae_in_memory_pipeline_is_averaged_to_gray(tmp_path):
    pipe = tiny_pipeline(tmp_path, vae_channels=3)
    out = sample.generate_images(pipe, [PROMPTS[0]], [4], steps=2)
    assert out.images.shape == (1, 32, 32) and out.diverged.shape == (1,)
    again = sample.generate_images(pipe, [PROMPTS[0]], [4], steps=2, scheduler="ddim")
    assert again.images.shape == (1, 32, 32)  # the original scheduler config was kept
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert "algorithm_type" not in pipe._biomed_scheduler_config  # not DPM-Solver's config


def test_dpmpp_settings_clip_the_predicted_latent_without_rescaling(pipeline_dir):
    base = pipeline.load_pipeline(pipeline_dir, "cpu").scheduler_config
    s = sample.make_scheduler("dpmpp", base, latent_clip=2.0)
    c = s.config
    assert c.algorithm_type == "dpmsolver++" and c.final_sigmas_type == "zero"
    assert c.lower_order_final and c.euler_at_final and c.thresholding
    x0 = torch.tensor([-7.0, -1.5, 0.5, 3.0]).view(1, 1, 2, 2)
    assert torch.equal(s._threshold_sample(x0), torch.tensor([-2.0, -1.5, 0.5, 2.0]).view(1, 1,
                                                                                         2, 2))
    assert not sample.make_scheduler("dpmpp", base, latent_clip=None).config.thresholding
    assert not sample.make_scheduler("ddim", base, latent_clip=None).config.clip_sample
    with pytest.raises(ConfigError, match="scheduler='euler'"):
        sample.make_scheduler("euler", base)


# ---------------------------------------------------------------------------------------------
# the divergence guard


def _smooth(n: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([0.3 + 0.4 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.3 - 0.05 * i) ** 2) / 0.05)
                     for i in range(n)]).astype(np.float32)


def test_detector_flags_nan_and_noise_not_smooth_images():
    rng = np.random.default_rng(0)
    batch = _smooth(6)
    batch[2] = rng.uniform(0, 1, (32, 32))  # pure noise
    batch[4, 5, 7] = np.nan  # one NaN pixel
    scores = sample.noise_scores(batch)
    assert scores[2] == pytest.approx(1.0, abs=0.15) and np.isinf(scores[4])
    assert np.all(scores[[0, 1, 3, 5]] < 0.05)
    assert sample.flag_diverged(batch).tolist() == [False, False, True, False, True, False]
    # alone, noise is still noise (absolute level) and a smooth image is not
    assert sample.flag_diverged(batch[2:3]).tolist() == [True]
    assert sample.flag_diverged(_smooth(1)).tolist() == [False]
    # noisier than the batch by far, below the absolute level: the relative test catches it
    mild = _smooth(5)
    mild[1] = 0.5 + 0.3 * (rng.uniform(0, 1, (32, 32)) - 0.5) + 0.5 * (_smooth(1)[0] - 0.5)
    assert sample.NOISE_SCORE > sample.noise_scores(mild)[1] > sample.RELATIVE_FLOOR
    assert sample.flag_diverged(mild).tolist() == [False, True, False, False, False]
    # a flat image (no variance) is not noise; the finished images are finite and in [0, 1]
    assert not sample.flag_diverged(np.full((1, 8, 8), 0.5))[0]
    done = sample.finish_images(batch * 3 - 1)
    assert np.isfinite(done).all() and done.min() >= 0 and done.max() <= 1


def test_injected_nan_is_flagged_in_manifest_and_counted(tmp_path, pipeline_dir, monkeypatch):
    real = sample.decode_latents

    def decode_with_a_nan(pipe, latents):
        real(pipe, latents)  # the real decode runs; its output is replaced by a known one
        out = _smooth(len(latents))
        out[1, 3, 3] = np.nan
        return out

    monkeypatch.setattr(sample, "decode_latents", decode_with_a_nan)
    m = sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompt={PROMPTS[0]}", "n=3"))
    lines = manifest(tmp_path / "run")
    assert [ln["diverged"] for ln in lines] == [False, True, False]
    assert m["diverged"] == 1 and m["diverged_files"] == ["samples/p0000_1.png"]
    assert lines[1]["noise_score"] is None  # non-finite
    img = read_image(tmp_path / "run" / lines[1]["file"])  # written, finite, NaN pixel at 0
    assert np.isfinite(img).all() and img[3, 3] == 0.0


# ---------------------------------------------------------------------------------------------
# bad input


def _one_line(err: Exception, *names: str) -> str:
    msg = str(err)
    assert "\n" not in msg and all(n in msg for n in names)
    return msg


def test_bad_inputs_give_one_line_errors(tmp_path, pipeline_dir):
    with pytest.raises(InputError, match="no such model folder") as e:
        sample.run(gen_cfg(tmp_path, tmp_path / "nope"))
    _one_line(e.value, str(tmp_path / "nope"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="not a diffusers pipeline folder") as e:
        sample.run(gen_cfg(tmp_path, tmp_path / "empty_dir"))
    _one_line(e.value, "empty_dir")
    broken = tmp_path / "broken" / "pipeline"
    broken.mkdir(parents=True)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load") as e:
        pipeline.load_pipeline(broken.parent, "cpu")
    _one_line(e.value, "broken")

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="no prompts") as e:
        sample.run(gen_cfg(tmp_path, pipeline_dir, f"prompts_file={empty}"))
    _one_line(e.value, "empty.txt")
    with pytest.raises(InputError, match="no such prompts file"):
        sample.read_prompts(None, str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(InputError, match="line 2"):
        sample.read_prompts(None, str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n')
    with pytest.raises(InputError, match="repeats"):
        sample.read_prompts(None, str(dup))
    for override in ("scheduler=euler", "steps=0", "n=0", "guidance=-1"):
        with pytest.raises(ConfigError):
            sample.run(gen_cfg(tmp_path, pipeline_dir, override))
    assert not (tmp_path / "run").exists()  # nothing started for bad input


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["generate", f"model_dir={tmp_path / 'nope'}",
                                      f"hydra.run.dir={tmp_path / 'cli'}"])
    with pytest.raises(SystemExit) as e:
        sample.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: no such model folder"


def test_long_prompts_are_truncated_with_one_warning(pipeline_dir):
    long = "large left pleural effusion " * 10
    with pytest.warns(UserWarning, match="2 of 2 prompt") as rec:
        out = sample.generate_images(pipeline_dir, [long, long + "x"], [0, 1], steps=2,
                                     device="cpu")
    assert len([w for w in rec if "truncated" in str(w.message)]) == 1
    assert out.images.shape == (2, 32, 32)


def test_the_pipelines_prompt_filter_is_applied_to_every_prompt(tmp_path, pipeline_dir):
    """A pipeline saved with ``prompt_filter: drop_negated`` samples "Moderate cardiomegaly.
    No pleural effusion." exactly as "Moderate cardiomegaly." (the text it was trained on); one
    saved without a filter does not; a bad filter name is refused naming biomed.json."""
    import shutil

    filtered = tmp_path / "filtered" / "pipeline"
    shutil.copytree(pipeline_dir, filtered)
    (filtered / "biomed.json").write_text(json.dumps({"preset": "tiny-test",
                                                      "prompt_filter": "drop_negated"}))
    stated, both = "Moderate cardiomegaly.", "Moderate cardiomegaly. No pleural effusion."

    def images(folder):
        return sample.generate_images(folder, [stated, both], [4, 4], steps=2,
                                      device="cpu").images

    with_filter, without = images(filtered), images(pipeline_dir)
    assert pipeline.load_pipeline(filtered).prompt_filter == "drop_negated"
    assert np.abs(with_filter[0] - with_filter[1]).max() <= 1e-6
    assert np.abs(without[0] - without[1]).max() > 1e-4
    gen = sample.PipelineGenerator(filtered, {"steps": 2})
    assert gen.loaded.model_prompts([both]) == [stated]
    bad = tmp_path / "bad" / "pipeline"
    shutil.copytree(pipeline_dir, bad)
    (bad / "biomed.json").write_text(json.dumps({"prompt_filter": "negex"}))
    with pytest.raises(InputError, match=r"biomed\.json.*prompt_filter"):
        pipeline.load_pipeline(bad)


def test_a_generator_warns_once_about_truncated_prompts_and_counts_them_all(pipeline_dir):
    gen = sample.PipelineGenerator(pipeline_dir, {"steps": 1})
    long = "large left pleural effusion " * 10
    with pytest.warns(UserWarning, match="1 of 2 prompt.*said once") as rec:
        gen([long, "Cardiomegaly."], [0, 1])
        gen([long + "a", long + "b"], [2, 3])  # new long prompts: counted, not warned again
    assert len([w for w in rec if "truncated" in str(w.message)]) == 1
    assert gen.truncated == {long, long + "a", long + "b"}
