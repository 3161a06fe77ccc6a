"""The precomputed layers a phantom is sampled from: lungs of a shape, vessel trees, textures.

Each is built once per process and shared by every later image: the lung field and its depth
for each shape of the bank (`biomed.imaging.phantom.shapes`), a small bank of pulmonary vessel
trees in a canonical lung frame, smooth noise textures and the pixel-centre grid of each output
size. Canonical layers are flattened and zero-padded (`PAD`), so that `Sampler`'s bilinear
lookups outside them read 0.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from biomed.imaging.phantom.shapes import LungShapes

__all__ = ["N_VESSEL_TREES", "PAD", "VESSEL_GRID", "Sampler", "pixel_grid", "shape_layers",
           "textures", "vessel_bank"]

PAD = 2  # zero border around canonical layers, so lookups outside them read 0
VESSEL_GRID = 256  # canonical resolution of the vessel-tree bank
N_VESSEL_TREES = 8


def shape_layers(shapes: LungShapes, k: int) -> np.ndarray:
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
    out = np.pad(np.stack([lung, depth]), ((0, 0), (PAD, PAD), (PAD, PAD)))
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
def vessel_bank() -> np.ndarray:
    """(K, n*n) padded vessel-tree layers in the canonical lung frame (midline at x = 0.5).

    Each is two pulmonary trees drawn from the hila (the left hilum a little higher), every
    branch splitting in two, thinner and fainter at each generation, plus hilar density. Drawn
    with PIL at 2x and reduced: antialiased. Fixed seed: the same bank in every process.
    """
    rng = np.random.default_rng(20240607)
    big = VESSEL_GRID * 2
    out = []
    for _ in range(N_VESSEL_TREES):
        im = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(im)
        for hx, hy, sgn in ((0.37, 0.45, -1), (0.63, 0.41, +1)):  # right hilum, left hilum
            for ang in np.array([-85.0, -45, -5, 35, 70]) + rng.normal(0, 7, 5):
                # angle from the lateral direction, degrees; negative: upwards
                theta = math.radians(ang)
                _branch(draw, rng, (hx * big, hy * big), (sgn * math.cos(theta), math.sin(theta)),
                        0.11 * big * rng.uniform(0.8, 1.15), 0.011 * big, 1.0, 6)
        tree = np.asarray(im.reduce(2), np.float32) / 255.0
        yy, xx = np.mgrid[0:VESSEL_GRID, 0:VESSEL_GRID] / VESSEL_GRID
        for hx, hy in ((0.37, 0.45), (0.63, 0.41)):
            tree += 0.45 * np.exp(-((xx - hx) ** 2 + ((yy - hy) / 1.8) ** 2) / (2 * 0.03 ** 2))
        tree = ndimage.gaussian_filter(np.clip(tree, 0, 1.2), 0.6)
        out.append(np.pad(tree, PAD).ravel())
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
def textures(size: int) -> np.ndarray:
    """(2, 2*size, 2*size) unit-variance smooth noise: fine (lung texture), medium (fluffy)."""
    rng = np.random.default_rng(7)
    out = []
    for sigma in (0.7 * size / 128, size / 40):
        t = ndimage.gaussian_filter(rng.standard_normal((2 * size, 2 * size)), sigma, mode="wrap")
        out.append(t / t.std())
    return np.stack(out).astype(np.float32)


@lru_cache(maxsize=4)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the image: (X, Y), each (size, size) float32."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


class Sampler:
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

