"""Summary of the optimizer study (``experiment=lm_optimizer_study``): the table for docs/results.md.

    biomed lm-study outputs/train-lm/multirun/<stamp> [more sweep folders] \\
        [--out study.md] [--json study.json]

Reads every completed train-lm run below the given folders (``metrics.json``, ``log.jsonl``,
``.hydra/config.yaml``) and reports, per optimizer:

- **equal wall-clock** (every run had the same ``trainer.max_time_s``): final validation loss
  (whole validation split) per learning rate, mean over seeds with a bootstrap 95% CI over
  seeds; the best learning rate, flagged when it sits on the edge of the grid; the difference
  between the optimizers' best settings (paired by seed: same seed, same initialisation and
  data order);
- **equal steps**: validation loss of each best setting at the largest step count that every
  run of both reached (from the periodic evaluations: the same first ``eval.max_tokens``
  validation tokens in every run), and at fractions of the shared time budget;
- **steps to reach the other's final loss**: the first step at which one optimizer's mean curve
  reaches the other's final (periodic) validation loss, and the ratio to the other's step count:
  a "2x faster" claim means a ratio of 0.5.

Caveat printed with the table: intermediate points of a run are not the final points of shorter
runs (the cosine schedule decays to the end of each run's own budget), so equal-step and
steps-to-reach numbers taken mid-run favour neither optimizer but understate what a run tuned
to end there would reach.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomed import stats


@dataclass
class RunRecord:
    path: Path
    optimizer: str
    lr: float
    seed: int
    val_loss: float  # final, whole validation split
    steps: int
    seconds: float
    tokens_per_s: float | None
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, time_s, loss)


def find_runs(folders: list[str | Path]) -> list[RunRecord]:
    """Completed train-lm runs below ``folders``."""
    from omegaconf import OmegaConf

    out = []
    for folder in folders:
        for metrics_path in sorted(Path(folder).glob("**/metrics.json")):
            run = metrics_path.parent
            metrics = json.loads(metrics_path.read_text())
            if metrics.get("status") != "completed" or "val_loss" not in metrics:
                continue
            cfg_path = run / ".hydra" / "config.yaml"
            seed = int(OmegaConf.load(cfg_path).get("seed", 0)) if cfg_path.is_file() else 0
            curve = []
            log = run / "log.jsonl"
            if log.is_file():
                for line in log.read_text().splitlines():
                    row = json.loads(line) if line.strip() else {}
                    if "val_loss" in row:
                        curve.append((int(row["step"]), float(row.get("time_s", math.nan)),
                                      float(row["val_loss"])))
            out.append(RunRecord(run, str(metrics.get("optimizer", "?")),
                                 float(metrics.get("lr", math.nan)), seed,
                                 float(metrics["val_loss"]), int(metrics.get("steps", 0)),
                                 float(metrics.get("train_seconds", math.nan)),
                                 metrics.get("tokens_per_s"), curve))
    return out


def _seeds_ci(values: list[float], n_boot: int) -> tuple[float, float]:
    """Bootstrap 95% CI of the mean over seeds; (NaN, NaN) for one seed (shown as "n/a")."""
    return stats.mean_ci(values, n_boot, seed=0, min_size=2)


def _interp(curve: list[tuple[int, float, float]], x: float, axis: int) -> float:
    """Validation loss at step (axis 0) or time (axis 1) ``x``, linear between evaluations."""
    pts = sorted((c[axis], c[2]) for c in curve if not math.isnan(c[axis]))
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return float("nan")
    xs, ys = zip(*pts, strict=True)
    return float(np.interp(x, xs, ys))


def _nanmean(values: list[float]) -> float:
    """Mean of the defined values (NaN where a run has no evaluation that early or late)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _mean_curve(runs: list[RunRecord]) -> list[tuple[int, float]]:
    """Mean validation loss over seeds at the evaluation steps every run has."""
    common = set.intersection(*({s for s, _, _ in r.curve} for r in runs)) if runs else set()
    return [(s, float(np.mean([next(v for st, _, v in r.curve if st == s) for r in runs])))
            for s in sorted(common)]


def _first_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First (interpolated) step where the curve is at or below ``target``."""
    prev = None
    for s, v in curve:
        if v <= target:
            if prev is None or prev[1] == v:
                return float(s)
            (s0, v0) = prev
            return float(s0 + (s - s0) * (v0 - target) / (v0 - v))
        prev = (s, v)
    return None


def summarize(runs: list[RunRecord], n_boot: int = 2000) -> dict[str, Any]:
    by_cfg: dict[tuple[str, float], list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_cfg[(r.optimizer, r.lr)].append(r)
    grid = []
    for (opt, lr), rs in sorted(by_cfg.items()):
        losses = [r.val_loss for r in rs]
        grid.append({"optimizer": opt, "lr": lr, "seeds": sorted(r.seed for r in rs),
                     "val_loss": float(np.mean(losses)),
                     "val_loss_ci": _seeds_ci(losses, n_boot),
                     "val_ppl": float(np.exp(np.mean(losses))),
                     "steps": float(np.mean([r.steps for r in rs])),
                     "seconds": float(np.mean([r.seconds for r in rs])),
                     "tokens_per_s": float(np.mean([r.tokens_per_s or math.nan for r in rs]))})
    best: dict[str, dict] = {}
    for g in grid:
        if g["optimizer"] not in best or g["val_loss"] < best[g["optimizer"]]["val_loss"]:
            best[g["optimizer"]] = g
    for opt, b in best.items():
        lrs = sorted(g["lr"] for g in grid if g["optimizer"] == opt)
        b["lr_on_grid_edge"] = len(lrs) > 1 and b["lr"] in (lrs[0], lrs[-1])
    out: dict[str, Any] = {"runs": len(runs), "grid": grid, "best": best}
    opts = sorted(best)
    if len(opts) == 2:
        out["comparison"] = _compare(opts, best, by_cfg, n_boot)
    return out


def _compare(opts, best, by_cfg, n_boot) -> dict[str, Any]:
    a, b = opts
    ra, rb = (by_cfg[(o, best[o]["lr"])] for o in opts)
    seeds = sorted({r.seed for r in ra} & {r.seed for r in rb})
    diffs = [next(r.val_loss for r in ra if r.seed == s) - next(r.val_loss for r in rb
                                                                if r.seed == s) for s in seeds]
    comp: dict[str, Any] = {
        "pair": [a, b], "paired_seeds": seeds,
        "val_loss_diff": float(np.mean(diffs)) if diffs else float("nan"),  # a - b
        "val_loss_diff_ci": _seeds_ci(diffs, n_boot)}
    # equal steps: the largest step every run of both best settings reached
    step_cap = min(r.steps for r in [*ra, *rb])
    comp["equal_steps"] = {"step": step_cap, **{o: _nanmean(
        [_interp(r.curve, step_cap, 0) for r in rs]) for o, rs in ((a, ra), (b, rb))}}
    budget = min(r.seconds for r in [*ra, *rb])
    comp["equal_time"] = [{"fraction": f, "seconds": f * budget, **{o: _nanmean(
        [_interp(r.curve, f * budget, 1) for r in rs]) for o, rs in ((a, ra), (b, rb))}}
        for f in (0.25, 0.5, 0.75, 1.0)]
    curves = {a: _mean_curve(ra), b: _mean_curve(rb)}
    reach = {}
    for me, other in ((a, b), (b, a)):
        if not curves[other] or not curves[me]:
            continue
        other_steps, target = curves[other][-1]
        s = _first_reach(curves[me], target)
        reach[me] = {"target": f"{other} final periodic val loss {target:.4f} at step "
                               f"{other_steps}", "steps": s,
                     "ratio_to_other": (s / other_steps) if s is not None else None}
    comp["steps_to_reach_other_final"] = reach
    return comp


def format_markdown(summary: dict[str, Any]) -> str:
    def ci(c):
        return "n/a (1 seed)" if any(math.isnan(x) for x in c) else f"[{c[0]:.4f}, {c[1]:.4f}]"

    lines = [f"{summary['runs']} runs.", "",
             "| optimizer | lr | seeds | final val loss (mean) | 95% CI over seeds | val ppl | "
             "steps | tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for g in summary["grid"]:
        mark = " **best**" if summary["best"][g["optimizer"]] is g else ""
        lines.append(f"| {g['optimizer']}{mark} | {g['lr']:.2g} | {len(g['seeds'])} | "
                     f"{g['val_loss']:.4f} | {ci(g['val_loss_ci'])} | {g['val_ppl']:.1f} | "
                     f"{g['steps']:.0f} | {g['tokens_per_s']:,.0f} |")
    for opt, b in summary["best"].items():
        if b.get("lr_on_grid_edge"):
            lines.append(f"\nNote: {opt}'s best learning rate {b['lr']:.2g} is on the edge of "
                         "its grid: extend the grid before concluding.")
    comp = summary.get("comparison")
    if comp:
        a, b = comp["pair"]
        lines += ["", f"Equal wall-clock, best settings: {a} - {b} final val loss = "
                      f"{comp['val_loss_diff']:+.4f}, 95% CI {ci(comp['val_loss_diff_ci'])} "
                      f"(paired by seed: {comp['paired_seeds']}).", "",
                  f"| view | {a} | {b} |", "|---|---|---|"]
        es = comp["equal_steps"]
        lines.append(f"| equal steps ({es['step']}) | {es[a]:.4f} | {es[b]:.4f} |")
        for row in comp["equal_time"]:
            lines.append(f"| {row['fraction']:.0%} of the time budget ({row['seconds']:.0f} s) "
                         f"| {row[a]:.4f} | {row[b]:.4f} |")
        lines.append("")
        for me, r in comp["steps_to_reach_other_final"].items():
            got = (f"{r['steps']:.0f} steps (x{r['ratio_to_other']:.2f} of theirs)"
                   if r["steps"] is not None else "not reached")
            lines.append(f"- {me} reaches the {r['target']}: {got}")
        lines += ["", "Equal-step and time-fraction rows use the periodic evaluations (the same "
                      "validation subset in every run); intermediate points of a run are not "
                      "the end points of shorter runs (the cosine schedule decays to each run's "
                      "own end)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="biomed lm-study", description=__doc__.split(
        "\n")[0])
    ap.add_argument("folders", nargs="+", help="sweep folders (outputs/train-lm/multirun/...)")
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--json", help="write the full summary as JSON")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    runs = find_runs(args.folders)
    if not runs:
        print(f"no completed train-lm runs under {args.folders}")
        return 1
    summary = summarize(runs, args.boot)
    text = format_markdown(summary)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0
