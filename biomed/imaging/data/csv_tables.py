"""Reading the loaders' label tables: CSV rows with one-line errors, label values, uncertainty.

The real datasets ship their labels as CSV files (plain or gzipped) in CheXpert's value
convention (1 positive, 0 negative, -1 uncertain, blank not mentioned). These helpers check a
table's header and every row's field count, turn the values into a float32 matrix, and resolve
the uncertain value by one of the three policies of Irvin et al. A malformed table raises
`InputError` naming the file, the line and the reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biomed.errors import ConfigError, InputError

__all__ = ["UNCERTAIN_POLICIES", "Columns", "csv_header", "existing_folder", "find_file",
           "iter_csv", "label_matrix", "label_values", "resolve_uncertain"]

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_csv(path: str | Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
    """Rows of a CSV (plain or .gz) as (line number, dict), with one-line errors.

    Checks the header for the ``required`` columns and every row for the header's field count.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise InputError(path, "empty CSV (no header line)")
            header = [h.lstrip("\ufeff") if i == 0 else h for i, h in enumerate(header)]
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(path, f"missing required column(s) {', '.join(map(repr, missing))}"
                                       f" (header: {', '.join(header)[:200]})")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise InputError(path, f"line {reader.line_num}: {len(row)} fields, the "
                                           f"header has {len(header)}")
                yield reader.line_num, dict(zip(header, row, strict=True))
    except (csv.Error, UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as e:
        raise InputError(path, f"unreadable CSV ({' '.join(str(e).split())})") from None


def csv_header(path: Path) -> list[str]:
    """The header of a CSV (after `iter_csv`'s checks)."""
    for _, row in iter_csv(path):
        return list(row)
    with _open_text(path) as f:  # a header and no rows
        return next(csv.reader(f), [])


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (each also tried with .gz) that exists under ``root``."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(root / names[0], f"{what} not found (looked for "
                                      f"{', '.join(names)} and .gz in {root})")


def existing_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder, or `InputError` naming it (``what``: "CheXpert", "image", ...)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(p, f"{what} folder not found")
    return p


_VALUE = {"": np.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0,
          "nan": np.nan, "NaN": np.nan}


def label_values(row: Mapping[str, str], names: Sequence[str], path: Path,
                 line: int) -> list[float]:
    """One row's CheXpert-style values (1, 0, -1, blank) of the ``names`` columns."""
    try:
        return [_VALUE[row[n]] for n in names]
    except KeyError:
        for n in names:
            if row[n].strip() not in _VALUE:
                raise InputError(path, f"line {line}: column {n!r} has {row[n]!r}; labels must "
                                       "be 1, 0, -1 (uncertain) or blank") from None
        return [_VALUE[row[n].strip()] for n in names]


def label_matrix(rows: list[list[float]], k: int) -> np.ndarray:
    """N x ``k`` float32 from the rows' values (also for N = 0)."""
    return np.array(rows, dtype=np.float32).reshape(len(rows), k)


class Columns(dict):
    """Accumulates row dicts into the column lists of a `biomed.imaging.data.contract.Table`.

    Short strings are interned: metadata columns repeat a few values (views, sexes,
    manufacturers, dates) over 10^5 rows, and one shared object per value saves most of it.
    """

    def append(self, rec: Mapping[str, Any]) -> None:
        for key, value in rec.items():
            if type(value) is str and len(value) < 40:
                value = sys.intern(value)
            self.setdefault(key, []).append(value)


def resolve_uncertain(values: np.ndarray, policy: str) -> np.ndarray:
    """Resolve CheXpert's uncertain label (-1): ``ignore`` -> NaN, ``ones`` -> 1, ``zeros`` -> 0.

    The three policies of Irvin et al. (U-Ignore, U-Ones, U-Zeros); ``ignore`` is the honest
    default: an uncertain mention is unknown, and a masked loss skips it.
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ConfigError(f"uncertain={policy!r}: choose one of {', '.join(UNCERTAIN_POLICIES)}")
    out = np.array(values, dtype=np.float32, copy=True)
    out[out == -1] = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[policy]
    return out

