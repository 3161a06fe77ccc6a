"""JPEG 2000 specifics of the reader: the codestream's own size, checked against the limits
before OpenJPEG allocates it, and decoding at a coarser wavelet level when a smaller image is
all the caller needs (ingest and the image cache shrink anyway)."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from biomed.imaging.dicom.fields import Pixels
from biomed.imaging.dicom.guard import Limits, check_pixel_count


def check_j2k_size(ds: Dataset, px: Pixels, path: str | Path, limits: Limits) -> None:
    """A JPEG 2000 codestream states its own size, which a hostile file sets far beyond the
    header's Rows x Columns: checked before OpenJPEG allocates it."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=px.frames))
    except Exception:
        return  # the decoder reports an unreadable stream
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # SOC SIZ
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[8:24])
        check_pixel_count(path, ysiz - yo, xsiz - xo, 1, px.samples, limits,
                          where="the JPEG 2000 codestream")


def decode_j2k_reduced(ds: Dataset, px: Pixels,
                        decode_size: int | tuple[int, int]) -> np.ndarray | None:
    """Decode a JPEG 2000 frame at a coarser wavelet level, or None to decode in full.

    A codestream of L decomposition levels holds the image at 1/2, 1/4 ... 1/2**L size; decoding
    only the levels needed (OpenJPEG's ``reduce``, through Pillow) skips most of the entropy
    decoding. Taken only when the codestream is plain (one unsigned component whose precision is
    Bits Stored) and Pillow's rounding of the reduced size agrees with the codestream's (it
    rounds half up where JPEG 2000 takes the ceiling), so the result is exactly what a full
    decode's lowest-resolution band would give.
    """
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        siz = j2k_header(frame)
    except Exception:
        return None
    if siz is None:
        return None
    width, height, precision, signed, levels = siz
    if signed or px.signed or precision != px.bits_stored or (height, width) != (px.rows,
                                                                               px.columns):
        return None
    r = 0
    while r < levels:
        nxt = r + 1
        size = (math.ceil(width / 2**nxt), math.ceil(height / 2**nxt))
        pil = tuple(int((d + (1 << nxt >> 1)) / (1 << nxt)) for d in (width, height))
        big_enough = (size[1] >= decode_size[0] and size[0] >= decode_size[1]
                      if isinstance(decode_size, tuple) else max(size) >= decode_size)
        if not big_enough or size != pil:
            break
        r = nxt
    if r == 0:
        return None
    try:
        with Image.open(io.BytesIO(frame)) as im:
            im.reduce = r
            im.load()
            arr = np.asarray(im)
    except Exception:
        return None
    if arr.ndim != 2 or arr.shape != (math.ceil(height / 2**r), math.ceil(width / 2**r)):
        return None
    if arr.dtype == np.uint16 and precision < 16:
        arr = arr >> (16 - precision)  # Pillow scales N-bit samples up to 16 bits
    return arr


def j2k_header(stream: bytes) -> tuple[int, int, int, bool, int] | None:
    """(width, height, precision, signed, decomposition levels) from a raw J2K codestream."""
    if stream[:4] != b"\xff\x4f\xff\x51":  # SOC then SIZ; a JP2 wrapper is not plain
        return None
    lsiz = struct.unpack(">H", stream[4:6])[0]
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", stream[8:24])
    ncomp = struct.unpack(">H", stream[40:42])[0]
    if ncomp != 1 or xo or yo:
        return None
    ssiz = stream[42]
    pos = 4 + lsiz
    while pos + 4 <= len(stream):
        marker, length = struct.unpack(">HH", stream[pos:pos + 4])
        if marker == 0xFF52:  # COD: Scod(1) SGcod(4) then SPcod starting with the levels
            return xsiz, ysiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), stream[pos + 9]
        if marker == 0xFF90:  # first tile-part: no COD in the main header
            return None
        pos += 2 + length
    return None
