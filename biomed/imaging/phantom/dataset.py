"""``data=phantom_iu``: phantom chest radiographs paired with real IU report text.

No package pairs a real chest X-ray with its report, so the workbench's default image data is a
phantom rendered from the findings of a real report (`biomed.imaging.reports.findings`), paired
with that report's text (impression first, then findings: ``Report.text``). Scarce findings get
templated reports as well (`biomed.imaging.reports.templates`), flagged ``source="template"``.
Ground truth is exact: the labels are those of the findings the renderer actually drew.

- Every included report is rendered ``renders_per_report`` times (another anatomy, pose and
  noise per render seed); each templated report once. Row ids are ``<report_id>#<render>``.
- Splits are 80/10/10 by `biomed.splits.assign_split` of the report id (templated reports
  ``TPL-<finding>-<n>`` too), so all renders of one report share a split.
- Everything is rendered once, for all splits, into a memory-mapped cache:
  ``<cache_dir>/<fingerprint>/images.npy`` (uint16 N x H x W, ``round(x * 65535)``),
  ``meta.jsonl`` (one row per image), ``meta.json`` (settings and counts) and a ``DONE``
  marker. The fingerprint hashes the reports file, the settings that change the images and the
  versions of the renderer, the tag mapping and the templates. A build writes into a temporary
  folder renamed at the end, so an interrupted build never leaves a cache that looks complete,
  and the three splits (and every later run) read the same cache.

`PhantomIU` is a dataset of the contract (`biomed.imaging.data.contract.XrayDataset`): items
have ``image`` (float32 H x W in [0, 1]), ``labels`` (``CANONICAL_NAMES`` order, 1/0),
``report``, ``id``, ``report_id``, ``index``, ``source``; ``reports()``, ``subset`` and
``with_split`` come from the base class. The report text is CC BY-NC-ND 4.0 (IU / OpenI);
images are phantoms.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.core import pixels
from biomed.imaging.core.findings import PhantomFinding, labels_of, parse_findings
from biomed.imaging.core.labels import CANONICAL_NAMES
from biomed.imaging.data.contract import Table, XrayDataset
from biomed.imaging.reports.findings import MAPPING_VERSION, classify_reports, positives
from biomed.imaging.reports.iu import Report, read_reports
from biomed.imaging.reports.templates import TEMPLATE_VERSION, check_extra, template_cases
from biomed.locks import file_lock
from biomed.splits import DEFAULT_FRACTIONS, SPLITS, assign_split

__all__ = ["FORMAT", "PhantomIU", "Renderer", "default_renderer", "renderer_version"]

log = logging.getLogger(__name__)

FORMAT = "biomed-phantom-iu-v1"
DEFAULT_RENDERER = "biomed.imaging.phantom.render:render_with_info"

#: ``renderer(findings, seed=, size=) -> (image float32 H x W in [0, 1], info)`` with
#: ``info["findings"]`` the findings as drawn (sides and zones resolved) and
#: ``info["attributes"]`` a JSON-ready dict (anatomy, exposure...).
Renderer = Callable[..., tuple[np.ndarray, dict[str, Any]]]


def _load(spec: str) -> Renderer:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "render_with_info")
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"renderer {spec!r} cannot be imported ({e})") from None


def default_renderer() -> Renderer:
    """The phantom renderer (imported lazily: the dataset mechanics do not need it)."""
    return _load(DEFAULT_RENDERER)


def renderer_version(renderer: Renderer) -> str:
    """Part of the cache key, so that a renderer that draws differently renders a new cache:
    its name and ``RENDERER_VERSION`` (on the function or its module); else the module's
    ``renderer_fingerprint()`` (the phantom's: the source of every renderer module and the lung
    shapes it draws on, real masks or the parametric fallback); else a hash of its module's
    source (any edit of that file then renders the set again)."""
    module = inspect.getmodule(renderer)
    name = f"{getattr(module, '__name__', '?')}.{getattr(renderer, '__qualname__', '?')}"
    version = getattr(renderer, "RENDERER_VERSION", None) or getattr(
        module, "RENDERER_VERSION", None)
    if version:
        return f"{name}@{version}"
    fingerprint = getattr(module, "renderer_fingerprint", None)
    if callable(fingerprint):
        return f"{name}@{fingerprint()}"
    source = getattr(module, "__file__", None)
    if source and Path(source).is_file():
        return f"{name}@src-{hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]}"
    return name


@dataclass(frozen=True)
class _Case:
    """One report to render: a real one or a templated one."""

    report_id: str
    source: str  # "iu" | "template"
    text: str
    findings: tuple[PhantomFinding, ...]
    renders: int


def _render_seed(seed: int, report_id: str, render: int) -> int:
    digest = hashlib.sha256(f"{seed}|{report_id}|{render}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _sha256(path: Path) -> str:
    from biomed import sources

    return sources.known_sha256(path) or sources.sha256_file(path)


_WORKER_RENDER: Renderer | None = None  # the renderer of forked worker processes


def _render_job(job: tuple[list, int, int]) -> tuple[np.ndarray, dict]:
    findings, seed, size = job
    img, info = _WORKER_RENDER(findings, seed=seed, size=size)
    return np.asarray(img), info


@contextmanager
def _rendered(render: Renderer, jobs: list[tuple[list, int, int]], workers: int):
    """The renderer's outputs for ``jobs``, in order: in this process, or in ``workers`` forked
    processes (the renderer is single-threaded numpy: one process per core is what makes the
    2-core CPU render at twice the rate). Forking passes the renderer without pickling it."""
    global _WORKER_RENDER
    if workers <= 1 or len(jobs) < 64 or "fork" not in mp.get_all_start_methods():
        yield (render(f, seed=seed, size=size) for f, seed, size in jobs)
        return
    _WORKER_RENDER = render
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        try:
            yield pool.map(_render_job, jobs, chunksize=32)
        finally:
            _WORKER_RENDER = None


class PhantomIU(XrayDataset):
    """Phantom radiographs rendered from the IU reports' findings, paired with their text.

    Args:
        reports: the IU tarball (default: the cached one), or a list of `Report` (tests).
        size: image side in pixels.
        renders_per_report: phantoms per included IU report (other anatomy and seed each).
        templates_per_finding: templated reports per phantom finding (0: none).
        extra_templates: more templated reports on top, per finding or finding/side
            (``{"effusion/left": 400}``; `report_templates.template_cases`).
        extra_co_finding: the chance that an extra templated report also states a second
            common finding (None: 0.3, as the base templates).
        split: ``train`` / ``val`` / ``test`` or None (every row).
        fractions: train/val/test fractions of the report-id hash split.
        seed: the render seeds and the templates derive from it.
        cache_dir: where the rendered set is kept (None: render in memory, nothing kept).
        max_reports: use only the first N included IU reports (smoke runs, tests).
        renderer: ``(findings, seed=, size=) -> (image, info)``, or ``"module:function"``;
            None: `biomed.imaging.phantom.render.render_with_info`.
        progress: show a progress bar while rendering.
        transform: applied to each item's image.
        prompt_policy: what provenance of images generated from these reports records of each
            prompt: ``"text"`` (the IU reports are public text, CC BY-NC-ND 4.0) or ``"hash"``.
    """

    name = "phantom_iu"
    item_columns = ("report_id", "source")
    _row_attrs = ("labels", "_slots")

    def __init__(self, reports: str | Path | Sequence[Report] | None = None, *,
                 size: int = 128, renders_per_report: int = 3, templates_per_finding: int = 40,
                 extra_templates: Mapping[str, int] | None = None,
                 extra_co_finding: float | None = None, split: str | None = None,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 seed: int = 0, cache_dir: str | Path | None = None,
                 max_reports: int | None = None, renderer: Renderer | str | None = None,
                 progress: bool = True, transform: Callable | None = None,
                 name: str | None = None, workers: int | None = None,
                 prompt_policy: str = "text") -> None:
        from biomed.imaging.dicom.write import check_prompt_policy

        self.prompt_policy = check_prompt_policy(prompt_policy)
        if name:
            self.name = name
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{self.name}: split={split!r}: choose one of "
                              f"{', '.join(SPLITS)} or null")
        if int(size) < 8 or int(renders_per_report) < 1 or int(templates_per_finding) < 0:
            raise ConfigError(f"{self.name}: size >= 8, renders_per_report >= 1 and "
                              "templates_per_finding >= 0 are required")
        self.fractions = tuple(float(f) for f in fractions)
        try:
            assign_split("check", self.fractions)
        except ValueError as e:
            raise ConfigError(f"{self.name}: {e}") from None
        self.size = (int(size), int(size))
        self.renders_per_report = int(renders_per_report)
        self.templates_per_finding = int(templates_per_finding)
        self.extra_templates = {str(k): int(v) for k, v in (extra_templates or {}).items()}
        self.extra_co_finding = None if extra_co_finding is None else float(extra_co_finding)
        try:  # a bad key, count or probability fails here, before any rendering
            check_extra(self.extra_templates, self.extra_co_finding)
        except ValueError as e:
            raise ConfigError(f"{self.name}: {e}") from None
        self.seed = int(seed)
        self.max_reports = None if max_reports is None else int(max_reports)
        self.progress = progress
        # render processes (the renderer is single-threaded): every core by default
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self._renderer = renderer
        self.renders = 0  # images rendered by this instance (0 when the cache was reused)
        self.cache_path: Path | None = None  # the cache folder read, when cache_dir is set

        source_key, report_list = self._reports(reports)
        self.fingerprint = self._fingerprint(source_key)
        images, rows, stats = self._build(report_list, cache_dir)
        self._images: np.ndarray | None = images
        metadata = Table({
            "id": [r["id"] for r in rows],
            "report_id": [r["report_id"] for r in rows],
            "patient_id": [r["report_id"] for r in rows],
            "split": [assign_split(r["report_id"], self.fractions) for r in rows],
            "source": [r["source"] for r in rows],
            "render_seed": [r["render_seed"] for r in rows],
            "findings": [json.dumps(r["findings"]) for r in rows],
            "attributes": [json.dumps(r["attributes"]) for r in rows],
            "report": [r["report"] for r in rows],
        })
        labels = np.stack([labels_of(parse_findings(r["findings"])) for r in rows]) \
            if rows else np.zeros((0, len(CANONICAL_NAMES)), np.float32)
        super().__init__(metadata, labels, CANONICAL_NAMES, split=split, transform=transform)
        self._slots = np.arange(len(rows), dtype=np.int64)
        self.stats = {**stats, "positives": self._positives_per_split()}
        if split is not None:
            self._take([i for i, s in enumerate(self.metadata["split"]) if s == split])

    # -- reports and the cache key ------------------------------------------------------------

    def _reports(self, reports: str | Path | Sequence[Report] | None
                 ) -> tuple[str, Callable[[], list[Report]]]:
        """(a content hash of the reports, a loader that reads them only when rendering)."""
        if reports is None or isinstance(reports, str | Path):
            from biomed.imaging.reports.iu import default_path

            path = Path(reports).expanduser() if reports is not None else default_path()
            if not path.is_file():
                from biomed.errors import InputError

                raise InputError(path, "IU reports not found (run `biomed data fetch "
                                       "iu_reports`)")
            return _sha256(path), lambda: read_reports(path)
        listed = list(reports)
        blob = json.dumps([r.to_dict() for r in listed], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest(), lambda: listed

    def _resolve_renderer(self) -> Renderer:
        r = self._renderer
        if r is None:
            return default_renderer()
        return _load(r) if isinstance(r, str) else r

    def _fingerprint(self, reports_sha: str) -> str:
        key = {"format": FORMAT, "reports": reports_sha, "size": list(self.size),
               "renders_per_report": self.renders_per_report,
               "templates_per_finding": self.templates_per_finding, "seed": self.seed,
               "max_reports": self.max_reports, "mapping": MAPPING_VERSION,
               "templates": TEMPLATE_VERSION,
               "renderer": renderer_version(self._resolve_renderer())}
        if self.extra_templates:  # only when set: earlier caches keep their fingerprints
            key["extra_templates"] = self.extra_templates
        if self.extra_co_finding is not None:
            key["extra_co_finding"] = self.extra_co_finding
        self._key = key
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    # -- what to render -----------------------------------------------------------------------

    def _plan(self, reports: list[Report]) -> tuple[list[_Case], dict[str, Any]]:
        included, counts = classify_reports(reports)
        used = included if self.max_reports is None else included[: self.max_reports]
        cases = [_Case(r.id, "iu", r.text, tuple(fs), self.renders_per_report)
                 for r, fs in used]
        templates = template_cases(self.templates_per_finding, self.seed,
                                   extra=self.extra_templates,
                                   extra_co_finding=self.extra_co_finding)
        cases += [_Case(t.id, "template", t.text, t.findings, 1) for t in templates]
        stats = {
            "reports": {"total": counts["#reports"], "included": counts["#included"],
                        "used": len(used), "excluded": counts["#excluded"],
                        "excluded_by": {k: v for k, v in counts.items()
                                        if not k.startswith("#")}},
            "report_positives": positives(fs for _, fs in used),
            "renders": len(used) * self.renders_per_report,
            "templates": len(templates),
        }
        return cases, stats

    # -- building -----------------------------------------------------------------------------

    def _build(self, reports: Callable[[], list[Report]], cache_dir: str | Path | None
               ) -> tuple[np.ndarray, list[dict], dict]:
        if cache_dir is None:
            cases, stats = self._plan(reports())
            n = sum(c.renders for c in cases)
            images = np.zeros((n, *self.size), np.uint16)
            rows = self._render(cases, images)
            return images, rows, {**stats, "rows": len(rows)}
        root = Path(cache_dir).expanduser()
        final = root / self.fingerprint
        with _lock(root, self.fingerprint):
            if not (final / "DONE").is_file():
                if final.exists():  # not ours to trust: no DONE marker
                    shutil.rmtree(final)
                self._build_into(reports, root, final)
            return self._open(final)

    def _build_into(self, reports: Callable[[], list[Report]], root: Path, final: Path) -> None:
        """Render into a temporary folder and rename it: all or nothing."""
        cases, stats = self._plan(reports())
        n = sum(c.renders for c in cases)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.fingerprint}-", dir=root))
        try:
            images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint16,
                                               shape=(n, *self.size))
            rows = self._render(cases, images)
            images.flush()
            del images
            with open(tmp / "meta.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            meta = {"format": FORMAT, "fingerprint": self.fingerprint, "key": self._key,
                    "rows": len(rows), "size": list(self.size),
                    "label_names": list(CANONICAL_NAMES), "stats": {**stats, "rows": len(rows)}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            (tmp / "DONE").write_text("complete\n", encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the data
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _open(self, folder: Path) -> tuple[np.ndarray, list[dict], dict]:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        with open(folder / "meta.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        images = np.load(folder / "images.npy", mmap_mode="r")
        if len(rows) != meta["rows"] or images.shape != (meta["rows"], *self.size):
            raise ConfigError(f"{folder}: cache does not match its meta.json; remove the folder")
        self.cache_path = folder
        return images, rows, meta["stats"]

    def _render(self, cases: list[_Case], images: np.ndarray) -> list[dict]:
        """Render every case into ``images`` (uint16 rows, in order); one metadata row each."""
        from tqdm.auto import tqdm

        render = self._resolve_renderer()
        rows = []
        jobs = [(case, k, _render_seed(self.seed, case.report_id, k))
                for case in cases for k in range(case.renders)]
        with tqdm(total=len(images), desc=f"{self.name}: rendering {self.size[0]} px",
                  unit="img", disable=not self.progress, mininterval=1.0) as bar, \
                _rendered(render, [(list(c.findings), seed, self.size[0]) for c, _, seed in jobs],
                          self.workers) as results:
            for (case, k, seed), (img, info) in zip(jobs, results, strict=True):
                img = pixels.check_image(np.asarray(img), f"renderer output for "
                                                           f"{case.report_id}#{k}")
                if img.shape != self.size:
                    raise ConfigError(f"renderer returned {img.shape} for size {self.size}")
                images[len(rows)] = pixels.to_uint16(img)
                drawn = parse_findings(info.get("findings", case.findings))
                rows.append({"id": f"{case.report_id}#{k}", "report_id": case.report_id,
                             "source": case.source, "render_seed": seed,
                             "findings": [f.to_dict() for f in drawn],
                             "attributes": info.get("attributes", {}),
                             "report": case.text})
                self.renders += 1
                bar.update(1)
        return rows

    # -- images ---------------------------------------------------------------------------------

    def image(self, index: int) -> np.ndarray:
        """The phantom of a row in the workbench convention (float32 H x W in [0, 1])."""
        if self._images is None:  # unpickled in a DataLoader worker: map the cache again
            self._images = np.load(self.cache_path / "images.npy", mmap_mode="r")
        return self._images[int(self._slots[index])].astype(np.float32) / np.float32(65535.0)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (DataLoader workers under spawn) without the memory map or the renderer: a
        worker maps the cache file itself instead of receiving a copy of every image."""
        state = self.__dict__.copy()
        state["_renderer"] = None
        if self.cache_path is not None:
            state["_images"] = None
        return state

    def findings(self, index: int) -> list[PhantomFinding]:
        """The findings drawn in a row's image."""
        return parse_findings(json.loads(self.metadata["findings"][index]))

    def _positives_per_split(self) -> dict[str, dict[str, dict[str, int]]]:
        """Positive rows per label, per split and source, over the whole build."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        split, source = np.array(self.metadata["split"]), np.array(self.metadata["source"])
        for s in SPLITS:
            out[s] = {}
            for src in ("iu", "template"):
                rows = (split == s) & (source == src)
                sums = self.labels[rows].sum(axis=0) if rows.any() else np.zeros(len(
                    self.label_names))
                out[s][src] = {n: int(v) for n, v in zip(self.label_names, sums, strict=True)}
        return out

    def __repr__(self) -> str:
        return (f"PhantomIU(n={len(self)}, split={self.split!r}, size={self.size[0]}, "
                f"renders_per_report={self.renders_per_report}, "
                f"templates_per_finding={self.templates_per_finding}"
                + (f", extra_templates={self.extra_templates}" if self.extra_templates else "")
                + (f", extra_co_finding={self.extra_co_finding}"
                   if self.extra_co_finding is not None else "")
                + ")")


def _lock(root: Path, fingerprint: str):
    """Held while checking and building one cache, so that the processes of a multi-GPU launch
    wait for the first one instead of rendering the same set in parallel."""
    return file_lock(root / f".{fingerprint}.lock")
