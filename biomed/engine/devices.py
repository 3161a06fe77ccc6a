"""Which device and number format to compute on: the one place every command asks.

``pick_device``/``pick_dtype`` read the ``device=``/``dtype=`` settings of the inference
commands (evaluate-lm, generate-text, generate, evaluate-generation); ``auto_precision`` is what
``trainer.mixed_precision=auto`` resolves to.
"""

from __future__ import annotations

import time

import torch

from biomed.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when visible, else the CPU; otherwise the named device
    (``cpu``, ``cuda``, ``cuda:1``), refused when it names CUDA and none is visible."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible")
    return torch.device(str(name))


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto`` (or None): bf16 on CUDA, fp32 elsewhere; otherwise float32/bfloat16/float16."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ConfigError(f"dtype {name!r}: auto, float32, bfloat16 or float16") from None


def auto_precision(accelerator: str) -> str:
    """``bf16`` where bf16 autocast is faster than fp32, else ``no``.

    CUDA: bf16 where the device supports it. CPU: measured, since it depends on the chip: with
    AMX or AVX512-BF16 bf16 matrix products run several times faster than fp32, while on
    AVX2-only CPUs they are emulated and run several times slower. The probe times a linear
    layer of transformer-like shape (2048 x 256 -> 1024) both ways (~0.1 s).
    """
    if accelerator == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    x, w = torch.randn(2048, 256), torch.randn(1024, 256)

    def best(autocast: bool) -> float:
        times = []
        for _ in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - t0)
        return min(times[1:])  # the first call pays one-off setup

    return "bf16" if best(True) < best(False) else "no"
