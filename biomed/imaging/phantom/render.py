"""Phantom chest radiographs: a PA chest X-ray rendered from structured findings, with exact truth.

No package pairs a real chest radiograph with its report, so the workbench's default image data
is a phantom drawn from `biomed.imaging.core.findings.PhantomFinding` lists, on lung fields taken
from 517 real lung masks. This module composes one image; the parts live beside it:

- `shapes`: the lung-shape bank (real masks, or the parametric fallback without the data);
- `layers`: what is precomputed once per process (lungs of each shape, vessel trees, textures);
- `scene`: the patient frame, the sampled lungs, the fields findings draw into, the primitives;
- `anatomy`: the normal chest (body, heart, mediastinum, trachea, spine, ribs, clavicles...);
- `lesions`: the findings, one function per finding in a registry (where a new one goes);
- `tool`: the `biomed phantom` command and the grid of every finding.

How an image is made (vectorised numpy on the output grid, a few milliseconds at 128 px): a
projected *density* D (soft tissue ~1 at the thickest, air subtracts, bone and fluid add) is
summed from the anatomy and the findings; an exposure curve ``1 - exp(-g D)``, a window, a blur
and noise give the pixel values: float32 in [0, 1], lungs dark, bone bright (the workbench
convention).

Everything random comes from ``np.random.default_rng(seed)``: the anatomy, each finding and the
noise draw from separate child streams, so adding a finding to a list leaves the anatomy and the
other findings of that seed unchanged (a controlled comparison), and the same findings, seed and
size give bit-identical images. Sides are the patient's: a left finding is on the image's right.

`renderer_fingerprint` names what the images depend on (the source of every module above and
the lung shapes used), so that caches of rendered sets are keyed by it.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from biomed.imaging.core.findings import PhantomFinding, parse_findings
from biomed.imaging.phantom import anatomy, lesions
from biomed.imaging.phantom.scene import Scene, rounded
from biomed.imaging.phantom.shapes import LungShapes, default_shapes

__all__ = ["RENDERER_MODULES", "render", "render_batch", "render_with_info",
           "renderer_fingerprint"]

#: every module whose source changes what the renderer draws (the findings' defaults and
#: vocabulary included); a test checks that no module of the package is missing
RENDERER_MODULES: tuple[str, ...] = (
    "biomed.imaging.core.findings", "biomed.imaging.phantom.shapes",
    "biomed.imaging.phantom.layers", "biomed.imaging.phantom.scene",
    "biomed.imaging.phantom.anatomy", "biomed.imaging.phantom.lesions",
    "biomed.imaging.phantom.render",
)


def render_with_info(findings: Iterable[PhantomFinding | Mapping[str, Any] | str], seed: int,
                     size: int = 128, *, shapes: LungShapes | None = None
                     ) -> tuple[np.ndarray, dict]:
    """Render a phantom PA chest radiograph; also return what was drawn.

    Returns ``(image, info)``: the image is float32 (size, size) in [0, 1]; ``info["findings"]``
    is the resolved list of `PhantomFinding` (sides, zones and devices that were None replaced
    by those drawn: ``labels_of(info["findings"])`` is the exact ground truth) and
    ``info["attributes"]`` a JSON-ready dict (patient size, rotation, inspiration, exposure,
    measured cardiothoracic ratio, lung shape index, ...). ``shapes``: the lung-shape bank
    (None: `default_shapes`).
    """
    if size < 16:
        raise ValueError(f"phantom size {size} is too small (16 px at least)")
    shapes = shapes if shapes is not None else default_shapes()
    r_anat, r_find, r_noise, r_bullae = np.random.default_rng(seed).spawn(4)
    a = anatomy.sample_anatomy(r_anat, shapes)
    resolved = lesions.resolve(parse_findings(findings), r_find)
    g = lesions.geometry(a, resolved)
    sc = Scene(a, g, shapes, size)
    heart, ctr = anatomy.heart(sc, g.ctr)
    medi = anatomy.mediastinum(sc)
    sc.carve = np.maximum(np.float32(0.8) * heart, medi)
    anatomy.trachea(sc)
    details = {}
    for f, r in resolved:
        if f.name in lesions.DRAWERS:
            details.setdefault(f.name, []).append(lesions.DRAWERS[f.name](sc, f, r))
    if g.bullae:
        lesions.bullae(sc, r_bullae, g.bullae)
    image = _compose(sc, r_noise)
    info = {"findings": [f for f, _ in resolved],
            "attributes": _attributes(sc, ctr, shapes, details)}
    return image, info


def render(findings: Iterable[PhantomFinding | Mapping[str, Any] | str], seed: int,
           size: int = 128, *, shapes: LungShapes | None = None) -> np.ndarray:
    """The phantom image alone (see `render_with_info`)."""
    return render_with_info(findings, seed, size, shapes=shapes)[0]


def render_batch(findings: Sequence[Iterable], seeds: Sequence[int], size: int = 128, *,
                 shapes: LungShapes | None = None) -> np.ndarray:
    """(N, size, size) float32: one image per (findings, seed) pair."""
    if len(findings) != len(seeds):
        raise ValueError(f"{len(findings)} finding lists but {len(seeds)} seeds")
    out = np.empty((len(seeds), size, size), np.float32)
    for i, (fs, s) in enumerate(zip(findings, seeds, strict=True)):
        out[i] = render(fs, int(s), size, shapes=shapes)
    return out


def renderer_fingerprint(shapes: LungShapes | None = None) -> str:
    """What `render_with_info` images depend on beyond their arguments, for cache keys:
    ``src-<hash of every module in RENDERER_MODULES>/<source>-<hash of the lung shapes>``.

    ``shapes`` is the bank the images are rendered on (None: `default_shapes`, what the
    renderer uses without one), so a set rendered on the parametric fallback and one rendered
    on the real masks (after `biomed data fetch`) get different keys; so does any edit of a
    renderer module.
    """
    h = hashlib.sha256()
    for name in RENDERER_MODULES:
        source = Path(importlib.import_module(name).__file__).read_bytes()
        h.update(f"{name}:{len(source)}:".encode() + source)
    bank = shapes if shapes is not None else default_shapes()
    return f"src-{h.hexdigest()[:12]}/{bank.fingerprint()}"


def _compose(sc: Scene, r_noise: np.random.Generator) -> np.ndarray:
    """Sum the densities, then expose, window, blur and add noise."""
    a, g = sc.a, sc.g
    air = sc.lung * (np.float32(0.55) + np.float32(0.45) * np.maximum(sc.depth, sc.ptx))
    air *= (1 - sc.carve) * (1 - sc.opac)
    body = anatomy.body(sc)
    # air displaces a fraction of the chest's thickness (more of it where the lung is deep)
    d = body * (1 - np.float32(0.72 * g.air) * air - np.float32(0.12) * sc.ptx * sc.lung)
    d += np.float32(0.26 * g.vessels) * sc.vessel * (1 - sc.ptx) * air
    d += np.float32(0.025) * sc.tex_fine * air
    d += (anatomy.spine(sc) * np.float32(0.16) + anatomy.ribs(sc)
          + np.float32(0.24) * anatomy.clavicles(sc, body))
    if a.female:
        d += np.float32(0.10) * anatomy.breasts(sc)
    if a.gastric:
        anatomy.gastric_bubble(sc, d)
    d += sc.dens
    gain = np.float32(a.exposure)
    img = (1 - np.exp(-gain * np.clip(d, 0, None))) / np.float32(1 - math.exp(-a.exposure * 1.8))
    lo, hi = a.window
    img = (img - np.float32(lo)) / np.float32(hi - lo)
    img = ndimage.gaussian_filter(img, a.blur * sc.scale, truncate=2.5, mode="nearest")
    img += np.float32(a.noise) * r_noise.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 1, out=img)


def _attributes(sc: Scene, ctr: float, shapes: LungShapes, details: dict) -> dict:
    """The JSON-ready ``info["attributes"]`` of one image."""
    a = sc.a
    return {
        "size": sc.size, "patient_size": round(sc.width, 4),
        "tilt_deg": round(math.degrees(a.tilt), 2), "axial_rotation": round(a.axial, 4),
        "inspiration": round(a.inspiration * sc.g.inspiration, 3),
        "exposure": round(a.exposure, 3), "window": [round(w, 3) for w in a.window],
        "noise": round(a.noise, 4), "blur_px": round(a.blur * sc.scale, 3),
        "female": a.female, "cardiothoracic_ratio": round(ctr, 3),
        "thorax_width_px": sc.thorax_px, "lung_shape_index": a.shape,
        "lung_shape_source": shapes.source, "vessel_tree": a.vessel_tree,
        "midline_col": rounded(sc.f.to_px(0.0, 0.5)[1]),
        "carina_row": rounded(sc.f.to_px(0.0, sc.carina_v)[0]),
        "details": details,
    }
