"""`biomed.pretrained`: every saved model loads for inference from a run folder or the artefact
folder inside it, in a fresh interpreter that then holds no training module and no Hydra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.classifier import tiny_classifier_dir
from tests.helpers.clip import tiny_clip_dir

LABELS = ["cardiomegaly", "effusion_left", "effusion_right"]
REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
import numpy as np
import torch
import biomed.pretrained as P

folders = json.loads(sys.argv[1])
out = {}
model, config = P.load_classifier(folders["classifier_run"], "cpu")
again, _ = P.load_classifier(folders["classifier_run"] + "/classifier", "cpu")
x = torch.rand(2, 1, 32, 32)
out["classifier"] = {"input_size": list(model.input_size), "labels": config["labels"],
                     "same": bool(torch.equal(model(x), again(x))), "eval": not model.training,
                     "shape": list(model(x).shape)}
clip = P.load_clip(folders["clip_run"], "cpu")
emb = clip.model.encode_text(clip.tokenizer(["Left pleural effusion."]), normalize=True)
out["clip"] = {"folder": str(clip.path), "dim": int(emb.shape[1]), "eval": not clip.model.training}
if "pipeline_run" in folders:
    pipe = P.load_pipeline(folders["pipeline_run"], "cpu")
    out["pipeline"] = {"folder": str(pipe.folder), "unet": type(pipe.pipe.unet).__name__}
if "lm_run" in folders:
    lm, tok, folder = P.load_lm(folders["lm_run"], "cpu")
    out["lm"] = {"folder": str(folder), "eval": not lm.training, "vocab": len(tok)}
out["train_modules"] = sorted(n for n in sys.modules
                              if n.startswith("biomed") and n.rsplit(".", 1)[-1] == "train")
out["hydra_modules"] = sorted(n for n in sys.modules if n.split(".")[0] == "hydra")
print(json.dumps(out))
"""


def _child(folders: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(folders)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_classifier_and_clip_load_without_training_code_or_hydra(tmp_path):
    clf = tiny_classifier_dir(tmp_path / "clf_run", LABELS)
    clip = tiny_clip_dir(tmp_path / "clip_run")
    out = _child({"classifier_run": str(clf), "clip_run": str(clip)})
    assert out["classifier"] == {"input_size": [32, 32], "labels": LABELS, "same": True,
                                 "eval": True, "shape": [2, 3]}
    assert out["clip"] == {"folder": str(clip / "clip"), "dim": 16, "eval": True}
    assert out["train_modules"] == [] and out["hydra_modules"] == []


@pytest.mark.slow
def test_pipeline_and_lm_load_without_training_code_or_hydra(tmp_path):
    from tests.helpers.diffusion import tiny_sd_folder
    from tests.helpers.lm import random_model_dir

    clf = tiny_classifier_dir(tmp_path / "clf_run", LABELS)
    clip = tiny_clip_dir(tmp_path / "clip_run")
    tiny_sd_folder(tmp_path / "sd_run" / "pipeline")
    lm_folder = random_model_dir(tmp_path / "lm_run")
    out = _child({"classifier_run": str(clf), "clip_run": str(clip),
                  "pipeline_run": str(tmp_path / "sd_run"), "lm_run": str(tmp_path / "lm_run")})
    assert out["pipeline"] == {"folder": str((tmp_path / "sd_run" / "pipeline").resolve()),
                               "unet": "UNet2DConditionModel"}
    assert out["lm"]["folder"] == str(lm_folder) and out["lm"]["eval"] and out["lm"]["vocab"] > 256
    assert out["train_modules"] == [] and out["hydra_modules"] == []
