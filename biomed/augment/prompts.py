"""The prompts synthetic images are drawn from, and their labels.

A `PromptPool` is a list of candidate prompts, each with a key (for the seeded order and the
cache), the report text, the findings to draw (for the phantom oracle; None on real data) and
its labels in the classifier's label space. The labels of a synthetic image are its prompt's.

Pools (``prompts.pool``):

- ``train`` (the default): every row of the real training split, i.e. the reports the generator
  was trained on when it was trained on this data (the summary records which pool trained it).
  A report rendered three times gives three candidates, each with its own drawn findings.
- ``subset``: only the rows of the cell's own real subset.

Policies (``prompts.policy``) order the candidates (`biomed.augment.subsets`):

- ``pool``: uniformly, by a seeded hash.
- ``balanced``: rows with rare findings come early more often: a row's weight is the LVIS
  repeat factor of its rarest positive finding, ``max(1, sqrt(t / f))`` for a finding of pool
  share ``f`` (threshold ``t``, 0.2 as the reference generator's sampling).
- ``targeted``: templated reports of chosen findings instead of the pool
  (`biomed.imaging.reports.templates`, every side and severity in turn; a template seed apart
  from the dataset's own templates).

Side columns. A phantom row's side columns (``effusion_left``...) are those of the side the
renderer drew, which the report text may not state. The oracle redraws the row's drawn findings,
so its labels are exact; for a generated image only the text is known, so `PromptPool` marks
side columns unknown (NaN, skipped by the masked loss) on its ``text_labels``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.core.findings import labels_of, parse_findings
from biomed.imaging.core.labels import CANONICAL_NAMES, SIDED

__all__ = ["POLICIES", "POOLS", "PromptPool", "prompt_pool", "repeat_weights"]

POOLS = ("train", "subset")
POLICIES = ("pool", "balanced", "targeted")
_SIDE_COLUMNS = frozenset(c for pair in SIDED.values() for c in pair)


@dataclass
class PromptPool:
    """Candidate prompts (row-aligned lists and arrays)."""

    keys: list[str]
    texts: list[str]
    findings: list[list[dict]] | None  # drawn findings per candidate (phantom data), else None
    labels: np.ndarray  # N x K, exact (what the oracle draws), label_names order
    label_names: list[str]
    weights: np.ndarray  # N, for the balanced policy (1 = uniform)
    description: str

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def text_labels(self) -> np.ndarray:
        """The labels a reader of the text alone knows: side columns unknown (NaN)."""
        out = self.labels.copy()
        for j, name in enumerate(self.label_names):
            if name in _SIDE_COLUMNS:
                out[:, j] = np.nan
        return out


def repeat_weights(labels: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """LVIS repeat factors (Gupta et al. 2019) of rows: ``max(1, max_c sqrt(t / f_c))`` over the
    row's positive columns ``c``, ``f_c`` the column's positive share."""
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0)
    share = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
    factor = np.where(share > 0, np.sqrt(threshold / np.maximum(share, 1e-12)), 1.0)
    per_row = np.where(y == 1, factor[None, :], 1.0).max(axis=1, initial=1.0)
    return np.maximum(per_row, 1.0)


def _from_dataset(ds, description: str) -> PromptPool:
    m = ds.metadata
    findings = [json.loads(f) for f in m["findings"]] if "findings" in m else None
    return PromptPool(keys=[str(i) for i in m["id"]], texts=ds.reports(), findings=findings,
                      labels=np.asarray(ds.labels, np.float32).copy(),
                      label_names=list(ds.label_names),
                      weights=np.ones(len(ds)), description=description)


def _targeted(findings: Sequence[str], per_finding: int, seed: int,
              label_names: Sequence[str]) -> PromptPool:
    from biomed.imaging.reports.templates import FINDING_NAMES, template_cases

    unknown = [f for f in findings if f not in FINDING_NAMES]
    if unknown or not findings:
        raise ConfigError(f"prompts.targeted_findings={list(findings)}: choose findings the "
                          f"templates write ({', '.join(FINDING_NAMES)})")
    cases = template_cases(int(per_finding), seed, names=list(findings))
    canon = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    missing = [n for n in label_names if n not in canon]
    if missing:
        raise ConfigError(f"prompts.policy=targeted: labels {missing} are not canonical names; "
                          "targeted templates need data in the canonical label space")
    cols = [canon[n] for n in label_names]
    labels = np.stack([labels_of(parse_findings(c.findings))[cols] for c in cases])
    return PromptPool(keys=[c.id for c in cases], texts=[c.text for c in cases],
                      findings=[[f.to_dict() for f in c.findings] for c in cases],
                      labels=labels.astype(np.float32), label_names=list(label_names),
                      weights=np.ones(len(cases)),
                      description=f"{len(cases)} templated reports of "
                                  f"{', '.join(findings)} (template seed {seed})")


def prompt_pool(pool: str, policy: str, train, subset, *, targeted_findings: Sequence[str] = (),
                targeted_per_finding: int = 200, template_seed: int = 10_000,
                repeat_threshold: float = 0.2) -> PromptPool:
    """The candidates of a cell: ``train`` is the whole real training split, ``subset`` the
    cell's real subset (datasets of the contract)."""
    if pool not in POOLS:
        raise ConfigError(f"prompts.pool={pool!r}: choose one of {', '.join(POOLS)}")
    if policy not in POLICIES:
        raise ConfigError(f"prompts.policy={policy!r}: choose one of {', '.join(POLICIES)}")
    if policy == "targeted":
        return _targeted(list(targeted_findings), targeted_per_finding, template_seed,
                         train.label_names)
    ds = train if pool == "train" else subset
    if not ds.has_reports:
        raise ConfigError(f"{ds.name}: its rows have no report text to prompt a generator "
                          "with; use prompts.policy=targeted or source=phantom_oracle")
    n_reports = len(set(ds.metadata["patient_id"]))
    what = "the whole real training split" if pool == "train" else "the cell's real subset"
    out = _from_dataset(ds, f"{what} ({len(ds)} rows, {n_reports} reports)")
    if policy == "balanced":
        out.weights = repeat_weights(out.labels, repeat_threshold)
        out.description += f", rare findings oversampled (repeat factors, t={repeat_threshold})"
    return out
