"""Finding the files of a source folder without leaving it.

A folder to ingest or score may hold hidden files (``.DS_Store``), links to elsewhere and link
cycles. `find_files` lists each regular file once, follows a symbolic link only while it stays
inside the folder (a PACS export must not pull in files from outside the tree it names), and
walks a folder reached twice (a cycle) once.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["find_files"]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _linked(p: Path, real: Path, src: Path, root: Path) -> bool:
    """Whether ``p`` is reached through a symbolic link (its path is not its real path)."""
    try:
        return real.relative_to(root) != p.relative_to(src)
    except ValueError:
        return True


def _resolve(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a cycle of links (RuntimeError before Python 3.13)
        return p


def find_files(src: Path, exclude: Path | None = None,
               refused: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every regular file under ``src``, each once, sorted per folder; hidden files
    (``.DS_Store``...) are ignored. Symbolic links are followed only while they stay inside
    ``src``: a link out of it or a broken one is left out (and added to ``refused`` with the
    reason, when given); a folder reached twice (a link cycle) is walked once."""
    root = Path(src).resolve()
    seen_dirs: set[tuple[int, int]] = set()
    found: list[tuple[Path, Path, bool]] = []  # (path, real path, reached through a link)

    def refuse(p: Path, why: str) -> None:
        if refused is not None:
            refused.append((p, why))

    for dirpath, dirs, names in os.walk(src, followlinks=True):
        d = Path(dirpath)
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        keep = []
        for name in sorted(dirs):
            p = d / name
            if name.startswith(".") or (exclude is not None and _resolve(p) == exclude):
                continue
            if p.is_symlink() and not _inside(_resolve(p), root):
                refuse(p, "a symbolic link to a folder outside SRC_DIR (not followed)")
                continue
            keep.append(name)
        dirs[:] = keep
        for name in sorted(names):
            p = d / name
            if name.startswith("."):
                continue
            if p.is_symlink() and not p.exists():
                refuse(p, "a broken symbolic link (or a cycle of links)")
                continue
            real = _resolve(p)
            if p.is_symlink() and not _inside(real, root):
                refuse(p, "a symbolic link to a file outside SRC_DIR (not followed)")
                continue
            if p.is_file():
                found.append((p, real, _linked(p, real, Path(src), root)))
    best: dict[Path, tuple[Path, bool]] = {}  # a file reached twice: its own path, not a link's
    for p, real, linked in found:
        if real not in best or (best[real][1] and not linked):
            best[real] = (p, linked)
    return [p for p, real, _ in found if best[real][0] == p]
