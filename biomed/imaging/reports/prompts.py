"""Prompt filters: what of a report's text a text-to-image model is conditioned on.

A radiology report denies far more than it affirms: nearly every IU report and every templated
one says "No pleural effusion or pneumothorax.", so the words *pleural effusion* sit in the
prompts of normal, cardiomegaly and pneumothorax images alike. A frozen sentence encoder (MiniLM,
CLIP's text tower) represents "no effusion" close to "effusion" (negation is a known weakness of
contrastive text encoders), and a UNet trained for a few hundred steps learns the words, not the
negation: the quickstart's model drew effusion-like bases for *any* stated finding (a
pneumothorax prompt read p(effusion) 0.86 with the fidelity classifier, against 0.01 for real
pneumothorax phantoms; `docs/results.md#quickstart-end-to-end`).

``drop_negated`` removes what the report denies before the text reaches the encoder, the way
NegEx scopes a negation (Chapman et al., J Biomed Inform 2001; the triggers and pseudo-triggers of
`biomed.imaging.reports.mentions`): from a negation trigger to the end of its clause. A sentence
left without content ("There is.") goes; a text left empty keeps its first sentence, so a normal
report still reads as normal ("No acute cardiopulmonary abnormality."). Applied to the training
prompts and, from the pipeline's ``biomed.json``, to every prompt the sampler gets, so training
and sampling see the same text.
"""

from __future__ import annotations

import re

from biomed.errors import ConfigError
from biomed.imaging.reports.mentions import _PRE_NEGATION, _PSEUDO

__all__ = ["PROMPT_FILTERS", "apply_prompt_filter", "check_prompt_filter", "drop_negated"]

PROMPT_FILTERS = ("none", "drop_negated")

# a sentence ends at . ; ! ? followed by a space (or the end), not inside "3.5 cm" or "1. "
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")
_LIST_NUMBER = re.compile(r"^\d{1,2}\.\s*")
# where a negation's scope ends inside a sentence (NegEx: a clause boundary or "but"; not a
# comma, which mostly continues the list a negation denies: "no effusion, pneumothorax or ...")
_CLAUSE_END = re.compile(r"[;:]|,?\s(?:but|however|although|though|whereas)\s")
# "there is" before a trigger belongs to the denied clause ("There is no pneumothorax")
_THERE_IS = re.compile(r"there (?:is|are|was|were)\s+$")
# what a sentence is once its denied clause is gone and nothing is left to say
_EMPTY_REST = re.compile(r"^(?:there (?:is|are|was|were)|(?:is|are|was|were|has|have|with|and|"
                         r"or|seen|identified|noted))?$")
_COPULA_END = re.compile(r"\b(?:is|are|was|were|appears?|seems?|remains?)$")


def check_prompt_filter(name: str | None) -> str:
    """The filter's name ("none" for None); `ConfigError` naming the choices otherwise."""
    name = "none" if name in (None, "") else str(name)
    if name not in PROMPT_FILTERS:
        raise ConfigError(f"diffusion.prompt_filter={name!r}: one of {', '.join(PROMPT_FILTERS)}")
    return name


def _undenied(sentence: str) -> str:
    """``sentence`` without its negated clauses ("" when nothing of substance is left)."""
    lower = sentence.lower()
    pseudo = [m.span() for m in _PSEUDO.finditer(lower)]
    cuts = []
    for m in _PRE_NEGATION.finditer(lower):
        if any(a <= m.start() < b for a, b in pseudo):
            continue  # "no change in the effusion" denies nothing
        end = _CLAUSE_END.search(lower, m.end())
        there = _THERE_IS.search(lower, 0, m.start())
        cuts.append((there.start() if there else m.start(), end.end() if end else len(sentence)))
    if not cuts:
        return sentence
    kept, pos = [], 0
    for a, b in cuts:
        if a >= pos:
            kept.append(sentence[pos:a])
            pos = b
    kept.append(sentence[pos:])
    rest = " ".join("".join(kept).split()).strip(" ,;:.")
    words = re.sub(r"[^a-z ]", " ", rest.lower()).split()
    if not words or _EMPTY_REST.match(" ".join(words)) or _COPULA_END.search(" ".join(words)):
        return ""
    return rest[0].upper() + rest[1:] + "."


def drop_negated(text: str) -> str:
    """``text`` without what it denies: each sentence's negated clauses removed, sentences left
    empty dropped; the first sentence kept when nothing else is left. Whitespace collapsed."""
    text = " ".join(str(text or "").split())
    if not text:
        return ""
    sentences = _SENTENCE.split(text)
    kept = []
    for s in sentences:
        number = _LIST_NUMBER.match(s)
        body = s[number.end():] if number else s
        if body and (rest := _undenied(body)):
            kept.append(rest)
    return " ".join(kept) if kept else sentences[0]


def apply_prompt_filter(name: str | None, prompts: list[str]) -> list[str]:
    """``prompts`` through the filter ``name`` (`PROMPT_FILTERS`)."""
    if check_prompt_filter(name) == "none":
        return list(prompts)
    return [drop_negated(p) for p in prompts]
