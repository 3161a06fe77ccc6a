"""How well a synthetic set's images carry their prompts' labels: the fidelity classifier's
agreement, per finding.

The classifier is ``fidelity.classifier_dir`` when given (the quickstart passes its own
classifier stage's), else the sweep's own most-real one: the ratio-0 cell of the largest real
fraction (1.0 in the default grid) of the step-selection seed, trained and thresholded on real
images only. Images are resized to the classifier's input size. On each source's synthetic images (the largest planned set) it gives, per finding, the
AUROC of its probability against the prompt's label, its accuracy at its own validation
thresholds, and the number of positive prompts. For the oracle, whose labels are exact, the
numbers say how well the classifier reads phantoms; for a generator they are the measured label
accuracy of its images (as good as that classifier is: compare with the oracle's row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomed import runs
from biomed.stats import weighted_auroc

__all__ = ["label_accuracy", "measure_fidelity"]


def label_accuracy(probs: np.ndarray, labels: np.ndarray, names: list[str],
                   thresholds: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Per finding: AUROC, accuracy at ``thresholds`` (0.5 where missing), positives, known."""
    out = {}
    for j, name in enumerate(names):
        y = labels[:, j]
        known = ~np.isnan(y)
        if not known.any():
            continue
        t = float((thresholds or {}).get(name, 0.5))
        pred = probs[known, j] >= t
        out[name] = {"auroc": _f(weighted_auroc(y[known], probs[known, j])),
                     "accuracy": _f(float(np.mean(pred == (y[known] == 1)))),
                     "n_pos": int(np.sum(y[known] == 1)), "n": int(known.sum())}
    return out


def _f(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def measure_fidelity(sweep, log=print) -> dict[str, Any]:
    """Write ``label_accuracy`` into ``synthetic/<source>.json`` for every source of the sweep
    (see the module docstring); returns them by source."""
    import json

    from biomed.augment.synthetic import resize
    from biomed.imaging.classifier.model import load_classifier, predict_batches

    given = (sweep.cfg.get("fidelity") or {}).get("classifier_dir")
    if given:
        model, config = load_classifier(given)
        described = {"classifier": Path(str(given)).name}
    else:
        baselines = [c for c in sweep.cells if c.ratio == 0
                     and c.seed == int(sweep.cfg.steps.selection_seed)
                     and (sweep.cell_dir(c) / "DONE").exists()]
        if not baselines:
            return {}
        ref = max(baselines, key=lambda c: c.fraction)
        model, config = load_classifier(sweep.cell_dir(ref) / "classifier")
        described = {"cell": ref.name, "fraction": ref.fraction}
    size = tuple(config.get("input_size") or ()) or None
    out = {}
    for path in sorted((sweep.dir / "synthetic").glob("*.json")):
        name = path.stem
        cells = [c for c in sweep.cells if c.source == name and not c.shuffled_labels]
        if not cells:
            continue
        ds = sweep.synthetic_set(max(cells, key=lambda c: c.ratio))
        if ds is None or len(ds) == 0:
            continue
        import torch

        stack = np.stack([ds.image(i) for i in range(len(ds))])
        images = torch.from_numpy(resize(stack, size) if size else stack)[:, None]
        probs = predict_batches(model, images, 128)
        names = [n for n in config["labels"] if n in ds.label_names]
        probs = probs[:, [list(config["labels"]).index(n) for n in names]]
        cols = [ds.label_names.index(n) for n in names]
        acc = label_accuracy(probs, np.asarray(ds.labels)[:, cols], names,
                             config.get("thresholds"))
        record = json.loads(path.read_text())
        record["label_accuracy"] = acc
        record["fidelity_classifier"] = {**described, "images": len(ds)}
        runs.write_json(path, record)
        out[name] = acc
        shown = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in acc.items()
                          if k in ("cardiomegaly", "effusion") and v["auroc"] is not None)
        log(f"augment: {name}: label agreement (AUROC of the fidelity classifier) {shown}")
    return out
