"""Prompt filters (`biomed.imaging.reports.prompts`): ``drop_negated`` removes what a report
denies and keeps what it states, checked on hand-written IU-style sentences and on every
templated report, whose findings are exact."""

from __future__ import annotations

import pytest

from biomed.errors import ConfigError
from biomed.imaging.reports.mentions import MENTION_PATTERNS, stance
from biomed.imaging.reports.prompts import (
    apply_prompt_filter,
    check_prompt_filter,
    drop_negated,
)
from biomed.imaging.reports.templates import template_cases


@pytest.mark.parametrize("text, expected", [
    ("Mild cardiomegaly. Heart size is mildly enlarged. No pleural effusion or pneumothorax.",
     "Mild cardiomegaly. Heart size is mildly enlarged."),
    ("Trace left pneumothorax. No pleural effusions. There is no focal airspace disease.",
     "Trace left pneumothorax."),
    # a denied clause inside a sentence goes; the rest of the sentence stays
    ("Mild cardiomegaly without pleural effusion. The heart is not enlarged.",
     "Mild cardiomegaly."),
    ("There is no pneumothorax, but there is mild atelectasis.",
     "There is mild atelectasis."),
    ("No pneumothorax; small left effusion.", "Small left effusion."),
    # a negation scope runs through the list it denies
    ("The lungs are clear without focal consolidation, effusion or pneumothorax.",
     "The lungs are clear."),
    # numbered impressions: the numbers go with the sentences
    ("1. Small left pleural effusion. 2. No pneumothorax.", "Small left pleural effusion."),
    # pseudo-triggers deny nothing (NegEx): "no change in" keeps the effusion
    ("No change in the small right effusion.", "No change in the small right effusion."),
    # decimals are not sentence ends
    ("Stable 3.5 cm nodule. Negative for acute process.", "Stable 3.5 cm nodule."),
    # a normal report keeps its normal sentences; one that only denies keeps its first
    ("No acute cardiopulmonary abnormality. No pleural effusion. Heart size is normal.",
     "Heart size is normal."),
    ("No acute cardiopulmonary abnormality. No pneumothorax.",
     "No acute cardiopulmonary abnormality."),
    ("  ", ""),
])
def test_drop_negated_keeps_what_the_report_states(text, expected):
    assert drop_negated(text) == expected


def test_every_templated_report_loses_its_denials_and_keeps_its_findings():
    """The template writer's denials ("No pleural effusion or pneumothorax.", "No pulmonary
    edema.") all go; every finding a templated report states is still stated after."""
    cases = template_cases(9, seed=3)
    assert len(cases) > 100
    denied = kept = 0
    for case in cases:
        before, after = case.text, drop_negated(case.text)
        present = {f.name for f in case.findings}
        for name in MENTION_PATTERNS:  # the findings whose mentions can be read
            if name in present:
                assert stance(after, name) == "affirmed", (case.id, name, after)
                kept += 1
            else:
                assert stance(after, name) is None, (case.id, name, after)
                denied += stance(before, name) == "negated"
        assert len(after) < len(before) or not any(
            stance(before, n) == "negated" for n in MENTION_PATTERNS)
    assert denied > 100 and kept > 20  # the check above ran on both kinds


def test_filters_by_name():
    prompts = ["Cardiomegaly. No pleural effusion.", "No acute disease."]
    assert apply_prompt_filter(None, prompts) == prompts
    assert apply_prompt_filter("none", prompts) == prompts
    assert apply_prompt_filter("drop_negated", prompts) == ["Cardiomegaly.", "No acute disease."]
    assert check_prompt_filter("") == "none"
    with pytest.raises(ConfigError, match="prompt_filter='negex'.*none, drop_negated"):
        check_prompt_filter("negex")
