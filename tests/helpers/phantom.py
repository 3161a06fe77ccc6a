"""A tiny phantom set for tests: `PhantomIU` over made-up IU reports with a cheap seeded fake
renderer (`fake_render`, which counts its calls in `CALLS`), and those reports packed like
NLMCXR_reports.tgz for ``data=phantom_iu``.

`build` takes any of `PhantomIU`'s keyword arguments (``renderer=`` a real renderer, ``size=``).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from biomed.imaging.core.findings import PhantomFinding
from biomed.imaging.phantom.dataset import PhantomIU
from biomed.imaging.reports.iu import Report

FAKE_RENDERER = "tests.helpers.phantom:fake_render"

CALLS = {"n": 0}
TAGS = [["normal"], ["Pleural Effusion"], ["Pneumothorax/right/small"], ["Cardiomegaly/mild"],
        ["Fractures, Bone/ribs"], ["No Indexing"], ["Nodule/lung/upper lobe/left"],
        ["Opacity/lung/base/left", "Thoracic Vertebrae/degenerative"]]


def fake_render(findings, seed, size):
    """A stand-in renderer: noise from the seed; resolves a missing side to ``left`` the way the
    real renderer picks one, so the labels must come from the returned findings."""
    CALLS["n"] += 1
    rng = np.random.default_rng(seed)
    img = rng.random((size, size), dtype=np.float32)
    drawn = [PhantomFinding(f.name, f.side or ("left" if f.lateral else None), f.severity,
                            f.zone, f.device) for f in findings]
    return img, {"findings": drawn, "attributes": {"seed": seed, "n": len(findings)}}


fake_render.RENDERER_VERSION = "fake-1"


def make_reports(n: int = 40) -> list[Report]:
    """``n`` IU reports cycling through `TAGS` (MeSH majors), ids CXR1..CXRn."""
    return [Report(id=f"CXR{i + 1}", impression=f"Impression {i + 1}.",
                   findings=f"Findings {i + 1}.", mesh_major=list(TAGS[i % len(TAGS)]))
            for i in range(n)]


def build(tmp_path: Path, reports: list[Report] | None = None, **kw) -> PhantomIU:
    """A 16 px `PhantomIU` over `make_reports()` (2 renders per report, `fake_render`, one
    worker, cached in ``tmp_path/cache``); ``kw`` overrides any of `PhantomIU`'s arguments."""
    args = {"size": 16, "renders_per_report": 2, "templates_per_finding": 1, "seed": 0,
            "cache_dir": tmp_path / "cache", "renderer": fake_render, "progress": False,
            "workers": 1}
    args.update(kw)
    return PhantomIU(make_reports() if reports is None else reports, **args)


def _xml(r: Report) -> bytes:
    majors = "".join(f"<major>{escape(t)}</major>" for t in r.mesh_major)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{r.id}"/>'
            f'<MedlineCitation><Article><Abstract>'
            f'<AbstractText Label="FINDINGS">{escape(r.findings)}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{escape(r.impression)}</AbstractText>'
            f"</Abstract></Article></MedlineCitation><MeSH>{majors}</MeSH></eCitation>"
            ).encode()


def make_tgz(path: Path, reports: list[Report]) -> Path:
    """``reports`` written as IU XML files packed like NLMCXR_reports.tgz."""
    with tarfile.open(path, "w:gz") as tar:
        for r in reports:
            data = _xml(r)
            info = tarfile.TarInfo(f"ecgen-radiology/{r.id[3:]}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
