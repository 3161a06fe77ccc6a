"""Run folders: provenance, final metrics, and the `biomed runs` table.

Every experiment command writes, in its run folder, ``.hydra/`` (the full config; Hydra writes
it, :func:`start_run` adds it when ``run(cfg)`` is called without Hydra), ``provenance.json``
(git commit and dirty flag, package versions, sha256 of the data files used, the command line)
and, when it ends, ``metrics.json`` with ``status`` ``completed`` or ``failed``. A folder with a
provenance but no metrics is a run that is still going or was killed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from biomed import sources
from biomed.errors import InputError

PACKAGES = ("biomed", "torch", "torchvision", "transformers", "diffusers", "accelerate",
            "open_clip_torch", "tokenizers", "safetensors", "pydicom", "hydra-core", "numpy",
            "scipy", "scikit-learn", "Pillow")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.run_dir)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code runs from (None outside a checkout)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        # untracked code or configs change what runs as much as edited ones
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "biomed", "conf", "pyproject.toml"], capture_output=True,
                               text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_digest(p: str | Path) -> dict[str, Any]:
    """sha256 and size of a data file (pinned hashes of cached files are not recomputed)."""
    p = Path(p)
    if not p.exists():
        return {"path": str(p), "missing": True}
    if p.is_dir():
        return {"path": str(p), "dir": True}
    sha = sources.known_sha256(p) or sources.sha256_file(p)
    return {"path": str(p), "sha256": sha, "bytes": p.stat().st_size}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def start_run(cfg: DictConfig, data_files: Iterable[str | Path] = (),
              redact: Callable[[str], str] | None = None) -> Path:
    """Create the run folder and write ``provenance.json`` (and ``.hydra/config.yaml`` if absent).

    ``redact`` rewrites text that may hold de-identified inputs' raw paths (a command whose
    inputs may be patient files: `biomed predict`); it is applied to the recorded command line
    and to the run's ``.hydra/*.yaml``."""
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # a rerun in the same folder (quickstart, resume): the old final numbers no longer describe it
    (run_dir / "metrics.json").unlink(missing_ok=True)
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if not hydra_cfg.exists():
        hydra_cfg.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_cfg)
    if redact is not None:
        for yaml in hydra_cfg.parent.glob("*.yaml"):
            text = yaml.read_text()
            if redact(text) != text:
                yaml.write_text(redact(text))
    write_json(run_dir / "provenance.json", {
        "command": cfg.get("command"),
        "argv": [redact(a) for a in sys.argv] if redact is not None else sys.argv,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "data_files": [file_digest(p) for p in data_files],
    })
    return run_dir


# keys of a `data=` config that name input data, in the order provenance.json lists them; the
# CSV keys are relative to ``root`` unless absolute, as the loaders read them
DATA_FILE_KEYS = ("root", "image_dir", "reports_dir", "csv_file", "csv_files", "reports", "file",
                  "files")
_UNDER_ROOT = ("csv_file", "csv_files")


def data_files(cfg: DictConfig) -> list[str]:
    """The files and folders the run's ``data=`` config reads, for ``provenance.json``.

    One function for every command that reads ``cfg.data`` (train-classifier, train-clip,
    train-diffusion, evaluate-generation), so the same data config records the same files in each
    of them. Unset keys and mandatory values not given (``???``) are left out; a folder is
    recorded as a folder (``file_digest``), a file with its sha256.
    """
    node = cfg.get("data")
    if not node:
        return []
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    root = data.get("root")
    root = Path(root).expanduser() if _given(root) else None
    out: list[str] = []
    for key in DATA_FILE_KEYS:
        values = data.get(key)
        for v in values if isinstance(values, list | tuple) else [values]:
            if not _given(v):
                continue
            p = Path(v).expanduser()
            if key in _UNDER_ROOT and not p.is_absolute():
                if root is None:  # relative to a root not given: names nothing yet
                    continue
                p = root / p
            if str(p) not in out:
                out.append(str(p))
    return out


def _given(value: Any) -> bool:
    return isinstance(value, str | Path) and bool(str(value)) and not str(value).startswith("???")


def add_data_files(run_dir: Path, data_files: Iterable[str | Path]) -> None:
    """Record more data files in an existing ``provenance.json``."""
    prov_path = run_dir / "provenance.json"
    prov = json.loads(prov_path.read_text())
    known = {d["path"] for d in prov["data_files"]}
    prov["data_files"] += [file_digest(p) for p in data_files if str(p) not in known]
    write_json(prov_path, prov)


def finish_run(run_dir: Path, metrics: dict[str, Any], status: str = "completed") -> dict:
    """Write ``metrics.json`` (the run's final numbers and its status)."""
    out = {"status": status, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
           **metrics}
    write_json(run_dir / "metrics.json", out)
    return out


def train_command(cfg: DictConfig, train: Callable[[DictConfig, Path], dict[str, Any]],
                  data_files: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The body of every training command's ``run(cfg)``: ``train(cfg, run_dir)`` inside
    `experiment`, and ``metrics.json`` written by the main process only (under a multi-process
    launch every process trains; one records)."""
    from accelerate import PartialState

    with experiment(cfg, data_files) as run_dir:
        metrics = train(cfg, run_dir)
        if PartialState().is_main_process:
            finish_run(run_dir, metrics)
    return metrics


@contextmanager
def experiment(cfg: DictConfig, data_files: Iterable[str | Path] = (),
               redact: Callable[[str], str] | None = None) -> Iterator[Path]:
    """Wrap the body of a ``run(cfg)``: provenance first, ``metrics.json`` marked failed on error
    (``redact``: as for `start_run`, also applied to the error text)."""
    run_dir = start_run(cfg, data_files, redact)
    try:
        yield run_dir
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        finish_run(run_dir, {"error": redact(error) if redact is not None else error},
                   status="failed")
        raise


# ---------------------------------------------------------------------------------------------
# `biomed runs`


def find_runs(outputs: str | Path = "outputs") -> list[dict[str, Any]]:
    """Every run folder under ``outputs`` (one holding provenance.json), newest first."""
    if not Path(outputs).is_dir():
        raise InputError(outputs, "no such folder of runs")
    rows = []
    for prov_path in Path(outputs).glob("**/provenance.json"):
        run_dir = prov_path.parent
        try:
            prov = json.loads(prov_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(prov, dict):
            continue
        metrics_path = run_dir / "metrics.json"
        metrics: dict[str, Any] = {}
        if metrics_path.exists():
            try:
                metrics = json.loads(metrics_path.read_text())
            except json.JSONDecodeError:
                metrics = {"status": "unreadable metrics.json"}
        if not isinstance(metrics, dict) or \
                str(metrics.get("finished", "")) < str(prov.get("started", "")):
            metrics = {}  # stale numbers of an earlier run in the same folder
        status = metrics.get("status") or "running or killed"
        rows.append({"run_dir": str(run_dir), "command": prov.get("command") or "?",
                     "started": prov.get("started", ""), "status": status,
                     "metrics": _key_metrics(metrics)})
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def _key_metrics(metrics: dict[str, Any], limit: int = 4) -> dict[str, Any]:
    keys = metrics.get("key_metrics") or [k for k, v in metrics.items()
                                          if isinstance(v, int | float) and not isinstance(v, bool)]
    return {k: metrics[k] for k in keys[:limit] if k in metrics}


def format_runs(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs found"
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"{'started':<19}  {'command':<18} {'status':<17} metrics  run folder"]
    for r in rows:
        m = " ".join(f"{k}={fmt(v)}" for k, v in r["metrics"].items()) or "-"
        lines.append(f"{r['started']:<19}  {r['command']:<18} {r['status']:<17} {m}  "
                     f"{r['run_dir']}")
    return "\n".join(lines)
