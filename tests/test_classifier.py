"""The chest X-ray classifier: architectures, loss, training through the shipped
config on a synthetic dataset and on the CheXpert fixture, evaluation, saving, Grad-CAM.

`tests.helpers.classifier.BlobData` follows the dataset contract with findings a tiny CNN learns
in seconds; tests set it as ``data`` of the shipped ``train_classifier`` config and call
``run(cfg)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from biomed import runs
from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.imaging.classifier import evaluate as E
from biomed.imaging.classifier import model as C
from biomed.imaging.classifier import train as T
from biomed.imaging.classifier.card import model_card
from biomed.imaging.classifier.gradcam import default_target_layer, grad_cam, overlay
from tests.helpers.classifier import BLOB_LABELS, BLOB_TARGET, TINY_CNN, BlobData, blob_image

QUIET = ["trainer.progress=false", "trainer.tensorboard=false", "trainer.threads=1",
         "trainer.max_time_s=null", "eval.n_boot=50", "eval.val_n_boot=20"]


def blob_cfg(tmp_path: Path, *overrides: str, n_train: int = 320):
    """The shipped train_classifier config on `BlobData`, shrunk to a few seconds."""
    cfg = compose("train_classifier", ["~data", f"paths.run_dir={tmp_path / 'run'}", *TINY_CNN,
                                       *QUIET, "trainer.batch_size=16", "trainer.max_steps=90",
                                       "trainer.eval_every=45", "optim.optimizer.lr=3e-3",
                                       "optim.schedule.warmup_steps=5", *overrides])
    with open_dict(cfg):
        cfg.data = OmegaConf.create({"_target_": BLOB_TARGET, "size": 32,
                                     "n": None if n_train == 320 else n_train})
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small_cnn trained on BlobData through `run` (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("blobs")
    metrics = T.run(blob_cfg(tmp))
    return tmp / "run", metrics


# ---------------------------------------------------------------------------------------------
# architectures


def _node(arch: str, **extra):
    return OmegaConf.create({"arch": arch, "name": extra.pop("name", arch), "model": extra})


@pytest.mark.parametrize(("node", "size"), [
    (_node("small_cnn"), 64),
    (_node("densenet121"), 32),
    (_node("timm", name="resnet18"), 32),
])
def test_each_architecture_builds_and_maps_gray_images_to_logits(node, size):
    torch.manual_seed(0)
    model = C.build_classifier(node, 3, mean=0.4, std=0.2)
    out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert model(torch.rand(2, size, size)).shape == (2, 3)  # B x H x W also accepted
    default_target_layer(model)  # every architecture names its Grad-CAM layer


def test_small_cnn_default_size_and_shipped_presets():
    cfg = compose("train_classifier", ["~data"])
    model = C.build_classifier(cfg.classifier, 12)
    params = sum(p.numel() for p in model.parameters())
    assert 200_000 <= params <= 1_000_000  # the CPU budget
    assert cfg.trainer.max_time_s == 120 and cfg.classifier.labels is None
    for preset, name in (("densenet121", "densenet121"), ("timm", "resnet18")):
        c = compose("train_classifier", ["~data", f"classifier={preset}"])
        assert c.classifier.name == name and C.architecture_kwargs(c.classifier)[0] == preset


def test_bad_architecture_settings_are_config_errors():
    with pytest.raises(ConfigError, match="arch"):
        C.build_classifier(_node("vgg"), 2)
    with pytest.raises(ConfigError, match="no_such_model"):
        C.build_classifier(_node("timm", name="no_such_model"), 2)
    with pytest.raises(ConfigError, match="small_cnn"):
        C.build_classifier(_node("small_cnn", depth=3), 2)


def test_densenet_loads_local_rgb_weights_with_old_key_names(tmp_path):
    from torchvision.models import densenet121

    torch.manual_seed(1)
    rgb = densenet121(weights=None).state_dict()  # 3 input channels, 1000 classes
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in rgb.items()}
    torch.save(old, tmp_path / "densenet121.pth")
    model = C.build_classifier(OmegaConf.create(
        {"arch": "densenet121", "name": "densenet121", "model": {},
         "pretrained": str(tmp_path / "densenet121.pth")}), 4)
    feats = model.net.features
    torch.testing.assert_close(feats.conv0.weight, rgb["features.conv0.weight"].sum(1, True))
    torch.testing.assert_close(feats.denseblock1.denselayer1.norm1.weight,
                               rgb["features.denseblock1.denselayer1.norm1.weight"])
    assert model.net.classifier.weight.shape == (4, 1024)  # the 1000-class head stays random
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth"):
        C.load_pretrained(model, tmp_path / "junk.pth")


# ---------------------------------------------------------------------------------------------
# loss and weights (the augmentation: tests/test_transforms.py)


def test_masked_loss_ignores_unknown_labels():
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([[1, 0, float("nan")], [0, float("nan"), 1], [1, 1, 0],
                      [float("nan")] * 3])
    loss = T.masked_bce(logits, y)
    known = ~torch.isnan(y)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], y[known])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    assert T.masked_bce(torch.zeros(2, 2), torch.full((2, 2), float("nan"))) == 0


def test_pos_weights_follow_prevalence_and_cap():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, np.nan], [0, 1]], dtype=np.float32)
    assert T.pos_weights(y, "none") is None
    torch.testing.assert_close(T.pos_weights(y, "balanced"), torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(T.pos_weights(y, "sqrt"), torch.tensor([2.0, 3 ** 0.5]))
    assert T.pos_weights(y, "balanced", cap=2.0).max() == 2.0
    with pytest.raises(ConfigError):
        T.pos_weights(y, "inverse")


# ---------------------------------------------------------------------------------------------
# evaluation pieces


def test_thresholds_by_youden_and_f1():
    y = np.array([0, 0, 1, 1, np.nan])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    assert E.choose_threshold(y, s, "youden") == pytest.approx(0.6)  # between 0.8 and 0.4
    assert E.choose_threshold(y, s, "f1") == pytest.approx(0.225)  # between 0.35 and 0.1
    assert E.choose_threshold(np.array([1.0, 1.0]), np.array([0.2, 0.3])) is None


def test_side_accuracy_counts_single_sided_positives_only():
    names = ["effusion", "effusion_left", "effusion_right"]
    y = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=np.float32)
    p = np.array([[0, .9, .1], [0, .2, .7], [0, .5, .5], [0, .9, .1], [0, .3, .6]])
    lr = E.side_accuracy(y, p, names, n_boot=10)
    assert lr["effusion"]["n"] == 3 and lr["effusion"]["accuracy"] == pytest.approx(2 / 3)
    assert "pneumothorax" not in lr


# ---------------------------------------------------------------------------------------------
# training through the shipped config


def test_training_on_blobs_learns_findings_and_sides(trained):
    run_dir, metrics = trained
    test = metrics["test"]
    assert metrics["eval_split"] == "test" and test["n"] == 128
    assert metrics["labels"] == BLOB_LABELS  # every label with both classes in train
    assert metrics["macro_auroc"] > 0.9, test["per_label"]
    assert metrics["clear_macro_auroc"] > 0.9  # cardiomegaly and effusion
    assert test["clear_findings_used"] == ["cardiomegaly", "effusion"]
    assert metrics["lr_accuracy_effusion"] > 0.9 and metrics["lr_n_effusion"] > 30
    for name in BLOB_LABELS:
        e = test["per_label"][name]
        assert e["auroc"]["ci_low"] <= e["auroc"]["value"] <= e["auroc"]["ci_high"]
        assert 0 < e["threshold"] < 1 and e["ap"] is not None
    assert 0 <= metrics["ece"] <= 1 and metrics["val"]["n"] == 96
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["key_metrics"][0] == "clear_macro_auroc"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_macro_auroc" in r] == [45, 90]
    assert (run_dir / "provenance.json").is_file()


def test_saved_classifier_folder_reloads_to_the_evaluated_model(trained):
    run_dir, metrics = trained
    folder = run_dir / "classifier"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json",
                                                  "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "small_cnn" and config["labels"] == BLOB_LABELS
    assert config["input_size"] == [32, 32] and config["training_data"] == "blobs"
    assert set(config["thresholds"]) == set(BLOB_LABELS)
    assert 0.2 < config["normalization"]["mean"] < 0.5 and config["normalization"]["std"] > 0
    a, cfg_a = C.load_classifier(run_dir)
    b, _ = C.load_classifier(folder)
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(a(x), b(x)) and cfg_a == config and not a.training
    # the reloaded weights reproduce the test split's numbers exactly
    test = BlobData("test")
    probs, labels = E.predict_dataset(a, test, range(4))
    assert E.macro_auroc(labels, probs) == pytest.approx(metrics["test"]["macro_auroc"]["value"],
                                                         abs=1e-12)
    card = (folder / "README.md").read_text()
    assert "Research use only" in card and "| effusion_left |" in card
    with pytest.raises(InputError, match="not a classifier folder"):
        C.load_classifier(run_dir / "nowhere")


def test_from_pretrained_restores_every_attribute_through_the_constructor(trained):
    run_dir, _ = trained
    config = json.loads((run_dir / "classifier" / "config.json").read_text())
    model = C.XrayClassifier.from_pretrained(run_dir)
    assert model.input_size == (32, 32) and model.in_chans == 1 and not model.training
    assert model.cam_layer_name == "net.stages"
    assert float(model.mean) == pytest.approx(config["normalization"]["mean"])
    assert float(model.std) == pytest.approx(config["normalization"]["std"])
    node = OmegaConf.create({"arch": "small_cnn", "name": "small_cnn", "model": {}})
    assert C.build_classifier(node, 2, input_size=[64, 48]).input_size == (64, 48)
    assert C.build_classifier(node, 2).input_size is None


def test_pretrained_from_a_classifier_folder_keeps_the_body(trained):
    run_dir, _ = trained
    node = OmegaConf.create({"arch": "small_cnn", "name": "small_cnn", "pretrained": str(run_dir),
                             "model": {"stem_width": 8, "widths": [16, 32], "strides": [2, 2]}})
    model = C.build_classifier(node, 2)  # another label set: the head stays random
    ref, _ = C.load_classifier(run_dir)
    torch.testing.assert_close(model.net.stem[0].weight, ref.net.stem[0].weight)
    assert model.net.head.weight.shape == (2, 160)  # 32 x 2 x 2 grid + 32 max


def test_model_card_names_phantom_data_and_its_licence():
    config = {"architecture": "small_cnn", "name": "small_cnn", "training_data": "phantom_iu",
              "pixel_convention": C.PIXEL_CONVENTION, "input_size": [128, 128],
              "threshold_rule": "youden", "seed": 0}
    card = model_card(config, {"eval_split": "test", "test": {"n": 0}, "steps": 1,
                                 "train_seconds": 1.0, "params": 10})
    assert "phantom" in card and "CC BY-NC-ND 4.0" in card and "non-commercial" in card


def test_train_classifier_on_the_chexpert_fixture(tmp_path):
    from biomed.imaging.data.chexpert import CheXpert
    from tests.helpers.data import copy_fixture, with_images

    root = copy_fixture("chexpert", tmp_path)
    full = with_images(CheXpert(root))
    cfg = compose("train_classifier", [
        "data=chexpert", f"data.root={root}", "data.size=16", "data.cache_dir=null",
        f"paths.run_dir={tmp_path / 'run'}", *TINY_CNN, *QUIET, "trainer.batch_size=2",
        "trainer.max_steps=3", "trainer.eval_every=0"])
    metrics = T.run(cfg)
    train = full.with_split("train")
    both = [n for k, n in enumerate(train.label_names)
            if (train.labels[:, k] == 1).any() and (train.labels[:, k] == 0).any()]
    assert metrics["labels"] == both and len(both) >= 1
    assert metrics["n_train"] == len(train) and metrics["steps"] == 3
    config = json.loads((tmp_path / "run" / "classifier" / "config.json").read_text())
    assert config["training_data"] == "chexpert" and config["input_size"] == [16, 16]
    assert runs.find_runs(tmp_path)[0]["status"] == "completed"
    model, _ = C.load_classifier(tmp_path / "run")
    assert model(torch.rand(1, 1, 16, 16)).shape == (1, len(both))


def test_fit_classifier_trains_on_the_splits_it_is_handed(tmp_path):
    """The seam of the augmentation loop: datasets built by the caller, no ``data`` config."""
    cfg = compose("train_classifier", ["~data", *TINY_CNN, *QUIET, "trainer.batch_size=8",
                                       "trainer.max_steps=2", "trainer.eval_every=0"])
    splits = {"train": BlobData("train", n=48, name="handed"), "val": BlobData("val", n=16),
              "test": BlobData("test", n=24)}
    metrics = T.fit_classifier(cfg, splits, tmp_path / "run", log=lambda _: None)
    assert metrics["steps"] == 2 and (metrics["n_train"], metrics["n_test"]) == (48, 24)
    config = json.loads((tmp_path / "run" / "classifier" / "config.json").read_text())
    assert config["training_data"] == "handed" and config["input_size"] == [32, 32]
    with pytest.raises(ConfigError, match="no test split"):
        T.fit_classifier(cfg, {"train": splits["train"], "val": splits["val"]}, tmp_path / "x")


def test_unknown_label_names_are_config_errors(tmp_path):
    cfg = blob_cfg(tmp_path, "classifier.labels=[effusion,fracture]", "trainer.max_steps=1")
    with pytest.raises(ConfigError, match="fracture"):
        T.run(cfg)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# Grad-CAM


def test_grad_cam_peaks_on_the_blob(trained):
    run_dir, _ = trained
    model, config = C.load_classifier(run_dir)
    rng = np.random.default_rng(7)
    img = blob_image(32, rng, "left", False)  # blob low on the image's right
    cam = grad_cam(model, img, config["labels"].index("effusion_left"))
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    r, c = np.unravel_index(cam.argmax(), cam.shape)
    assert c >= 16 and r >= 12, (r, c)
    assert cam[16:, 16:].mean() > 2 * cam[:, :16].mean()
    big = grad_cam(model, blob_image(64, rng, "left", False),
                   config["labels"].index("effusion_left"))  # resized for the model, back to 64
    assert big.shape == (64, 64) and np.unravel_index(big.argmax(), big.shape)[1] >= 32
    rgb = overlay(img, cam)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb[r, c, 0] > rgb[r, c, 2]  # hot spots are orange-yellow, the rest stays gray
    low = np.unravel_index(cam.argmin(), cam.shape)
    assert len(set(rgb[low].tolist())) == 1


def test_grad_cam_on_densenet121():
    torch.manual_seed(0)
    model = C.build_classifier(_node("densenet121"), 2)
    cam = grad_cam(model, np.random.default_rng(0).random((64, 64), dtype=np.float32), 1)
    assert cam.shape == (64, 64) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1
    assert model.training  # the mode is left as found
    with pytest.raises(ConfigError, match="out of range"):
        grad_cam(model, np.zeros((32, 32), np.float32), 5)


def test_dataset_mistakes_are_one_line_errors(tmp_path):
    base = [f"paths.run_dir={tmp_path / 'run'}", "data=chexpert", *QUIET]
    with pytest.raises(ConfigError, match=r"data\.root=\.\.\."):
        T.run(compose("train_classifier", base))
    with pytest.raises(InputError, match="CheXpert folder not found"):  # not Hydra's wrapper
        T.run(compose("train_classifier", [*base, f"data.root={tmp_path / 'nowhere'}"]))
