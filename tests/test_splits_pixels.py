"""The shared split rule and the pixel convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from biomed.errors import InputError
from biomed.imaging.core import pixels
from biomed.splits import assign_split, assign_splits


def test_split_is_stable_and_close_to_fractions():
    keys = [f"patient{i}" for i in range(20000)]
    splits = assign_splits(keys)
    assert splits == assign_splits(list(reversed(keys)))[::-1]  # order does not matter
    frac = {s: splits.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.01 and abs(frac["val"] - 0.1) < 0.01
    assert assign_split("12345678") == assign_split(12345678)
    assert assign_split(7, (0.5, 0.5), ("a", "b")) in ("a", "b")
    with pytest.raises(ValueError):
        assign_split("x", (0.5, 0.6, 0.1))


def test_split_values_are_pinned():
    """A change of the rule would silently move patients between splits of saved runs."""
    assert [assign_split(f"id{i}") for i in range(12)] == [
        "train", "val", "train", "train", "test", "train",
        "train", "train", "train", "train", "train", "train"]


def test_png16_roundtrip_and_text(tmp_path):
    img = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    p = pixels.write_png16(tmp_path / "a.png", img, {"biomed:synthetic": "yes"})
    back = pixels.read_image(p)
    assert back.dtype == np.float32 and back.shape == (64, 48)
    assert np.abs(back - img).max() <= 0.5 / 65535 + 1e-7
    assert pixels.png_text(p) == {"biomed:synthetic": "yes"}
    with Image.open(p) as im:
        assert im.mode.startswith("I;16")


def test_8bit_and_rgb_read_as_gray(tmp_path):
    g = (np.arange(256, dtype=np.uint8).reshape(16, 16))
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "c.jpg", quality=100)
    assert pixels.read_image(tmp_path / "g.png")[0, 1] == pytest.approx(1 / 255)
    assert np.abs(pixels.read_image(tmp_path / "c.jpg") - g / 255).max() < 0.03


def test_bad_images_are_clear_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="x.png: not a readable image"):
        pixels.read_image(tmp_path / "x.png")
    with pytest.raises(InputError, match="file not found"):
        pixels.read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="within"):
        pixels.write_png16(tmp_path / "y.png", np.full((4, 4), 2.0))


def test_resize_keeps_range():
    img = np.random.default_rng(0).random((100, 80)).astype(np.float32)
    out = pixels.resize(img, (50, 40))
    assert out.shape == (50, 40) and out.min() >= 0 and out.max() <= 1
