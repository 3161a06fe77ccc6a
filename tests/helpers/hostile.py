"""Hostile and broken DICOM files, generated (a few KB each): the held-out-style set that the
batch commands must survive (issue: hardening before anything faces an upload).

Each generator writes one file and returns its path; `hostile_set` writes them all and
`good_set` two well-formed radiographs carrying the identifying markers of `make_dataset`, so a
test can check that every bad file is reported, every good one processed, and no marker leaks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.helpers.dicom import make_dataset, truncated_j2k
from tests.helpers.dicom import save as _save


def save(ds, path: Path) -> Path:
    return Path(_save(ds, path))


def _encapsulated(ds, syntax: str, frame: bytes):
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def rle_panic(path: Path) -> Path:
    """An RLE frame that makes pylibjpeg-rle panic (``pyo3_runtime.PanicException``, a
    BaseException): two segments whose runs index past the decoder's buffer."""
    header = struct.pack("<I", 2) + struct.pack("<15I", 64, 76, *([0] * 13))
    body = bytes.fromhex("81007fff4702006603ac02ff027fff00fafa530202")
    ds = make_dataset(rows=3, cols=3, pixels=np.zeros((3, 3), np.uint16))
    return save(_encapsulated(ds, dcm_uid.RLELossless, header + body), path)


def deflate_bomb(path: Path, inflated_mb: int = 8) -> Path:
    """Deflated Explicit VR Little Endian whose dataset inflates ~1000x (a zero image)."""
    side = int((inflated_mb * (1 << 20) / 2) ** 0.5)
    ds = make_dataset(rows=side, cols=side, pixels=np.zeros((side, side), np.uint16))
    ds.file_meta.TransferSyntaxUID = dcm_uid.DeflatedExplicitVRLittleEndian
    return save(ds, path)


def pixel_count_bomb(path: Path) -> Path:
    """A header declaring 20000 x 20000 x 500 frames over a tiny pixel buffer."""
    ds = make_dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 20000, 20000, 500
    return save(ds, path)


def j2k_size_bomb(path: Path) -> Path:
    """A 64x48 header over a JPEG 2000 codestream whose SIZ claims 60000 x 60000."""
    siz = struct.pack(">HHHIIIIIIIIH", 0xFF51, 41, 0, 60000, 60000, 0, 0, 60000, 60000, 0, 0, 1)
    siz += bytes([15, 1, 1])
    cod = bytes.fromhex("ff52000c00000001000504040000")
    frame = b"\xff\x4f" + siz + cod + b"\xff\xd9"
    return save(_encapsulated(make_dataset(), dcm_uid.JPEG2000Lossless, frame), path)


def nested_sequences(path: Path, depth: int = 2000) -> Path:
    """2,000 nested undefined-length sequences (pydicom recurses once per level)."""
    data = save(make_dataset(), path).read_bytes()
    open_ = (struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff" * 4
             + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = data.index(b"\xe0\x7f\x10\x00")  # before Pixel Data
    path.write_bytes(data[:at] + open_ * depth + close * depth + data[at:])
    return path


def _voi_lut(path: Path, descriptor: list[int]) -> Path:
    ds = make_dataset()
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = np.linspace(0, 4095, 4096).astype("<u2").tobytes()
    item["LUTData"].VR = "OW"
    ds.VOILUTSequence = Sequence([item])
    return save(ds, path)


def voi_lut_2000_bits(path: Path) -> Path:
    return _voi_lut(path, [4096, 0, 2000])


def voi_lut_two_values(path: Path) -> Path:
    return _voi_lut(path, [4096, 0])


def _slope(value: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        ds = make_dataset()
        ds.RescaleSlope, ds.RescaleIntercept = value, "0"
        return save(ds, path)
    make.__name__ = f"rescale_slope_{value}"
    return make


def truncated_native(path: Path) -> Path:
    data = save(make_dataset(), path).read_bytes()
    path.write_bytes(data[: len(data) - 1500])
    return path


def wrong_transfer_syntax(path: Path) -> Path:
    """Native pixels under an RLE Lossless transfer syntax UID (pydicom refuses to write that,
    so the UID is patched in the file meta: both UIDs are 20 bytes padded)."""
    data = save(make_dataset(), path).read_bytes()
    native, rle = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"
    assert data.count(native) == 1
    path.write_bytes(data.replace(native, rle))
    return path


def not_dicom(path: Path) -> Path:
    path.write_text("PatientName: DOE^JOHN\n")
    return path


def truncated_jpeg2000(path: Path) -> Path:
    return Path(truncated_j2k(path.parent, path.name))


HOSTILE: dict[str, Callable[[Path], Path]] = {
    "rle_panic.dcm": rle_panic,
    "deflate_bomb.dcm": deflate_bomb,
    "pixel_count_bomb.dcm": pixel_count_bomb,
    "j2k_size_bomb.dcm": j2k_size_bomb,
    "nested_sequences.dcm": nested_sequences,
    "voi_lut_2000_bits.dcm": voi_lut_2000_bits,
    "voi_lut_two_values.dcm": voi_lut_two_values,
    "slope_nan.dcm": _slope("NaN"),
    "slope_inf.dcm": _slope("inf"),
    "slope_1e308.dcm": _slope("1e308"),
    "truncated_native.dcm": truncated_native,
    "truncated_j2k.dcm": truncated_jpeg2000,
    "wrong_transfer_syntax.dcm": wrong_transfer_syntax,
    "not_dicom.dcm": not_dicom,
}


def hostile_set(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: make(folder / name) for name, make in HOSTILE.items()}


def good_set(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {f"{p}.dcm": save(make_dataset(p), folder / f"{p}.dcm")
            for p in ("holloway", "przybylski")}
