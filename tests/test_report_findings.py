"""IU MeSH tags -> phantom findings (biomed.imaging.reports.findings) and the template report
writer (biomed.imaging.reports.templates).

Tags here are written by hand in the real file's spelling; tests marked ``data`` read the
cached real reports.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from biomed import sources
from biomed.imaging.core.findings import FINDING_NAMES, PhantomFinding, labels_of
from biomed.imaging.core.labels import CANONICAL, CANONICAL_NAMES, IU_MESH_TO_CANONICAL
from biomed.imaging.reports.findings import (
    INCIDENTAL,
    NOT_INDEXED,
    classify,
    classify_reports,
    findings_of,
    map_tag,
    positives,
)
from biomed.imaging.reports.iu import Report
from biomed.imaging.reports.templates import (
    combinations,
    template_cases,
    write_report,
)

F = PhantomFinding


def report(*tags: str, text: str = "", rid: str = "CXR1") -> Report:
    return Report(id=rid, impression=text, mesh_major=list(tags))


def col(findings: list[PhantomFinding], name: str) -> float:
    return float(labels_of(findings)[CANONICAL_NAMES.index(name)])


# ---------------------------------------------------------------------------------------------
# one tag


@pytest.mark.parametrize("tag, expected", [
    ("Pleural Effusion/left/small", [F("effusion", "left", 1)]),
    ("Pleural Effusion/right/moderate", [F("effusion", "right", 2)]),
    ("Pleural Effusion/bilateral/large", [F("effusion", "bilateral", 3)]),
    ("Pleural Effusion", [F("effusion", None, 2)]),  # default grade, side left to the renderer
    ("Pneumothorax/apex/right/small", [F("pneumothorax", "right", 1)]),
    ("Cardiomegaly/mild", [F("cardiomegaly", None, 1)]),
    ("Cardiomegaly/borderline", [F("cardiomegaly", None, 1)]),
    ("Cardiomegaly/severe", [F("cardiomegaly", None, 3)]),
    ("Cardiomegaly", [F("cardiomegaly", None, 2)]),
    ("Cardiac Shadow/enlarged/moderate", [F("cardiomegaly", None, 2)]),
    ("Opacity/lung/base/left", [F("consolidation", "left", 2, "lower")]),
    ("Airspace Disease/lung/upper lobe/right", [F("consolidation", "right", 2, "upper")]),
    ("Infiltrate/lung/hilum/right/mild", [F("consolidation", "right", 1, "middle")]),
    ("Consolidation/lung/lingula", [F("consolidation", "left", 2, "middle")]),
    ("Opacity/lung/middle lobe", [F("consolidation", "right", 2, "middle")]),
    ("Opacity/retrocardiac", [F("consolidation", "left", 2, "lower")]),
    ("Opacity/lung/upper lobe/right/round", [F("nodule", "right", 2, "upper")]),
    ("Opacity/lung/base/left/streaky", [F("atelectasis", "left", 2, "lower")]),
    ("Pulmonary Atelectasis/base/bilateral/mild", [F("atelectasis", "bilateral", 1, "lower")]),
    ("Pulmonary Atelectasis/apex/right", [F("atelectasis", "right", 2, "upper")]),
    ("Calcified Granuloma/lung/upper lobe/right",
     [F("calcified_granuloma", "right", 2, "upper")]),
    ("Calcinosis/lung/lower lobe/left", [F("calcified_granuloma", "left", 2, "lower")]),
    ("Nodule/lung/lower lobe/left/multiple", [F("nodule", "left", 2, "lower")] * 3),
    ("Nodule/lung/upper lobe/bilateral",
     [F("nodule", "left", 2, "upper"), F("nodule", "right", 2, "upper")]),
    ("Mass/lung/upper lobe/right/large", [F("mass", "right", 3, "upper")]),
    ("Pulmonary Edema/interstitial", [F("edema", None, 2)]),
    ("Lung/hypoinflation/severe", [F("low_lung_volumes", None, 3)]),
    ("Lung/hyperdistention/mild", [F("emphysema", None, 1)]),
    ("Diaphragm/bilateral/flattened", [F("emphysema", None, 2)]),
    ("Pulmonary Disease, Chronic Obstructive", [F("emphysema", None, 2)]),
    ("Hydropneumothorax/left/large", [F("effusion", "left", 3), F("pneumothorax", "left", 3)]),
    ("Pneumonia/lower lobe/left", [F("consolidation", "left", 2, "lower")]),
    ("Catheters, Indwelling/right",
     [F("support_devices", "right", 2, device="central_line")]),
    ("Tube, Inserted/trachea, carina", [F("support_devices", device="endotracheal_tube")]),
])
def test_tags_map_to_findings(tag: str, expected: list[PhantomFinding]):
    m = map_tag(tag)
    assert m.kind == "finding"
    assert m.findings == expected


@pytest.mark.parametrize("tag", [
    "Calcinosis/aorta", "Calcinosis/lung/hilum/lymph nodes/right", "Thoracic Vertebrae/degenerative",
    "Spine/degenerative", "Cicatrix/lung/apex/bilateral", "Osteophyte/thoracic vertebrae/multiple",
    "Aorta/tortuous", "Aorta, Thoracic/tortuous", "Atherosclerosis/aorta", "Granulomatous Disease",
    "Scoliosis", "Spondylosis", "Deformity/thoracic vertebrae", "Surgical Instruments/mediastinum",
    "Diaphragm/right/elevated", "Markings/bronchovascular", "Lung/azygos lobe",
    "Technical Quality of Image Unsatisfactory", "Hernia, Hiatal",
])
def test_incidental_tags_keep_the_report(tag: str):
    assert map_tag(tag).kind == "incidental"
    c = classify(report("Cardiomegaly/mild", tag))
    assert c.findings == [F("cardiomegaly", None, 1)]
    assert c.incidental


@pytest.mark.parametrize("tag, reason", [
    ("Fractures, Bone/ribs/left/healed", "Fractures, Bone"),
    ("Thickening/pleura/apex/bilateral", "Thickening"),
    ("Mediastinum/prominent", "Mediastinum"),
    ("Pulmonary Fibrosis", "Pulmonary Fibrosis"),
    ("Lung/hilum/bilateral/prominent", "Lung/prominent"),
    ("Opacity/mediastinum/right", "Opacity outside the lung"),
    ("Mass/breast/large", "Mass outside the lung"),
    ("Deformity/heart/right", "Deformity"),
    ("Some Unknown Heading/left", "Some Unknown Heading"),
])
def test_unrenderable_tags_exclude_the_report(tag: str, reason: str):
    c = classify(report("Pleural Effusion/left/small", tag))
    assert c.findings is None
    assert any(r.startswith(reason) for r in c.excluded_by), c.excluded_by
    assert findings_of(report(tag)) is None


def test_signs_need_the_finding_they_describe():
    alone = classify(report("Costophrenic Angle/left/blunted"))
    assert alone.findings is None
    assert alone.excluded_by == ["Costophrenic Angle/blunted (without effusion)"]
    with_effusion = findings_of(report("Costophrenic Angle/left/blunted",
                                       "Pleural Effusion/left/small"))
    assert with_effusion == [F("effusion", "left", 1)]
    assert findings_of(report("Pulmonary Congestion")) is None
    assert findings_of(report("Pulmonary Congestion", "Pulmonary Edema")) == [F("edema")]
    assert findings_of(report("Opacity/lung/bilateral/interstitial")) is None


def test_devices_read_the_text():
    pacer = findings_of(report("Implanted Medical Device/left",
                               text="Left chest wall pacemaker with leads in the right heart."))
    assert pacer == [F("support_devices", device="central_line")]
    monitor = findings_of(report("Medical Device", text="Overlying external monitor wires."))
    assert monitor == [F("support_devices", device=None)]
    trach = findings_of(report("Tube, Inserted", text="Tracheostomy tube in place."))
    assert trach == [F("support_devices", device="endotracheal_tube")]


# ---------------------------------------------------------------------------------------------
# one report


def test_normal_and_unindexed_reports():
    assert findings_of(report("normal")) == []
    c = classify(report("No Indexing"))
    assert c.findings is None and c.excluded_by == [NOT_INDEXED]
    assert findings_of(report()) is None  # untagged: not indexed either


def test_soft_opacity_at_the_place_of_a_specific_finding_is_that_finding():
    # "left basilar opacity, likely atelectasis": one atelectasis, no consolidation
    fs = findings_of(report("Opacity/lung/base/left", "Pulmonary Atelectasis/base/left"))
    assert fs == [F("atelectasis", "left", 2, "lower")]
    # an opacity elsewhere stays a consolidation
    fs = findings_of(report("Opacity/lung/upper lobe/right", "Pulmonary Atelectasis/base/left"))
    assert sorted(f.name for f in fs) == ["atelectasis", "consolidation"]
    # "calcified right midlung nodule": Nodule + Calcinosis at one place is one granuloma
    fs = findings_of(report("Nodule/lung/middle lobe/right", "Calcinosis/lung/middle lobe/right"))
    assert fs == [F("calcified_granuloma", "right", 2, "middle")]
    # pneumonia where an airspace tag already is: drawn once
    fs = findings_of(report("Airspace Disease/lung/upper lobe/right", "Pneumonia/upper lobe/right"))
    assert fs == [F("consolidation", "right", 2, "upper")]


def test_restatements_merge_and_sides_stay_exact():
    fs = findings_of(report("Cardiomegaly", "Cardiac Shadow/enlarged/mild"))
    assert fs == [F("cardiomegaly", None, 1)]  # a stated grade beats the default one
    fs = findings_of(report("Pleural Effusion/right/small", "Pleural Effusion/left"))
    assert sorted((f.side, f.severity) for f in fs) == [("left", 2), ("right", 1)]
    assert col(fs, "effusion_left") == col(fs, "effusion_right") == 1.0
    fs = findings_of(report("Pneumothorax/right/small"))
    assert col(fs, "pneumothorax_right") == 1.0 and col(fs, "pneumothorax_left") == 0.0
    assert col(fs, "no_finding") == 0.0
    fs = findings_of(report("Pleural Effusion/left", "Pleural Effusion/bilateral/small"))
    assert fs == [F("effusion", "bilateral", 1)]


def test_every_renderable_iu_label_mapping_is_drawn():
    """Every MeSH term that biomed.imaging.core.labels maps onto a column the phantom draws is drawn
    as that column here, so phantom labels agree with the real IU labels."""
    drawn = {c.name for c in CANONICAL if c.phantom and c.parent is None} - {"no_finding"}
    for key, targets in IU_MESH_TO_CANONICAL.items():
        if key == "normal":
            continue
        m = map_tag(key)
        wanted = set(targets) & drawn
        if not wanted:  # pneumonia, fracture: never drawn
            assert key in ("Pneumonia", "Fractures, Bone")
            continue
        assert m.kind == "finding", key
        assert wanted <= {f.name for f in m.findings}, key


def test_incidental_list_is_documented_and_disjoint_from_canonical_terms():
    assert all(isinstance(v, str) and v for v in INCIDENTAL.values())
    mapped = {k.split("/")[0] for k in IU_MESH_TO_CANONICAL} - {"Lung"}
    assert not mapped & set(INCIDENTAL)


def test_classify_reports_counts():
    rs = [report("normal", rid="CXR1"), report("No Indexing", rid="CXR2"),
          report("Fractures, Bone/ribs", "Cardiomegaly", rid="CXR3"),
          report("Fractures, Bone", rid="CXR4"), report("Pneumothorax/left", rid="CXR5")]
    included, counts = classify_reports(rs)
    assert [r.id for r, _ in included] == ["CXR1", "CXR5"]
    assert counts["#reports"] == 5 and counts["#included"] == 2 and counts["#excluded"] == 3
    assert counts["Fractures, Bone"] == 2 and counts[NOT_INDEXED] == 1
    pos = positives(fs for _, fs in included)
    assert pos == {"normal": 1, "pneumothorax": 1, "pneumothorax/left": 1}


# ---------------------------------------------------------------------------------------------
# the real reports

needs_reports = pytest.mark.skipif(
    sources.status("iu_reports") != "cached",
    reason="the IU reports are not in the data cache: run `biomed data fetch iu_reports`",
)


@pytest.mark.data
@needs_reports
def test_real_reports_counts():
    from biomed.imaging.reports.iu import read_reports

    reports = read_reports()
    included, counts = classify_reports(reports)
    assert counts["#reports"] == 3955
    assert counts[NOT_INDEXED] == 95
    assert 3000 <= counts["#included"] <= 3700  # 3,327 with the rules of this version
    assert counts["#included"] + counts["#excluded"] == 3955
    assert counts["Fractures, Bone"] >= 30
    pos = positives(fs for _, fs in included)
    # the scarce positives survive the exclusions
    assert pos["pneumothorax"] >= 15 and pos["mass"] >= 5 and pos["edema"] >= 30
    assert pos["consolidation"] >= 30
    assert pos["effusion/left"] >= 40 and pos["effusion/right"] >= 40
    assert pos["normal"] >= 1300
    for r, _ in included:  # nothing unrenderable slipped through
        assert not any(f.term == "Fractures, Bone" for f in r.structured), r.id


# ---------------------------------------------------------------------------------------------
# the template writer


def text_of(findings: list[PhantomFinding], seed: int = 0) -> str:
    impression, body = write_report(findings, seed)
    return f"{impression} {body}"


@pytest.mark.parametrize("side", ["left", "right", "bilateral"])
def test_template_laterality(side: str):
    for seed in range(5):
        text = text_of([F("effusion", side, 1)], seed).lower()
        assert side in text and "pleural effusion" in text
        other = {"left": "right", "right": "left"}.get(side)
        if other:
            assert other not in text
        text = text_of([F("pneumothorax", side, 3)], seed).lower()
        assert side in text and "pneumothora" in text


def test_template_negations_and_normals():
    for seed in range(5):
        text = text_of([F("cardiomegaly", severity=2)], seed)
        assert re.search(r"\bno (pleural effusion|pneumothorax)", text, re.I), text
        assert "cardiomegaly" in text.lower() or "enlarged" in text.lower()
        assert not re.search(r"heart size is normal|normal heart size", text, re.I), text
        text = text_of([F("effusion", "left", 2)], seed)
        assert re.search(r"heart size is normal|normal heart size|cardiac silhouette is within "
                         r"normal limits", text, re.I), text
        assert re.search(r"\bno pneumothorax|there is no pneumothorax", text, re.I), text
        assert not re.search(r"no pleural effusion", text, re.I)
    normal = text_of([], 0)
    assert re.search(r"no acute", normal, re.I) and re.search(r"lungs are clear", normal, re.I)


def test_template_severity_and_zone_words():
    assert re.search(r"small|trace|minimal", text_of([F("effusion", "left", 1)], 1), re.I)
    assert re.search(r"large|massive", text_of([F("pneumothorax", "right", 3)], 0), re.I)
    text = text_of([F("consolidation", "right", 2, "upper")], 0).lower()
    assert "right" in text and re.search(r"upper|apex", text)
    text = text_of([F("atelectasis", "left", 1, "lower")], 0).lower()
    assert re.search(r"lower|base", text) and "atelectasis" in text


def test_template_writer_is_seeded():
    fs = [F("mass", "left", 2, "upper"), F("cardiomegaly", severity=1)]
    assert write_report(fs, 3) == write_report(fs, 3)
    assert len({text_of(fs, s) for s in range(8)}) > 1


def test_template_cases_cover_every_finding_side_and_severity():
    cases = template_cases(9, seed=0)
    assert len(cases) == 9 * len(FINDING_NAMES)
    assert len({c.id for c in cases}) == len(cases)
    for name in FINDING_NAMES:
        mine = [c for c in cases if c.finding == name]
        assert [c.id for c in mine] == [f"TPL-{name}-{k}" for k in range(9)]
        covered = set()
        for c in mine:
            primary = [f for f in c.findings if f.name == name]
            assert primary, c
            sides = {f.side for f in primary}
            side = "bilateral" if sides == {"left", "right"} else sides.pop()
            covered.add((side, primary[0].severity, primary[0].device))
            assert c.text.startswith(c.impression)  # impression first, as Report.text
        want = {(f.side, f.severity, f.device) for f in combinations(name)}
        assert want <= covered, (name, want - covered)
    assert template_cases(9, seed=0) == cases
    assert template_cases(9, seed=1) != cases


def test_extra_templates_add_one_sided_cases_without_changing_the_base_ones():
    base = template_cases(9, seed=0)
    more = template_cases(9, seed=0, extra={"effusion/left": 6, "pneumothorax": 9})
    assert more[:len(base)] == base
    added = more[len(base):]
    assert [c.id for c in added[:2]] == ["TPL-x-effusion-left-0", "TPL-x-effusion-left-1"]
    assert len({c.id for c in more}) == len(more) == len(base) + 15
    left = [c for c in added if c.finding == "effusion"]
    assert len(left) == 6
    for c in left:  # that side only, its severities cycling
        primary = [f for f in c.findings if f.name == "effusion"]
        assert [f.side for f in primary] == ["left"] and "left" in c.impression.lower()
    assert [c.findings[0].severity for c in left] == [1, 2, 3, 1, 2, 3]
    ptx = [c for c in added if c.finding == "pneumothorax"]
    assert {f.side for c in ptx for f in c.findings if f.name == "pneumothorax"} \
        == {"left", "right", "bilateral"}  # no side given: every combination
    for bad, why in (({"effusion/middle": 1}, "no side 'middle'"),
                     ({"cardiomegaly/left": 1}, "no side 'left'"),
                     ({"efusion": 1}, "unknown finding 'efusion'"),
                     ({"effusion": -1}, "must be >= 0")):
        with pytest.raises(ValueError, match=why):
            template_cases(0, extra=bad)


def test_extra_co_finding_sets_how_often_extra_cases_state_a_second_finding():
    base = template_cases(4, seed=0)
    extra = {"effusion/left": 200}
    for p, low, high in ((0.0, 0, 0), (1.0, 200, 200), (0.7, 120, 160)):
        cases = template_cases(4, seed=0, extra=extra, extra_co_finding=p)
        assert cases[:len(base)] == base  # the base cases keep their own 0.3
        added = cases[len(base):]
        second = [c for c in added if any(f.name != "effusion" for f in c.findings)]
        # the co-finding is drawn from the common findings other than the case's own
        assert low <= len(second) <= high, (p, len(second))
        for c in second:  # the text states the second finding too
            other = next(f for f in c.findings if f.name != "effusion")
            assert other.name.split("_")[0] in c.text.lower().replace("-", " ") or \
                other.name == "support_devices", (other, c.text)
    assert template_cases(4, seed=0, extra=extra) == template_cases(4, seed=0, extra=extra,
                                                                    extra_co_finding=0.3)
    with pytest.raises(ValueError, match=r"co-finding probability 1.5 must lie in \[0, 1\]"):
        template_cases(0, extra=extra, extra_co_finding=1.5)


def test_template_text_matches_its_findings():
    for c in template_cases(3, seed=2):
        labels = labels_of(list(c.findings))
        text = c.text.lower()
        if labels[CANONICAL_NAMES.index("effusion")] == 1:
            assert "effusion" in text and not re.search(r"no pleural effusion", text)
        else:
            assert re.search(r"no (pleural effusion|pneumothorax or pleural effusion)", text) \
                or "pleural effusion" not in text
        if labels[CANONICAL_NAMES.index("cardiomegaly")] == 1:
            assert "cardiomegaly" in text or "enlarged" in text
        assert np.all(np.isin(labels, (0.0, 1.0)))
