"""Throughput of `biomed dicom ingest` against a naive loop, on the same folder of DICOMs.

Baseline (the plain way, one file at a time, as a competent user writes it): ``pydicom.dcmread``,
``ds.pixel_array`` (pydicom's default decoder plugins), numpy min-max scaling to the 16-bit range
with MONOCHROME1 inverted (min and max computed once), PIL Lanczos resize to the same output size,
16-bit PNG save at the same zlib level as ingest (``PNG_COMPRESSION``; Pillow's default is 6,
which would slow the baseline down and inflate the ratio). It does no de-identification and no
VOI windowing; ingest does both.

Folder: ``--n`` generated radiographs of 2500 x 2000 pixels (rows x columns), Bits Stored
cycling 12/14/15/16, MONOCHROME1 and MONOCHROME2, ``--j2k-fraction`` of them JPEG 2000 (half
lossless, half lossy 10:1) and the rest uncompressed. The pixels come from the real RG1 chest
radiograph when it is cached (``biomed data fetch chest_dicom``; else a procedural phantom),
upsampled, with noise drawn per file so that no two files are alike.

    python bench/dicom_ingest.py [--n 40] [--size 512] [--j2k-fraction 0.3] [--workers N]
                                 [--repeats 1] [--data DIR]

``--data DIR`` keeps the generated folder there and reuses it on the next run (generating
JPEG 2000 files takes about a second each). Prints the machine, the settings, both rates and
their ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import pydicom
from PIL import Image
from pydicom import uid as dcm_uid
from pydicom.dataset import FileDataset, FileMetaDataset

from biomed import sources
from biomed.imaging.dicom.ingest import PNG_COMPRESSION, IngestSettings, ingest

ROWS, COLS = 2500, 2000


def base_image() -> tuple[np.ndarray, str]:
    """A [0, 1] chest image at 2500 x 2000 (lungs dark), and where it came from."""
    if sources.status("chest_dicom") == "cached":
        raw = pydicom.dcmread(sources.path("chest_dicom", "RG1_UNCR.dcm")).pixel_array
        img = 1.0 - raw.astype(np.float32) / 32767.0  # MONOCHROME1 -> lungs dark
        src = "RG1 (real CR) upsampled"
    else:
        y, x = np.mgrid[0:1955, 0:1841] / np.array([1955, 1841])[:, None, None]
        img = np.full(y.shape, 0.7, np.float32)
        for cx in (0.3, 0.7):
            img[((x - cx) / 0.16) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1] = 0.25
        img[np.abs(x - 0.5) < 0.05] = 0.9
        src = "procedural phantom (RG1 not cached)"
    out = Image.fromarray(img, mode="F").resize((COLS, ROWS), Image.Resampling.BILINEAR)
    lo, hi = np.percentile(np.asarray(out), [0.5, 99.5])
    return np.clip((np.asarray(out) - lo) / (hi - lo), 0, 1), src


def make_file(path: Path, base: np.ndarray, i: int, j2k: str | None) -> None:
    bits = (12, 14, 15, 16)[i % 4]
    mono1 = i % 2 == 1
    top = 2**bits - 1
    rng = np.random.default_rng(i)
    img = np.clip(base * (0.9 + 0.1 * rng.random()) + rng.normal(0, 0.004, base.shape), 0, 1)
    stored = np.round((1.0 - img if mono1 else img) * top).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dcm_uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = dcm_uid.generate_uid()
    meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, \
        meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = dcm_uid.generate_uid(), dcm_uid.generate_uid()
    ds.PatientName, ds.PatientID = f"BENCH^PATIENT{i:04d}", f"MRN{900000 + i}"
    ds.PatientBirthDate, ds.StudyDate = "19600101", "20200101"
    ds.InstitutionName, ds.Modality, ds.ViewPosition = "Bench General Hospital", "DX", "PA"
    ds.ImagerPixelSpacing = ["0.139", "0.139"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else \
        "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = str(top // 2), str(top)
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored.tobytes()
    if j2k == "lossless":
        ds.compress(dcm_uid.JPEG2000Lossless)
    elif j2k == "lossy":
        ds.compress(dcm_uid.JPEG2000, j2k_cr=[10])
    ds.save_as(path, enforce_file_format=True)


def make_folder(folder: Path, n: int, j2k_fraction: float) -> list[str]:
    """Generate (or reuse) the folder; returns the kind of each file."""
    folder.mkdir(parents=True, exist_ok=True)
    base = None
    kinds = []
    for i in range(n):
        is_j2k = math.floor((i + 1) * j2k_fraction) > math.floor(i * j2k_fraction)
        kind = ("lossless" if (i // 2) % 2 == 0 else "lossy") if is_j2k else None
        kinds.append(kind or "native")
        path = folder / f"{i:04d}_{kinds[-1]}.dcm"
        if not path.exists():
            if base is None:
                base, where = base_image()
                print(f"generating {n} files from {where} in {folder} ...", flush=True)
            make_file(path, base, i, kind)
    return kinds


def naive(files: list[Path], out: Path, size: int) -> float:
    """The baseline loop; returns seconds."""
    t0 = time.perf_counter()
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        scale = 65535.0 / max(hi - lo, 1.0)
        mono1 = ds.PhotometricInterpretation == "MONOCHROME1"  # inverted: lungs dark
        a = (hi - a) * scale if mono1 else (a - lo) * scale
        h, w = a.shape
        factor = size / max(h, w)
        im = Image.fromarray(np.rint(a).astype(np.uint16))
        im = im.resize((round(w * factor), round(h * factor)), Image.Resampling.LANCZOS)
        im.save(out / f"{k}.png", compress_level=PNG_COMPRESSION)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="number of DICOM files")
    ap.add_argument("--size", type=int, default=512, help="output longer side")
    ap.add_argument("--j2k-fraction", type=float, default=0.3)
    ap.add_argument("--workers", type=int, default=None, help="ingest processes (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs, best kept")
    ap.add_argument("--data", default=None, help="keep/reuse the generated folder here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    try:
        folder = Path(args.data) if args.data else tmp / "src"
        kinds = make_folder(folder, args.n, args.j2k_fraction)
        files = sorted(folder.glob("*.dcm"))[: args.n]
        workers = args.workers or len(os.sched_getaffinity(0))
        from pydicom.pixels.decoders.base import get_decoder

        plugins = get_decoder(dcm_uid.JPEG2000Lossless).available_plugins
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
              f"({len(os.sched_getaffinity(0))} usable), Python {platform.python_version()}, "
              f"pydicom {pydicom.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}, "
              f"J2K plugins {', '.join(plugins)}")
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"settings: {len(files)} files ({mb:.0f} MiB) of {ROWS}x{COLS}, bits stored "
              f"12/14/15/16, {kinds.count('lossless')} J2K lossless + {kinds.count('lossy')} "
              f"J2K lossy + {kinds.count('native')} uncompressed; output 16-bit PNG, longer side "
              f"{args.size}, zlib level {PNG_COMPRESSION} for both; ingest workers {workers}; "
              f"best of {args.repeats}")
        best_naive = best_ingest = math.inf
        for r in range(args.repeats):
            out = tmp / f"naive{r}"
            out.mkdir()
            best_naive = min(best_naive, naive(files, out, args.size))
            summary = ingest(folder, tmp / f"ingest{r}", IngestSettings(size=args.size),
                             workers=workers, key_file=tmp / "deid.key", progress=False)
            assert summary.written == len(files), summary.line()
            best_ingest = min(best_ingest, summary.seconds)
        n = len(files)
        print(f"naive loop (pydicom, numpy, PIL, one at a time): {n / best_naive:7.2f} images/s")
        print(f"biomed dicom ingest (de-identifies too)        : {n / best_ingest:7.2f} images/s")
        print(f"ratio ingest/naive: {best_naive / best_ingest:.2f}x  (target >= 2x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
