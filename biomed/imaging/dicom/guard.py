"""What a hostile or broken DICOM file may cost, and the one policy for its errors.

Every file that reaches the workbench from a batch or an upload is untrusted (DESIGN.md, Trust).
This module holds the two defences that the reader, ``inspect``, ``ingest``, ``predict`` and the
image cache share:

- **Limits checked before decoding** (`Limits`): the file size; the inflated size of a Deflated
  Explicit VR file, streamed with a cap (pydicom inflates the whole dataset in memory, even for a
  header-only read: an 8.6 KB file can expand ~2,600x); the declared pixel count Rows x Columns
  x Frames x Samples; and the dimensions a JPEG 2000 codestream claims, which may differ from the
  header's. The defaults fit any real CR/DX radiograph (the largest detectors are ~43x43 cm at
  100-140 um, about 18 MP) with room for tomosynthesis-size multi-frame objects.
- **One error policy** (`decoder_errors`): any exception raised while parsing or decoding a file,
  including ``BaseException`` subclasses that ``except Exception`` misses (a Rust decoder's
  ``pyo3_runtime.PanicException``), ``RecursionError`` from deeply nested sequences,
  ``OverflowError``/``ValueError`` from malformed LUT descriptors, ``MemoryError`` and Pillow's
  ``DecompressionBombError``, becomes the project's one-line `InputError` naming the file. Only
  ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass through. A crash that kills
  the process (a decoder segfault, the out-of-memory killer) cannot be caught in-process: batch
  commands run decoders in worker processes for that (`biomed.imaging.dicom.ingest`).
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from biomed.errors import InputError

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass(frozen=True)
class Limits:
    """Caps applied before a file is parsed or decoded (bytes and pixels)."""

    max_file_bytes: int = 256 << 20  # on disk, and for an inflated Deflate dataset (256 MiB)
    max_pixels: int = 60_000_000  # Rows x Columns x Frames x Samples

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"limits must be >= 1, not {self}")


DEFAULT_LIMITS = Limits()


def one_line(e: BaseException) -> str:
    """An exception as one short line: its message, or its type name when it has none."""
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def decoder_errors(path: str | Path, what: str = "cannot read") -> Iterator[None]:
    """Turn every failure inside the block into ``InputError(path, ...)``; `InputError` itself
    and the interpreter's own stops (Ctrl-C, exit) pass through unchanged."""
    try:
        yield
    except InputError:
        raise
    except _PASS_THROUGH:
        raise
    except RecursionError:
        raise InputError(path, f"{what}: malformed file (nesting too deep to parse)") from None
    except MemoryError:
        raise InputError(path, f"{what}: out of memory while decoding") from None
    except BaseException as e:  # noqa: B036 -- a decoder panic is a BaseException
        raise InputError(path, f"{what}: {one_line(e)}") from None


def check_file_size(path: Path, size: int, limits: Limits) -> None:
    if size > limits.max_file_bytes:
        raise InputError(path, f"file too large: {size} bytes, over the limit of "
                         f"{limits.max_file_bytes} (Limits.max_file_bytes)")


def check_deflated_size(path: Path, data_offset: int, limits: Limits) -> None:
    """Inflate a Deflated Explicit VR dataset in a stream, refusing it once it passes the cap."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, chunk = 0, b""
    with open(path, "rb") as f:
        f.seek(data_offset)
        while not inflater.eof:
            if not chunk and not (chunk := f.read(1 << 16)):
                return  # the file ends before the stream: pydicom reports the truncation
            out = inflater.decompress(chunk, 1 << 20)
            total += len(out)
            if total > limits.max_file_bytes:
                raise InputError(path, f"decompression bomb: the deflated dataset inflates "
                                 f"past {limits.max_file_bytes} bytes (Limits.max_file_bytes) "
                                 f"from {os.path.getsize(path)}")
            if not out and inflater.unconsumed_tail == chunk:
                return  # no progress: a corrupt stream, which pydicom reports
            chunk = inflater.unconsumed_tail


def check_pixel_count(path: str | Path, rows: int, columns: int, frames: int, samples: int,
                      limits: Limits, where: str = "the header") -> None:
    n = rows * columns * max(frames, 1) * max(samples, 1)
    if n > limits.max_pixels:
        raise InputError(path, f"image too large: {where} declares {rows}x{columns}, "
                         f"{frames} frame(s), {samples} sample(s) = {n} pixels, over the limit "
                         f"of {limits.max_pixels} (Limits.max_pixels)")
