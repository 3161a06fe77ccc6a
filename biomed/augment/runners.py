"""Run a list of independent jobs serially in this process or as Ray tasks.

A sweep (the augmentation grid) is many independent cells; this module's one job is to run
``fn(item)`` for every item and hand back, for each, the result or a one-line error, so that one
failed cell never kills the sweep. Two runners:

- ``serial`` (the default): one after another in this process, in order.
- ``ray``: one Ray task per item. ``address=None`` starts a local Ray on this machine
  (``num_cpus`` of them, or all the machine's) and shuts it down afterwards; ``address="auto"``
  or ``"ray://host:10001"`` / ``"host:6379"`` joins a running cluster. No ``runtime_env`` is
  set: on one machine the workers run the driver's Python and share its environment; on a
  cluster, ``biomed`` (with the ``cluster`` extra) must be installed, same version, on every
  node, and the items should carry absolute paths that every node can see (a worker's current
  folder is not the driver's).

Each Ray task reserves ``cpus_per_task`` CPUs and limits torch's (and OpenMP/MKL's) threads to
that many before calling ``fn``, so that N parallel fits do not each spawn one thread per core.
Ray is imported lazily: the serial runner works without the ``cluster`` extra.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from biomed.errors import ConfigError

RUNNERS = ("serial", "ray")
MAX_ERROR_CHARS = 500  # an error record is one line; a huge message is cut to this

JobFn = Callable[[Any], dict]
SetupFn = Callable[[], None]
DoneFn = Callable[[Any, dict | None, str | None], None]
Outcome = tuple[Any, dict | None, str | None]  # (item, result, error)


def one_line_error(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line (whitespace collapsed), cut to MAX_ERROR_CHARS."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _call(fn: JobFn, item: Any, setup: SetupFn | None) -> tuple[dict | None, str | None]:
    """Run ``setup`` then ``fn(item)``; any exception becomes a one-line error, not a raise."""
    try:
        if setup is not None:
            setup()
        result = fn(item)
        if not isinstance(result, dict):
            return None, f"TypeError: the job returned {type(result).__name__}, expected a dict"
        return result, None
    except Exception as e:  # noqa: BLE001 - a failed job is a record, never the sweep's end
        return None, one_line_error(e)


def limit_threads(n: int) -> None:
    """Cap this process's compute threads at ``n``: torch if it is loaded, OpenMP/MKL if not yet.

    The environment variables reach a torch imported later in this process; an already-imported
    torch is set directly (importing torch here just for this would cost every task seconds).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def _ray_task(
    fn: JobFn, item: Any, setup: SetupFn | None, threads: int
) -> tuple[dict | None, str | None]:
    """Body of one Ray task (module level so that workers import it by name)."""
    limit_threads(threads)
    return _call(fn, item, setup)


def run_jobs(
    fn: JobFn,
    items: Sequence[Any],
    *,
    runner: str = "serial",
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: int = 1,
    setup: SetupFn | None = None,
    on_done: DoneFn | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> list[Outcome]:
    """Run ``fn(item)`` for every item; return ``(item, result, error)`` in the items' order.

    Exactly one of ``result`` (the dict ``fn`` returned) and ``error`` (a one-line message) is
    not None. ``setup`` runs before each job in the process that runs it (this one for serial, a
    Ray worker for ray). ``on_done(item, result, error)`` is called in this process as each job
    finishes (in completion order under Ray), e.g. to advance a progress bar. ``fn``, ``items``
    and ``setup`` must be picklable for Ray (module-level functions, not lambdas or closures).
    ``init_kwargs`` are passed on to ``ray.init`` (e.g. ``log_to_driver=False``).
    """
    if runner not in RUNNERS:
        raise ConfigError(f"runner={runner!r}: expected one of {', '.join(RUNNERS)}")
    if not isinstance(cpus_per_task, int) or cpus_per_task < 1:
        raise ConfigError(f"cpus_per_task={cpus_per_task!r}: expected an integer >= 1")
    if runner == "serial":
        return _run_serial(fn, items, setup, on_done)
    return _run_ray(fn, items, address, num_cpus, cpus_per_task, setup, on_done, init_kwargs)


def _run_serial(
    fn: JobFn, items: Sequence[Any], setup: SetupFn | None, on_done: DoneFn | None
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for item in items:
        result, error = _call(fn, item, setup)
        outcomes.append((item, result, error))
        if on_done is not None:
            on_done(item, result, error)
    return outcomes


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "runner=ray needs the cluster extra: pip install -e '.[cluster]' "
            f"(ray could not be imported: {e})"
        ) from None
    return ray


def _start_ray(
    ray: Any, address: str | None, num_cpus: int | None, cpus_per_task: int,
    init_kwargs: Mapping[str, Any] | None,
) -> bool:
    """Connect to or start Ray unless it is already up; True when this call started it."""
    if ray.is_initialized():  # the caller owns that Ray (and its address and size)
        return False
    kwargs = dict(init_kwargs or {})
    if address is None:
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus={num_cpus!r}: expected an integer >= 1")
        total = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        if cpus_per_task > total:  # Ray would wait forever for a task that cannot fit
            raise ConfigError(
                f"cpus_per_task={cpus_per_task} is more than the local Ray's {total} CPUs"
            )
        kwargs.setdefault("include_dashboard", False)  # the dashboard needs ray[default]
        ray.init(num_cpus=num_cpus, **kwargs)
    else:
        if num_cpus is not None:  # Ray refuses it: a cluster's CPUs are set by `ray start`
            raise ConfigError(
                f"num_cpus={num_cpus} applies to a local Ray only; with address={address!r} "
                "the cluster's nodes set their CPUs (`ray start --num-cpus`)"
            )
        ray.init(address=address, **kwargs)
    return True


def _run_ray(
    fn: JobFn, items: Sequence[Any], address: str | None, num_cpus: int | None,
    cpus_per_task: int, setup: SetupFn | None, on_done: DoneFn | None,
    init_kwargs: Mapping[str, Any] | None,
) -> list[Outcome]:
    ray = _import_ray()
    from ray.exceptions import RayError

    started = _start_ray(ray, address, num_cpus, cpus_per_task, init_kwargs)
    pending: dict[Any, int] = {}
    try:
        # max_retries=0: a cell that killed its worker (out of memory, a crash) is recorded as
        # failed rather than run again; its error says why.
        task = ray.remote(num_cpus=cpus_per_task, max_retries=0)(_ray_task)
        fn_ref = ray.put(fn)  # shipped once, not once per task
        setup_ref = ray.put(setup)
        for i, item in enumerate(items):
            pending[task.remote(fn_ref, item, setup_ref, cpus_per_task)] = i
        outcomes: list[Outcome | None] = [None] * len(items)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i = pending.pop(ref)
            try:
                result, error = ray.get(ref)
            except RayError as e:  # the worker died or the task could not run
                result, error = None, one_line_error(e)
            outcomes[i] = (items[i], result, error)
            if on_done is not None:
                on_done(items[i], result, error)
        return [o for o in outcomes if o is not None]
    finally:
        for ref in pending:  # interrupted (Ctrl-C, on_done raised): stop what has not run
            ray.cancel(ref)
        if started:
            ray.shutdown()
