"""The workbench's one pixel convention, and image files in and out of it.

Inside the workbench an image is a 2-D ``float32`` array in [0, 1], single channel, lungs dark and
bone bright (the MONOCHROME2 sense). A 16-bit PNG stores ``round(x * 65535)``; an 8-bit PNG or a
JPEG is read as ``v / 255``. Colour files are converted to gray with ITU-R 601 luma (what PIL's
"L" mode does) -- a chest radiograph saved as RGB has three equal channels, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from biomed.errors import InputError


def check_image(img: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate the convention: 2-D float32, finite, in [0, 1]."""
    if img.ndim != 2:
        raise InputError(what, f"expected a 2-D single-channel image, got shape {img.shape}")
    img = np.asarray(img, dtype=np.float32)
    if not np.isfinite(img).all() or img.min() < 0.0 or img.max() > 1.0:
        raise InputError(what, "pixel values must be finite and within [0, 1]")
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/TIFF file into the convention (DICOM goes through imaging.dicom)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = _pil_to_float(im)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(path, f"not a readable image ({e})") from None
    return arr


def _pil_to_float(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        return np.clip(arr / top, 0, 1).astype(np.float32)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return np.clip(arr, 0, 1)
    if im.mode not in ("L", "1"):
        im = im.convert("L")  # RGB(A), P, LA, CMYK -> luma
    return np.asarray(im, dtype=np.float32) / 255.0


def to_uint16(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_png16(path: str | Path, img: np.ndarray, text: Mapping[str, str] | None = None) -> Path:
    """Write a 16-bit grayscale PNG (``round(x * 65535)``) with optional tEXt chunks."""
    path = Path(path)
    img = check_image(img, str(path))
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint16(img)).save(path, pnginfo=info)
    return path


def png_text(path: str | Path) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG (where synthetic images keep their provenance)."""
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (square int, or (height, width)) with an antialiasing filter."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape == (h, w):
        return img.astype(np.float32, copy=False)
    out = Image.fromarray(img.astype(np.float32), mode="F").resize((w, h), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def image_grid(images: Sequence[np.ndarray] | np.ndarray, cols: int | None = None,
               gap: int = 2) -> np.ndarray:
    """Tile same-size images (N x H x W) into one image, ``cols`` per row (default: a near
    square), separated by ``gap`` mid-gray pixels (sample grids, contact sheets)."""
    images = list(images)
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // cols)
    sheet = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    return sheet
