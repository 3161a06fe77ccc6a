"""The files of an ingest OUT_DIR, and what a rerun learns from them.

``OUT_DIR`` holds ``images/``, ``manifest.csv`` (one row per written image), ``errors.csv``
(one row per file that was refused or failed: ``id``, ``source``, ``reason``), ``ingest.json``
(the settings that decide the content, refused when a rerun differs), ``started.jsonl`` (the
started marks of `biomed.imaging.dicom.batch`) and ``.lock``.

- **Torn lines**: a full disk or a kill can leave a last line without its newline; every
  append-only file is cut back to its last newline on load, so the next row is never glued
  onto a torn one.
- **One writer**: `out_dir_lock` takes an exclusive ``flock`` on ``OUT_DIR/.lock`` for the
  whole run (the kernel drops it when the process dies, so a killed run leaves no stale lock);
  a second ingest into the same folder is refused at once instead of deleting the first one's
  temporary files and rewriting its ``errors.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from biomed.errors import ConfigError, InputError
from biomed.imaging.dicom.batch import cut_torn_tail
from biomed.outpaths import write_csv_atomic

MANIFEST = "manifest.csv"
ERRORS = "errors.csv"
SETTINGS = "ingest.json"
STARTED = "started.jsonl"
LOCK = ".lock"
IMAGES = "images"

MANIFEST_COLUMNS = (
    "id", "output", "source", "patient_id", "study_uid", "series_uid", "sop_uid", "modality",
    "view_position", "laterality", "body_part", "photometric", "bits_stored", "rows", "columns",
    "frames", "frame", "pixel_spacing", "spacing_source", "output_rows", "output_columns",
    "output_pixel_spacing", "manufacturer", "transfer_syntax", "lossy", "voi", "color_converted",
    "burned_in_annotation", "study_date", "patient_sex", "patient_age",
)
ERROR_COLUMNS = ("id", "source", "reason")


@contextlib.contextmanager
def out_dir_lock(out: Path) -> Iterator[Path]:
    """Hold OUT_DIR's lock for the block; `InputError` at once when another run holds it."""
    path = out / LOCK
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out, "another ingest is writing into this folder (it holds "
                             f"{LOCK}); wait for it to finish or choose another OUT_DIR") from None
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]] | None:
    """The rows of an append-only CSV (torn last line cut); None when its header differs."""
    if not path.exists():
        return []
    cut_torn_tail(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and list(reader.fieldnames) != list(columns):
            return None
        return list(reader)


def load_done(out: Path) -> set[str]:
    """Ids already ingested: in the manifest and on disk (rows whose file is gone are dropped)."""
    path = out / MANIFEST
    rows = _read_rows(path, MANIFEST_COLUMNS)
    if rows is None:
        raise InputError(path, "manifest columns differ from this version's; ingest into a "
                         "new folder")
    keep = [r for r in rows if r.get("output") and (out / r["output"]).is_file()]
    if len(keep) != len(rows):
        write_csv_atomic(path, MANIFEST_COLUMNS, keep)
    return {r["id"] for r in keep}


def load_failed(out: Path, retry: bool) -> set[str]:
    """Ids recorded in ``errors.csv`` (a rerun skips them). ``retry``: the rows are removed, so
    that the files are tried again and recorded anew. An ``errors.csv`` of an older layout (no
    ``id``) is started afresh."""
    path = out / ERRORS
    rows = _read_rows(path, ERROR_COLUMNS)
    if rows is None or (retry and rows):
        write_csv_atomic(path, ERROR_COLUMNS, [])
    return {r["id"] for r in rows or () if r.get("id")}


def check_settings(out: Path, wanted: dict[str, Any]) -> None:
    """Record the settings of a new OUT_DIR; refuse a rerun whose settings differ."""
    path = out / SETTINGS
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


class Appender:
    """A CSV file opened for appending rows (header written when new), flushed per row."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path, self.columns = path, list(columns)

    def __enter__(self) -> Appender:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "a", newline="", encoding="utf-8")
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
