"""Which images evaluate-generation asks for: the held-out report prompts (one per report, with
the rows of their real renders), the laterality suite, the negation suite, and the plan that
puts them together into (prompt, seed) requests.

Seeds: every item has its own stream (:func:`suite_seed` of the run's seed, the suite and the
item), so changing one suite's size leaves the other suites' prompts and images as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biomed.errors import ConfigError
from biomed.imaging.core import pixels
from biomed.imaging.core.findings import SEVERITIES, PhantomFinding
from biomed.imaging.diffusion.evaluate.instruments import ClassifierTool
from biomed.imaging.diffusion.evaluate.settings import EvalSettings
from biomed.imaging.reports.templates import write_report

LATERALITY_FINDINGS = ("effusion", "pneumothorax")
NEGATION_FINDINGS = ("effusion", "pneumothorax", "cardiomegaly")
_HELD_OUT, _LATERALITY, _NEGATION = 0, 1, 2  # seed streams


def suite_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``keys`` (one stream per suite/item)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0]
               & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------
# the suites


@dataclass(frozen=True)
class Case:
    """One suite prompt: its text, the findings it was written from, its image seed."""

    prompt: str
    findings: tuple[PhantomFinding, ...]
    seed: int
    finding: str
    side: str | None = None


@dataclass(frozen=True)
class NegationPair:
    """A normal report and a report stating ``finding``, sampled with one seed."""

    finding: str
    negated: Case
    stated: Case


def _text(findings: Sequence[PhantomFinding], writer: Sequence[int]) -> str:
    """Report text (impression first, then findings: the shape of ``Report.text``)."""
    impression, body = write_report(list(findings), np.random.default_rng(list(writer)))
    return f"{impression} {body}"


def laterality_cases(per_side: int, seed: int = 0,
                     findings: Sequence[str] = LATERALITY_FINDINGS) -> list[Case]:
    """``per_side`` left and ``per_side`` right prompts per finding, severities cycling, each
    with its own wording (writer seed) and image seed."""
    out = []
    for fi, name in enumerate(findings):
        for si, side in enumerate(("left", "right")):
            for k in range(int(per_side)):
                f = PhantomFinding(name, side=side, severity=SEVERITIES[k % len(SEVERITIES)])
                keys = (_LATERALITY, fi, si, k)
                out.append(Case(_text([f], (seed, *keys)), (f,), suite_seed(seed, *keys),
                                name, side))
    return out


def negation_pairs(n_pairs: int, seed: int = 0,
                   findings: Sequence[str] = NEGATION_FINDINGS) -> list[NegationPair]:
    """``n_pairs`` pairs per finding: sides cycle left/right/bilateral for lateral findings,
    severities cycle; both members share the writer seed and the image seed."""
    out = []
    for fi, name in enumerate(findings):
        lateral = PhantomFinding(name).lateral
        for k in range(int(n_pairs)):
            side = ("left", "right", "bilateral")[k % 3] if lateral else None
            f = PhantomFinding(name, side=side, severity=SEVERITIES[(k // 3) % len(SEVERITIES)])
            keys = (_NEGATION, fi, k)
            writer, image = (seed, *keys), suite_seed(seed, *keys)
            out.append(NegationPair(name, Case(_text([], writer), (), image, name),
                                    Case(_text([f], writer), (f,), image, name, side)))
    return out


# ---------------------------------------------------------------------------------------------
# held-out reports


@dataclass
class HeldOut:
    """Held-out report prompts: one per report, with the dataset rows of its renders."""

    prompts: list[str]
    rows: list[list[int]]  # dataset rows of each report; rows[p][0] is the reference image
    labels: np.ndarray  # P x K, the dataset's labels of rows[p][0] (phantoms: exact)
    label_names: list[str]
    sources: list[str]  # metadata "source" (iu / template), "" when the dataset has none
    report_ids: list[str]
    seed: int = 0

    def image_seed(self, p: int, k: int = 0) -> int:
        return suite_seed(self.seed, _HELD_OUT, p, k)


def held_out_prompts(dataset: Any, max_prompts: int | None = None, seed: int = 0) -> HeldOut:
    """One prompt per report of ``dataset`` (rows grouped by metadata ``report_id``/``study_id``,
    else one per row; rows without text skipped); at most ``max_prompts`` reports, drawn with a
    seeded generator so that every source keeps its share, kept in dataset order."""
    meta = getattr(dataset, "metadata", None)
    texts = dataset.reports()  # the dataset contract's accessor: no image is decoded
    column = next((c for c in ("report_id", "study_id") if meta is not None and c in meta), None)
    keys = [str(k) for k in meta[column]] if column else [str(i) for i in range(len(texts))]
    groups: dict[str, list[int]] = {}
    for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
        if text.strip():
            groups.setdefault(key, []).append(i)
    chosen = list(groups)
    if max_prompts is not None and len(chosen) > int(max_prompts):
        pick = np.random.default_rng([int(seed), _HELD_OUT]).choice(
            len(chosen), int(max_prompts), replace=False)
        chosen = [chosen[i] for i in sorted(pick)]
    rows = [groups[k] for k in chosen]
    first = [r[0] for r in rows]
    sources = meta.get("source") if meta is not None else None
    labels = np.asarray(dataset.labels, np.float32)
    return HeldOut([texts[i] for i in first], rows,
                   labels[first] if first else np.zeros((0, labels.shape[1]), np.float32),
                   list(dataset.label_names),
                   [str(sources[i]) if sources else "" for i in first], chosen, int(seed))


def real_images(dataset: Any, rows: Sequence[int], size: tuple[int, int] | None = None
                 ) -> np.ndarray:
    images = [np.asarray(dataset[int(i)]["image"], np.float32) for i in rows]
    if size is not None:
        images = [pixels.resize(im, size) for im in images]
    return np.stack(images)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    held: HeldOut
    diversity: int  # prompts with several samples
    samples: int
    laterality: list[Case]
    negation: list[NegationPair]

    def requests(self) -> list[tuple[str, int]]:
        h = self.held
        out = [(p, h.image_seed(i)) for i, p in enumerate(h.prompts)]
        out += [(h.prompts[i], h.image_seed(i, k)) for i in range(self.diversity)
                for k in range(self.samples)]
        out += [(c.prompt, c.seed) for c in self.laterality]
        out += [(c.prompt, c.seed) for p in self.negation for c in (p.negated, p.stated)]
        return out

    def suite_cases(self) -> list[Case]:
        """Every templated prompt: the laterality cases, then both members of each pair."""
        return [*self.laterality, *(c for p in self.negation for c in (p.negated, p.stated))]

    def suite_findings(self) -> list[str]:
        """The findings the suites state (laterality's, then negation's), each once."""
        return list(dict.fromkeys([*(c.finding for c in self.laterality),
                                   *(p.finding for p in self.negation)]))

    def samples_of(self, bank: Mapping, i: int) -> np.ndarray:
        return np.stack([bank[(self.held.prompts[i], self.held.image_seed(i, k))]
                         for k in range(self.samples)])


def make_plan(dataset: Any, tool: ClassifierTool, st: EvalSettings, seed: int) -> Plan:
    held = held_out_prompts(dataset, st.max_prompts, seed)
    if not held.prompts:
        raise ConfigError(f"{getattr(dataset, 'name', 'the data')}: no held-out items with "
                          "report text to prompt with")
    sided = [f for f in LATERALITY_FINDINGS
             if tool.index(f"{f}_left") is not None and tool.index(f"{f}_right") is not None]
    known = [f for f in NEGATION_FINDINGS if tool.index(f) is not None]
    return Plan(held, min(int(st.diversity_prompts), len(held.prompts)),
                 int(st.samples_per_prompt_diversity),
                 laterality_cases(st.laterality_per_side, seed, sided),
                 negation_pairs(st.negation_pairs, seed, known))
