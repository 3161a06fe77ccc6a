"""What evaluate-generation writes beside ``metrics.json``: ``table.md`` (the run's numbers as
Markdown, for docs/results.md), ``grid.png`` (real | samples per prompt) and ``report.html``."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomed.imaging.core import pixels

if TYPE_CHECKING:
    from biomed.imaging.diffusion.evaluate.evaluation import Evaluation


# ---------------------------------------------------------------------------------------------
# the table


def _f(entry: Any, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    if isinstance(entry, Mapping):
        if entry.get("value") is None:
            return "n/a"
        ci = "" if entry.get("ci_low") is None else \
            f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
        return f"{entry['value']:.{digits}f}{ci}"
    return f"{entry:.{digits}f}"


def _summary_rows(m: Mapping[str, Any]) -> list[str]:
    fid, div, cs = m["fid"], m["diversity"], m["clip_score"]
    rows = ["| metric | generated | real reference | n |", "|---|---|---|---|"]
    for space, label in (("classifier", "classifier penultimate features"),
                         ("clip", "CXR-CLIP image embeddings")):
        if space in fid:
            rows.append(f"| FID, {label} ({fid[space]['dim']}-d) | {_f(fid[space]['value'], 2)} "
                        f"| {_f(fid[space]['real_vs_real'], 2)} (render vs render, n = "
                        f"{fid['n_real_pairs']}) | {fid['n_real']} real vs {fid['n_generated']} "
                        "generated |")
    if "settings" in div:
        s = div["settings"]
        rows.append(f"| MS-SSIM diversity ({s['scales']} scales, {s['window']}x{s['window']} "
                    f"Gaussian, sigma {s['sigma']:g}; lower = more diverse) | "
                    f"{_f(div['generated']['ms_ssim'])} | {_f(div['real']['ms_ssim'])} (renders "
                    f"of one report) | {div['generated']['prompts']} prompts x "
                    f"{div['generated']['samples_per_prompt']} |")
    if "generated" in cs:
        rows.append(f"| CLIP score (x100, clipped at 0) | {_f(cs['generated'], 2)} | "
                    f"{_f(cs['real'], 2)} (real image, its report) | {cs['n']} |")
    return rows


def _fidelity_rows(m: Mapping[str, Any]) -> list[str]:
    sources = list(m.get("sources") or {}) if len(m.get("sources") or {}) > 1 else []
    head = "| finding | n pos / neg | generated | real phantoms (ceiling) |" + \
        "".join(f" {s} prompts |" for s in sources)
    rows = [head, "|---" * (4 + len(sources)) + "|"]
    for name, e in m["fidelity"].items():
        by = e.get("by_source", {})
        rows.append(f"| {name} | {e['n_pos']} / {e['n_neg']} | {_f(e['generated'])} | "
                    f"{_f(e['real'])} |" + "".join(f" {_f(by.get(s, {}).get('generated'))} |"
                                                   for s in sources))
    rows.append(f"| macro | | {_f(m.get('fidelity_macro_auroc'))} | "
                f"{_f(m.get('real_macro_auroc'))} |" + " |" * len(sources))
    return rows


def _label_check_rows(m: Mapping[str, Any]) -> list[str]:
    check = m.get("prompt_label_check")
    if not check:
        return []
    tags = m.get("fidelity_tag_labels") or {}
    rows = ["Prompts left out of a finding's AUROC because their text does not support its "
            "label (denied or hedged; `biomed.imaging.reports.mentions`), and the AUROC on the "
            "tags alone:", "", "| finding | left out (tag positive) | report ids | "
            "generated, tags alone | real, tags alone |", "|---|---|---|---|---|"]
    for name, e in check["left_out"].items():
        t = tags.get(name, {})
        rows.append(f"| {name} | {e['n']} ({e['tag_positive']}) | "
                    f"{', '.join(e['report_ids']) or '-'} | {_f(t.get('generated'))} | "
                    f"{_f(t.get('real'))} |")
    return [*rows, ""]


def _suite_rows(m: Mapping[str, Any]) -> list[str]:
    rows = ["| finding | n | side accuracy | left prompts | right prompts | real phantoms |",
            "|---|---|---|---|---|---|"]
    for name, e in m["laterality"].items():
        if "skipped" in e:
            rows.append(f"| {name} | | skipped: {e['skipped']} | | | |")
            continue
        real = e.get("real") or {}
        rows.append(f"| {name} | {e['n']} | {_f(e['accuracy'])} | {_f(e['accuracy_left'])} | "
                    f"{_f(e['accuracy_right'])} | {_f(real.get('accuracy'))} (n = "
                    f"{real.get('n', 0)}) |")
    rows += ["", "| finding | pairs | negated prompt lower | ties | mean p stated / negated |",
             "|---|---|---|---|---|"]
    for name, e in m["negation"].items():
        if "skipped" in e:
            rows.append(f"| {name} | | skipped: {e['skipped']} | | |")
            continue
        rows.append(f"| {name} | {e['n_pairs']} | {_f(e['share'])} | {e['ties']} | "
                    f"{e['mean_p_stated']:.3f} / {e['mean_p_negated']:.3f} |")
    return rows


def markdown_table(m: Mapping[str, Any]) -> str:
    """The run's numbers as Markdown (for docs/results.md)."""
    sampler = m.get("sampler") or {}
    data = str(m.get("data", "?"))
    phantom = "phantom" in data
    lines = [
        "# Generation evaluation" + (" (phantom data)" if phantom else ""), "",
        f"Model `{m.get('model_id', m.get('model_dir', '?'))}`; classifier "
        f"`{m.get('classifier_dir', '?')}`; CXR-CLIP `{m.get('clip_dir') or 'none'}`; data "
        f"`{data}` ({m.get('split', '?')} split, {m['n_prompts']} report prompts); sampler "
        f"{sampler.get('scheduler', '?')}, {sampler.get('steps', '?')} steps, guidance "
        f"{sampler.get('guidance', '?')}; seed {m.get('seed', '?')}. Images generated: "
        f"{m['images_generated']} ({m['diverged']} flagged as diverged), "
        f"{'x'.join(map(str, m['image_size']))} px. Bootstrap 95% CIs in brackets." +
        (f" {m['prompts_truncated']} distinct prompts were longer than the model's "
         f"{m.get('prompt_max_tokens')} tokens and truncated (as in training)."
         if m.get("prompts_truncated") else ""), "",
        *_summary_rows(m), "",
        "## Prompt fidelity per finding (classifier AUROC: prompt states the finding or not)", "",
        *_fidelity_rows(m), "",
        "Side columns (`*_left`, `*_right`) use the side the phantom drew, which an IU prompt "
        "may not state; the laterality suite below uses prompts that do.", "",
        *_label_check_rows(m),
        "## Laterality and negation suites (templated prompts)", "", *_suite_rows(m), ""]
    if phantom:
        lines += ["Measured on phantoms (procedural radiographs with exact findings) and the "
                  "classifier trained on them; conclusions about real patients need real data.",
                  ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the files


def _report_html(table: str, grid: bool, prompts: Sequence[str]) -> str:
    items = "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
    picture = (f"<h2>Samples</h2><p>Each row: the real phantom of a held-out report, then "
               f"samples from its text (synthetic).</p><img src='grid.png' "
               f"style='image-rendering:pixelated;width:640px'><ol>{items}</ol>") if grid else ""
    return ("<!doctype html><meta charset='utf-8'><title>evaluate-generation</title>"
            f"<pre>{html.escape(table)}</pre>{picture}\n")


def write_outputs(run_dir: Path, metrics: dict[str, Any], ev: Evaluation) -> dict[str, str]:
    """``table.md``, ``scores.csv`` (one row per scored image), ``grid.png`` (when there are
    samples) and ``report.html``."""
    files = {"table": "table.md", "report": "report.html"}
    if ev.scores:
        write_scores(run_dir / "scores.csv", ev.scores)
        files["scores"] = "scores.csv"
    table = markdown_table(metrics)
    (run_dir / "table.md").write_text(table, encoding="utf-8")
    if ev.grid is not None:
        pixels.write_png16(run_dir / "grid.png", ev.grid, text={
            "synthetic": "true (column 1 of each row is the real phantom; the others are "
                         "generated)", "software": "biomed evaluate-generation",
            "model_id": str(metrics.get("model_id", ""))})
        files["grid"] = "grid.png"
    (run_dir / "report.html").write_text(_report_html(table, ev.grid is not None,
                                                      ev.grid_prompts), encoding="utf-8")
    return files


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-image rows of `biomed.imaging.diffusion.evaluate.evaluation.score_rows` as CSV
    (pandas-readable; prompts quoted)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
