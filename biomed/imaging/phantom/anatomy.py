"""The normal chest: the per-seed patient and the layers of its anatomy.

`sample_anatomy` draws a patient from the anatomy stream of a seed (lung shape, vessel tree,
size, rotation, inspiration, heart, exposure, noise...). The layers are then drawn on the
`biomed.imaging.phantom.scene.Scene`: the body envelope (neck, shoulders, torso), the heart
and the upper mediastinum (which carve the lungs), the trachea and main bronchi, the spine,
posterior and anterior ribs, clavicles, breast shadows and the gastric bubble. Each returns a
density or coverage layer (or, for the trachea and the gastric bubble, adds to one);
`biomed.imaging.phantom.render` sums them. Findings live in `biomed.imaging.phantom.lesions`.
"""

from __future__ import annotations

import math

import numpy as np

from biomed.imaging.phantom.layers import N_VESSEL_TREES
from biomed.imaging.phantom.scene import Anatomy, Scene, disc, stroke, window
from biomed.imaging.phantom.shapes import LungShapes

__all__ = ["body", "breasts", "clavicles", "gastric_bubble", "heart", "mediastinum", "ribs",
           "sample_anatomy", "spine", "trachea"]


def sample_anatomy(rng: np.random.Generator, shapes: LungShapes) -> Anatomy:
    """One patient from the anatomy stream of a seed (lengths: fractions of the image side)."""
    k = int(rng.integers(len(shapes)))
    width = float(rng.uniform(0.70, 0.82))
    aspect = 0.4 * float(shapes.aspect[k]) + 0.6 * float(rng.uniform(0.90, 1.0))
    return Anatomy(
        shape=k, vessel_tree=int(rng.integers(N_VESSEL_TREES)),
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


def body(sc: Scene) -> np.ndarray:
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


def heart(sc: Scene, ctr: float) -> tuple[np.ndarray, float]:
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
    win = window(sc, r0 - ext, r0 + ext, c0 - ext, c0 + ext)
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


def mediastinum(sc: Scene) -> np.ndarray:
    """Upper mediastinum down to the heart: soft tissue between the lungs that carves them.

    Its left border (image right) bulges at the aortic knob; the right border is the
    superior vena cava's stripe. Both widen a little towards the heart.
    """
    u, v, n = sc.f.u, sc.f.v, sc.size
    wt = sc.thorax_px / n
    rows = window(sc, 0, n * sc.heart_v + 2, 0, 1)[0]
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


def trachea(sc: Scene) -> None:
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
        win, val = stroke(sc, pts, w)
        air[win] = np.maximum(air[win], val)
    sc.dens[rows] -= np.float32(0.22) * air[rows] * (1 - sc.lung[rows] * (1 - sc.carve[rows]))


def spine(sc: Scene) -> np.ndarray:
    """The thoracic spine: vertebral bodies with bright end plates, pedicles, discs between."""
    n = sc.size
    wt = sc.thorax_px / n
    cols = window(sc, 0, 1, n * (sc.a.cx - 0.12 * wt) - 1, n * (sc.a.cx + 0.12 * wt) + 1)[1]
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


def ribs(sc: Scene) -> np.ndarray:
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


def clavicles(sc: Scene, body: np.ndarray) -> np.ndarray:
    """Both clavicles: S-curved bones from the sternal ends beside the midline, laterally and
    upwards across the apices to the shoulders (inside the body outline)."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    half = sc.thorax_px / n / 2
    rows = window(sc, 0, n * (sc.top + 0.3 * sc.height), 0, 1)[0]
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


def breasts(sc: Scene) -> np.ndarray:
    """Soft-tissue shadows over both lower zones: a sharp lower border, fading upwards."""
    u, v, n = sc.f.u, sc.f.v, sc.size
    half = sc.thorax_px / n / 2
    s = np.abs(u) / np.float32(half)
    vc, rv = np.float32(sc.top + 0.86 * sc.height), np.float32(0.2 * sc.height)
    e = ((s - 0.55) / 0.5) ** 2 + ((v - vc) / rv) ** 2
    return np.sqrt(np.clip(1 - e, 0, 1)) * np.clip((v - vc + rv * 0.7) / rv, 0, 1)


def gastric_bubble(sc: Scene, d: np.ndarray) -> None:
    """The stomach's air bubble under the left hemidiaphragm, subtracted from the density ``d``."""
    _, _, c0, c1 = sc.extent["left"]
    col = int(c0 + 0.6 * (c1 - c0))
    rows = np.flatnonzero(sc.left[:, col] > 0.5)
    rad = 0.045 * sc.thorax_px
    if rows.size:
        win, val = disc(sc, rows[-1] + rad + 2 * sc.scale, col, rad)
        d[win] -= np.float32(0.10) * val
