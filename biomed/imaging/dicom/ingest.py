"""`biomed dicom inspect|ingest`: look at DICOM files; de-identify and ingest a DICOM folder.

(About 520 lines, most of it the command line and the settings a rerun must match; the executor,
the output folder, the walk and `inspect` are their own modules.)

``ingest`` walks SRC_DIR recursively and, for every file, in worker processes (one per core;
`biomed.imaging.dicom.batch`): parses it under the size limits (`biomed.imaging.dicom.guard`),
de-identifies it (`biomed.imaging.dicom.deid`, before anything is written), decodes it
(`biomed.imaging.dicom.read`), checks the image (2-D, finite, in [0, 1]) and writes
``OUT_DIR/images/<id>.png`` (16-bit, the workbench convention) or, with ``--format dicom``, the
de-identified DICOM. Each written image gets a row in ``manifest.csv``; each refused or failed
file a row in ``errors.csv`` (``id``, ``source``, one-line ``reason``). The files of OUT_DIR are
described in `biomed.imaging.dicom.outdir`.

- **One bad file never stops the batch**: every failure of a parser or decoder, a Rust panic
  included, is that file's error; a file that kills its worker process (a segfault, the
  out-of-memory killer) is found by its started mark, recorded as "the decoder crashed the
  worker process" and the pool is restarted.
- **Ids** are keyed hashes of the file's path relative to SRC_DIR: stable across reruns, unique,
  and free of the names PACS exports put in folder names. The ``source`` column is a keyed hash
  too, unless ``--plain-paths`` asks for the path under SRC_DIR; reasons never hold the path.
  Symbolic links are followed only while they stay inside SRC_DIR.
- **The key** (UID remapping, pseudonyms, date shifts, hashes) is read from ``--key-file``,
  default ``$BIOMED_CACHE/deid.key``, created on first use. It is kept out of OUT_DIR on
  purpose: whoever holds it can link outputs back to their sources. Reusing it keeps mappings
  consistent across several ingested folders.
- **Checked first**: SRC_DIR, OUT_DIR (a folder, or a path where one can be created) and the
  key file (readable, or creatable) are checked before anything is written; a bad one is a
  one-line `InputError` naming the path, and no empty OUT_DIR is left behind.
- **Resumable, never twice**: a rerun into the same OUT_DIR skips files whose image is in the
  manifest and on disk, and files recorded in ``errors.csv`` (``--retry-failed`` tries those
  again). Images are written to a temporary name and renamed, rows are appended after the image
  exists, and a torn last line is cut on load, so an interrupted run leaves nothing half done.
  A rerun with different settings (size, format, VOI, dates, burned-in policy, key...) is
  refused, and so is a second ingest into a folder that one is still writing.
- **Speed**: processes, not threads (decoding holds the GIL); JPEG 2000 decodes only the wavelet
  levels the target size needs; stored values go through one lookup table; the resize reduces by
  an integer factor first (Pillow's ``reducing_gap``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from biomed.errors import ConfigError, InputError
from biomed.imaging.core.pixels import check_image, to_uint16
from biomed.imaging.dicom import deid as deid_mod
from biomed.imaging.dicom.batch import StartedMarks, Task, cut_torn_tail, run_tasks
from biomed.imaging.dicom.guard import DEFAULT_LIMITS, Limits, decoder_errors
from biomed.imaging.dicom.outdir import (
    ERROR_COLUMNS,
    ERRORS,
    IMAGES,
    LOCK,
    MANIFEST,
    MANIFEST_COLUMNS,
    STARTED,
    Appender,
    check_settings,
    load_done,
    load_failed,
    out_dir_lock,
)
from biomed.imaging.dicom.read import ReadOptions, dataset_to_image, read_dataset
from biomed.imaging.dicom.walk import find_files
from biomed.outpaths import check_creatable

PNG_COMPRESSION = 3  # zlib's fast strategy: within ~2% of level 6 on radiographs, much faster


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
    hash_paths: bool = True  # the `source` column: a keyed hash (True) or the path under SRC_DIR

    def __post_init__(self) -> None:
        if self.format not in ("png", "dicom"):
            raise ConfigError(f"--format must be png or dicom, not {self.format!r}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"--size must be a positive number of pixels, not {self.size}")
        if self.size is not None and self.format == "dicom":
            raise ConfigError("--size applies to --format png; de-identified DICOM keeps the "
                              "original image size")
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
    failed_before: int = 0  # recorded in errors.csv by an earlier run, not tried again
    crashed: int = 0  # of ``skipped``: files that killed their worker process

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        burned = f", {self.burned_in} for burned-in annotation" if self.burned_in else ""
        crashed = f", {self.crashed} crashed the decoder" if self.crashed else ""
        why = f" (reasons in {ERRORS})" if self.skipped else ""
        before = (f"; {self.failed_before} failed in an earlier run (see {ERRORS}; "
                  "--retry-failed tries them again)") if self.failed_before else ""
        return (f"ingest: {self.written} written, {self.already_done} already done, "
                f"{self.skipped} skipped{burned}{crashed}{why}{before} in {self.seconds:.1f} s "
                f"({rate:.1f} images/s) -> {self.out_dir}")


# ---------------------------------------------------------------------------------------------
# the work on one file (runs in the worker processes)

_WORKER: dict[str, Any] = {}


def _init_worker(settings: IngestSettings, key: bytes, allow_burned_in: bool,
                 out_dir: str, limits: Limits = DEFAULT_LIMITS) -> None:
    config = deid_mod.DeidConfig(dates=settings.dates,
                                 keep_patient_characteristics=settings.keep_patient_characteristics,
                                 allow_burned_in=allow_burned_in)
    _WORKER.update(settings=settings, deid=deid_mod.Deidentifier(key, config),
                   out=Path(out_dir), limits=limits)


def _process(task: tuple[str, str, str, str]) -> dict[str, Any]:
    """Ingest one file; returns a manifest row, an error row, or a fatal output-side error
    (never raises but for Ctrl-C and exit)."""
    path, rel, source, image_id = task
    base = {"id": image_id, "source": source}
    try:
        with warnings.catch_warnings():  # pydicom's: the reason says what matters, not stderr
            warnings.simplefilter("ignore")
            with decoder_errors(path, "cannot ingest"):
                clean, decoded, img = _decode_one(Path(path))
                try:
                    return {"ok": True, "row": _write_one(clean, decoded, img, source, image_id)}
                except OSError as e:  # OUT_DIR's problem (disk full...), not the file's
                    return {"ok": False, "fatal": f"cannot write into OUT_DIR "
                                                  f"({e.strerror or type(e).__name__})"}
    except deid_mod.BurnedInAnnotation as e:
        return {"ok": False, "burned_in": True,
                "row": {**base, "reason": clean_reason(e.reason, path, rel)}}
    except InputError as e:
        return {"ok": False, "row": {**base, "reason": clean_reason(e.reason, path, rel)}}


def clean_reason(reason: str, path: str, rel: str) -> str:
    """A one-line reason without the file's path (paths may hold patient names). Names under
    5 characters (``1``, ``IM1``) are left: they name no one, and would hit ordinary words."""
    for text in sorted({path, os.path.realpath(path), rel, Path(path).name}, key=len,
                       reverse=True):
        if len(text) >= 5:
            reason = reason.replace(text, "<file>")
    reason = " ".join(reason.split())
    return reason if len(reason) <= 500 else reason[:497] + "..."


def _decode_one(path: Path) -> tuple[Any, Any, np.ndarray]:
    """(de-identified dataset, decoded image, image to write), checked before anything is
    written: a NaN, out-of-range or non-2-D image is an `InputError`, never a file."""
    settings: IngestSettings = _WORKER["settings"]
    deid: deid_mod.Deidentifier = _WORKER["deid"]
    limits: Limits = _WORKER["limits"]
    ds = read_dataset(path, limits=limits)
    # before anything is written; PNG writes only the decoded image, so the Pixel Data bytes
    # need no re-encoding there (and JPEG 2000 may then decode at a reduced resolution)
    clean = deid.deidentify(ds, path, pixels="copy" if settings.format == "png" else "reencode",
                            limits=limits)
    options = ReadOptions(voi=settings.voi, frame=settings.frame,
                          color="convert" if settings.convert_color else "refuse",
                          decode_size=settings.size if settings.format == "png" else None,
                          limits=limits)
    decoded = dataset_to_image(clean, path, options)  # also validates the pixels for dicom
    img = check_image(np.asarray(decoded.image), str(path))
    if settings.format == "png":
        img = check_image(shrink(img, settings.size), str(path))
    return clean, decoded, img


def _write_one(clean: Any, decoded: Any, img: np.ndarray, source: str,
               image_id: str) -> dict[str, Any]:
    settings: IngestSettings = _WORKER["settings"]
    out: Path = _WORKER["out"]
    meta = decoded.meta
    if settings.format == "png":
        rel_out = f"{IMAGES}/{image_id}.png"
        _write_png(out / rel_out, img, {
            "biomed:origin": "DICOM, de-identified (PS3.15 Annex E Basic Profile)",
            "biomed:id": image_id, "biomed:modality": meta.modality or "",
            "biomed:view": meta.view_position or "", "biomed:voi": meta.voi})
    else:
        rel_out = f"{IMAGES}/{image_id}.dcm"
        _write_dicom(clean, decoded, out / rel_out)
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


def _write_dicom(clean: Any, decoded: Any, path: Path) -> None:
    """The de-identified dataset as a DICOM file (temporary name, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    clean.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)


default_key_file = deid_mod.default_key_file  # $BIOMED_CACHE/deid.key (`keys.py`)


# ---------------------------------------------------------------------------------------------
# the batch


def ingest(src_dir: str | Path, out_dir: str | Path, settings: IngestSettings | None = None, *,
           workers: int | None = None, allow_burned_in: bool = False,
           key_file: str | Path | None = None, progress: bool | None = None,
           limits: Limits = DEFAULT_LIMITS, retry_failed: bool = False) -> IngestSummary:
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
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(out_dir_lock(out))
            key = deid_mod.load_or_create_key(key_path)
            key_id = deid_mod.Deidentifier(key).hash_text("key-fingerprint", 16)
            check_settings(out, {**asdict(settings), "allow_burned_in": allow_burned_in,
                                 "key_id": key_id})
        except BaseException:
            held.close()
            if created:  # leave no empty OUT_DIR behind
                (out / LOCK).unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        counts = _ingest_locked(src, out, settings, key, allow_burned_in, workers, progress,
                                limits, retry_failed)
    return IngestSummary(**counts, seconds=time.perf_counter() - t0, out_dir=str(out))


def _ingest_locked(src: Path, out: Path, settings: IngestSettings, key: bytes,
                   allow_burned_in: bool, workers: int | None, progress: bool | None,
                   limits: Limits, retry_failed: bool) -> dict[str, int]:
    """The run itself, with OUT_DIR locked and its settings checked."""
    from tqdm import tqdm

    hasher = deid_mod.Deidentifier(key)
    for tmp in (out / IMAGES).glob(".*.tmp"):  # left by an interrupted run
        tmp.unlink()
    done = load_done(out)
    failed = load_failed(out, retry=retry_failed)
    marks = StartedMarks(out / STARTED)
    cut_torn_tail(marks.path)
    # started by an earlier run that died before recording any outcome: isolated first
    unresolved = marks.read() - done - failed
    skip = set() if retry_failed else failed

    refused: list[tuple[Path, str]] = []
    files = find_files(src, exclude=out.resolve(), refused=refused)
    tasks: list[Task] = []
    suspects: list[Task] = []
    refused_rows: list[dict[str, str]] = []
    counts = dict(written=0, already_done=0, skipped=0, burned_in=0, failed_before=0,
                  crashed=0)
    for path, why in [(p, "") for p in files] + refused:
        rel = path.relative_to(src).as_posix()
        image_id = hasher.hash_text("id:" + rel)
        if image_id in done:
            counts["already_done"] += 1
            continue
        if image_id in skip:
            counts["failed_before"] += 1
            continue
        source = hasher.hash_text("path:" + rel) if settings.hash_paths else rel
        if why:
            refused_rows.append({"id": image_id, "source": source, "reason": why})
            continue
        task = Task(image_id, rel, (str(path), rel, source, image_id))
        (suspects if image_id in unresolved else tasks).append(task)

    marks.rewrite([t.id for t in suspects])  # the marks of finished files are spent

    def crashed(task: Task, reason: str) -> dict[str, Any]:
        _, _, source, image_id = task.args
        return {"ok": False, "crashed": True,
                "row": {"id": image_id, "source": source, "reason": reason}}

    n_workers = max(1, workers or len(os.sched_getaffinity(0)))
    bar = tqdm(total=len(tasks) + len(suspects), unit="file", desc="ingest", file=sys.stderr,
               disable=None if progress is None else not progress)
    with Appender(out / MANIFEST, MANIFEST_COLUMNS) as manifest, \
            Appender(out / ERRORS, ERROR_COLUMNS) as errors:
        for row in refused_rows:
            errors.writerow(row)
            counts["skipped"] += 1
        try:
            for result in run_tasks(tasks, _process, workers=n_workers, init=_init_worker,
                                    initargs=(settings, key, allow_burned_in, str(out), limits),
                                    marks=marks, crashed=crashed, suspects=suspects):
                bar.update()
                if result.get("fatal"):
                    raise InputError(out, result["fatal"])
                if result["ok"]:
                    manifest.writerow(result["row"])
                    counts["written"] += 1
                    continue
                errors.writerow(result["row"])
                counts["skipped"] += 1
                counts["burned_in"] += bool(result.get("burned_in"))
                counts["crashed"] += bool(result.get("crashed"))
        finally:
            bar.close()
    return counts


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


# ---------------------------------------------------------------------------------------------
# the command


def _parser() -> argparse.ArgumentParser:
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
        p.add_argument("--max-pixels", type=int, default=DEFAULT_LIMITS.max_pixels, metavar="N",
                       help="refuse a file whose header declares more than N pixels (rows x "
                       "columns x frames x samples), before decoding (default %(default)s)")
        p.add_argument("--max-file-mb", type=float,
                       default=DEFAULT_LIMITS.max_file_bytes / (1 << 20), metavar="MB",
                       help="refuse a file (or a deflated dataset, once inflated) larger than "
                       "MB mebibytes (default %(default)g)")

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
                       "DICOM with the image re-encoded (native, or RLE Lossless for "
                       "compressed input)")
    p_ing.add_argument("--size", type=int, default=None, metavar="N",
                       help="PNG: shrink so the longer side is N pixels (aspect kept)")
    paths = p_ing.add_mutually_exclusive_group()
    paths.add_argument("--plain-paths", action="store_true",
                       help="write the path under SRC_DIR in the source column (default: a "
                       "keyed hash; folder names of PACS exports often hold patient names)")
    paths.add_argument("--hash-paths", action="store_true",
                       help="a keyed hash in the source column (the default)")
    p_ing.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes (default: all cores; 1: decode in this process)")
    p_ing.add_argument("--retry-failed", action="store_true",
                       help="try again the files that errors.csv lists (a rerun skips them)")
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
    return parser


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += find_files(p) if p.is_dir() else [p]
    return files


def dicom_main(argv: list[str]) -> int:
    """`biomed dicom inspect FILE... | ingest SRC_DIR OUT_DIR`."""
    from biomed.imaging.dicom.inspect import inspect_main

    args = _parser().parse_args(argv)
    try:
        limits = Limits(max_file_bytes=max(1, int(args.max_file_mb * (1 << 20))),
                        max_pixels=args.max_pixels)
        options = ReadOptions(voi=args.voi, frame=args.frame,
                              color="convert" if args.convert_color else "refuse", limits=limits)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.action == "inspect":
        return inspect_main(_expand(args.files), args.files, options, args.header_only,
                            args.json)
    try:
        settings = IngestSettings(format=args.format, size=args.size, voi=args.voi,
                                  frame=args.frame, convert_color=args.convert_color,
                                  dates=args.dates,
                                  keep_patient_characteristics=args.keep_patient_characteristics,
                                  hash_paths=not args.plain_paths)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {args.workers}")
    summary = ingest(args.src_dir, args.out_dir, settings, workers=args.workers,
                     allow_burned_in=args.allow_burned_in, key_file=args.key_file,
                     progress=False if args.no_progress else None, limits=limits,
                     retry_failed=args.retry_failed)
    print(summary.line())
    return 0


__all__ = ["ERROR_COLUMNS", "MANIFEST_COLUMNS", "IngestSettings", "IngestSummary",
           "clean_reason", "dicom_main", "find_files", "ingest", "shrink"]
