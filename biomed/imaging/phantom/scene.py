"""The scene one phantom is drawn into: the patient, the frame, the sampled lungs, the primitives.

- `Anatomy`: the per-seed patient (`biomed.imaging.phantom.anatomy.sample_anatomy` draws it);
  `Geometry`: what findings change before anything is drawn (lung volumes, diaphragm, heart
  size; `biomed.imaging.phantom.lesions.geometry`).
- `Frame`: the *patient frame* (u, v) on the output grid: u is the horizontal offset from the
  midline in image widths (positive towards the image's right = the patient's left), v the
  height down the image; a small in-plane tilt rotates it against the pixel grid.
- `Scene`: everything drawn for one image: the lungs sampled from a shape of the bank, the vessel
  tree, textures, and the fields that findings add to (``opac``, ``dens``, ``ptx``).
- Drawing primitives shared by the anatomy and the findings: `window`, `stroke` (a polyline),
  `disc` (a ball's projection), `pick` (a point in a lung zone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from biomed.imaging.phantom.layers import (
    PAD,
    VESSEL_GRID,
    Sampler,
    pixel_grid,
    shape_layers,
    textures,
    vessel_bank,
)
from biomed.imaging.phantom.shapes import LungShapes

__all__ = ["THORAX_MM", "ZONE_BANDS", "Anatomy", "Frame", "Geometry", "Scene", "disc", "pick",
           "rounded", "stroke", "window"]

THORAX_MM = 300.0  # the internal thoracic width a drawn thorax stands for (adult PA, 28-32 cm)
ZONE_BANDS = {"upper": (0.08, 0.36), "middle": (0.36, 0.62), "lower": (0.62, 0.86)}


@dataclass
class Anatomy:
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


@dataclass
class Geometry:
    """What findings change before anything is drawn (lung volumes, diaphragm, heart size)."""

    inspiration: float = 1.0  # multiplies the lung height
    side_height: dict = field(default_factory=lambda: {"right": 1.0, "left": 1.0})
    flatten: float = 0.0  # diaphragm flattening (emphysema), canonical units
    air: float = 1.0  # lung lucency multiplier
    vessels: float = 1.0  # vascular marking multiplier
    ctr: float | None = None
    heart_tall: float = 1.0  # heart height over what its width implies (the emphysema heart)
    bullae: int = 0


class Frame:
    """The patient frame on the output grid and its inverse (u, v) -> (row, col)."""

    def __init__(self, a: Anatomy, size: int) -> None:
        X, Y = pixel_grid(size)
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


class Scene:
    """Everything drawn for one image; findings add to ``opac`` (air replaced by fluid or
    tissue, 0-1) and ``dens`` (extra density), and may scale ``air``/``vessel`` fields.

    Set while the anatomy is drawn, before any finding: ``heart_v``/``heart_top``
    (`anatomy.heart`), ``carve`` (heart and mediastinum over the lungs), ``carina_v``
    (`anatomy.trachea`)."""

    def __init__(self, a: Anatomy, g: Geometry, shapes: LungShapes, size: int) -> None:
        self.a, self.g, self.size = a, g, size
        self.f = Frame(a, size)
        self.scale = size / 128.0
        self.width = a.width
        self.height = a.height * a.inspiration * g.inspiration
        bottom = a.top + self.height
        if bottom > 0.93:  # a big chest fills the film: shrink it to fit, keep its aspect
            k = (0.93 - a.top) / self.height
            self.width, self.height = self.width * k, self.height * k
        self.top = a.top
        self.mid = float(shapes.midline[a.shape])
        self.layers = shape_layers(shapes, a.shape)
        self._sample_lungs(shapes.size)
        self.opac = np.zeros((size, size), np.float32)
        self.dens = np.zeros((size, size), np.float32)
        self.ptx = np.zeros((size, size), np.float32)  # pneumothorax space (pure air)
        ox, oy = a.tex_offset
        tex = textures(size)
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

    def sampler(self, xc, yc, n: int) -> Sampler:
        g = n - 2 * PAD
        return Sampler(yc * np.float32(g) + np.float32(PAD - 0.5),
                        xc * np.float32(g) + np.float32(PAD - 0.5), n)

    def _sample_lungs(self, grid: int) -> None:
        f, n = self.f, grid + 2 * PAD
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
        vn = VESSEL_GRID + 2 * PAD
        xv = xc + np.float32(0.5 - self.mid)
        self.vessel = self.sampler(xv, yc, vn)(vessel_bank()[self.a.vessel_tree])
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


def window(sc: Scene, r0: float, r1: float, c0: float, c1: float) -> tuple[slice, slice]:
    n = sc.size
    return (slice(max(0, int(r0)), min(n, int(math.ceil(r1)) + 1)),
            slice(max(0, int(c0)), min(n, int(math.ceil(c1)) + 1)))


def stroke(sc: Scene, pts: Sequence[tuple[float, float]], width: float
           ) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage (0-1) of a polyline of (row, col) points ``width`` pixels wide, in a window."""
    p = np.asarray(pts, np.float32)
    m = width / 2 + 2
    win = window(sc, p[:, 0].min() - m, p[:, 0].max() + m, p[:, 1].min() - m, p[:, 1].max() + m)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
    d2 = np.full((rr.size, cc.size), np.inf, np.float32)
    for (ar, ac), (br, bc) in zip(p[:-1], p[1:], strict=True):
        er, ec = br - ar, bc - ac
        t = np.clip(((rr - ar) * er + (cc - ac) * ec) / max(er * er + ec * ec, 1e-6), 0, 1)
        d2 = np.minimum(d2, (rr - ar - t * er) ** 2 + (cc - ac - t * ec) ** 2)
    return win, np.clip(width / 2 + 0.5 - np.sqrt(d2), 0, 1)


def disc(sc: Scene, r0: float, c0: float, radius: float, sharp: float = 1.0
         ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A ball's projected thickness (0-1) centred at (r0, c0), antialiased, in a window."""
    win = window(sc, r0 - radius - 2, r0 + radius + 2, c0 - radius - 2, c0 + radius + 2)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - np.float32(r0)
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - np.float32(c0)
    d = np.sqrt(rr * rr + cc * cc)
    cover = np.clip((radius - d) * sharp + 0.5, 0, 1)
    dome = np.sqrt(np.clip(1 - (d / max(radius, 0.5)) ** 2, 0, 1))
    return win, cover * (0.45 + 0.55 * dome)


def pick(sc: Scene, rng: np.random.Generator, side: str, zone: str,
         margin: float = 0.4) -> tuple[float, float]:
    """A random (row, col) inside the lung of ``side`` in ``zone``, away from the heart/edges."""
    top, bot, _, _ = sc.extent[side]
    lo, hi = ZONE_BANDS[zone]
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


def rounded(x: float) -> float:
    """A plain float rounded to 0.1 (for the JSON-ready details)."""
    return round(float(x), 1)
