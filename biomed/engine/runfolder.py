"""The run folder as one training run's own: a lock, leftovers of interrupted saves, and the
checkpoints of other runs.

- One run at a time: ``.train.lock`` in the run folder, held with ``flock`` for the whole of
  ``fit``. The kernel drops the lock when its process ends, however it ends (a SIGKILL, an
  out-of-memory kill), so a stale lock never blocks a resume. One lock per launch: only the main
  process takes it; the other processes of a DDP launch work under it.
- An interrupted save leaves ``.checkpoint-<step>.tmp``: the next run in the folder removes it
  (under the lock, so never another run's save in progress) and says so.
- A fresh run refuses a folder that holds checkpoints already: they belong to another run, and
  pruning or ``resume=latest`` would mix them with this run's (a fresh ``checkpoint-10`` pruned
  at once beside an old ``checkpoint-40``; a later resume picking the old run's state).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from biomed.errors import ConfigError

LOCK_NAME = ".train.lock"
_TMP_RE = re.compile(r"^\.checkpoint-\d+\.tmp$")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.train.lock``.

    The lock file stays (deleting it would let a second run lock a fresh file while the first
    still holds the old one); it holds the pid of the last holder, for the refusal message.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a one-line ConfigError naming the folder and the holder."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unguarded
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.run_dir}: another training run (pid {holder}) is using "
                              f"this run folder; wait for it to finish, or use another run "
                              f"folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_unfinished_saves(run_dir: str | Path) -> list[Path]:
    """Delete the ``.checkpoint-<step>.tmp`` folders that interrupted saves left; returns them.
    Call it under the run's lock only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = sorted(p for p in run_dir.iterdir() if _TMP_RE.match(p.name))
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def check_start(run_dir: Path, resume_from: Path | None, found: list[Path],
                step_of) -> None:
    """Refuse a start that would mix this run's checkpoints with another's.

    ``found``: the folder's complete checkpoints (oldest first); ``step_of(path)``: a
    checkpoint's step. A fresh start needs a folder without checkpoints; a resume needs one
    without checkpoints later than the one it resumes (``resume=latest`` would pick those up
    after this run).
    """
    names = ", ".join(p.name for p in found[-3:]) + (" ..." if len(found) > 3 else "")
    if resume_from is None:
        if found:
            raise ConfigError(f"{run_dir}: holds checkpoints of another run ({names}); to "
                              f"continue that run set trainer.resume=latest, to start over "
                              f"delete them or use another run folder")
        return
    here = resume_from.resolve()
    step = step_of(resume_from)
    later = [p for p in found if p.resolve() != here and step_of(p) > step]
    if later:
        raise ConfigError(f"{run_dir}: holds {', '.join(p.name for p in later)}, later than "
                          f"the checkpoint to resume ({resume_from.name}); delete them or "
                          f"resume from the latest, or resume=latest would pick them up later")
