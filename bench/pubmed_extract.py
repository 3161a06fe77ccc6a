"""Throughput of `biomed pubmed extract` against two baselines on the same real files.

- floor: gunzip + ``iterparse`` + ``clear()`` and nothing else, the least any streaming
  ElementTree extractor pays; the ratio says how much the extraction itself adds.
- naive: ``ElementTree.parse`` of each whole file, then the same field extraction over the tree
  (what a first script does); memory grows with the file, not with the record.

Each method runs in its own process so its peak memory (max RSS) is its own.

    python bench/pubmed_extract.py [FILE ...]   (default: the two cached PubMed files)
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET


def floor(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with gzip.open(p) if p.endswith(".gz") else open(p, "rb") as f:
            for _, el in ET.iterparse(f):
                if el.tag in ("PubmedArticle", "DeleteCitation"):
                    n += el.tag == "PubmedArticle"
                    el.clear()
    return n


def naive(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with gzip.open(p) if p.endswith(".gz") else open(p, "rb") as f:
            root = ET.parse(f).getroot()
        for art in root.iter("PubmedArticle"):
            cit = art.find("MedlineCitation")
            texts = ["".join(t.itertext()) for t in cit.iterfind("Article/Abstract/AbstractText")]
            _ = (cit.findtext("PMID"), "".join(cit.find("Article/ArticleTitle").itertext()),
                 "\n".join(texts), [d.text for d in cit.iterfind(".//DescriptorName")])
            n += 1
    return n


def workbench(paths: list[str]) -> int:
    from biomed.lm.corpus import extract

    with tempfile.TemporaryDirectory() as d:
        return extract(paths, os.path.join(d, "c.jsonl"), log=lambda *_: None).read


def child(method: str, paths: list[str]) -> None:
    t0 = time.perf_counter()
    n = {"floor": floor, "naive": naive, "workbench": workbench}[method](paths)
    dt = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "records": n, "seconds": dt, "max_rss_mb": rss_mb}))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    paths = sys.argv[1:]
    if not paths:
        from biomed import sources

        paths = [str(sources.path("pubmed", n)) for n in
                 ("pubmed20n0014.xml.gz", "pubmed21n1298.xml.gz")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; files: {', '.join(os.path.basename(p) for p in paths)}")
    res = {}
    for method in ("floor", "naive", "workbench"):
        out = subprocess.run([sys.executable, __file__, "--child", method, *paths],
                             capture_output=True, text=True, check=True).stdout
        res[method] = json.loads(out.strip().splitlines()[-1])
    wb = res["workbench"]
    for method, r in res.items():
        print(f"{method:<10} {r['records'] / r['seconds']:8.0f} records/s  {r['seconds']:6.1f} s  "
              f"max RSS {r['max_rss_mb']:6.0f} MB")
    print(f"ratio workbench/naive records/s: "
          f"{(wb['records'] / wb['seconds']) / (res['naive']['records'] / res['naive']['seconds']):.2f}"
          f"   workbench/floor: "
          f"{(wb['records'] / wb['seconds']) / (res['floor']['records'] / res['floor']['seconds']):.2f}")


if __name__ == "__main__":
    main()
