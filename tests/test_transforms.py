"""`biomed.imaging.core.transforms.random_view_transform`: the one image augmentation of the
classifier and CXR-CLIP. It never flips left and right, keeps [0, 1] and the batch's shape, and
draws the classifier's historical random stream (pinned below: a change of these numbers
changes every documented classifier result)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomed.config import compose
from biomed.errors import ConfigError
from biomed.imaging.core.transforms import random_view_transform, view_transform_kwargs
from tests.helpers.classifier import blob_image


def test_random_view_never_flips_left_and_right():
    rng = np.random.default_rng(0)
    img = blob_image(48, rng, "left", False)  # the patient's left: the image's right half
    x = torch.from_numpy(img)[None, None].repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out = random_view_transform(x, **view_transform_kwargs(
        compose("train_classifier", ["~data"]).augment))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every image was changed
    # the blob, where the augmented image is brightest in the lower half, stays on the right
    lower = out[:, 0, 24:, :]
    cols = lower.flatten(1).argmax(1) % 48
    assert (cols > 30).all(), cols


def test_gray_stacks_keep_their_shape_sides_and_stream():
    torch.manual_seed(0)
    x = torch.zeros(4, 32, 32)
    x[:, :, 24:] = 1.0  # bright on the image's right
    kw = view_transform_kwargs(compose("train_clip").augment)
    y = random_view_transform(x, **kw)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y[:, :, 24:].mean((1, 2)) > y[:, :, :8].mean((1, 2)) + 0.5).all()  # no flip
    torch.manual_seed(0)  # B x H x W and B x 1 x H x W: one function, one stream
    assert torch.equal(random_view_transform(x[:, None], **kw)[:, 0], y)
    assert torch.equal(random_view_transform(x, enabled=False), x)
    assert random_view_transform(torch.zeros(0, 8, 8)).shape == (0, 8, 8)


def test_the_classifier_stream_is_pinned():
    """Numbers of the classifier's former ``augment_batch`` (commit 368cd22) on this input."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 16, 16, generator=g)
    torch.manual_seed(0)
    out = random_view_transform(x, **view_transform_kwargs(
        compose("train_classifier", ["~data"]).augment))
    assert out.mean(dim=(1, 2, 3)).tolist() == pytest.approx(
        [0.46184590458869934, 0.4451906681060791, 0.5745806694030762, 0.486717164516449],
        abs=1e-6)
    assert float(out[2, 0, 5, 7]) == pytest.approx(0.7793926000595093, abs=1e-6)


def test_augment_settings_are_checked():
    assert view_transform_kwargs(None) == {}
    assert view_transform_kwargs({"enabled": 0, "gamma": 1}) == {"enabled": False, "gamma": 1.0}
    with pytest.raises(ConfigError, match="flip"):
        view_transform_kwargs({"flip": True})
