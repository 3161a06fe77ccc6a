"""One blocking, exclusive lock on a file (``flock``): processes that share a folder (the jobs of
a sweep, the processes of a multi-GPU launch) take it while they check and build what they
share, so the first builds and the others wait and reuse. The lock goes with the process: a
crash releases it. Where there is no ``flock`` (Windows) it does nothing, and the callers'
atomic renames still keep what they write whole."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_lock"]


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, with its folder, when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
