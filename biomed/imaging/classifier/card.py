"""The model card (``README.md``) of a saved classifier: what data it learned from and which
licence terms it inherits (phantoms on IU report text: CC BY-NC-ND 4.0), intended use (research
only), how to load it, how it was trained, and its numbers with bootstrap 95% CIs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["model_card"]


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The ``README.md`` of a saved classifier: data and licence terms, training, metrics."""
    data = str(config.get("training_data") or "unknown")
    ev = metrics.get(metrics.get("eval_split", "test")) or {}
    lines = [
        f"# Chest X-ray classifier ({config['architecture']}, {config['name']})", "",
        "Multi-label classifier of chest radiograph findings, trained with `biomed "
        "train-classifier`. **Research use only: not a medical device, not for diagnosis.**", "",
        "## Data and licence", "",
    ]
    if "phantom" in data:
        lines += [
            f"Trained on `{data}`: **phantom** (procedurally rendered) chest radiographs paired "
            "with real report text of the Indiana University / OpenI chest X-ray collection, "
            "whose findings the phantoms render. The labels come from the IU reports' MeSH tags "
            "(and templated reports for rare findings). The report text is licensed CC BY-NC-ND "
            "4.0 and this model inherits its terms: non-commercial use, attribution, no "
            "modified redistribution of the reports. Numbers measured on phantoms say nothing "
            "about real patients.", ""]
    else:
        lines += [
            f"Trained on `{data}` (data the user brought); the model inherits that dataset's "
            "licence and data-use terms. Research use only.", ""]
    lines += [
        "## Use", "",
        f"Input: {config['pixel_convention']}; input size {config['input_size']}. Output: one "
        "logit per label (sigmoid for probabilities); `thresholds` in `config.json` were chosen "
        f"on the validation split ({config.get('threshold_rule')}).", "",
        "```python", "from biomed.imaging.classifier.model import load_classifier",
        "model, config = load_classifier('path/to/classifier')", "```", "",
        "## Training", "",
        f"Steps {metrics.get('steps')}, {metrics.get('train_seconds', 0):.0f} s of training, "
        f"{metrics.get('params', 0):,} parameters, seed {config.get('seed')}; "
        f"{metrics.get('n_train')} training / {metrics.get('n_val')} validation / "
        f"{metrics.get('n_test')} test images.", "",
        f"## Metrics ({metrics.get('eval_split', 'test')} split, n = {ev.get('n', 0)}; "
        "bootstrap 95% CIs)", "",
    ]
    lines += _metrics_table(ev)
    return "\n".join(lines) + "\n"


def _fmt(est: Mapping[str, float] | None) -> str:
    if not est:
        return "n/a"
    return f"{est['value']:.3f} [{est['ci_low']:.3f}, {est['ci_high']:.3f}]"


def _metrics_table(ev: Mapping[str, Any]) -> list[str]:
    if not ev.get("per_label"):
        return ["No evaluation images."]
    rows = ["| finding | n pos / neg | AUROC | AP | threshold |", "|---|---|---|---|---|"]
    for name, e in ev["per_label"].items():
        rows.append(f"| {name} | {e['n_pos']} / {e['n_neg']} | {_fmt(e['auroc'])} | "
                    f"{_fmt(e['ap'])} | {e['threshold']:.3g} |")
    rows += ["", f"Macro AUROC: {_fmt(ev.get('macro_auroc'))}; over the findings with clear "
             f"signs ({', '.join(ev.get('clear_findings_used', []))}): "
             f"{_fmt(ev.get('clear_macro_auroc'))}. ECE: {ev.get('ece', float('nan')):.3f}."]
    for parent, lr in ev.get("left_right", {}).items():
        if lr.get("accuracy") is not None:
            rows.append(f"Left/right accuracy, {parent}: {_fmt(lr)} (n = {lr['n']}).")
    return rows
