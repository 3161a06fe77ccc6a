"""Dataset fixtures for tests: copy a hand-written fixture folder (tests/fixtures/datasets/, the
exact real headers of MIMIC-CXR-JPG, CheXpert, NIH, PadChest and a folder CSV) into a temporary
folder, and write the small seeded images its tables point at."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"


class _HasPaths(Protocol):
    paths: list


D = TypeVar("D", bound=_HasPaths)


def write_image(path: str | Path, seed: int, shape: tuple[int, int] = (20, 16)) -> np.ndarray:
    """A small image whose pixels depend on ``seed``, in the format of the dataset: JPEG
    (8-bit), PNG (8-bit, like NIH), or 16-bit PNG in numbered folders (PadChest's layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = ((yy * 7 + xx * 3 + seed * 37) % 256).astype(np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(img).save(path, quality=95)
    elif path.parent.name.isdigit():
        Image.fromarray(img.astype(np.uint16) * 257).save(path)  # PadChest: 16-bit PNGs
    else:
        Image.fromarray(img).save(path)
    return img


def with_images(ds: D) -> D:
    """Write a seeded image (seed = row index) at every path of ``ds`` that does not exist yet;
    returns ``ds``."""
    for i, p in enumerate(ds.paths):
        if not Path(p).exists():
            write_image(p, i)
    return ds


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A fresh copy of ``tests/fixtures/datasets/<name>`` under ``tmp_path`` (tests write images
    into it)."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))
