"""`biomed dicom inspect|ingest`: look at DICOM files; de-identify and ingest a DICOM folder.

``ingest`` walks SRC_DIR recursively and, for every file, in a pool of processes (one per core):
parses it, de-identifies it (`biomed.imaging.dicom.deid`, before anything is written), decodes it
(`biomed.imaging.dicom.read`) and writes ``OUT_DIR/images/<id>.png`` (16-bit, the workbench
convention) or, with ``--format dicom``, the de-identified DICOM. Each written image gets a row in
``manifest.csv``; each skipped file a row in ``errors.csv`` (``source``, ``reason``).

- **Ids** are keyed hashes of the file's path relative to SRC_DIR: stable across reruns, unique,
  and free of the names PACS exports put in folder names. ``--hash-paths`` also replaces the
  ``source`` column by a keyed hash, so that no output holds a path.
- **The key** (UID remapping, pseudonyms, date shifts, hashes) is read from ``--key-file``,
  default ``$BIOMED_CACHE/deid.key``, created on first use. It is kept out of OUT_DIR on
  purpose: whoever holds it can link outputs back to their sources. Reusing it keeps mappings
  consistent across several ingested folders.
- **Checked first**: SRC_DIR, OUT_DIR (a folder, or a path where one can be created) and the
  key file (readable, or creatable) are checked before anything is written; a bad one is a
  one-line `InputError` naming the path, and no empty OUT_DIR is left behind.
- **Resumable**: a rerun into the same OUT_DIR skips files whose image is in the manifest and on
  disk, and retries the files that failed. Images are written to a temporary name and renamed,
  and rows are appended after the image exists, so an interrupted run leaves nothing half done.
  A rerun with different settings (size, format, VOI, dates, key...) is refused.
- **Speed**: processes, not threads (decoding holds the GIL); JPEG 2000 decodes only the wavelet
  levels the target size needs; stored values go through one lookup table; the resize reduces by
  an integer factor first (Pillow's ``reducing_gap``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from biomed.errors import ConfigError, InputError
from biomed.imaging.core.pixels import to_uint16
from biomed.imaging.dicom import deid as deid_mod
from biomed.imaging.dicom.read import ReadOptions, dataset_to_image, read_dataset
from biomed.outpaths import check_creatable

MANIFEST = "manifest.csv"
ERRORS = "errors.csv"
SETTINGS = "ingest.json"
IMAGES = "images"
PNG_COMPRESSION = 3  # zlib's fast strategy: within ~2% of level 6 on radiographs, much faster

MANIFEST_COLUMNS = (
    "id", "output", "source", "patient_id", "study_uid", "series_uid", "sop_uid", "modality",
    "view_position", "laterality", "body_part", "photometric", "bits_stored", "rows", "columns",
    "frames", "frame", "pixel_spacing", "spacing_source", "output_rows", "output_columns",
    "output_pixel_spacing", "manufacturer", "transfer_syntax", "lossy", "voi", "color_converted",
    "burned_in_annotation", "study_date", "patient_sex", "patient_age",
)
ERROR_COLUMNS = ("source", "reason")


@dataclass(frozen=True)
class IngestSettings:
    """What decides the content of an ingested folder (a rerun must use the same)."""

    format: str = "png"  # png | dicom
    size: int | None = None  # png: longer side in pixels (aspect kept, never enlarged)
    voi: str = "file"
    frame: int | None = None
    convert_color: bool = False
    dates: str = "shift"
    keep_patient_characteristics: bool = False
    hash_paths: bool = False

    def __post_init__(self) -> None:
        if self.format not in ("png", "dicom"):
            raise ConfigError(f"--format must be png or dicom, not {self.format!r}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"--size must be a positive number of pixels, not {self.size}")
        if self.size is not None and self.format == "dicom":
            raise ConfigError("--size applies to --format png; de-identified DICOM keeps the "
                              "original pixels")
        ReadOptions(voi=self.voi, frame=self.frame)  # validates
        deid_mod.DeidConfig(dates=self.dates)  # validates


@dataclass(frozen=True)
class IngestSummary:
    """Counts of one ingest run."""

    written: int
    already_done: int
    skipped: int
    burned_in: int
    seconds: float
    out_dir: str

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        burned = f", {self.burned_in} for burned-in annotation" if self.burned_in else ""
        why = f" (reasons in {ERRORS})" if self.skipped else ""
        return (f"ingest: {self.written} written, {self.already_done} already done, "
                f"{self.skipped} skipped{burned}{why} in {self.seconds:.1f} s "
                f"({rate:.1f} images/s) -> {self.out_dir}")


# ---------------------------------------------------------------------------------------------
# the work on one file (runs in the worker processes)

_WORKER: dict[str, Any] = {}


def _init_worker(settings: IngestSettings, key: bytes, allow_burned_in: bool,
                 out_dir: str) -> None:
    config = deid_mod.DeidConfig(dates=settings.dates,
                                 keep_patient_characteristics=settings.keep_patient_characteristics,
                                 allow_burned_in=allow_burned_in)
    _WORKER.update(settings=settings, deid=deid_mod.Deidentifier(key, config),
                   out=Path(out_dir))


def _process(task: tuple[str, str, str, str]) -> dict[str, Any]:
    """Ingest one file; returns a manifest row, or an error row (never raises)."""
    path, rel, source, image_id = task
    try:
        with warnings.catch_warnings():  # pydicom's: the reason says what matters, not stderr
            warnings.simplefilter("ignore")
            return {"ok": True, "row": _ingest_one(Path(path), source, image_id)}
    except deid_mod.BurnedInAnnotation as e:
        return {"ok": False, "burned_in": True, "row": {"source": source,
                                                        "reason": _clean(e.reason, path, rel)}}
    except InputError as e:
        return {"ok": False, "row": {"source": source, "reason": _clean(e.reason, path, rel)}}
    except Exception as e:  # one bad file must not stop a batch: record it, go on
        reason = f"unexpected error: {type(e).__name__}: {' '.join(str(e).split())}"
        return {"ok": False, "row": {"source": source, "reason": _clean(reason, path, rel)[:500]}}


def _clean(reason: str, path: str, rel: str) -> str:
    """A reason without the file's path (paths may hold patient names)."""
    return reason.replace(path, "<file>").replace(rel, "<file>")


def _ingest_one(path: Path, source: str, image_id: str) -> dict[str, Any]:
    settings: IngestSettings = _WORKER["settings"]
    deid: deid_mod.Deidentifier = _WORKER["deid"]
    out: Path = _WORKER["out"]
    ds = read_dataset(path)
    clean = deid.deidentify(ds, path)  # before anything is written
    options = ReadOptions(voi=settings.voi, frame=settings.frame,
                          color="convert" if settings.convert_color else "refuse",
                          decode_size=settings.size if settings.format == "png" else None)
    decoded = dataset_to_image(clean, path, options)  # also validates the pixels for dicom
    meta = decoded.meta
    if settings.format == "png":
        img = shrink(decoded.image, settings.size)
        rel_out = f"{IMAGES}/{image_id}.png"
        _write_png(out / rel_out, img, {
            "biomed:origin": "DICOM, de-identified (PS3.15 Annex E Basic Profile)",
            "biomed:id": image_id, "biomed:modality": meta.modality or "",
            "biomed:view": meta.view_position or "", "biomed:voi": meta.voi})
    else:
        img = decoded.image
        rel_out = f"{IMAGES}/{image_id}.dcm"
        tmp = out / IMAGES / f".{image_id}.dcm.tmp"
        clean.save_as(tmp, enforce_file_format=True)
        tmp.replace(out / rel_out)
    rows, cols = meta.rows or img.shape[0], meta.columns or img.shape[1]
    out_spacing = ""
    if meta.pixel_spacing is not None:  # spacing grows as the image shrinks
        out_spacing = (f"{meta.pixel_spacing[0] * rows / img.shape[0]:.6g}\\"
                       f"{meta.pixel_spacing[1] * cols / img.shape[1]:.6g}")
    record = meta.to_dict()
    row = {k: record.get(k, "") for k in MANIFEST_COLUMNS}
    row.update(id=image_id, output=rel_out, source=source,
               patient_id=str(clean.get("PatientID", "")),
               output_rows=img.shape[0], output_columns=img.shape[1],
               output_pixel_spacing=out_spacing, study_date=str(clean.get("StudyDate", "")),
               patient_sex=str(clean.get("PatientSex", "")),
               patient_age=str(clean.get("PatientAge", "")))
    return row


def shrink(img: np.ndarray, size: int | None) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect kept; never enlarged; None: unchanged).

    Lanczos after an integer box reduction (Pillow's ``reducing_gap=3``: indistinguishable from
    a full Lanczos at a fraction of the cost for large factors).
    """
    h, w = img.shape
    if size is None or max(h, w) <= size:
        return img
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        new, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _write_png(path: Path, img: np.ndarray, text: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(to_uint16(img)).save(tmp, format="PNG", pnginfo=info,
                                         compress_level=PNG_COMPRESSION)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# the batch


def find_files(src: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file under ``src``, sorted; hidden files (``.DS_Store``...) are ignored."""
    files = []
    for root, dirs, names in os.walk(src):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (rootp / d).resolve() != exclude))
        files += [rootp / n for n in sorted(names) if not n.startswith(".")
                  and (rootp / n).is_file()]
    return files


def default_key_file() -> Path:
    from biomed.sources import cache_dir

    return cache_dir() / "deid.key"


def ingest(src_dir: str | Path, out_dir: str | Path, settings: IngestSettings | None = None, *,
           workers: int | None = None, allow_burned_in: bool = False,
           key_file: str | Path | None = None, progress: bool | None = None) -> IngestSummary:
    """De-identify and ingest every DICOM file under ``src_dir`` into ``out_dir``."""
    settings = settings or IngestSettings()
    t0 = time.perf_counter()
    src, out = Path(src_dir), Path(out_dir)
    key_path = Path(key_file) if key_file else default_key_file()
    # everything that can be checked is checked before anything is created
    if not src.is_dir():
        raise InputError(src, "not a folder" if src.exists() else "folder not found")
    _check_out_dir(out)
    deid_mod.check_key_file(key_path)
    created = _make_out_dir(out)
    try:
        key = deid_mod.load_or_create_key(key_path)
        hasher = deid_mod.Deidentifier(key)
        _check_settings(out, settings, hasher.hash_text("key-fingerprint", 16))
    except BaseException:
        for folder in reversed(created):  # leave no empty OUT_DIR behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for tmp in (out / IMAGES).glob(".*.tmp"):  # left by an interrupted run
        tmp.unlink()

    done = _load_done(out)
    tasks, already = [], 0
    for path in find_files(src, exclude=out.resolve()):
        rel = path.relative_to(src).as_posix()
        image_id = hasher.hash_text("id:" + rel)
        if image_id in done:
            already += 1
            continue
        source = hasher.hash_text("path:" + rel) if settings.hash_paths else rel
        tasks.append((str(path), rel, source, image_id))

    written = skipped = burned = 0
    with _appender(out / MANIFEST, MANIFEST_COLUMNS) as manifest, \
            _appender(out / ERRORS, ERROR_COLUMNS, fresh=True) as errors:
        for result in _run(tasks, settings, key, allow_burned_in, out, workers, progress):
            if result["ok"]:
                manifest.writerow(result["row"])
                written += 1
            else:
                errors.writerow(result["row"])
                skipped += 1
                burned += bool(result.get("burned_in"))
    return IngestSummary(written, already, skipped, burned, time.perf_counter() - t0, str(out))


def _check_out_dir(out: Path) -> None:
    """OUT_DIR must be a writable folder, or a path where one can be created (nothing is
    created here)."""
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "OUT_DIR exists and is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(out, "OUT_DIR is not writable")
        return
    check_creatable(out, "OUT_DIR")


def _make_out_dir(out: Path) -> list[Path]:
    """Create OUT_DIR and OUT_DIR/images; returns the folders created (outermost first)."""
    missing, d = [], out / IMAGES
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError as e:
        for c in reversed(created):
            with contextlib.suppress(OSError):
                c.rmdir()
        raise InputError(out, f"cannot create OUT_DIR in {d.parent} ({e.strerror or e})") from None
    return created


def _run(tasks: Sequence[tuple[str, str, str, str]], settings: IngestSettings, key: bytes,
         allow_burned_in: bool, out: Path, workers: int | None,
         progress: bool | None) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    workers = max(1, workers or len(os.sched_getaffinity(0)))
    initargs = (settings, key, allow_burned_in, str(out))
    bar = tqdm(total=len(tasks), unit="file", desc="ingest", file=sys.stderr,
               disable=None if progress is None else not progress)
    try:
        if workers == 1 or len(tasks) <= 1:
            _init_worker(*initargs)
            for task in tasks:
                yield _process(task)
                bar.update()
            return
        methods = multiprocessing.get_all_start_methods()
        # forkserver: no fork of a process that may hold threads (torch, tqdm); cheap per worker
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker,
                      initargs=initargs) as pool:
            for result in pool.imap_unordered(_process, tasks, chunksize=1):
                yield result
                bar.update()
    finally:
        bar.close()


class _appender:
    """A CSV file opened for appending rows (header written when new), flushed per row."""

    def __init__(self, path: Path, columns: Sequence[str], fresh: bool = False):
        self.path, self.columns, self.fresh = path, list(columns), fresh

    def __enter__(self) -> _appender:
        new = self.fresh or not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "w" if new else "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self.w.writeheader()
            self.f.flush()
        return self

    def writerow(self, row: dict[str, Any]) -> None:
        self.w.writerow(row)
        self.f.flush()

    def __exit__(self, *exc) -> None:
        self.f.close()


def _load_done(out: Path) -> set[str]:
    """Ids already ingested: in the manifest and on disk (rows whose file is gone are dropped)."""
    path = out / MANIFEST
    if not path.exists():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and list(reader.fieldnames) != list(MANIFEST_COLUMNS):
            raise InputError(path, "manifest columns differ from this version's; ingest into a "
                             "new folder")
        rows = list(reader)
    keep = [r for r in rows if r.get("output") and (out / r["output"]).is_file()]
    if len(keep) != len(rows):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
            w.writeheader()
            w.writerows(keep)
        tmp.replace(path)
    return {r["id"] for r in keep}


def _check_settings(out: Path, settings: IngestSettings, key_id: str) -> None:
    path = out / SETTINGS
    wanted = {**asdict(settings), "key_id": key_id}
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except ValueError:
            raise InputError(path, "unreadable ingest settings (not JSON)") from None
        diff = [f"{k} {have.get(k)!r} (now {v!r})" for k, v in wanted.items() if have.get(k) != v]
        if diff:
            raise ConfigError(f"{out} was ingested with other settings: {'; '.join(diff)}; "
                              "ingest into a new folder or use the same settings and key")
        return
    path.write_text(json.dumps(wanted, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# inspect


def inspect_files(paths: Sequence[str | Path], options: ReadOptions | None = None,
                  header_only: bool = False) -> list[dict[str, Any]]:
    """One record per file: ``ok``, ``error`` (the reason) and the technical metadata."""
    from biomed.imaging.dicom.read import metadata

    records = []
    for path in paths:
        rec: dict[str, Any] = {"path": str(path), "ok": True, "error": ""}
        try:
            with warnings.catch_warnings():  # pydicom's: one line per file, nothing else
                warnings.simplefilter("ignore")
                ds = read_dataset(path, stop_before_pixels=header_only)
                meta = metadata(ds, path) if header_only else dataset_to_image(ds, path,
                                                                              options).meta
            rec.update({k: v for k, v in meta.to_dict().items()
                        if k not in ("path", "study_uid", "series_uid", "sop_uid")})
        except InputError as e:
            rec.update(ok=False, error=e.reason)
        records.append(rec)
    return records


def _inspect_line(rec: dict[str, Any]) -> str:
    if not rec["ok"]:
        return f"{rec['path']}: error: {rec['error']}"
    parts = [rec["modality"] or "?", rec["view_position"],
             f"{rec['rows']}x{rec['columns']}", rec["photometric"],
             f"{rec['bits_stored']}-bit{' signed' if rec['signed'] else ''}",
             rec["transfer_syntax"],
             f"spacing {rec['pixel_spacing']} mm" if rec["pixel_spacing"] else "spacing unknown",
             f"{rec['frames']} frames" if rec["frames"] != 1 else "", rec.get("voi", "")]
    return f"{rec['path']}: ok " + ", ".join(p for p in parts if p)


def _expand(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += find_files(p) if p.is_dir() else [p]
    return files


# ---------------------------------------------------------------------------------------------
# the command


def dicom_main(argv: list[str]) -> int:
    """`biomed dicom inspect FILE... | ingest SRC_DIR OUT_DIR`."""
    parser = argparse.ArgumentParser(
        prog="biomed dicom", description="Inspect DICOM files; de-identify (PS3.15 Annex E Basic "
        "Profile) and ingest a DICOM folder into the workbench's image convention.")
    sub = parser.add_subparsers(dest="action", required=True)

    def read_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--voi", choices=("file", "full", "minmax"), default="file",
                       help="intensity window: the file's VOI LUT/window (default; full range "
                       "when it has none), the full Bits Stored range, or the image's min..max")
        p.add_argument("--frame", type=int, default=None, metavar="K",
                       help="take frame K (0-based) of multi-frame images (default: refuse "
                       "them); single-frame images are read as they are, so a folder that "
                       "mixes both needs no other setting")
        p.add_argument("--convert-color", action="store_true",
                       help="convert colour images to luma (default: refuse them)")

    p_in = sub.add_parser("inspect", help="one line per file: ok with shape, photometric and "
                          "bits, or the error; exit status 1 if any failed")
    p_in.add_argument("files", nargs="+", metavar="FILE", help="files or folders (recursive)")
    p_in.add_argument("--json", action="store_true", help="print a JSON list of records")
    p_in.add_argument("--header-only", action="store_true",
                      help="do not decode the pixels (faster; pixel errors go unnoticed)")
    read_flags(p_in)

    p_ing = sub.add_parser("ingest", help="de-identify every DICOM file under SRC_DIR into "
                           "OUT_DIR (images/, manifest.csv, errors.csv); resumable")
    p_ing.add_argument("src_dir", metavar="SRC_DIR")
    p_ing.add_argument("out_dir", metavar="OUT_DIR")
    p_ing.add_argument("--format", choices=("png", "dicom"), default="png",
                       help="16-bit PNG in the workbench convention (default) or de-identified "
                       "DICOM with the original pixels")
    p_ing.add_argument("--size", type=int, default=None, metavar="N",
                       help="PNG: shrink so the longer side is N pixels (aspect kept)")
    p_ing.add_argument("--hash-paths", action="store_true",
                       help="write a keyed hash instead of the source path (folder names of "
                       "PACS exports often hold patient names)")
    p_ing.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes (default: all cores)")
    p_ing.add_argument("--allow-burned-in", action="store_true",
                       help="also ingest images whose Burned In Annotation is YES (their pixels "
                       "may show names; they are kept out by default)")
    p_ing.add_argument("--dates", choices=("shift", "remove"), default="shift",
                       help="shift each patient's dates by a keyed offset (default, PS3.15 "
                       "option 113107) or remove them (Basic Profile)")
    p_ing.add_argument("--keep-patient-characteristics", action="store_true",
                       help="keep sex, age, size, weight (PS3.15 option 113108)")
    p_ing.add_argument("--key-file", default=None, metavar="FILE",
                       help="secret key for UID remapping, pseudonyms, date shifts and hashes "
                       "(default $BIOMED_CACHE/deid.key, created on first use; keep it private)")
    p_ing.add_argument("--no-progress", action="store_true", help="no progress bar")
    read_flags(p_ing)
    args = parser.parse_args(argv)

    try:
        options = ReadOptions(voi=args.voi, frame=args.frame,
                              color="convert" if args.convert_color else "refuse")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.action == "inspect":
        files = _expand(args.files)
        if not files:  # only folders were given, and they hold no (visible) file
            print(f"error: no files to inspect in {', '.join(args.files)} (empty folder; "
                  "hidden files are ignored)", file=sys.stderr)
            return 1
        records = inspect_files(files, options, header_only=args.header_only)
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            for rec in records:
                print(_inspect_line(rec))
        return 1 if any(not r["ok"] for r in records) else 0

    try:
        settings = IngestSettings(format=args.format, size=args.size, voi=args.voi,
                                  frame=args.frame, convert_color=args.convert_color,
                                  dates=args.dates,
                                  keep_patient_characteristics=args.keep_patient_characteristics,
                                  hash_paths=args.hash_paths)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {args.workers}")
    summary = ingest(args.src_dir, args.out_dir, settings, workers=args.workers,
                     allow_burned_in=args.allow_burned_in, key_file=args.key_file,
                     progress=False if args.no_progress else None)
    print(summary.line())
    return 0


__all__ = ["IngestSettings", "IngestSummary", "dicom_main", "find_files", "ingest",
           "inspect_files", "shrink"]
