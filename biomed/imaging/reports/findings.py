"""From the real IU reports to the findings the phantom renders.

Each IU report carries hand-indexed MeSH major tags (``Pleural Effusion/left/small``,
``Opacity/lung/base/left``, ``Cardiomegaly/mild``; parsed by `biomed.imaging.reports.iu`). This
module turns a report's tags into `PhantomFinding` objects (name, side, severity, zone, device)
so that the phantom can draw an image whose findings are those of the real report text.

Every tag gets exactly one of four fates (`map_tag`):

- **finding**: the phantom draws it (`_RULES`): severity from the modifiers
  (minimal/mild/small/borderline 1, moderate 2, severe/large 3, default 2), side from
  left/right/bilateral (the lingula and retrocardiac lung are left, the middle lobe right),
  zone from upper lobe/apex (upper), middle lobe/lingula/hilum (middle), lower
  lobe/base/costophrenic angle/retrocardiac (lower).
- **incidental** (`INCIDENTAL`): something real the phantom does not show and that no canonical
  label depends on (degenerative spine, aortic calcification, scars, surgical clips...). The
  report is kept; its text then mentions something the image lacks. 1,289 of the 3,327
  included reports have one; without the list they would be dropped.
- **sign**: a descriptor that only restates a finding drawn from another tag (blunted
  costophrenic angle next to an effusion, vascular congestion next to oedema). Kept when a
  finding it describes is present, else the report is excluded (on its own it is ambiguous).
- **excluded**: a finding the phantom cannot render (fracture, pleural thickening, hilar
  enlargement, interstitial disease...). The report is left out and counted under the tag.

Decisions worth knowing (the data behind them: `biomed reports findings`):

- ``Opacity``, ``Density``, ``Infiltrate`` in the lung are *soft* findings: consolidation by
  default, a nodule when ``round``, atelectasis when ``streaky`` (linear). Indexers tag one
  lesion several times ("left basilar opacity, likely atelectasis" is ``Opacity`` +
  ``Pulmonary Atelectasis``; "calcified right midlung nodule" is ``Nodule`` + ``Calcinosis``),
  so a soft finding at the place (side and zone) of a specific lung finding is that finding and
  is not drawn twice.
- ``Pneumonia`` is a diagnosis, not a sign; on a radiograph it is seen as airspace
  consolidation, so it maps to a soft consolidation at its side and zone (42 reports are
  tagged, 38 of them included). The ``pneumonia`` label of a phantom stays 0, as for every
  phantom (``phantom=False`` in `biomed.imaging.core.labels`: the renderer never draws a diagnosis).
- Devices: the phantom draws an endotracheal tube or a central line. Catheters are central
  lines, tracheal tubes endotracheal tubes; pacemaker/ICD leads are drawn as a central line
  (they run the same course); other devices (valves, monitor leads, enteric tubes) get
  ``device=None``: the renderer picks one, so ``support_devices`` is right and the device type
  may differ from the text.
- ``Diaphragm/elevated`` and ``Diaphragmatic Eventration`` are incidental: a contour variant
  that no canonical label depends on (118 reports, 90 of them included); so is a hiatal hernia
  (48 reports, 38 included, 3 of them with one of the 8 renderable masses).
- ``Fractures, Bone`` (healed ones too) is excluded: ``fracture`` is a canonical label the
  phantom never draws, so the text would contradict the label.
- Several lesions (``multiple``/``scattered``/``diffuse``) are drawn as 3 of them; a
  ``bilateral`` nodule, granuloma or mass as one on each side.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from biomed.imaging.core.findings import PhantomFinding
from biomed.imaging.reports.iu import Finding, Report, parse_mesh_tag
from biomed.imaging.reports.lesion_merge import Spec, expand, resolve

__all__ = [
    "INCIDENTAL",
    "MAPPING_VERSION",
    "Classification",
    "TagMapping",
    "classify",
    "classify_reports",
    "findings_of",
    "map_tag",
    "positives",
    "summary",
]

#: Changes whenever a rule changes what a report renders (part of the dataset cache key).
MAPPING_VERSION = "report-findings-v1"

SEVERITY_LEVELS = {"minimal": 1, "mild": 1, "small": 1, "borderline": 1, "moderate": 2,
                   "severe": 3, "large": 3}
DEFAULT_SEVERITY = 2
ZONE_OF = {"upper lobe": "upper", "apex": "upper", "middle lobe": "middle", "lingula": "middle",
           "hilum": "middle", "lower lobe": "lower", "base": "lower", "basilar": "lower",
           "costophrenic angle": "lower", "retrocardiac": "lower"}
LESION_COPIES = 3  # lesions drawn for ``multiple`` / ``scattered`` / ``diffuse``
_MANY = frozenset({"multiple", "scattered", "diffuse"})

# Locations that put a "lung" tag somewhere else: bones, soft tissue, mediastinum, heart,
# vessels, abdomen. A lung finding there is not a lung finding.
_OFF_LUNG = frozenset({
    "mediastinum", "lymph nodes", "heart", "heart atria", "heart ventricles", "aortic valve",
    "mitral valve", "coronary vessels", "aorta", "aorta, thoracic", "pulmonary artery",
    "blood vessels", "diaphragm", "esophagus", "abdomen", "neck", "breast", "breast implants",
    "adipose tissue", "spine", "cervical vertebrae", "thoracic vertebrae", "lumbar vertebrae",
    "ribs", "sternum", "clavicle", "shoulder", "humerus", "trachea", "trachea, carina",
    "paratracheal", "supracardiac", "cardiophrenic angle",
})
_BONE = frozenset({"spine", "cervical vertebrae", "thoracic vertebrae", "lumbar vertebrae",
                   "ribs", "sternum", "clavicle", "shoulder", "humerus", "thorax"})
# Incidental tags: real findings the phantom does not draw and that no canonical label depends
# on; a report with them is kept. Term -> why (the documentation of the list). Terms that also
# have a rule (Calcinosis, Aorta, Diaphragm, Markings, Lung, Deformity, Ribs) are incidental
# only in the cases the reason names; the rule decides.
INCIDENTAL: dict[str, str] = {
    "Calcinosis": "vascular, valvular, nodal and costal calcification (lung-parenchyma "
                  "calcifications are calcified granulomas, see the rules)",
    "Atherosclerosis": "aortic atherosclerotic calcification",
    "Aorta": "tortuous / unfolded aorta (an enlarged aorta is excluded)",
    "Aorta, Thoracic": "tortuous thoracic aorta (an enlarged one is excluded)",
    "Thoracic Vertebrae": "degenerative spine",
    "Thoracic vertebrae": "degenerative spine (lower-case spelling in the file)",
    "Lumbar Vertebrae": "degenerative spine",
    "Cervical Vertebrae": "degenerative spine",
    "Spine": "degenerative spine",
    "Osteophyte": "degenerative spine",
    "Spondylosis": "degenerative spine",
    "Scoliosis": "spinal curvature",
    "Kyphosis": "spinal curvature",
    "Spinal Fusion": "spinal hardware",
    "Hyperostosis, Diffuse Idiopathic Skeletal": "degenerative spine (DISH)",
    "Arthritis": "degenerative joints",
    "Shoulder": "degenerative shoulder",
    "Humerus": "degenerative humerus",
    "Bone and Bones": "degenerative bone",
    "Bone Diseases, Metabolic": "osteopenia",
    "Osteoporosis": "osteopenia",
    "Cicatrix": "scarring (linear scars, apical caps); not a canonical finding",
    "Granulomatous Disease": "old granulomatous disease as an interpretation; calcified "
                             "granulomas it shows are tagged on their own",
    "Surgical Instruments": "surgical clips, sternotomy wires (no canonical label)",
    "Sutures": "surgical sutures",
    "Stents": "vascular / coronary / biliary stents",
    "Foreign Bodies": "external or soft-tissue foreign bodies (bullets, piercings, buttons)",
    "Nipple Shadow": "nipple shadows",
    "Epicardial Fat": "epicardial fat pad",
    "Technical Quality of Image Unsatisfactory": "image quality remark, not anatomy",
    "Diaphragm": "elevated hemidiaphragm: a contour variant (flattened and obscured "
                 "diaphragms are rules)",
    "Diaphragmatic Eventration": "a contour variant, as an elevated hemidiaphragm",
    "Markings": "bronchovascular crowding/markings (interstitial markings are a sign of "
                "oedema)",
    "Lung": "azygos lobe (an anatomical variant; other Lung tags are rules or excluded)",
    "Deformity": "old bony deformity of ribs, spine, clavicle (heart/mediastinum: excluded)",
    "Breast Implants": "breast implants",
    "Mastectomy": "mastectomy (soft tissue)",
    "Hernia, Hiatal": "hiatal hernia: a retrocardiac air-fluid shadow, no canonical label",
    "Ribs": "prominent or degenerative ribs",
}


# ---------------------------------------------------------------------------------------------
# one tag


@dataclass(frozen=True)
class TagMapping:
    """What one MeSH tag becomes: ``kind`` is finding, incidental, sign or excluded.

    ``covers``: for a sign, the finding names it may describe. ``reason``: the count key of an
    excluded tag (term plus its descriptive modifiers, e.g. ``Lung/prominent``).
    """

    kind: str
    specs: tuple[Spec, ...] = ()
    covers: frozenset[str] = frozenset()
    reason: str = ""

    @property
    def findings(self) -> list[PhantomFinding]:
        """The findings this tag alone would draw (copies expanded, nothing merged)."""
        return expand([s for s in self.specs])


def _reason(tag: Finding) -> str:
    """Term plus its descriptive modifiers (sorted): the count key for terms such as ``Lung``
    or ``Diaphragm`` whose meaning is in the modifier."""
    return "/".join([tag.term, *sorted(set(tag.other))])


def _severity(tag: Finding) -> int:
    levels = [SEVERITY_LEVELS[s] for s in tag.severity if s in SEVERITY_LEVELS]
    return max(levels) if levels else DEFAULT_SEVERITY


# Locations that name a side by themselves (when the tag names none).
_SIDE_OF = {"lingula": "left", "retrocardiac": "left", "middle lobe": "right"}


def _side(tag: Finding) -> str | None:
    """The tag's side; the lingula and the retrocardiac lung are left, the middle lobe right."""
    if tag.side is not None:
        return tag.side
    return next((_SIDE_OF[x] for x in tag.location if x in _SIDE_OF), None)


def _zone(tag: Finding) -> str | None:
    return next((ZONE_OF[x] for x in tag.location if x in ZONE_OF), None)


def _off_lung(tag: Finding) -> bool:
    return bool(_OFF_LUNG.intersection(tag.location))


def _finding(name: str, tag: Finding, *, soft: bool = False, zone: bool = True,
             side: bool = True, device: str | None = None, copies: int = 1) -> TagMapping:
    f = PhantomFinding(name, side=_side(tag) if side else None, severity=_severity(tag),
                       zone=_zone(tag) if zone else None, device=device)
    graded = any(s in SEVERITY_LEVELS for s in tag.severity)
    return TagMapping("finding", (Spec(f, soft=soft, copies=copies, graded=graded),))


def _lesion(name: str, tag: Finding, *, soft: bool = False) -> TagMapping:
    if _off_lung(tag):
        return TagMapping("excluded", reason=f"{tag.term} outside the lung")
    copies = LESION_COPIES if _MANY.intersection(tag.other) else 1
    return _finding(name, tag, soft=soft, copies=copies)


def _sign(tag: Finding, key: str, *covers: str) -> TagMapping:
    """A sign of one of ``covers``; ``key`` names it in the counts when nothing it describes is
    drawn (e.g. ``Costophrenic Angle/blunted``)."""
    return TagMapping("sign", covers=frozenset(covers),
                      reason=f"{key} (without {' or '.join(sorted(covers))})")


def _excluded(tag: Finding, reason: str | None = None) -> TagMapping:
    return TagMapping("excluded", reason=reason or tag.term)


_INCIDENTAL = TagMapping("incidental")
_OBSCURING = ("effusion", "consolidation", "atelectasis")  # what hides a border or a dome
_ETT_TEXT = re.compile(r"endotracheal|\bET tube|\bETT\b|tracheostomy|trach tube", re.I)
_LINE_TEXT = re.compile(r"catheter|\bline\b|picc|port-?a|\bport\b|pacemaker|pacer|\bicd\b|"
                        r"aicd|defibrillator|\bleads?\b", re.I)


def _device(tag: Finding, text: str) -> str | None:
    """Which device the phantom draws for a device tag (None: the renderer picks)."""
    if tag.term == "Catheters, Indwelling":
        return "central_line"
    if tag.term == "Tube, Inserted":
        in_trachea = {"trachea", "trachea, carina"} & set(tag.location)
        return "endotracheal_tube" if in_trachea or _ETT_TEXT.search(text) else None
    return "central_line" if _LINE_TEXT.search(text) else None


def _devices(tag: Finding, text: str) -> TagMapping:
    side = tag.term == "Catheters, Indwelling"  # the side a line enters from
    return _finding("support_devices", tag, zone=False, side=side, device=_device(tag, text))


def _global(name: str) -> Callable[[Finding], TagMapping]:
    """A finding without side or zone (cardiomegaly, oedema, emphysema, low volumes)."""
    return lambda t: _finding(name, t, side=False, zone=False)


def _in_lung(name: str) -> Callable[[Finding], TagMapping]:
    """Consolidation / airspace disease: a finding in the lung, excluded elsewhere."""
    return lambda t: (_excluded(t, f"{t.term} outside the lung") if _off_lung(t)
                      else _finding(name, t))


def _opacity(tag: Finding) -> TagMapping:
    """Opacity / Density / Infiltrate: soft consolidation, nodule (round) or atelectasis."""
    other = set(tag.other)
    if _off_lung(tag):
        return _excluded(tag, f"{tag.term} outside the lung")
    if other & {"interstitial", "reticular"}:
        return _sign(tag, f"{tag.term}/interstitial", "edema")
    if "round" in other:
        return _lesion("nodule", tag, soft=True)
    if "streaky" in other:
        return _finding("atelectasis", tag, soft=True)
    return _finding("consolidation", tag, soft=True)


def _lung(tag: Finding) -> TagMapping:
    other = set(tag.other)
    if "hypoinflation" in other:
        return _finding("low_lung_volumes", tag, side=False, zone=False)
    if "hyperdistention" in other:
        return _finding("emphysema", tag, side=False, zone=False)
    if "interstitial" in other or "blood vessels" in tag.location:
        return _sign(tag, "Lung/interstitial", "edema")
    if "obscured" in other:
        return _sign(tag, "Lung/obscured", *_OBSCURING)
    if "azygos lobe" in tag.location and not other:
        return _INCIDENTAL
    return _excluded(tag, _reason(tag))  # hilar prominence / enlargement


def _calcinosis(tag: Finding) -> TagMapping:
    """A calcification in the lung parenchyma is a calcified granuloma; elsewhere incidental."""
    loc = set(tag.location)
    if "lung" in loc and not loc & ({"hilum", "lymph nodes"} | _OFF_LUNG):
        return _lesion("calcified_granuloma", tag)
    return _INCIDENTAL


def _diaphragm(tag: Finding) -> TagMapping:
    other = set(tag.other)
    if "flattened" in other:  # the phantom's very sign of hyperinflation
        return _finding("emphysema", tag, side=False, zone=False)
    if "obscured" in other:
        return _sign(tag, "Diaphragm/obscured", *_OBSCURING)
    return _INCIDENTAL if "elevated" in other else _excluded(tag, _reason(tag))


def _bony(tag: Finding) -> TagMapping:
    """Incidental when every anatomical site named is a bone (or none is named)."""
    sites = set(tag.location) - {"left", "right", "bilateral", "anterior", "posterior"}
    return _INCIDENTAL if sites - set(ZONE_OF) <= _BONE else _excluded(tag, _reason(tag))


def _cardiac_shadow(tag: Finding) -> TagMapping:
    if "enlarged" in tag.other or "borderline" in tag.severity:
        return _finding("cardiomegaly", tag, side=False, zone=False)
    return _excluded(tag, _reason(tag))


def _aorta(tag: Finding) -> TagMapping:
    bad = {"enlarged", "obscured"} & set(tag.other)
    return _excluded(tag, _reason(tag)) if bad else _INCIDENTAL


def _blunted(tag: Finding) -> TagMapping:
    """Costophrenic angle, sulcus, pleura: blunted means an effusion (or a scar: excluded when
    no effusion is drawn), obscured means something hides it."""
    if "blunted" in tag.other:
        return _sign(tag, f"{tag.term}/blunted", "effusion")
    if "obscured" in tag.other:
        return _sign(tag, f"{tag.term}/obscured", *_OBSCURING)
    return _excluded(tag, _reason(tag))


def _both(tag: Finding, first: str, second: str) -> TagMapping:
    a, b = _finding(first, tag, zone=False), _finding(second, tag, zone=False)
    return TagMapping("finding", a.specs + b.specs)


# term -> rule. Terms neither here nor in INCIDENTAL are excluded.
_RULES: dict[str, Callable[[Finding], TagMapping]] = {
    "Cardiomegaly": _global("cardiomegaly"),
    "Cardiac Shadow": _cardiac_shadow,
    "Pleural Effusion": lambda t: _finding("effusion", t, zone=False),
    "Hemothorax": lambda t: _finding("effusion", t, zone=False),  # fluid is fluid on a film
    "Pneumothorax": lambda t: _finding("pneumothorax", t, zone=False),
    "Hydropneumothorax": lambda t: _both(t, "effusion", "pneumothorax"),
    "Hemopneumothorax": lambda t: _both(t, "effusion", "pneumothorax"),
    "Nodule": lambda t: _lesion("nodule", t),
    "Calcified Granuloma": lambda t: _lesion("calcified_granuloma", t),
    "Granuloma": lambda t: _lesion("calcified_granuloma", t),  # what a film calls a granuloma
    "Calcinosis": _calcinosis,
    "Mass": lambda t: _lesion("mass", t),
    "Consolidation": _in_lung("consolidation"),
    "Airspace Disease": _in_lung("consolidation"),
    "Opacity": _opacity,
    "Density": _opacity,
    "Infiltrate": _opacity,
    "Pneumonia": lambda t: _finding("consolidation", t, soft=True),  # the sign of a diagnosis
    "Pulmonary Atelectasis": lambda t: _finding("atelectasis", t),
    "Pulmonary Edema": _global("edema"),
    "Pulmonary Congestion": lambda t: _sign(t, "Pulmonary Congestion", "edema"),
    "Heart Failure": lambda t: _sign(t, "Heart Failure", "edema", "cardiomegaly"),
    "Shift": lambda t: _sign(t, "Shift", "pneumothorax", "effusion", "atelectasis"),
    "Emphysema": _global("emphysema"),
    "Pulmonary Emphysema": _global("emphysema"),
    "Bullous Emphysema": _global("emphysema"),
    "Blister": _global("emphysema"),  # bullae
    "Lung, Hyperlucent": _global("emphysema"),
    "Pulmonary Disease, Chronic Obstructive": _global("emphysema"),  # seen as hyperinflation
    "Lung": _lung,
    "Diaphragm": _diaphragm,
    "Costophrenic Angle": _blunted,
    "Sulcus": _blunted,
    "Pleura": _blunted,
    "Heart": lambda t: (_sign(t, "Heart/obscured", *_OBSCURING) if "obscured" in t.other
                        else _excluded(t, _reason(t))),
    "Lucency": lambda t: (_sign(t, "Lucency/lung", "emphysema", "pneumothorax")
                          if "lung" in t.location else _bony(t)),
    "Aorta": _aorta,
    "Aorta, Thoracic": _aorta,
    "Markings": lambda t: (_sign(t, "Markings/interstitial", "edema")
                           if "interstitial" in t.other else _INCIDENTAL),
    "Deformity": _bony,
    "Sclerosis": _bony,
    "Ribs": _bony,
}
_TEXT_RULES: dict[str, Callable[[Finding, str], TagMapping]] = {
    "Catheters, Indwelling": _devices,
    "Tube, Inserted": _devices,
    "Implanted Medical Device": _devices,
    "Medical Device": _devices,
}


def map_tag(tag: str | Finding, text: str = "") -> TagMapping:
    """The fate of one MeSH major tag (``text``: the report text, to name a device)."""
    f = parse_mesh_tag(tag) if isinstance(tag, str) else tag
    if f.term in _TEXT_RULES:
        return _TEXT_RULES[f.term](f, text)
    if f.term in _RULES:
        return _RULES[f.term](f)
    if f.term in INCIDENTAL:
        return _INCIDENTAL
    return _excluded(f)


@dataclass
class Classification:
    """One report's outcome: its findings (None when excluded) and why."""

    report_id: str
    findings: list[PhantomFinding] | None
    excluded_by: list[str] = field(default_factory=list)  # reasons (tag keys), in tag order
    incidental: list[str] = field(default_factory=list)  # incidental tags kept, as written

    @property
    def included(self) -> bool:
        return self.findings is not None


NOT_INDEXED = "not indexed"


def classify(report: Report) -> Classification:
    """Map every tag of a report; exclude it when a tag cannot be rendered or is not indexed."""
    if not report.indexed:
        return Classification(report.id, None, [NOT_INDEXED])
    specs: list[Spec] = []
    signs: list[tuple[Finding, TagMapping]] = []
    excluded: list[str] = []
    incidental: list[str] = []
    text = report.text
    for tag in report.structured:
        m = map_tag(tag, text)
        if m.kind == "finding":
            specs += m.specs
        elif m.kind == "sign":
            signs.append((tag, m))
        elif m.kind == "incidental":
            incidental.append(tag.tag)
        else:
            excluded.append(m.reason)
    resolved = resolve(specs)
    names = {s.finding.name for s in resolved}
    excluded += [m.reason for _, m in signs if not m.covers & names]
    excluded = list(dict.fromkeys(excluded))
    if excluded:
        return Classification(report.id, None, excluded, incidental)
    return Classification(report.id, expand(resolved), [], incidental)


def findings_of(report: Report) -> list[PhantomFinding] | None:
    """The phantom findings of a report ([] for a normal one); None when it is excluded."""
    return classify(report).findings


def classify_reports(reports: Iterable[Report]
                     ) -> tuple[list[tuple[Report, list[PhantomFinding]]], dict[str, int]]:
    """Included reports with their findings, and how many reports each reason excluded.

    A report excluded by several tags counts under each; ``excluded_counts`` also holds the
    totals ``"reports"``, ``"included"`` and ``"excluded"`` under keys starting with ``#``.
    """
    included: list[tuple[Report, list[PhantomFinding]]] = []
    by_reason: Counter[str] = Counter()
    total = 0
    for r in reports:
        total += 1
        c = classify(r)
        if c.findings is not None:
            included.append((r, c.findings))
        else:
            by_reason.update(c.excluded_by)
    counts = {"#reports": total, "#included": len(included),
              "#excluded": total - len(included)}
    counts.update(dict(by_reason.most_common()))
    return included, counts


def positives(findings_lists: Iterable[Sequence[PhantomFinding]]) -> dict[str, int]:
    """Reports with each finding, and per side for the lateral ones (``effusion/left``...;
    ``bilateral`` counts on both sides, ``unspecified`` is a side the renderer picks)."""
    out: Counter[str] = Counter()
    for fs in findings_lists:
        names, sided = set(), set()
        for f in fs:
            names.add(f.name)
            if f.lateral:
                sides = ("left", "right") if f.side == "bilateral" else (f.side or "unspecified",)
                sided.update(f"{f.name}/{s}" for s in sides)
        if not names:
            names.add("normal")
        out.update(names | sided)
    return dict(sorted(out.items()))


def summary(reports: Iterable[Report]) -> dict[str, object]:
    """Counts of `classify_reports` and `positives` for printing and for the dataset stats."""
    included, counts = classify_reports(reports)
    return {"counts": counts, "positives": positives(fs for _, fs in included)}


def print_summary(reports: Iterable[Report]) -> None:
    """Print `summary` of the reports (``biomed reports findings``)."""
    s = summary(reports)
    print("reports / excluded by reason:")
    for k, v in s["counts"].items():  # type: ignore[union-attr]
        print(f"  {v:5d}  {k}")
    print("positives among the included reports:")
    for k, v in s["positives"].items():  # type: ignore[union-attr]
        print(f"  {v:5d}  {k}")
