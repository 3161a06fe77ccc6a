"""Phantom chest radiographs: a PA chest X-ray rendered from structured findings, with exact truth.

No package pairs a real chest radiograph with its report, so the workbench's default image data
is a phantom drawn from `biomed.imaging.core.findings.PhantomFinding` lists, on lung fields taken from
517 real lung masks (`biomed.imaging.phantom.shapes`).

How an image is made (vectorised numpy on the output grid, a few milliseconds at 128 px):

- a *patient frame* (u, v): u is the horizontal offset from the midline in image widths (positive
  towards the image's right = the patient's left), v the height down the image; a small in-plane
  tilt rotates it against the pixel grid;
- a projected *density* D (soft tissue ~1 at the thickest, air subtracts, bone and fluid add) is
  summed from the anatomy (body envelope, lungs, heart and mediastinum, aortic knob, trachea,
  spine, ribs, clavicles, breasts, vessels) and the findings;
- an exposure curve ``1 - exp(-g D)``, a window, a blur and noise give the pixel values: float32
  in [0, 1], lungs dark, bone bright (the workbench convention).

Everything random comes from ``np.random.default_rng(seed)``: the anatomy, each finding and the
noise draw from separate child streams, so adding a finding to a list leaves the anatomy and the
other findings of that seed unchanged (a controlled comparison), and the same findings, seed and
size give bit-identical images. Sides are the patient's: a left finding is on the image's right.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from scipy import ndimage

from biomed.imaging.core.findings import DEVICES, SEVERITIES, ZONES, PhantomFinding, parse_findings
from biomed.imaging.core.pixels import write_png16
from biomed.imaging.phantom.shapes import LungShapes, load_lung_shapes
from biomed.outpaths import check_creatable

__all__ = ["THORAX_MM", "default_shapes", "parse_finding_spec", "phantom_grid", "phantom_main",
           "render", "render_batch", "render_with_info"]

log = logging.getLogger(__name__)

THORAX_MM = 300.0  # the internal thoracic width a drawn thorax stands for (adult PA, 28-32 cm)
_PAD = 2  # zero border around canonical layers, so lookups outside them read 0
_VESSEL_GRID = 256  # canonical resolution of the vessel-tree bank
_N_VESSEL_TREES = 8
_CTR_BY_SEVERITY = {1: 0.55, 2: 0.60, 3: 0.66}
_ZONE_BANDS = {"upper": (0.08, 0.36), "middle": (0.36, 0.62), "lower": (0.62, 0.86)}
_FOCAL = ("nodule", "calcified_granuloma", "mass", "consolidation", "atelectasis")


# ---------------------------------------------------------------------------------------------
# cached resources: lung shapes, per-shape layers, vessel trees, textures, grids

_SHAPES: dict[tuple[str | None, int], LungShapes] = {}


def default_shapes(grid: int = 128) -> LungShapes:
    """The real lung-shape bank (or the parametric fallback), loaded once per process (per
    data cache: a changed ``$BIOMED_CACHE`` loads its own)."""
    key = (os.environ.get("BIOMED_CACHE"), grid)
    if key not in _SHAPES:
        _SHAPES[key] = load_lung_shapes(grid)
    return _SHAPES[key]


def _shape_layers(shapes: LungShapes, k: int) -> np.ndarray:
    """(2, n*n) uint8 flattened padded layers of shape k: both lungs, and their depth.

    The lower medial borders are filled towards the midline (the drawn heart carves them
    again), so the cardiac silhouette, and hence the cardiothoracic ratio, is the drawn
    heart's and not the source patient's. The fill stops short of the midline, so the lungs
    stay apart and a point's side is the side of the midline it lies on. Depth is a blurred
    lung mask: ~1 in the middle of a lung, lower near its edges (a thinner slab of lung in
    projection). Stored as uint8 (255 = 1): 35 kB a shape, every shape kept once prepared.
    """
    if k in shapes.cache:
        return shapes.cache[k]
    g = shapes.size
    right = shapes.right[k].astype(np.float32) / 255.0
    left = shapes.left[k].astype(np.float32) / 255.0
    mid = float(shapes.midline[k]) * g
    lung = _fill_medial(right, mid - 0.03 * g, +1) + _fill_medial(left, mid + 0.03 * g, -1)
    lung = np.clip(lung, 0, 1)
    depth = ndimage.gaussian_filter(lung, 0.06 * g, truncate=2.5)
    depth = np.clip(depth / max(float(depth.max()), 1e-6), 0, 1)
    out = np.pad(np.stack([lung, depth]), ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    shapes.cache[k] = np.round(out * 255).astype(np.uint8).reshape(2, -1)
    return shapes.cache[k]


def _fill_medial(mask: np.ndarray, target: float, direction: int) -> np.ndarray:
    """Extend a lung's lower medial border to column ``target`` (direction +1: right lung)."""
    g = mask.shape[0]
    inside = mask >= 0.5
    rows = np.flatnonzero(inside.any(1))
    if rows.size == 0:
        return mask
    cols = np.arange(g, dtype=np.float32)
    if direction > 0:
        edge = np.where(inside, cols, -1).max(1).astype(np.float32)
    else:
        edge = np.where(inside, cols, g).min(1).astype(np.float32)
    t = (np.arange(g) - rows[0]) / max(rows[-1] - rows[0], 1)
    ramp = np.clip((t - 0.35) / 0.2, 0, 1).astype(np.float32)
    reach = edge + (target - edge) * ramp  # how far each row is filled
    # not below the medial base (the cardiophrenic angle): no flat shelf under the heart
    medial_col = int(edge[rows].max() if direction > 0 else edge[rows].min())
    base = np.flatnonzero(inside[:, medial_col])[-1]
    have = (inside.any(1) & (np.arange(g) <= base))[:, None]
    if direction > 0:
        fill = (cols[None] > edge[:, None]) & (cols[None] <= reach[:, None])
    else:
        fill = (cols[None] < edge[:, None]) & (cols[None] >= reach[:, None])
    return np.where(fill & have, 1.0, mask).astype(np.float32)


@lru_cache(maxsize=1)
def _vessel_bank() -> np.ndarray:
    """(K, n*n) padded vessel-tree layers in the canonical lung frame (midline at x = 0.5).

    Each is two pulmonary trees drawn from the hila (the left hilum a little higher), every
    branch splitting in two, thinner and fainter at each generation, plus hilar density. Drawn
    with PIL at 2x and reduced: antialiased. Fixed seed: the same bank in every process.
    """
    rng = np.random.default_rng(20240607)
    big = _VESSEL_GRID * 2
    out = []
    for _ in range(_N_VESSEL_TREES):
        im = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(im)
        for hx, hy, sgn in ((0.37, 0.45, -1), (0.63, 0.41, +1)):  # right hilum, left hilum
            for ang in np.array([-85.0, -45, -5, 35, 70]) + rng.normal(0, 7, 5):
                # angle from the lateral direction, degrees; negative: upwards
                theta = math.radians(ang)
                _branch(draw, rng, (hx * big, hy * big), (sgn * math.cos(theta), math.sin(theta)),
                        0.11 * big * rng.uniform(0.8, 1.15), 0.011 * big, 1.0, 6)
        tree = np.asarray(im.reduce(2), np.float32) / 255.0
        yy, xx = np.mgrid[0:_VESSEL_GRID, 0:_VESSEL_GRID] / _VESSEL_GRID
        for hx, hy in ((0.37, 0.45), (0.63, 0.41)):
            tree += 0.45 * np.exp(-((xx - hx) ** 2 + ((yy - hy) / 1.8) ** 2) / (2 * 0.03 ** 2))
        tree = ndimage.gaussian_filter(np.clip(tree, 0, 1.2), 0.6)
        out.append(np.pad(tree, _PAD).ravel())
    return np.stack(out).astype(np.float32)


def _branch(draw: ImageDraw.ImageDraw, rng: np.random.Generator, p: tuple[float, float],
            d: tuple[float, float], length: float, width: float, value: float, depth: int) -> None:
    """One vessel segment (slightly curved, in 3 steps) and its two daughter branches."""
    x, y = p
    ang = math.atan2(d[1], d[0])
    pts = [(x, y)]
    for _ in range(3):
        ang += rng.normal(0, 0.08)
        x, y = x + math.cos(ang) * length / 3, y + math.sin(ang) * length / 3
        pts.append((x, y))
    if depth > 1:  # children first: the parent's (brighter) stroke is drawn over them
        for sgn in (-1, 1):
            a = ang + sgn * math.radians(rng.uniform(18, 34))
            _branch(draw, rng, (x, y), (math.cos(a), math.sin(a)), length * rng.uniform(0.68, 0.82),
                    width * 0.7, value * 0.84, depth - 1)
    draw.line(pts, fill=int(255 * value), width=max(1, round(width)), joint="curve")


@lru_cache(maxsize=4)
def _textures(size: int) -> np.ndarray:
    """(2, 2*size, 2*size) unit-variance smooth noise: fine (lung texture), medium (fluffy)."""
    rng = np.random.default_rng(7)
    out = []
    for sigma in (0.7 * size / 128, size / 40):
        t = ndimage.gaussian_filter(rng.standard_normal((2 * size, 2 * size)), sigma, mode="wrap")
        out.append(t / t.std())
    return np.stack(out).astype(np.float32)


@lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the image: (X, Y), each (size, size) float32."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


class _Sampler:
    """Bilinear lookups, at fixed float (row, col) positions, of flattened padded layers."""

    def __init__(self, py: np.ndarray, px: np.ndarray, n: int) -> None:
        py = np.clip(py, 0, np.float32(n - 1.001))
        px = np.clip(px, 0, np.float32(n - 1.001))
        y0, x0 = np.floor(py), np.floor(px)
        self.fy, self.fx = py - y0, px - x0  # float32: the weights
        i = y0.astype(np.int32) * n + x0.astype(np.int32)
        self.idx = (i, i + 1, i + n, i + (n + 1))

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        """flat: (n*n,) float32, or uint8 read as value / 255 -> (H, W) float32."""
        a, b, c, d = (flat.take(i) for i in self.idx)
        if flat.dtype == np.uint8:
            a, b, c, d = (x.astype(np.float32) for x in (a, b, c, d))
        top = a + (b - a) * self.fx
        out = top + (c + (d - c) * self.fx - top) * self.fy
        return out * np.float32(1 / 255) if flat.dtype == np.uint8 else out

    def nearest(self, flat: np.ndarray) -> np.ndarray:
        """The value at the cell's corner (for smooth layers: a quarter of the cost)."""
        out = flat.take(self.idx[0])
        return out * np.float32(1 / 255) if flat.dtype == np.uint8 else out


# ---------------------------------------------------------------------------------------------
# the patient: anatomy parameters and the frame


@dataclass
class _Anatomy:
    """Per-seed anatomy; lengths are fractions of the image side."""

    shape: int
    vessel_tree: int
    cx: float  # the midline's column
    tilt: float  # in-plane rotation, radians
    width: float  # the lung pair's width (patient size in the field of view)
    top: float  # v of the lung apices
    height: float  # the lung pair's height at normal inspiration
    inspiration: float
    body: float  # body half-width / lung half-width
    axial: float  # spine offset from the mediastinal midline (axial rotation)
    female: bool
    ctr: float
    heart_phi: float  # heart long-axis angle below horizontal, radians
    heart_ratio: float
    exposure: float
    window: tuple[float, float]
    noise: float
    blur: float  # in pixels at 128 px
    rib_phase: float
    gastric: bool
    tex_offset: tuple[int, int]


def _anatomy(rng: np.random.Generator, shapes: LungShapes) -> _Anatomy:
    k = int(rng.integers(len(shapes)))
    width = float(rng.uniform(0.70, 0.82))
    aspect = 0.4 * float(shapes.aspect[k]) + 0.6 * float(rng.uniform(0.90, 1.0))
    return _Anatomy(
        shape=k, vessel_tree=int(rng.integers(_N_VESSEL_TREES)),
        cx=0.5 + float(rng.normal(0, 0.012)), tilt=math.radians(float(np.clip(
            rng.normal(0, 1.5), -4, 4))),
        width=width, top=float(rng.uniform(0.07, 0.12)), height=width * aspect,
        inspiration=float(rng.uniform(0.93, 1.05)), body=float(rng.uniform(1.14, 1.30)),
        axial=float(rng.normal(0, 0.008)), female=bool(rng.random() < 0.4),
        ctr=float(rng.uniform(0.42, 0.48)), heart_phi=math.radians(float(rng.uniform(35, 48))),
        heart_ratio=float(rng.uniform(0.62, 0.72)), exposure=float(rng.uniform(0.9, 1.3)),
        window=(float(rng.uniform(0.06, 0.14)), float(rng.uniform(0.97, 1.04))),
        noise=float(rng.uniform(0.004, 0.016)), blur=float(rng.uniform(0.35, 0.75)),
        rib_phase=float(rng.uniform(-0.25, 0.25)), gastric=bool(rng.random() < 0.6),
        tex_offset=(int(rng.integers(1 << 16)), int(rng.integers(1 << 16))),
    )


@dataclass
class _Geometry:
    """What findings change before anything is drawn (lung volumes, diaphragm, heart size)."""

    inspiration: float = 1.0  # multiplies the lung height
    side_height: dict = field(default_factory=lambda: {"right": 1.0, "left": 1.0})
    flatten: float = 0.0  # diaphragm flattening (emphysema), canonical units
    air: float = 1.0  # lung lucency multiplier
    vessels: float = 1.0  # vascular marking multiplier
    ctr: float | None = None
    heart_tall: float = 1.0  # heart height over what its width implies (the emphysema heart)
    bullae: int = 0


class _Frame:
    """The patient frame on the output grid and its inverse (u, v) -> (row, col)."""

    def __init__(self, a: _Anatomy, size: int) -> None:
        X, Y = _pixel_grid(size)
        self.size, self.cx = size, a.cx
        self.c, self.s = math.cos(a.tilt), math.sin(a.tilt)
        dx, dy = X - np.float32(a.cx), Y - np.float32(0.5)
        self.u = np.float32(self.c) * dx + np.float32(self.s) * dy
        self.v = np.float32(-self.s) * dx + np.float32(self.c) * dy + np.float32(0.5)

    def to_px(self, u: float, v: float) -> tuple[float, float]:
        """(row, col) of a patient-frame point."""
        x = self.cx + self.c * u - self.s * (v - 0.5)
        y = 0.5 + self.s * u + self.c * (v - 0.5)
        return y * self.size - 0.5, x * self.size - 0.5


# ---------------------------------------------------------------------------------------------
# resolving findings (side, zone, device drawn from each finding's own stream)


def _resolve(findings: Sequence[PhantomFinding], rng: np.random.Generator
             ) -> list[tuple[PhantomFinding, np.random.Generator]]:
    out = []
    for f, r in zip(findings, rng.spawn(len(findings)), strict=True):
        side, zone, device = f.side, f.zone, f.device
        if f.lateral and side is None:
            side = "bilateral" if f.name == "effusion" and r.random() < 0.2 else \
                str(r.choice(["left", "right"]))
        if f.name in _FOCAL and zone is None:
            zone = str(r.choice(ZONES if f.name != "atelectasis" else ("middle", "lower")))
        if f.name == "support_devices" and device is None:
            device = str(r.choice(DEVICES))
        out.append((replace(f, side=side, zone=zone, device=device), r))
    return out


def _sides(side: str | None) -> tuple[str, ...]:
    return ("left", "right") if side == "bilateral" else (side or "right",)


def _geometry(a: _Anatomy, resolved) -> _Geometry:
    g = _Geometry(ctr=a.ctr)
    for f, r in resolved:
        sev = f.severity
        if f.name == "cardiomegaly":
            g.ctr = _CTR_BY_SEVERITY[sev] + float(r.uniform(-0.008, 0.015))
        elif f.name == "emphysema":
            g.inspiration *= (1.10, 1.18, 1.26)[sev - 1]
            g.flatten = max(g.flatten, (0.05, 0.09, 0.13)[sev - 1])
            g.air *= (1.06, 1.12, 1.18)[sev - 1]
            g.vessels *= (0.70, 0.52, 0.38)[sev - 1]
            g.bullae = max(g.bullae, sev - 1)
            if g.ctr is not None and g.ctr < 0.5:  # a narrow, vertical heart
                narrow = min(g.ctr, 0.36 + 0.02 * (a.ctr - 0.42) / 0.06 * 3)
                g.heart_tall, g.ctr = g.ctr / narrow, narrow
        elif f.name == "low_lung_volumes":
            g.inspiration *= (0.90, 0.82, 0.75)[sev - 1]
            g.vessels *= (1.12, 1.25, 1.38)[sev - 1]
        elif f.name == "atelectasis" and f.zone == "lower" and sev >= 2:
            for s in _sides(f.side):
                g.side_height[s] = min(g.side_height[s], (1.0, 0.93, 0.86)[sev - 1])
        elif f.name == "edema":
            g.vessels *= 1.0 + 0.15 * sev
    return g


# ---------------------------------------------------------------------------------------------
# the scene: sampled lungs and the fields that findings modify


class _Scene:
    """Everything drawn for one image; findings add to ``opac`` (air replaced by fluid or
    tissue, 0-1) and ``dens`` (extra density), and may scale ``air``/``vessel`` fields."""

    def __init__(self, a: _Anatomy, g: _Geometry, shapes: LungShapes, size: int) -> None:
        self.a, self.g, self.size = a, g, size
        self.f = _Frame(a, size)
        self.scale = size / 128.0
        self.width = a.width
        self.height = a.height * a.inspiration * g.inspiration
        bottom = a.top + self.height
        if bottom > 0.93:  # a big chest fills the film: shrink it to fit, keep its aspect
            k = (0.93 - a.top) / self.height
            self.width, self.height = self.width * k, self.height * k
        self.top = a.top
        self.mid = float(shapes.midline[a.shape])
        self.layers = _shape_layers(shapes, a.shape)
        self._sample_lungs(shapes.size)
        self.opac = np.zeros((size, size), np.float32)
        self.dens = np.zeros((size, size), np.float32)
        self.ptx = np.zeros((size, size), np.float32)  # pneumothorax space (pure air)
        ox, oy = a.tex_offset
        tex = _textures(size)
        self.tex_fine = tex[0, oy % size:oy % size + size, ox % size:ox % size + size]
        self.tex_med = tex[1, ox % size:ox % size + size, oy % size:oy % size + size]

    # -- lungs ---------------------------------------------------------------------------------

    def canonical(self, u, v, side: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (xc, yc) in [0, 1] of the shape bank for patient-frame points."""
        xc = np.float32(self.mid) + u / np.float32(self.width)
        f = self.g.side_height.get(side, 1.0) if side else 1.0
        yc = (v - np.float32(self.top)) / np.float32(self.height * f)
        if self.g.flatten and side:
            centre = self.mid / 2 if side == "right" else (1 + self.mid) / 2
            half = self.mid / 2 if side == "right" else (1 - self.mid) / 2
            bump = np.clip(1 - ((xc - centre) / half) ** 2, 0, 1)
            yc = yc - np.float32(self.g.flatten) * bump * np.clip((yc - 0.45) / 0.4, 0, 1)
        return xc, yc

    def sampler(self, xc, yc, n: int) -> _Sampler:
        g = n - 2 * _PAD
        return _Sampler(yc * np.float32(g) + np.float32(_PAD - 0.5),
                        xc * np.float32(g) + np.float32(_PAD - 0.5), n)

    def _sample_lungs(self, grid: int) -> None:
        f, n = self.f, grid + 2 * _PAD
        xc, yc = self.canonical(f.u, f.v)
        common = self.sampler(xc, yc, n)
        is_right = (xc < np.float32(self.mid)).astype(np.float32)  # the patient's right
        if self.g.flatten or set(self.g.side_height.values()) != {1.0}:
            # each lung with its own diaphragm: sampled on its own warped grid
            sr = self.sampler(*self.canonical(f.u, f.v, "right"), n)
            sl = self.sampler(*self.canonical(f.u, f.v, "left"), n)
            self.right = sr(self.layers[0]) * is_right
            self.left = sl(self.layers[0]) * (1 - is_right)
            self.depth = np.where(is_right > 0, sr.nearest(self.layers[1]),
                                  sl.nearest(self.layers[1]))
        else:
            smooth = common.nearest if self.size <= 160 else common  # depth: a smooth field
            lung, self.depth = common(self.layers[0]), smooth(self.layers[1])
            self.right, self.left = lung * is_right, lung * (1 - is_right)
        self.lung = self.right + self.left
        vn = _VESSEL_GRID + 2 * _PAD
        xv = xc + np.float32(0.5 - self.mid)
        self.vessel = self.sampler(xv, yc, vn)(_vessel_bank()[self.a.vessel_tree])
        cols = np.flatnonzero((self.lung > 0.5).any(0))
        self.thorax_px = int(cols[-1] - cols[0] + 1) if cols.size else int(self.width * self.size)
        self.extent = {s: _extent(m) for s, m in (("right", self.right), ("left", self.left))}

    def side_mask(self, side: str) -> np.ndarray:
        return self.left if side == "left" else self.right

    @property
    def mm(self) -> float:
        """Pixels per millimetre."""
        return self.thorax_px / THORAX_MM


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top row, bottom row, first col, last col) of a mask's > 0.5 part."""
    m = mask > 0.5
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        h = mask.shape[0]
        return h // 4, 3 * h // 4, h // 4, 3 * h // 4
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _window(sc: _Scene, r0: float, r1: float, c0: float, c1: float) -> tuple[slice, slice]:
    n = sc.size
    return (slice(max(0, int(r0)), min(n, int(math.ceil(r1)) + 1)),
            slice(max(0, int(c0)), min(n, int(math.ceil(c1)) + 1)))


def _stroke(sc: _Scene, pts: Sequence[tuple[float, float]], width: float
            ) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage (0-1) of a polyline of (row, col) points ``width`` pixels wide, in a window."""
    p = np.asarray(pts, np.float32)
    m = width / 2 + 2
    win = _window(sc, p[:, 0].min() - m, p[:, 0].max() + m, p[:, 1].min() - m, p[:, 1].max() + m)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
    d2 = np.full((rr.size, cc.size), np.inf, np.float32)
    for (ar, ac), (br, bc) in zip(p[:-1], p[1:], strict=True):
        er, ec = br - ar, bc - ac
        t = np.clip(((rr - ar) * er + (cc - ac) * ec) / max(er * er + ec * ec, 1e-6), 0, 1)
        d2 = np.minimum(d2, (rr - ar - t * er) ** 2 + (cc - ac - t * ec) ** 2)
    return win, np.clip(width / 2 + 0.5 - np.sqrt(d2), 0, 1)


def _disc(sc: _Scene, r0: float, c0: float, radius: float, sharp: float = 1.0
          ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A ball's projected thickness (0-1) centred at (r0, c0), antialiased, in a window."""
    win = _window(sc, r0 - radius - 2, r0 + radius + 2, c0 - radius - 2, c0 + radius + 2)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - np.float32(r0)
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - np.float32(c0)
    d = np.sqrt(rr * rr + cc * cc)
    cover = np.clip((radius - d) * sharp + 0.5, 0, 1)
    dome = np.sqrt(np.clip(1 - (d / max(radius, 0.5)) ** 2, 0, 1))
    return win, cover * (0.45 + 0.55 * dome)


def _pick(sc: _Scene, rng: np.random.Generator, side: str, zone: str,
          margin: float = 0.4) -> tuple[float, float]:
    """A random (row, col) inside the lung of ``side`` in ``zone``, away from the heart/edges."""
    top, bot, _, _ = sc.extent[side]
    lo, hi = _ZONE_BANDS[zone]
    r0, r1 = int(top + lo * (bot - top)), int(top + hi * (bot - top)) + 1
    m = sc.side_mask(side)[r0:r1]
    for cond in (lambda: (m > 0.95) & (sc.depth[r0:r1] > margin) & (sc.carve[r0:r1] < 0.05),
                 lambda: m > 0.5):
        idx = np.flatnonzero(cond())
        if idx.size:
            i = int(idx[rng.integers(idx.size)])
            w = m.shape[1]
            return r0 + i // w + float(rng.uniform(-0.5, 0.5)), i % w + float(rng.uniform(-.5, .5))
    t, b, c0, c1 = sc.extent[side]
    return (t + b) / 2, (c0 + c1) / 2


# ---------------------------------------------------------------------------------------------
# anatomy layers


def _body(sc: _Scene) -> np.ndarray:
    """Soft-tissue thickness of the body: a neck, sloping shoulders, the torso (a cylinder)."""
    u, v = sc.f.u, sc.f.v
    half = sc.width / 2
    neck, torso = 0.12 * sc.width, half * sc.a.body
    shoulder, axilla = np.float32(sc.top - 0.07), np.float32(sc.top + 0.12)
    hw = neck + np.float32(1.12 * torso - neck) / (1 + np.exp((shoulder - v) * np.float32(20)))
    hw -= np.float32(0.12 * torso) / (1 + np.exp((axilla - v) * np.float32(25)))
    hw = hw * (1 + 0.04 * np.clip(v - np.float32(sc.top + sc.height * 0.5), 0, None))
    t = np.sqrt(np.clip(1 - (u / hw) ** 2, 0, 1))  # a cylinder's chord
    belly = np.clip((v - np.float32(sc.top + 0.85 * sc.height)) * np.float32(3), 0, 0.12)
    return t * (np.float32(0.92) + belly)


def _heart(sc: _Scene, ctr: float) -> tuple[np.ndarray, float]:
    """Cardiac silhouette (coverage) and its measured cardiothoracic ratio.

    Two ellipses: the left ventricle, tilted down towards the apex on the image right, and the
    right atrium on the image left; about a third of the width right of the midline, two thirds
    left. Their lower parts sit behind the diaphragm; the ratio is measured (and targeted) on
    the part above it. ``ctr`` is the target heart width over the thorax width.
    """
    a_, n = sc.a, sc.size
    wh = ctr * sc.thorax_px / n  # heart width, image fraction
    phi, r = a_.heart_phi, a_.heart_ratio
    ca, sa = math.cos(phi), math.sin(phi)
    ex = 0.5 * wh
    ax = ex / math.sqrt(ca * ca + (r * sa) ** 2)  # LV semi-axes: ax (long), r * ax
    tall = sc.g.heart_tall
    ey = ax * math.sqrt(sa * sa + (r * ca) ** 2) * tall  # LV vertical half extent
    # the heart sits on the left hemidiaphragm: the left lung's lowest row beside the midline
    mid_col = sc.f.to_px(0.0, 0.5)[1]
    band = sc.left[:, max(0, int(mid_col)):int(mid_col + 0.3 * sc.thorax_px) + 1]
    rows = np.flatnonzero((band > 0.5).any(1))
    bot_l = rows[-1] if rows.size else sc.extent["left"][1]
    base = (bot_l + 0.5) / n
    lv = (0.7 * wh - ex, base - 0.45 * ey)
    ra = (-0.3 * wh + 0.17 * wh, base - 0.28 * wh * tall)
    sc.heart_top, sc.heart_v = min(lv[1] - ey, ra[1] - 0.3 * wh * tall), lv[1]
    r0, c0 = sc.f.to_px(0.2 * wh, lv[1])
    ext = max(wh / 2, ey) * n + 4
    win = _window(sc, r0 - ext, r0 + ext, c0 - ext, c0 + ext)
    u, v = sc.f.u[win], sc.f.v[win]
    du, dv = u - np.float32(lv[0]), (v - np.float32(lv[1])) / np.float32(tall)
    q = ((du * ca + dv * sa) / ax) ** 2 + ((dv * ca - du * sa) / (r * ax)) ** 2
    cover = np.clip((1 - q) * np.float32(r * ax * n / 2) + 0.5, 0, 1)
    q = ((u - np.float32(ra[0])) / (0.17 * wh)) ** 2 + (
        (v - np.float32(ra[1])) / (0.3 * wh * tall)) ** 2
    cover = np.maximum(cover, np.clip((1 - q) * np.float32(0.17 * wh * n / 2) + 0.5, 0, 1))
    out = np.zeros((n, n), np.float32)
    out[win] = cover
    above = out[: max(1, int(base * n))]
    cols = np.flatnonzero((above > 0.5).any(0))
    measured = (cols[-1] - cols[0] + 1) / sc.thorax_px if cols.size else 0.0
    return out, float(measured)


def _mediastinum(sc: _Scene) -> np.ndarray:
    """Upper mediastinum down to the heart: soft tissue between the lungs that carves them.

    Its left border (image right) bulges at the aortic knob; the right border is the
    superior vena cava's stripe. Both widen a little towards the heart.
    """
    u, v, n = sc.f.u, sc.f.v, sc.size
    wt = sc.thorax_px / n
    rows = _window(sc, 0, n * sc.heart_v + 2, 0, 1)[0]
    u, v = u[rows], v[rows]
    down = np.clip((v - np.float32(sc.top)) / np.float32(max(sc.heart_v - sc.top, 1e-3)), 0, 1)
    kv = np.float32(sc.top + 0.22 * sc.height)
    knob = np.float32(0.06 * wt) * np.exp(-((v - kv) / np.float32(0.045 * sc.height)) ** 2)
    left = np.float32(0.07 * wt) + np.float32(0.03 * wt) * down + knob
    right = np.float32(-0.065 * wt) - np.float32(0.025 * wt) * down
    band = np.clip((left - u) * np.float32(n) + 0.5, 0, 1) * np.clip(
        (u - right) * np.float32(n) + 0.5, 0, 1)
    band *= np.clip((np.float32(sc.heart_v) - v) * np.float32(n) + 0.5, 0, 1)
    out = np.zeros((n, n), np.float32)
    out[rows] = band
    return out


def _trachea(sc: _Scene) -> None:
    """The air column of the trachea and main bronchi (darker), down to and past the carina;
    drawn only where the mediastinum covers the lungs."""
    wt = sc.thorax_px / sc.size
    sc.carina_v = sc.top + 0.30 * sc.height
    f = sc.f
    top, car = f.to_px(0.0, 0.0), f.to_px(0.004 * wt, sc.carina_v)
    rb = f.to_px(-0.075 * wt, sc.carina_v + 0.10 * wt)
    lb = f.to_px(0.10 * wt, sc.carina_v + 0.08 * wt)
    width = 0.055 * sc.thorax_px
    rows = slice(0, min(sc.size, int(max(rb[0], lb[0]) + width + 3)))
    air = np.zeros((sc.size, sc.size), np.float32)
    for pts, w in (((top, car), width), ((car, rb), width * 0.7), ((car, lb), width * 0.65)):
        win, val = _stroke(sc, pts, w)
        air[win] = np.maximum(air[win], val)
    sc.dens[rows] -= np.float32(0.22) * air[rows] * (1 - sc.lung[rows] * (1 - sc.carve[rows]))


def _spine(sc: _Scene) -> np.ndarray:
    """The thoracic spine: vertebral bodies with bright end plates, pedicles, discs between."""
    n = sc.size
    wt = sc.thorax_px / n
    cols = _window(sc, 0, 1, n * (sc.a.cx - 0.12 * wt) - 1, n * (sc.a.cx + 0.12 * wt) + 1)[1]
    u, v = sc.f.u[:, cols] - np.float32(sc.a.axial), sc.f.v[:, cols]
    hw = np.float32(0.058 * wt)
    x = u / hw
    across = np.clip((1 - np.abs(x)) * hw * np.float32(n) * 0.5, 0, 1)
    period = np.float32(sc.height * 1.05 / 11)
    ph = (v - np.float32(sc.top)) / period
    frac = ph - np.floor(ph)
    edge = np.abs(frac - 0.5)  # 0.5 at a disc, 0 mid-body
    body = np.clip((0.5 - edge) / 0.1, 0, 1) * (0.8 + 0.5 * np.clip((edge - 0.3) / 0.1, 0, 1))
    ped = np.exp(-((np.abs(x) - 0.62) / 0.16) ** 2 - ((frac - 0.4) / 0.14) ** 2)
    out = np.zeros((n, n), np.float32)
    out[:, cols] = across * (0.35 + 0.45 * body + 0.2 * np.abs(x) ** 3) + 0.3 * ped
    return out


def _ribs(sc: _Scene) -> np.ndarray:
    """Posterior ribs (arches convex upwards, cortical margins) and fainter anterior ribs."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    half = np.float32(sc.thorax_px / n / 2)
    s = np.abs(u) / half
    h = np.float32(sc.height)
    # posterior: the arch's top at s ~ 0.45, falling steeply laterally
    g = np.where(s > 0.6, 0.3 * ((s - 0.6) / 0.4) ** 2, 0.15 * (0.6 - s)) * h
    q = np.clip((v - np.float32(sc.top - 0.05 * sc.height) - g) / (h * np.float32(1.1)), 0, None)
    # ~ 10.5 q^0.82: spaces widen downwards (sqrt blend: a power costs 5x more)
    r = np.float32(3.15) * np.sqrt(q) + np.float32(7.35) * q + np.float32(sc.a.rib_phase)
    period_px = np.float32(sc.height * n / 10.0)
    post = _band(r, np.float32(0.42), period_px) * (r < 10.5) * (r > 0.3)
    post *= np.clip((np.float32(sc.top + 1.02 * sc.height) - v) * np.float32(12), 0.25, 1)
    post *= np.clip((s - 0.12) * 12, 0, 1) * np.clip((1.08 - s) * 10, 0, 1)
    # anterior: from the lateral wall downwards to the costal cartilages, fading medially
    ra = (v - np.float32(sc.top + 0.1 * sc.height) - np.float32(0.28) * h * (1 - s)) / (
        h * np.float32(0.105)) + np.float32(sc.a.rib_phase)
    ant = _band(ra, np.float32(0.30), period_px) * (ra > 0) * (ra < 7)
    ant *= np.clip((s - 0.28) * 5, 0, 1) * np.clip((1.05 - s) * 10, 0, 1)
    return np.float32(0.13) * post + np.float32(0.06) * ant


def _band(r: np.ndarray, w: np.float32, period_px: np.float32) -> np.ndarray:
    """Periodic bands: fraction ``w`` of each period is bone, brighter at its margins."""
    frac = r - np.floor(r)
    inside = np.clip(np.minimum(frac, w - frac) * period_px + 0.5, 0, 1)
    p = np.abs(frac / w - 0.5) * 2  # 0 mid-rib, 1 at a margin
    p2 = p * p
    return inside * (0.5 + 0.5 * p2 * p2)


def _clavicles(sc: _Scene, body: np.ndarray) -> np.ndarray:
    """Both clavicles: S-curved bones from the sternal ends beside the midline, laterally and
    upwards across the apices to the shoulders (inside the body outline)."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    half = sc.thorax_px / n / 2
    rows = _window(sc, 0, n * (sc.top + 0.3 * sc.height), 0, 1)[0]
    u, v = u[rows], v[rows]
    s = np.abs(u) / np.float32(half)
    h = np.float32(sc.height)
    centre = np.float32(sc.top) + h * (np.float32(0.17) - np.float32(0.21) * s
                                       + np.float32(0.03) * np.sin(np.float32(5.5) * s))
    thick = np.float32(0.032 * half) * (1.3 - 0.4 * np.clip(s, 0, 1))
    band = np.clip((thick - np.abs(v - centre)) * np.float32(n) + 0.5, 0, 1)
    band *= np.clip((s - 0.1) * 25, 0, 1) * np.clip((1.2 - s) * 8, 0, 1)
    out = np.zeros((n, n), np.float32)
    out[rows] = band * np.clip(body[rows] * 4, 0, 1) * (0.8 + 0.2 * np.clip(1 - s, 0, 1))
    return out


def _breasts(sc: _Scene) -> np.ndarray:
    """Soft-tissue shadows over both lower zones: a sharp lower border, fading upwards."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    half = sc.thorax_px / n / 2
    s = np.abs(u) / np.float32(half)
    vc, rv = np.float32(sc.top + 0.86 * sc.height), np.float32(0.2 * sc.height)
    e = ((s - 0.55) / 0.5) ** 2 + ((v - vc) / rv) ** 2
    return np.sqrt(np.clip(1 - e, 0, 1)) * np.clip((v - vc + rv * 0.7) / rv, 0, 1)


# ---------------------------------------------------------------------------------------------
# findings


def _effusion(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Fluid in the lower lung: a meniscus rising laterally, blunting the costophrenic angle."""
    out = {}
    for side in _sides(f.side):
        top, bot, c0, c1 = sc.extent[side]
        lat, med = (c0, c1) if side == "right" else (c1, c0)
        hgt = bot - top
        level = (0.08, 0.22, 0.42)[f.severity - 1] * float(r.uniform(0.9, 1.1))
        rise = (0.12, 0.18, 0.22)[f.severity - 1]
        win = _window(sc, bot - (level + rise) * hgt - 4, bot + 2, min(c0, c1), max(c0, c1))
        rows = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        cols = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        p = np.clip((cols - med) / (lat - med), 0, 1)
        surface = bot - level * hgt - rise * hgt * p ** 1.5  # the meniscus: up laterally
        below = (rows - surface) / np.float32(0.08 * hgt)  # a thin, hazy layer at the top
        fluid = np.clip(below + 0.15, 0, 1) ** 0.7
        fluid *= sc.side_mask(side)[win]
        sc.opac[win] = np.maximum(sc.opac[win], fluid)
        out[side] = {"level_row": _r(bot - level * hgt)}
    return out


def _pneumothorax(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """A lung collapsed towards its hilum: a thin visceral pleural line, air without markings
    between it and the chest wall (apex and lateral)."""
    out = {}
    n = sc.layers.shape[1]
    grid = int(math.isqrt(n)) - 2 * _PAD
    for side in _sides(f.side):
        k = (0.88, 0.76, 0.60)[f.severity - 1] * float(r.uniform(0.97, 1.03))
        sign = 1 if side == "left" else -1
        wt = sc.thorax_px / sc.size
        ua, va = sign * 0.10 * wt, sc.top + 0.82 * sc.height * sc.g.side_height[side]
        uu = np.float32(ua) + (sc.f.u - np.float32(ua)) / np.float32(k)
        vv = np.float32(va) + (sc.f.v - np.float32(va)) / np.float32(k)
        collapsed = sc.sampler(*sc.canonical(uu, vv, side), grid + 2 * _PAD)(sc.layers[0])
        m = sc.side_mask(side)
        collapsed *= m > 0
        space = np.clip(m - collapsed, 0, 1)
        sc.ptx = np.maximum(sc.ptx, space)
        # the collapsed lung holds less air; the visceral pleura is a hairline
        sc.opac = np.maximum(sc.opac, np.float32(0.6 * (1 - k)) * collapsed)
        line = np.clip(1 - np.abs(collapsed - 0.5) * 3, 0, 1) * np.clip((m - 0.9) * 10, 0, 1)
        sc.dens += np.float32(0.14) * line
        out[side] = {"collapse": round(1 - k, 3)}
    return out


def _lesion(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Nodule (8-16 mm), calcified granuloma (3-6 mm, dense, sharp) or mass (35-70 mm,
    lobulated), inside the lung of its side and zone."""
    side = _sides(f.side)[0]
    sev = f.severity
    if f.name == "nodule":
        diam, dens, lobes, sharp = (8, 12, 16)[sev - 1], 0.42, 1, 1.0
    elif f.name == "calcified_granuloma":
        diam, dens, lobes, sharp = (3, 4.5, 6)[sev - 1], 1.1, 1, 2.0
    else:
        diam, dens, lobes, sharp = (35, 50, 70)[sev - 1], 0.50, 4, 0.6
    diam *= float(r.uniform(0.9, 1.1))
    rad = max(diam / 2 * sc.mm, 0.7)
    r0, c0 = _pick(sc, r, side, f.zone, margin=0.4 if lobes == 1 else 0.6)
    parts = [(r0, c0, rad)] if lobes == 1 else [
        (r0 + 0.35 * rad * math.sin(t), c0 + 0.35 * rad * math.cos(t),
         rad * float(r.uniform(0.6, 0.8))) for t in r.uniform(0, 2 * math.pi, lobes)]
    for pr, pc, pr_rad in parts:
        win, val = _disc(sc, pr, pc, pr_rad, sharp)
        mask = sc.lung[win]
        sc.opac[win] = np.maximum(sc.opac[win], val * mask * np.float32(min(1.0, dens * 1.5)))
        sc.dens[win] += np.float32(dens * 0.4) * val * (f.name != "mass")
    return {"row": _r(r0), "col": _r(c0), "diameter_mm": round(diam, 1)}


def _consolidation(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Fluffy airspace opacity in a zone of one lung, with air bronchograms when larger."""
    side = _sides(f.side)[0]
    r0, c0 = _pick(sc, r, side, f.zone, margin=0.5)
    ru = (0.11, 0.16, 0.22)[f.severity - 1] * sc.thorax_px
    rv = ru * float(r.uniform(0.65, 0.85))
    win = _window(sc, r0 - 1.6 * rv, r0 + 1.6 * rv, c0 - 1.6 * ru, c0 + 1.6 * ru)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - np.float32(r0)
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - np.float32(c0)
    blob = np.exp(-1.5 * ((rr / np.float32(rv)) ** 2 + (cc / np.float32(ru)) ** 2))
    fluff = np.clip(blob * (1.25 + 0.7 * sc.tex_med[win]) - 0.15, 0, 1) * sc.side_mask(side)[win]
    sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.88) * fluff)
    if f.severity >= 2:  # air bronchograms: the bronchial tree stays dark inside the opacity
        sc.dens[win] -= np.float32(0.10) * np.clip(sc.vessel[win] - 0.1, 0, 1) * fluff
    return {"row": _r(r0), "col": _r(c0)}


def _atelectasis(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Plate-like linear bands; at severity 3 a dense wedge of volume loss beside the
    mediastinum (with an elevated hemidiaphragm when basal: see `_geometry`)."""
    side = _sides(f.side)[0]
    m = sc.side_mask(side)
    r0, c0 = _pick(sc, r, side, f.zone, margin=0.5)
    half = (0.10, 0.12, 0.14)[f.severity - 1] * sc.thorax_px
    ang = math.radians(float(r.uniform(-12, 12)))
    dr, dc = half * math.sin(ang), half * math.cos(ang)
    width = max(1.1, 0.012 * sc.thorax_px * (0.8 + 0.3 * f.severity))
    for off in ((0.0,) if f.severity == 1 else (0.0, 3.5 * sc.scale)):
        win, val = _stroke(sc, ((r0 - dr + off, c0 - dc), (r0 + dr + off, c0 + dc)), width)
        sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.75) * val * m[win])
    if f.severity == 3:
        top, bot, c_0, c_1 = sc.extent[side]
        lo, hi = _ZONE_BANDS[f.zone]
        ra, rb = top + lo * (bot - top), top + min(hi + 0.12, 1.0) * (bot - top)
        win = _window(sc, ra, rb, min(c_0, c_1), max(c_0, c_1))
        rows = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        cols = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        med, lat = (c_1, c_0) if side == "right" else (c_0, c_1)
        p = (cols - med) / (lat - med)  # 0 medial, 1 lateral
        reach = 0.45 * np.clip((rows - ra) / max(rb - ra, 1), 0, 1)
        wedge = np.clip((reach - p) * abs(lat - med) / 1.5 + 0.5, 0, 1) * m[win]
        sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.85) * wedge)
    return {"row": _r(r0), "col": _r(c0)}


def _edema(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Bilateral perihilar (bat-wing) haze and Kerley B septal lines at the lateral bases."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    wt = sc.thorax_px / n
    sev = f.severity
    amp = (0.30, 0.50, 0.75)[sev - 1]
    su, sv = 0.15 * wt * (0.8 + 0.2 * sev), 0.17 * sc.height * (0.8 + 0.2 * sev)
    hv = sc.top + 0.44 * sc.height
    haze = np.exp(-((np.abs(u) - np.float32(0.15 * wt)) / np.float32(su)) ** 2
                  - ((v - np.float32(hv)) / np.float32(sv)) ** 2)
    haze = np.clip(haze * (0.8 + 0.35 * sc.tex_med), 0, 1) * np.float32(amp) * sc.lung
    sc.opac = np.maximum(sc.opac, haze)
    # Kerley B: 1-2 cm horizontal lines ~1 cm apart, touching the lateral pleura, lower zones
    period = max(2.6, 10 * sc.mm)
    rows = np.arange(n, dtype=np.float32)[:, None] / np.float32(period)
    lines = np.clip(1 - np.abs(rows - np.floor(rows) - 0.5) * np.float32(period), 0, 1)
    near = np.clip((np.float32(0.62) - sc.depth) * 6, 0, 1) * np.clip(
        (np.abs(u) / np.float32(wt / 2) - 0.55) * 5, 0, 1)
    low = np.clip((v - np.float32(sc.top + 0.55 * sc.height)) / np.float32(0.1 * sc.height), 0, 1)
    sc.dens += np.float32((0.10, 0.16, 0.2)[sev - 1]) * lines * near * low * sc.lung
    return {}


def _bullae(sc: _Scene, r: np.random.Generator, count: int) -> None:
    """Emphysematous bullae: lucent round spaces without markings, hairline walls."""
    for _ in range(count):
        side = str(r.choice(["left", "right"]))
        r0, c0 = _pick(sc, r, side, "upper", margin=0.5)
        rad = float(r.uniform(0.05, 0.08)) * sc.thorax_px
        win, val = _disc(sc, r0, c0, rad)
        inside = (val > 0).astype(np.float32) * sc.side_mask(side)[win]
        sc.ptx[win] = np.maximum(sc.ptx[win], inside * 0.8)
        ring = np.clip(1 - np.abs(val - 0.1) * 8, 0, 1) * inside
        sc.dens[win] += np.float32(0.06) * ring


def _device(sc: _Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Endotracheal tube in the trachea (tip 3-6 cm above the carina) or a central venous
    line (jugular or subclavian) ending in the superior vena cava; thin radiopaque lines."""
    fr, half = sc.f, sc.thorax_px / sc.size / 2
    thin = max(1.2, 0.009 * sc.thorax_px)
    if f.device == "endotracheal_tube":
        tip_v = sc.carina_v - float(r.uniform(30, 60)) * sc.mm / sc.size
        pts = [fr.to_px(0.02 * half * float(r.normal()), 0.0), fr.to_px(0.0, sc.top),
               fr.to_px(0.006 * half, tip_v)]
        win, val = _stroke(sc, pts, 0.09 * half * sc.size)  # the tube: a faint band
        sc.dens[win] += np.float32(0.12) * val
        for off in (-0.03, 0.03):  # its radiopaque walls
            wall = [(row, col + off * half * sc.size) for row, col in pts]
            win, val = _stroke(sc, wall, thin)
            sc.dens[win] += np.float32(0.45) * val
        return {"tip_row": _r(pts[-1][0]),
                "carina_row": _r(fr.to_px(0.0, sc.carina_v)[0])}
    route = str(r.choice(["right_jugular", "right_subclavian", "left_subclavian"]))
    h = sc.height
    tip = (-0.09 * half, sc.carina_v + 0.04 * h)
    if route == "right_jugular":
        path = [(-0.25 * half, 0.0), (-0.2 * half, sc.top + 0.08 * h),
                (-0.12 * half, sc.top + 0.18 * h), tip]
    else:
        sgn = -1 if route == "right_subclavian" else 1
        path = [(sgn * 0.8 * half, sc.top + 0.02 * h), (sgn * 0.45 * half, sc.top + 0.12 * h),
                (sgn * 0.15 * half, sc.top + 0.17 * h), (-0.1 * half, sc.top + 0.21 * h), tip]
    pts = [fr.to_px(u, v) for u, v in _smooth(path)]
    win, val = _stroke(sc, pts, thin)
    sc.dens[win] += np.float32(0.5) * val
    return {"route": route, "tip_row": _r(pts[-1][0])}


def _r(x: float) -> float:
    """A plain float rounded to 0.1 (for the JSON-ready details)."""
    return round(float(x), 1)


def _smooth(path: Sequence[tuple[float, float]], k: int = 4) -> list[tuple[float, float]]:
    """Chaikin corner cutting: a polyline with rounded corners, same ends."""
    pts = np.asarray(path, float)
    for _ in range(2):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        s = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.stack([q, s], 1).reshape(-1, 2)
        pts = np.vstack([pts[:1], mid, pts[-1:]])
    return [tuple(p) for p in pts]


_DRAW = {"effusion": _effusion, "pneumothorax": _pneumothorax, "nodule": _lesion,
         "calcified_granuloma": _lesion, "mass": _lesion, "consolidation": _consolidation,
         "atelectasis": _atelectasis, "edema": _edema, "support_devices": _device}


# ---------------------------------------------------------------------------------------------
# rendering


def render_with_info(findings: Iterable[PhantomFinding | Mapping[str, Any] | str], seed: int,
                     size: int = 128, *, shapes: LungShapes | None = None
                     ) -> tuple[np.ndarray, dict]:
    """Render a phantom PA chest radiograph; also return what was drawn.

    Returns ``(image, info)``: the image is float32 (size, size) in [0, 1]; ``info["findings"]``
    is the resolved list of `PhantomFinding` (sides, zones and devices that were None replaced
    by those drawn: ``labels_of(info["findings"])`` is the exact ground truth) and
    ``info["attributes"]`` a JSON-ready dict (patient size, rotation, inspiration, exposure,
    measured cardiothoracic ratio, lung shape index, ...).
    """
    if size < 16:
        raise ValueError(f"phantom size {size} is too small (16 px at least)")
    shapes = shapes if shapes is not None else default_shapes()
    r_anat, r_find, r_noise, r_bullae = np.random.default_rng(seed).spawn(4)
    a = _anatomy(r_anat, shapes)
    resolved = _resolve(parse_findings(findings), r_find)
    g = _geometry(a, resolved)
    sc = _Scene(a, g, shapes, size)
    heart, ctr = _heart(sc, g.ctr)
    medi = _mediastinum(sc)
    sc.carve = np.maximum(np.float32(0.8) * heart, medi)
    _trachea(sc)
    details = {}
    for f, r in resolved:
        if f.name in _DRAW:
            details.setdefault(f.name, []).append(_DRAW[f.name](sc, f, r))
    if g.bullae:
        _bullae(sc, r_bullae, g.bullae)
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


def _compose(sc: _Scene, r_noise: np.random.Generator) -> np.ndarray:
    """Sum the densities, then expose, window, blur and add noise."""
    a, g = sc.a, sc.g
    air = sc.lung * (np.float32(0.55) + np.float32(0.45) * np.maximum(sc.depth, sc.ptx))
    air *= (1 - sc.carve) * (1 - sc.opac)
    body = _body(sc)
    # air displaces a fraction of the chest's thickness (more of it where the lung is deep)
    d = body * (1 - np.float32(0.72 * g.air) * air - np.float32(0.12) * sc.ptx * sc.lung)
    d += np.float32(0.26 * g.vessels) * sc.vessel * (1 - sc.ptx) * air
    d += np.float32(0.025) * sc.tex_fine * air
    d += _spine(sc) * np.float32(0.16) + _ribs(sc) + np.float32(0.24) * _clavicles(sc, body)
    if a.female:
        d += np.float32(0.10) * _breasts(sc)
    if a.gastric:  # the stomach's air bubble under the left hemidiaphragm
        _, _, c0, c1 = sc.extent["left"]
        col = int(c0 + 0.6 * (c1 - c0))
        rows = np.flatnonzero(sc.left[:, col] > 0.5)
        rad = 0.045 * sc.thorax_px
        if rows.size:
            win, val = _disc(sc, rows[-1] + rad + 2 * sc.scale, col, rad)
            d[win] -= np.float32(0.10) * val
    d += sc.dens
    gain = np.float32(a.exposure)
    img = (1 - np.exp(-gain * np.clip(d, 0, None))) / np.float32(1 - math.exp(-a.exposure * 1.8))
    lo, hi = a.window
    img = (img - np.float32(lo)) / np.float32(hi - lo)
    img = ndimage.gaussian_filter(img, a.blur * sc.scale, truncate=2.5, mode="nearest")
    img += np.float32(a.noise) * r_noise.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 1, out=img)


def _attributes(sc: _Scene, ctr: float, shapes: LungShapes, details: dict) -> dict:
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
        "midline_col": _r(sc.f.to_px(0.0, 0.5)[1]),
        "carina_row": _r(sc.f.to_px(0.0, sc.carina_v)[0]),
        "details": details,
    }


# ---------------------------------------------------------------------------------------------
# the grid of every finding, and the `biomed phantom` tool


def _grid_rows() -> list[tuple[str, list[dict]]]:
    """(label, findings at severity 1..3) for each row of the grid."""
    zone = {"nodule": "middle", "calcified_granuloma": "upper", "mass": "upper",
            "consolidation": "lower", "atelectasis": "lower"}
    rows: list[tuple[str, list[dict]]] = [("normal", [{}] * 3)]
    for name in ("cardiomegaly", "effusion", "pneumothorax", "nodule", "calcified_granuloma",
                 "mass", "consolidation", "atelectasis", "edema", "emphysema",
                 "low_lung_volumes"):
        sides = ("left", "right") if PhantomFinding(name).lateral else (None,)
        for side in sides:
            label = name.replace("_", " ") + (f" ({side})" if side else "")
            rows.append((label, [{"name": name, "side": side, "severity": s,
                                  "zone": zone.get(name)} for s in SEVERITIES]))
    for dev in DEVICES:
        rows.append((dev.replace("_", " "), [{"name": "support_devices", "device": dev}] * 3))
    return rows


def phantom_grid(size: int = 128, seed: int = 0, *, shapes: LungShapes | None = None
                 ) -> np.ndarray:
    """One image of every finding at each severity: rows are findings (sided ones once per
    side; devices one row each), columns severity 1, 2, 3, all tiles one patient (``seed``).
    Labels are drawn in a left margin (PIL's default font)."""
    rows = _grid_rows()
    label_w, head = max(180, int(1.4 * size)), max(18, size // 6)
    grid = np.zeros((head + len(rows) * size, label_w + 3 * size), np.float32)
    for i, (_, specs) in enumerate(rows):
        for j, spec in enumerate(specs):
            fs = [{k: v for k, v in spec.items() if v is not None}] if spec else []
            y0, x0 = head + i * size, label_w + j * size
            grid[y0:y0 + size, x0:x0 + size] = render(fs, seed, size, shapes=shapes)
    im = Image.fromarray((grid * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=max(11, size // 10))
    except (TypeError, OSError, ImportError):  # no FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    for j in range(3):
        draw.text((label_w + j * size + 4, 2), f"severity {j + 1}", fill=255, font=font)
    for i, (label, _) in enumerate(rows):
        draw.text((4, head + i * size + size // 2 - 6), label, fill=255, font=font)
    labels = np.asarray(im, np.float32) / 255.0
    grid[:head] = labels[:head]
    grid[:, :label_w] = labels[:, :label_w]
    return grid


def parse_finding_spec(spec: str) -> PhantomFinding:
    """``name[:side][:severity][:zone][:device]`` (any order after the name), e.g.
    ``effusion:left:3``, ``nodule:right:upper``, ``support_devices:central_line``."""
    name, *mods = [p.strip() for p in spec.split(":")]
    kw: dict[str, Any] = {}
    for m in mods:
        key = ("side" if m in ("left", "right", "bilateral") else "zone" if m in ZONES
               else "device" if m in DEVICES else "severity" if m.isdigit() else None)
        if key is None or key in kw:
            raise ValueError(f"{spec!r}: cannot read {m!r} (expected a side, a severity 1-3, "
                             f"a zone {ZONES} or a device {DEVICES}, each at most once)")
        kw[key] = int(m) if key == "severity" else m
    return PhantomFinding(name, **kw)


def phantom_main(argv: list[str]) -> int:
    """`biomed phantom grid|render`: the grid of every finding, or one phantom as a 16-bit PNG."""
    p = argparse.ArgumentParser(prog="biomed phantom", description="Phantom (synthetic) chest "
                                "radiographs rendered from structured findings.")
    sub = p.add_subparsers(dest="action", required=True)
    pg = sub.add_parser("grid", help="every finding at severity 1-3 in one 8-bit PNG")
    pg.add_argument("--out", required=True)
    pg.add_argument("--size", type=int, default=128, help="tile size in pixels")
    pg.add_argument("--seed", type=int, default=0)
    pr = sub.add_parser("render", help="one phantom as a 16-bit PNG with provenance")
    pr.add_argument("--finding", action="append", default=[], metavar="SPEC",
                    help="name[:side][:severity][:zone][:device], repeatable (e.g. "
                    "effusion:left:3); none or 'normal': a normal chest")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--size", type=int, default=256)
    pr.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not 16 <= args.size <= 4096:
        print(f"error: --size {args.size}: expected 16 to 4096 pixels", file=sys.stderr)
        return 2
    try:
        findings = [parse_finding_spec(s) for s in getattr(args, "finding", [])
                    if s.strip() != "normal"]
    except ValueError as e:
        print(f"error: --finding {e}", file=sys.stderr)
        return 2
    if not Path(args.out).exists():
        check_creatable(args.out, "output PNG")  # a one-line error before any rendering
    text = {"synthetic": "phantom", "software": "biomed phantom", "seed": str(args.seed),
            "description": "Synthetic phantom chest radiograph, not a patient image"}
    if args.action == "grid":
        img = phantom_grid(args.size, args.seed)
        _write_png8(args.out, img, text)
        print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
        return 0
    img, info = render_with_info(findings, args.seed, args.size)
    text.update(size=str(args.size), findings=json.dumps([f.to_dict() for f in info["findings"]]),
                attributes=json.dumps(info["attributes"]))
    write_png16(args.out, img, text)
    drawn = ", ".join(json.dumps(f.to_dict()) for f in info["findings"]) or "normal"
    print(f"wrote {args.out}: {drawn} (seed {args.seed}, {args.size} px)")
    return 0


def _write_png8(path: str | Path, img: np.ndarray, text: Mapping[str, str]) -> None:
    """An 8-bit PNG (for pictures a person looks at) with tEXt provenance chunks."""
    meta = PngImagePlugin.PngInfo()
    for k, v in text.items():
        meta.add_text(k, v)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, pnginfo=meta)
