"""biomed.engine.cpu_malloc: glibc's thresholds are raised once; the CPU engine applies them by config."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from biomed.engine import cpu_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_glibc_is_found_and_accepts_both_thresholds():
    assert cpu_malloc.available()
    assert cpu_malloc.keep_heap() is True
    assert cpu_malloc.keep_heap() is True  # once per process: the cached first result


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_large_buffer_comes_from_the_heap_after_keep_heap():
    """With glibc's defaults a fresh 16 MiB allocation is mmap'd (its address is outside the
    heap's arena: mallinfo2's count of mmap'd blocks grows); after keep_heap it is not."""
    code = """
import ctypes, sys
from biomed.engine import cpu_malloc
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert cpu_malloc.keep_heap()
before = libc.mallinfo2().hblks
p = libc.malloc(16 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(p)
"""
    out = {m: subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True,
                             check=True).stdout.split() for m in ("default", "keep")}
    assert out["default"] == ["1"]  # one more mmap'd block: the buffer
    assert out["keep"] == ["0"]  # none: the buffer is in the heap


def test_engine_applies_it_on_the_cpu_only_when_asked(tmp_path, monkeypatch):
    from biomed.engine import Engine, TrainerConfig

    calls = []
    monkeypatch.setattr(cpu_malloc, "keep_heap", lambda: calls.append(1) or True)
    Engine(TrainerConfig(max_steps=1, keep_heap=False, tensorboard=False), tmp_path / "a")
    assert calls == []
    Engine(TrainerConfig(max_steps=1, tensorboard=False), tmp_path / "b")
    assert calls == [1]


def test_keep_heap_is_a_no_op_without_glibc(monkeypatch):
    cpu_malloc.keep_heap.cache_clear()
    monkeypatch.setattr(cpu_malloc, "_glibc", lambda: None)
    try:
        assert cpu_malloc.keep_heap() is False and not cpu_malloc.available()
    finally:
        cpu_malloc.keep_heap.cache_clear()
