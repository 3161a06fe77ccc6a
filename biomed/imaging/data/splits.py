"""Train / val / test for the datasets: each row's split, and the three datasets of a config.

`row_splits` gives every row of a loader's table its split: by `biomed.splits.assign_split` of
the patient id (``hash``), or by the dataset's official split (``official``: NIH's
train_val_list.txt / test_list.txt, MIMIC's split CSV, CheXpert's train/valid CSVs, a
``split`` column). Either way no patient is in two splits. `build_splits` turns a ``data``
config into the train, val and test datasets that a training command is handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from biomed.errors import BiomedError, ConfigError
from biomed.imaging.data.contract import Table, XrayDataset
from biomed.splits import SPLITS, assign_split

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["SPLIT_BY", "build_splits", "row_splits"]

SPLIT_BY = ("auto", "hash", "official")


def row_splits(metadata: Table, split_by: str, fractions: Sequence[float], *,
               official_by_default: bool = True, name: str = "data") -> list[str]:
    """The split of every row of ``metadata`` (columns ``patient_id``, optionally
    ``official_split``).

    ``split_by="auto"`` takes the official split where there is one and
    ``official_by_default`` (False for CheXpert, whose official validation set of 200 studies
    has no public test list beside it), else hashes. An official ``trainval`` (NIH) is divided
    by patient in the train:val ratio of ``fractions``.
    """
    fractions = tuple(float(f) for f in fractions)
    try:
        assign_split("check", fractions)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    official = metadata.get("official_split")
    if split_by == "auto":
        split_by = "official" if official is not None and official_by_default else "hash"
    if split_by == "official" and official is None:
        raise ConfigError(f"{name}: this dataset has no official split here; "
                          "use split_by=hash")
    memo: dict[str, str] = {}
    pids = metadata["patient_id"]
    if split_by == "hash":
        return [memo.get(p) or memo.setdefault(p, assign_split(p, fractions)) for p in pids]
    # official: an NIH-style train+val list is divided by patient in the train:val ratio
    tv = fractions[0] + fractions[1]
    tv_fracs = (fractions[0] / tv, fractions[1] / tv) if tv > 0 else (1.0, 0.0)
    out = []
    for o, p in zip(official, pids, strict=True):
        if o == "trainval":
            o = memo.get(p) or memo.setdefault(p, assign_split(p, tv_fracs, ("train", "val")))
        out.append(o)
    return out


def build_splits(data_cfg: DictConfig) -> dict[str, Any]:
    """train / val / test datasets of a ``data`` config: a dataset of the contract
    (`biomed.imaging.data.contract.XrayDataset`) is built once with ``split=None`` and divided
    with ``with_split``; any other class is instantiated once per split."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(data_cfg))
    if missing:
        raise ConfigError(f"data: set {', '.join(f'{k}=...' for k in missing)} on the command "
                          f"line (e.g. data.root=/path/to/the/dataset)")
    try:
        cls = get_class(str(data_cfg._target_))
    except Exception:
        cls = None
    if isinstance(cls, type) and issubclass(cls, XrayDataset):
        full = _instantiate(data_cfg, split=None)
        return {s: full.with_split(s) for s in SPLITS}
    return {s: _instantiate(data_cfg, split=s) for s in SPLITS}


def _instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising the workbench's one-line errors that Hydra wraps."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, BiomedError):
            raise e.__cause__ from None
        raise
