"""Tiny CLIP builders for tests: `PairedShapes`, a seeded synthetic image-report set under the
dataset contract that a tiny CLIP learns in a few dozen steps, a tiny report tokenizer, a random
tiny open_clip model, and that model saved as train-clip saves it.

`PairedShapes` draws a bright block low on one side of the image for an effusion (the patient's
left is the image's right) and a wide bright centre for an enlarged heart, with report
sentences saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biomed.imaging.clip import model as cm
from biomed.imaging.data.contract import Table
from biomed.splits import assign_split

PAIRED_TARGET = "tests.helpers.clip.PairedShapes"

_HEART = {True: ("Cardiomegaly.", "The heart is enlarged."),
          False: ("Heart size is normal.", "Normal heart size.")}
_EFFUSION = {"left": ("Left pleural effusion.", "Small left pleural effusion."),
             "right": ("Right pleural effusion.", "Small right pleural effusion."),
             "none": ("No pleural effusion.", "There is no pleural effusion.")}


class PairedShapes:
    """Image-report pairs: ``renders`` images per report, split by the report id's hash."""

    label_names = ["cardiomegaly", "effusion", "effusion_left", "effusion_right"]

    def __init__(self, split: str | None = "train", n_reports: int = 300, renders: int = 2,
                 size: int = 32, seed: int = 0, **_ignored):
        self.size, self.seed = size, seed
        self.rows, labels = [], []
        for r in range(n_reports):
            rid = f"R{r}"
            if split is not None and assign_split(rid) != split:
                continue
            rng = np.random.default_rng([seed, r])
            heart, side = bool(rng.random() < 0.5), str(rng.choice(["left", "right", "none"]))
            sentences = [_HEART[heart][rng.integers(2)], _EFFUSION[side][rng.integers(2)]]
            text = " ".join(sentences[::-1] if rng.random() < 0.5 else sentences)
            for k in range(renders):
                self.rows.append((rid, k, heart, side, text))
                labels.append([heart, side != "none", side == "left", side == "right"])
        self.labels = np.asarray(labels, np.float32).reshape(-1, 4)
        self.metadata = Table({"id": [f"{r[0]}_{r[1]}" for r in self.rows],
                               "report_id": [r[0] for r in self.rows],
                               "split": [split] * len(self.rows)})

    def __len__(self) -> int:
        return len(self.rows)

    def reports(self) -> list[str]:
        """The report text of every row (the dataset contract's accessor)."""
        return [r[4] for r in self.rows]

    def __getitem__(self, i: int) -> dict:
        rid, k, heart, side, text = self.rows[i]
        s = self.size
        rng = np.random.default_rng([self.seed, int(rid[1:]), k, 7])
        img = 0.2 + 0.05 * rng.standard_normal((s, s))
        half = (s // 3 if heart else s // 8) + int(rng.integers(-1, 2))
        img[s // 3: 3 * s // 4, s // 2 - half: s // 2 + half] = 0.7  # the heart
        if side != "none":  # the patient's left is the image's right
            cols = slice(s // 2 + 2, s) if side == "left" else slice(0, s // 2 - 2)
            img[3 * s // 4 - int(rng.integers(0, 3)):, cols] = 0.85
        return {"image": np.clip(img, 0, 1).astype(np.float32), "labels": self.labels[i],
                "report": text, "id": self.metadata["id"][i], "index": i}


def tiny_tokenizer(tmp: Path, context: int = 16):
    """A 300-token report BPE trained on `PairedShapes`' sentences, saved in ``tmp/tok``:
    (tokenizer, its folder)."""
    texts = [t for v in (*_HEART.values(), *_EFFUSION.values()) for t in v] * 5
    tok = cm.train_report_tokenizer(texts, 300, context_length=context)
    return tok, cm.save_tokenizer(tok, tmp / "tok")


def tiny_model(tmp: Path):
    """A random (seeded) tiny open_clip model on `tiny_tokenizer`, in eval mode:
    (model, tokenizer folder, model config, preprocess config)."""
    tok, tok_dir = tiny_tokenizer(tmp)
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1],
                                                 "width": 8, "head_width": 64},
                 "text_cfg": cm.text_cfg_for(tok, {"context_length": 16, "width": 32,
                                                   "heads": 2, "layers": 1}, "test-bpe")}
    torch.manual_seed(0)
    pp = {"mean": [0.3] * 3, "std": [0.2] * 3, "interpolation": "bicubic",
          "resize_mode": "squash"}
    model = cm.build_model("biomed-test-clip", model_cfg, pp)
    return model.eval(), tok_dir, model_cfg, pp


def tiny_clip_dir(folder: Path) -> Path:
    """`tiny_model` saved as train-clip saves it (open_clip's local-dir format) in
    ``folder/clip``; returns ``folder``."""
    model, tok_dir, model_cfg, _ = tiny_model(Path(folder) / "tiny_clip_parts")
    cm.save_clip(model, model_cfg, dict(model.visual.preprocess_cfg), tok_dir,
                 Path(folder) / "clip", "card")
    return Path(folder)
