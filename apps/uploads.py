"""Uploaded files in the app: checked, decoded, de-identified, deleted (DESIGN.md, Trust).

An upload is hostile until proven otherwise. `read_upload` takes the path Gradio gives and:

1. checks the file size (``uploads.max_bytes``) before reading anything;
2. tells the kind from the file's first bytes, never from its name: PNG, JPEG, else DICOM
   (Part 10 or a bare dataset); anything else is refused;
3. checks the declared pixel count before decoding: PNG/JPEG from Pillow's header (Pillow's own
   ``Image.MAX_IMAGE_PIXELS`` guard stays on and its warning is an error here), DICOM from
   Rows x Columns x Frames x Samples and a JPEG 2000 codestream's own size
   (`biomed.imaging.dicom.guard`, through the workbench's reader);
4. de-identifies a DICOM in memory on arrival (`biomed.imaging.dicom.deid`, PS3.15 Basic
   Profile) with the app's own key (`app_deidentifier`: ``app.key``, never the dataset key of
   `biomed.imaging.dicom.keys.default_key_file`), decodes the de-identified dataset's pixels and
   returns what remains of its header for display; a PNG or JPEG keeps no metadata at all
   (EXIF and text chunks are never read);
5. deletes the uploaded file afterwards (``delete=True``), whatever happened.

Any failure, a decoder's panic included, becomes a `biomed.errors.InputError` whose one-line
message names the upload by its file name (never the server's temp path) and says why.

Two images come back: ``image``, what the models see (the file's own VOI window, as
`biomed predict` reads it), and ``base``, the full stored range that the window/level sliders
act on (`apply_window`), with the file's window expressed on it (``level``, ``width``, both in
[0, 1] units of the full range).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomed.errors import ConfigError, InputError
from biomed.imaging.core import pixels
from biomed.imaging.dicom.guard import Limits, check_pixel_count, decoder_errors

__all__ = ["DEFAULTS", "Upload", "app_deidentifier", "app_key_file", "apply_window",
           "header_rows", "read_upload", "sniff_kind", "upload_limits"]

# conf/app.yaml ``uploads:`` (every key optional; these are the defaults)
DEFAULTS: dict[str, Any] = {
    "max_bytes": None,  # null: the server's max_file_size (one limit), checked again here
    "max_pixels": 40_000_000,  # > any CR/DX detector (~18 MP), far below a decompression bomb
    "display_max": 1024,  # longer side of the images kept per session and shown
    # "session": the app's one key for this process, in memory (`apps.common.session_key`), so
    # uploads of two runs cannot be linked; "file" ($BIOMED_CACHE/app/app.key) or a path: a key
    # file of the app's own, created once (never the dataset key)
    "key_file": "session",
    "allow_burned_in": False,  # DICOM whose header says its pixels may identify: refused
    # seconds between reading an upload and deleting it: gradio keeps one file per content, so
    # a class uploading the same DICOM at once shares one path (0: at once)
    "delete_after_s": 60,
    # smaller or more elongated images are not radiographs (a 1x1 or 1x3000 PNG would still get
    # confident probabilities): refused
    "min_side": 16,
    "max_aspect": 4.0,
}
SESSION_KEY = "session"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_NAME_CHARS = 80  # an upload's name as shown in messages


@dataclass(frozen=True)
class Upload:
    """One decoded upload (images in the workbench convention, longer side <= display_max)."""

    name: str  # the file name as uploaded (for messages)
    kind: str  # "dicom" | "png" | "jpeg"
    image: np.ndarray  # what the models see: the file's VOI window (DICOM) or its pixels
    base: np.ndarray  # the full stored range, for window/level (== image for PNG/JPEG)
    level: float  # the file's window centre on ``base`` (0..1)
    width: float  # the file's window width on ``base`` (0..1]
    header: list[list[str]] = field(default_factory=list)  # [tag, attribute, value] rows
    notes: tuple[str, ...] = ()
    voi: str = ""  # how ``image`` was windowed


def _settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    section = (cfg or {}).get("uploads") or {}
    return {k: v if section.get(k) is None else section.get(k) for k, v in DEFAULTS.items()}


_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}  # as Gradio's FileSize


def parse_size(size: str | int) -> int:
    """Bytes of a size written as Gradio's ``max_file_size`` is (``20mb``, ``512kb``, an int)."""
    import re

    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?b)\s*", str(size).lower())
    if not m:
        raise ConfigError(f"max_file_size={size!r}: not a size like 20mb, 512kb or 1gb")
    return int(m.group(1)) * _UNITS[m.group(2)]


def upload_limits(cfg: Mapping[str, Any] | None = None) -> Limits:
    """The caps of ``uploads.max_bytes`` / ``uploads.max_pixels`` as the DICOM guard's `Limits`
    (the pixel cap never above Pillow's ``Image.MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    s = _settings(cfg)
    try:
        max_bytes = (int(s["max_bytes"]) if s["max_bytes"] is not None
                     else parse_size((cfg or {}).get("max_file_size") or "20mb"))
        max_pixels = int(s["max_pixels"])
    except (TypeError, ValueError):
        raise ConfigError("uploads.max_bytes and uploads.max_pixels must be integers") from None
    if max_bytes < 1 or max_pixels < 1:
        raise ConfigError(f"uploads.max_bytes ({max_bytes}) and uploads.max_pixels "
                          f"({max_pixels}) must be >= 1")
    if Image.MAX_IMAGE_PIXELS:
        max_pixels = min(max_pixels, int(Image.MAX_IMAGE_PIXELS))
    return Limits(max_file_bytes=max_bytes, max_pixels=max_pixels)


# ---------------------------------------------------------------------------------------------
# the app's de-identification key


def app_key_file(cfg: Mapping[str, Any] | None = None) -> Path:
    """The app's key file: ``uploads.key_file`` (a path), else (``file`` or ``session``)
    ``$BIOMED_CACHE/app/app.key``.

    Refused (`ConfigError`) when it is the workbench's dataset key (``deid.key``): whoever can
    upload a file to the app and read back its pseudonym and date shift must not learn those of
    a released dataset."""
    from biomed.imaging.dicom.keys import default_key_file
    from biomed.sources import cache_dir

    given = _settings(cfg)["key_file"]
    path = (Path(str(given)).expanduser() if str(given) not in (SESSION_KEY, "file")
            else cache_dir() / "app" / "app.key")
    if path.resolve() == default_key_file().resolve():
        raise ConfigError(f"uploads.key_file={path} is the workbench's dataset key; the app "
                          "de-identifies uploads with a key of its own (session, or a file of its own)")
    return path


def app_deidentifier(cfg: Mapping[str, Any] | None = None, session_key: bytes | None = None):
    """The `Deidentifier` of the app: its own key (``uploads.key_file=session``, the default:
    ``session_key``, else a new key in memory per process, `new_session_key`; ``file`` or a
    path: `app_key_file`, created once, owner-only), Basic
    Profile with shifted dates; burned-in images refused unless ``uploads.allow_burned_in``."""
    from biomed.imaging.dicom.deid import DeidConfig, Deidentifier
    from biomed.imaging.dicom.keys import default_key_file, load_or_create_key, new_session_key

    settings = _settings(cfg)
    config = DeidConfig(allow_burned_in=bool(settings["allow_burned_in"]))
    if str(settings["key_file"]) == SESSION_KEY:
        return Deidentifier(session_key or new_session_key(), config)
    path = app_key_file(cfg)
    key = load_or_create_key(path)
    dataset_key = default_key_file()
    if dataset_key.is_file() and dataset_key.read_text(errors="replace").strip() == key.hex():
        raise ConfigError(f"{path}: holds the same key as the dataset key {dataset_key}; "
                          "delete it so that the app makes a key of its own")
    return Deidentifier(key, config)


# ---------------------------------------------------------------------------------------------
# reading


def _display_name(path: Path, name: str | None) -> str:
    text = " ".join(str(name or path.name).split()) or "upload"
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS - 3] + "..."


def sniff_kind(path: str | Path, name: str | None = None) -> str:
    """"png", "jpeg" or "dicom" from the first bytes (a DICOM is anything else; its reader
    refuses what is not one). The name is not trusted: a JPEG named .dcm is a JPEG."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return "dicom"


def read_upload(path: str | Path, deid: Any, cfg: Mapping[str, Any] | None = None, *,
                name: str | None = None, delete: bool = True, builtin: bool = False) -> Upload:
    """Check, decode and (DICOM) de-identify one uploaded file; see the module docstring.

    ``deid``: the app's `Deidentifier` (`app_deidentifier`). ``delete``: remove the file after
    reading (an upload; never the built-in example). ``builtin``: a file the app ships (RG1),
    exempt from the byte cap (its pixel count is still checked). Raises `InputError` naming
    the upload.
    """
    path = Path(path)
    shown = _display_name(path, name)
    try:
        return _read(path, shown, deid, cfg, builtin)
    except InputError as e:
        raise InputError(shown, _scrub(e.reason, path, shown)) from None
    finally:
        if delete:
            delay = float(_settings(cfg)["delete_after_s"] or 0)
            if delay > 0:
                timer = threading.Timer(delay, _delete_upload, (path,))
                timer.daemon = True  # the private folder goes with the app anyway
                timer.start()
            else:
                _delete_upload(path)


def _read(path: Path, shown: str, deid: Any, cfg: Mapping[str, Any] | None,
          builtin: bool = False) -> Upload:
    limits = upload_limits(cfg)
    display_max = max(16, int(_settings(cfg)["display_max"]))
    if not path.is_file():
        raise InputError(shown, "the upload is missing (it may have expired: upload it again)")
    size = path.stat().st_size
    if size == 0:
        raise InputError(shown, "empty file (0 bytes)")
    if size > limits.max_file_bytes and not builtin:
        raise InputError(shown, f"file too large: {size / 2**20:.1f} MiB, over the app's upload "
                         f"limit of {limits.max_file_bytes / 2**20:.1f} MiB (max_file_size)")
    kind = sniff_kind(path)
    if kind == "dicom":
        return _read_dicom(path, shown, deid, limits, display_max, _settings(cfg))
    return _read_picture(path, shown, kind, limits, display_max, _settings(cfg))


def _read_picture(path: Path, shown: str, kind: str, limits: Limits, display_max: int,
                  settings: Mapping[str, Any]) -> Upload:
    """PNG/JPEG: Pillow's header checked against the caps, then decoded by the workbench."""
    from PIL import Image

    from biomed.imaging.data.read import read_image_file

    fmt = {"png": "PNG", "jpeg": "JPEG"}[kind]
    with decoder_errors(shown, "cannot read"):
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS: refused, not just warned
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[fmt]) as im:  # reads the header only
                (w, h), bands, mode = im.size, len(im.getbands()), im.mode
        check_pixel_count(shown, h, w, 1, bands, limits, where="the image header")
        check_shape(shown, h, w, settings)
        img = read_image_file(path, limits=limits)
    img = _fit(img, display_max)
    header = [["", "Format", fmt], ["", "Size", f"{w} x {h} pixels"], ["", "Mode", mode],
              ["", "Metadata", "none kept (EXIF and text chunks are not read)"]]
    return Upload(shown, kind, img, img, 0.5, 1.0, header, (), "the file's pixel values")


def _read_dicom(path: Path, shown: str, deid: Any, limits: Limits, display_max: int,
                settings: Mapping[str, Any]) -> Upload:
    """Parse under the caps, de-identify (in memory, the app's key), decode twice from the
    de-identified dataset: the file's VOI (for the models) and the full range (for the
    sliders). Pixels are taken as they are (``pixels="copy"``): nothing of the dataset is
    written or sent, only the decoded image and the remaining header fields are shown."""
    from biomed.imaging.dicom.read import ReadOptions, dataset_to_image, read_dataset

    with warnings.catch_warnings():  # pydicom's: the reason says what matters
        warnings.simplefilter("ignore")
        with decoder_errors(path, "cannot read"):
            try:
                ds = read_dataset(path, limits=limits)
            except InputError as e:
                if e.reason.startswith("not a DICOM file"):
                    raise InputError(shown, "not a DICOM, PNG or JPEG file") from None
                raise
            clean = deid.deidentify(ds, shown, pixels="copy", limits=limits)
            del ds  # nothing identifying is kept past this point
            opts = ReadOptions(voi="file", frame=0, color="convert", decode_size=display_max,
                               limits=limits)
            seen = dataset_to_image(clean, shown, opts)
            full = dataset_to_image(clean, shown, ReadOptions(
                voi="full", frame=0, color="convert", decode_size=display_max, limits=limits))
    check_shape(shown, *full.image.shape, settings)
    level, width = _file_window(clean, full.meta.voi, seen.meta.voi)
    return Upload(shown, "dicom", _fit(seen.image, display_max), _fit(full.image, display_max),
                  level, width, header_rows(clean), seen.notes, seen.meta.voi)


def check_shape(shown: str, h: int, w: int, settings: Mapping[str, Any]) -> None:
    """Refuse an image too small or too elongated to be a radiograph (``uploads.min_side``,
    ``uploads.max_aspect``)."""
    min_side, max_aspect = int(settings["min_side"]), float(settings["max_aspect"])
    if min(h, w) < min_side:
        raise InputError(shown, f"{w} x {h} pixels: too small to be a radiograph (the shorter "
                         f"side must be at least {min_side} pixels)")
    if max(h, w) > max_aspect * min(h, w):
        raise InputError(shown, f"{w} x {h} pixels: too elongated to be a radiograph (sides "
                         f"differ more than {max_aspect:g} times)")


def _fit(img: np.ndarray, display_max: int) -> np.ndarray:
    """The image with its longer side at most ``display_max`` (aspect kept)."""
    img = pixels.check_image(np.asarray(img, dtype=np.float32))
    h, w = img.shape
    scale = display_max / max(h, w)
    if scale >= 1:
        return img
    return pixels.resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def _scrub(reason: str, path: Path, shown: str) -> str:
    """The reason without the server's temp path (the upload is named by its file name)."""
    for text in sorted({str(path), str(path.resolve()), str(path.parent)}, key=len,
                       reverse=True):
        if len(text) > 1:
            reason = reason.replace(text, shown)
    return reason


def _delete_upload(path: Path) -> None:
    """Remove an uploaded file, only inside the temp folders uploads live in (never a file
    elsewhere), and the folder Gradio made for it inside ``$GRADIO_TEMP_DIR`` once empty."""
    gradio_dir = os.environ.get("GRADIO_TEMP_DIR")
    roots = [Path(gradio_dir).resolve()] if gradio_dir else [Path(tempfile.gettempdir()).resolve()]
    try:
        real = path.resolve()
        if not any(real.is_relative_to(r) for r in roots):
            return
        real.unlink(missing_ok=True)
        parent = real.parent
        if gradio_dir and parent != roots[-1] and parent.is_relative_to(roots[-1]) \
                and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass  # already gone, or the folder is in use: Gradio's delete_cache removes it later


# ---------------------------------------------------------------------------------------------
# window / level


def apply_window(base: np.ndarray, level: float, width: float) -> np.ndarray:
    """A linear window on a [0, 1] image: ``level`` its centre, ``width`` its width (both in
    units of the image's range); values below the window are black, above it white."""
    width = max(float(width), 1e-3)
    lo = float(level) - width / 2
    return np.clip((np.asarray(base, np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def _file_window(ds: Any, full_voi: str, file_voi: str) -> tuple[float, float]:
    """The file's first Window Center/Width on the full-range image (the sliders' start);
    (0.5, 1.0), the whole range, when the file has none or uses a LUT."""
    from biomed.imaging.dicom.fields import int_field
    from biomed.imaging.dicom.voi import stored_range

    if not file_voi.startswith("window") or "read as" in full_voi:
        return 0.5, 1.0
    if "ModalityLUTSequence" in ds:
        return 0.5, 1.0
    try:
        c, w = (float(_first(ds.get(k))) for k in ("WindowCenter", "WindowWidth"))
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 0.5, 1.0
    bits = int_field(ds, "BitsStored") or int_field(ds, "BitsAllocated") or 16
    lo, hi = stored_range(bits, int_field(ds, "PixelRepresentation") == 1)
    m_lo, m_hi = sorted((lo * slope + intercept, hi * slope + intercept))
    span = m_hi - m_lo
    if not all(math.isfinite(v) for v in (c, w, span)) or span <= 0 or w <= 0:
        return 0.5, 1.0
    level = (c - m_lo) / span
    if "inverted" in full_voi:  # the full-range image is inverted (MONOCHROME1)
        level = 1.0 - level
    return float(np.clip(level, 0.0, 1.0)), float(np.clip(w / span, 1e-3, 1.0))


def _first(value: Any) -> Any:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return value[0]
    return value


# ---------------------------------------------------------------------------------------------
# the header that remains


_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def header_rows(ds: Any, max_chars: int = 120) -> list[list[str]]:
    """[tag, attribute, value] rows of a (de-identified) dataset for display: binary values as
    their length, sequences as their items' fields, Pixel Data left out."""
    rows: list[list[str]] = []
    for elem in ds:
        if elem.tag == 0x7FE00010:
            continue
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        rows.append([tag, elem.name, _value_text(elem, max_chars)])
    return rows


def _value_text(elem: Any, max_chars: int) -> str:
    if elem.VR == "SQ":
        items = []
        for item in elem.value:
            parts = [f"{e.keyword or e.name}={_value_text(e, 40)}" for e in item
                     if e.VR not in _BINARY_VRS]
            items.append(", ".join(parts) or "(item)")
        text = "; ".join(items) or "(empty)"
    elif elem.VR in _BINARY_VRS:
        n = len(elem.value) if elem.value is not None else 0
        text = f"<{n} bytes>"
    else:
        value = elem.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v) for v in value)
        else:
            text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."
