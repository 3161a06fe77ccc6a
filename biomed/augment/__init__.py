"""The synthetic-augmentation loop (`biomed augment`) and its Dataset plugin.

- `biomed.augment.sweep`: the grid of cells, the step budget, the synthetic cache, the run.
- `biomed.augment.cell`: one classifier fit on a real subset plus synthetic images.
- `biomed.augment.report`: results.csv, metrics.json and report.html from the cells' folders.
- `biomed.augment.plugin`: `SyntheticAugmented`, a `torch.utils.data.Dataset` wrapper that adds
  synthetic samples to any classifier's dataset (``from biomed.augment import
  SyntheticAugmented``).

Attributes load on first use, so that importing the package imports neither the sweep (and
Hydra) nor the plugin.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SyntheticAugmented"]


def __getattr__(name: str) -> Any:
    if name == "SyntheticAugmented":
        from biomed.augment.plugin import SyntheticAugmented

        return SyntheticAugmented
    raise AttributeError(f"module 'biomed.augment' has no attribute {name!r}")
