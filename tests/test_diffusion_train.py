"""`biomed train-diffusion` on tiny models: the shipped configs shrunk to seconds (32 px)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from biomed import sources
from biomed.config import compose
from biomed.engine import list_checkpoints, read_log
from biomed.errors import BiomedError, ConfigError, InputError
from biomed.imaging.diffusion import components as dc
from biomed.imaging.diffusion import objective, pipeline, sample, train
from biomed.imaging.diffusion.card import model_card
from tests.helpers.diffusion import (
    PROMPTS,
    BlobPairs,
    tiny_sd_folder,
    tiny_vae_dir,
    train_cfg,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (VAE stage + UNet stage), checkpointed at its last step."""
    tmp = tmp_path_factory.mktemp("tiny")
    m = train.run(train_cfg(tmp, "trainer.checkpoint_every=3", "trainer.eval_every=2"))
    return tmp / "run", m


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, prompt=PROMPTS[0], steps=3, guidance=3.0) -> torch.Tensor:
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def test_tokenizer_is_small_clip_style_and_truncates_at_the_prompt_length():
    from transformers import CLIPTokenizer

    prompts = [BlobPairs(n=30).report(i) for i in range(30)]
    tok = dc.build_tokenizer(prompts, vocab_size=600, max_length=16)
    assert isinstance(tok, CLIPTokenizer) and tok.model_max_length == 16
    assert 514 < len(tok) <= 600  # byte symbols (+ </w>), 2 special, the merges: not 49,408
    again = dc.build_tokenizer(list(prompts), vocab_size=600, max_length=16)
    assert again.get_vocab() == tok.get_vocab()  # deterministic (resume, several processes)
    enc = tok(["Opacity in the LEFT lung.", "", "word " * 40], padding="max_length",
              max_length=16, truncation=True)
    ids = enc["input_ids"]
    assert all(len(r) == 16 for r in ids)
    assert ids[0][0] == tok.bos_token_id and tok.eos_token_id in ids[0]
    assert tok.convert_ids_to_tokens(ids[0][1:4]) == ["opacity</w>", "in</w>", "the</w>"]
    assert ids[2][-1] == tok.eos_token_id  # truncated, still closed
    assert sum(enc["attention_mask"][1]) == 2  # the empty prompt: start and end tokens
    # nothing is unknown: every byte symbol is in the vocabulary
    odd = tok("Größe 5 mm; α-1 (?)")["input_ids"]
    assert tok.unk_token_id not in odd[1:-1]


def test_train_saves_a_pipeline_that_diffusers_loads_and_samples(trained, tmp_path):
    run, m = trained
    folder = run / "pipeline"
    assert Path(m["pipeline_dir"]) == folder
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model_index.json", "README.md", "biomed.json", "unet/config.json",
            "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json",
            "scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".ckpt")) for n in names)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["safety_checker"] == [None, None]
    card = (folder / "README.md").read_text()
    for phrase in ("user-supplied data", "Research only", "synthetic", "blob_pairs"):
        assert phrase in card
    info = json.loads((folder / "biomed.json").read_text())
    phantom = model_card({**info, "data": "phantom_iu"}, {})
    for phrase in ("CC BY-NC-ND 4.0", "non-commercial", "**phantom**", "not patients'"):
        assert phrase in phantom

    pipe = _pipe(folder)  # diffusers alone
    assert pipe.vae.config.in_channels == 1 and pipe.tokenizer.model_max_length == 16
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the tiny default
    assert pipe.vae.config.scaling_factor == pytest.approx(m["scaling_factor"])
    img = _sample(pipe)
    assert img.shape == (1, 1, 32, 32) and torch.isfinite(img).all()
    pil = pipe(PROMPTS[1], num_inference_steps=2, output_type="pil").images[0]
    assert pil.mode == "L" and pil.size == (32, 32)

    # the workbench's own loader and sampler (biomed generate) read the saved folder
    same = pipeline.load_pipeline(run, "cpu")
    out = sample.generate_images(same, [PROMPTS[0]], [0], steps=3, guidance=3.0)
    assert out.images.shape == (1, 32, 32) and not out.diverged.any()
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0

    assert m["steps"] == 3 and m["vae_steps"] == 3 and m["images_per_s"] > 0
    assert np.isfinite(m["val_loss"]) and m["val_samples_diverged"] == 0.0
    # the empty-prompt pass uses the same noise: the gain is exactly the MSE ratio, and the
    # random-init cross-attention already makes the two differ
    assert m["val_prompt_gain"] == pytest.approx(1 - m["val_mse"] / m["val_mse_empty_prompt"])
    assert m["val_mse"] != m["val_mse_empty_prompt"]
    assert sorted(p.name for p in (run / "validation").iterdir()) == [
        "step-000002.png", "step-000003.png"]
    assert (run / "vae_stage" / "reconstructions.png").is_file()
    rows = read_log(run)
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 3]
    info = pipeline.pipeline_info(run)
    assert info["channels"] == 1 and info["prompt_length"] == 16 and info["ema"]
    assert info["prompt_filter"] == "none" and same.prompt_filter == "none"


def test_training_prompts_go_through_the_configured_filter():
    class Reports:  # the dataset contract's text accessor, nothing else
        def reports(self):
            return ["Cardiomegaly.  No pleural   effusion.", "", "No acute disease."]

    assert train.dataset_prompts(Reports()) == [
        "Cardiomegaly. No pleural effusion.", "", "No acute disease."]
    assert train.dataset_prompts(Reports(), "drop_negated") == [
        "Cardiomegaly.", "", "No acute disease."]  # a row without text stays without
    with pytest.raises(ConfigError, match="prompt_filter"):
        train.dataset_prompts(Reports(), "negex")
    card = model_card({"data": "phantom_iu", "prompt_filter": "drop_negated",
                       "unet_params": 1, "text_encoder_params": 1, "vae_params": 1}, {})
    assert "prompt_filter: drop_negated" in card and "any other loader must do the same" in card


def test_scaling_factor_is_one_over_the_latent_std(trained):
    run, m = trained
    mean = np.load(Path(m["latent_cache"]) / "mean.npy").astype(np.float64)
    std = np.load(Path(m["latent_cache"]) / "std.npy").astype(np.float64)
    sampled = OmegaConf.load(run / ".hydra" / "config.yaml").diffusion.training.latent_sample
    # the std of what the UNet is trained on: posterior means, or samples of q(z|x)
    total = np.sqrt(mean.var() + ((std ** 2).mean() if sampled else 0.0))
    assert m["scaling_factor"] == pytest.approx(1.0 / total, rel=1e-4)
    assert (run / "pipeline" / "vae" / "config.json").read_text().count(
        str(m["scaling_factor"])[:8]) == 1
    assert mean.shape == (48, 4, 16, 16)  # 32 px, one downsampling, 4 latent channels


def test_saved_unet_and_text_encoder_are_the_ema_weights(trained):
    run, _ = trained
    ckpt = load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))
    saved_unet = load_file(str(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    saved_te = load_file(str(run / "pipeline" / "text_encoder" / "model.safetensors"))
    differs = 0
    for k, v in saved_unet.items():
        torch.testing.assert_close(v, ckpt[f"ema_unet.{k}"])
        differs += not torch.equal(v, ckpt[f"unet.{k}"])
    assert differs > 0  # EMA weights, not the live ones
    for k, v in saved_te.items():
        torch.testing.assert_close(v, ckpt[f"ema_text_encoder.{k}"])


def _tiny_model(prediction_type="epsilon", ema_decay=0.9, gamma=5.0, offset=0.0):
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = dc.build_unet(OmegaConf.create({
        "block_out_channels": [16, 32], "attention": [True, False], "layers_per_block": 1,
        "cross_attention_dim": 32, "heads": 2, "norm_num_groups": 4}),
        latent_channels=4, sample_size=8, text_dim=32)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=8, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1))
    sched = dc.build_noise_scheduler({"prediction_type": prediction_type,
                                      "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                      "beta_end": 0.012})
    training = OmegaConf.create({"cond_dropout": 0.0, "snr_gamma": gamma,
                                 "noise_offset": offset, "latent_sample": False,
                                 "ema_decay": ema_decay})
    empty = {"input_ids": torch.zeros(1, 8, dtype=torch.long),
             "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    return objective.DiffusionModel(unet, te, train_text_encoder=True, noise_scheduler=sched,
                                scaling_factor=0.5, training=training, empty=empty), sched


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_formula(prediction_type):
    _, sched = _tiny_model(prediction_type)
    t = torch.tensor([0, 10, 100, 300, 500, 700, 999])
    a = sched.alphas_cumprod.double().numpy()[t.numpy()]
    snr = a / (1 - a)
    expected = np.minimum(snr, 5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    got = objective.min_snr_weights(sched.alphas_cumprod, t, 5.0, prediction_type).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] < 1.0 and got[-1] == pytest.approx(1.0 if prediction_type == "epsilon"
                                                     else snr[-1] / (snr[-1] + 1), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_targets_follow_the_scheduler(prediction_type, monkeypatch):
    """The noisy input and the target are DDPMScheduler.add_noise / get_velocity's."""
    model, sched = _tiny_model(prediction_type, gamma=None)
    seen = {}

    def spy(sample, t, encoder_hidden_states):
        seen["noisy"], seen["t"] = sample.detach().clone(), t.clone()
        return type("Out", (), {"sample": torch.zeros_like(sample)})

    batch = {"mean": torch.randn(3, 4, 8, 8), "std": torch.zeros(3, 4, 8, 8),
             "input_ids": torch.zeros(3, 8, dtype=torch.long),
             "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    g = torch.Generator().manual_seed(7)
    loss, _ = model.loss(batch, unet=spy, text_encoder=model.text_encoder, generator=g)
    g = torch.Generator().manual_seed(7)  # replay the draws: noise, then timesteps
    latents = batch["mean"] * 0.5
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["noisy"], sched.add_noise(latents, noise, t))
    target = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    assert float(loss) == pytest.approx(float(target.pow(2).mean()), rel=1e-5)


def test_ema_update_follows_the_warmed_up_decay():
    model, _ = _tiny_model(ema_decay=0.9)
    live = next(model.unet.parameters())
    ema = next(model.ema_unet.parameters())
    with torch.no_grad():
        live.fill_(1.0)
        ema.fill_(0.0)
    assert model.update_ema(1) == pytest.approx(2 / 11)  # (1 + t) / (10 + t) early on
    assert torch.allclose(ema, torch.full_like(ema, 1 - 2 / 11))
    assert model.update_ema(1000) == 0.9  # capped at ema_decay
    assert not any(p.requires_grad for p in model.ema_unet.parameters())


def test_resume_continues_each_stage_where_it_stopped(tmp_path):
    common = ["trainer.max_steps=4", "trainer.checkpoint_every=2",
              "diffusion.vae.trainer.max_steps=4", "diffusion.vae.trainer.checkpoint_every=2",
              "diffusion.training.cond_dropout=0.5"]
    cfg = train_cfg(tmp_path, *common)
    full = train.run(cfg)
    run = tmp_path / "run"
    vae_losses = [r["loss"] for r in read_log(run / "vae_stage") if "loss" in r]
    losses = [r["loss"] for r in read_log(run) if "loss" in r]
    assert len(vae_losses) == 4 and len(losses) == 4

    # as if killed in stage 1 after its step-2 checkpoint: both stages continue, results agree
    shutil.rmtree(run / "vae_stage" / "vae")
    (run / "vae_stage" / "done.json").unlink()
    for ckpt in (run / "vae_stage" / "checkpoint-4", run / "checkpoint-4"):
        shutil.rmtree(ckpt)
    again = train.run(train_cfg(tmp_path, *common, "trainer.resume=latest"))
    assert [r["loss"] for r in read_log(run / "vae_stage") if "loss" in r] == pytest.approx(
        vae_losses, rel=1e-5)
    assert [r["loss"] for r in read_log(run) if "loss" in r] == pytest.approx(losses, rel=1e-5)
    assert again["latent_cache"] == full["latent_cache"]  # the same VAE: the cache was reused
    assert again["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)

    # stage 1 finished: a resumed run reuses its VAE and retrains nothing
    shutil.rmtree(run / "checkpoint-4")
    third = train.run(train_cfg(tmp_path, *common, "trainer.resume=latest"))
    assert third["vae_steps"] == full["vae_steps"] and third["steps"] == 4


def test_pubmed_lm_text_encoder_with_epsilon_and_per_component_lrs(tmp_path):
    from tests.helpers.lm import random_model_dir

    lm = random_model_dir(tmp_path / "lm", context=64)
    vae_dir = tiny_vae_dir(tmp_path / "vae_run")
    cfg = train_cfg(tmp_path, "diffusion/text_encoder=pubmed_lm",
                    f"diffusion.text_encoder.model_dir={lm}", f"diffusion.vae.from_dir={vae_dir}",
                    "diffusion.scheduler.prediction_type=epsilon",
                    "diffusion.training.noise_offset=0.1", "diffusion.training.latent_sample=true", "trainer.checkpoint_every=3",
                    "diffusion.unet.cross_attention_dim=48", clip=False)
    m = train.run(cfg)
    assert m["text_encoder"] == "pubmed_lm" and m["text_encoder_trained"]
    assert "vae_steps" not in m  # the reused VAE skipped stage 1
    run = tmp_path / "run"
    groups = torch.load(list_checkpoints(run)[-1] / "optimizer.pt",
                        weights_only=True)["param_groups"]
    assert {round(g["initial_lr"], 8) for g in groups} == {1e-3, 3e-4}

    pipe = _pipe(run / "pipeline")
    assert type(pipe.text_encoder).__name__ == "GPT2Model"
    assert pipe.text_encoder.config.use_attention_mask
    # the LM's 32-d states are projected to the UNet's cross-attention width 48 inside the UNet
    assert (pipe.unet.config.encoder_hid_dim, pipe.unet.config.encoder_hid_dim_type) == (
        32, "text_proj")
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.vae.config.scaling_factor == 0.5  # a reused VAE keeps its own
    first = pipe.tokenizer("pleural effusion")["input_ids"][0]
    assert first == pipe.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # leading separator
    assert torch.isfinite(_sample(pipe)).all()
    # the body was fine-tuned
    from transformers import AutoModel

    before = AutoModel.from_pretrained(str(lm)).state_dict()
    after = pipe.text_encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before)


def test_text_time_embedding_pools_the_prompt_and_samples_in_plain_diffusers(tmp_path):
    vae_dir = tiny_vae_dir(tmp_path / "vae_run")
    train.run(train_cfg(tmp_path, "diffusion.unet.text_time_embedding=true",
                        f"diffusion.vae.from_dir={vae_dir}"))
    pipe = _pipe(tmp_path / "run" / "pipeline")
    assert pipe.unet.config.addition_embed_type == "text"
    assert torch.isfinite(_sample(pipe)).all()
    # the pooled prompt is added to the timestep embedding: two prompts give two embeddings
    ids = pipe.tokenizer(PROMPTS[:2], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = pipe.unet.add_embedding(pipe.text_encoder(ids)[0])
    assert pooled.shape == (2, pipe.unet.time_embedding.linear_2.out_features)
    assert not torch.allclose(pooled[0], pooled[1])
    with pytest.raises(ConfigError, match="text_time_embedding"):
        dc.build_unet(OmegaConf.create({"block_out_channels": [8], "attention": [True],
                                        "layers_per_block": 1, "cross_attention_dim": 8,
                                        "heads": 3, "norm_num_groups": 4,
                                        "text_time_embedding": True}),
                      latent_channels=4, sample_size=8, text_dim=8)


@pytest.mark.data
@pytest.mark.skipif(sources.status("minilm") != "cached",
                    reason="run `biomed data fetch minilm` first")
def test_minilm_frozen_text_encoder_projects_in_the_unet(tmp_path):
    vae_dir = tiny_vae_dir(tmp_path / "vae_run")
    cfg = train_cfg(tmp_path, "diffusion/text_encoder=minilm",
                    f"diffusion.vae.from_dir={vae_dir}", clip=False)
    m = train.run(cfg)
    assert m["text_encoder"] == "minilm" and not m["text_encoder_trained"]
    assert any((tmp_path / "cache" / "text_states").iterdir())  # frozen states cached once
    pipe = _pipe(tmp_path / "run" / "pipeline")
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert pipe.text_encoder.config.use_attention_mask
    assert pipe.tokenizer.model_max_length == 16
    assert (pipe.unet.config.encoder_hid_dim, pipe.unet.config.encoder_hid_dim_type) == (
        384, "text_proj")
    assert torch.isfinite(_sample(pipe)).all()
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(sources.path("minilm"))).state_dict()
    for k, v in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(v, ref[k])  # frozen


def test_roentgen_sd_fine_tunes_a_local_stable_diffusion_folder(tmp_path):
    from tests.helpers.diffusion import DATA, TRAINER, VALIDATION

    sd = tiny_sd_folder(tmp_path / "sd")
    cfg = compose("train_diffusion", [
        f"paths.run_dir={tmp_path / 'run'}", f"diffusion_cache={tmp_path / 'cache'}",
        "diffusion=roentgen_sd", f"diffusion.pretrained={sd}", "diffusion.image_size=32",
        *TRAINER, *DATA, *VALIDATION, "diffusion.validation.guidance=4.0"])
    assert cfg.diffusion.unet.gradient_checkpointing and cfg.diffusion.text_encoder.lr == 1e-5
    m = train.run(cfg)
    assert m["steps"] == 3 and "vae_steps" not in m and m["prompt_length"] == 77
    assert m["scaling_factor"] == pytest.approx(0.18215)  # the pretrained VAE's, kept
    out = tmp_path / "run" / "pipeline"
    pipe = _pipe(out)
    assert pipe.vae.config.in_channels == 3 and pipe.tokenizer.model_max_length == 77
    img = _sample(pipe, guidance=4.0)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    gray = sample.generate_images(pipe, [PROMPTS[0]], [0], steps=3, guidance=4.0)
    assert gray.images.shape == (1, 32, 32)
    ref = load_file(str(sd / "vae" / "diffusion_pytorch_model.safetensors"))
    for k, v in load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors")).items():
        assert torch.equal(v, ref[k])  # VAE frozen
    for part, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        before = load_file(str(sd / part / f"{name}.safetensors"))
        after = load_file(str(out / part / f"{name}.safetensors"))
        assert any(not torch.equal(after[k], before[k]) for k in after), part  # both trained
    assert "PhysioNet" not in (out / "README.md").read_text()


def test_shipped_presets_compose_and_the_tiny_sizes_hold():
    cfg = compose("train_diffusion", ["paths.run_dir=/x"])
    assert cfg.data.name == "phantom_iu" and cfg.diffusion.name == "tiny"
    assert cfg.diffusion.text_encoder.kind == "clip" and cfg.trainer.batch_size == 64
    assert cfg.trainer.max_time_s + cfg.diffusion.vae.trainer.max_time_s <= 480
    prompts = [BlobPairs(n=60).report(i) for i in range(60)]
    comps = dc.build_components(cfg.diffusion, prompts, log=lambda *_: None)
    assert 3.5e6 < dc.count_parameters(comps.unet) < 5e6  # the size argued in tiny.yaml
    assert dc.count_parameters(comps.vae) < 1.5e6 and comps.vae_scale == 8
    assert comps.unet.config.sample_size == 16 and comps.unet.config.cross_attention_dim == 128
    for te in ("clip", "pubmed_lm", "minilm"):
        c = compose("train_diffusion", ["paths.run_dir=/x", f"diffusion/text_encoder={te}"])
        assert c.diffusion.text_encoder.kind == te
    gpu = compose("train_diffusion", ["paths.run_dir=/x", "diffusion=roentgen_sd",
                                      "trainer=ddp", "diffusion.pretrained=/sd"])
    assert gpu.trainer.mixed_precision == "bf16" and gpu.trainer.distributed == "ddp"
    assert gpu.diffusion.image_size == 512 and gpu.optim.optimizer.lr == 5e-5


def test_user_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="model_dir"):
        train.run(train_cfg(tmp_path, "diffusion/text_encoder=pubmed_lm",
                            "diffusion.text_encoder.model_dir=null",
                            f"diffusion.vae.from_dir={tiny_vae_dir(tmp_path / 'v')}", clip=False))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"
    with pytest.raises(InputError, match="not a Stable Diffusion folder"):
        train.run(train_cfg(tmp_path, f"diffusion.pretrained={tmp_path}"))
    with pytest.raises(InputError, match="not a diffusers pipeline folder"):
        pipeline.load_pipeline(tmp_path)
    with pytest.raises(BiomedError, match="report text"):
        train.run(train_cfg(tmp_path, "+data.blank_reports=true"))


def test_gpu_bench_runs_at_toy_size_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "diffusion_gpu.py"), "--tiny"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "batch 2:" in proc.stdout and "failed" not in proc.stdout


def test_gpu_bench_skips_cleanly_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("has a GPU: the bench would run")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "diffusion_gpu.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "skipped: no CUDA device" in proc.stdout


def test_train_bench_runs_at_toy_size():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "diffusion_train.py"),
                           "--size", "32", "--steps", "2", "--batch", "4", "--items", "16",
                           "--threads", "1", "--tiny-widths"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio" in proc.stdout and "images/s" in proc.stdout
