"""Merging the findings of one report's tags: indexers tag one lesion several times.

"left basilar opacity, likely atelectasis" is ``Opacity`` + ``Pulmonary Atelectasis``: a *soft*
finding (an opacity read as consolidation by default) yields to a specific finding at the same
place (side and zone overlap), graded severities win over defaults, and lesions tagged
``multiple``/``scattered``/``diffuse`` expand to copies (`biomed.imaging.reports.findings`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from biomed.imaging.core.findings import PhantomFinding

_LESIONS = frozenset({"nodule", "calcified_granuloma", "mass"})
# Lung findings at whose place a soft opacity is taken to be that finding.
_ABSORBERS = frozenset({"consolidation", "atelectasis", "nodule", "calcified_granuloma",
                        "mass", "effusion"})


@dataclass(frozen=True)
class Spec:
    """A finding before merging: ``soft`` ones yield to specific findings at the same place."""

    finding: PhantomFinding
    soft: bool = False
    copies: int = 1
    graded: bool = False  # the severity came from a modifier (not the default)



def _sides_overlap(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or "bilateral" in (a, b)


def _zones_overlap(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _place(f: PhantomFinding) -> tuple[str | None, str | None]:
    return f.side, ("lower" if f.name == "effusion" else f.zone)


def _overlap(a: PhantomFinding, b: PhantomFinding) -> bool:
    (sa, za), (sb, zb) = _place(a), _place(b)
    return _sides_overlap(sa, sb) and _zones_overlap(za, zb)


def _merge_into(a: Spec, b: Spec) -> Spec:
    """Two tags of one finding at one place: the more specific side, zone and device; the
    higher of the stated grades (a stated grade beats the default one)."""
    fa, fb = a.finding, b.finding
    if a.graded == b.graded:
        severity = max(fa.severity, fb.severity)
    else:
        severity = fa.severity if a.graded else fb.severity
    side = fa.side or fb.side
    if fa.side and fb.side and fa.side != fb.side:  # left + bilateral
        side = "bilateral"
    f = replace(fa, side=side, zone=fa.zone or fb.zone, severity=severity,
                device=fa.device or fb.device)
    return Spec(f, copies=max(a.copies, b.copies), graded=a.graded or b.graded)


def _same_finding(a: Spec, b: Spec) -> bool:
    """Whether two specs restate one finding: same name, compatible side/zone/device."""
    fa, fb = a.finding, b.finding
    if fa.name != fb.name:
        return False
    sides = fa.side is None or fb.side is None or fa.side == fb.side
    if fa.name == "support_devices":
        return sides and (fa.device is None or fb.device is None or fa.device == fb.device)
    if not fa.lateral:
        return True
    if fa.name in _LESIONS:  # lesions: only a restatement at exactly the same place merges
        return fa.side == fb.side and fa.zone == fb.zone
    return _sides_overlap(fa.side, fb.side) and _zones_overlap(fa.zone, fb.zone)


def _merge(specs: Sequence[Spec]) -> list[Spec]:
    out: list[Spec] = []
    for s in specs:
        for i, o in enumerate(out):
            if _same_finding(o, s):
                out[i] = _merge_into(o, s)
                break
        else:
            out.append(replace(s, soft=False))
    return out


def resolve(specs: Sequence[Spec]) -> list[Spec]:
    """Merge restatements; drop soft opacities that describe a specific finding's place; a
    nodule where a calcified granuloma is (same side and zone) is that granuloma."""
    hard = _merge([s for s in specs if not s.soft])
    soft = [s for s in specs if s.soft and not any(
        h.finding.name in _ABSORBERS and _overlap(h.finding, s.finding) for h in hard)]
    merged = _merge(hard + soft)
    granulomas = {_place(s.finding) for s in merged if s.finding.name == "calcified_granuloma"}
    return [s for s in merged
            if not (s.finding.name == "nodule" and _place(s.finding) in granulomas)]


def expand(specs: Iterable[Spec]) -> list[PhantomFinding]:
    """Copies for several lesions; a bilateral lesion becomes one on each side."""
    out: list[PhantomFinding] = []
    for s in specs:
        f = s.finding
        if f.name in _LESIONS and f.side == "bilateral":
            n = max(2, s.copies)
            out += [replace(f, side=("left", "right")[k % 2]) for k in range(n)]
        else:
            out += [f] * s.copies
    return out
