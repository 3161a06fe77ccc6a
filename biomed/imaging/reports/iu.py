"""The Indiana University / OpenI chest X-ray reports (``NLMCXR_reports.tgz``).

The real report text of the workbench: 3,955 reports, one XML file per report
(``ecgen-radiology/<n>.xml``), each with four ``Abstract/AbstractText[@Label]`` sections
(COMPARISON, INDICATION, FINDINGS, IMPRESSION), MeSH tags (``MeSH/major``: indexed by hand,
``Term/modifier/...``; ``MeSH/automatic``: free-text concepts found by a tagger) and the ids
of its images (``parentImage/@id``; the images themselves are not in the archive).

The tarball is streamed with ``tarfile`` (nothing is extracted to disk). The MeSH major tags
are parsed into structured findings (term + location, severity and other modifiers) so that
a later mapping onto the canonical finding labels stays a lookup on ``Finding.term`` and
``Finding.side``. Reports are CC BY-NC-ND 4.0: models trained on them inherit the
non-commercial terms.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomed.errors import InputError

__all__ = [
    "LOCATION_MODIFIERS",
    "OTHER_MODIFIERS",
    "SEVERITY_MODIFIERS",
    "Finding",
    "Report",
    "ReportsDataset",
    "default_path",
    "export_reports",
    "iter_reports",
    "parse_mesh_tag",
    "read_reports",
]

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
NORMAL_TAG = "normal"  # MeSH major of a report read as normal (the only tag when present)
NOT_INDEXED_TAG = "No Indexing"  # MeSH major of a report nobody indexed: labels unknown

# Modifier vocabulary of the MeSH major tags, counted on the real file (87 distinct modifiers
# after stripping and lower-casing). Sides, zones and anatomical sites are locations: a tag
# such as ``Calcinosis/aorta`` or ``Fractures, Bone/ribs/left`` says where, not what.
LOCATION_MODIFIERS = frozenset({
    # side and zone
    "left", "right", "bilateral", "base", "apex", "hilum", "lingula", "lower lobe",
    "middle lobe", "upper lobe", "retrocardiac", "posterior", "anterior", "paratracheal",
    "supracardiac", "costophrenic angle", "cardiophrenic angle", "pleural sinus", "sulcus",
    "azygos lobe",
    # anatomical sites
    "lung", "pleura", "pulmonary alveoli", "bronchi", "trachea", "trachea, carina",
    "mediastinum", "lymph nodes", "heart", "heart atria", "heart ventricles", "aortic valve",
    "mitral valve", "coronary vessels", "aorta", "aorta, thoracic", "pulmonary artery",
    "blood vessels", "diaphragm", "esophagus", "thorax", "abdomen", "neck", "breast",
    "breast implants", "adipose tissue", "spine", "cervical vertebrae", "thoracic vertebrae",
    "lumbar vertebrae", "ribs", "sternum", "clavicle", "shoulder", "humerus",
})
# ``small``/``large`` grade effusions, pneumothoraces and opacities; ``borderline`` grades
# cardiomegaly. ``minimal`` does not occur in the file but is a grade when it does.
SEVERITY_MODIFIERS = frozenset({
    "minimal", "mild", "moderate", "severe", "small", "large", "borderline",
})
# Everything else seen in the file: pattern, extent, chronicity and shape descriptors (and
# the finding itself when the term is an anatomical site, e.g. ``Lung/hypoinflation``).
# Unknown modifiers also land in ``other``; this set only documents the known ones.
OTHER_MODIFIERS = frozenset({
    "degenerative", "multiple", "hypoinflation", "hyperdistention", "tortuous",
    "interstitial", "prominent", "round", "patchy", "scattered", "enlarged", "chronic",
    "bronchovascular", "elevated", "blunted", "streaky", "focal", "flattened", "diffuse",
    "healed", "obscured", "irregular", "reticular", "abnormal", "acute", "multilobar",
    "calcified",
})

_SIDES = ("left", "right")


def _clean(text: str | None) -> str:
    """Collapse runs of whitespace (newlines, double spaces, trailing blanks) to one space."""
    return " ".join(text.split()) if text else ""


@dataclass
class Finding:
    """One MeSH major tag split into its term and its modifiers.

    ``Pleural Effusion/left/small`` becomes term ``Pleural Effusion``, location ``[left]``,
    severity ``[small]``. Modifiers keep their order in the tag; unknown ones go to ``other``
    rather than being dropped.
    """

    term: str  # MeSH heading as written (whitespace normalised, case kept)
    location: list[str] = field(default_factory=list)
    severity: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    tag: str = ""  # the whole tag, whitespace normalised

    @property
    def side(self) -> str | None:
        """``left``, ``right``, ``bilateral`` (also when both sides are named) or None."""
        if "bilateral" in self.location:
            return "bilateral"
        sides = [s for s in _SIDES if s in self.location]
        if len(sides) == 2:
            return "bilateral"
        return sides[0] if sides else None

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "location": list(self.location),
                "severity": list(self.severity), "other": list(self.other),
                "side": self.side, "tag": self.tag}


def parse_mesh_tag(tag: str) -> Finding:
    """Split one MeSH major tag (``Term/modifier/...``) into a `Finding`.

    Modifiers are lower-cased and stripped before they are sorted into location, severity
    and other (the file has ``right `` and ``Thoracic Vertebrae`` as modifiers).
    """
    parts = [_clean(p) for p in tag.split("/")]
    finding = Finding(term=parts[0], tag="/".join(p for p in parts if p))
    for raw in parts[1:]:
        mod = raw.lower()
        if not mod:
            continue
        if mod in LOCATION_MODIFIERS:
            finding.location.append(mod)
        elif mod in SEVERITY_MODIFIERS:
            finding.severity.append(mod)
        else:
            finding.other.append(mod)
    return finding


@dataclass
class Report:
    """One IU chest X-ray report: its sections, MeSH tags and image ids.

    Text fields are "" when the section is absent or empty. Whitespace is normalised in the
    text and in the tags (the file has tags with trailing or doubled blanks); ``mesh_major``
    otherwise keeps every tag as written, in file order, duplicates included.
    """

    id: str  # "CXR1": the report's uId
    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""
    mesh_major: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    @property
    def normal(self) -> bool:
        """True when the report was indexed as normal (MeSH major is exactly ``normal``)."""
        return self.mesh_major == [NORMAL_TAG]

    @property
    def indexed(self) -> bool:
        """False for the reports tagged ``No Indexing`` (or untagged): their labels are unknown,
        which is not the same as normal."""
        return bool(self.mesh_major) and self.mesh_major != [NOT_INDEXED_TAG]

    @property
    def structured(self) -> list[Finding]:
        """The MeSH major tags as findings, in file order; empty for normal/unindexed reports."""
        return [parse_mesh_tag(t) for t in self.mesh_major
                if t not in (NORMAL_TAG, NOT_INDEXED_TAG)]

    @property
    def text(self) -> str:
        """The report text used as a prompt and by the LM: impression first, then findings.

        The impression is the radiologist's summary, the part a short prompt must keep when a
        text encoder truncates. A section that lacks final punctuation gets a full stop so the
        two read as sentences.
        """
        parts = [p if p[-1] in ".!?" else p + "." for p in (self.impression, self.findings) if p]
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: the fields, ``report`` (the text), ``normal``, ``indexed`` and
        ``structured`` (each finding as a dict)."""
        return {
            "id": self.id,
            "report": self.text,
            "findings": self.findings,
            "impression": self.impression,
            "indication": self.indication,
            "comparison": self.comparison,
            "mesh_major": list(self.mesh_major),
            "mesh_automatic": list(self.mesh_automatic),
            "image_ids": list(self.image_ids),
            "normal": self.normal,
            "indexed": self.indexed,
            "structured": [f.to_dict() for f in self.structured],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Rebuild a report from `to_dict` output (derived keys are ignored)."""
        return cls(id=d["id"], findings=d.get("findings", ""), impression=d.get("impression", ""),
                   indication=d.get("indication", ""), comparison=d.get("comparison", ""),
                   mesh_major=list(d.get("mesh_major", [])),
                   mesh_automatic=list(d.get("mesh_automatic", [])),
                   image_ids=list(d.get("image_ids", [])))


# ---------------------------------------------------------------------------------------------
# reading the tarball


def default_path() -> Path:
    """The cached tarball (raises `DataNotFetched` with the fetch command if it is missing)."""
    from biomed import sources

    return sources.path("iu_reports", "NLMCXR_reports.tgz")


def _parse_member(data: bytes, member: str) -> Report:
    """One report XML -> `Report`; raises ValueError / ET.ParseError on a bad member."""
    root = ET.fromstring(data)
    if root.tag != "eCitation":
        raise ValueError(f"not an IU report (root element <{root.tag}>, expected <eCitation>)")
    uid = root.find("uId")
    report_id = _clean(uid.get("id")) if uid is not None else ""
    if not report_id:  # fall back on the file name, as the archive names them: 12.xml -> CXR12
        report_id = "CXR" + Path(member).stem
    sections = {}
    for node in root.iterfind(".//Abstract/AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in SECTIONS:
            sections[label] = _clean("".join(node.itertext()))
    mesh = root.find("MeSH")

    def tags(kind: str) -> list[str]:
        found = [] if mesh is None else (_clean(e.text) for e in mesh.iterfind(kind))
        return [t for t in found if t]

    return Report(
        id=report_id,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        indication=sections.get("INDICATION", ""),
        comparison=sections.get("COMPARISON", ""),
        mesh_major=tags("major"),
        mesh_automatic=tags("automatic"),
        image_ids=[i for p in root.iterfind("parentImage") if (i := _clean(p.get("id")))],
    )


def _is_report_member(m: tarfile.TarInfo) -> bool:
    name = m.name.rsplit("/", 1)[-1]
    return m.isfile() and name.endswith(".xml") and not name.startswith("._")


def iter_reports(path: str | Path | None = None) -> Iterator[Report]:
    """Stream the reports out of the tarball in archive order, one member at a time.

    Any damage (not a gzip tar, truncated, a member that is not well-formed report XML)
    raises `InputError` naming the tarball, the member and the last report read before it.
    """
    tgz = Path(path) if path is not None else default_path()
    if not tgz.is_file():
        raise InputError(tgz, "no such file")
    last_id: str | None = None
    where = ""  # the member being read, or the last one read when a header fails
    seen: set[str] = set()

    def fail(reason: str) -> InputError:
        after = f"last good report {last_id}" if last_id else "no report read before it"
        return InputError(tgz, f"{where}: {reason} ({after})")

    try:
        # Stream mode (no seeking, no extraction) over our own GzipFile: tarfile stops at the
        # first short or empty header without complaint, so a tgz cut between members would
        # silently lose reports; draining the gzip stream afterwards checks its end marker,
        # CRC and length.
        with (open(tgz, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz,
              tarfile.open(fileobj=gz, mode="r|") as tar):
            for m in tar:
                where = f"member {m.name}"
                if not _is_report_member(m):
                    continue
                fobj = tar.extractfile(m)
                data = fobj.read() if fobj is not None else b""
                if len(data) != m.size:
                    raise fail(f"truncated ({len(data)} of {m.size} bytes)")
                try:
                    report = _parse_member(data, m.name)
                except (ET.ParseError, LookupError) as e:  # LookupError: unknown encoding
                    raise fail(f"malformed XML: {e}") from None
                except ValueError as e:
                    raise fail(str(e)) from None
                if report.id in seen:
                    raise fail(f"duplicate report id {report.id}")
                seen.add(report.id)
                last_id = report.id
                where = f"after member {m.name}"
                yield report
            while gz.read(1 << 16):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = _clean(str(e)) or type(e).__name__
        if not where:
            what = "truncated: no report could be read" if isinstance(e, EOFError) else (
                "not a readable gzip tar archive")
            raise InputError(tgz, f"{what}: {reason}") from None
        raise fail(f"damaged or truncated archive: {reason}") from None
    if not seen:
        raise InputError(tgz, "no report XML members in the archive")


def _natural_key(report_id: str) -> tuple[str, int, str]:
    m = re.fullmatch(r"(\D*)(\d+)(.*)", report_id)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (report_id, -1, "")


def read_reports(path: str | Path | None = None) -> list[Report]:
    """All reports of the tarball (the cached IU one by default), in natural id order
    (CXR1, CXR2, ..., CXR10), so that row order does not depend on the archive's order."""
    return sorted(iter_reports(path), key=lambda r: _natural_key(r.id))


# ---------------------------------------------------------------------------------------------
# dataset and export


class ReportsDataset:
    """Map-style dataset over the reports: ``ds[i]`` is ``reports[i].to_dict()``.

    Items carry ``id``, ``report`` (impression then findings) and every field; ``metadata``
    is a row-aligned list of flat dicts for filtering and splitting. There are no images and
    no canonical labels yet: those map from ``Finding.term`` / ``Finding.side`` later.
    """

    def __init__(self, path: str | Path | None = None, reports: list[Report] | None = None):
        self.reports: list[Report] = list(reports) if reports is not None else read_reports(path)
        self.ids: list[str] = [r.id for r in self.reports]
        self.metadata: list[dict[str, Any]] = [_metadata_row(r) for r in self.reports]

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.reports[index].to_dict()


def _metadata_row(r: Report) -> dict[str, Any]:
    return {
        "id": r.id,
        "normal": r.normal,
        "indexed": r.indexed,
        "n_images": len(r.image_ids),
        "n_tags": len(r.mesh_major),
        "has_findings": bool(r.findings),
        "has_impression": bool(r.impression),
        "terms": sorted({f.term for f in r.structured}),
    }


def export_reports(out: str | Path, path: str | Path | None = None) -> int:
    """Write every report as one JSON line (`Report.to_dict`) to ``out``; return the count.

    The whole archive is read before anything is written, and the file is written under a
    temporary name and renamed, so a bad archive or an interrupted run never leaves a
    partial ``out``.
    """
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; give the path of the JSONL file to write")
    reports = read_reports(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in reports:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(reports)
