"""Run a per-file function over many files in worker processes that may die, and say which
file killed them.

A decoder can take its whole process down: a segfault in a C or Rust codec, the out-of-memory
killer, an ``abort``. Python cannot catch that in-process, and a ``multiprocessing.Pool`` whose
worker dies waits forever. So batch commands (`biomed.imaging.dicom.ingest`) decode in a
`concurrent.futures.ProcessPoolExecutor`, which reports a dead worker as ``BrokenProcessPool``,
and this module makes that survivable and attributable:

- **Started marks**: before a worker touches a file it appends the file's id to an append-only
  marks file (`StartedMarks`, one JSON line, one ``write``). When the pool breaks, the files
  that were started but returned nothing are the *suspects*; the ones never started go back to
  the queue of a fresh pool.
- **Isolation**: each suspect is run again alone, in a process of its own. The worker the
  culprit kills also takes down its innocent neighbours (the executor terminates them), so a
  suspect that succeeds alone was one of those; one that kills its process again is reported
  through ``crashed(task, reason)`` with the exit status (``killed by signal SIGSEGV``) and the
  batch goes on.
- **Across runs**: marks outlive the run. A file marked by an earlier run that has neither an
  output nor an error (the whole run died on it: an in-process decoder with ``--workers 1``, an
  OOM kill of the parent) is a suspect of the next run and is isolated first.

With one worker the function runs in this process (no process start-up, easy to debug) and
every Python-level failure is the caller's to convert (`biomed.imaging.dicom.guard`); only the
suspects of an earlier run are isolated in a child process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

from biomed.errors import BiomedError
from biomed.imaging.dicom.guard import one_line

__all__ = ["CRASH_HOOK_ENV", "StartedMarks", "Task", "WorkersFailed", "cut_torn_tail",
           "run_tasks"]

# Test-only: a worker process (never this process) calls os._exit(70) on the task whose name
# (or its last path component) equals this variable's value: how tests make a worker die.
CRASH_HOOK_ENV = "BIOMED_TEST_WORKER_EXIT_ON"
_MAX_EMPTY_BREAKS = 3  # pools that die before starting any file: the workers cannot run at all


class Task(NamedTuple):
    """One unit of work: ``id`` (stable, written to the marks file), ``name`` (the file's name
    under the batch root; never written anywhere) and the arguments of the work function."""

    id: str
    name: str
    args: Any


class WorkersFailed(BiomedError):
    """Worker processes die before they start any file (a broken environment, not a file)."""


def cut_torn_tail(path: Path) -> None:
    """Cut a file back to its last newline: a line torn by a full disk or a kill is dropped
    instead of having the next append glued onto it."""
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = max(0, size - (1 << 16))
        while True:  # find the last newline, reading backwards
            f.seek(start)
            at = f.read(size - start).rfind(b"\n")
            if at >= 0:
                f.truncate(start + at + 1)
                return
            if start == 0:
                f.truncate(0)
                return
            start = max(0, start - (1 << 16))


class StartedMarks:
    """The append-only file of started task ids (``{"id": ...}`` per line)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def mark(self, task_id: str) -> None:
        line = (json.dumps({"id": task_id}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one short O_APPEND write: whole lines, whatever the writers
        finally:
            os.close(fd)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, offset: int = 0) -> set[str]:
        """Ids marked from byte ``offset`` on (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return set()
        ids = set()
        for line in data.split(b"\n")[:-1]:
            try:
                ids.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line names no file
        return ids

    def rewrite(self, ids: Sequence[str]) -> None:
        """Keep only these marks (the others' outcomes are recorded elsewhere)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------------
# the worker side

_STATE: dict[str, Any] = {}


def _init_worker(marks: str, hook: str | None, init: Callable[..., None],
                 initargs: tuple) -> None:
    _STATE.update(marks=StartedMarks(Path(marks)), hook=hook)
    init(*initargs)


def _call(work: Callable[[Any], Any], task: Task) -> Any:
    _STATE["marks"].mark(task.id)
    hook = _STATE.get("hook")
    if hook and hook in (task.name, task.name.rsplit("/", 1)[-1]):
        os._exit(70)
    return work(task.args)


# ---------------------------------------------------------------------------------------------
# the parent side


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: no fork of a process that may hold threads (torch, tqdm); cheap per worker
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def death_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        oom = ": out of memory?" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{oom}"
    return f"exit status {exitcode}"


def run_tasks(tasks: Sequence[Task], work: Callable[[Any], Any], *, workers: int,
              init: Callable[..., None], initargs: tuple, marks: StartedMarks,
              crashed: Callable[[Task, str], Any], suspects: Sequence[Task] = (),
              on_result: Callable[[], None] | None = None) -> Iterator[Any]:
    """Yield ``work(task.args)`` for every task and suspect (order not kept).

    ``work`` and ``init`` are module-level functions (they are pickled by name); ``init(*initargs)``
    runs once per worker process (and once here with ``workers == 1``). ``work`` must return a
    result for every failure it can catch; a task whose process dies is given to
    ``crashed(task, reason)`` instead, whose return value is yielded. ``suspects`` (files an
    earlier run died on) are run first, each alone in a child process.
    """
    hook = os.environ.get(CRASH_HOOK_ENV) or None
    args = (str(marks.path), hook, init, initargs)
    for task in suspects:
        yield _isolated(task, work, args, crashed)
    if workers <= 1:
        init(*initargs)
        for task in tasks:
            marks.mark(task.id)
            yield work(task.args)
        return
    pending, empty_breaks = deque(tasks), 0
    while pending:
        new_suspects: list[Task] = []
        yield from _pool_pass(pending, new_suspects, work, args, workers, marks, crashed)
        for task in new_suspects:
            yield _isolated(task, work, args, crashed)
        empty_breaks = empty_breaks + 1 if pending and not new_suspects else 0
        if empty_breaks >= _MAX_EMPTY_BREAKS:
            raise WorkersFailed(f"worker processes died {empty_breaks} times before starting any "
                                f"file; run with --workers 1 to see why")


def _pool_pass(pending: deque[Task], suspects: list[Task], work: Callable[[Any], Any],
               args: tuple, workers: int, marks: StartedMarks,
               crashed: Callable[[Task, str], Any]) -> Iterator[Any]:
    """Run ``pending`` in one pool until it is empty or the pool breaks; on a break, the started
    tasks that returned nothing go to ``suspects`` and the others back to ``pending``."""
    n = min(workers, len(pending))
    offset = marks.size()
    pool = ProcessPoolExecutor(n, mp_context=_context(), initializer=_init_worker, initargs=args)
    inflight: dict[Future, Task] = {}
    lost: list[Task] = []
    try:
        while pending or inflight:
            while pending and len(inflight) < 2 * n and not lost:
                task = pending.popleft()
                inflight[pool.submit(_call, work, task)] = task
            if not inflight:
                break
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                task = inflight.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    lost.append(task)
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as e:  # noqa: B036 -- e.g. a result that cannot be pickled
                    result = crashed(task, f"the worker failed ({one_line(e)})")
                yield result
            if lost:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if lost or inflight:
        lost += inflight.values()  # their futures failed with the pool
        started = marks.read(offset)
        for task in reversed(lost):
            if task.id in started:
                suspects.append(task)
            else:
                pending.appendleft(task)
        suspects.reverse()


def _isolated(task: Task, work: Callable[[Any], Any], args: tuple,
              crashed: Callable[[Task, str], Any]) -> Any:
    """Run one task alone in a fresh process; its death is the task's, not a neighbour's."""
    pool = ProcessPoolExecutor(1, mp_context=_context(), initializer=_init_worker, initargs=args)
    try:
        fut = pool.submit(_call, work, task)
        procs = list(getattr(pool, "_processes", {}).values())  # for the exit status
        try:
            return fut.result()
        except BrokenProcessPool:
            pool.shutdown(wait=True)
            code = procs[0].exitcode if len(procs) == 1 else None
            return crashed(task, f"the decoder crashed the worker process "
                                 f"({death_reason(code)})")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: B036
            return crashed(task, f"the worker failed ({one_line(e)})")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
