"""Chest X-ray datasets behind one contract, for every dataset a user brings.

Every loader (MIMIC-CXR-JPG, CheXpert, NIH ChestX-ray14, OpenI, PadChest, a generic folder +
CSV) is an `XrayDataset`, in the manner of torchxrayvision:

- ``labels``: N x K float32, 1 / 0 / NaN (NaN = unknown: not mentioned, uncertain under the
  ``ignore`` policy, or a finding the dataset cannot express); ``label_names``: the K names.
  A dataset's own label names are the default (``labels="dataset"``); ``labels="canonical"``
  maps them onto the workbench vocabulary (`biomed.imaging.core.labels`). Both stay available as
  ``dataset_labels`` / ``dataset_label_names``.
- ``metadata``: a row-aligned `Table` (columns ``id``, ``patient_id``, ``path``, ``view``,
  ``split`` and the dataset's own fields); no pandas.
- ``ds[i]``: a dict with ``image`` (float32 H x W in [0, 1], lungs dark: `biomed.imaging.core.pixels`),
  ``labels`` (K float32), ``id``, ``patient_id``, ``index`` and, for datasets with report text,
  ``report`` ("" where a row's report is unknown, so that batches still collate).
- ``split="train" | "val" | "test"`` selects rows by `biomed.splits.assign_split` of the patient id
  (``split_by="hash"``), or by the dataset's official split (``split_by="official"``: NIH's
  train_val_list.txt / test_list.txt, MIMIC's split CSV, CheXpert's train/valid CSVs, a
  ``split`` column). Either way no patient is in two splits. ``split_by="auto"`` (default) takes
  the official split where the dataset has one, except CheXpert, whose official validation set
  (200 studies) is too small to be the only one and which has no public test list. Parsing a
  160k-row table takes seconds: build once with ``split=None`` and take ``ds.with_split(s)``.
- ``size`` resizes every image (squashed to a square for an int: the aspect ratio of a
  radiograph is not a finding); with ``cache_dir`` the images are decoded and resized once into
  a memory-mapped cache (`biomed.imaging.data.image_cache`) that every epoch and run reads, and
  unreadable files are dropped from the dataset with their reason in ``skipped``.

Missing files and malformed tables raise `InputError` naming the file and the reason.
"""

from __future__ import annotations

import ast
import copy
import csv
import gzip
import io
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from biomed.errors import ConfigError, InputError
from biomed.imaging.core import labels as L
from biomed.imaging.core import pixels
from biomed.imaging.data.image_cache import ImageCache
from biomed.splits import DEFAULT_FRACTIONS, SPLITS, assign_split

__all__ = [
    "CheXpert",
    "FolderCSV",
    "MimicCxrJpg",
    "NIHChestXray14",
    "OpenI",
    "PadChest",
    "Table",
    "XrayDataset",
    "mimic_report_text",
    "read_xray",
    "resolve_uncertain",
]

log = logging.getLogger(__name__)

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
LABEL_SPACES = ("dataset", "canonical")
SPLIT_BY = ("auto", "hash", "official")
VIEW_ALIASES = {"frontal": ("PA", "AP"), "lateral": ("LATERAL", "LL", "RL")}


# ---------------------------------------------------------------------------------------------
# the metadata table


class Table:
    """A small column-oriented table: row-aligned metadata without pandas.

    ``t["view"]`` is a column (a list), ``t[3]`` a row (a dict), ``len(t)`` the row count.
    Columns are lists so that 377,000 MIMIC rows cost a few lists rather than 377,000 dicts.
    """

    def __init__(self, columns: Mapping[str, Sequence[Any]] | None = None):
        self._cols: dict[str, list] = {k: v if type(v) is list else list(v)
                                       for k, v in (columns or {}).items()}
        lengths = {len(v) for v in self._cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns differ in length: {sorted(lengths)}")
        self._n = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self._n

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._cols[key]
        i = range(self._n)[key]
        return {k: v[i] for k, v in self._cols.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            yield self[i]

    def __repr__(self) -> str:
        return f"Table({self._n} rows: {', '.join(self._cols)})"

    def get(self, name: str, default: Any = None) -> Any:
        """A column, or ``default`` when there is no such column."""
        return self._cols.get(name, default)

    def add(self, name: str, values: Sequence[Any]) -> None:
        """Add or replace a column."""
        if self._cols and len(values) != self._n:
            raise ValueError(f"column {name!r} has {len(values)} values for {self._n} rows")
        self._cols[name] = list(values)
        self._n = len(values)

    def take(self, indices: Sequence[int]) -> Table:
        """The rows at ``indices``, in that order."""
        return Table({k: [v[i] for i in indices] for k, v in self._cols.items()})

    def to_dicts(self) -> list[dict[str, Any]]:
        return list(self)


# ---------------------------------------------------------------------------------------------
# files


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _iter_csv(path: str | Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
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


def _csv_header(path: Path) -> list[str]:
    """The header of a CSV (after `_iter_csv`'s checks)."""
    for _, row in _iter_csv(path):
        return list(row)
    with _open_text(path) as f:  # a header and no rows
        return next(csv.reader(f), [])


def _find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (each also tried with .gz) that exists under ``root``."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(root / names[0], f"{what} not found (looked for "
                                      f"{', '.join(names)} and .gz in {root})")


def _root(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(p, f"{what} folder not found")
    return p


def read_xray(path: str | Path, size: Sequence[int] | None = None) -> np.ndarray:
    """Read a PNG / JPEG / TIFF / DICOM file into the workbench convention.

    ``size`` (height, width) is a hint, not a resize: a JPEG is then decoded at the smallest
    DCT scale (1/2, 1/4, 1/8) that stays at least that large, and JPEG 2000 DICOM likewise,
    which is most of the decoding time of a 3000 x 2500 radiograph.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return _read_dicom(path, size)
    if size is not None and suffix in (".jpg", ".jpeg"):
        return _read_jpeg_reduced(path, size)
    return pixels.read_image(path)


def _read_jpeg_reduced(path: Path, size: Sequence[int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":  # e.g. a PNG named .jpg: the usual reader
                return pixels.read_image(path)
            im.draft("L", (int(size[1]), int(size[0])))  # picks a DCT scale; not below size
            im.load()
            gray = im if im.mode == "L" else im.convert("L")  # RGB/CMYK -> luma, as pixels does
            return np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(path, f"not a readable image ({e})") from None


def _read_dicom(path: Path, size: Sequence[int] | None) -> np.ndarray:
    """DICOM through `biomed.imaging.dicom.read.read_dicom` (imported here: pydicom is heavy)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        from biomed.imaging.dicom import read as dicom
    except ImportError as e:
        raise InputError(path, f"cannot read DICOM: biomed.imaging.dicom.read is not available "
                               f"({e})") from None
    reader = getattr(dicom, "read_dicom", None)
    if reader is None:
        raise InputError(path, "cannot read DICOM: biomed.imaging.dicom.read has no read_dicom")
    options = None
    if size is not None and hasattr(dicom, "ReadOptions"):
        try:  # JPEG 2000 may then stop at a wavelet level still >= size on each side
            options = dicom.ReadOptions(decode_size=(int(size[0]), int(size[1])))
        except (TypeError, ValueError):
            options = None
    out = reader(path, options) if options is not None else reader(path)
    return pixels.check_image(np.asarray(getattr(out, "image", out)), str(path))


# ---------------------------------------------------------------------------------------------
# label values


_VALUE = {"": np.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0,
          "nan": np.nan, "NaN": np.nan}


def _label_values(row: Mapping[str, str], names: Sequence[str], path: Path,
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


def _matrix(rows: list[list[float]], k: int) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(len(rows), k)


class _Columns(dict):
    """Accumulates row dicts into the column lists of a `Table`.

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


def _normal_view(raw: str) -> str:
    v = (raw or "").strip().upper()
    return {"L": "LATERAL", "AP_HORIZONTAL": "AP", "LAT": "LATERAL"}.get(v, v)


# ---------------------------------------------------------------------------------------------
# the contract


class SplitRows:
    """What every dataset of the contract derives from its ``metadata["split"]``, ``labels`` and
    ``subset``: one split's rows, and the label counts."""

    def with_split(self, split: str):
        """The rows of one split, without reading the tables again: build the dataset once
        with ``split=None`` and take train, val and test from it."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
        new = self.subset([i for i, s in enumerate(self.metadata["split"]) if s == split])
        new.split = split
        return new

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per label: how many rows are positive, negative and unknown."""
        out = {}
        for j, n in enumerate(self.label_names):
            col = self.labels[:, j]
            out[n] = {"positive": int(np.sum(col == 1)), "negative": int(np.sum(col == 0)),
                      "unknown": int(np.sum(np.isnan(col)))}
        return out


class XrayDataset(SplitRows, Dataset):
    """Base of every loader: labels, metadata, items, splits, resizing and the image cache.

    Loaders parse their files into a `Table` (with at least ``id``, ``patient_id``, ``path``
    and ``view``; optionally ``official_split``, ``report`` or ``report_path``) and a label
    matrix, then call this constructor with the user's options:

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or None (every row).
        split_by: ``"auto"``, ``"hash"`` (80/10/10 by patient, `biomed.splits`) or
            ``"official"``.
        fractions: train/val/test fractions for ``hash`` (and the train/val ratio inside an
            official train+val list, as NIH's).
        labels: ``"dataset"`` (the dataset's own names) or ``"canonical"``.
        views: keep only these views (``PA``, ``AP``, ``LATERAL``, ... or ``frontal`` /
            ``lateral``); None keeps all.
        size: resize every image to this (int: square; or (height, width)).
        cache_dir: decode and resize once into a memory-mapped cache there (needs ``size``).
        transform: applied to the image array of each item.
        name: a short name for messages (defaults to the config name).
        progress: show a progress bar while building the cache.
        workers: threads decoding while building the cache (default: up to 4).
    """

    name = "xray"
    #: When ``split_by="auto"``: use the official split if the dataset has one.
    official_by_default = True

    def __init__(self, table: Table, values: np.ndarray, names: Sequence[str], *,
                 canonical: Callable[[], np.ndarray] | None = None,
                 split: str | None = None, split_by: str = "auto",
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, labels: str = "dataset",
                 views: Sequence[str] | None = None, size: int | Sequence[int] | None = None,
                 cache_dir: str | Path | None = None, transform: Callable | None = None,
                 name: str | None = None, progress: bool = True,
                 workers: int | None = None) -> None:
        super().__init__()
        if name:
            self.name = name
        if labels not in LABEL_SPACES:
            raise ConfigError(f"labels={labels!r}: choose 'dataset' or 'canonical'")
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLITS)} or null")
        if split_by not in SPLIT_BY:
            raise ConfigError(f"split_by={split_by!r}: choose one of {', '.join(SPLIT_BY)}")
        values = np.asarray(values, dtype=np.float32).reshape(len(table), len(names))
        self.metadata: Table = table
        self.dataset_labels: np.ndarray = values
        self.dataset_label_names: list[str] = list(names)
        self.label_space = labels
        if labels == "canonical":
            if canonical is None:
                raise ConfigError(f"{self.name}: no mapping onto the canonical labels")
            self.labels = np.asarray(canonical(), dtype=np.float32)
            self.label_names = list(L.CANONICAL_NAMES)
        else:
            self.labels, self.label_names = values, list(names)
        self.split = split
        self.transform = transform
        self.size: tuple[int, int] | None = (
            None if size is None else
            (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1])))
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of rows dropped as unreadable
        self._cache: ImageCache | None = None
        self._slots: np.ndarray | None = None

        self.metadata.add("split", self._assign_splits(split_by, fractions))
        keep = np.arange(len(table))
        if views:
            keep = keep[self._view_mask(views)[keep]]
        if split is not None:
            col = self.metadata["split"]
            keep = np.array([i for i in keep if col[i] == split], dtype=np.int64)
        if len(keep) != len(table):
            self._take(keep)
        if cache_dir is not None:
            self._build_cache(cache_dir, progress, workers)

    # -- construction helpers -------------------------------------------------------------

    def _assign_splits(self, split_by: str, fractions: Sequence[float]) -> list[str]:
        fractions = tuple(float(f) for f in fractions)
        try:
            assign_split("check", fractions)
        except ValueError as e:
            raise ConfigError(f"{self.name}: {e}") from None
        official = self.metadata.get("official_split")
        if split_by == "auto":
            split_by = "official" if official is not None and self.official_by_default else "hash"
        if split_by == "official" and official is None:
            raise ConfigError(f"{self.name}: this dataset has no official split here; "
                              "use split_by=hash")
        memo: dict[str, str] = {}
        pids = self.metadata["patient_id"]
        if split_by == "hash":
            return [memo.get(p) or memo.setdefault(p, assign_split(p, fractions)) for p in pids]
        # official: an NIH-style train+val list is divided by patient in the train:val ratio
        tv = fractions[0] + fractions[1]
        tv_fracs = (fractions[0] / tv, fractions[1] / tv) if tv > 0 else (1.0, 0.0)
        out = []
        for o, p in zip(official, pids, strict=True):
            if o == "trainval":
                o = memo.get(p) or memo.setdefault(p, assign_split(p, tv_fracs, ("train", "val")))
            out.append(o)
        return out

    def _view_mask(self, views: Sequence[str]) -> np.ndarray:
        wanted: set[str] = set()
        for v in views:
            wanted.update(VIEW_ALIASES.get(str(v).lower(), (str(v).upper(),)))
        col = self.metadata["view"]
        if not any(col):
            raise ConfigError(f"{self.name}: views={list(views)} but this dataset has no view "
                              "information; use views=null")
        return np.array([v in wanted for v in col], dtype=bool)

    def _take(self, keep: Sequence[int]) -> None:
        keep = np.asarray(keep, dtype=np.int64)
        self.metadata = self.metadata.take(keep)
        self.labels = self.labels[keep]
        self.dataset_labels = self.dataset_labels[keep]
        if self._slots is not None:
            self._slots = self._slots[keep]

    def _build_cache(self, cache_dir: str | Path, progress: bool, workers: int | None) -> None:
        if self.size is None:
            raise ConfigError(f"{self.name}: cache_dir needs a size (the cache stores resized "
                              "images)")
        self._cache = ImageCache(cache_dir, self.size)
        res = self._cache.build(self.metadata["path"], self._decode_for_cache,
                                variant=self.cache_variant, workers=workers, progress=progress,
                                desc=f"{self.name}: caching")
        keep = [i for i, s in enumerate(res.slots) if s is not None]
        paths = self.metadata["path"]
        self.skipped = [(paths[i], res.bad.get(paths[i], "unreadable"))
                        for i, s in enumerate(res.slots) if s is None]
        self._slots = np.array([s if s is not None else -1 for s in res.slots], dtype=np.int64)
        if self.skipped:
            log.warning("%s: skipped %d of %d image(s) that could not be read (e.g. %s: %s)",
                        self.name, len(self.skipped), len(paths), *self.skipped[0])
            self._take(keep)

    @property
    def cache_variant(self) -> str:
        """Names the decoder settings in cache keys (a subclass reading differently changes it)."""
        return "v1"

    @staticmethod
    def _decode_for_cache(path: Path, size: tuple[int, int]) -> np.ndarray:
        return read_xray(path, size)

    # -- the contract ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def ids(self) -> list[str]:
        return self.metadata["id"]

    @property
    def patient_ids(self) -> list[str]:
        return self.metadata["patient_id"]

    @property
    def paths(self) -> list[str]:
        return self.metadata["path"]

    @property
    def has_reports(self) -> bool:
        return "report" in self.metadata or "report_path" in self.metadata

    def report(self, index: int) -> str:
        """The report text of a row ("" when unknown)."""
        if "report" in self.metadata:
            return self.metadata["report"][index]
        if "report_path" in self.metadata:
            return self._read_report(self.metadata["report_path"][index])
        return ""

    def _read_report(self, path: str) -> str:
        return ""

    def image(self, index: int) -> np.ndarray:
        """The image of a row in the workbench convention (resized when ``size`` is set)."""
        if self._slots is not None and self._cache is not None:
            return self._cache.read(int(self._slots[index]))
        img = read_xray(self.metadata["path"][index], self.size)
        return pixels.resize(img, self.size) if self.size is not None else img

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        item = {"image": img, "labels": self.labels[index].copy(),
                "id": self.metadata["id"][index], "patient_id": self.metadata["patient_id"][index],
                "index": index}
        if self.has_reports:
            item["report"] = self.report(index)
        return item

    def subset(self, indices: Sequence[int]) -> XrayDataset:
        """A new dataset of the rows at ``indices`` (sharing the cache)."""
        new = copy.copy(self)
        new._take(indices)
        return new

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, split={self.split!r}, "
                f"labels={self.label_space!r} ({len(self.label_names)}), size={self.size})")


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


_SECTION = re.compile(r"^[ \t]*([A-Z][A-Z /&,()-]*[A-Z)])[ \t]*:", re.MULTILINE)


def mimic_report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into its ``NAME:`` sections (upper-case headings at line start);
    text before the first heading goes under ``""``. Whitespace is collapsed."""
    out: dict[str, str] = {}
    marks = list(_SECTION.finditer(text))
    out[""] = " ".join(text[: marks[0].start() if marks else len(text)].split())
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        body = " ".join(text[m.end(): nxt.start() if nxt else len(text)].split())
        out.setdefault(m.group(1).strip(), body)
    return out


def mimic_report_text(text: str) -> str:
    """The prompt text of a MIMIC-CXR report: the IMPRESSION, else the FINDINGS, else ""
    (RoentGen's choice: the impression is the radiologist's summary)."""
    sections = mimic_report_sections(text)
    for names in (("IMPRESSION", "IMPRESSIONS"), ("FINDINGS", "FINDING")):
        for n in names:
            if sections.get(n):
                return sections[n]
    return ""


class MimicCxrJpg(XrayDataset):
    """MIMIC-CXR-JPG v2.0.0 (Johnson et al., PhysioNet): 377,110 JPEGs of 65,379 patients.

    ``root`` holds ``mimic-cxr-2.0.0-metadata.csv``, ``-chexpert.csv`` and ``-split.csv``
    (plain or .gz) and ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` (or ``image_dir`` holds
    ``p10/...``). Labels are the CheXpert labeler's 14, per study (every image of a study
    shares them; studies missing from the label CSV are all NaN); ``uncertain`` resolves -1.
    ``reports_dir``, when given, is the folder holding the MIMIC-CXR reports tree
    ``files/p10/p10000032/s50414267.txt`` (``mimic-cxr-reports.zip``); each item's ``report``
    is then its IMPRESSION, falling back to FINDINGS. The split CSV is the official split
    (``validate`` -> ``val``).
    """

    name = "mimic_cxr_jpg"

    def __init__(self, root: str | Path, *, uncertain: str = "ignore",
                 reports_dir: str | Path | None = None, image_dir: str | Path | None = None,
                 **options: Any) -> None:
        root = _root(root, "MIMIC-CXR-JPG")
        files = str(Path(image_dir).expanduser() if image_dir else root / "files")
        reports = None
        if reports_dir is not None:
            reports = _root(reports_dir, "MIMIC-CXR reports")
        names = L.MIMIC_CHEXPERT_LABELS
        meta_csv = _find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "metadata CSV")
        study_labels, by_study = _mimic_study_labels(root, uncertain)
        official = _mimic_official(root)
        cols = _Columns()
        study_index: list[int] = []
        for _, row in _iter_csv(meta_csv, ["dicom_id", "subject_id", "study_id",
                                           "ViewPosition"]):
            sid, study, did = row["subject_id"], row["study_id"], row["dicom_id"]
            folder = f"p{sid[:2]}/p{sid}/s{study}"
            rec = {"id": did, "patient_id": sid, "path": f"{files}/{folder}/{did}.jpg",
                   "view": _normal_view(row["ViewPosition"]), **row}
            if official is not None:
                rec["official_split"] = official.get(did, "")
            if reports is not None:
                rec["report_path"] = f"{reports}/files/{folder}.txt"
            cols.append(rec)
            study_index.append(by_study.get((sid, study), -1))
        idx = np.asarray(study_index, dtype=np.int64)
        values = np.full((len(idx), len(names)), np.nan, np.float32)
        values[idx >= 0] = study_labels[idx[idx >= 0]]
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.CHEXPERT_TO_CANONICAL),
            **options)

    def _read_report(self, path: str) -> str:
        try:
            return mimic_report_text(Path(path).read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return ""


def _mimic_study_labels(root: Path, uncertain: str
                        ) -> tuple[np.ndarray, dict[tuple[str, str], int]]:
    """The study-level label matrix of mimic-cxr-2.0.0-chexpert.csv and its row index."""
    path = _find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "CheXpert label CSV")
    names = L.MIMIC_CHEXPERT_LABELS
    rows: list[list[float]] = []
    by_study: dict[tuple[str, str], int] = {}
    for line, row in _iter_csv(path, ["subject_id", "study_id", *names]):
        by_study[(row["subject_id"], row["study_id"])] = len(rows)
        rows.append(_label_values(row, names, path, line))
    return resolve_uncertain(_matrix(rows, len(names)), uncertain), by_study


def _mimic_official(root: Path) -> dict[str, str] | None:
    """dicom_id -> train / val / test from mimic-cxr-2.0.0-split.csv (None when absent)."""
    try:
        path = _find_file(root, ["mimic-cxr-2.0.0-split.csv"], "split CSV")
    except InputError:
        return None
    out: dict[str, str] = {}
    for line, row in _iter_csv(path, ["dicom_id", "split"]):
        s = {"validate": "val"}.get(row["split"], row["split"])
        if s not in SPLITS:
            raise InputError(path, f"line {line}: unknown split {row['split']!r}")
        out[row["dicom_id"]] = s
    return out


# ---------------------------------------------------------------------------------------------
# CheXpert


_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


class CheXpert(XrayDataset):
    """CheXpert v1.0 (Irvin et al., AAAI 2019): 224,316 radiographs of 65,240 patients.

    ``root`` is the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder holding ``train.csv``
    and ``valid.csv``; the CSVs' ``Path`` column starts with that folder's name, which is
    stripped. Values: 1 positive, 0 negative, -1 uncertain (``uncertain``: ``ignore`` -> NaN,
    ``ones``, ``zeros``), blank not mentioned (NaN). The official split is train.csv -> train,
    valid.csv -> val (no public test list), so ``split_by="auto"`` hashes patients instead.
    """

    name = "chexpert"
    official_by_default = False

    def __init__(self, root: str | Path, *, csv_files: Sequence[str] | None = None,
                 uncertain: str = "ignore", **options: Any) -> None:
        root = _root(root, "CheXpert")
        if csv_files is None:
            csv_files = ["train.csv"] + (["valid.csv"] if (root / "valid.csv").is_file() else [])
        cols = _Columns()
        rows: list[list[float]] = []
        for csv_name in csv_files:
            _read_chexpert_csv(root, Path(csv_name), cols, rows)
        names = L.CHEXPERT_LABELS
        values = resolve_uncertain(_matrix(rows, len(names)), uncertain)
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.CHEXPERT_TO_CANONICAL),
            **options)


def _read_chexpert_csv(root: Path, csv_name: Path, cols: _Columns,
                       rows: list[list[float]]) -> None:
    """Append one CheXpert CSV's rows (metadata to ``cols``, raw values to ``rows``)."""
    names = L.CHEXPERT_LABELS
    path = csv_name if csv_name.is_absolute() else root / csv_name
    official = ("val" if csv_name.name.startswith("valid") else
                "test" if csv_name.name.startswith("test") else "train")
    for line, row in _iter_csv(path, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                                      *names]):
        rel = row["Path"]
        if rel.startswith("CheXpert-v1.0") and "/" in rel:
            rel = rel.split("/", 1)[1]
        m = _CHEXPERT_PATIENT.search(rel)
        if m is None:
            raise InputError(path, f"line {line}: no patient id in Path {row['Path']!r}")
        frontal = row["Frontal/Lateral"] == "Frontal"
        cols.append({
            "id": rel.rsplit(".", 1)[0], "patient_id": m.group(1), "path": f"{root}/{rel}",
            "view": _normal_view(row["AP/PA"]) if frontal else "LATERAL",
            "official_split": official, "source_csv": path.name,
            **{k: row[k] for k in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")}})
        rows.append(_label_values(row, names, path, line))


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14


_NIH_COLUMNS = {  # the v2020 header splits two bracketed names at their commas
    "OriginalImage[Width": "original_width", "Height]": "original_height",
    "OriginalImagePixelSpacing[x": "pixel_spacing_x", "y]": "pixel_spacing_y",
}


class NIHChestXray14(XrayDataset):
    """NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal images of 30,805 patients.

    ``root`` holds ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``; plain or .gz),
    the images (``images/`` or the download's ``images_001/images/`` ... ``images_012/images/``)
    and, when present, the official ``train_val_list.txt`` / ``test_list.txt``: test is
    official, and train+val is divided by patient. Labels: the 14 findings of the pipe-joined
    "Finding Labels" plus "No Finding", all 0/1.
    """

    name = "nih14"

    def __init__(self, root: str | Path, *, csv_file: str | Path | None = None,
                 image_dir: str | Path | None = None, **options: Any) -> None:
        root = _root(root, "NIH ChestX-ray14")
        csv_path = (root / csv_file if csv_file else
                    _find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"],
                               "Data_Entry CSV"))
        locate = _nih_locator(root, image_dir)
        official = _nih_official(root)
        names = L.NIH_LABELS
        col_of = {n: j for j, n in enumerate(names)}
        cols = _Columns()
        rows: list[np.ndarray] = []
        for line, row in _iter_csv(csv_path, ["Image Index", "Finding Labels", "Patient ID",
                                              "View Position"]):
            vec = np.zeros(len(names), np.float32)
            for f in row["Finding Labels"].split("|"):
                if f.strip() not in col_of:
                    raise InputError(csv_path, f"line {line}: unknown finding {f!r} in "
                                               f"'Finding Labels' (known: {', '.join(names)})")
                vec[col_of[f.strip()]] = 1.0
            rows.append(vec)
            name = row["Image Index"]
            rec = {"id": name, "patient_id": row["Patient ID"], "path": locate(name),
                   "view": _normal_view(row["View Position"])}
            if official is not None:
                rec["official_split"] = official.get(name, "")
            rec.update({_NIH_COLUMNS.get(k, k): v for k, v in row.items() if k})
            cols.append(rec)
        values = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, L.NIH_TO_CANONICAL),
            **options)


def _nih_locator(root: Path, image_dir: str | Path | None) -> Callable[[str], str]:
    """Where an image name lives: ``image_dir``, ``root/images``, or the sharded download."""
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        return lambda name: f"{folder}/{name}"
    flat = root / "images"
    shards = sorted(p for p in root.glob("images_*/images") if p.is_dir())
    if flat.is_dir() or not shards:
        return lambda name: f"{flat}/{name}"
    where: dict[str, str] = {}
    for shard in shards:
        for entry in shard.iterdir():
            where.setdefault(entry.name, str(shard))
    return lambda name: f"{where.get(name, flat)}/{name}"


def _nih_official(root: Path) -> dict[str, str] | None:
    lists = {"trainval": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        return None
    out: dict[str, str] = {}
    for split, p in lists.items():
        for name in p.read_text(encoding="utf-8").split():
            if out.setdefault(name, split) != split:
                raise InputError(p, f"{name} is in both train_val_list.txt and test_list.txt")
    return out


# ---------------------------------------------------------------------------------------------
# OpenI (Indiana University)


class OpenI(XrayDataset):
    """The Indiana University chest X-rays (Demner-Fushman et al., 2016), one row per image.

    ``reports`` is the report tarball ``NLMCXR_reports.tgz`` (None: the cached one from
    ``biomed data fetch iu_reports``); ``image_dir`` the folder of ``NLMCXR_png.tgz``, named by
    the reports' image ids (``CXR1_1_IM-0001-3001.png``). The report text is the impression
    then the findings (`biomed.imaging.reports.iu.Report.text`). Patients are not identified in
    OpenI, so the report id stands for the patient. Own labels: "normal" and every MeSH major
    term in the reports (or ``label_names``); reports tagged "No Indexing" are unknown (NaN).
    Reports without images are left out (counted in ``reports_without_images``). Views are
    unknown (the reports do not say).
    """

    name = "openi"
    official_by_default = False

    def __init__(self, image_dir: str | Path, *, reports: str | Path | None = None,
                 label_names: Sequence[str] | None = None, **options: Any) -> None:
        from biomed.imaging.reports.iu import read_reports

        folder = _root(image_dir, "OpenI image")
        all_reports = read_reports(reports)
        names = list(label_names) if label_names is not None else _iu_label_names(all_reports)
        col_of = {n.lower(): j for j, n in enumerate(names)}
        cols = _Columns()
        rows, canon = [], []
        self.reports_without_images = sum(not r.image_ids for r in all_reports)
        for r in all_reports:
            vec = np.full(len(names), np.nan, np.float32)
            if r.indexed:
                vec[:] = 0.0
                for t in ["normal"] if r.normal else [f.term for f in r.structured]:
                    if t.lower() in col_of:
                        vec[col_of[t.lower()]] = 1.0
            crow = _iu_canonical(r)
            for image_id in r.image_ids:
                cols.append({"id": image_id, "patient_id": r.id,
                             "path": f"{folder}/{image_id}.png", "view": "", "report_id": r.id,
                             "report": r.text, "mesh_major": "; ".join(r.mesh_major)})
                rows.append(vec)
                canon.append(crow)
        values = _matrix(rows, len(names))
        canonical = _matrix(canon, len(L.CANONICAL_NAMES))
        super().__init__(Table(cols), values, names, canonical=lambda: canonical, **options)


def _iu_label_names(reports: Sequence) -> list[str]:
    """"normal" and every MeSH major term, one column per term whatever its case in the file
    (it has 'Thoracic Vertebrae' and 'Thoracic vertebrae'): the most frequent spelling wins."""
    spelled: dict[str, Counter] = {}
    for r in reports:
        for f in r.structured:
            spelled.setdefault(f.term.lower(), Counter())[f.term] += 1
    best = {min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in spelled.values()}
    return ["normal", *sorted(best - {"normal"})]


_IU_MAP = {k.lower(): v for k, v in L.IU_MESH_TO_CANONICAL.items()}


def _iu_canonical(report) -> np.ndarray:
    """Canonical labels of one IU report from its MeSH major tags (terms, modifiers, sides)."""
    if not report.indexed:
        return np.full(len(L.CANONICAL_NAMES), np.nan, np.float32)
    found: set[str] = set()
    mentions: dict[str, list[str | None]] = {}
    tags = [("normal", [], None)] if report.normal else [
        (f.term, f.location + f.severity + f.other, f.side) for f in report.structured]
    for term, modifiers, side in tags:
        keys = [term.lower()] + [f"{term}/{m}".lower() for m in modifiers]
        for target in {t for k in keys for t in _IU_MAP.get(k, ())}:
            found.add(target)
            if target in L.SIDED:
                mentions.setdefault(target, []).append(side)
    sides = {p: L.side_values(m) for p, m in mentions.items()}
    return L.canonical_from_sets([found], [sides])[0]


# ---------------------------------------------------------------------------------------------
# PadChest


_PADCHEST_SIDE = re.compile(r"^(.*?) (left|right|both) sides?$")
_PADCHEST_KEEP = (  # metadata columns kept (the report is stemmed Spanish: metadata only)
    "ImageDir", "StudyDate_DICOM", "StudyID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM",
    "Manufacturer_DICOM", "PhotometricInterpretation_DICOM", "BitsStored_DICOM", "Rows_DICOM",
    "Columns_DICOM", "ReportID", "Report", "MethodLabel",
)
_QUOTED = r"'[^'\\]*'"
_FLAT_LIST = re.compile(rf"\[(?:{_QUOTED}(?:, *{_QUOTED})*)?\]")
_NESTED_LIST = re.compile(rf"\[(?:{_FLAT_LIST.pattern}(?:, *{_FLAT_LIST.pattern})*)?\]")
_ITEM = re.compile(r"'([^'\\]*)'")
_INNER = re.compile(r"\[([^\[\]]*)\]")


def _literal_list(raw: str) -> list | None:
    """A Python list literal from PadChest's CSV; None for blank / 'nan' / not a list.

    Lists of quoted strings (and lists of them) take a regex; anything else goes through
    ``ast.literal_eval`` (ten times slower: 160,861 rows twice).
    """
    raw = raw.strip()
    if raw in ("", "nan", "None"):
        return None
    if _FLAT_LIST.fullmatch(raw):
        return _ITEM.findall(raw)
    if _NESTED_LIST.fullmatch(raw):
        return [_ITEM.findall(inner) for inner in _INNER.findall(raw[1:-1])]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _loc_side(locs: Sequence[str]) -> str | None:
    left = any("left" in x for x in locs)
    right = any("right" in x for x in locs)
    if any("bilateral" in x for x in locs) or (left and right):
        return "bilateral"
    return "left" if left else ("right" if right else None)


def _padchest_mentions(raw: str) -> dict[str, list[str | None]]:
    """Side mentions of effusion / pneumothorax in ``LabelsLocalizationsBySentence``.

    Only physician-labelled rows have sentences (lists of lists); model-labelled rows hold a
    flat list and give no side. A side comes from the sentence-level label itself
    ('pleural effusion left side'), else from the sentence's 'loc left/right/bilateral' when the
    finding is the sentence's only label (with other labels, the location may be theirs).
    """
    value = _literal_list(raw)
    if not value or not all(isinstance(s, list) for s in value):
        return {}
    out: dict[str, list[str | None]] = {}
    for sentence in value:
        items = [x.strip() for x in sentence if isinstance(x, str)]
        locs = [x for x in items if x.startswith("loc ")]
        found = [x for x in items if x and not x.startswith("loc ")]
        for label in found:
            m = _PADCHEST_SIDE.match(label)
            base, side = (m.group(1), m.group(2)) if m else (label, None)
            if side == "both":
                side = "bilateral"
            if side is None and len(set(found)) == 1:
                side = _loc_side(locs)
            for parent in L.PADCHEST_SIDED_LABELS.get(base, ()):
                out.setdefault(parent, []).append(side)
    return out


def _padchest_canonical(found: Sequence[list[str] | None], sentences: Sequence[str]
                        ) -> np.ndarray:
    """Canonical labels of PadChest rows: label lists mapped, sides from the sentences."""
    sets, sides = [], []
    for labs, raw in zip(found, sentences, strict=True):
        targets = None if labs is None else {
            t for lab in labs for t in L.PADCHEST_TO_CANONICAL.get(lab, ())}
        sets.append(targets)
        mentions = _padchest_mentions(raw) if targets else {}
        sides.append({p: L.side_values(m) for p, m in mentions.items() if p in targets})
    return L.canonical_from_sets(sets, sides, L.mapped_targets(L.PADCHEST_TO_CANONICAL))


class PadChest(XrayDataset):
    """PadChest (Bustos et al., Medical Image Analysis 2020): 160,861 images, 67,625 patients.

    ``root`` holds ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (plain or .gz) and
    the PNGs, either in the download's numbered folders (``<image_dir>/<ImageDir>/<ImageID>``)
    or all in one (``<image_dir>/<ImageID>``); ``image_dir`` defaults to ``root``. Own labels:
    the 193 label strings of `labels.PADCHEST_LABELS`, from the ``Labels`` column (a Python
    list literal; the file pads many entries with a leading blank, which is stripped). Rows
    whose labels are missing ('nan') or empty are unknown (NaN). Strings outside the vocabulary
    are counted in ``unknown_labels`` and ignored. No official split: patients are hashed.
    """

    name = "padchest"
    official_by_default = False

    def __init__(self, root: str | Path, *, csv_file: str | Path | None = None,
                 image_dir: str | Path | None = None, **options: Any) -> None:
        root = _root(root, "PadChest")
        csv_path = (root / csv_file if csv_file else _find_file(
            root, ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"], "PadChest CSV"))
        images = Path(image_dir).expanduser() if image_dir else root
        names = L.PADCHEST_LABELS
        col_of = {n: j for j, n in enumerate(names)}
        subdir: dict[str, bool] = {}
        cols = _Columns()
        found: list[list[str] | None] = []  # each row's labels (None: unlabelled)
        sentences: list[str] = []
        self.unknown_labels: Counter = Counter()
        for _, row in _iter_csv(csv_path, ["ImageID", "ImageDir", "PatientID", "Projection",
                                           "Labels", "LabelsLocalizationsBySentence"]):
            raw = _literal_list(row["Labels"])
            labs = [x.strip() for x in raw or () if isinstance(x, str) and x.strip()] or None
            self.unknown_labels.update(lab for lab in labs or () if lab not in col_of)
            found.append(labs)
            sentences.append(row["LabelsLocalizationsBySentence"])
            d = row["ImageDir"]
            if d not in subdir:
                subdir[d] = (images / d).is_dir()
            cols.append({"id": row["ImageID"], "patient_id": row["PatientID"],
                         "path": (f"{images}/{d}/{row['ImageID']}" if subdir[d] else
                                  f"{images}/{row['ImageID']}"),
                         "view": _normal_view(row["Projection"]),
                         **{k: row.get(k, "") for k in _PADCHEST_KEEP}})
        if self.unknown_labels:
            log.warning("%s: %d label string(s) outside PadChest's vocabulary ignored: %s",
                        csv_path, sum(self.unknown_labels.values()),
                        ", ".join(list(self.unknown_labels)[:5]))
        values = np.zeros((len(found), len(names)), np.float32)  # 160k x 193: fill in place
        for i, labs in enumerate(found):
            if labs is None:
                values[i] = np.nan
            else:
                values[i, [col_of[lab] for lab in labs if lab in col_of]] = 1.0
        super().__init__(Table(cols), values, names,
                         canonical=lambda: _padchest_canonical(found, sentences), **options)


# ---------------------------------------------------------------------------------------------
# a folder of images + a CSV


_RESERVED = ("id", "patient_id", "report", "split", "view")


class FolderCSV(XrayDataset):
    """A folder of images and a CSV: a ``path`` column (relative to ``root`` or absolute) and
    one column per label (1, 0, -1 uncertain, blank unknown).

    Optional columns: ``id`` (default: the path), ``patient_id`` (default: the id, i.e. every
    image its own patient: give it whenever patients have several images), ``report``,
    ``view`` and ``split`` (train / val / validate / test: the official split). Label columns
    are ``label_columns``, or every other column. Columns named like canonical labels map onto
    them as they are; ``canonical_map`` ({column: [canonical, ...]}) maps others.
    """

    name = "folder_csv"

    def __init__(self, root: str | Path, *, csv_file: str | Path = "labels.csv",
                 path_column: str = "path", label_columns: Sequence[str] | None = None,
                 uncertain: str = "ignore",
                 canonical_map: Mapping[str, Sequence[str]] | None = None,
                 **options: Any) -> None:
        root = _root(root, "image")
        csv_path = Path(csv_file).expanduser()
        csv_path = csv_path if csv_path.is_absolute() else root / csv_path
        header = _csv_header(csv_path)
        names = list(label_columns) if label_columns is not None else [
            c for c in header if c and c != path_column and c not in _RESERVED]
        if not names:
            raise InputError(csv_path, f"no label columns besides {path_column!r}")
        cols = _Columns()
        rows: list[list[float]] = []
        for line, row in _iter_csv(csv_path, [path_column, *names]):
            rid = row.get("id") or row[path_column]
            p = row[path_column]
            rec = {"id": rid, "patient_id": row.get("patient_id") or rid,
                   "path": p if Path(p).is_absolute() else f"{root}/{p}",
                   "view": _normal_view(row.get("view", ""))}
            if "split" in header:
                rec["official_split"] = _folder_split(row["split"], csv_path, line)
            if "report" in header:
                rec["report"] = row["report"]
            cols.append(rec)
            rows.append(_label_values(row, names, csv_path, line))
        values = resolve_uncertain(_matrix(rows, len(names)), uncertain)
        mapping = dict(canonical_map) if canonical_map is not None else {
            n: (n,) for n in names if n in L.CANONICAL_NAMES}
        super().__init__(
            Table(cols), values, names,
            canonical=lambda: L.map_to_canonical(values, names, mapping), **options)


def _folder_split(raw: str, path: Path, line: int) -> str:
    s = {"validate": "val", "valid": "val", "validation": "val"}.get(raw.strip(), raw.strip())
    if s not in (*SPLITS, ""):
        raise InputError(path, f"line {line}: unknown split {raw!r} (train, val, test)")
    return s
