"""A template report writer: realistic report text for given phantom findings.

Real positives are scarce in the IU reports (about 20 pneumothoraces, 8 masses, 40 oedemas
among the renderable reports), so the paired dataset adds templated reports for every finding,
side and severity. A templated report reads like an IU report (``Report.text``: the impression
first, then the findings, no section headings) with varied wording: several phrasings per
finding, severity words (small/moderate/large, mild/marked, sizes in cm/mm), laterality
(left/right/bilateral), zones (upper lobe, lingula, lung base...), negations of the findings
that are absent ("No pleural effusion or pneumothorax.", "Heart size is normal.") and normal
sentences. The text is a function of the findings and the seed only. Every templated case is
flagged ``source="template"`` by the dataset so that results can be split by source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biomed.imaging.core.findings import (
    FINDING_NAMES,
    SEVERITIES,
    SIDES,
    ZONES,
    PhantomFinding,
)

__all__ = ["TEMPLATE_VERSION", "TemplateCase", "check_extra", "combinations", "template_cases",
           "write_report"]

#: Changes whenever the wording or the case generation changes (part of the dataset cache key).
TEMPLATE_VERSION = "report-templates-v1"

_FOCAL = frozenset({"nodule", "calcified_granuloma", "mass", "consolidation", "atelectasis"})
_LESIONS = frozenset({"nodule", "calcified_granuloma", "mass"})
_SIZE_WORDS = {1: ("small", "trace", "minimal"), 2: ("moderate", "moderate-sized"),
               3: ("large", "large", "massive")}
_GRADE_WORDS = {1: ("mild", "minimal", "slight"), 2: ("moderate",), 3: ("severe", "marked")}
_GRADE_ADVERBS = {1: ("mildly", "slightly"), 2: ("moderately",), 3: ("markedly", "severely")}
_LESION_SIZES = {  # (nodule mm, mass cm) per severity
    "nodule": {1: ("4 mm", "5 mm", "6 mm"), 2: ("8 mm", "9 mm", "1.0 cm"),
               3: ("1.5 cm", "2.0 cm", "2.5 cm")},
    "mass": {1: ("3.2 cm", "3.5 cm"), 2: ("4.5 cm", "5 cm"), 3: ("6.5 cm", "8 cm")},
    "calcified_granuloma": {1: ("3 mm", "4 mm"), 2: ("6 mm", "7 mm"), 3: ("1.0 cm", "1.2 cm")},
}
# Co-findings added to some templated cases so that they are not all single-finding reports.
_COMMON = ("cardiomegaly", "atelectasis", "low_lung_volumes", "support_devices", "effusion")
CO_FINDING_PROBABILITY = 0.3


class _Writer:
    """Phrases for one report, drawn from one seeded generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    # -- where ---------------------------------------------------------------------------

    def place(self, side: str | None, zone: str | None) -> str:
        """A noun phrase for a lung region: "left upper lobe", "lingula", "both lung bases"."""
        if side == "bilateral":
            return self.pick({"upper": ("bilateral upper lobes", "both lung apices"),
                              "middle": ("bilateral perihilar regions", "both midlungs"),
                              "lower": ("bilateral lung bases", "both lower lobes"),
                              None: ("both lungs", "bilateral lungs")}[zone])
        s = f"{side} " if side else ""
        if zone == "upper":
            return self.pick((f"{s}upper lobe", f"{s}lung apex", f"{s}upper lung zone"))
        if zone == "middle":
            if side == "left":
                return self.pick(("lingula", "left midlung", "left perihilar region"))
            if side == "right":
                return self.pick(("right middle lobe", "right midlung",
                                  "right perihilar region"))
            return self.pick(("midlung", "perihilar region"))
        if zone == "lower":
            return self.pick((f"{s}lower lobe", f"{s}lung base", f"{s}lower lung zone"))
        return f"{s}lung" if side else "lung"

    # -- one finding: (impression phrase, findings sentence) -------------------------------

    def effusion(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        size = self.pick(_SIZE_WORDS[f.severity])
        if f.side == "bilateral":
            imp = f"{size} bilateral pleural effusions"
            sent = self.pick((f"There are {size} bilateral pleural effusions.",
                              f"{size.capitalize()} pleural effusions are present bilaterally, "
                              "with bilateral blunting of the costophrenic angles.",
                              f"Bilateral {size} pleural effusions."))
            return imp, sent
        side = f"{f.side} " if f.side else ""
        imp = f"{size} {side}pleural effusion"
        sent = self.pick((f"There is a {size} {side}pleural effusion.",
                          f"{size.capitalize()} {side}pleural effusion with blunting of the "
                          f"{side}costophrenic angle.",
                          f"A {size} pleural effusion is present"
                          + (f" on the {f.side}." if f.side else ".")))
        return imp, sent

    def pneumothorax(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        size = self.pick(_SIZE_WORDS[f.severity])
        if f.side == "bilateral":
            return (f"{size} bilateral pneumothoraces",
                    self.pick((f"There are {size} bilateral pneumothoraces.",
                               f"{size.capitalize()} bilateral pneumothoraces with visible "
                               "visceral pleural lines at both apices.")))
        side = f"{f.side} " if f.side else ""
        imp = f"{size} {side}pneumothorax"
        sent = self.pick((f"There is a {size} {side}pneumothorax.",
                          f"{size.capitalize()} {side}apical pneumothorax; a visceral pleural "
                          "line is seen with no lung markings beyond it.",
                          f"A {size} {side}pneumothorax is present."))
        return imp, sent

    def cardiomegaly(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        grade, adv = self.pick(_GRADE_WORDS[f.severity]), self.pick(_GRADE_ADVERBS[f.severity])
        return (f"{grade} cardiomegaly",
                self.pick((f"The cardiac silhouette is {adv} enlarged.",
                           f"Heart size is {adv} enlarged.",
                           f"{grade.capitalize()} cardiomegaly.")))

    def lesion(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        where = self.place(f.side, f.zone)
        size = self.pick(_LESION_SIZES[f.name][f.severity])
        noun = {"nodule": "pulmonary nodule", "mass": "mass",
                "calcified_granuloma": "calcified granuloma"}[f.name]
        if n > 1 or f.side == "bilateral":
            many = "multiple" if n > 2 else self.pick(("two", "a few"))
            return (f"{many} {noun}s in the {where}",
                    self.pick((f"There are {many} {noun}s in the {where}, the largest "
                               f"measuring {size}.",
                               f"{many.capitalize()} {noun}s are seen in the {where}.")))
        imp = f"{size} {noun} in the {where}"
        if f.name == "calcified_granuloma":
            return imp, self.pick((f"Stable {size} calcified granuloma in the {where}.",
                                   f"There is a calcified granuloma in the {where}.",
                                   f"A densely calcified {size} nodule in the {where} is "
                                   "compatible with a granuloma."))
        return imp, self.pick((f"There is a {size} {noun} in the {where}.",
                               f"A {size} {noun} is present in the {where}.",
                               f"{noun.capitalize()} in the {where} measuring {size}."))

    def consolidation(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        where = self.place(f.side, f.zone)
        grade = self.pick(("patchy", "focal", "mild")) if f.severity == 1 else (
            self.pick(("dense", "extensive", "confluent")) if f.severity == 3 else "")
        grade = f"{grade} " if grade else ""
        return (f"{grade}consolidation in the {where}",
                self.pick((f"There is {grade}airspace consolidation in the {where}.",
                           f"{grade.capitalize() or 'Focal '}airspace opacity in the {where}.",
                           f"{grade.capitalize()}consolidation is present in the {where}.")))

    def atelectasis(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        where = self.place(f.side, f.zone)
        grade = self.pick(_GRADE_WORDS[f.severity])
        kind = self.pick(("subsegmental ", "linear ", "plate-like ", ""))
        return (f"{grade} atelectasis in the {where}",
                self.pick((f"{grade.capitalize()} {kind}atelectasis in the {where}.",
                           f"There is {grade} {kind}atelectasis in the {where}.",
                           f"Streaky opacities in the {where} are consistent with {kind}"
                           "atelectasis.")))

    def edema(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        grade = self.pick(_GRADE_WORDS[f.severity])
        return (f"{grade} pulmonary edema",
                self.pick((f"{grade.capitalize()} pulmonary edema with bilateral perihilar "
                           "haziness.",
                           f"There is {grade} interstitial pulmonary edema with septal lines.",
                           f"Pulmonary vascular congestion with {grade} pulmonary edema.")))

    def emphysema(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        grade = self.pick(_GRADE_WORDS[f.severity])
        return (f"{grade} emphysema",
                self.pick(("The lungs are hyperinflated with flattened diaphragms, consistent "
                           "with emphysema.",
                           f"{grade.capitalize()} hyperinflation of the lungs with flattening "
                           "of the hemidiaphragms.",
                           f"Hyperexpanded, hyperlucent lungs compatible with {grade} "
                           "emphysema.")))

    def low_lung_volumes(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        how = {1: "slightly low", 2: "low", 3: "very low"}[f.severity]
        return (f"{how} lung volumes",
                self.pick((f"Lung volumes are {how}.",
                           f"{how.capitalize()} lung volumes with bronchovascular crowding.",
                           "The lungs are hypoinflated.")))

    def support_devices(self, f: PhantomFinding, n: int) -> tuple[str, str]:
        if f.device == "endotracheal_tube":
            cm = self.pick(("3", "4", "5"))
            return ("endotracheal tube in satisfactory position",
                    self.pick((f"Endotracheal tube tip is {cm} cm above the carina.",
                               "An endotracheal tube is in place, tip above the carina.",
                               f"ET tube terminates approximately {cm} cm above the carina.")))
        if f.device == "central_line":
            side = f"{f.side} " if f.side in ("left", "right") else ""
            return (f"{side}central venous catheter in place",
                    self.pick((f"{side.capitalize()}internal jugular central venous catheter "
                               "with tip in the superior vena cava.",
                               f"A {side}subclavian central line terminates in the SVC.",
                               f"{side.capitalize()}PICC line with tip at the cavoatrial "
                               "junction.")))
        return ("support devices in place", "Lines and tubes are in satisfactory position.")

    # -- absent findings and normal anatomy --------------------------------------------------

    def negations(self, present: set[str]) -> list[str]:
        out = []
        eff, ptx = "effusion" in present, "pneumothorax" in present
        if not eff and not ptx:
            out.append(self.pick(("No pleural effusion or pneumothorax.",
                                  "There is no pleural effusion or pneumothorax.",
                                  "No pneumothorax or pleural effusion is seen.")))
        elif not eff:
            out.append(self.pick(("No pleural effusion.", "No pleural effusions.")))
        elif not ptx:
            out.append(self.pick(("No pneumothorax.", "There is no pneumothorax.")))
        if "cardiomegaly" not in present:
            out.append(self.pick(("Heart size is normal.", "Normal heart size.",
                                  "The cardiac silhouette is within normal limits.")))
        if "consolidation" not in present:
            out.append(self.pick(("No focal airspace consolidation.",
                                  "No focal consolidation.",
                                  "There is no focal airspace disease.")))
        if "edema" not in present and self.rng.random() < 0.6:
            out.append(self.pick(("No pulmonary edema.", "No evidence of pulmonary edema.",
                                  "Pulmonary vascularity is within normal limits.")))
        if not present & _LESIONS and self.rng.random() < 0.4:
            out.append("No suspicious pulmonary nodules or masses.")
        return out

    def normals(self, present: set[str]) -> list[str]:
        out = [self.pick(("The mediastinal contours are normal.",
                          "Mediastinal contours are within normal limits.",
                          "The cardiomediastinal silhouette is stable."))]
        lung = present - {"cardiomegaly", "support_devices"}
        out.append(self.pick(("The lungs are otherwise clear.", "Otherwise clear lungs.")
                             if lung else ("The lungs are clear.", "Lungs are clear.")))
        if self.rng.random() < 0.5:
            out.append(self.pick(("The osseous structures are intact.",
                                  "No acute osseous abnormality.",
                                  "Visualized bony structures are unremarkable.")))
        return out


def _groups(findings: Sequence[PhantomFinding]) -> list[tuple[PhantomFinding, int]]:
    """One phrase per distinct finding; lesions on both sides read as one bilateral group."""
    counts: dict[PhantomFinding, int] = {}
    for f in findings:
        counts[f] = counts.get(f, 0) + 1
    lesions = [f for f in counts if f.name in _LESIONS]
    for f in lesions:  # a left and a right lesion of one kind and zone: "bilateral ..."
        twin = PhantomFinding(f.name, "right", f.severity, f.zone, f.device)
        if f.side == "left" and twin in counts:
            both = PhantomFinding(f.name, "bilateral", f.severity, f.zone, f.device)
            counts[both] = counts.pop(f) + counts.pop(twin)
    return list(counts.items())


def _sentence(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:] + ("" if phrase.endswith(".") else ".")


def write_report(findings: Sequence[PhantomFinding],
                 seed: int | np.random.Generator = 0) -> tuple[str, str]:
    """(impression, findings section) of a report describing exactly ``findings``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    w = _Writer(rng)
    present = {f.name for f in findings}
    phrases = [getattr(w, "lesion" if f.name in _LESIONS else f.name)(f, n)
               for f, n in _groups(findings)]
    order = rng.permutation(len(phrases))  # the impression lists findings in varied order
    phrases = [phrases[i] for i in order]
    imps = [p for p, _ in phrases]
    if not imps or present == {"support_devices"}:
        imps.append(w.pick(("no acute cardiopulmonary abnormality",
                            "no acute cardiopulmonary process",
                            "no acute radiographic cardiopulmonary disease")))
    if len(imps) > 1 and rng.random() < 0.5:
        impression = " ".join(f"{i + 1}. {_sentence(p)}" for i, p in enumerate(imps))
    else:
        impression = " ".join(_sentence(p) for p in imps)
    body = [s for _, s in phrases] + w.negations(present) + w.normals(present)
    return impression, " ".join(body)


@dataclass(frozen=True)
class TemplateCase:
    """One templated report: its id (``TPL-<finding>-<n>``), findings and text."""

    id: str
    finding: str  # the finding the case was made for
    findings: tuple[PhantomFinding, ...]
    impression: str
    body: str

    @property
    def text(self) -> str:
        """Impression first, then findings: the shape of ``Report.text``."""
        return f"{self.impression} {self.body}"


def combinations(name: str) -> list[PhantomFinding]:
    """Every side x severity (x device) of a finding that the templates cover, zone unset."""
    if name == "support_devices":
        return [PhantomFinding(name, device="endotracheal_tube"),
                PhantomFinding(name, side="left", device="central_line"),
                PhantomFinding(name, side="right", device="central_line")]
    proto = PhantomFinding(name)
    sides: Sequence[str | None] = SIDES if proto.lateral else (None,)
    return [PhantomFinding(name, side=s, severity=v) for s in sides for v in SEVERITIES]


def _with_zone(f: PhantomFinding, rng: np.random.Generator) -> list[PhantomFinding]:
    if f.name not in _FOCAL:
        return [f]
    zone = ZONES[int(rng.integers(len(ZONES)))]
    if f.name in _LESIONS and f.side == "bilateral":  # one lesion on each side
        return [PhantomFinding(f.name, s, f.severity, zone) for s in ("left", "right")]
    return [PhantomFinding(f.name, f.side, f.severity, zone)]


def _co_finding(name: str, rng: np.random.Generator) -> list[PhantomFinding]:
    others = [c for c in _COMMON if c != name]
    pick = others[int(rng.integers(len(others)))]
    options = combinations(pick)
    return _with_zone(options[int(rng.integers(len(options)))], rng)


def _case(case_id: str, name: str, combo: PhantomFinding, rng: np.random.Generator,
          co_finding: float = CO_FINDING_PROBABILITY) -> TemplateCase:
    findings = _with_zone(combo, rng)
    if rng.random() < co_finding:
        findings += _co_finding(name, rng)
    impression, body = write_report(findings, rng)
    return TemplateCase(case_id, name, tuple(findings), impression, body)


def _extra_combos(key: str, n: int) -> tuple[str, str, list[PhantomFinding]]:
    """(finding, side or '', the combinations to cycle) of an ``extra`` key; ValueError names
    the key when the finding or side is unknown or the count negative."""
    name, _, side = str(key).partition("/")
    if name not in FINDING_NAMES:
        raise ValueError(f"extra templates {key!r}: unknown finding {name!r} (one of "
                         f"{', '.join(FINDING_NAMES)})")
    combos = combinations(name)
    if side:
        combos = [c for c in combos if c.side == side]
        if not combos:
            raise ValueError(f"extra templates {key!r}: {name} has no side {side!r} "
                             f"(sides: {sorted({str(c.side) for c in combinations(name)})})")
    if int(n) < 0:
        raise ValueError(f"extra templates {key!r}: {n} must be >= 0")
    return name, side, combos


def check_extra(extra: Mapping[str, int], co_finding: float | None = None) -> None:
    """Raise ValueError for the first bad key or count of ``template_cases``' ``extra``, or a
    co-finding probability outside [0, 1]."""
    for key, n in extra.items():
        _extra_combos(key, n)
    if co_finding is not None and not 0.0 <= float(co_finding) <= 1.0:
        raise ValueError(f"extra templates' co-finding probability {co_finding} must lie in [0, 1]")


def template_cases(n_per_finding: int, seed: int = 0,
                   names: Sequence[str] = FINDING_NAMES,
                   extra: Mapping[str, int] | None = None,
                   extra_co_finding: float | None = None) -> list[TemplateCase]:
    """``n_per_finding`` templated reports per finding, cycling through its side x severity
    combinations (all of them once ``n_per_finding`` >= their number: 9 for a lateral finding,
    3 otherwise). Case ``k`` of a finding depends only on (seed, finding, k).

    ``extra`` adds reports on top: ``{"effusion": n}`` n more cycling through every combination,
    ``{"effusion/left": n}`` n more of that side only (its severities cycling), so a model can
    see more one-sided findings than bilateral ones. Extra case ``k`` of a key depends only on
    (seed, finding, side, k, extra_co_finding); the base cases do not change.
    ``extra_co_finding``: the chance that an extra case also states a second common finding
    (cardiomegaly, atelectasis, low lung volumes, support devices or effusion); None: the base
    cases' 0.3."""
    check_extra(extra or {}, extra_co_finding)
    extra_p = CO_FINDING_PROBABILITY if extra_co_finding is None else float(extra_co_finding)
    out = []
    for name in names:
        combos = combinations(name)
        index = FINDING_NAMES.index(name)
        out += [_case(f"TPL-{name}-{k}", name, combos[k % len(combos)],
                      np.random.default_rng([seed, index, k])) for k in range(n_per_finding)]
    for key, n in (extra or {}).items():
        name, side, combos = _extra_combos(key, n)
        stream = [seed, FINDING_NAMES.index(name), 1 + (SIDES.index(side) if side else -1)]
        tag = f"{name}-{side}" if side else name
        out += [_case(f"TPL-x-{tag}-{k}", name, combos[k % len(combos)],
                      np.random.default_rng([*stream, k]), extra_p) for k in range(int(n))]
    return out

