"""Pixel Data rebuilt from the decoded image, so that no byte beyond the image survives.

A de-identified header says nothing about what Pixel Data carries besides the image: bits above
Bits Stored (old overlays and annotations were kept in the high bits of each 16-bit word),
bytes after the last frame (a name appended by an export tool, ``DOE^JOHN``), and inside a
compressed codestream JPEG comment (COM) and application (APPn) segments and JPEG 2000 comment
(COM) markers, any of which may name the patient. Copying the element byte for byte keeps all
of them. `reencode_pixels` decodes the frames that the header describes (excess bytes are not
read), masks every value to Bits Stored (pydicom's decoders do; kept that way here), and writes
new Pixel Data from those values alone:

- native input (any uncompressed transfer syntax, big endian and deflated included) becomes
  native Explicit VR Little Endian;
- compressed input becomes RLE Lossless (PS3.5 G), lossless and available everywhere (pydicom
  encodes it itself; pylibjpeg-rle makes it fast). A lossy input stays exactly as lossy as it
  was: its decoded values are stored losslessly.

Colour images whose decoder returns RGB (JPEG YBR_FULL_422, YBR_FULL) are written as RGB.
A codestream more precise than the header's Bits Stored (values beyond its range) is kept as
the reader reads it (`biomed.imaging.dicom.read`): Bits Stored is widened to hold the values.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset

from biomed.errors import InputError
from biomed.imaging.dicom.guard import DEFAULT_LIMITS, Limits, decoder_errors

__all__ = ["reencode_pixels"]

_IMAGE_PIXEL = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
                "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                "PixelRepresentation", "PixelData")


def reencode_pixels(src: Dataset, out: Dataset, path: str | Path = "<dataset>",
                    limits: Limits = DEFAULT_LIMITS) -> str:
    """Decode the pixels of ``src`` and store them as new Pixel Data in ``out``.

    Sets the Image Pixel module of ``out`` (size, bits, photometric, frames) from what was
    decoded and returns the transfer syntax ``out`` must be written with. ``src`` is not
    modified. A file that cannot be decoded (or exceeds ``limits``) raises an `InputError`
    naming ``path``.
    """
    from biomed.imaging.dicom.read import _pixel_description

    with decoder_errors(path, "cannot decode the pixels to re-encode them"):
        px = _pixel_description(src, path, limits)  # checked before any decoding
        arr, info = _decode_all(src, px.syntax, path)
    frames = px.frames
    photometric = str(info.get("photometric_interpretation") or px.photometric)
    samples = int(info.get("samples_per_pixel") or px.samples)
    arr = arr.reshape(frames, px.rows, px.columns, samples)
    bits_stored = _bits_needed(arr, px.bits_stored, px.bits_allocated, px.signed)
    compressed = dcm_uid.UID(px.syntax).is_compressed
    for kw in _IMAGE_PIXEL:
        if kw in out:
            del out[kw]
    out.SamplesPerPixel = samples
    out.PhotometricInterpretation = photometric
    if samples > 1:
        out.PlanarConfiguration = 0  # colour-by-pixel, as the arrays are laid out
    if frames > 1 or "NumberOfFrames" in src:
        out.NumberOfFrames = frames
    out.Rows, out.Columns = px.rows, px.columns
    alloc = 8 if px.bits_allocated == 1 else px.bits_allocated  # bit-packed: one byte each
    out.BitsAllocated, out.BitsStored, out.HighBit = alloc, bits_stored, bits_stored - 1
    out.PixelRepresentation = int(px.signed)
    dtype = np.dtype(f"<{'i' if px.signed else 'u'}{alloc // 8}")
    values = arr.astype(dtype, copy=False)
    if compressed:
        with decoder_errors(path, "cannot re-encode the pixels"):
            _rle(out, values)
        return dcm_uid.RLELossless
    data = values.tobytes()
    out.PixelData = data + b"\0" * (len(data) % 2)  # even length (PS3.5 7.1.1)
    out["PixelData"].VR = "OB" if alloc == 8 else "OW"
    return dcm_uid.ExplicitVRLittleEndian


def _decode_all(src: Dataset, syntax: str, path: str | Path) -> tuple[np.ndarray, dict]:
    """Every frame the header describes, as pydicom decodes it (unused bits masked, YBR as
    RGB); bytes beyond the last frame are not read."""
    from pydicom.pixels.decoders.base import get_decoder

    with warnings.catch_warnings():  # pydicom's notes on tolerated oddities: not for stderr
        warnings.simplefilter("ignore")
        arr, info = get_decoder(dcm_uid.UID(syntax)).as_array(src, allow_excess_frames=False)
    if arr.dtype.kind not in "iu":
        raise InputError(path, f"decoded pixel data is {arr.dtype}, integer expected")
    return arr, info


def _bits_needed(arr: np.ndarray, bits_stored: int, bits_allocated: int, signed: bool) -> int:
    """Bits Stored for the decoded values: the header's, or wider when a codestream holds more
    precise values (never past Bits Allocated; 1-bit data is stored one value per byte)."""
    if bits_allocated == 1 or arr.size == 0:
        return max(1, bits_stored)
    lo, hi = int(arr.min()), int(arr.max())
    need = bits_stored
    while need < bits_allocated:
        top = (1 << (need - 1)) - 1 if signed else (1 << need) - 1
        bottom = -(1 << (need - 1)) if signed else 0
        if bottom <= lo and hi <= top:
            break
        need += 1
    return need


def _rle(out: Dataset, values: np.ndarray) -> None:
    """RLE Lossless Pixel Data from frames x rows x columns x samples values."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder

    frames, rows, columns, samples = values.shape
    arr = values[..., 0] if samples == 1 else values  # pydicom's layout: no samples axis for gray
    arr = np.ascontiguousarray(arr[0] if frames == 1 else arr)
    encoded = list(RLELosslessEncoder.iter_encode(
        arr, rows=rows, columns=columns, samples_per_pixel=samples, number_of_frames=frames,
        bits_allocated=int(out.BitsAllocated), bits_stored=int(out.BitsStored),
        pixel_representation=int(out.PixelRepresentation), planar_configuration=0,
        photometric_interpretation=str(out.PhotometricInterpretation)))
    out.PixelData = encapsulate(encoded)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True  # encapsulated (PS3.5 A.4)
