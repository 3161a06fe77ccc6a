"""Where synthetic images come from: a text-to-X-ray generator or the phantom oracle.

Both make images for `biomed.augment.cache.Request` batches and say what to record beside each
image. ``duplicates`` (copies of the real subset, the control) and ``none`` need no source.

- `DiffusionSource`: any `biomed.imaging.diffusion.sample.Generator` (a saved pipeline through
  `PipelineGenerator`, or a user's own); its ``id`` keys the cache.
- `OracleSource`: the phantom renderer drawing the prompt row's own findings (the sides the
  dataset's render drew) with a new seed: perfectly labelled images of the test distribution.
  Its seeds are kept apart from the dataset's render seeds (`oracle_seed`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from biomed.augment.cache import Request
from biomed.augment.subsets import unit_hash

__all__ = ["DiffusionSource", "OracleSource", "SOURCES", "oracle_seed"]

SOURCES = ("none", "diffusion", "phantom_oracle", "duplicates")


class DiffusionSource:
    """Images from a `Generator` (prompts and seeds -> ``Samples``)."""

    name = "diffusion"

    def __init__(self, generator: Any, *, trained_on: str | None = None):
        self.generator = generator
        self.id = f"diffusion-{generator.id}"
        self.batch_size = int(getattr(generator, "batch_size", 16))
        self.trained_on = trained_on

    def make(self, batch: list[Request]) -> tuple[np.ndarray, np.ndarray]:
        samples = self.generator([r.text for r in batch], [r.seed for r in batch])
        return np.asarray(samples.images, np.float32), np.asarray(samples.diverged, bool)

    def provenance(self, r: Request) -> dict[str, Any]:
        return {"source": self.name, **self.generator.provenance(r.text, r.seed)}

    def describe(self) -> dict[str, Any]:
        g = self.generator
        return {"source": self.name, "id": self.id, "model_id": getattr(g, "model_id", None),
                "generator_id": g.id, "trained_on": self.trained_on,
                "sampler": {k: getattr(g, k, None) for k in ("scheduler", "steps", "guidance")}}


def oracle_seed(synthetic_seed: int, k: int, avoid: set[int] | frozenset[int] = frozenset()
                ) -> int:
    """The render seed of oracle image ``k``: a 31-bit hash in its own domain, redrawn until it
    is none of ``avoid`` (the dataset's own render seeds)."""
    attempt = 0
    while True:
        seed = int(unit_hash("oracle", synthetic_seed, k, attempt) * 2**31)
        if seed not in avoid:
            return seed
        attempt += 1


class OracleSource:
    """The phantom renderer drawing each request's findings (JSON strings of the dataset's
    drawn findings) at ``size`` px."""

    name = "phantom_oracle"

    def __init__(self, size: int, renderer: str | None = None, batch_size: int = 64):
        from biomed.imaging.phantom.dataset import _load, default_renderer, renderer_version

        self.size = int(size)
        self.render = _load(renderer) if renderer else default_renderer()
        self.version = renderer_version(self.render)
        key = hashlib.sha256(json.dumps([self.version, self.size]).encode()).hexdigest()[:20]
        self.id = f"phantom_oracle-{key}"
        self.batch_size = int(batch_size)

    def make(self, batch: list[Request]) -> tuple[np.ndarray, np.ndarray]:
        from biomed.imaging.core.findings import parse_findings

        images = []
        for r in batch:
            drawn = parse_findings(json.loads(f) for f in (r.findings or ()))
            img, _ = self.render(drawn, seed=int(r.seed), size=self.size)
            images.append(np.asarray(img, np.float32))
        return np.stack(images), np.zeros(len(batch), bool)

    def provenance(self, r: Request) -> dict[str, Any]:
        return {"source": self.name, "renderer": self.version, "seed": int(r.seed),
                "findings": [json.loads(f) for f in (r.findings or ())], "size": self.size}

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "id": self.id, "renderer": self.version, "size": self.size}


def findings_key(findings: Iterable[Mapping[str, Any]] | None) -> tuple[str, ...] | None:
    """The hashable form of a prompt row's findings for a `Request`."""
    if findings is None:
        return None
    return tuple(json.dumps(f, sort_keys=True) for f in findings)
