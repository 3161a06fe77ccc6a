"""A bank of real lung shapes for the phantom, from the 517 binary lung masks in the embedded data.

The masks (torchxrayvision's V7 Labs semantic lung masks: PNG/JPEG, mode L, 0/255, both lungs in
one image, sizes from 256 to 4280 px) are normalised once into a fixed working grid:

- binarise, keep the two largest connected components, fill their holes;
- the component on the image's left is the patient's **right** lung, the other the left lung;
- reject implausible pairs (one component, tiny, very asymmetric, overlapping in x, odd aspect);
- crop to the pair's bounding box and resample each lung to ``size x size`` (antialiased uint8).

The bank is cached as ``$BIOMED_CACHE/phantom/lung_shapes_<sha>_<bytes>_g<size>_v<version>.npz``
(written to a temporary file, then renamed). Without the data (`DataNotFetched`) a parametric
bank of rounded-triangular lung fields stands in, with a logged warning, so the phantom always
renders.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from biomed import sources
from biomed.errors import DataNotFetched

__all__ = ["BANK_VERSION", "LungShapes", "build_lung_shapes", "default_shapes",
           "load_lung_shapes", "normalise_mask", "parametric_shapes"]

log = logging.getLogger(__name__)

ITEM, MEMBER = "lung_masks", "semantic_masks_v7labs_lungs.zip"
BANK_VERSION = 1  # bump when the normalisation changes: old caches are then ignored
_DECODE_MAX = 512  # masks are decoded/reduced to at most this many pixels a side first
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class LungShapes:
    """N lung pairs on a ``size x size`` grid spanning the pair's bounding box.

    ``right``/``left``: (N, size, size) uint8 in 0-255 (antialiased masks of the patient's right
    lung, drawn on the image's left, and of the left lung). ``midline``: (N,) the column, as a
    fraction of the width, of the gap between the lungs. ``aspect``: (N,) height/width of the
    pair's bounding box in the source image. ``source``: "masks" or "parametric".
    """

    right: np.ndarray
    left: np.ndarray
    midline: np.ndarray
    aspect: np.ndarray
    source: str
    stats: dict = field(default_factory=dict)
    names: tuple[str, ...] = ()
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # renderer's layers

    def __len__(self) -> int:
        return len(self.right)

    @property
    def size(self) -> int:
        return int(self.right.shape[-1])

    def labels(self) -> np.ndarray:
        """(N, size, size) uint8: 0 background, 1 the patient's right lung, 2 the left lung."""
        out = np.zeros(self.right.shape, np.uint8)
        out[self.right >= 128] = 1
        out[self.left >= 128] = 2
        return out

    def fingerprint(self) -> str:
        """``<source>-<hash of the masks, midlines and aspects>``: which shapes a phantom was
        drawn on (the real bank, and which one, or the parametric fallback), for cache keys."""
        h = hashlib.sha256()
        for a in (self.right, self.left, self.midline, self.aspect):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return f"{self.source}-{h.hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# normalising one mask


def _decode(data: bytes) -> np.ndarray:
    """A mask file -> bool array, decoded at a reduced size (JPEG draft mode, then reduce)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (_DECODE_MAX, _DECODE_MAX))  # JPEG: decode at 1/2..1/8 scale
        im = im.convert("L")
        factor = max(1, max(im.size) // _DECODE_MAX)
        if factor > 1:
            im = im.reduce(factor)
        return np.asarray(im) > 127


def normalise_mask(mask: np.ndarray, size: int
                   ) -> tuple[np.ndarray, np.ndarray, float, float] | str:
    """One binary mask -> (right, left, midline, aspect) on the grid, or the reason it is rejected.

    Reasons: "empty", "one component", "tiny", "asymmetric", "overlapping", "aspect".
    """
    h, w = mask.shape
    lab, n = ndimage.label(mask)
    if n == 0:
        return "empty"
    if n < 2:
        return "one component"
    areas = np.bincount(lab.ravel())[1:]
    a, b = np.argsort(areas)[::-1][:2] + 1  # labels of the two largest components
    if areas[a - 1] + areas[b - 1] < 0.02 * h * w:
        return "tiny"
    if areas[b - 1] < 0.3 * areas[a - 1]:
        return "asymmetric"
    comps = [ndimage.binary_fill_holes(lab == k) for k in (a, b)]
    centres = [np.argwhere(c).mean(0) for c in comps]  # (row, col)
    if centres[0][1] > centres[1][1]:
        comps, centres = comps[::-1], centres[::-1]  # image-left component first: patient's right
    union = comps[0] | comps[1]
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bw, bh = c1 - c0, r1 - r0
    if centres[1][1] - centres[0][1] < 0.3 * bw:
        return "overlapping"
    if abs(centres[1][0] - centres[0][0]) > 0.25 * bh:
        return "asymmetric"
    aspect = bh / bw
    if not 0.55 <= aspect <= 1.6:
        return "aspect"
    out = []
    for c in comps:
        crop = Image.fromarray(c[r0:r1, c0:c1].astype(np.uint8) * 255)
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.BOX
                                          if min(bw, bh) >= size else Image.Resampling.BILINEAR)))
    return out[0], out[1], _midline(out[0], out[1]), float(aspect)


def _midline(right: np.ndarray, left: np.ndarray) -> float:
    """Column fraction halfway between the lungs' medial edges over the rows where both exist."""
    size = right.shape[1]
    r, l_ = right >= 128, left >= 128
    both = r.any(1) & l_.any(1)
    if not both.any():
        return 0.5
    cols = np.arange(size)
    r_med = np.where(r, cols, -1).max(1)[both]
    l_med = np.where(l_, cols, size).min(1)[both]
    return float(np.median((r_med + l_med + 1) / 2) / size)


# ---------------------------------------------------------------------------------------------
# the bank from the zip, cached


def build_lung_shapes(zip_path: str | Path, size: int = 128) -> LungShapes:
    """Normalise every mask in the zip; unreadable files and rejected masks are counted.

    Files are decoded on a few threads (PIL releases the GIL while decoding); the result does
    not depend on their number.
    """
    with zipfile.ZipFile(zip_path) as z:
        infos = [i for i in z.infolist()
                 if not i.is_dir() and i.filename.lower().endswith(_IMAGE_SUFFIXES)]
        blobs = [z.read(i) for i in infos]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda b: _normalise_file(b, size), blobs))
    right, left, mid, aspect, names = [], [], [], [], []
    reasons: Counter[str] = Counter()
    for info, got in zip(infos, results, strict=True):
        if isinstance(got, str):
            reasons[got] += 1
            continue
        right.append(got[0])
        left.append(got[1])
        mid.append(got[2])
        aspect.append(got[3])
        names.append(info.filename.rsplit("/", 1)[-1])
    if not right:
        raise DataNotFetched(f"{zip_path}: no usable lung mask ({dict(reasons)})")
    stats = {"read": len(infos), "accepted": len(right),
             "rejected": dict(sorted(reasons.items()))}
    return LungShapes(np.stack(right), np.stack(left), np.asarray(mid, np.float32),
                      np.asarray(aspect, np.float32), "masks", stats, tuple(names))


def _normalise_file(data: bytes, size: int) -> tuple | str:
    try:
        mask = _decode(data)
    except Exception as e:  # a damaged or odd file: skipped and counted
        log.debug("lung mask unreadable: %s", e)
        return "unreadable"
    return normalise_mask(mask, size)


def _cache_path(zip_path: Path, size: int) -> Path:
    sha = sources.known_sha256(zip_path) or sources.sha256_file(zip_path)
    nbytes = zip_path.stat().st_size
    return (sources.cache_dir() / "phantom"
            / f"lung_shapes_{sha[:16]}_{nbytes}_g{size}_v{BANK_VERSION}.npz")


def _save(path: Path, shapes: LungShapes) -> None:
    """Write the bank atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, right=shapes.right, left=shapes.left, midline=shapes.midline,
                                aspect=shapes.aspect, names=np.asarray(shapes.names),
                                stats=np.asarray(json.dumps(shapes.stats)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> LungShapes:
    with np.load(path, allow_pickle=False) as z:
        stats = json.loads(str(z["stats"]))
        stats["cache"] = str(path)
        return LungShapes(z["right"], z["left"], z["midline"], z["aspect"], "masks", stats,
                          tuple(str(n) for n in z["names"]))


def load_lung_shapes(size: int = 128, *, fallback: bool = True) -> LungShapes:
    """The real lung shape bank on a ``size`` grid, built once and cached.

    Without the fetched data (or with a damaged cache entry it cannot rebuild) it returns
    `parametric_shapes` and logs a warning; ``fallback=False`` raises `DataNotFetched` instead.
    """
    try:
        zip_path = sources.path(ITEM, MEMBER)
    except DataNotFetched as e:
        if not fallback:
            raise
        log.warning("phantom: real lung masks not available (%s); using parametric lung "
                    "shapes", e)
        return parametric_shapes(size)
    cached = _cache_path(zip_path, size)
    if cached.is_file():
        try:
            return _load(cached)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("phantom: lung shape cache %s unreadable (%s); rebuilding", cached, e)
    shapes = build_lung_shapes(zip_path, size)
    _save(cached, shapes)
    shapes.stats["cache"] = str(cached)
    log.info("phantom: %d of %d lung masks accepted (rejected: %s); cached in %s",
             shapes.stats["accepted"], shapes.stats["read"], shapes.stats["rejected"], cached)
    return shapes


_SHAPES: dict[tuple[str | None, int], LungShapes] = {}


def default_shapes(grid: int = 128) -> LungShapes:
    """The real lung-shape bank (or the parametric fallback), loaded once per process (per
    data cache: a changed ``$BIOMED_CACHE`` loads its own). The renderer's default."""
    key = (os.environ.get("BIOMED_CACHE"), grid)
    if key not in _SHAPES:
        _SHAPES[key] = load_lung_shapes(grid)
    return _SHAPES[key]


# ---------------------------------------------------------------------------------------------
# the parametric fallback


def _bezier(p0, p1, p2, n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)
    return [tuple(p) for p in pts]


def _right_lung_outline(rng: np.random.Generator, mid: float, gap: float
                        ) -> tuple[list, list]:
    """Outline (x, y in [0, 1]) of a rounded-triangular right lung (image left).

    Apex near the medial third, a convex lateral border down to a sharp costophrenic angle,
    a dome-shaped base, a nearly straight medial border. Returns (lateral and base, medial).
    """
    med = mid - gap / 2
    apex = (med - rng.uniform(0.10, 0.17), 0.0)
    cp = (0.0, rng.uniform(0.93, 1.0))  # the costophrenic angle: lowest, most lateral point
    base_med = (med, rng.uniform(0.86, 0.92))
    dome_top = rng.uniform(0.78, 0.86)
    outer = _bezier(apex, (rng.uniform(0.0, 0.06), rng.uniform(0.08, 0.18)), cp)
    outer += _bezier(cp, ((cp[0] + med) / 2, 2 * dome_top - (cp[1] + base_med[1]) / 2),
                     base_med)
    medial = _bezier(base_med, (med + rng.uniform(0.0, 0.03), 0.4), (med - 0.02, 0.12), 16)
    medial += _bezier((med - 0.02, 0.12), (med - 0.03, 0.0), apex, 8)
    return outer, medial


def parametric_shapes(size: int = 128, n: int = 32, seed: int = 0) -> LungShapes:
    """Two rounded-triangular lung fields per shape, from a few random parameters.

    The left lung (image right) mirrors a second right-lung outline and gets a cardiac notch in
    its lower medial border. Drawn at 4x and box-reduced, so the masks are antialiased.
    """
    rng = np.random.default_rng(seed)
    big = size * 4
    right, left, mids, aspects = [], [], [], []
    for _ in range(n):
        mid, gap = rng.uniform(0.48, 0.53), rng.uniform(0.10, 0.16)
        outer, medial = _right_lung_outline(rng, mid, gap)
        r_pts = outer + medial
        outer, medial = _right_lung_outline(rng, 1 - mid, gap)
        notch = rng.uniform(0.05, 0.10)  # the heart's impression on the left lung
        medial = [(x + notch * np.sin(np.pi * np.clip((y - 0.4) / 0.5, 0, 1)), y)
                  for x, y in medial]
        l_pts = [(1 - x, y) for x, y in outer + medial]
        masks = []
        for pts in (r_pts, l_pts):
            im = Image.new("L", (big, big), 0)
            ImageDraw.Draw(im).polygon([(x * (big - 1), y * (big - 1)) for x, y in pts], fill=255)
            masks.append(np.asarray(im.reduce(4)))
        right.append(masks[0])
        left.append(masks[1])
        mids.append(_midline(masks[0], masks[1]))
        aspects.append(rng.uniform(0.8, 1.0))
    stats = {"read": 0, "accepted": n, "rejected": {}, "parametric": True}
    return LungShapes(np.stack(right), np.stack(left), np.asarray(mids, np.float32),
                      np.asarray(aspects, np.float32), "parametric", stats)
