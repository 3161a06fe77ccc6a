"""DICOM in: a file becomes the workbench's float image plus a metadata record.

(About 590 lines: parsing, checking and decoding one file are one path a reader follows top to
bottom; the parts that stand alone live beside it: `guard` (limits and the error policy),
`fields`, `jpeg2000`, `voi` (stored values -> [0, 1]).)

The grayscale pipeline is the one PS3.3 C.11 (the "grayscale standard display" chain) prescribes,
in this order:

1. stored values, scaled by Bits Stored (never by the container dtype: 15 bits in 16 means
   0..32767, and bits above Bits Stored are ignored, PS3.5 8.1.1);
2. the Modality LUT (Rescale Slope/Intercept, or the Modality LUT Sequence; PS3.3 C.11.1);
3. the VOI transform (PS3.3 C.11.2): the file's VOI LUT Sequence, else its first Window
   Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), else the full range;
   ``ReadOptions.voi`` chooses the file's transform, the full range, or the image's min..max;
4. inversion of MONOCHROME1 (and of MONOCHROME2 with Presentation LUT Shape INVERSE), so that the
   result is in the workbench's MONOCHROME2 sense: lungs dark, bone bright.

Because every step is a function of the stored value alone, steps 2-4 are folded into one lookup
table over the 2**BitsStored possible values, applied with a single gather: integer arithmetic
until the very end, and no float work per pixel beyond the lookup.

Choices a caller must know (each raises an `InputError` naming the file and the reason unless
the caller opts in; nothing returns a silently wrong image):

- **multi-frame**: a radiograph is one frame; an object with Number of Frames > 1 is refused
  unless ``ReadOptions.frame`` picks one (0-based). ``frame`` applies to multi-frame objects
  only: single-frame images are read as they are whatever its value, so that one setting reads
  a folder that mixes both. The record says how many frames there were.
- **pydicom's warnings** (about what it tolerates in a malformed file) are never printed: the
  ones that explain a failure become its one-line reason, the others the image's ``notes``.
- **colour** (RGB, YBR_*, PALETTE COLOR): refused unless ``ReadOptions.color == "convert"``,
  which takes ITU-R BT.601 luma; the record then says ``color_converted``.
- **JPEG 2000 at reduced resolution**: with ``ReadOptions.decode_size`` the decoder may stop at
  a coarser wavelet level that is still at least that big (N: the longer side >= N; (rows,
  columns): each side at least that), for a caller that will shrink the image anyway. The
  returned image is then smaller than Rows x Columns; the record keeps the file's Rows/Columns
  and gives the returned shape as ``image_shape``.
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError

from biomed.errors import InputError
from biomed.imaging.dicom.fields import Pixels as _Pixels
from biomed.imaging.dicom.fields import int_field as _int
from biomed.imaging.dicom.fields import text_field as _str
from biomed.imaging.dicom.guard import (
    DEFAULT_LIMITS,
    DEFLATED,
    Limits,
    check_deflated_size,
    check_file_size,
    check_pixel_count,
    decoder_errors,
)
from biomed.imaging.dicom.jpeg2000 import check_j2k_size, decode_j2k_reduced
from biomed.imaging.dicom.voi import VoiMode, gray_to_float

_UNDEFINED = 0xFFFFFFFF
_J2K_SYNTAXES = {dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
_GRAY = {"MONOCHROME1", "MONOCHROME2"}


@dataclass(frozen=True)
class ReadOptions:
    """How to turn stored pixels into the workbench image (see the module docstring)."""

    voi: VoiMode = "file"  # file's VOI LUT/window | full Bits Stored range | image min..max
    # multi-frame objects: None refuses them, k takes frame k (0-based); single-frame images
    # are read as they are whatever the value
    frame: int | None = None
    color: Literal["refuse", "convert"] = "refuse"
    # JPEG 2000 may decode at a lower resolution: int N keeps the longer side >= N (for a
    # caller that shrinks with the aspect kept); (rows, columns) keeps each side >= its value
    decode_size: int | tuple[int, int] | None = None
    # file size and pixel-count caps checked before decoding (`biomed.imaging.dicom.guard`)
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if self.voi not in ("file", "full", "minmax"):
            raise ValueError(f"voi must be 'file', 'full' or 'minmax', not {self.voi!r}")
        if self.color not in ("refuse", "convert"):
            raise ValueError(f"color must be 'refuse' or 'convert', not {self.color!r}")
        if self.frame is not None and self.frame < 0:
            raise ValueError(f"frame must be >= 0, not {self.frame}")
        sizes = (self.decode_size if isinstance(self.decode_size, tuple)
                 else () if self.decode_size is None else (self.decode_size,))
        if len(sizes) not in (0, 1, 2) or any(int(n) < 1 for n in sizes):
            raise ValueError(f"decode_size must be N >= 1 or (rows, columns), not "
                             f"{self.decode_size!r}")


@dataclass(frozen=True)
class DicomMeta:
    """What the workbench keeps about one DICOM image (technical fields and UIDs only).

    ``pixel_spacing`` is (row, column) in mm, or None when unknown: missing, ``[0,0]``, negative
    or unparsable spacing is unknown, never zero. It comes from Pixel Spacing, else from Imager
    Pixel Spacing (the detector plane, PS3.3 C.8.11.7), and ``spacing_source`` says which. UIDs
    are whatever the dataset holds: pass a de-identified dataset to get de-identified UIDs.
    """

    path: str
    modality: str | None
    view_position: str | None
    laterality: str | None
    body_part: str | None
    photometric: str | None
    samples_per_pixel: int | None
    bits_allocated: int | None
    bits_stored: int | None
    signed: bool
    rows: int | None
    columns: int | None
    frames: int
    pixel_spacing: tuple[float, float] | None
    spacing_source: str | None
    manufacturer: str | None
    transfer_syntax: str
    lossy: bool
    burned_in_annotation: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    sop_class: str | None
    voi: str = ""  # the VOI transform applied ("window 15000/30000 LINEAR", "full range", ...)
    frame: int | None = None  # the frame taken from a multi-frame object
    color_converted: bool = False
    image_shape: tuple[int, int] | None = None  # shape of the returned image

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON- and CSV-friendly dict (spacing as "row\\col" mm, "" when unknown)."""
        d = asdict(self)
        d["pixel_spacing"] = ("" if self.pixel_spacing is None
                              else f"{self.pixel_spacing[0]:g}\\{self.pixel_spacing[1]:g}")
        d["image_shape"] = "" if self.image_shape is None else "x".join(map(str, self.image_shape))
        return {k: ("" if v is None else v) for k, v in d.items()}


@dataclass(frozen=True)
class DicomImage:
    """A decoded image in the workbench convention and its metadata record."""

    image: np.ndarray  # 2-D float32 in [0, 1], lungs dark
    meta: DicomMeta
    notes: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------------------------
# reading the file


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False,
                 limits: Limits = DEFAULT_LIMITS) -> Dataset:
    """Parse a DICOM file, with one-line typed errors for files that are not usable DICOM.

    Accepts Part 10 files (preamble + ``DICM``) and, as PACS exports sometimes hold, bare
    datasets without the file meta header (their transfer syntax is then inferred). Raises
    `InputError` for a missing, empty, non-DICOM, truncated or malformed file, one over
    ``limits``, and for any failure of the parser (`guard.decoder_errors`).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise InputError(p, "empty file (0 bytes)")
    check_file_size(p, size, limits)
    with open(p, "rb") as f:
        head = f.read(132)
    part10 = len(head) == 132 and head[128:132] == b"DICM"
    bare = not part10 and _looks_like_bare_dataset(head)
    if not part10 and not bare:
        if size < 132 and not head.strip(b"\0"):
            raise InputError(p, f"truncated file: {size} bytes, ends inside the 128-byte "
                             "DICOM preamble")
        raise InputError(p, "not a DICOM file (no 'DICM' marker at byte 128 and no "
                         "recognisable dataset)")
    if part10:
        _check_deflate(p, limits)
    with decoder_errors(p, "truncated or corrupt header"):
        ds, caught = _dcmread(p, bare, stop_before_pixels)
    if bare:
        _check_bare(ds, p)
    if len(ds) == 0:
        _explain_empty_dataset(p, bare, stop_before_pixels)
    _check_truncation(ds, p, size, stop_before_pixels)
    if caught:  # kept for the notes of the decoded image (never printed to the console)
        ds._biomed_read_warnings = caught
    return ds


def _dcmread(p: Path, bare: bool, stop_before_pixels: bool) -> tuple[Dataset, tuple[str, ...]]:
    """``pydicom.dcmread`` with typed errors; its warnings are caught and returned, not shown.

    pydicom warns (UserWarning) about what it tolerates in a malformed file, e.g. "End of file
    reached before delimiter"; the caller turns that into a one-line reason or a note, so
    ``inspect`` and ``ingest`` print nothing else.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p, force=bare, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            raise InputError(p, "not a DICOM file (no 'DICM' marker at byte 128)") from None
        except (EOFError, struct.error, OSError, ValueError, KeyError, IndexError) as e:
            raise InputError(p, f"truncated or corrupt header ({_one_line(e)})") from None
    return ds, tuple(dict.fromkeys(_one_line(w.message) for w in caught))


def _check_deflate(p: Path, limits: Limits) -> None:
    """A Deflated Explicit VR dataset is inflated in a capped stream before pydicom inflates it."""
    with decoder_errors(p, "corrupt file meta header"):
        offset, syntax = _file_meta_end(p)
        if syntax == DEFLATED:
            check_deflated_size(p, offset, limits)


def _file_meta_end(p: Path) -> tuple[int, str]:
    """(offset of the dataset after the group 0002 file meta, its Transfer Syntax UID), read
    element by element (explicit VR little endian, PS3.10 7.1) without parsing the dataset."""
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
    syntax = ""
    with open(p, "rb") as f:
        f.seek(132)
        while len(head := f.read(8)) == 8:
            group, elem = struct.unpack("<HH", head[:4])
            if group != 0x0002:
                return f.tell() - 8, syntax
            vr = head[4:6]
            length = (struct.unpack("<I", f.read(4))[0] if vr in long_vrs
                      else struct.unpack("<H", head[6:8])[0])
            if elem == 0x0010:  # (0002,0010) Transfer Syntax UID
                syntax = f.read(length).decode("ascii", "replace").strip("\0 ")
            else:
                f.seek(length, 1)
        return f.tell(), syntax


def _explain_empty_dataset(p: Path, bare: bool, stop_before_pixels: bool) -> None:
    """Raise the reason for a dataset that pydicom read as empty.

    pydicom returns an empty dataset (with a warning) when the file ends inside an element of
    undefined length, which for an image is usually its encapsulated (compressed) Pixel Data:
    a JPEG 2000 file cut short. Reading again up to the pixels tells that case apart.
    """
    if not stop_before_pixels:
        try:
            header, _ = _dcmread(p, bare, stop_before_pixels=True)
        except InputError:
            header = Dataset()
        if len(header) and _has_encapsulated_pixel_data_tag(p):
            raise InputError(p, "truncated encapsulated Pixel Data: the file ends inside the "
                             "compressed pixel data, before its sequence delimiter (the header "
                             "is intact)")
    raise InputError(p, "truncated file: the file meta header is followed by no dataset")


def _has_encapsulated_pixel_data_tag(p: Path) -> bool:
    """Whether the file holds (7FE0,0010) OB/OW of undefined length (explicit VR LE)."""
    import mmap

    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return any(m.find(b"\xe0\x7f\x10\x00" + vr + b"\0\0\xff\xff\xff\xff") >= 0
                   for vr in (b"OB", b"OW"))


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset with no preamble starts with a group 0002 or 0008 tag, little endian."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and elem < 0x0100


def _check_bare(ds: Dataset, path: Path) -> None:
    if "Rows" not in ds and "SOPClassUID" not in ds:
        raise InputError(path, "not a DICOM file (no 'DICM' marker and no image attributes)")
    if not getattr(ds, "file_meta", None):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            dcm_uid.ImplicitVRLittleEndian if implicit else
            dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian)


def _check_truncation(ds: Dataset, path: Path, size: int, stop_before_pixels: bool) -> None:
    """pydicom stops quietly at end of file; a value shorter than its length means truncation."""
    last_end = 0
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED:
            last_end = 0  # cannot tell where an undefined-length element ends
            continue
        got = len(elem.value) if elem.value is not None else 0
        if elem.value is not None and got < elem.length:
            name = "Pixel Data" if tag == 0x7FE00010 else f"element {tag}"
            raise InputError(path, f"truncated file: {name} declares {elem.length} bytes, the "
                             f"file holds {got}")
        last_end = elem.value_tell + elem.length
    if not stop_before_pixels and last_end and 0 < size - last_end < 8:
        with open(path, "rb") as f:
            f.seek(last_end)
            tail = f.read()
        if tail.strip(b"\0"):  # zero padding is harmless; a partial tag is not
            raise InputError(path, f"truncated file: {size - last_end} stray bytes after the "
                             "last element (the file ends inside an element header)")


# ---------------------------------------------------------------------------------------------
# the metadata record


def metadata(ds: Dataset, path: str | Path = "<dataset>") -> DicomMeta:
    """The technical record of a dataset (no patient, staff or institution fields)."""
    ts = _transfer_syntax_uid(ds)
    spacing, source = _spacing(ds)
    lossy = str(ds.get("LossyImageCompression", "")).strip() == "01" or ts in (
        dcm_uid.JPEG2000, dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEGExtended12Bit,
        dcm_uid.JPEGLSNearLossless, dcm_uid.HTJ2K)
    return DicomMeta(
        path=str(path),
        modality=_str(ds, "Modality"),
        view_position=_str(ds, "ViewPosition"),
        laterality=_str(ds, "ImageLaterality") or _str(ds, "Laterality"),
        body_part=_str(ds, "BodyPartExamined"),
        photometric=_str(ds, "PhotometricInterpretation"),
        samples_per_pixel=_int(ds, "SamplesPerPixel"),
        bits_allocated=_int(ds, "BitsAllocated"),
        bits_stored=_int(ds, "BitsStored"),
        signed=_int(ds, "PixelRepresentation") == 1,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames") or 1,
        pixel_spacing=spacing,
        spacing_source=source,
        manufacturer=_str(ds, "Manufacturer"),
        transfer_syntax=_uid_name(ts),
        lossy=lossy,
        burned_in_annotation=_str(ds, "BurnedInAnnotation"),
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        sop_uid=_str(ds, "SOPInstanceUID"),
        sop_class=_uid_name(_str(ds, "SOPClassUID") or "") or None,
    )


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel Spacing, else Imager Pixel Spacing; [0,0], missing or invalid is unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            v = ds.get(keyword)
            vals = [float(x) for x in (v if isinstance(v, list | tuple |
                                                      pydicom.multival.MultiValue) else [v])]
        except (TypeError, ValueError):
            continue
        if len(vals) == 2 and all(math.isfinite(x) and x > 0 for x in vals):
            return (vals[0], vals[1]), keyword
    return None, None


def _transfer_syntax_uid(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else ""


def _uid_name(value: str) -> str:
    if not value:
        return ""
    entry = dcm_uid.UID_dictionary.get(value)
    return entry[0] if entry else value


# ---------------------------------------------------------------------------------------------
# pixels


def read_dicom(path: str | Path, options: ReadOptions | None = None) -> DicomImage:
    """Read a DICOM file into the workbench convention (2-D float32 in [0, 1], lungs dark)."""
    options = options or ReadOptions()
    ds = read_dataset(path, limits=options.limits)
    return dataset_to_image(ds, path, options)


def dataset_to_image(ds: Dataset, path: str | Path = "<dataset>",
                     options: ReadOptions | None = None) -> DicomImage:
    """Decode a parsed dataset's pixels through modality LUT, VOI and MONOCHROME1 inversion.

    Any failure of a decoder or of a malformed field becomes a one-line `InputError` naming
    ``path`` (`guard.decoder_errors`); so does an image that is not finite after the transform.
    """
    options = options or ReadOptions()
    with decoder_errors(path, "cannot decode"):
        result = _dataset_to_image(ds, path, options)
    if not np.isfinite(result.image).all():
        raise InputError(path, "the decoded image holds NaN or infinite values (check Rescale "
                         "Slope/Intercept and the LUTs)")
    return result


def _dataset_to_image(ds: Dataset, path: str | Path, options: ReadOptions) -> DicomImage:
    meta = metadata(ds, path)
    px = _pixel_description(ds, path, options.limits)
    frame = _choose_frame(px, path, options)
    notes: list[str] = []
    warned = [f"pydicom: {w}" for w in getattr(ds, "_biomed_read_warnings", ())]
    if px.photometric in _COLOUR or px.samples > 1:
        if options.color == "refuse":
            raise InputError(path, f"colour image ({px.photometric}, {px.samples} samples per "
                             "pixel) refused: grayscale required (convert it to luma with "
                             "color='convert' / --convert-color)")
        image = _colour_to_luma(ds, px, path, frame, warned)
        notes.append(f"converted from {px.photometric} to luma (ITU-R BT.601)")
        voi = "none (colour converted to luma)"
    else:
        stored = _decode_gray(ds, px, path, frame, options.decode_size, warned)
        image, voi = gray_to_float(ds, stored, px.bits_stored, px.signed, options.voi)
    if frame is not None and px.frames > 1:
        notes.append(f"frame {frame} of {px.frames}")
    notes += warned
    meta = replace(meta, voi=voi, frame=frame if px.frames > 1 else None,
                   color_converted=px.photometric in _COLOUR or px.samples > 1,
                   image_shape=(int(image.shape[0]), int(image.shape[1])))
    return DicomImage(image=image, meta=meta, notes=tuple(notes))


def _pixel_description(ds: Dataset, path: str | Path,
                       limits: Limits = DEFAULT_LIMITS) -> _Pixels:
    """The Image Pixel module, checked before any decoding (PS3.3 C.7.6.3)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputError(path, "float pixel data is not supported (a parametric map, not a "
                             "radiograph)")
        what = _uid_name(_str(ds, "SOPClassUID") or "") or "no SOP class"
        if "Rows" in ds:  # an image header that stops before its pixels
            what += "; the header describes an image, so the file may be truncated"
        raise InputError(path, f"no pixel data (no (7FE0,0010) element; {what})")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
               if _str(ds, k) is None]
    if missing:
        raise InputError(path, f"incomplete pixel description: missing {', '.join(missing)}")
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    alloc = _int(ds, "BitsAllocated") or 0
    stored = _int(ds, "BitsStored") or alloc
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    photometric = (_str(ds, "PhotometricInterpretation") or "").upper()
    if rows < 1 or cols < 1:
        raise InputError(path, f"invalid image size {rows}x{cols}")
    if alloc not in (1, 8, 16, 32) or not 1 <= stored <= alloc:
        raise InputError(path, f"invalid bit depth: Bits Allocated {alloc}, Bits Stored {stored}")
    if photometric not in _GRAY | _COLOUR:
        raise InputError(path, f"unsupported Photometric Interpretation {photometric!r}")
    check_pixel_count(path, rows, cols, frames, samples, limits)
    syntax = _transfer_syntax_uid(ds)
    _check_syntax(syntax, path)
    px = _Pixels(rows, cols, frames, samples, photometric, alloc, stored,
                 _int(ds, "PixelRepresentation") == 1, syntax)
    if not dcm_uid.UID(syntax).is_encapsulated:
        _check_native_length(ds, px, path)
    elif syntax in _J2K_SYNTAXES:
        check_j2k_size(ds, px, path, limits)
    return px


def _check_syntax(syntax: str, path: str | Path) -> None:
    """A known transfer syntax with an installed decoder, or a one-line reason naming it."""
    if not syntax:
        raise InputError(path, "no Transfer Syntax UID in the file meta header")
    entry = dcm_uid.UID_dictionary.get(syntax)
    if entry is None or entry[1] != "Transfer Syntax":
        raise InputError(path, f"unknown transfer syntax {syntax}")
    uid = dcm_uid.UID(syntax)
    if not uid.is_encapsulated:
        return
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(path, f"unsupported transfer syntax {uid.name} ({uid}): no decoder "
                         "exists for it") from None
    if not decoder.is_available:
        hint = "; ".join(decoder.missing_dependencies) or "no usable plugin"
        raise InputError(path, f"transfer syntax {uid.name} ({uid}) has no installed decoder "
                         f"({hint})")


def _check_native_length(ds: Dataset, px: _Pixels, path: str | Path) -> None:
    """Native pixel data must hold Rows x Columns x Samples x Frames x Bits Allocated."""
    samples_bytes = 2 if px.photometric == "YBR_FULL_422" else px.samples  # 4:2:2 subsampled
    n = px.rows * px.columns * px.frames
    need = math.ceil(n * samples_bytes / 8) if px.bits_allocated == 1 else \
        n * samples_bytes * px.bits_allocated // 8
    have = len(ds.PixelData)
    if have < need:
        raise InputError(path, f"pixel data is {have} bytes, shorter than the {need} the header "
                         f"says ({px.rows}x{px.columns}, {px.frames} frame(s), {px.samples} "
                         f"sample(s), {px.bits_allocated} bits allocated)")


def _choose_frame(px: _Pixels, path: str | Path, options: ReadOptions) -> int | None:
    if px.frames == 1:  # ``frame`` applies to multi-frame objects only (a mixed folder reads)
        return None
    if options.frame is None:
        raise InputError(path, f"multi-frame image ({px.frames} frames) refused: a radiograph "
                         "is one frame; choose one with frame=K / --frame K (0-based)")
    if options.frame >= px.frames:
        raise InputError(path, f"frame {options.frame} requested but the image has "
                         f"{px.frames} frames")
    return options.frame


def _decode(ds: Dataset, px: _Pixels, path: str | Path, frame: int | None,
            notes: list[str] | None = None) -> np.ndarray:
    from pydicom.pixels.decoders.base import get_decoder

    with warnings.catch_warnings(record=True) as caught:  # into the notes, not the console
        warnings.simplefilter("always")
        try:
            arr, _ = get_decoder(dcm_uid.UID(px.syntax)).as_array(ds, index=frame)
        except InputError:
            raise
        except Exception as e:  # every plugin failed: corrupt or unsupported codestream
            raise InputError(path, f"cannot decode {_uid_name(px.syntax)} pixel data: "
                             f"{_one_line(e)}") from None
    if notes is not None:
        notes += [f"pydicom: {w}" for w in dict.fromkeys(_one_line(c.message) for c in caught)]
    return arr


def _decode_gray(ds: Dataset, px: _Pixels, path: str | Path, frame: int | None,
                 decode_size: int | tuple[int, int] | None,
                 notes: list[str] | None = None) -> np.ndarray:
    arr = None
    if decode_size and px.syntax in _J2K_SYNTAXES and px.frames == 1:
        arr = decode_j2k_reduced(ds, px, decode_size)
    if arr is None:
        arr = _decode(ds, px, path, frame, notes)
    if arr.ndim != 2:
        raise InputError(path, f"decoded pixel data has shape {arr.shape}, expected one "
                         "grayscale frame")
    if arr.dtype.kind == "f":
        raise InputError(path, "decoded pixel data is floating point; integer expected")
    return arr


def _colour_to_luma(ds: Dataset, px: _Pixels, path: str | Path,
                    frame: int | None, notes: list[str] | None = None) -> np.ndarray:
    arr = _decode(ds, px, path, frame, notes)  # YBR_* arrive as RGB (pydicom converts unless raw)
    top = float(2**px.bits_stored - 1)
    if px.photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as e:
            raise InputError(path, f"cannot apply the palette colour LUT: {_one_line(e)}") \
                from None
        top = 65535.0 if arr.dtype == np.uint16 else 255.0
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(path, f"colour pixel data has shape {arr.shape}, expected rows x "
                         "columns x 3")
    luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return np.clip(luma / top, 0.0, 1.0).astype(np.float32)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
