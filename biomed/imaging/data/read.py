"""Reading one radiograph file (PNG, JPEG, TIFF or DICOM) into the workbench's pixel convention.

The loaders read every image through `read_xray`; the image cache
(`biomed.imaging.data.image_cache`) calls it once per file with the target size as a hint, so
that a large JPEG or JPEG 2000 DICOM is decoded at a reduced scale instead of in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from biomed.errors import InputError
from biomed.imaging.core import pixels
from biomed.imaging.dicom.guard import DEFAULT_LIMITS, Limits, check_pixel_count, decoder_errors

__all__ = ["read_image_file", "read_xray"]


def read_xray(path: str | Path, size: Sequence[int] | None = None, *,
              allow_burned_in: bool = False) -> np.ndarray:
    """Read a PNG / JPEG / TIFF / DICOM file into the workbench convention.

    ``size`` (height, width) is a hint, not a resize: a JPEG is then decoded at the smallest
    DCT scale (1/2, 1/4, 1/8) that stays at least that large, and JPEG 2000 DICOM likewise,
    which is most of the decoding time of a 3000 x 2500 radiograph.

    DICOM whose pixels may show who the patient is (burned-in text, secondary captures without
    Burned In Annotation NO: `biomed.imaging.dicom.burned_in`) is refused with an `InputError`,
    as ingest refuses it, unless ``allow_burned_in``: a model trained on such images can learn
    to draw the text.
    """
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        with decoder_errors(path, "cannot read"):  # any failure is this file's InputError
            return _read_dicom(path, size, allow_burned_in)
    return read_image_file(path, size)


def read_image_file(path: str | Path, size: Sequence[int] | None = None, *,
                    limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A PNG / JPEG / TIFF / BMP file in the workbench convention, under the one error policy
    (`biomed.imaging.dicom.guard.decoder_errors`: any failure of Pillow, a
    ``DecompressionBombError`` included, is an `InputError` naming the file) and the pixel cap
    ``limits.max_pixels`` (width x height x bands), checked on the header before decoding.
    ``size``: as for `read_xray`."""
    path = Path(path)
    with decoder_errors(path, "cannot read"):
        _check_declared_size(path, limits)
        if size is not None and path.suffix.lower() in (".jpg", ".jpeg"):
            return _read_jpeg_reduced(path, size)
        return pixels.read_image(path)


def _check_declared_size(path: Path, limits: Limits) -> None:
    """Refuse an image whose header declares more pixels than the cap (Pillow's own
    ``DecompressionBombError`` fires only past twice its ``MAX_IMAGE_PIXELS``, ~179 MP)."""
    try:
        with Image.open(path) as im:  # reads the header only
            (w, h), bands = im.size, len(im.getbands())
    except (UnidentifiedImageError, OSError, SyntaxError):
        return  # not an image: the reader says so in its own words
    check_pixel_count(path, h, w, 1, bands, limits, where="the image header")


def _read_jpeg_reduced(path: Path, size: Sequence[int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":  # e.g. a PNG named .jpg: the usual reader
                return pixels.read_image(path)
            im.draft("L", (int(size[1]), int(size[0])))  # picks a DCT scale; not below size
            im.load()
            gray = im if im.mode == "L" else im.convert("L")  # RGB/CMYK -> luma, as pixels does
            return np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(path, f"not a readable image ({e})") from None


def _read_dicom(path: Path, size: Sequence[int] | None,
                allow_burned_in: bool = False) -> np.ndarray:
    """DICOM through `biomed.imaging.dicom.read.read_dicom` (imported here: pydicom is heavy)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        from biomed.imaging.dicom import read as dicom
    except ImportError as e:
        raise InputError(path, f"cannot read DICOM: biomed.imaging.dicom.read is not available "
                               f"({e})") from None
    reader = getattr(dicom, "read_dicom", None)
    if reader is None:
        raise InputError(path, "cannot read DICOM: biomed.imaging.dicom.read has no read_dicom")
    options = None
    if size is not None and hasattr(dicom, "ReadOptions"):
        try:  # JPEG 2000 may then stop at a wavelet level still >= size on each side
            options = dicom.ReadOptions(decode_size=(int(size[0]), int(size[1])))
        except (TypeError, ValueError):
            options = None
    from biomed.imaging.dicom.burned_in import check_burned_in

    options = options or dicom.ReadOptions()
    ds = dicom.read_dataset(path, limits=options.limits)
    check_burned_in(ds, path, allow=allow_burned_in)  # the refusal ingest applies
    out = dicom.dataset_to_image(ds, path, options)
    return pixels.check_image(np.asarray(getattr(out, "image", out)), str(path))
