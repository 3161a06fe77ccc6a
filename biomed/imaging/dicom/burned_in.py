"""The refusal of images whose pixels may show who the patient is (burned-in text, a face).

The workbench does not look for text in pixels (no OCR: the PS3.15 Clean Pixel Data option is
not offered). It reads what the file says about them and refuses what may identify someone:

- **Burned In Annotation** (0028,0301): ``YES`` is refused for every image. A value that is not
  exactly one ``NO`` (several values such as ``['YES', 'NO']``, or any other text) is refused
  too: the file does not say its pixels are clean.
- **Recognizable Visual Features** (0028,0302): ``YES``, or a value that is not exactly one
  ``NO``, is refused (a face or other feature that identifies the patient).
- **Captures of screens and other secondary images**: Secondary Capture SOP classes, Modality
  ``OT``, ``US`` or ``SC``, and Image Type containing ``SECONDARY`` are where text is burned in
  (screenshots, ultrasound, scanned films): these are refused unless Burned In Annotation is
  exactly ``NO``; a missing value is not enough.

A primary radiograph (DX, CR...) without the attribute passes: PS3.3 makes it Type 3 there, and
most do not carry it. Whoever keeps refused images does so explicitly (``allow_burned_in``,
``--allow-burned-in``), and the attribute stays in the output for whoever reads it next.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from biomed.errors import InputError

__all__ = ["BurnedInAnnotation", "burned_in_reason", "check_burned_in"]

# Secondary Capture Image Storage (PS3.4 B.5) and its four multi-frame forms (.7.1 to .7.4)
_SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_SECONDARY_MODALITIES = ("OT", "US", "SC")
_OPT_IN = "kept out; opt in with --allow-burned-in / allow_burned_in=True"


class BurnedInAnnotation(InputError):
    """The pixels may show who the patient is (burned-in text, recognizable features)."""


def _values(ds: Dataset, keyword: str) -> list[str] | None:
    """The attribute's values, upper case and stripped; None when it is absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = [str(v).strip().upper() for v in items]
    return out if any(out) else None


def _secondary(ds: Dataset) -> str | None:
    """Why an image is a capture or secondary image (where text is burned in), or None."""
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    meta = getattr(ds, "file_meta", None)
    if not sop and meta is not None:
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if sop == _SC_CLASS or sop.startswith(_SC_CLASS + "."):
        return "a Secondary Capture"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _SECONDARY_MODALITIES:
        return f"Modality {modality}"
    if "SECONDARY" in (_values(ds, "ImageType") or []):
        return "Image Type SECONDARY"
    return None


def _describe(values: list[str] | None) -> str:
    if values is None:
        return "missing"
    return values[0] if len(values) == 1 else "\\".join(values) + " (several values)"


def burned_in_reason(ds: Dataset) -> str | None:
    """Why the pixels of ``ds`` may identify the patient (the policy above), or None."""
    burned = _values(ds, "BurnedInAnnotation")
    if burned == ["YES"]:
        return ("Burned In Annotation is YES (text in the pixels may identify the patient): "
                + _OPT_IN)
    if burned is not None and burned != ["NO"]:
        return (f"Burned In Annotation is {_describe(burned)}, not NO (text in the pixels may "
                f"identify the patient): {_OPT_IN}")
    features = _values(ds, "RecognizableVisualFeatures")
    if features is not None and features != ["NO"]:
        return (f"Recognizable Visual Features is {_describe(features)}, not NO (the pixels may "
                f"show who the patient is): {_OPT_IN}")
    why = _secondary(ds)
    if why is not None and burned is None:
        return (f"Burned In Annotation is missing on {why} (captures and secondary images often "
                f"hold text in their pixels; NO is required): {_OPT_IN}")
    return None


def check_burned_in(ds: Dataset, path: str | Path = "<dataset>", *,
                    allow: bool = False) -> None:
    """Raise `BurnedInAnnotation` (an `InputError` naming ``path``) when the pixels of ``ds``
    may identify the patient, unless ``allow``."""
    if allow:
        return
    reason = burned_in_reason(ds)
    if reason is not None:
        raise BurnedInAnnotation(path, reason)
