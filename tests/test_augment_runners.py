"""biomed.augment.runners: serial and Ray runners, per-job error records, progress callback."""

from __future__ import annotations

import os
import sys

import pytest

from biomed.augment.runners import MAX_ERROR_CHARS, limit_threads, one_line_error, run_jobs
from biomed.errors import ConfigError


def _square(item: int) -> dict:
    if item == 3:
        raise ValueError("bad item 3\n  second line")
    return {"x": item * item, "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}


def _not_a_dict(item: int) -> dict:
    return item  # type: ignore[return-value]


def test_serial_runs_in_order_and_records_errors_as_one_line():
    calls: list[tuple] = []
    setups: list[int] = []
    out = run_jobs(
        _square, [1, 2, 3, 4],
        setup=lambda: setups.append(1),
        on_done=lambda item, res, err: calls.append((item, res is None, err)),
    )
    assert [item for item, _, _ in out] == [1, 2, 3, 4]
    assert [res["x"] for _, res, _ in out if res is not None] == [1, 4, 16]
    item, res, err = out[2]
    assert res is None and err == "ValueError: bad item 3 second line"
    assert all(e is None for _, _, e in (out[0], out[1], out[3]))
    assert calls == [(1, False, None), (2, False, None), (3, True, err), (4, False, None)]
    assert len(setups) == 4
    assert out[0][1]["pid"] == os.getpid()  # ran here


def test_serial_rejects_a_result_that_is_not_a_dict():
    (_, res, err), = run_jobs(_not_a_dict, [7])
    assert res is None and err.startswith("TypeError:") and "int" in err


def test_setup_failure_is_the_job_error():
    def broken_setup():
        raise RuntimeError("no threads")

    (_, res, err), = run_jobs(_square, [1], setup=broken_setup)
    assert res is None and err == "RuntimeError: no threads"


def test_one_line_error_is_cut_and_names_the_type():
    err = one_line_error(KeyError())
    assert err == "KeyError"
    long = one_line_error(ValueError("x" * 2000))
    assert len(long) == MAX_ERROR_CHARS and long.endswith("...") and "\n" not in long


def test_limit_threads_caps_torch_and_openmp(monkeypatch):
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "7")  # restored after the test
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"runner": "dask"}, "runner='dask'"), ({"cpus_per_task": 0}, "cpus_per_task=0")],
)
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run_jobs(_square, [1], **kwargs)


def test_ray_missing_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"cluster extra: pip install -e '\.\[cluster\]'"):
        run_jobs(_square, [1], runner="ray")


def test_ray_settings_checked_before_starting_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (the cluster extra)")
    with pytest.raises(ConfigError, match="more than the local Ray's 2 CPUs"):
        run_jobs(_square, [1], runner="ray", num_cpus=2, cpus_per_task=3)
    with pytest.raises(ConfigError, match="local Ray only"):
        run_jobs(_square, [1], runner="ray", address="auto", num_cpus=2)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_local_ray_runs_jobs_in_workers_and_records_errors():
    try:
        import ray
        from ray import cloudpickle
    except ImportError:
        pytest.skip("ray is not installed: pip install -e '.[cluster]'")
    # The workers cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    calls: list[int] = []
    try:
        out = run_jobs(
            _square, [2, 3], runner="ray", num_cpus=2, cpus_per_task=1,
            on_done=lambda item, res, err: calls.append(item),
            init_kwargs={"log_to_driver": False, "object_store_memory": 100 * 1024**2},
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if ray.is_initialized():  # run_jobs should have shut it down; never leak it
            ray.shutdown()
    assert [item for item, _, _ in out] == [2, 3]
    (_, res, err), (_, res3, err3) = out
    assert err is None and res["x"] == 4
    assert res["pid"] != os.getpid() and res["omp"] == "1"  # a worker, threads capped
    assert res3 is None and err3 == "ValueError: bad item 3 second line"
    assert sorted(calls) == [2, 3]
    assert not ray.is_initialized()  # run_jobs started this Ray and shut it down
