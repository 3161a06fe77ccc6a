"""The NegEx-style reading of report text (`biomed.imaging.reports.mentions`)."""

from __future__ import annotations

import numpy as np
import pytest

from biomed.imaging.reports.mentions import mentions, stance, text_checked_labels
from biomed.imaging.reports.templates import template_cases


@pytest.mark.parametrize(("text", "finding", "expected"), [
    ("Small left pleural effusion.", "effusion", ["affirmed"]),
    ("No focal alveolar consolidation, no definite pleural effusion seen.", "effusion",
     ["negated"]),
    ("No focal airspace disease, pneumothorax, or pleural effusion.", "effusion", ["negated"]),
    ("There is no pleural effusion or pneumothorax.", "pneumothorax", ["negated"]),
    ("Without evidence of pulmonary edema.", "edema", ["negated"]),
    ("The left pleural effusion has resolved.", "effusion", ["negated"]),
    ("Resolution of small apical pneumothorax.", "pneumothorax", ["negated"]),
    # pseudo-negation: "no significant change in" denies nothing
    ("No significant change in right pneumothorax or pleural fluid.", "pneumothorax",
     ["affirmed"]),
    ("No significant change in right pneumothorax or pleural fluid.", "effusion", ["affirmed"]),
    # a negation's scope ends at a terminator
    ("No cardiomegaly with bilateral small pleural effusions.", "effusion", ["affirmed"]),
    ("No pneumothorax; small right effusion.", "effusion", ["affirmed"]),
    # hedges before and right after the mention
    ("Possible small effusions.", "effusion", ["uncertain"]),
    ("Small left basilar parenchymal scarring and/or effusion.", "effusion", ["uncertain"]),
    ("Question small right pleural effusion versus pleural thickening.", "effusion",
     ["uncertain"]),
    ("Edema versus chronic interstitial changes.", "edema", ["uncertain"]),
    ("A small effusion cannot be excluded.", "effusion", ["uncertain"]),
    # ... but not a clause on the finding's cause
    ("Bilateral large pleural effusion, possibly from pleuritis.", "effusion", ["affirmed"]),
    # other findings that share a word
    ("Cardiomegaly with possible pericardial effusion.", "effusion", []),
    ("Soft tissue edema of the ankle.", "edema", []),
    # the IU writing of a pneumothorax, and a finding without a pattern
    ("Small medial left upper lobe pleural air collection.", "pneumothorax", ["affirmed"]),
    ("Heart size is normal.", "cardiomegaly", []),
])
def test_mentions_are_read_as_negex_would(text, finding, expected):
    assert mentions(text, finding) == expected


def test_stance_prefers_an_affirmed_mention_then_a_hedge():
    assert stance("No large effusion. Small left effusion.", "effusion") == "affirmed"
    assert stance("No large effusion. Possible small effusion.", "effusion") == "uncertain"
    assert stance("No large effusion.", "effusion") == "negated"
    assert stance("Clear lungs.", "effusion") is None
    assert stance("", "effusion") is None


def test_templated_reports_never_disagree_with_their_exact_findings():
    """Every templated report states its findings and denies the common absent ones; the
    reading must agree with all of them (every finding, side and severity)."""
    cases = template_cases(100, seed=3, extra={"effusion/left": 50, "pneumothorax": 20},
                           extra_co_finding=0.7)
    assert len(cases) > 1000
    for c in cases:
        present = {f.name for f in c.findings}
        for name in ("effusion", "pneumothorax", "edema"):
            s = stance(c.text, name)
            assert (s == "affirmed") if name in present else (s in (None, "negated")), \
                (name, c.text)


def test_text_checked_labels_leave_out_only_unsupported_pairs():
    names = ["no_finding", "effusion", "effusion_left", "effusion_right", "cardiomegaly"]
    labels = np.array([
        [0, 1, 1, 0, 0],  # stated: kept
        [0, 1, 0, 1, 0],  # tagged, but the text denies it: effusion and its sides unknown
        [1, 0, 0, 0, 0],  # untagged, the text hedges one: unknown
        [1, 0, 0, 0, 0],  # untagged and denied: kept
        [0, 1, 1, 0, 1],  # tagged, the text names only a sign: kept
        [0, np.nan, np.nan, np.nan, 1],  # already unknown: stays so
    ], dtype=np.float32)
    texts = ["Small left pleural effusion.", "No definite pleural effusion seen.",
             "Possible small effusions.", "No pleural effusion.",
             "Blunted left costophrenic angle.", "Cardiomegaly."]
    out = text_checked_labels(labels, names, texts)
    expect = labels.copy()
    expect[1, 1:4] = np.nan
    expect[2, 1:4] = np.nan
    assert np.array_equal(out, expect, equal_nan=True)
    assert np.array_equal(labels[1], [0, 1, 0, 1, 0])  # the input is not modified
    # labels without a pattern's finding pass through
    assert np.array_equal(text_checked_labels(labels[:, [0, 4]], ["no_finding", "cardiomegaly"],
                                              texts), labels[:, [0, 4]])


@pytest.mark.data
def test_the_iu_reports_whose_text_contradicts_their_effusion_tag():
    """On the real reports: CXR18 ("no definite pleural effusion seen", tagged
    Pleural Effusion/borderline) and the hedged positives are found, and the reading
    disagrees with the tags for few reports (15 of the 3,327 included for effusion)."""
    from biomed.imaging.reports.findings import classify
    from biomed.imaging.reports.iu import read_reports
    from biomed.imaging.reports.mentions import disagreements

    reports = read_reports()
    by_id = {r.id: r for r in reports}
    assert stance(by_id["CXR18"].text, "effusion") == "negated"
    assert stance(by_id["CXR2974"].text, "effusion") == "uncertain"  # "scarring and/or"
    assert classify(by_id["CXR18"]).included
    found = disagreements(reports)
    ids = {rid for rid, _, _ in found["effusion"]}
    assert {"CXR18", "CXR2974"} <= ids
    assert ("CXR18", True, "negated") in found["effusion"]
    assert 5 <= len(found["effusion"]) <= 30, found["effusion"]
    assert all(len(rows) <= 30 for rows in found.values())
