"""Phantom rendering speed: images/s of `biomed.imaging.phantom.render.render` in one process.

Measured: the *dataset mix*, what `data=phantom_iu` renders (each image 0-3 findings drawn at
random from every renderable finding, with random sides, severities and zones).
Baseline: *anatomy only*, the same renderer with no findings (a normal chest: lung shapes,
heart, mediastinum, bones, vessels, exposure, blur, noise). The ratio says what the findings
cost on top of the anatomy. The target is >= 200 images/s at 128 px on the 2-core CPU.

The dataset build renders in one process per core (`PhantomIU(workers=...)`): its rate is
printed beside the single-process numbers, as the number the target is about.

Both run on the same seeds after a warm-up that prepares every lung shape's layers (done once
per process, shared by every later image), one image at a time, single-threaded numpy.

    python bench/phantom_render.py                 # 128 and 256 px
    python bench/phantom_render.py --n 1000 --sizes 128
    python bench/phantom_render.py --quick         # seconds: a smoke run of the script
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy

from biomed.imaging.core.findings import DEVICES, FINDING_NAMES, SIDES, ZONES, PhantomFinding
from biomed.imaging.phantom import layers
from biomed.imaging.phantom import render as phantom
from biomed.imaging.phantom.shapes import default_shapes

TARGET = 200.0  # images/s at 128 px


def dataset_mix(n: int, seed: int = 0) -> list[list[PhantomFinding]]:
    """n finding lists as a phantom dataset draws them: 0-3 distinct findings each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        names = rng.choice(FINDING_NAMES, size=int(rng.integers(0, 4)), replace=False)
        out.append([PhantomFinding(str(name), side=str(rng.choice(SIDES[:2])),
                                   severity=int(rng.integers(1, 4)), zone=str(rng.choice(ZONES)),
                                   device=str(rng.choice(DEVICES))) for name in names])
    return out


def rate(findings: list, size: int, shapes, repeats: int) -> float:
    """Best of ``repeats`` timings of rendering every item once, in images/s."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for seed, fs in enumerate(findings):
            phantom.render(fs, seed, size, shapes=shapes)
        best = min(best, time.perf_counter() - t0)
    return len(findings) / best


def build_rate(mix: list, size: int, workers: int) -> float:
    """Images/s of the mix rendered as `PhantomIU` builds its cache (``workers`` processes;
    process start-up included)."""
    from biomed.imaging.phantom.dataset import _rendered

    jobs = [(f, 10_000 + i, size) for i, f in enumerate(mix)]
    t0 = time.perf_counter()
    with _rendered(phantom.render_with_info, jobs, workers) as results:
        for _ in results:
            pass
    return len(jobs) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="images per timing at 128 px")
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a few images: checks the script runs")
    args = p.parse_args()
    n, repeats = (10, 1) if args.quick else (args.n, args.repeats)
    sizes = [int(s) for s in args.sizes.split(",")]

    t0 = time.perf_counter()
    shapes = default_shapes()
    for k in range(len(shapes)):
        layers.shape_layers(shapes, k)
    layers.vessel_bank()
    warm = time.perf_counter() - t0
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}")
    print(f"settings: lung shapes={shapes.source} ({len(shapes)}), images/timing={n} at 128 px "
          f"(scaled down by area above), best of {repeats}, warm-up {warm:.1f} s")
    print(f"{'size':>6} {'anatomy only (img/s)':>22} {'dataset mix (img/s)':>21} {'ratio':>7}")
    for size in sizes:
        count = max(4, int(n * (128 / size) ** 2))
        mix = dataset_mix(count)
        phantom.render([], 0, size, shapes=shapes)  # per-size grids and textures
        base = rate([[] for _ in mix], size, shapes, repeats)
        full = rate(mix, size, shapes, repeats)
        print(f"{size:>6} {base:>22.1f} {full:>21.1f} {full / base:>7.2f}")
        if size == 128:
            procs = os.cpu_count() or 1
            built = build_rate(mix, size, procs)
            print(f"{'':>6} dataset build (data=phantom_iu's renderer processes: {procs}): "
                  f"{built:.1f} img/s = {built / full:.2f}x one process")
            verdict = "meets" if built >= TARGET else "misses"
            print(f"{'':>6} the dataset build at 128 px {verdict} the target of {TARGET:.0f} img/s")


if __name__ == "__main__":
    main()
