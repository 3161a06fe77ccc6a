"""`biomed dicom inspect`: one line per file, ok with its technical metadata, or the reason.

Every file is read under the limits and the one error policy of `biomed.imaging.dicom.guard`:
a malformed, truncated, oversized or decoder-crashing file is one ``error:`` line and the next
file is read; the exit status says whether any failed.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biomed.errors import InputError
from biomed.imaging.dicom.guard import decoder_errors
from biomed.imaging.dicom.read import ReadOptions, dataset_to_image, metadata, read_dataset

__all__ = ["inspect_files", "inspect_main"]


def inspect_files(paths: Sequence[str | Path], options: ReadOptions | None = None,
                  header_only: bool = False) -> list[dict[str, Any]]:
    """One record per file: ``ok``, ``error`` (the reason) and the technical metadata."""
    options = options or ReadOptions()
    records = []
    for path in paths:
        rec: dict[str, Any] = {"path": str(path), "ok": True, "error": ""}
        try:
            with warnings.catch_warnings():  # pydicom's: one line per file, nothing else
                warnings.simplefilter("ignore")
                with decoder_errors(path, "cannot read"):
                    ds = read_dataset(path, stop_before_pixels=header_only,
                                      limits=options.limits)
                    meta = metadata(ds, path) if header_only else \
                        dataset_to_image(ds, path, options).meta
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


def inspect_main(files: Sequence[Path], given: Sequence[str], options: ReadOptions,
                 header_only: bool, as_json: bool) -> int:
    """Print the records of ``files`` (found from the arguments ``given``); 1 if any failed."""
    if not files:  # only folders were given, and they hold no (visible) file
        print(f"error: no files to inspect in {', '.join(given)} (empty folder; hidden files "
              "are ignored)", file=sys.stderr)
        return 1
    records = inspect_files(files, options, header_only=header_only)
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        for rec in records:
            print(_inspect_line(rec), flush=True)
    return 1 if any(not r["ok"] for r in records) else 0
