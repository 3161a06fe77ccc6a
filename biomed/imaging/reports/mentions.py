"""What a report's text says about a finding: affirmed, negated or uncertain (NegEx-style).

The phantom's labels come from the IU reports' MeSH tags (`biomed.imaging.reports.findings`),
which hand indexers attached to the text. A few tags disagree with the text they index: report
CXR18 reads "no definite pleural effusion seen" and is tagged ``Pleural Effusion/borderline``;
others hedge ("scarring and/or effusion", "possible small effusions") where the tags say yes or
say nothing. A text-to-image model prompted with such a report cannot be scored against the tag:
the prompt neither states the finding nor denies it. This module reads the text the way NegEx
does (Chapman et al., J Biomed Inform 2001: trigger phrases before or after a finding's mention,
a scope ending at the clause, pseudo-triggers such as "no change in" that negate nothing) and
CheXpert's labeler splits its outcomes (Irvin et al., AAAI 2019: positive, negative, uncertain),
so that `text_checked_labels` can mark such prompt/label pairs unknown (NaN), as CheXpert's
evaluation leaves uncertain labels out.

Only findings with a closed vocabulary of mentions are read (`MENTION_PATTERNS`: pleural
effusion, pneumothorax, pulmonary oedema); every other label passes through unchanged. The
reading is a heuristic: `biomed.imaging.diffusion.evaluate` reports the fidelity both with and
without it, and the test suite checks it on the templated reports, whose labels are exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

__all__ = ["MENTION_PATTERNS", "Mention", "disagreements", "mentions", "stance",
           "text_checked_labels", "unsupported"]

Mention = Literal["affirmed", "negated", "uncertain"]

# finding -> a regex of its mentions. "Pericardial effusion" is another finding (the heart's
# sac), and "pleural fluid"/"pleural air" are how IU radiologists often write the two.
MENTION_PATTERNS: dict[str, re.Pattern[str]] = {
    "effusion": re.compile(r"(?<!pericardial )\beffusions?\b|\bpleural fluid\b"),
    "pneumothorax": re.compile(r"\b(?:hydro)?pneumothora(?:x|ces)\b|\bpleural air\b"),
    "edema": re.compile(r"(?<!soft tissue )\b(?:o)?edema(?:tous)?\b"),
}

# NegEx pre-negation triggers: the mention after them, in the same clause, is denied.
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|resolution of|"
    r"clear of|removal of|interval resolution of)\b")
# Pseudo-triggers: phrases that contain a trigger but deny nothing ("no change in effusion").
_PSEUDO = re.compile(
    r"\b(?:no|without) (?:significant |appreciable |substantial |definite |interval |"
    r"other |further |radiographic )?(?:change|increase|worsening|progression)\b|"
    r"\bnot only\b|\bnot (?:significantly |substantially )?changed\b")
# Post-negation: the mention before them is denied ("the effusion has resolved").
_POST_NEGATION = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:resolved|cleared|not (?:seen|present|identified|visualized|"
    r"appreciated)|absent)\b")
# Uncertainty triggers before the mention, in its clause ("possible small effusions").
_PRE_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|may|might|could|questionable|question(?:ed)?|suspect(?:ed)?|"
    r"suspicion|suspicious for|suggest(?:s|ed|ive|ing)?|cannot (?:be )?exclude(?:d)?|"
    r"can not (?:be )?exclude(?:d)?|versus|vs|and/or|equivocal|evaluat(?:e|ion|ed) for|"
    r"rule out|to exclude|differential|concern for|borderline)\b")
# ... and right after it: offered as one of alternatives, or hedged by what follows ("effusion
# versus pleural thickening", "effusion cannot be excluded"). Only a short window, so that a
# clause on the finding's cause ("effusion, possibly from pleuritis") does not hedge it.
_POST_UNCERTAIN = re.compile(
    r"^\W*(?:\w+\W+){0,2}?(?:versus|vs|and/or|possible|suspected|questionable|"
    r"(?:cannot|can not|not) (?:be )?excluded)\b")
# Where a trigger's scope ends (NegEx's termination terms, and clause punctuation).
_TERMINATORS = re.compile(
    r"\b(?:but|however|although|though|except|aside from|apart from|which|with|otherwise|"
    r"yet|still|whereas|there is|there are)\b|[;:]")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+|\s+\d+\.\s+")


def _clause_before(sentence: str, start: int) -> str:
    """The part of ``sentence`` before ``start`` back to the nearest scope terminator."""
    before = sentence[:start]
    cut = 0
    for m in _TERMINATORS.finditer(before):
        cut = m.end()
    return before[cut:]


def _clause_after(sentence: str, end: int) -> str:
    after = sentence[end:]
    m = _TERMINATORS.search(after)
    return after[:m.start()] if m else after


def _classify(sentence: str, start: int, end: int) -> Mention:
    before = _PSEUDO.sub(" ", _clause_before(sentence, start))
    after = _clause_after(sentence, end)
    if _PRE_NEGATION.search(before) or _POST_NEGATION.search(after):
        return "negated"
    if _PRE_UNCERTAIN.search(before) or _POST_UNCERTAIN.search(after):
        return "uncertain"
    return "affirmed"


def mentions(text: str, finding: str) -> list[Mention]:
    """How each mention of ``finding`` in ``text`` is meant, in text order ([] when the text
    never names it, or when the finding has no pattern)."""
    pattern = MENTION_PATTERNS.get(finding)
    if pattern is None or not text:
        return []
    out: list[Mention] = []
    for sentence in _SENTENCES.split(text.lower()):
        out += [_classify(sentence, m.start(), m.end()) for m in pattern.finditer(sentence)]
    return out


def stance(text: str, finding: str) -> Mention | None:
    """The text's overall stance on ``finding``: affirmed when any mention affirms it, else
    uncertain when any mention hedges, else negated; None when it is never mentioned."""
    found = set(mentions(text, finding))
    for s in ("affirmed", "uncertain", "negated"):
        if s in found:
            return s  # type: ignore[return-value]
    return None


def unsupported(tagged: bool, text_stance: Mention | None) -> bool:
    """True when the text does not support the label: a tagged finding the text only denies or
    hedges, or an untagged one it affirms or hedges (a finding never named is supported)."""
    if tagged:
        return text_stance in ("negated", "uncertain")
    return text_stance in ("affirmed", "uncertain")


def text_checked_labels(labels: np.ndarray, label_names: Sequence[str],
                        texts: Sequence[str]) -> np.ndarray:
    """``labels`` (N x K, 1/0/NaN) with the pairs the text does not support set to NaN.

    For each finding of `MENTION_PATTERNS` (and its side columns, ``effusion_left``...): a 1
    whose text never affirms the finding but denies or hedges it, and a 0 whose text affirms
    or hedges it. A finding the text never names keeps its label (reports often leave a
    tagged finding to a sign, "blunted costophrenic angle", and a normal one unsaid).
    """
    out = np.array(labels, dtype=np.float32, copy=True)
    names = list(label_names)
    for finding in MENTION_PATTERNS:
        if finding not in names:
            continue
        k = names.index(finding)
        cols = [j for j, n in enumerate(names) if n == finding or n.startswith(f"{finding}_")]
        for i, text in enumerate(texts):
            if out[i, k] in (0, 1) and unsupported(out[i, k] == 1, stance(str(text or ""),
                                                                            finding)):
                out[i, cols] = np.nan
    return out


def disagreements(reports) -> dict[str, list[tuple[str, bool, Mention]]]:
    """Per finding of `MENTION_PATTERNS`: (report id, tagged?, text stance) of every included
    report whose text does not support its phantom label (what `text_checked_labels` leaves
    out when the report is a prompt)."""
    from biomed.imaging.reports.findings import classify

    out: dict[str, list[tuple[str, bool, Mention]]] = {f: [] for f in MENTION_PATTERNS}
    for r in reports:
        found = classify(r).findings
        if found is None:
            continue
        names = {f.name for f in found}
        for finding in MENTION_PATTERNS:
            tagged, s = finding in names, stance(r.text, finding)
            if unsupported(tagged, s):
                out[finding].append((r.id, tagged, s))  # type: ignore[arg-type]
    return out


def print_disagreements(reports: Iterable) -> None:
    """Print `disagreements` of the reports (``biomed reports mentions``)."""
    for finding, rows in disagreements(reports).items():
        print(f"{finding}: {len(rows)} included reports whose text does not support the label")
        for rid, tagged, s in rows:
            print(f"  {rid:8s} {'tagged' if tagged else 'untagged':8s} text: {s}")
