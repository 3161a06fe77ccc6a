"""Reading header fields leniently, and the Image Pixel module as one record (PS3.3 C.7.6.3).

Shared by the reader (`biomed.imaging.dicom.read`), the JPEG 2000 paths
(`biomed.imaging.dicom.jpeg2000`) and the stored-value transform (`biomed.imaging.dicom.voi`):
a malformed value in a field the workbench only reports reads as missing, never as an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Pixels:
    """The Image Pixel module of a dataset, checked (see ``read._pixel_description``)."""

    rows: int
    columns: int
    frames: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    syntax: str


def text_field(ds: Dataset, keyword: str) -> str | None:
    try:
        v = ds.get(keyword)
    except Exception:  # a malformed value in a field we only report
        return None
    if v is None or v == "":
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        v = "\\".join(map(str, v))
    return str(v).strip() or None


def int_field(ds: Dataset, keyword: str) -> int | None:
    try:
        v = ds.get(keyword)
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None
