"""`biomed augment-report SWEEP_DIR`: the numbers of a sweep from its cells' folders, wherever
they ran: ``results.csv``, ``metrics.json`` (the summary) and ``report.html``.

- ``results.csv``: one row per cell, finding and subgroup (pandas-readable): AUROC and AP on the
  test split, plus the rows ``macro_clear`` (the primary endpoint: macro AUROC over the clear
  findings) and ``macro_all``.
- Gains: each arm (fraction, source, mode, ratio, shuffled labels) against the ratio-0 cell of
  the same fraction and seed, over the seeds both finished: the mean paired difference and a
  95% percentile CI from the bootstrap that resamples test reports and seeds
  (`biomed.stats.paired_gain`). Per-finding gains are exploratory, with unadjusted intervals.
- The real-data curve (ratio-0 cells by fraction, `biomed.stats.seed_mean`) and what each arm is
  "worth in real data": the fraction at which the curve reaches the arm's mean AUROC (linear in
  log fraction between measured fractions).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from biomed import runs
from biomed.errors import InputError
from biomed.imaging.classifier.evaluate import CLEAR_FINDINGS
from biomed.stats import macro, paired_gain, seed_mean, weighted_auroc, weighted_average_precision

__all__ = ["build_report", "collect_samples", "main"]

CORRECTION = ("none: per-finding intervals are unadjusted 95% intervals over many findings, "
              "so some exclude zero by chance; they are exploratory. The primary endpoint is "
              "the macro AUROC over the clear findings.")
CSV_COLUMNS = ("cell", "fraction", "ratio", "mode", "source", "shuffled_labels", "seed", "steps",
               "n_real", "n_synthetic", "subgroup", "finding", "auroc", "ap", "n_pos", "n")
PHANTOM_NOTE = ("Phantom data: every image here, real or synthetic, is a rendered phantom, not a "
                "patient. On phantom data the oracle draws from the test distribution itself: "
                "its gain is what more perfectly labelled data of the right kind adds, a "
                "reference point, not a proof of a ceiling.")


# ---------------------------------------------------------------------------------------------
# reading the cells


def _cells(sweep_dir: Path) -> list[dict[str, Any]]:
    out = []
    for done in sorted((sweep_dir / "cells").glob("*/DONE")):
        folder = done.parent
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
            with np.load(folder / "predictions.npz") as z:
                pred = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            print(f"augment-report: {folder}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        out.append({"folder": folder, "cell": metrics["cell"], "metrics": metrics, "pred": pred})
    return out


def _arm(cell: dict[str, Any]) -> tuple:
    return (float(cell["fraction"]), str(cell["source"]), str(cell["mode"]),
            float(cell["ratio"]), bool(cell.get("shuffled_labels", False)))


def _f(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# results.csv


def _rows(cells: list[dict[str, Any]], names: list[str], clear: list[int]) -> list[dict]:
    rows = []
    for c in cells:
        cell, m, p = c["cell"], c["metrics"], c["pred"]
        y, probs = p["labels"], p["probs"]
        groups = {"all": np.ones(len(y), bool)}
        for key in (k for k in p if k.startswith("subgroup_")):
            for value in sorted(set(p[key].tolist())):
                groups[f"{key[len('subgroup_'):]}={value}"] = p[key] == value
        base = {"cell": cell["name"], "fraction": cell["fraction"], "ratio": cell["ratio"],
                "mode": cell["mode"], "source": cell["source"],
                "shuffled_labels": cell.get("shuffled_labels", False), "seed": cell["seed"],
                "steps": m.get("steps"), "n_real": m.get("n_real"),
                "n_synthetic": m.get("n_synthetic")}
        for group, rows_in in groups.items():
            yy, pp = y[rows_in], probs[rows_in]
            for j, name in enumerate(names):
                rows.append({**base, "subgroup": group, "finding": name,
                             "auroc": _f(weighted_auroc(yy[:, j], pp[:, j])),
                             "ap": _f(weighted_average_precision(yy[:, j], pp[:, j])),
                             "n_pos": int(np.sum(yy[:, j] == 1)),
                             "n": int(np.sum(~np.isnan(yy[:, j])))})
            for endpoint, cols in (("macro_clear", clear), ("macro_all", list(range(len(names))))):
                rows.append({**base, "subgroup": group, "finding": endpoint,
                             "auroc": _f(macro(weighted_auroc, yy, pp, columns=cols)),
                             "ap": _f(macro(weighted_average_precision, yy, pp, columns=cols)),
                             "n_pos": None, "n": int(len(yy))})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_COLUMNS})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# gains, the real-data curve, worth


def _gains(cells, names, clear, n_boot: int) -> list[dict]:
    by_key = {(_arm(c["cell"]), int(c["cell"]["seed"])): c for c in cells}
    arms = sorted({_arm(c["cell"]) for c in cells if float(c["cell"]["ratio"]) > 0})
    gains: list[dict] = []
    for arm in arms:
        fraction = arm[0]
        base_arm = (fraction, "none", "real", 0.0, False)
        seeds = sorted(s for (a, s) in by_key if a == arm and (base_arm, s) in by_key)
        if not seeds:
            continue
        first = by_key[(arm, seeds[0])]["pred"]
        y, clusters = first["labels"], first["clusters"]
        new = np.stack([by_key[(arm, s)]["pred"]["probs"] for s in seeds])
        base = np.stack([by_key[(base_arm, s)]["pred"]["probs"] for s in seeds])
        head = {"fraction": fraction, "source": arm[1], "mode": arm[2], "ratio": arm[3],
                "shuffled_labels": arm[4], "n_seeds": len(seeds), "subgroup": "all"}
        endpoints = [("macro_clear", clear, weighted_auroc, "auroc", False),
                     ("macro_all", list(range(len(names))), weighted_auroc, "auroc", False)]
        endpoints += [(n, [j], weighted_auroc, "auroc", True) for j, n in enumerate(names)]
        endpoints += [(n, [j], weighted_average_precision, "ap", True)
                      for j, n in enumerate(names)]
        for endpoint, cols, metric, metric_name, exploratory in endpoints:
            est = paired_gain(y, new, base, clusters, metric=metric, columns=cols, n=n_boot,
                              seed=0)
            values = np.array([macro(metric, y, b, columns=cols) for b in base])
            baseline = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() \
                else float("nan")
            gains.append({**head, "endpoint": endpoint, "metric": metric_name,
                          "value": _f(est.value), "ci_low": _f(est.low),
                          "ci_high": _f(est.high), "baseline": _f(baseline),
                          "exploratory": exploratory})
        for key in (k for k in first if k.startswith("subgroup_")):
            for value in sorted(set(first[key].tolist())):
                rows = first[key] == value
                est = paired_gain(y[rows], new[:, rows], base[:, rows], clusters[rows],
                                  metric=weighted_auroc, columns=clear, n=n_boot, seed=0)
                gains.append({**head, "subgroup": f"{key[len('subgroup_'):]}={value}",
                              "endpoint": "macro_clear", "metric": "auroc",
                              "value": _f(est.value), "ci_low": _f(est.low),
                              "ci_high": _f(est.high), "baseline": None, "exploratory": True})
    return gains


def _real_curve(cells, names, clear, n_boot: int) -> list[dict]:
    out = []
    fractions = sorted({float(c["cell"]["fraction"]) for c in cells
                        if float(c["cell"]["ratio"]) == 0})
    for f in fractions:
        group = [c for c in cells if float(c["cell"]["ratio"]) == 0
                 and float(c["cell"]["fraction"]) == f]
        y, clusters = group[0]["pred"]["labels"], group[0]["pred"]["clusters"]
        preds = np.stack([c["pred"]["probs"] for c in group])
        for endpoint, cols in (("macro_clear", clear), ("macro_all", list(range(len(names))))):
            est = seed_mean(y, preds, clusters, metric=weighted_auroc, columns=cols, n=n_boot,
                            seed=0)
            out.append({"fraction": f, "endpoint": endpoint, "metric": "auroc",
                        "value": _f(est.value), "ci_low": _f(est.low), "ci_high": _f(est.high),
                        "n_seeds": len(group)})
    return out


def _worth(gains: list[dict], curve: list[dict]) -> list[dict]:
    """Where on the real-data curve each arm's mean macro_clear AUROC falls."""
    pts = sorted((r["fraction"], r["value"]) for r in curve
                 if r["endpoint"] == "macro_clear" and r["value"] is not None)
    out = []
    for g in gains:
        if g["endpoint"] != "macro_clear" or g["subgroup"] != "all" or g["value"] is None \
                or g["baseline"] is None or len(pts) < 2:
            continue
        target = g["baseline"] + g["value"]
        eq = _interpolate(pts, target)
        arm = f"{g['source']} {g['mode']} x{g['ratio']:g}" + (" (shuffled labels)"
                                                             if g["shuffled_labels"] else "")
        if eq is None:
            text = (f"{arm} at real fraction {g['fraction']:g}: AUROC {target:.3f} is above "
                    f"every measured real fraction (up to {pts[-1][0]:g}: {pts[-1][1]:.3f})"
                    if target > max(v for _, v in pts) else
                    f"{arm} at real fraction {g['fraction']:g}: AUROC {target:.3f} is below "
                    f"every measured real fraction (from {pts[0][0]:g}: {pts[0][1]:.3f})")
        else:
            text = (f"{arm} at real fraction {g['fraction']:g} reaches AUROC {target:.3f}, "
                    f"what about {eq:.3g} of the real pool gives (interpolated)")
        out.append({"fraction": g["fraction"], "source": g["source"], "mode": g["mode"],
                    "ratio": g["ratio"], "shuffled_labels": g["shuffled_labels"],
                    "endpoint": "macro_clear", "equivalent_fraction": eq, "text": text})
    return out


def _interpolate(pts: list[tuple[float, float]], target: float) -> float | None:
    """The fraction where the piecewise-linear (in log fraction) curve first reaches target."""
    for (f0, v0), (f1, v1) in zip(pts, pts[1:], strict=False):
        lo, hi = min(v0, v1), max(v0, v1)
        if lo <= target <= hi and v1 != v0:
            t = (target - v0) / (v1 - v0)
            return float(np.exp(np.log(f0) + t * (np.log(f1) - np.log(f0))))
    return None


def _not_improved(gains: list[dict]) -> list[str]:
    out = []
    for g in gains:
        if g["subgroup"] != "all" or g["value"] is None:
            continue
        arm = (f"{g['source']} {g['mode']} x{g['ratio']:g} at real fraction {g['fraction']:g}"
               + (" with shuffled labels" if g["shuffled_labels"] else ""))
        ci = "n/a" if g["ci_low"] is None else f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
        if g["endpoint"] == "macro_clear" and (g["ci_low"] is None or g["ci_low"] <= 0):
            out.append(f"{arm}: macro AUROC (clear findings) gain {g['value']:+.3f} {ci}")
    for g in gains:
        if g["exploratory"] and g["metric"] == "auroc" and g["subgroup"] == "all" \
                and g["value"] is not None and g["value"] <= 0 and not g["shuffled_labels"] \
                and g["source"] not in ("duplicates",):
            out.append(f"{g['source']} {g['mode']} x{g['ratio']:g} at real fraction "
                       f"{g['fraction']:g}: {g['endpoint']} AUROC gain {g['value']:+.3f} "
                       f"(exploratory)")
    return out


# ---------------------------------------------------------------------------------------------
# samples for the report's grids


def collect_samples(sweep, k: int = 4) -> dict[str, dict[str, np.ndarray]]:
    """Up to ``k`` real test images and ``k`` synthetic images per source for each clear
    finding (positives by label; the synthetic ones by their prompt's label)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    test = sweep.data.test
    sets = {}
    for name in dict.fromkeys(c.source for c in sweep.cells
                              if c.ratio > 0 and c.source not in ("none", "duplicates")):
        cells = [c for c in sweep.cells if c.source == name and not c.shuffled_labels]
        if cells:
            sets[name] = sweep.synthetic_set(max(cells, key=lambda c: c.ratio))
    for finding in CLEAR_FINDINGS:
        if finding not in test.label_names:
            continue
        row: dict[str, np.ndarray] = {}
        j = test.label_names.index(finding)
        pos = np.flatnonzero(np.asarray(test.labels)[:, j] == 1)[:k]
        if len(pos):
            row["real"] = np.stack([test.image(int(i)) for i in pos])
        for name, ds in sets.items():
            jj = ds.label_names.index(finding) if finding in ds.label_names else None
            if jj is None:
                continue
            idx = np.flatnonzero(np.asarray(ds.labels)[:, jj] == 1)[:k]
            if len(idx):
                row[name] = np.stack([ds.image(int(i)) for i in idx])
        if row:
            out[finding] = row
    return out


def _save_samples(path: Path, samples: dict[str, dict[str, np.ndarray]]) -> None:
    flat = {f"{f}/{kind}": (np.clip(a, 0, 1) * 65535).round().astype(np.uint16)
            for f, row in samples.items() for kind, a in row.items()}
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **flat)
    os.replace(tmp, path)


def _load_samples(path: Path) -> dict[str, dict[str, list[np.ndarray]]] | None:
    if not path.exists():
        return None
    out: dict[str, dict[str, list[np.ndarray]]] = defaultdict(dict)
    with np.load(path) as z:
        for key in z.files:
            finding, kind = key.split("/", 1)
            out[finding][kind] = list(z[key].astype(np.float32) / 65535.0)
    return dict(out)


# ---------------------------------------------------------------------------------------------
# the report


def _machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), {gpu}, "
            f"torch {torch.__version__}")


def build_report(sweep_dir: str | Path, *, n_boot: int = 1000, log=print) -> dict[str, Any]:
    """results.csv, metrics.json and report.html of a sweep folder; returns the summary."""
    from biomed.augment.report_html import render_report

    sweep_dir = Path(sweep_dir)
    plan_path = sweep_dir / "sweep.json"
    if not plan_path.is_file():
        raise InputError(sweep_dir, "not a sweep folder (no sweep.json; made by biomed augment)")
    plan = json.loads(plan_path.read_text())
    cells = _cells(sweep_dir)
    if not cells:
        raise InputError(sweep_dir, "no finished cell (cells/*/DONE) to report on")
    names = [str(n) for n in cells[0]["pred"]["label_names"]]
    clear = [names.index(n) for n in CLEAR_FINDINGS if n in names]
    for c in cells[1:]:
        if [str(n) for n in c["pred"]["label_names"]] != names or \
                not np.array_equal(c["pred"]["ids"], cells[0]["pred"]["ids"]):
            raise InputError(c["folder"], "its labels or test ids differ from the other cells'")
    rows = _rows(cells, names, clear)
    _write_csv(sweep_dir / "results.csv", rows)
    gains = _gains(cells, names, clear, n_boot)
    curve = _real_curve(cells, names, clear, n_boot)
    synthetic = {p.stem: json.loads(p.read_text())
                 for p in sorted((sweep_dir / "synthetic").glob("*.json"))}
    steps = {p.parent.name[1:]: json.loads(p.read_text())
             for p in sorted((sweep_dir / "steps").glob("f*/steps.json"))}
    planned = {c["name"] for c in plan["cells"]}
    done = {c["cell"]["name"] for c in cells}
    timing = [json.loads(p.read_text()) for p in sorted((sweep_dir / "timing").glob("*.json"))]
    data = plan["data"]
    gen = None
    if "diffusion" in synthetic:
        s = synthetic["diffusion"]
        gen = {"model_id": s.get("model_id"), "id": s.get("id"), "trained_on": s.get("trained_on"),
               "sampler": s.get("sampler")}
    notes = [PHANTOM_NOTE] if data.get("kind") == "phantom" else []
    notes.append(f"Steps: every cell of a real fraction trains the same S steps and keeps its "
                 f"best validation checkpoint (every {plan.get('eval_every')} steps).")
    if not plan.get("synthetic_seed", {}).get("per_cell_seed", False):
        notes.append("One synthetic draw (prompts and image seeds) is shared by the cell seeds: "
                     "the intervals cover test reports, real subsets and initialisations, not "
                     "the draw of synthetic images (synthetic.per_cell_seed=true to add it).")
    summary = {
        "title": f"Synthetic augmentation: {data.get('name')}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "commit": runs.git_state().get("commit"),
        "machine": _machine(),
        "demonstration": bool(plan.get("demonstration", False)),
        "data": {**data, "subgroups": sorted({k[len("subgroup_"):] for k in cells[0]["pred"]
                                              if k.startswith("subgroup_")})},
        "generator": gen, "prompts": plan.get("prompts") or {},
        "clear_findings": [names[j] for j in clear], "findings": names,
        "steps": steps, "modes": plan.get("modes"), "synthetic": synthetic,
        "gains": gains, "real_curve": curve, "worth": _worth(gains, curve),
        "not_improved": _not_improved(gains), "correction": CORRECTION, "notes": notes,
        "cells": {"planned": len(planned), "done": len(done & planned),
                  "failed": [{"cell": n, "error": "not finished"}
                             for n in sorted(planned - done)]},
        "timing": {"generation_s": round(sum(float(s.get("seconds") or 0)
                                             for s in synthetic.values()), 1),
                   "cells_s": round(sum(float(t.get("cells_s") or 0) for t in timing), 1),
                   "prepare_s": round(sum(float(t.get("prepare_s") or 0) for t in timing), 1)},
        "n_boot": n_boot,
    }
    runs.write_json(sweep_dir / "metrics.json", summary)
    render_report(summary, sweep_dir / "report.html", _load_samples(sweep_dir / "samples.npz"))
    primary = [g for g in gains if g["endpoint"] == "macro_clear" and g["subgroup"] == "all"]
    for g in primary:
        log(f"augment: {g['source']:>14} {g['mode']:>8} x{g['ratio']:g} f{g['fraction']:g}"
            f"{' shuffled' if g['shuffled_labels'] else ''}: macro_clear gain "
            f"{g['value']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] ({g['n_seeds']} seeds)"
            if g["ci_low"] is not None else f"augment: {g}")
    log(f"augment: wrote {sweep_dir / 'results.csv'}, metrics.json and report.html")
    return summary


def main(argv: list[str] | None = None) -> int:
    """`biomed augment-report SWEEP_DIR [--n-boot N]`."""
    import argparse

    p = argparse.ArgumentParser(prog="biomed augment-report", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir")
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args(argv)
    try:
        build_report(args.sweep_dir, n_boot=args.n_boot)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
