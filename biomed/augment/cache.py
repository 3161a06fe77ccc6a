"""The synthetic image cache: one image per (source, prompt, seed), made once, kept with its
provenance, reused by every cell, sweep and rerun.

Layout, one folder per source id (a generator's ``id`` hashes its weights and sampler settings;
the oracle's hashes the renderer's version and the image size)::

    <cache_dir>/<source id>/source.json          what made the images
    <cache_dir>/<source id>/items/<ab>/<key>.npy uint16 H x W (round(x * 65535)), lungs dark
    <cache_dir>/<source id>/manifest.jsonl       one provenance line per image (+ diverged)

An item's key hashes its prompt text, the findings drawn (the oracle) and its seed, so a changed
prompt is a new item. Each image file is written to a temporary name and renamed, and the
manifest line follows the image, so an interrupted build leaves only whole items; processes that
build the same source at once (cells on Hydra's joblib launcher) take the folder's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomed.imaging.core import pixels
from biomed.locks import file_lock

__all__ = ["Request", "SyntheticCache", "item_key"]


@dataclass(frozen=True)
class Request:
    """One image to have: a prompt (and, for the oracle, the findings to draw) and a seed."""

    text: str
    seed: int
    findings: tuple[str, ...] | None = None  # JSON strings of the findings (hashable)

    @property
    def key(self) -> str:
        return item_key(self.text, self.seed, self.findings)


def item_key(text: str, seed: int, findings: Sequence[str] | None = None) -> str:
    blob = json.dumps([text, int(seed), list(findings) if findings is not None else None])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class SyntheticCache:
    """The images of one source (see the module docstring)."""

    def __init__(self, root: str | Path, source_id: str, describe: dict[str, Any] | None = None):
        self.folder = Path(root).expanduser() / source_id
        (self.folder / "items").mkdir(parents=True, exist_ok=True)
        if describe is not None and not (self.folder / "source.json").exists():
            tmp = self.folder / f"source.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(describe, indent=2, default=str) + "\n")
            os.replace(tmp, self.folder / "source.json")
        self._diverged: dict[str, bool] | None = None

    def path(self, key: str) -> Path:
        return self.folder / "items" / key[:2] / f"{key}.npy"

    def has(self, key: str) -> bool:
        """Whether the image and its manifest line are both there (an image whose line a crash
        cut off is made again, so that no image lacks its provenance)."""
        return key in self.diverged() and self.path(key).is_file()

    def lock(self):
        """The folder's lock (`biomed.locks.file_lock`)."""
        return file_lock(self.folder / ".lock")

    def manifest(self) -> dict[str, dict[str, Any]]:
        """key -> the provenance line written beside the image (torn lines skipped)."""
        out: dict[str, dict[str, Any]] = {}
        path = self.folder / "manifest.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out[row.pop("key")] = row
        return out

    def diverged(self) -> dict[str, bool]:
        """key -> diverged, from the manifest."""
        if self._diverged is None:
            self._diverged = {k: bool(row.get("diverged", False))
                              for k, row in self.manifest().items()}
        return self._diverged

    def load(self, keys: Sequence[str]) -> np.ndarray:
        """The images of ``keys`` (N x H x W float32 in [0, 1])."""
        if not keys:
            return np.zeros((0, 0, 0), np.float32)
        return np.stack([np.load(self.path(k)).astype(np.float32) / np.float32(65535.0)
                         for k in keys])

    def ensure(self, requests: Sequence[Request],
               make: Callable[[list[Request]], tuple[np.ndarray, np.ndarray]],
               provenance: Callable[[Request], dict[str, Any]], *, batch_size: int = 32,
               progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
        """Make the missing images of ``requests`` in batches (``make(batch) -> (images,
        diverged)``) and keep them; returns how many were asked for, made and found cached,
        and the seconds spent making them."""
        unique = list({r.key: r for r in requests}.values())
        with self.lock():
            self._diverged = None  # another process may have added images
            missing = [r for r in unique if not self.has(r.key)]
            t0 = time.perf_counter()
            path = self.folder / "manifest.jsonl"
            if path.exists() and path.stat().st_size:
                with open(path, "rb") as f:  # a line torn by a crash: end it, so the next
                    f.seek(-1, os.SEEK_END)  # line is whole (the torn one is skipped)
                    torn = f.read(1) != b"\n"
                if torn:
                    with open(path, "a", encoding="utf-8") as f:
                        f.write("\n")
            with open(path, "a", encoding="utf-8") as manifest:
                for i in range(0, len(missing), batch_size):
                    batch = missing[i:i + batch_size]
                    images, diverged = make(batch)
                    for r, img, div in zip(batch, images, diverged, strict=True):
                        path = self.path(r.key)
                        path.parent.mkdir(exist_ok=True)
                        tmp = path.with_suffix(f".{os.getpid()}.tmp")
                        with open(tmp, "wb") as f:
                            np.save(f, pixels.to_uint16(np.nan_to_num(np.clip(img, 0, 1))))
                        os.replace(tmp, path)
                        manifest.write(json.dumps({"key": r.key, **provenance(r),
                                                   "diverged": bool(div)}) + "\n")
                    manifest.flush()
                    if progress is not None:
                        progress(len(batch))
            seconds = time.perf_counter() - t0
        self._diverged = None
        return {"requested": len(unique), "generated": len(missing),
                "from_cache": len(unique) - len(missing), "seconds": round(seconds, 2)}
