"""MIMIC-CXR free-text reports: their ``NAME:`` sections, and the text a model is given.

A MIMIC-CXR report (``files/p10/p10000032/s50414267.txt`` of ``mimic-cxr-reports.zip``) is
plain text with upper-case section headings (``EXAMINATION:``, ``INDICATION:``,
``FINDINGS:``, ``IMPRESSION:``...). `mimic_report_text` picks the impression, else the
findings: what `biomed.imaging.data.mimic_cxr_jpg.MimicCxrJpg` puts in each row's ``report``.
"""

from __future__ import annotations

import re

__all__ = ["mimic_report_sections", "mimic_report_text"]

_SECTION = re.compile(r"^[ \t]*([A-Z][A-Z /&,()-]*[A-Z)])[ \t]*:", re.MULTILINE)


def mimic_report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into its ``NAME:`` sections (upper-case headings at line start);
    text before the first heading goes under ``""``. Whitespace is collapsed."""
    out: dict[str, str] = {}
    marks = list(_SECTION.finditer(text))
    out[""] = " ".join(text[: marks[0].start() if marks else len(text)].split())
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        body = " ".join(text[m.end(): nxt.start() if nxt else len(text)].split())
        out.setdefault(m.group(1).strip(), body)
    return out


def mimic_report_text(text: str) -> str:
    """The prompt text of a MIMIC-CXR report: the IMPRESSION, else the FINDINGS, else ""
    (RoentGen's choice: the impression is the radiologist's summary)."""
    sections = mimic_report_sections(text)
    for names in (("IMPRESSION", "IMPRESSIONS"), ("FINDINGS", "FINDING")):
        for n in names:
            if sections.get(n):
                return sections[n]
    return ""
