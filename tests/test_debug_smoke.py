"""`debug=smoke` (conf/debug/): every command accepts it, it shrinks without inventing keys, and it
wins over the primary config and an experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from biomed.config import compose, config_dir

COMMANDS = sorted(p.stem for p in config_dir().glob("*.yaml"))
TRAINING = ["train_lm", "train_classifier", "train_clip", "train_diffusion"]


def _paths(node, prefix=""):
    """Every key path of a plain config tree."""
    out = set()
    for k, v in node.items():
        out.add(f"{prefix}{k}")
        if isinstance(v, dict):
            out |= _paths(v, f"{prefix}{k}.")
    return out


def _added_keys(name: str, *overrides: str) -> set[str]:
    """Key paths that debug=smoke adds to a composition (besides its `debug` marker)."""
    plain = OmegaConf.to_container(compose(name, ["paths.run_dir=/x", *overrides]))
    smoke = OmegaConf.to_container(compose(name, ["paths.run_dir=/x", *overrides, "debug=smoke"]))
    assert smoke["debug"] == "smoke" and "debug" not in plain
    return _paths(smoke) - _paths(plain) - {"debug"}


def test_every_command_lists_debug_last_with_its_part():
    assert len(COMMANDS) >= 10
    for name in COMMANDS:
        defaults = OmegaConf.load(config_dir() / f"{name}.yaml").defaults
        assert list(defaults[-2:]) == [
            {"debug": None}, {"optional debug@_global_": f"${{debug}}/{name}"}], name
        assert (config_dir() / "debug" / "smoke" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_composes_with_debug_smoke_and_gains_no_key(name):
    assert _added_keys(name) == set()


@pytest.mark.parametrize("name, overrides", [
    ("train_classifier", ["data=chexpert", "classifier=densenet121"]),
    ("train_classifier", ["classifier=timm"]),
    ("train_clip", ["clip=pretrained", "data=nih14"]),
    ("train_diffusion", ["diffusion=roentgen_sd", "diffusion/text_encoder=minilm"]),
    ("train_diffusion", ["diffusion/text_encoder=pubmed_lm", "data=mimic_cxr_jpg"]),
    ("train_lm", ["lm=gpt2_124m", "trainer=gpu"]),
    ("evaluate_generation", ["data=openi"]),
])
def test_other_group_options_keep_their_own_keys(name, overrides):
    """The shrinking of a model or data option is keyed by its name: data=chexpert gets no
    max_reports, classifier=densenet121 no small_cnn widths; the steps still shrink."""
    assert _added_keys(name, *overrides) == set()
    cfg = compose(name, ["paths.run_dir=/x", *overrides, "debug=smoke"])
    if "trainer" in cfg:
        assert cfg.trainer.max_steps == 3 and cfg.trainer.max_time_s is None


@pytest.mark.parametrize("name", TRAINING)
def test_training_commands_run_a_few_steps_of_a_tiny_model(name):
    cfg = compose(name, ["paths.run_dir=/x", "debug=smoke"])
    t = cfg.trainer
    assert (t.max_steps, t.max_time_s, t.mixed_precision, t.progress) == (3, None, "no", False)
    if "data" in cfg and cfg.data.name == "phantom_iu":
        assert (cfg.data.max_reports, cfg.data.size, cfg.data.renders_per_report) == (40, 32, 1)
    size = {"train_lm": lambda c: c.lm.n_embd, "train_classifier": lambda c: c.classifier.model
            .widths[-1], "train_clip": lambda c: c.clip.model.embed_dim,
            "train_diffusion": lambda c: c.diffusion.unet.block_out_channels[-1]}[name]
    assert size(cfg) <= 32


def test_smoke_wins_over_an_experiment_and_loses_to_the_command_line():
    cfg = compose("train_diffusion", ["paths.run_dir=/x", "experiment=phantom_reference",
                                      "debug=smoke", "trainer.max_steps=5"])
    assert cfg.trainer.max_time_s is None and cfg.diffusion.vae.trainer.max_time_s is None
    assert cfg.data.templates_per_finding == 2 and cfg.data.extra_templates is None
    assert cfg.diffusion.text_encoder.kind == "minilm"  # the experiment's choice stays
    assert cfg.trainer.max_steps == 5


def test_quickstart_smoke_shrinks_its_lm_stage_and_keeps_the_stage_inputs():
    cfg = compose("quickstart", ["paths.run_dir=/x", "debug=smoke"])
    assert cfg.lm_stage.trainer.max_steps == 3 and cfg.lm_stage.lm.n_embd == 32
    assert cfg.lm_stage.max_docs == 1000
    assert [o.split("=")[0] for o in cfg.stage_overrides.evaluate_generation] == [
        "model_dir", "classifier_dir", "clip_dir"]


def test_smoke_runs_have_their_own_folders():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for name, want in [("train_clip", "smoke/train-clip/"),
                           ("quickstart", "smoke/quickstart/latest")]:
            cfg = hydra_compose(name, ["debug=smoke"], return_hydra_config=True)
            run_dir = Path(cfg.paths.output_root) / want
            assert cfg.hydra.run.dir.startswith(str(run_dir)), name
            plain = hydra_compose(name, [], return_hydra_config=True)
            assert "smoke" not in plain.hydra.run.dir


def test_a_deleted_group_is_left_alone():
    """Tests delete `data` (`~data`) and set their own dataset; smoke still shrinks the rest."""
    cfg = compose("train_classifier", ["~data", "paths.run_dir=/x", "debug=smoke"])
    assert "data" not in cfg and cfg.trainer.max_steps == 3
    assert cfg.classifier.model.widths == [16, 32]
