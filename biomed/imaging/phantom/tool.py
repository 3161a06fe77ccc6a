"""`biomed phantom`: the grid of every finding, and one phantom as a 16-bit PNG with provenance.

``biomed phantom grid --out grid.png`` draws every finding at severity 1-3 on one patient (the
picture in `docs/phantom.png`); ``biomed phantom render --finding effusion:left:3 --out x.png``
renders one phantom with its findings and attributes in PNG text chunks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from biomed.imaging.core.findings import DEVICES, SEVERITIES, ZONES, PhantomFinding
from biomed.imaging.core.pixels import write_png16
from biomed.imaging.phantom.render import render, render_with_info
from biomed.imaging.phantom.shapes import LungShapes
from biomed.outpaths import check_creatable

__all__ = ["parse_finding_spec", "phantom_grid", "phantom_main"]


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
