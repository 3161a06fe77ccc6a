"""Decode once: resized images in memory-mapped shards, indexed by their source file.

Decoding a 3000 x 2500 JPEG or 16-bit PNG costs tens of milliseconds; an epoch over MIMIC-CXR
decodes 377,000 of them. The cache decodes and resizes each source file once, stores it as
``uint16`` (``round(x * 65535)``, the workbench's 16-bit convention, so nothing is lost against a
16-bit PNG), and every later epoch and run reads a memory map instead.

Layout under ``<cache_dir>/<H>x<W>/``:

- ``index.jsonl``: a header line, then one JSON line per source file: ``{"key": K, "slot": n}``
  or ``{"key": K, "bad": reason}``. The key is a SHA-256 of the source's real path, byte size
  and mtime (plus a reader variant), so an edited or replaced file is decoded again and an
  unchanged one never is, and no folder or file name (``DOE_JOHN_123/IM1``) reaches the cache.
  A ``biomed-image-cache-v1`` index (whose keys were the plain paths) is removed with its shards
  and rebuilt, with one warning. Lines are only appended, after the pixels they point at are flushed: an
  interrupted build loses at most the last chunk, and the next build resumes from the index.
- ``shard-00000.npy``, ...: ``uint16`` arrays of ``shard_size x H x W`` (plain ``.npy``: they
  open with ``np.load(mmap_mode="r")``); slot ``n`` is row ``n % shard_size`` of shard
  ``n // shard_size``.
- ``.lock``: held (``flock``) while building, so that the ranks of a multi-GPU launch that build
  the same cache wait for one another instead of writing the same slots.

Files that cannot be read are recorded as bad with their reason and skipped, also by later
builds (they are not decoded twice either); the count is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomed.errors import BiomedError, ConfigError
from biomed.imaging.core import pixels
from biomed.imaging.dicom.guard import decoder_errors
from biomed.locks import file_lock

__all__ = ["FORMAT", "BuildResult", "ImageCache"]

log = logging.getLogger(__name__)

FORMAT = "biomed-image-cache-v2"  # v2: keys are hashes of the source path (v1: the path)
_OLD_FORMATS = ("biomed-image-cache-v1",)  # rebuilt: their keys hold source paths
_CHUNK = 64  # images decoded between two index appends

Decoder = Callable[[Path, tuple[int, int]], np.ndarray]


@dataclass
class BuildResult:
    """What one `ImageCache.build` call found: a slot per requested path (None: bad file)."""

    slots: list[int | None]
    bad: dict[str, str] = field(default_factory=dict)  # source path -> reason
    decoded: int = 0  # decoded by this call
    reused: int = 0  # found in the cache


def _digest(text: str) -> str:
    """The index key for ``text`` (a path and its stat): SHA-256, hex."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class ImageCache:
    """A decode-once cache of images resized to ``size`` (int: square, or (height, width))."""

    def __init__(self, root: str | Path, size: int | Sequence[int], *, shard_size: int = 1024):
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h <= 0 or w <= 0 or shard_size <= 0:
            raise ConfigError(f"image cache: size {size!r} and shard_size {shard_size} "
                              "must be positive")
        self.size = (h, w)
        self.dir = Path(root).expanduser() / f"{h}x{w}"
        self.index_path = self.dir / "index.jsonl"
        self.shard_size = shard_size
        self.decodes = 0  # images decoded by this instance, over all builds
        self._entries: dict[str, int] = {}
        self._bad: dict[str, str] = {}
        self._next = 0
        self._shards: dict[int, np.memmap] = {}
        self._writable = False
        if self.index_path.is_file():
            self._load_index()

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers under spawn) without the open memory maps."""
        state = self.__dict__.copy()
        state["_shards"], state["_writable"] = {}, False
        return state

    # -- index ---------------------------------------------------------------------------

    @staticmethod
    def key(path: str | Path, variant: str = "") -> str:
        """The index key of a source file (a hash: no path is stored); raises
        FileNotFoundError for a missing one."""
        st = os.stat(path)
        return _digest(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{variant}")

    def _header(self) -> dict:
        return {"format": FORMAT, "size": list(self.size), "dtype": "uint16",
                "shard_size": self.shard_size}

    def _load_index(self, locked: bool = False) -> None:
        """Read the index (the last line for a key wins); drop a torn last line. An index of an
        old format is read as empty and, when ``locked`` (a build), removed with its shards."""
        raw = self.index_path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # interrupted mid-append: cut the partial line
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.index_path, "r+b") as f:
                f.truncate(len(raw))
        lines = raw.decode("utf-8").splitlines()
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("format") in _OLD_FORMATS and header.get("size") == list(self.size):
            self._entries, self._bad, self._next = {}, {}, 0
            if locked:
                log.warning("%s: an image cache of the old format %s (its index holds source "
                            "paths): removed, rebuilding", self.dir, header["format"])
                self._close_shards()
                for shard in self.dir.glob("shard-*.npy"):
                    shard.unlink()
                self.index_path.unlink()
            return
        if header.get("format") != FORMAT or header.get("size") != list(self.size):
            raise ConfigError(f"{self.index_path}: not a {FORMAT} index for size "
                              f"{self.size[0]}x{self.size[1]}; remove the folder or choose "
                              "another cache_dir")
        self.shard_size = int(header["shard_size"])
        entries, bad, top = {}, {}, -1
        for line in lines[1:]:
            rec = json.loads(line)
            if "slot" in rec:
                entries[rec["key"]] = int(rec["slot"])
                bad.pop(rec["key"], None)
                top = max(top, int(rec["slot"]))
            else:
                bad[rec["key"]] = rec["bad"]
                entries.pop(rec["key"], None)
        self._entries, self._bad, self._next = entries, bad, top + 1

    def _append(self, records: list[dict]) -> None:
        new = not self.index_path.is_file() or self.index_path.stat().st_size == 0
        with open(self.index_path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps(self._header()) + "\n")
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def _lock(self):
        return file_lock(self.dir / ".lock")

    # -- shards --------------------------------------------------------------------------

    def _shard(self, n: int, write: bool = False) -> np.memmap:
        if write and not self._writable:
            self._close_shards()
            self._writable = True
        if n not in self._shards:
            p = self.dir / f"shard-{n:05d}.npy"
            if write and not p.is_file():
                arr = np.lib.format.open_memmap(p, mode="w+", dtype=np.uint16,
                                                shape=(self.shard_size, *self.size))
            else:
                arr = np.load(p, mmap_mode="r+" if write else "r")
            self._shards[n] = arr
        return self._shards[n]

    def _close_shards(self) -> None:
        for arr in self._shards.values():
            if arr.mode != "r":
                arr.flush()
        self._shards.clear()
        self._writable = False

    def slot_of(self, path: str | Path, variant: str = "") -> int | None:
        """The slot holding ``path`` when it is cached (and unchanged), else None."""
        try:
            return self._entries.get(self.key(path, variant))
        except OSError:
            return None

    def read(self, slot: int) -> np.ndarray:
        """The cached image in the workbench convention (float32 in [0, 1], H x W)."""
        if not 0 <= slot < self._next:
            raise IndexError(f"{self.dir}: no cached image in slot {slot}")
        arr = self._shard(slot // self.shard_size)[slot % self.shard_size]
        return arr.astype(np.float32) / np.float32(65535.0)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bad(self) -> dict[str, str]:
        """Index keys of the files recorded as unreadable, with the reason."""
        return dict(self._bad)

    # -- building ------------------------------------------------------------------------

    def build(self, paths: Sequence[str | Path], decode: Decoder, *, variant: str = "",
              workers: int | None = None, progress: bool = True,
              desc: str = "caching images") -> BuildResult:
        """Make sure every path is cached; decode only those that are not (resumable).

        ``decode(path, size)`` returns the image in the workbench convention, at any size (a
        decoder may use ``size`` to decode a JPEG at reduced resolution); the cache resizes it
        to ``size``. A file that is missing or that ``decode`` fails on, in any way but Ctrl-C
        or exit (`biomed.imaging.dicom.guard.decoder_errors`), is recorded as bad and skipped.
        ``variant`` names the decoder's settings: the same file read differently is cached
        separately.
        """
        from tqdm.auto import tqdm

        result = BuildResult(slots=[None] * len(paths))
        with self._lock():
            if self.index_path.is_file():
                self._load_index(locked=True)
            todo: dict[str, list[int]] = {}  # key -> positions asking for it
            where: dict[str, Path] = {}
            missing: list[dict] = []
            for i, p in enumerate(paths):
                try:
                    k = self.key(p, variant)
                except OSError as e:
                    reason = "file not found" if isinstance(e, FileNotFoundError) else str(e)
                    result.bad[str(p)] = reason
                    gone = _digest(f"{p}|missing")
                    if self._bad.get(gone) != reason:
                        missing.append({"key": gone, "bad": reason})
                        self._bad[gone] = reason
                    continue
                if k in self._entries:
                    result.slots[i] = self._entries[k]
                    result.reused += 1
                elif k in self._bad:
                    result.bad[str(p)] = self._bad[k]
                else:
                    todo.setdefault(k, []).append(i)
                    where[k] = Path(p)
            if missing:
                self._append(missing)
            if todo:
                keys = list(todo)
                bar = tqdm(total=len(keys), desc=f"{desc} {self.size[0]}x{self.size[1]}",
                           unit="img", disable=not progress, mininterval=1.0)
                n_workers = workers or min(4, os.cpu_count() or 1)
                try:
                    with ThreadPoolExecutor(max_workers=n_workers) as pool:
                        for start in range(0, len(keys), _CHUNK):
                            chunk = keys[start:start + _CHUNK]
                            outs = list(pool.map(lambda k: self._decode(where[k], decode), chunk))
                            self._store(chunk, outs, todo, where, result)
                            bar.update(len(chunk))
                finally:
                    bar.close()
                    self._close_shards()
        if result.bad:
            log.warning("%s: %d of %d image(s) could not be read and were skipped "
                        "(reasons in %s)", self.dir, len(result.bad), len(paths), self.index_path)
        return result

    def _decode(self, path: Path, decode: Decoder) -> np.ndarray | str:
        """The resized uint16 image, or the reason it could not be read: any failure of the
        decoder (a decoder panic or a RecursionError included: `guard.decoder_errors`) is the
        file's, recorded as bad so that no later build tries it again; Ctrl-C still stops."""
        try:
            with decoder_errors(path, "cannot read"):
                img = decode(path, self.size)
                img = pixels.resize(pixels.check_image(np.asarray(img), str(path)), self.size)
                return pixels.to_uint16(img)
        except BiomedError as e:
            reason = getattr(e, "reason", None) or str(e)
            return " ".join(reason.replace(str(path), "<file>").split())

    def _store(self, chunk: list[str], outs: list, todo: dict[str, list[int]],
               where: dict[str, Path], result: BuildResult) -> None:
        records = []
        for k, out in zip(chunk, outs, strict=True):
            self.decodes += 1
            result.decoded += 1
            if isinstance(out, str):
                self._bad[k] = out
                records.append({"key": k, "bad": out})
                result.bad[str(where[k])] = out
                continue
            slot = self._next
            self._next += 1
            self._shard(slot // self.shard_size, write=True)[slot % self.shard_size] = out
            self._entries[k] = slot
            records.append({"key": k, "slot": slot})
            for i in todo[k]:
                result.slots[i] = slot
        for arr in self._shards.values():  # pixels reach the disk before the index names them
            arr.flush()
        self._append(records)
