"""The findings the phantom draws: one function per finding, registered by name.

A finding acts in up to two steps, each a registry from finding name to function:

- `RESHAPERS`: before anything is drawn, it changes the `Geometry` of the chest (lung volumes,
  diaphragm, heart size): ``(geometry, anatomy, finding, rng) -> None``.
- `DRAWERS`: it draws into the `Scene`: ``opac`` (air replaced by fluid or tissue, 0-1),
  ``dens`` (extra density) or ``ptx`` (air without lung markings); ``(scene, finding, rng) ->
  details``, a JSON-ready dict that ends up in ``info["attributes"]["details"]``.

A new finding: add its name to the vocabulary (`biomed.imaging.core.findings.FINDING_NAMES`
and its label in `biomed.imaging.core.labels`), write its function here and register it in one
registry or both (a focal finding, drawn in a lung zone, also goes in `FOCAL`), and give it a
row of the grid (`biomed.imaging.phantom.tool`). `resolve` first replaces every unspecified
side, zone or device by one drawn from the finding's own random stream, so adding a finding
leaves the anatomy and the other findings of a seed unchanged. Sides are the patient's: a left
finding is on the image's right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from biomed.imaging.core.findings import DEVICES, ZONES, PhantomFinding
from biomed.imaging.phantom.layers import PAD
from biomed.imaging.phantom.scene import (
    ZONE_BANDS,
    Anatomy,
    Geometry,
    Scene,
    disc,
    pick,
    rounded,
    stroke,
    window,
)

__all__ = ["DRAWERS", "FOCAL", "RESHAPERS", "Drawer", "Reshaper", "bullae", "geometry",
           "resolve", "sides"]

#: ``(scene, finding, its random stream) -> details``: draws the finding into the scene.
Drawer = Callable[[Scene, PhantomFinding, np.random.Generator], dict]
#: ``(geometry, anatomy, finding, its random stream) -> None``: changes the geometry in place.
Reshaper = Callable[[Geometry, Anatomy, PhantomFinding, np.random.Generator], None]

FOCAL = ("nodule", "calcified_granuloma", "mass", "consolidation", "atelectasis")  # have a zone
_CTR_BY_SEVERITY = {1: 0.55, 2: 0.60, 3: 0.66}


# ---------------------------------------------------------------------------------------------
# resolving findings (side, zone, device drawn from each finding's own stream)


def resolve(findings: Sequence[PhantomFinding], rng: np.random.Generator
            ) -> list[tuple[PhantomFinding, np.random.Generator]]:
    """Each finding with its own child stream of ``rng``, its unspecified side, zone and device
    drawn from that stream (the resolved findings are the exact ground truth)."""
    out = []
    for f, r in zip(findings, rng.spawn(len(findings)), strict=True):
        side, zone, device = f.side, f.zone, f.device
        if f.lateral and side is None:
            side = "bilateral" if f.name == "effusion" and r.random() < 0.2 else \
                str(r.choice(["left", "right"]))
        if f.name in FOCAL and zone is None:
            zone = str(r.choice(ZONES if f.name != "atelectasis" else ("middle", "lower")))
        if f.name == "support_devices" and device is None:
            device = str(r.choice(DEVICES))
        out.append((replace(f, side=side, zone=zone, device=device), r))
    return out


def sides(side: str | None) -> tuple[str, ...]:
    """The sides a finding is drawn on (bilateral: both; unspecified: the right)."""
    return ("left", "right") if side == "bilateral" else (side or "right",)


# ---------------------------------------------------------------------------------------------
# geometry: what findings change before anything is drawn


def heart_size(g: Geometry, a: Anatomy, f: PhantomFinding, r: np.random.Generator) -> None:
    """Cardiomegaly: the cardiothoracic ratio of its severity (0.55 / 0.60 / 0.66)."""
    g.ctr = _CTR_BY_SEVERITY[f.severity] + float(r.uniform(-0.008, 0.015))


def hyperinflation(g: Geometry, a: Anatomy, f: PhantomFinding, r: np.random.Generator) -> None:
    """Emphysema: large lucent lungs, flat hemidiaphragms, pruned vessels, bullae (drawn by
    `bullae`) and a narrow, vertical heart."""
    sev = f.severity
    g.inspiration *= (1.10, 1.18, 1.26)[sev - 1]
    g.flatten = max(g.flatten, (0.05, 0.09, 0.13)[sev - 1])
    g.air *= (1.06, 1.12, 1.18)[sev - 1]
    g.vessels *= (0.70, 0.52, 0.38)[sev - 1]
    g.bullae = max(g.bullae, sev - 1)
    if g.ctr is not None and g.ctr < 0.5:  # a narrow, vertical heart
        narrow = min(g.ctr, 0.36 + 0.02 * (a.ctr - 0.42) / 0.06 * 3)
        g.heart_tall, g.ctr = g.ctr / narrow, narrow


def low_volumes(g: Geometry, a: Anatomy, f: PhantomFinding, r: np.random.Generator) -> None:
    """Low lung volumes: shorter lungs, crowded vessels."""
    sev = f.severity
    g.inspiration *= (0.90, 0.82, 0.75)[sev - 1]
    g.vessels *= (1.12, 1.25, 1.38)[sev - 1]


def raised_hemidiaphragm(g: Geometry, a: Anatomy, f: PhantomFinding, r: np.random.Generator
                         ) -> None:
    """Atelectasis: a lower-zone collapse of severity 2-3 raises its side's hemidiaphragm."""
    sev = f.severity
    if f.zone == "lower" and sev >= 2:
        for s in sides(f.side):
            g.side_height[s] = min(g.side_height[s], (1.0, 0.93, 0.86)[sev - 1])


def congestion(g: Geometry, a: Anatomy, f: PhantomFinding, r: np.random.Generator) -> None:
    """Oedema: engorged vessels."""
    g.vessels *= 1.0 + 0.15 * f.severity


#: finding name -> what it changes before anything is drawn
RESHAPERS: dict[str, Reshaper] = {
    "cardiomegaly": heart_size, "emphysema": hyperinflation, "low_lung_volumes": low_volumes,
    "atelectasis": raised_hemidiaphragm, "edema": congestion,
}


def geometry(a: Anatomy, resolved: Sequence[tuple[PhantomFinding, np.random.Generator]]
             ) -> Geometry:
    """The chest's geometry after every finding's reshaper, in the order they are listed."""
    g = Geometry(ctr=a.ctr)
    for f, r in resolved:
        if f.name in RESHAPERS:
            RESHAPERS[f.name](g, a, f, r)
    return g


# ---------------------------------------------------------------------------------------------
# drawers


def effusion(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Fluid in the lower lung: a meniscus rising laterally, blunting the costophrenic angle."""
    out = {}
    for side in sides(f.side):
        top, bot, c0, c1 = sc.extent[side]
        lat, med = (c0, c1) if side == "right" else (c1, c0)
        hgt = bot - top
        level = (0.08, 0.22, 0.42)[f.severity - 1] * float(r.uniform(0.9, 1.1))
        rise = (0.12, 0.18, 0.22)[f.severity - 1]
        win = window(sc, bot - (level + rise) * hgt - 4, bot + 2, min(c0, c1), max(c0, c1))
        rows = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        cols = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        p = np.clip((cols - med) / (lat - med), 0, 1)
        surface = bot - level * hgt - rise * hgt * p ** 1.5  # the meniscus: up laterally
        below = (rows - surface) / np.float32(0.08 * hgt)  # a thin, hazy layer at the top
        fluid = np.clip(below + 0.15, 0, 1) ** 0.7
        fluid *= sc.side_mask(side)[win]
        sc.opac[win] = np.maximum(sc.opac[win], fluid)
        out[side] = {"level_row": rounded(bot - level * hgt)}
    return out


def pneumothorax(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """A lung collapsed towards its hilum: a thin visceral pleural line, air without markings
    between it and the chest wall (apex and lateral)."""
    out = {}
    n = sc.layers.shape[1]
    grid = int(math.isqrt(n)) - 2 * PAD
    for side in sides(f.side):
        k = (0.88, 0.76, 0.60)[f.severity - 1] * float(r.uniform(0.97, 1.03))
        sign = 1 if side == "left" else -1
        wt = sc.thorax_px / sc.size
        ua, va = sign * 0.10 * wt, sc.top + 0.82 * sc.height * sc.g.side_height[side]
        uu = np.float32(ua) + (sc.f.u - np.float32(ua)) / np.float32(k)
        vv = np.float32(va) + (sc.f.v - np.float32(va)) / np.float32(k)
        collapsed = sc.sampler(*sc.canonical(uu, vv, side), grid + 2 * PAD)(sc.layers[0])
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


def focal_lesion(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Nodule (8-16 mm), calcified granuloma (3-6 mm, dense, sharp) or mass (35-70 mm,
    lobulated), inside the lung of its side and zone."""
    side = sides(f.side)[0]
    sev = f.severity
    if f.name == "nodule":
        diam, dens, lobes, sharp = (8, 12, 16)[sev - 1], 0.42, 1, 1.0
    elif f.name == "calcified_granuloma":
        diam, dens, lobes, sharp = (3, 4.5, 6)[sev - 1], 1.1, 1, 2.0
    else:
        diam, dens, lobes, sharp = (35, 50, 70)[sev - 1], 0.50, 4, 0.6
    diam *= float(r.uniform(0.9, 1.1))
    rad = max(diam / 2 * sc.mm, 0.7)
    r0, c0 = pick(sc, r, side, f.zone, margin=0.4 if lobes == 1 else 0.6)
    parts = [(r0, c0, rad)] if lobes == 1 else [
        (r0 + 0.35 * rad * math.sin(t), c0 + 0.35 * rad * math.cos(t),
         rad * float(r.uniform(0.6, 0.8))) for t in r.uniform(0, 2 * math.pi, lobes)]
    for pr, pc, pr_rad in parts:
        win, val = disc(sc, pr, pc, pr_rad, sharp)
        mask = sc.lung[win]
        sc.opac[win] = np.maximum(sc.opac[win], val * mask * np.float32(min(1.0, dens * 1.5)))
        sc.dens[win] += np.float32(dens * 0.4) * val * (f.name != "mass")
    return {"row": rounded(r0), "col": rounded(c0), "diameter_mm": round(diam, 1)}


def consolidation(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Fluffy airspace opacity in a zone of one lung, with air bronchograms when larger."""
    side = sides(f.side)[0]
    r0, c0 = pick(sc, r, side, f.zone, margin=0.5)
    ru = (0.11, 0.16, 0.22)[f.severity - 1] * sc.thorax_px
    rv = ru * float(r.uniform(0.65, 0.85))
    win = window(sc, r0 - 1.6 * rv, r0 + 1.6 * rv, c0 - 1.6 * ru, c0 + 1.6 * ru)
    rr = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - np.float32(r0)
    cc = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - np.float32(c0)
    blob = np.exp(-1.5 * ((rr / np.float32(rv)) ** 2 + (cc / np.float32(ru)) ** 2))
    fluff = np.clip(blob * (1.25 + 0.7 * sc.tex_med[win]) - 0.15, 0, 1) * sc.side_mask(side)[win]
    sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.88) * fluff)
    if f.severity >= 2:  # air bronchograms: the bronchial tree stays dark inside the opacity
        sc.dens[win] -= np.float32(0.10) * np.clip(sc.vessel[win] - 0.1, 0, 1) * fluff
    return {"row": rounded(r0), "col": rounded(c0)}


def atelectasis(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Plate-like linear bands; at severity 3 a dense wedge of volume loss beside the
    mediastinum (with an elevated hemidiaphragm when basal: see `raised_hemidiaphragm`)."""
    side = sides(f.side)[0]
    m = sc.side_mask(side)
    r0, c0 = pick(sc, r, side, f.zone, margin=0.5)
    half = (0.10, 0.12, 0.14)[f.severity - 1] * sc.thorax_px
    ang = math.radians(float(r.uniform(-12, 12)))
    dr, dc = half * math.sin(ang), half * math.cos(ang)
    width = max(1.1, 0.012 * sc.thorax_px * (0.8 + 0.3 * f.severity))
    for off in ((0.0,) if f.severity == 1 else (0.0, 3.5 * sc.scale)):
        win, val = stroke(sc, ((r0 - dr + off, c0 - dc), (r0 + dr + off, c0 + dc)), width)
        sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.75) * val * m[win])
    if f.severity == 3:
        top, bot, c_0, c_1 = sc.extent[side]
        lo, hi = ZONE_BANDS[f.zone]
        ra, rb = top + lo * (bot - top), top + min(hi + 0.12, 1.0) * (bot - top)
        win = window(sc, ra, rb, min(c_0, c_1), max(c_0, c_1))
        rows = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None]
        cols = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :]
        med, lat = (c_1, c_0) if side == "right" else (c_0, c_1)
        p = (cols - med) / (lat - med)  # 0 medial, 1 lateral
        reach = 0.45 * np.clip((rows - ra) / max(rb - ra, 1), 0, 1)
        wedge = np.clip((reach - p) * abs(lat - med) / 1.5 + 0.5, 0, 1) * m[win]
        sc.opac[win] = np.maximum(sc.opac[win], np.float32(0.85) * wedge)
    return {"row": rounded(r0), "col": rounded(c0)}


def edema(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
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


def bullae(sc: Scene, r: np.random.Generator, count: int) -> None:
    """Emphysematous bullae: lucent round spaces without markings, hairline walls."""
    for _ in range(count):
        side = str(r.choice(["left", "right"]))
        r0, c0 = pick(sc, r, side, "upper", margin=0.5)
        rad = float(r.uniform(0.05, 0.08)) * sc.thorax_px
        win, val = disc(sc, r0, c0, rad)
        inside = (val > 0).astype(np.float32) * sc.side_mask(side)[win]
        sc.ptx[win] = np.maximum(sc.ptx[win], inside * 0.8)
        ring = np.clip(1 - np.abs(val - 0.1) * 8, 0, 1) * inside
        sc.dens[win] += np.float32(0.06) * ring


def support_device(sc: Scene, f: PhantomFinding, r: np.random.Generator) -> dict:
    """Endotracheal tube in the trachea (tip 3-6 cm above the carina) or a central venous
    line (jugular or subclavian) ending in the superior vena cava; thin radiopaque lines."""
    fr, half = sc.f, sc.thorax_px / sc.size / 2
    thin = max(1.2, 0.009 * sc.thorax_px)
    if f.device == "endotracheal_tube":
        tip_v = sc.carina_v - float(r.uniform(30, 60)) * sc.mm / sc.size
        pts = [fr.to_px(0.02 * half * float(r.normal()), 0.0), fr.to_px(0.0, sc.top),
               fr.to_px(0.006 * half, tip_v)]
        win, val = stroke(sc, pts, 0.09 * half * sc.size)  # the tube: a faint band
        sc.dens[win] += np.float32(0.12) * val
        for off in (-0.03, 0.03):  # its radiopaque walls
            wall = [(row, col + off * half * sc.size) for row, col in pts]
            win, val = stroke(sc, wall, thin)
            sc.dens[win] += np.float32(0.45) * val
        return {"tip_row": rounded(pts[-1][0]),
                "carina_row": rounded(fr.to_px(0.0, sc.carina_v)[0])}
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
    win, val = stroke(sc, pts, thin)
    sc.dens[win] += np.float32(0.5) * val
    return {"route": route, "tip_row": rounded(pts[-1][0])}


def _smooth(path: Sequence[tuple[float, float]], k: int = 4) -> list[tuple[float, float]]:
    """Chaikin corner cutting: a polyline with rounded corners, same ends."""
    pts = np.asarray(path, float)
    for _ in range(2):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        s = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.stack([q, s], 1).reshape(-1, 2)
        pts = np.vstack([pts[:1], mid, pts[-1:]])
    return [tuple(p) for p in pts]


#: finding name -> its drawer (emphysema's bullae are drawn by `bullae`, after every drawer,
#: from a stream of their own)
DRAWERS: dict[str, Drawer] = {
    "effusion": effusion, "pneumothorax": pneumothorax, "nodule": focal_lesion,
    "calcified_granuloma": focal_lesion, "mass": focal_lesion, "consolidation": consolidation,
    "atelectasis": atelectasis, "edema": edema, "support_devices": support_device,
}
