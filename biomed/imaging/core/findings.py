"""What the phantom renders: structured findings with side, severity and zone.

A `PhantomFinding` is the contract between the report reader (IU MeSH tags and templated
reports -> findings), the phantom renderer (findings -> image) and the label matrix (findings ->
canonical labels). Sides are the **patient's** side, as in a report: on a PA radiograph in the
standard display the patient's left is on the image's right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from biomed.imaging.core.labels import CANONICAL_NAMES, SIDED, complete_no_finding

__all__ = ["DEVICES", "FINDING_NAMES", "SEVERITIES", "SIDES", "ZONES", "PhantomFinding",
           "labels_of", "parse_findings"]

# Renderable base findings (canonical names without the side suffix).
FINDING_NAMES: tuple[str, ...] = (
    "cardiomegaly", "effusion", "pneumothorax", "nodule", "calcified_granuloma", "mass",
    "consolidation", "atelectasis", "edema", "emphysema", "low_lung_volumes", "support_devices",
)
SIDES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SEVERITIES: tuple[int, ...] = (1, 2, 3)  # 1 mild/small, 2 moderate, 3 severe/large
DEVICES: tuple[str, ...] = ("endotracheal_tube", "central_line")

# Findings that have a side (the others ignore ``side``): sided labels exist only for the
# SIDED parents, but a nodule's or a consolidation's side still decides where it is drawn.
_LATERAL = frozenset({"effusion", "pneumothorax", "nodule", "calcified_granuloma", "mass",
                      "consolidation", "atelectasis"})


@dataclass(frozen=True)
class PhantomFinding:
    """One finding to render.

    ``side``: the patient's left/right/bilateral, or None (the renderer then picks one from the
    seed for lateral findings: None means "unspecified", not "midline"). ``zone``: upper, middle
    or lower lung zone for focal findings (None: picked from the seed). ``severity`` 1-3.
    ``device``: which support device (None: picked from the seed).
    """

    name: str
    side: str | None = None
    severity: int = 2
    zone: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.name not in FINDING_NAMES:
            raise ValueError(f"unknown phantom finding {self.name!r}; known: {FINDING_NAMES}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"{self.name}: side {self.side!r} is not one of {SIDES}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"{self.name}: severity {self.severity!r} is not one of {SEVERITIES}")
        if self.zone is not None and self.zone not in ZONES:
            raise ValueError(f"{self.name}: zone {self.zone!r} is not one of {ZONES}")
        if self.device is not None and self.device not in DEVICES:
            raise ValueError(f"{self.name}: device {self.device!r} is not one of {DEVICES}")

    @property
    def lateral(self) -> bool:
        return self.name in _LATERAL

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_findings(items: Iterable[PhantomFinding | Mapping[str, Any] | str]
                   ) -> list[PhantomFinding]:
    """Findings from dicts (``to_dict`` output), names, or findings (the renderer's input)."""
    out = []
    for it in items:
        if isinstance(it, PhantomFinding):
            out.append(it)
        elif isinstance(it, str):
            out.append(PhantomFinding(it))
        else:
            out.append(PhantomFinding(**dict(it)))
    return out


def labels_of(findings: Sequence[PhantomFinding], *,
              sides_known: bool = True) -> np.ndarray:
    """The canonical label vector (len(CANONICAL_NAMES), float32 1/0) of rendered findings.

    Every finding the phantom renders is exactly known, so every column is 0 or 1; columns the
    phantom never draws (``phantom=False``: pneumonia, fracture) are 0. A sided finding with
    side None is still drawn on one side (chosen by the renderer); pass the rendered findings
    (the renderer's resolved ones) to get both side columns right. ``sides_known=False`` leaves
    the side columns of side-less findings NaN instead.
    """
    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    out = np.zeros(len(CANONICAL_NAMES), np.float32)
    for f in findings:
        out[col[f.name]] = 1.0
        if f.name in SIDED:
            left, right = SIDED[f.name]
            if f.side in ("left", "bilateral"):
                out[col[left]] = 1.0
            if f.side in ("right", "bilateral"):
                out[col[right]] = 1.0
            if f.side is None and not sides_known:
                out[col[left]] = out[col[right]] = np.nan
    out[col["no_finding"]] = 0.0 if any(f.name != "support_devices" for f in findings) else 1.0
    return complete_no_finding(out[None])[0]
