"""The IU / OpenI chest X-ray reports reader (biomed.imaging.reports.iu).

Fixtures in tests/fixtures/iu/ are hand-written reports on the exact skeleton of the real
XML files; the tests pack them into a tgz with the real archive's member layout
(``ecgen-radiology/`` then ``ecgen-radiology/<n>.xml`` in name order). Tests marked ``data``
read the cached real tarball.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from biomed import sources
from biomed.errors import BiomedError, InputError
from biomed.imaging.reports.iu import (
    LOCATION_MODIFIERS,
    OTHER_MODIFIERS,
    SEVERITY_MODIFIERS,
    Finding,
    Report,
    ReportsDataset,
    export_reports,
    iter_reports,
    parse_mesh_tag,
    read_reports,
)

FIXTURES = Path(__file__).parent / "fixtures" / "iu"
PREFIX = "ecgen-radiology/"


def make_tgz(path: Path, members: dict[str, bytes]) -> Path:
    """A tgz laid out like NLMCXR_reports.tgz: the folder entry, then members in name order."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(PREFIX.rstrip("/"))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in sorted(members):  # lexicographic, as in the real archive: 1, 10, 100, 2
            info = tarfile.TarInfo(PREFIX + name)
            info.size, info.mode = len(members[name]), 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def fixture_members() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.xml"))}


@pytest.fixture
def tgz(tmp_path: Path) -> Path:
    return make_tgz(tmp_path / "NLMCXR_reports.tgz", fixture_members())


@pytest.fixture
def reports(tgz: Path) -> dict[str, Report]:
    return {r.id: r for r in read_reports(tgz)}


# ---------------------------------------------------------------------------------------------
# parsing


def test_fixture_archive_has_the_real_layout(tgz: Path):
    with tarfile.open(tgz) as tar:
        assert tar.getnames() == ["ecgen-radiology", "ecgen-radiology/1.xml",
                                  "ecgen-radiology/10.xml", "ecgen-radiology/100.xml",
                                  "ecgen-radiology/2.xml"]


def test_reports_come_in_natural_id_order(tgz: Path):
    assert [r.id for r in iter_reports(tgz)] == ["CXR1", "CXR10", "CXR100", "CXR2"]
    assert [r.id for r in read_reports(tgz)] == ["CXR1", "CXR2", "CXR10", "CXR100"]


def test_normal_report(reports: dict[str, Report]):
    r = reports["CXR1"]
    assert r.comparison == "None."
    assert r.indication == "Annual screening, asymptomatic"
    # the double space in the file is normalised
    assert r.findings == ("Heart size is normal. The lungs are clear. "
                          "No pleural effusion or pneumothorax.")
    assert r.impression == "No acute cardiopulmonary disease."
    assert r.mesh_major == ["normal"]
    assert r.mesh_automatic == []
    assert r.image_ids == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert r.normal is True
    assert r.indexed is True
    assert r.structured == []


def test_report_with_several_tags(reports: dict[str, Report]):
    r = reports["CXR2"]
    assert r.indication == "Shortness of breath & cough"  # &amp; decoded
    assert r.mesh_major == [
        "Pleural Effusion/left/small",
        "Cardiomegaly/mild",
        "Opacity/lung/base/left/patchy",
        "Lung/hypoinflation",
        "Thoracic Vertebrae/degenerative/mild",
        "Nodule/lung/upper lobe/right /spiculated",
        "Technical Quality of Image Unsatisfactory",  # trailing blank, as in the real file
    ]
    assert r.mesh_automatic == ["pleural effusions", "Cardiomegaly", "opacity",
                                "degenerative change"]
    assert r.image_ids == ["CXR2_IM-0002-1001", "CXR2_IM-0002-2001"]
    assert r.normal is False
    assert r.indexed is True
    assert [f.to_dict() for f in r.structured] == [
        {"term": "Pleural Effusion", "location": ["left"], "severity": ["small"], "other": [],
         "side": "left", "tag": "Pleural Effusion/left/small"},
        {"term": "Cardiomegaly", "location": [], "severity": ["mild"], "other": [],
         "side": None, "tag": "Cardiomegaly/mild"},
        {"term": "Opacity", "location": ["lung", "base", "left"], "severity": [],
         "other": ["patchy"], "side": "left", "tag": "Opacity/lung/base/left/patchy"},
        {"term": "Lung", "location": [], "severity": [], "other": ["hypoinflation"],
         "side": None, "tag": "Lung/hypoinflation"},
        {"term": "Thoracic Vertebrae", "location": [], "severity": ["mild"],
         "other": ["degenerative"], "side": None, "tag": "Thoracic Vertebrae/degenerative/mild"},
        # "right " is stripped; the unknown "spiculated" is kept in other, not dropped
        {"term": "Nodule", "location": ["lung", "upper lobe", "right"], "severity": [],
         "other": ["spiculated"], "side": "right",
         "tag": "Nodule/lung/upper lobe/right/spiculated"},
        {"term": "Technical Quality of Image Unsatisfactory", "location": [], "severity": [],
         "other": [], "side": None, "tag": "Technical Quality of Image Unsatisfactory"},
    ]


def test_report_with_missing_findings(reports: dict[str, Report]):
    r = reports["CXR10"]
    assert r.findings == ""
    assert r.comparison == ""
    assert r.indication == "Chest pain"
    assert r.impression == "Heart size normal. Lungs are clear"
    assert r.mesh_major == ["No Indexing"]
    assert r.normal is False
    assert r.indexed is False  # not indexed: labels unknown, not normal
    assert r.structured == []
    assert r.image_ids == ["CXR10_IM-0010-1001"]


def test_report_with_several_images(reports: dict[str, Report]):
    r = reports["CXR100"]
    assert r.image_ids == ["CXR100_IM-0023-1001", "CXR100_IM-0023-2001",
                           "CXR100_IM-0023-3001", "CXR100_IM-0023-4001"]
    assert r.findings == ("Interval placement of a right chest tube. Small right apical "
                          "pneumothorax. Bilateral lower lobe airspace disease, worse on the "
                          "right.")  # the newline inside the element is normalised
    assert [(f.term, f.side, f.severity) for f in r.structured] == [
        ("Pneumothorax", "right", ["small"]),
        ("Tube, Inserted", "right", []),
        ("Airspace Disease", "bilateral", ["severe"]),
        ("Pleural Effusion", "right", []),
        ("Pleural Effusion", "left", []),
        ("Consolidation", "right", []),
    ]
    assert r.structured[0].location == ["apex", "right"]


def test_text_puts_impression_first(reports: dict[str, Report]):
    assert reports["CXR1"].text == (
        "No acute cardiopulmonary disease. Heart size is normal. The lungs are clear. "
        "No pleural effusion or pneumothorax.")
    assert reports["CXR2"].text.startswith(
        "1. Small left pleural effusion. 2. Mild cardiomegaly. Small left pleural effusion with")
    # an impression without final punctuation gets a full stop; no findings, nothing after it
    assert reports["CXR10"].text == "Heart size normal. Lungs are clear."
    assert Report(id="CXR9").text == ""
    assert Report(id="CXR9", findings="Clear lungs").text == "Clear lungs."


# ---------------------------------------------------------------------------------------------
# structured tags


def test_parse_mesh_tag_splits_modifiers():
    f = parse_mesh_tag("Opacity/lung/middle lobe/bilateral/interstitial/round/small/mild")
    assert f == Finding(term="Opacity", location=["lung", "middle lobe", "bilateral"],
                        severity=["small", "mild"], other=["interstitial", "round"],
                        tag="Opacity/lung/middle lobe/bilateral/interstitial/round/small/mild")
    assert parse_mesh_tag("Pneumothorax").to_dict() == {
        "term": "Pneumothorax", "location": [], "severity": [], "other": [], "side": None,
        "tag": "Pneumothorax"}
    # modifiers are case-folded for sorting; a term with a comma is one term
    f = parse_mesh_tag("Aorta, Thoracic/Thoracic Vertebrae/tortuous")
    assert (f.term, f.location, f.other) == ("Aorta, Thoracic", ["thoracic vertebrae"],
                                             ["tortuous"])
    assert parse_mesh_tag("Subcutaneous  Emphysema/right").term == "Subcutaneous Emphysema"


@pytest.mark.parametrize(("location", "side"), [
    (["left"], "left"),
    (["base", "right"], "right"),
    (["bilateral"], "bilateral"),
    (["left", "right"], "bilateral"),
    (["lung", "hilum"], None),
])
def test_finding_side(location: list[str], side: str | None):
    assert Finding(term="Opacity", location=location).side == side


def test_modifier_vocabularies_are_disjoint():
    assert not LOCATION_MODIFIERS & SEVERITY_MODIFIERS
    assert not LOCATION_MODIFIERS & OTHER_MODIFIERS
    assert not SEVERITY_MODIFIERS & OTHER_MODIFIERS


# ---------------------------------------------------------------------------------------------
# dataset and export


def test_dataset(tgz: Path):
    ds = ReportsDataset(tgz)
    assert len(ds) == 4
    assert ds.ids == ["CXR1", "CXR2", "CXR10", "CXR100"]
    item = ds[1]
    assert item["id"] == "CXR2"
    assert item["report"] == ds.reports[1].text
    assert item["findings"] == ds.reports[1].findings
    assert item["mesh_major"][0] == "Pleural Effusion/left/small"
    assert item["structured"][0]["side"] == "left"
    assert [m["id"] for m in ds.metadata] == ds.ids
    assert ds.metadata[3] == {
        "id": "CXR100", "normal": False, "indexed": True, "n_images": 4, "n_tags": 6,
        "has_findings": True, "has_impression": True,
        "terms": ["Airspace Disease", "Consolidation", "Pleural Effusion", "Pneumothorax",
                  "Tube, Inserted"],
    }
    assert ds.metadata[0]["normal"] is True
    assert ds.metadata[2]["has_findings"] is False
    with pytest.raises(IndexError):
        ds[4]


def test_dataset_from_reports():
    ds = ReportsDataset(reports=[Report(id="CXR7", impression="Clear.")])
    assert ds.ids == ["CXR7"]
    assert ds[0]["report"] == "Clear."


def test_export_reports(tgz: Path, tmp_path: Path):
    out = tmp_path / "out" / "reports.jsonl"
    assert export_reports(out, tgz) == 4
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == ["CXR1", "CXR2", "CXR10", "CXR100"]
    expected = read_reports(tgz)
    assert rows == [r.to_dict() for r in expected]
    assert [Report.from_dict(r) for r in rows] == expected  # round trip
    assert rows[0]["report"].startswith("No acute cardiopulmonary disease. Heart size")
    assert sorted(p.name for p in out.parent.iterdir()) == ["reports.jsonl"]  # no temp left


def test_export_keeps_old_file_on_bad_input(tgz: Path, tmp_path: Path):
    out = tmp_path / "reports.jsonl"
    out.write_text("old\n")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(tgz.read_bytes()[:300])
    with pytest.raises(InputError):
        export_reports(out, bad)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NLMCXR_reports.tgz", "bad.tgz",
                                                           "reports.jsonl"]


# ---------------------------------------------------------------------------------------------
# bad input


def _one_line(err: BiomedError) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def test_malformed_xml_member(tmp_path: Path):
    members = fixture_members()
    members["100.xml"] = members["100.xml"][:2000]  # cut mid-element
    bad = make_tgz(tmp_path / "bad.tgz", members)
    with pytest.raises(InputError) as e:
        read_reports(bad)
    msg = _one_line(e.value)
    assert msg.startswith(f"{bad}: member ecgen-radiology/100.xml: malformed XML: ")
    assert msg.endswith("(last good report CXR10)")
    assert e.value.path == str(bad)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "malformed XML: no element found: line 1, column 0"),
    (b'<?xml version="1.0" encoding="bogus"?><eCitation/>',
     "malformed XML: unknown encoding: bogus"),
])
def test_empty_or_undecodable_member(tmp_path: Path, content: bytes, reason: str):
    members = fixture_members()
    members["2.xml"] = content
    bad = make_tgz(tmp_path / "bad.tgz", members)
    with pytest.raises(InputError) as e:
        read_reports(bad)
    assert _one_line(e.value) == (
        f"{bad}: member ecgen-radiology/2.xml: {reason} (last good report CXR100)")


def test_member_that_is_not_a_report(tmp_path: Path):
    members = fixture_members()
    members["1.xml"] = b'<?xml version="1.0"?><PubmedArticle/>'
    bad = make_tgz(tmp_path / "bad.tgz", members)
    with pytest.raises(InputError) as e:
        read_reports(bad)
    assert _one_line(e.value) == (
        f"{bad}: member ecgen-radiology/1.xml: not an IU report (root element <PubmedArticle>, "
        "expected <eCitation>) (no report read before it)")


def test_duplicate_report_id(tmp_path: Path):
    members = fixture_members()
    members["3.xml"] = members["2.xml"]
    bad = make_tgz(tmp_path / "dup.tgz", members)
    with pytest.raises(InputError, match=r"member ecgen-radiology/3.xml: duplicate report id CXR2"):
        read_reports(bad)


def test_truncated_tgz(tgz: Path, tmp_path: Path):
    data = tgz.read_bytes()
    bad = tmp_path / "cut.tgz"
    messages = []
    for cut in range(10, len(data), len(data) // 12):  # anywhere: header, members, trailer
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError) as e:
            read_reports(bad)
        msg = _one_line(e.value)
        assert msg.startswith(f"{bad}: ")
        messages.append(msg)
    assert any(": truncated: no report could be read: " in m for m in messages)
    assert any("damaged or truncated archive" in m and "ecgen-radiology/" in m
               and "(last good report CXR" in m for m in messages)


def test_truncated_tgz_names_member_and_last_good_report(tgz: Path, tmp_path: Path):
    bad = tmp_path / "cut.tgz"
    bad.write_bytes(tgz.read_bytes()[:-20])  # only the last member (2.xml) and trailer are lost
    with pytest.raises(InputError) as e:
        read_reports(bad)
    msg = _one_line(e.value)
    assert "ecgen-radiology/2.xml" in msg
    assert msg.endswith("(last good report CXR100)")


def test_not_a_tgz(tmp_path: Path):
    bad = tmp_path / "reports.tgz"
    bad.write_bytes(b"this is not a gzip file at all" * 10)
    with pytest.raises(InputError) as e:
        read_reports(bad)
    assert _one_line(e.value).startswith(f"{bad}: not a readable gzip tar archive: ")


def test_missing_file_and_empty_archive(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        read_reports(tmp_path / "nope.tgz")
    empty = make_tgz(tmp_path / "empty.tgz", {})
    with pytest.raises(InputError) as e:
        read_reports(empty)
    assert str(e.value) == f"{empty}: no report XML members in the archive"


# ---------------------------------------------------------------------------------------------
# the real tarball

needs_reports = pytest.mark.skipif(
    sources.status("iu_reports") != "cached",
    reason="the IU reports are not in the data cache: run `biomed data fetch iu_reports`",
)


@pytest.fixture(scope="module")
def real() -> list[Report]:
    return read_reports()  # the cached tarball: about 1.5 s


def _reports_with(real: list[Report], term: str) -> list[Report]:
    return [r for r in real if any(f.term == term for f in r.structured)]


def _sides(r: Report, term: str) -> set[str | None]:
    return {f.side for f in r.structured if f.term == term}


@pytest.mark.data
@needs_reports
def test_real_counts(real: list[Report]):
    assert len(real) == 3955
    assert len({r.id for r in real}) == 3955
    assert (real[0].id, real[-1].id) == ("CXR1", "CXR3999")  # ids have gaps
    assert sum(r.normal for r in real) == 1391
    assert sum(not r.indexed for r in real) == 95  # "No Indexing"
    assert sum(len(r.image_ids) for r in real) == 7470
    assert sum(not r.image_ids for r in real) == 104
    assert sum(not r.findings for r in real) == 530
    assert sum(not r.impression for r in real) == 34
    assert sum(not r.text for r in real) == 28


@pytest.mark.data
@needs_reports
def test_real_finding_counts(real: list[Report]):
    effusion = _reports_with(real, "Pleural Effusion")
    assert len(effusion) == 161
    # reports with a Pleural Effusion tag on that side (a report may have a left and a right tag)
    assert sum("left" in _sides(r, "Pleural Effusion") for r in effusion) == 48
    assert sum("right" in _sides(r, "Pleural Effusion") for r in effusion) == 48
    assert sum("bilateral" in _sides(r, "Pleural Effusion") for r in effusion) == 65
    assert sum(_sides(r, "Pleural Effusion") == {None} for r in effusion) == 10
    assert len(_reports_with(real, "Pneumothorax")) == 23
    assert len(_reports_with(real, "Mass")) == 17
    assert len(_reports_with(real, "Consolidation")) == 30
    assert len(_reports_with(real, "Cardiomegaly")) == 375
    ptx = _reports_with(real, "Pneumothorax")
    assert Counter(s for r in ptx for s in _sides(r, "Pneumothorax")) == {
        "right": 15, "left": 6, None: 2}


@pytest.mark.data
@needs_reports
def test_real_modifier_vocabulary_is_all_known(real: list[Report]):
    found: dict[str, Counter] = {"location": Counter(), "severity": Counter(), "other": Counter()}
    for r in real:
        for f in r.structured:
            for kind, counter in found.items():
                counter.update(getattr(f, kind))
    assert set(found["other"]) <= OTHER_MODIFIERS  # no modifier the vocabulary does not know
    assert (len(found["location"]), len(found["severity"]), len(found["other"])) == (55, 6, 26)
    assert found["severity"] == {"mild": 909, "small": 198, "severe": 95, "moderate": 86,
                                 "large": 57, "borderline": 54}
    assert found["location"]["left"] == 984
    assert found["location"]["right"] == 1191


@pytest.mark.data
@needs_reports
def test_real_first_report(real: list[Report]):
    r = real[0]
    assert r.id == "CXR1"
    assert r.impression == "Normal chest x-XXXX."
    assert r.indication == "Positive TB test"
    assert r.image_ids == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert r.normal
    assert r.text.startswith("Normal chest x-XXXX. The cardiac silhouette and mediastinum")
