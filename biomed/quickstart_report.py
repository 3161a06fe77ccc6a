"""The quickstart's final report: one self-contained HTML page with every part's numbers and
pictures, read from a quickstart run folder (``outputs/quickstart/latest/``).

`build_quickstart_report` reads whatever the stages left (``stages/<name>.json``,
``provenance.json``, ``.hydra/config.yaml`` and each part's own files) and writes one section per
part: header (provenance, stage times, targets met or not), LM, phantom, classifier, CLIP,
diffusion, augmentation. A part that did not run gets one line naming the stage and command that
make it; a file that cannot be parsed is named in its section; a section whose files have an
unexpected shape says so instead of stopping the page. Pictures are embedded as 8-bit PNG data
URIs (16-bit renders are converted and shrunk), every string from a file is HTML-escaped, and the
file is written atomically, so the page can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from biomed.errors import InputError

__all__ = ["TARGETS", "Target", "build_quickstart_report"]

STAGE_ORDER = ("corpus", "reports", "lm", "phantom", "classifier", "clip", "diffusion", "augment",
               "report")
_MISSING = "missing"


class Target(NamedTuple):
    """A number of a stage record (``stages/<stage>.json``), met when ``>= threshold`` and, with
    ``count_key``, measured on at least ``min_count`` items (e.g. positive prompts)."""

    stage: str
    key: str
    what: str
    threshold: float
    count_key: str | None = None
    min_count: int = 0


# lm_ppl_ratio is unigram / validation perplexity (biomed/lm/train.py): "validation perplexity
# at most unigram / 5" is a ratio of at least 5
TARGETS = (
    Target("lm", "lm_ppl_ratio", "unigram / val perplexity (val ppl at most unigram/5)", 5.0),
    Target("classifier", "classifier_clear_macro_auroc", "clear-findings macro AUROC", 0.95),
    # over the held-out report prompts and the templated suite prompts: 30+ positives each
    *(Target("diffusion", f"fidelity_suites_auroc_{f}",
             f"prompt fidelity AUROC, {f} (report + templated prompts, >= 30 positives)", 0.85,
             f"fidelity_suites_n_pos_{f}", 30) for f in ("cardiomegaly", "effusion")))
_HEADLINES = {"corpus": ("pubmed_abstracts",), "reports": ("iu_reports",),
              "lm": ("lm_val_ppl", "lm_unigram_ppl", "lm_steps"),
              "phantom": ("phantom_images", "phantom_reports_used", "phantom_templates"),
              "classifier": ("classifier_macro_auroc", "classifier_lr_accuracy_effusion"),
              "clip": ("clip_zs_auroc_cardiomegaly", "clip_zs_auroc_effusion", "clip_i2t_R@5"),
              "diffusion": ("diffusion_steps", "diffusion_val_loss", "fid_classifier")}
_CSS = """
body{font-family:system-ui,sans-serif;color:#222;max-width:960px;margin:1em auto;padding:0 .8em;
line-height:1.45}h1{font-size:1.5em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.4em 0 1em;
font-size:.9em}th,td{border:1px solid #aaa;padding:.2em .45em;text-align:left;vertical-align:top}
th{background:#eee}.note,.banner{padding:.5em .8em;border:2px solid #0072B2;background:#eaf4fb}
.banner{border-color:#D55E00;background:#fff1e5;font-weight:bold}.missing{color:#555;
font-style:italic}.bad,.notmet{color:#a00}.met{color:#060}.met,.notmet{font-weight:bold}
img{max-width:100%;height:auto;image-rendering:pixelated}figure img{width:min(100%,640px)}
.samples figure img{width:100%}figcaption{font-size:.85em;color:#444}
.samples{display:flex;flex-wrap:wrap;gap:.6em}.samples figure{margin:0;width:200px}
.synth{background:#D55E00;color:#fff;font-weight:bold;padding:0 .3em;font-size:.8em}
"""


# ---------------------------------------------------------------------------------------------
# formatting


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any) -> float | None:
    """A finite number, or None (None, NaN, bools, strings, containers)."""
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{int(v):,}" if isinstance(x, int) else f"{v:.{digits}f}"


def _interval(low: Any, high: Any, digits: int = 3) -> str:
    lo, hi = _num(low), _num(high)
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _ci(x: Any, digits: int = 3, key: str = "value") -> str:
    """``value [low, high]`` from a CI dict, a [value, low, high] list or a plain number."""
    if isinstance(x, dict):
        x = [x.get(key), x.get("ci_low"), x.get("ci_high")]
    if isinstance(x, list | tuple) and len(x) == 3:
        return f"{_f(x[0], digits)} {_interval(x[1], x[2], digits)}".rstrip()
    return _f(x, digits)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _table(head: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """A table whose cells are HTML already (``head``: plain text, None for a key/value table);
    it scrolls sideways on a narrow screen."""
    th = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table>{th}{body}</table></div>'


def _duration(s: Any) -> str:
    v = _num(s)
    return "n/a" if v is None else f"{v:.1f} s" if v < 60 else f"{v // 60:.0f} min {v % 60:.0f} s"


def _verdict(t: Target, rec: Mapping[str, Any]) -> str:
    v, n = _num(rec.get(t.key)), _num(rec.get(t.count_key)) if t.count_key else None
    if v is None:
        return "n/a"
    if t.count_key and (n is None or n < t.min_count):
        got = "no count of" if n is None else f"{n:.0f}"
        return f'<span class="notmet">not met: {got} positives &lt; {t.min_count}</span>'
    return ('<span class="met">met</span>' if v >= t.threshold else
            '<span class="notmet">not met</span>')


# ---------------------------------------------------------------------------------------------
# reading the run folder: a file's data, or a str saying why not (_MISSING, or a sentence naming
# the file), so that a section can say what is wrong instead of stopping the page


class _Run:
    def __init__(self, root: Path) -> None:
        self.root = root

    def json(self, rel: str) -> dict[str, Any] | str:
        return self._read(rel, json.loads, (json.JSONDecodeError,))

    def yaml(self, rel: str) -> dict[str, Any] | str:
        import yaml

        return self._read(rel, yaml.safe_load, (yaml.YAMLError,))

    def _read(self, rel: str, parse: Callable[[str], Any], errors: tuple) -> dict[str, Any] | str:
        path = self.root / rel
        if not path.is_file():
            return _MISSING
        try:
            data = parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, *errors) as e:
            return f"{rel} could not be parsed ({type(e).__name__}: {e})"
        return data if isinstance(data, dict) else f"{rel} could not be parsed (not a mapping)"

    def jsonl(self, rel: str) -> tuple[list[dict[str, Any]], int] | str:
        """(records, lines that are not JSON objects), or why not."""
        path = self.root / rel
        if not path.is_file():
            return _MISSING
        try:
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            return f"{rel} could not be read ({type(e).__name__}: {e})"
        rows = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        rows = [r for r in rows if isinstance(r, dict)]
        return rows, len(lines) - len(rows)


def _absent(rel: str, problem: str, stage: str | None, command: str = "") -> str:
    """The line for a part that did not run, or for a file that could not be parsed."""
    if problem != _MISSING:
        return f'<p class="bad">{_e(problem)}.</p>'
    which = f" (its <code>{_e(stage)}</code> stage; on its own: <code>{_e(command)}</code>)" \
        if stage else ""
    return (f'<p class="missing">Not in this run: <code>{_e(rel)}</code> is missing; run '
            f"<code>biomed quickstart</code>{which} to make it.</p>")


def _figure(run: _Run, rel: str, alt: str, caption: str, max_side: int = 768) -> str:
    """A picture of the run (PNG/JPEG, 16-bit too) as an 8-bit grayscale PNG data URI, at most
    ``max_side`` pixels a side; ``caption`` is HTML already."""
    from biomed.imaging.core.pixels import read_image

    if not (run.root / rel).is_file():
        return f'<p class="missing">No picture: <code>{_e(rel)}</code> is missing.</p>'
    try:
        img = read_image(run.root / rel)  # float32 in [0, 1] whatever the bit depth
        im = Image.fromarray(np.round(img * 255.0).astype(np.uint8), mode="L")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    except (InputError, OSError, ValueError, Image.DecompressionBombError) as e:
        return f'<p class="bad">{_e(rel)} is not a readable image ({_e(e)}).</p>'
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


# ---------------------------------------------------------------------------------------------
# sections


def _header(run: _Run, out: Path) -> str:
    prov, cfg, final = run.json("provenance.json"), run.yaml(".hydra/config.yaml"), \
        run.json("metrics.json")
    argv = [str(a) for a in _get(prov, "argv")] if isinstance(_get(prov, "argv"), list) else []
    smoke = _get(cfg, "debug") == "smoke" or "debug=smoke" in argv
    parts = [
        "<h1>biomed quickstart report</h1>",
        "<p>The quickstart runs every stage of the workbench in order on the embedded data: a "
        "PubMed corpus and a tiny language model, phantom chest X-rays rendered from the "
        "findings of real IU reports, a classifier and a CXR-CLIP trained on them, a small "
        "text-to-X-ray diffusion model, and a small synthetic-augmentation sweep.</p>",
        '<p class="note">The imaging parts (phantom, classifier, CLIP, diffusion, augmentation) '
        "are measured on <b>phantoms</b>: procedural chest X-rays drawn from report findings, "
        "not patients' images. Conclusions about patients need real data.</p>"]
    if smoke:
        parts.append('<p class="banner">This is a debug=smoke run: a few steps of tiny models on '
                     "a tiny subset. Its numbers mean nothing; it only shows that every stage "
                     "runs.</p>")
    if isinstance(prov, str):
        parts.append(_absent("provenance.json", prov, None))
    git, packages = _dict(_get(prov, "git")), _get(prov, "packages")
    cores = _get(prov, "cpu_count")  # runs.start_run does not record it (yet): fall back below
    machine = f"{cores} CPU cores" if cores is not None else \
        f"{os.cpu_count()} CPU cores (counted where this page was built)"
    rows = [("started", _e(_get(prov, "started") or "n/a")),
            ("git commit", _e(f"{git.get('commit') or 'n/a'}"
                              + (" (uncommitted changes)" if git.get("dirty") else ""))),
            ("command", _e(" ".join(argv) or "n/a")),
            ("machine", _e(f"{_get(prov, 'platform') or 'n/a'}; {machine}")),
            ("python", _e(_get(prov, "python") or "n/a")),
            ("packages", _e(", ".join(f"{k} {v}" for k, v in packages.items() if v))
             if isinstance(packages, dict) else "n/a")]
    if isinstance(final, dict):  # absent while the report stage runs: written after it
        rows.append(("status", _e(f"{final.get('status')}"
                                  + (f": {final['error']}" if final.get("error") else ""))))
    for problem in (cfg, final):
        if isinstance(problem, str) and problem != _MISSING:
            rows.append(("unreadable", f'<span class="bad">{_e(problem)}</span>'))
    parts += [_table(None, rows), "<h2>Stages</h2>", _stage_table(run, _get(cfg, "stages"), out)]
    return "\n".join(parts)


def _headline(stage: str, rec: dict[str, Any]) -> list[str]:
    keys = [k for k in _HEADLINES.get(stage, ()) if k in rec]
    if stage not in _HEADLINES:  # a stage this page does not know (augment): its numbers
        keys = [k for k, v in rec.items() if k != "inputs" and not k.endswith("_seconds")
                and (_num(v) is not None or (isinstance(v, list) and len(v) == 3))][:6]
    return [f"{_e(k)} {_ci(rec[k])}" for k in keys]


def _stage_table(run: _Run, configured: Any, out: Path) -> str:
    names = [str(n) for n in configured] if isinstance(configured, list) else list(STAGE_ORDER)
    folder = run.root / "stages"
    names += sorted(p.stem for p in folder.glob("*.json") if p.stem not in names) \
        if folder.is_dir() else []
    rows, total = [], 0.0
    for name in names:
        rec = run.json(f"stages/{name}.json")
        if isinstance(rec, str):
            why = "not run" if rec == _MISSING else _e(rec)
            if name == "report" and rec == _MISSING and out == run.root / "report.html":
                why = "running now: writing this page"
            rows.append([_e(name), "", f'<span class="missing">{why}</span>', "", ""])
            continue
        seconds = _num(rec.get(f"{name}_seconds"))
        total += seconds or 0.0
        targets = [t for t in TARGETS if t.stage == name]
        numbers = _headline(name, rec) + [
            f"{_e(t.key)} {_f(rec.get(t.key))}"
            + (f" ({_f(rec.get(t.count_key))} positives)" if t.count_key else "")
            for t in targets]
        rows.append([_e(name), _duration(seconds), "<br>".join(numbers),
                     "<br>".join(_e(f"{t.what} ≥ {t.threshold:g}") for t in targets),
                     "<br>".join(_verdict(t, rec) for t in targets)])
    rows.append(["<b>total</b>", f"<b>{_duration(total)}</b>", "", "", ""])
    return _table(("stage", "wall time", "headline numbers", "target", "met?"), rows)


def _lm(run: _Run) -> str:
    m = run.json("lm/metrics.json")
    if isinstance(m, str):
        return _absent("lm/metrics.json", m, "lm", "biomed train-lm")
    body = [_table(None, [
        ("validation perplexity", _f(m.get("val_ppl"), 1)),
        ("unigram perplexity (same tokens)", _f(m.get("unigram_ppl"), 1)),
        ("unigram / validation perplexity (target ≥ 5)", _f(m.get("ppl_ratio"), 2)),
        ("steps", _f(m.get("steps"))), ("tokens/s", _f(m.get("tokens_per_s"), 0)),
        ("parameters", _f(m.get("params")))])]
    samples = run.jsonl("lm/samples.jsonl")
    if isinstance(samples, str):
        return body[0] + _absent("lm/samples.jsonl", samples, "lm", "biomed generate-text")
    rows, bad = samples
    items = "".join(f"<li><b>{_e(s.get('prompt'))}</b>{_e(s.get('text'))}</li>" for s in rows)
    body.append(f"<h3>Sampled continuations (prompt in bold)</h3><ol>{items}</ol>")
    if bad:
        body.append(f'<p class="bad">lm/samples.jsonl: {bad} line(s) could not be parsed.</p>')
    return "".join(body)


def _phantom(run: _Run) -> str:
    s = run.json("phantom/stats.json")
    if isinstance(s, str):
        return _absent("phantom/stats.json", s, "phantom",
                       "biomed train-classifier data=phantom_iu")
    rep = _dict(s.get("reports"))
    body = [_table(None, [
        ("IU reports", _f(rep.get("total"))), ("included", _f(rep.get("included"))),
        ("used", _f(rep.get("used"))), ("excluded", _f(rep.get("excluded"))),
        ("renders of reports", _f(s.get("renders"))), ("templated reports", _f(s.get("templates"))),
        ("rows (images)", _f(s.get("rows")))])]
    pos = _dict(s.get("report_positives"))
    if pos:
        body.append("<p>Reports positive per finding: "
                    + ", ".join(f"{_e(k)} {_f(v)}" for k, v in pos.items()) + ".</p>")
    try:
        text = (run.root / "phantom" / "examples.txt").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    caption = "Phantoms (synthetic renders, not patients), left to right, top to bottom:<ol>" + \
        "".join(f"<li>{_e(line)}</li>" for line in text.splitlines()) + "</ol>"
    alt = "Phantom chest X-rays rendered from report findings: " + " | ".join(text.splitlines())
    body.append(_figure(run, "phantom/examples.png", alt[:600], caption, 1024))
    return "".join(body)


def _classifier(run: _Run) -> str:
    m = run.json("classifier/metrics.json")
    if isinstance(m, str):
        return _absent("classifier/metrics.json", m, "classifier", "biomed train-classifier")
    split = str(m.get("eval_split") or "test")
    ev = _dict(m.get(split))
    clear = ev.get("clear_findings_used") or []
    lr = _dict(ev.get("left_right"))
    body = [f"<p>On the held-out phantom {_e(split)} split (n = {_f(ev.get('n'))}); 95% "
            "bootstrap intervals in brackets.</p>",
            _table(None, [
                ("macro AUROC, all findings", _ci(ev.get("macro_auroc") or m.get("macro_auroc"))),
                ("macro AUROC, clear findings (target ≥ 0.95)",
                 _ci(ev.get("clear_macro_auroc") or m.get("clear_macro_auroc"))),
                *((_e(f"left/right accuracy, {k}"),
                   f"{_ci(v, key='accuracy')} (n = {_f(_get(v, 'n'))})") for k, v in lr.items()),
                ("steps", _f(m.get("steps")))])]
    body.append(_table(("finding", "in the clear macro", "positives / negatives",
                        "AUROC [95% CI]", "AP [95% CI]"),
                       ([_e(k), "yes" if k in clear else "", f"{_f(_get(v, 'n_pos'))} / "
                         f"{_f(_get(v, 'n_neg'))}", _ci(_get(v, "auroc")), _ci(_get(v, "ap"))]
                        for k, v in _dict(ev.get("per_label")).items())))
    return "".join(body)


def _clip(run: _Run) -> str:
    m = run.json("clip/metrics.json")
    if isinstance(m, str):
        return _absent("clip/metrics.json", m, "clip", "biomed train-clip")
    zs = _dict(_get(m, "evaluation", "zero_shot"))
    rows = [[_e(k), _ci(_get(zs, k) or m.get(f"zs_auroc_{k}"), key="auroc"),
             f"{_f(_get(zs, k, 'positives'))} / {_f(_get(zs, k, 'negatives'))}"]
            for k in ("cardiomegaly", "effusion")]
    body = [_table(("finding", "zero-shot AUROC [95% CI]", "positives / negatives"), rows)]
    ret = _dict(_get(m, "evaluation", "retrieval"))
    i2t, t2i = _dict(ret.get("image_to_text")), _dict(ret.get("text_to_image"))
    ks = sorted({int(k[2:]) for k in [*i2t, *t2i] if k.startswith("R@") and k[2:].isdigit()})
    body.append(f"<p>Retrieval over {_f(ret.get('images'))} images and {_f(ret.get('texts'))} "
                f"distinct report texts (chance in brackets); {_f(m.get('steps'))} steps.</p>")
    body.append(_table(("k", "image → text R@k", "text → image R@k"),
                       ([str(k), f"{_f(i2t.get(f'R@{k}'))} ({_f(i2t.get(f'chance@{k}'))})",
                         f"{_f(t2i.get(f'R@{k}'))} ({_f(t2i.get(f'chance@{k}'))})"] for k in ks)))
    return "".join(body)


def _samples(run: _Run, limit: int = 8) -> str:
    read = run.jsonl("samples/manifest.jsonl")
    if isinstance(read, str):
        return _absent("samples/manifest.jsonl", read, "diffusion", "biomed generate")
    lines, bad = read
    base, figs = run.root / "samples", []
    for ln in lines[:limit]:
        path = (base / str(ln.get("file") or "")).resolve()
        if not ln.get("file") or not path.is_relative_to(base):  # files inside samples/ only
            continue
        prompt = ln.get("prompt") or f"(prompt withheld; hash {ln.get('prompt_hash', '?')})"
        cap = (f'<span class="synth">SYNTHETIC</span> {_e(prompt)} (seed {_e(ln.get("seed"))}'
               + (", flagged diverged" if ln.get("diverged") else "") + ")")
        figs.append(_figure(run, path.relative_to(run.root).as_posix(),
                            f"SYNTHETIC generated chest X-ray for the prompt: {prompt}", cap, 192))
    note = f'<p class="bad">{bad} manifest line(s) could not be parsed.</p>' if bad else ""
    return (f"<h3>Samples (SYNTHETIC, {len(figs)} of {len(lines) + bad})</h3>"
            f'<div class="samples">{"".join(figs)}</div>{note}')


def _diffusion(run: _Run) -> str:
    m = run.json("diffusion/metrics.json")
    body = [_absent("diffusion/metrics.json", m, "diffusion", "biomed train-diffusion")
            if isinstance(m, str) else
            _table(None, [("steps", _f(m.get("steps"))),
                          ("validation loss", _f(m.get("val_loss"), 4)),
                          ("images/s", _f(m.get("images_per_s"), 1))]),
            _samples(run), "<h3>Evaluation (evaluate-generation)</h3>"]
    ev = run.json("diffusion_eval/metrics.json")
    if isinstance(ev, str):
        return "".join(body) + _absent("diffusion_eval/metrics.json", ev, "diffusion",
                                       "biomed evaluate-generation")
    body.append(f"<p>{_f(ev.get('n_prompts'))} held-out report prompts, "
                f"{_f(ev.get('images_generated'))} images generated ({_f(ev.get('diverged'))} "
                f"flagged diverged); FID in classifier features {_f(ev.get('fid_classifier'), 2)}."
                " Prompt fidelity: the classifier's AUROC at telling images whose prompt states "
                "the finding from the others (target ≥ 0.85 for cardiomegaly and effusion).</p>")
    body.append(_table(("finding", "positives / negatives", "generated [95% CI]",
                        "real phantoms (ceiling)"),
                       [*([_e(k), f"{_f(_get(v, 'n_pos'))} / {_f(_get(v, 'n_neg'))}",
                           _ci(_get(v, "generated")), _ci(_get(v, "real"))]
                          for k, v in _dict(ev.get("fidelity")).items()),
                        ["macro", "", _f(ev.get("fidelity_macro_auroc")),
                         _f(ev.get("real_macro_auroc"))]]))
    with_suites = _dict(ev.get("fidelity_with_suites"))
    if with_suites:
        body.append("<p>The same AUROC over every prompt sampled: the held-out reports and the "
                    "templated prompts of the laterality and negation suites (a templated "
                    "prompt's labels are exact). Most positives here are templated.</p>")
        body.append(_table(("finding", "positives (templated + reports) / negatives",
                            "generated [95% CI]"),
                           ([_e(k), f"{_f(_get(v, 'n_pos'))} ({_f(_get(v, 'n_pos_templated'))}"
                             f" + {_f(_get(v, 'n_pos_held_out'))}) / {_f(_get(v, 'n_neg'))}",
                             _ci(_get(v, "generated"))] for k, v in with_suites.items())))
    suites = [("laterality (side accuracy)", "laterality", "n", "accuracy"),
              ("negation (negated prompt lower)", "negation", "n_pairs", "share")]
    body.append(_table(("suite", "finding", "n", "score [95% CI]"),
                       ([what, _e(k), _f(_get(v, n)),
                         _e(f"skipped: {v['skipped']}") if "skipped" in v else _ci(_get(v, score))]
                        for what, key, n, score in suites
                        for k, v in _dict(ev.get(key)).items() if isinstance(v, dict))))
    if (run.root / "diffusion_eval" / "grid.png").is_file():
        body.append(_figure(run, "diffusion_eval/grid.png", "Evaluation grid: each row a real "
                            "phantom, then SYNTHETIC samples from its report text",
                            "Each row: the real phantom of a held-out report (column 1), then "
                            '<span class="synth">SYNTHETIC</span> samples from its text.'))
    return "".join(body)


def _augment(run: _Run, out: Path) -> str:
    s = run.json("augment/metrics.json")
    if isinstance(s, str):
        return _absent("augment/metrics.json", s, "augment", "biomed augment")
    gains = [g for g in (s.get("gains") or []) if isinstance(g, dict)
             and g.get("endpoint") == "macro_clear" and g.get("subgroup", "all") == "all"]
    cells = _dict(s.get("cells"))
    body = ['<p class="note">A demonstration: the quickstart\'s sweep is small (few cells, few '
            "seeds, small phantom images, a briefly trained generator), so these gains show that "
            "the loop runs end to end, not how much synthetic data helps.</p>",
            f"<p>{_e(s.get('title') or '')} Cells done: {_f(cells.get('done'))} of "
            f"{_f(cells.get('planned', s.get('cells_planned')))}. Primary endpoint: macro AUROC "
            "over the clear findings; gain over the real-only baseline at the same real "
            "fraction, mean over seeds, 95% CI.</p>"]
    head = ("real fraction", "source", "mode", "ratio", "labels", "metric", "baseline", "gain",
            "95% CI", "seeds")
    body.append(_table(head, ([_f(g.get("fraction")), _e(g.get("source")), _e(g.get("mode")),
                               _f(g.get("ratio"), 2),
                               "shuffled" if g.get("shuffled_labels") else "true",
                               _e(g.get("metric")), _f(g.get("baseline")), _f(g.get("value")),
                               _interval(g.get("ci_low"), g.get("ci_high")) or "n/a",
                               _f(g.get("n_seeds"))] for g in gains))
                if gains else "<p>No primary-endpoint rows in augment/metrics.json.</p>")
    report = run.root / "augment" / "report.html"
    href = Path(os.path.relpath(report, out.parent)).as_posix()
    body.append(f'<p>The sweep\'s own page: <a href="{_e(href)}">augment/report.html</a>'
                + ("" if report.is_file() else " (missing)")
                + "; one row per cell and finding: augment/results.csv.</p>")
    return "".join(body)


# ---------------------------------------------------------------------------------------------
# the page


def _section(title: str | None, fn: Callable[[], str]) -> str:
    try:
        inner = fn()
    except Exception as e:  # an unexpected file shape must not stop the page
        inner = (f'<p class="bad">This section could not be drawn from its files ('
                 f"{_e(type(e).__name__)}: {_e(e)}); they may come from another version.</p>")
    return f"<section>{f'<h2>{_e(title)}</h2>' if title else ''}{inner}</section>"


def build_quickstart_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the quickstart's report page for ``run_dir`` (default ``run_dir/report.html``)
    atomically and return its path. Missing or malformed parts are said on the page."""
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(root, "no such quickstart run folder")
    out = Path(out) if out is not None else root / "report.html"
    run = _Run(root.resolve())
    out_abs = out.resolve()
    body = [_section(None, lambda: _header(run, out_abs)),
            _section("Language model", lambda: _lm(run)),
            _section("Phantom chest X-rays", lambda: _phantom(run)),
            _section("Classifier (on phantoms)", lambda: _classifier(run)),
            _section("CXR-CLIP (on phantoms)", lambda: _clip(run)),
            _section("Diffusion: text to X-ray (on phantoms)", lambda: _diffusion(run)),
            _section("Synthetic augmentation (on phantoms)", lambda: _augment(run, out_abs))]
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>biomed quickstart report</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # opened as usual: the umask applies
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
