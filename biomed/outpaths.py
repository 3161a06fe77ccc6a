"""Checks on a path a command is about to create, made before anything is written."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biomed.errors import InputError


def check_creatable(path: str | Path, what: str) -> None:
    """Raise `InputError` unless ``path`` (absent) could be created: the nearest existing
    ancestor must be a writable folder. ``what`` names the thing in the message."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"{what} is a broken symbolic link")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"cannot create {what}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot create {what}: {parent} is not writable")


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a CSV through a temporary file and a rename: a reader never sees half a table."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
