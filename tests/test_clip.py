"""`biomed train-clip` and the CXR-CLIP: the open_clip model from a registered config, its
end-of-text pooling, the loss, training on a synthetic paired set, the local-dir folder loaded
by open_clip alone, ``clip.pretrained``, zero-shot scores and retrieval, broken folders.

The synthetic paired set is `tests.helpers.clip.PairedShapes`; a tiny CLIP learns it in a few
dozen steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from biomed.config import compose
from biomed.errors import ConfigError, InputError
from biomed.imaging.clip import evaluate as clip_eval
from biomed.imaging.clip import model as cm
from biomed.imaging.clip import train as clip
from tests.helpers.clip import PAIRED_TARGET, PairedShapes, tiny_model

# ---------------------------------------------------------------------------------------------
# configs

TARGET = PAIRED_TARGET
TINY = ["clip.model.embed_dim=32", "clip.model.vision_cfg.image_size=32",
        "clip.model.vision_cfg.width=8", "clip.model.text_cfg.context_length=16",
        "clip.model.text_cfg.width=32", "clip.model.text_cfg.heads=2",
        "clip.model.text_cfg.layers=1", "clip.tokenizer.vocab_size=300",
        "trainer.batch_size=32", "trainer.max_time_s=null", "trainer.max_steps=60",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.threads=1",
        "optim.optimizer.lr=3e-3", "optim.schedule.warmup_steps=5", "eval.n_boot=50",
        "eval.batch_size=64"]


def clip_cfg(run_dir: Path, *overrides: str):
    tiny = [o for o in TINY if "clip=pretrained" not in overrides or not o.startswith("clip.")]
    return compose("train_clip", [f"data._target_={TARGET}", "data.size=32",
                                  f"paths.run_dir={run_dir}", *tiny, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One short training run on the synthetic pairs, shared by the tests below."""
    run = tmp_path_factory.mktemp("clip") / "run"
    return run, clip.run(clip_cfg(run, "trainer.eval_every=30"))


# ---------------------------------------------------------------------------------------------
# the model


def test_config_is_registered_with_open_clip_and_builds(tmp_path):
    import open_clip

    model, _, model_cfg, pp = tiny_model(tmp_path)
    assert "biomed-test-clip" in open_clip.list_models()
    assert type(model).__name__ == "CLIP"
    assert model.visual.preprocess_cfg["size"] == 32 and model.visual.preprocess_cfg["mean"] == \
        [0.3] * 3
    x = cm.to_model_input(torch.rand(2, 32, 32), model.visual.preprocess_cfg)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 2])  # gray replicated to open_clip's 3 channels
    emb = model.encode_image(x, normalize=True)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(ConfigError, match="embed_dim"):
        cm.register_model_config("broken", {"vision_cfg": {}, "text_cfg": {}})


def test_text_pooling_reads_the_end_of_text_token(tmp_path):
    model, tok_dir, model_cfg, _ = tiny_model(tmp_path)
    tc = model_cfg["text_cfg"]
    tokenizer = cm.open_clip_tokenizer(tok_dir, 16)
    assert tc["pool_type"] == "eos" and tc["eos_id"] == tokenizer.tokenizer.eos_token_id
    ids = tokenizer(["Left pleural effusion."])
    eos = int((ids[0] == tc["eos_id"]).nonzero()[0])
    assert 0 < eos < 15 and (ids[0, eos + 1:] == tc["pad_id"]).all()
    assert int(ids[0].argmax()) != eos  # why argmax pooling would read the wrong token here
    base = model.encode_text(ids)
    after = ids.clone()
    after[0, eos + 1] = int(ids[0, 0])  # a padded position after the end of text
    before = ids.clone()
    before[0, eos - 1] = int(ids[0, 0]) if int(ids[0, eos - 1]) != int(ids[0, 0]) else 5
    torch.testing.assert_close(model.encode_text(after), base)
    assert not torch.allclose(model.encode_text(before), base, atol=1e-4)
    long = tokenizer(["word " * 50])  # truncation keeps the end-of-text token
    assert int(long[0, -1]) == tc["eos_id"]


def test_info_nce_matches_open_clip_and_soft_targets_duplicates():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    scale = torch.tensor(10.0)
    ours = clip.info_nce(img, txt, scale, torch.arange(6))
    torch.testing.assert_close(ours, ClipLoss()(img, txt, scale))
    # items 0 and 1 belong to one report: which of its two texts pairs with which image does
    # not matter (soft targets), while one-hot targets would make them each other's negative
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    swapped = txt[[1, 0, 2, 3, 4, 5]]
    torch.testing.assert_close(clip.info_nce(img, swapped, scale, groups),
                               clip.info_nce(img, txt, scale, groups))
    assert not torch.allclose(clip.info_nce(img, swapped, scale), clip.info_nce(img, txt, scale))


# ---------------------------------------------------------------------------------------------
# retrieval


def test_retrieval_counts_a_render_of_the_same_report_and_states_chance():
    emb = torch.eye(4)
    r = clip_eval.retrieval_metrics(emb, emb, ["a", "b", "c", "d"], ["1", "2", "3", "4"], ks=(1, 2))
    assert r["image_to_text"]["R@1"] == 1.0 and r["text_to_image"]["R@1"] == 1.0
    assert r["image_to_text"]["chance@1"] == pytest.approx(1 / 4)
    assert r["image_to_text"]["chance@2"] == pytest.approx(2 / 4)
    # items 0 and 1 are renders of one report (one text); image 1 is closest to text "c"
    img = torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0, 1.0]])
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])  # distinct texts "a", "c"
    r = clip_eval.retrieval_metrics(img, txt, ["a", "a", "c"], ["r1", "r1", "r2"], ks=(1,))
    assert r["texts"] == 2 and r["reports"] == 2 and r["images"] == 3
    assert r["image_to_text"]["R@1"] == pytest.approx(2 / 3)
    assert r["text_to_image"]["R@1"] == 1.0  # text "a" finds image 0, a render of its report
    assert r["text_to_image"]["chance@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)


# ---------------------------------------------------------------------------------------------
# training, the folder, pretrained


def test_train_clip_learns_zero_shot_and_retrieval(trained):
    run, m = trained
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and m["steps"] == 60
    assert saved["key_metrics"][:2] == ["zs_auroc_cardiomegaly", "zs_auroc_effusion"]
    zs = m["evaluation"]["zero_shot"]
    assert set(zs) == set(PairedShapes.label_names)
    for name in ("cardiomegaly", "effusion", "effusion_left", "effusion_right"):
        assert zs[name]["auroc"] > 0.8, (name, zs[name])
        assert zs[name]["ci_low"] <= zs[name]["auroc"] <= zs[name]["ci_high"]
    side = m["evaluation"]["side_accuracy"]["effusion"]
    assert side["accuracy"] > 0.8 and side["images"] > 0  # it learned the patient's sides
    assert m["zs_side_accuracy_effusion"] == side["accuracy"]
    ret = m["evaluation"]["retrieval"]
    assert ret["texts"] < ret["images"]  # renders share their report's text
    for way in ("image_to_text", "text_to_image"):
        assert ret[way]["R@1"] > ret[way]["chance@1"] + 0.1
    assert m["t2i_R@1"] == ret["text_to_image"]["R@1"]
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_i2t_R@5" in r] == [30, 60]
    assert all(np.isfinite(r["val_loss"]) for r in rows if "val_loss" in r)
    names = {p.name for p in (run / "clip").iterdir()}
    assert names == {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "README.md"}
    card = (run / "clip" / "README.md").read_text()
    assert "CC BY-NC-ND 4.0" in card and "research use only" in card.lower()


def test_a_non_main_process_loads_the_tokenizer_instead_of_training_one(tmp_path, monkeypatch):
    """Under a multi-process launch only the main process trains the report tokenizer and
    writes ``<run>/tokenizer``; another process waits for it and loads it (before the fix
    every process trained one and wrote it into the same folder)."""
    from accelerate.state import PartialState

    run = tmp_path / "run"
    texts = ["Left pleural effusion.", "Heart size is normal.", "No pneumothorax."] * 5
    written = cm.train_report_tokenizer(texts, 280, context_length=16)  # not the data's texts
    cm.save_tokenizer(written, run / "tokenizer")
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in (run / "tokenizer").iterdir()}

    def refuse(*_args, **_kwargs):
        raise AssertionError("a process other than the main one trained or wrote a tokenizer")

    seen = []
    text_cfg_for = cm.text_cfg_for

    def spy(tok, *args, **kwargs):
        seen.append(tok.get_vocab())
        return text_cfg_for(tok, *args, **kwargs)

    monkeypatch.setattr(cm, "train_report_tokenizer", refuse)
    monkeypatch.setattr(cm, "save_tokenizer", refuse)
    monkeypatch.setattr(cm, "text_cfg_for", spy)
    monkeypatch.setattr(PartialState, "is_main_process", property(lambda self: False))
    m = clip.train_clip(clip_cfg(run, "trainer.max_steps=1", "trainer.eval_every=0"), run)
    assert m["steps"] == 1 and "clip_dir" not in m  # the main process evaluates and saves
    assert seen == [written.get_vocab()]  # the model was built on the main process's tokenizer
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns)
            for f in (run / "tokenizer").iterdir()} == before


def test_saved_folder_loads_with_open_clip_alone_and_gives_the_same_embeddings(tmp_path):
    import open_clip
    from PIL import Image

    model, tok_dir, model_cfg, pp = tiny_model(tmp_path)
    out = cm.save_clip(model, model_cfg, dict(model.visual.preprocess_cfg), tok_dir,
                       tmp_path / "clip", "card")
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["preprocess_cfg"]["mean"] == \
        [0.3] * 3 and cfg["preprocess_cfg"]["resize_mode"] == "squash"
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    loaded.eval()
    texts = ["Left pleural effusion.", "Heart size is normal. No pleural effusion."]
    ids = tokenizer(texts)
    torch.testing.assert_close(ids, cm.open_clip_tokenizer(tok_dir, 16)(texts))
    torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids))
    gray = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    ours = cm.to_model_input(torch.from_numpy(gray)[None], model.visual.preprocess_cfg)
    torch.testing.assert_close(loaded.encode_image(ours), model.encode_image(ours))
    # open_clip's own transform of the gray image as an 8-bit RGB PIL image: the same input
    rgb = Image.fromarray((gray * 255).round().astype(np.uint8)).convert("RGB")
    theirs = preprocess(rgb)[None]
    assert (theirs - ours).abs().max() < 1.0 / 255 / 0.2 + 1e-4


def test_pretrained_folder_evaluates_to_the_same_numbers_and_fine_tunes(trained, tmp_path):
    run, m = trained
    ev = clip.run(clip_cfg(tmp_path / "eval", "clip=pretrained", f"clip.pretrained={run}",
                           "trainer.max_steps=0"))
    assert ev["steps"] == 0 and ev["pretrained"] == str(run)
    for name, v in m["evaluation"]["zero_shot"].items():
        assert ev["evaluation"]["zero_shot"][name]["auroc"] == pytest.approx(v["auroc"], abs=1e-6)
    ft = clip.run(clip_cfg(tmp_path / "ft", "clip=pretrained", f"clip.pretrained={run}/clip",
                           "trainer.max_steps=3", "trainer.eval_every=0"))
    assert ft["steps"] == 3
    out = tmp_path / "ft" / "clip"
    assert (out / "tokenizer.json").read_text() == (run / "clip" / "tokenizer.json").read_text()
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"] == \
        json.loads((run / "clip" / "open_clip_config.json").read_text())["model_cfg"]
    assert cm.load_clip(out).model is not None


def test_zero_shot_scores_for_predict(trained):
    run, _ = trained
    images = np.random.default_rng(1).random((3, 40, 30)).astype(np.float32)  # any size
    scores, names = cm.zero_shot_scores(run / "clip", images)
    from biomed.imaging.core.labels import CANONICAL_NAMES

    assert names == list(CANONICAL_NAMES) and scores.shape == (3, len(CANONICAL_NAMES))
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    scores, names = cm.zero_shot_scores(run, images[0], findings=["effusion_left", "Mass"])
    assert scores.shape == (1, 2) and names == ["effusion_left", "Mass"]
    data = PairedShapes(split="test")
    imgs = np.stack([data[i]["image"] for i in range(len(data))])
    s, _ = cm.zero_shot_scores(run, imgs, findings=["cardiomegaly"])
    from biomed.imaging.core.metrics import auroc

    assert auroc(data.labels[:, 0], s[:, 0]) > 0.8


def test_bad_clip_folders_give_one_line_errors(trained, tmp_path):
    run, _ = trained
    with pytest.raises(InputError, match="no such CLIP folder"):
        cm.zero_shot_scores(tmp_path / "missing", np.zeros((1, 8, 8)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a CLIP folder"):
        cm.load_clip(tmp_path / "empty")
    bad = Path(shutil.copytree(run / "clip", tmp_path / "bad"))
    (bad / "open_clip_config.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable open_clip config"):
        cm.load_clip(bad)
    (bad / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 3}}))
    with pytest.raises(InputError, match="not an open_clip config"):
        cm.load_clip(bad)
    shutil.copy(run / "clip" / "open_clip_config.json", bad / "open_clip_config.json")
    (bad / "open_clip_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(InputError, match="open_clip cannot load") as e:
        cm.load_clip(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    (bad / "open_clip_model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        cm.load_clip(bad)
    with pytest.raises(ValueError, match="N x H x W"):
        cm.zero_shot_scores(run, np.zeros((1, 1, 8, 8)))


def test_train_clip_on_the_mimic_fixture_with_reports(tmp_path):
    from biomed.imaging.data.mimic_cxr_jpg import MimicCxrJpg
    from tests.helpers.data import copy_fixture, with_images

    root = copy_fixture("mimic", tmp_path)
    with_images(MimicCxrJpg(root))
    cfg = compose("train_clip", [
        "data=mimic_cxr_jpg", f"data.root={root}", f"data.reports_dir={root}",
        "data.labels=canonical", "data.size=32", "data.cache_dir=null",
        f"paths.run_dir={tmp_path / 'run'}", *TINY, "trainer.batch_size=2",
        "trainer.max_steps=3", "eval.n_boot=10"])
    m = clip.run(cfg)
    assert m["steps"] == 3 and m["train_items"] == 3  # training rows with report text
    assert m["evaluation"]["items"] == 1 and "retrieval" not in m["evaluation"]  # one test image
    assert cm.load_clip(tmp_path / "run").model is not None


def test_fit_clip_trains_on_the_splits_it_is_handed(tmp_path):
    cfg = compose("train_clip", ["~data", f"paths.run_dir={tmp_path / 'run'}", *TINY,
                                 "trainer.max_steps=2", "trainer.eval_every=0", "eval.n_boot=10",
                                 "eval.val_split=null"])
    splits = {"train": PairedShapes("train", n_reports=60), "test": PairedShapes("test")}
    m = clip.fit_clip(cfg, splits, tmp_path / "run", log=lambda _: None)
    assert m["steps"] == 2 and m["evaluation"]["items"] == len(splits["test"])
    assert "data=? (tests.helpers.clip.PairedShapes)" in (tmp_path / "run" / "clip" /
                                                          "README.md").read_text()


def test_configs_compose():
    cfg = compose("train_clip")
    assert cfg.command == "train-clip" and cfg.trainer.max_time_s == 120
    assert cfg.trainer.batch_size == 64 and cfg.clip.pretrained is None
    assert cfg.clip.model.vision_cfg.image_size == 64 and cfg.augment.enabled
    assert cfg.data._target_ == "biomed.imaging.phantom.dataset.PhantomIU"
    pre = compose("train_clip", ["clip=pretrained", "clip.pretrained=/x"])
    assert pre.clip.pretrained == "/x" and pre.optim.optimizer.lr < 1e-4
    assert callable(clip.main)
    with pytest.raises(ConfigError, match="clip.pretrained="):
        clip.train_clip(compose("train_clip", ["clip=pretrained"]), "/nonexistent")
