"""Stored values -> the workbench's [0, 1] image: modality LUT or rescale, VOI, inversion.

PS3.3 C.11: the Modality LUT (or Rescale Slope/Intercept) maps stored values to modality units,
the VOI LUT (or window centre/width, LINEAR / LINEAR_EXACT / SIGMOID) maps those to display
values, and MONOCHROME1 (or an INVERSE Presentation LUT Shape) inverts. For up to 16 stored bits
the whole chain is computed once as a lookup table over every possible stored value; wider values
are transformed directly. A non-finite rescale, or one that overflows, is an error (the reader
turns it into a one-line `InputError`): a NaN image is never produced.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from biomed.imaging.dicom.fields import text_field

VoiMode = Literal["file", "full", "minmax"]  # read.ReadOptions.voi




def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """The values Bits Stored can hold (PS3.5 8.1.1), e.g. 15 unsigned bits: 0..32767."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def gray_to_float(ds: Dataset, stored: np.ndarray, bits_stored: int, signed: bool,
                  voi: VoiMode = "file") -> tuple[np.ndarray, str]:
    """Map stored grayscale values to the workbench image; returns (image, VOI description)."""
    lo, hi = stored_range(bits_stored, signed)
    smin, smax = int(stored.min()), int(stored.max())
    note = ""
    if smin < lo or smax > hi:
        # Only a compressed codestream whose precision exceeds the header's Bits Stored gets
        # here (native data is masked to Bits Stored). Trust the codestream and say so.
        need = (max(smax.bit_length(), (-smin - 1).bit_length()) + 1 if signed
                else smax.bit_length())
        bits_stored = max(bits_stored, need)
        lo, hi = stored_range(bits_stored, signed)
        note = f", values exceed Bits Stored: read as {bits_stored} bits"
    if bits_stored > 16:  # a 2**32-entry table is too big: transform the values themselves
        values, desc = _transform(ds, stored.astype(np.float64), lo, hi, smin, smax, voi)
        return values.astype(np.float32), desc + note
    domain = np.arange(lo, hi + 1, dtype=np.float64)
    table, desc = _transform(ds, domain, lo, hi, smin, smax, voi)
    table = table.astype(np.float32)
    index = stored if lo == 0 else (stored.astype(np.int32) - lo)
    return table[index], desc + note


def _transform(ds: Dataset, values: np.ndarray, lo: int, hi: int, smin: int, smax: int,
               voi: VoiMode) -> tuple[np.ndarray, str]:
    """Modality LUT, VOI, inversion applied to ``values`` (stored values as float64)."""
    modality = _modality(ds, values, lo)
    domain_m = _modality(ds, np.array([lo, hi, smin, smax], dtype=np.float64), lo)
    if voi == "file":
        out = _file_voi(ds, modality)
        if out is None:
            out, desc = _linear(modality, float(min(domain_m[:2])), float(max(domain_m[:2]))), \
                "full range (no window in the file)"
        else:
            out, desc = out
    elif voi == "full":
        out, desc = _linear(modality, float(min(domain_m[:2])), float(max(domain_m[:2]))), \
            "full range"
    else:
        out, desc = _linear(modality, float(min(domain_m[2:])), float(max(domain_m[2:]))), \
            "image min..max"
    if _inverted(ds):
        out = 1.0 - out
        desc += ", inverted (MONOCHROME1)"
    return out, desc


def _modality(ds: Dataset, values: np.ndarray, lo: int) -> np.ndarray:
    """PS3.3 C.11.1: Modality LUT Sequence if present, else Rescale Slope/Intercept."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        return _lut_lookup(seq[0], values, signed_first=lo < 0)[0]
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Rescale Slope {slope:g} / Intercept {intercept:g} is not finite")
    if slope == 1.0 and intercept == 0.0:
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        out = values * slope + intercept
    if not np.isfinite(out).all():
        raise ValueError(f"Rescale Slope {slope:g} / Intercept {intercept:g} overflow the "
                         "stored values")
    return out


def _file_voi(ds: Dataset, m: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The file's VOI: its first VOI LUT (preferred, as pydicom does), else its first window."""
    seq = ds.get("VOILUTSequence")
    if seq:
        out, bits = _lut_lookup(seq[0], m, signed_first=False)
        top = max(float(2**bits - 1), float(out.max()))  # some LUTs overstate their depth
        return np.clip(out / top, 0.0, 1.0), "VOI LUT"
    centers, widths = _multi(ds, "WindowCenter"), _multi(ds, "WindowWidth")
    if not centers or not widths:
        return None
    c, w = centers[0], widths[0]  # PS3.3 C.11.2.1.2: the first pair is the default
    func = (text_field(ds, "VOILUTFunction") or "LINEAR").upper()
    if func == "LINEAR_EXACT" and w > 0:
        y = (m - c) / w + 0.5  # C.11.2.1.3.2
    elif func == "SIGMOID" and w > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (m - c) / w)), f"window {c:g}/{w:g} SIGMOID"
    elif w >= 1:
        func = "LINEAR"
        # C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped; w == 1 is a threshold
        y = (m > c - 0.5).astype(np.float64) if w == 1 else (m - (c - 0.5)) / (w - 1) + 0.5
    else:
        return None  # an invalid width: fall back to the full range
    return np.clip(y, 0.0, 1.0), f"window {c:g}/{w:g} {func}"


def _multi(ds: Dataset, keyword: str) -> list[float]:
    v = ds.get(keyword)
    if v is None or v == "":
        return []
    try:
        vals = [float(x) for x in (v if isinstance(v, pydicom.multival.MultiValue) else [v])]
    except (TypeError, ValueError):
        return []
    return [x for x in vals if math.isfinite(x)]


def _lut_lookup(item: Dataset, values: np.ndarray, signed_first: bool) -> tuple[np.ndarray, int]:
    """Apply a LUT item (LUT Descriptor [entries, first mapped value, bits], LUT Data)."""
    n, first, bits = (int(x) for x in item.LUTDescriptor)
    n = n or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16 entries
    if signed_first and first >= 32768:  # descriptor is US or SS: a negative first value
        first -= 65536
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        lut = np.frombuffer(data, dtype="<u2" if bits > 8 or len(data) >= 2 * n else "u1")
    else:
        lut = np.asarray(data if isinstance(data, list | tuple | pydicom.multival.MultiValue)
                         else [data], dtype=np.float64)
    lut = np.asarray(lut[:n], dtype=np.float64)
    idx = np.clip(np.rint(values - first), 0, len(lut) - 1).astype(np.int64)
    return lut[idx], bits


def _linear(m: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(m)
    return np.clip((m - low) / (high - low), 0.0, 1.0)


def _inverted(ds: Dataset) -> bool:
    """MONOCHROME1 shows its minimum as white (PS3.3 C.7.6.3.1.2); so does MONOCHROME2 with an
    INVERSE Presentation LUT Shape. In DX the shape restates the photometric interpretation
    (C.8.11.6.1.2), so MONOCHROME1 with INVERSE is inverted once, not twice."""
    photometric = (text_field(ds, "PhotometricInterpretation") or "").upper()
    shape = (text_field(ds, "PresentationLUTShape") or "").upper()
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
