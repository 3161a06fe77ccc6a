"""The tiny builders of tests/helpers/ that no other test uses yet give folders the workbench's
own loaders read (the LM and Stable Diffusion builders are used by the LM and diffusion tests)."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.classifier import tiny_classifier_dir
from tests.helpers.clip import tiny_clip_dir


def test_tiny_classifier_dir_loads_and_is_seeded(tmp_path):
    from biomed.imaging.classifier import model as M

    labels = ["cardiomegaly", "effusion_left"]
    model, config = M.load_classifier(tiny_classifier_dir(tmp_path / "a", labels))
    again, _ = M.load_classifier(tiny_classifier_dir(tmp_path / "b", labels))
    assert config["labels"] == labels and config["thresholds"] == {n: 0.5 for n in labels}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))


def test_tiny_clip_dir_loads(tmp_path):
    from biomed.imaging.clip import model as cm

    loaded = cm.load_clip(tiny_clip_dir(tmp_path))
    image = cm.to_model_input(torch.from_numpy(np.zeros((1, 32, 32), np.float32)),
                              loaded.model.visual.preprocess_cfg)
    with torch.no_grad():
        assert loaded.model.encode_image(image).shape == (1, 16)
