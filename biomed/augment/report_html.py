"""The augmentation sweep's report: one self-contained HTML page from the summary dict.

`biomed/augment/report.py` builds the summary (metrics.json; its shape is documented in the
augment summary schema) and calls `render_report`. The page answers "did synthetic images
help?" first, then shows the setup, the primary endpoint, the controls, the exploratory
per-finding gains, the real-data curve, sample images and what did not improve. Everything is
inline (CSS in a <style> block, figures as base64 PNG data URIs) so the file can be mailed or
archived alone; every string from the summary is HTML-escaped. Missing optional keys and empty
lists (a real-only sweep, a single seed without CIs) render as "n/a" or a short sentence.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biomed.augment import report_figures as rf
from biomed.augment.report_figures import figure_png  # noqa: F401  (re-exported helper)
from biomed.errors import InputError

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1000px; margin: 2em auto; padding: 0 1em; line-height: 1.5; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #999; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
.banner { border: 2px solid #D55E00; background: #fff1e5; padding: 0.6em 1em; font-weight: bold; }
.note { border: 2px solid #0072B2; background: #eaf4fb; padding: 0.6em 1em; }
.intro { color: #444; } .meta { color: #666; font-size: 0.9em; }
img { max-width: 100%; height: auto; } figure { margin: 1em 0; }
"""
_GAIN_HEAD = ("real fraction", "source", "mode", "ratio", "labels", "endpoint", "metric",
              "baseline", "gain", "95% CI", "seeds", "CI vs zero")


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _n(x: Any, sign: str = "") -> str:
    """A number to 3 decimals ('+' sign optional), 'n/a' for None/NaN/non-numbers."""
    v = rf.num(x)
    if math.isnan(v):
        return "n/a"
    return f"{0.0 if abs(v) < 5e-4 else v:{sign}.3f}"  # no '-0.000'


def _count(x: Any) -> str:
    v = rf.num(x)
    return "n/a" if math.isnan(v) else (f"{int(v)}" if v.is_integer() else f"{v:.3f}")


def _m(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _seq(x: Any) -> list[Any]:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, str) else []


def _ci(r: Mapping[str, Any]) -> str:
    lo, hi = rf.num(r.get("ci_low")), rf.num(r.get("ci_high"))
    return "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.3f}, {hi:.3f}]"


def _verdict(r: Mapping[str, Any]) -> str:
    lo, hi = rf.num(r.get("ci_low")), rf.num(r.get("ci_high"))
    if math.isnan(lo) or math.isnan(hi):
        return "CI n/a"
    return "CI includes zero" if lo <= 0 <= hi else "CI excludes zero"


def _img(fig: Any, alt: str) -> str:
    if fig is None:
        return ""
    data = base64.b64encode(rf.figure_png(fig)).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></figure>'


def _table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A table of plain values (escaped here)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    trs = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{trs}</tbody></table>"


def _section(title: str, intro: str, body: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="intro">{_e(intro)}</p>{body}</section>'


def _list(items: Sequence[Any]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _gain_table(rows: Sequence[Mapping[str, Any]], endpoints: Sequence[str] = (),
                subgroup: bool = False) -> str:
    """Rows grouped by endpoint (in `endpoints` order, then the rest), AUROC before AP."""
    if not rows:
        return "<p>No rows.</p>"
    rank = {e: i for i, e in enumerate(endpoints)}
    rows = sorted(rows, key=lambda r: (rank.get(str(r.get("endpoint")), len(rank)),
                                       str(r.get("endpoint")), r.get("metric", "auroc") != "auroc",
                                       str(r.get("subgroup")), rf.row_order(r)))
    head = _GAIN_HEAD + (("subgroup",) if subgroup else ())
    body = [[rf.fmt_g(r.get("fraction")), r.get("source"), r.get("mode"), rf.fmt_g(r.get("ratio")),
             "shuffled" if r.get("shuffled_labels") else "true", r.get("endpoint"),
             r.get("metric", "auroc"), _n(r.get("baseline")), _n(r.get("value")), _ci(r),
             _count(r.get("n_seeds")), _verdict(r)] + ([r.get("subgroup")] if subgroup else [])
            for r in rows]
    return _table(head, body)


def _primary(s: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return rf.gain_rows(s, lambda r: rf.is_row(r, "macro_clear"))


# ---- sections ------------------------------------------------------------------------------

def _lead(s: Mapping[str, Any]) -> str:
    """The one-paragraph answer to "did synthetic images help?"."""
    arms = rf.highest_ratio(r for r in _primary(s) if not r.get("shuffled_labels"))
    clear = ", ".join(str(f) for f in _seq(s.get("clear_findings"))) or "n/a"
    if not arms:
        return ("Did synthetic images help? This sweep has no synthetic-data result for the "
                "primary endpoint (macro AUROC over the clear findings), so it cannot say; the "
                "page shows the real-data baseline only.")
    synth = [r for r in arms if r.get("source") != "duplicates"]  # duplicates: a control
    up = sum(rf.num(r.get("ci_low")) > 0 for r in synth)
    down = sum(rf.num(r.get("ci_high")) < 0 for r in synth)
    parts = [f"Did synthetic images help? The primary endpoint is the change in macro AUROC over "
             f"the clear findings ({clear}) against training on the same real images alone. At "
             f"the highest ratio tested, the 95% CI of the gain lies above zero for {up} of "
             f"{len(synth)} synthetic-image arms and below zero for {down}."]
    multi = rf.many_fractions(arms)
    for r in arms:
        control = " (control)" if r.get("source") == "duplicates" else ""
        parts.append(f"{rf.arm_label(r, ratio=True, fraction=multi)}{control}: gain "
                     f"{_n(r.get('value'), '+')} {_ci(r)}, {_verdict(r)}.")
    return " ".join(parts)


def _header(s: Mapping[str, Any]) -> str:
    data = _m(s.get("data"))
    meta = " | ".join(f"{k}: {s[k]}" for k in ("created", "commit", "machine") if s.get(k))
    out = [f"<h1>{_e(s.get('title') or 'Synthetic augmentation report')}</h1>",
           f'<p class="meta">{_e(meta)}</p>' if meta else ""]
    if s.get("demonstration"):
        out.append('<p class="banner" role="alert">Demonstration: these numbers come from a small '
                   "quick run to show the pipeline working. They are not a result and support "
                   "no claim.</p>")
    if data.get("kind") == "phantom":
        out.append('<p class="note" role="note">Phantom data: every image here (real and '
                   "synthetic) is a rendered phantom, not a patient. Results do not transfer to "
                   "patients.</p>")
    out.append(f"<p>{_e(_lead(s))}</p>")
    return "".join(out)


def _setup(s: Mapping[str, Any]) -> str:
    data, gen, prm = _m(s.get("data")), s.get("generator"), _m(s.get("prompts"))
    rows: list[tuple[str, Any]] = [
        ("data", f"{data.get('name', 'n/a')} ({data.get('kind', 'n/a')})"),
        ("images", f"train pool {_count(data.get('train_pool'))}, validation "
                   f"{_count(data.get('val'))}, test {_count(data.get('test'))} "
                   f"({_count(data.get('test_reports'))} test reports)"),
        ("image size", f"{_count(data.get('image_size'))} px"),
        ("subgroups", ", ".join(map(str, _seq(data.get("subgroups")))) or "none")]
    if isinstance(gen, Mapping):
        sampler = ", ".join(f"{k} {v}" for k, v in _m(gen.get("sampler")).items()) or "n/a"
        rows += [("generator", f"{gen.get('model_id', 'n/a')} (cache key {gen.get('id', 'n/a')})"),
                 ("sampler", sampler), ("generator trained on", gen.get("trained_on", "n/a"))]
    else:
        rows.append(("generator", "none (no diffusion generator in this sweep)"))
    rows += [("prompt pool", prm.get("pool", "n/a")), ("prompt policy", prm.get("policy", "n/a")),
             ("clear findings (primary)", ", ".join(map(str, _seq(s.get("clear_findings"))))),
             ("all findings", ", ".join(map(str, _seq(s.get("findings")))))]
    cells, timing = _m(s.get("cells")), _m(s.get("timing"))
    failed = [_m(f) for f in _seq(cells.get("failed"))]
    rows += [("cells", f"{_count(cells.get('done'))} done of {_count(cells.get('planned'))} "
                       f"planned, {len(failed)} failed"),
             ("time", f"generation {_n(timing.get('generation_s'))} s, classifier cells "
                      f"{_n(timing.get('cells_s'))} s")]
    out = [_kv(rows)]
    if failed:
        out.append("<p>Failed cells:</p>" + _list([f"{f.get('cell')}: {f.get('error')}"
                                                   for f in failed]))
    steps = _m(s.get("steps"))
    if steps:
        out.append("<h3>Training steps</h3><p>Every cell at one real fraction trains for the same "
                   "S optimizer steps, so synthetic images add data, not compute.</p>")
        out.append(_table(("real fraction", "S", "max steps", "chosen by"),
                          [(f, _count(_m(e).get("S")), _count(_m(e).get("max_steps")),
                            _m(e).get("chosen_by", "n/a")) for f, e in steps.items()]))
        out.append(_img(rf.steps_curve(steps), "Line chart of validation macro AUROC of the "
                        "real-only baseline against training steps, one line per real fraction; "
                        "a star marks the chosen step budget S."))
    modes = _m(s.get("modes"))
    if modes:
        out.append("<h3>Modes</h3>" + _list([f"{k}: {v}" for k, v in modes.items()]))
    out.append(_synthetic(s))
    return _section("Setup", "What was trained on what: the data, the generator and prompts, "
                    "the step budget and how the synthetic sets came out.", "".join(out))


def _synthetic(s: Mapping[str, Any]) -> str:
    syn = {k: _m(v) for k, v in _m(s.get("synthetic")).items()}
    if not syn:
        return "<h3>Synthetic sets</h3><p>No synthetic sets in this sweep.</p>"
    out = ["<h3>Synthetic sets</h3>", _table(
        ("source", "images", "generated", "from cache", "seconds"),
        [(k, _count(v.get("images")), _count(v.get("generated")), _count(v.get("from_cache")),
          _n(v.get("seconds"))) for k, v in syn.items()])]
    findings = [str(f) for f in _seq(s.get("findings"))]
    prev = {k: _m(v.get("prevalence")) for k, v in syn.items()}
    names = findings + sorted({f for p in prev.values() for f in p} - set(findings))
    if any(prev.values()):
        out.append("<p>Prevalence: the share of synthetic images whose prompt has the "
                   "finding.</p>")
        shown = [f for f in names if any(f in p for p in prev.values())]
        out.append(_table(("finding", *syn), [(f, *(_n(prev[k].get(f)) for k in syn))
                                              for f in shown]))
    acc = {k: _m(v.get("label_accuracy")) for k, v in syn.items() if v.get("label_accuracy")}
    if acc:
        out.append("<p>Label accuracy: how well a reference classifier finds each prompted "
                   "finding in the synthetic images (AUROC, accuracy, positives).</p>")
        head = ["finding"] + [f"{k} {m}" for k in acc for m in ("AUROC", "accuracy", "n pos")]
        body = [[f] + [x for k in acc for x in (_n(_m(acc[k].get(f)).get("auroc")),
                                                 _n(_m(acc[k].get(f)).get("accuracy")),
                                                 _count(_m(acc[k].get(f)).get("n_pos")))]
                for f in names if any(f in a for a in acc.values())]
        out.append(_table(head, body))
    return "".join(out)


def _results(s: Mapping[str, Any]) -> str:
    prim = _primary(s)
    macro = rf.gain_rows(s, lambda r: r.get("endpoint") in rf.MACRO and rf.is_row(r, metric=None))
    out = [_section(
        "Primary endpoint: macro AUROC gain over the clear findings",
        "Each point is the mean gain over seeds of adding synthetic images at a given ratio, "
        "against the same real images alone; bars are 95% CIs and the dashed line is no change. "
        "Shuffled-label and duplicate-image arms are controls: they should not help.",
        _img(rf.primary_gain(prim), "Line chart of the gain in macro AUROC over the clear "
             f"findings against the synthetic-to-real ratio for {len(rf.highest_ratio(prim))} "
             "arms (source, mode and controls), error bars are 95% CIs, dashed line at zero.")
        + _gain_table(macro, rf.MACRO))]
    out.append(_section(
        "Mix against pretrain", "The same synthetic images used two ways: mixed into training, "
        "or used to pretrain before the real images. Points side by side compare the modes.",
        _img(rf.mode_pairs(prim), "Paired point chart of the macro AUROC gain for the mix and "
             "pretrain modes per source at each ratio, with 95% CIs and a zero line.")
        or "<p>No synthetic-data rows.</p>"))
    out.append(_section(
        "Diffusion against the oracle and the controls", "One row per arm and ratio. The phantom "
        "oracle draws exactly the prompted findings (what perfect fidelity would add); "
        "duplicates and shuffled labels show what extra images or noise alone do.",
        _img(rf.forest(prim), f"Forest plot of {len(prim)} macro AUROC gains with 95% CIs, one "
             "row per source, mode, ratio and label control, with a zero line.")
        or "<p>No synthetic-data rows.</p>"))
    per = rf.gain_rows(s, lambda r: r.get("endpoint") not in rf.MACRO
                       and rf.is_row(r, metric=None))
    auroc = [r for r in per if r.get("metric", "auroc") == "auroc"]
    findings = [str(f) for f in _seq(s.get("findings"))]
    out.append(_section(
        "Per-finding gains (exploratory)", "Gains for each finding separately, AUROC in the "
        "figure, AUROC and average precision (AP) in the table. These are exploratory, not the "
        f"claim. Multiple comparisons: {s.get('correction') or 'n/a'}",
        _img(rf.per_finding(auroc, findings), "Small-multiples chart, one panel per finding ("
             + ", ".join(sorted({str(r.get('endpoint')) for r in auroc})) + "), AUROC gain "
             "against ratio per arm with 95% CIs and a zero line.") + _gain_table(per, findings)))
    return "".join(out)


def _real_curve(s: Mapping[str, Any]) -> str:
    curve = [_m(r) for r in _seq(s.get("real_curve"))]
    curve = [r for r in curve if r.get("endpoint", "macro_clear") == "macro_clear"
             and r.get("metric", "auroc") == "auroc"]
    arms = rf.highest_ratio(r for r in _primary(s) if not r.get("shuffled_labels"))
    body = _img(rf.real_curve(curve, arms), "Line chart of test macro AUROC over the clear "
                "findings against the fraction of real training images on a log axis, with 95% "
                "CIs; dotted lines and markers show each synthetic arm's baseline plus gain at "
                "the highest ratio.")
    body += _table(("real fraction", "macro AUROC", "95% CI", "seeds"),
                   [(rf.fmt_g(r.get("fraction")), _n(r.get("value")), _ci(r),
                     _count(r.get("n_seeds"))) for r in curve]) if curve else "<p>No rows.</p>"
    worth = [_m(w) for w in _seq(s.get("worth"))]
    if worth:
        body += "<p>What the synthetic images are worth in real images:</p>" + _list(
            [f"{rf.arm_label(w, ratio=True)} ({w.get('endpoint', 'macro_clear')}): "
             f"{w.get('text', 'n/a')}" for w in worth])
    return _section("Real-data curve", "How the score grows with more real images. A synthetic "
                    "arm's level on this curve says how many real images it is worth.", body)


def _samples(s: Mapping[str, Any], samples: Mapping[str, Any] | None) -> str:
    if not samples:
        return _section("Sample images", "Real and synthetic images per finding.",
                        "<p>Sample images are not available for this report.</p>")
    order = [str(f) for f in _seq(s.get("findings"))]
    names = [f for f in order if f in samples] + [f for f in samples if f not in order]
    body = []
    for f in names:
        per = _m(samples[f])
        fig = rf.sample_grid(f, per)
        shown = ", ".join(rf.SAMPLE_TITLES.get(k, str(k)) for k in per if rf.images(per[k]))
        body.append(f"<h3>{_e(f)}</h3>" + (_img(fig, f"Thumbnails for {f}: {shown} images, "
                                                     "gray scale, lungs dark.") or "<p>none</p>"))
    return _section("Sample images", "For each finding, real images next to diffusion and "
                    "phantom-oracle images prompted with it (missing sources are skipped).",
                    "".join(body))


def _closing(s: Mapping[str, Any]) -> str:
    missed = _seq(s.get("not_improved"))
    body = _list(missed) if missed else "<p>Every tested arm improved.</p>"
    notes = _seq(s.get("notes"))
    if notes:
        body += "<h3>Notes</h3>" + _list(notes)
    sub = rf.gain_rows(s, lambda r: (r.get("subgroup") or "all") != "all")
    if sub:
        body += "<h3>Subgroups</h3>" + _gain_table(sub, rf.MACRO, subgroup=True)
    return _section("What did not improve", "Arms whose gain was not clearly above zero.", body)


def build_page(summary: Mapping[str, Any], samples: Mapping[str, Any] | None = None) -> str:
    """The whole page as a string (render_report writes it)."""
    title = _e(summary.get("title") or "Synthetic augmentation report")
    parts = [_header(summary), _setup(summary), _results(summary), _real_curve(summary),
             _samples(summary, samples), _closing(summary)]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def render_report(summary: dict, out_path: str | Path,
                  samples: dict | None = None) -> Path:
    """Write the report for `summary` to `out_path` (atomically) and return the path."""
    if not isinstance(summary, Mapping):
        raise InputError("summary", f"must be a dict (metrics.json), got {type(summary).__name__}")
    if samples is not None and not isinstance(samples, Mapping):
        raise InputError("samples", f"must be a dict of finding -> source -> images, got "
                                    f"{type(samples).__name__}")
    out = Path(out_path)
    if out.is_dir():
        raise InputError(out, "is a folder; give the report's file path")
    _write_atomic(out, build_page(summary, samples))
    return out
