"""`SyntheticAugmented`: synthetic X-rays added to any classifier's training `Dataset`.

The augmentation loop's synthetic set (`biomed.augment.synthetic`) as a plugin for someone
else's training script: wrap the real training dataset, and the wrapper is that dataset plus
``round(ratio * len(dataset))`` synthetic items, in the wrapped dataset's own item format::

    from biomed.augment.plugin import SyntheticAugmented
    from biomed.imaging.diffusion.sample import PipelineGenerator

    gen = PipelineGenerator("outputs/quickstart/latest/diffusion")  # or your own Generator
    train = SyntheticAugmented(my_train_set, ratio=1.0, generator=gen, prompts=reports,
                               prompt_labels=labels, label_names=names, transform=my_transform,
                               image_format="pil", cache_dir="synthetic_cache")
    loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=2)

Items ``0 .. len(dataset) - 1`` are the wrapped dataset's own, untouched; the rest are synthetic
item ``j = index - len(dataset)``.

Prompts and labels. A dataset of the workbench contract (`biomed.imaging.data.contract.
XrayDataset`) with report text prompts with its own reports and labels (`prompt_pool`); side
columns (``effusion_left``...) are unknown (NaN) on a generated image, since a report may not
say the side (`biomed.augment.prompts`). Any other dataset needs ``prompts`` (report texts) and
``prompt_labels`` (one row of K labels per prompt, in ``label_names`` order). The workbench has
no reader that labels free report text across a label space (`biomed.imaging.reports.findings`
maps the IU reports' MeSH tags, not text; `biomed.imaging.reports.mentions` reads three findings
and only to check labels), so ``prompt_labels`` is required. **The label of a synthetic image is
its prompt's label**: it is right only as far as the generator draws what the prompt says (its
fidelity: ``biomed evaluate-generation``).

Which prompts. ``policy="pool"`` takes the prompts in a seeded uniform order, ``"balanced"``
with rare findings first more often (LVIS repeat factors, `biomed.augment.prompts.
repeat_weights`); both through `biomed.augment.synthetic.plan`, so for one ``seed`` the items of
ratio 1 are the first items of ratio 4, and past the end of the pool the order repeats with new
image seeds.

Images are made once, at construction, through `biomed.augment.cache.SyntheticCache` (one image
per generator id, prompt and seed): with ``cache_dir`` they are kept and a later construction
(another run, another ratio) reuses them; without it they go to a temporary folder, removed
once read. With ``cache_dir`` and no generator, every planned image must already be in the cache
(cache-only mode). Images the sampler flagged as diverged are left out (``dropped_diverged``).
The kept images are held in memory as uint16 (``round(x * 65535)``, as the cache stores them),
resized to ``image_size`` or else to the wrapped dataset's image size where it can be found; no
generator is kept, so the wrapper pickles into DataLoader workers.

Item formats (``output``; ``"auto"`` follows ``dataset[0]``):

- ``"dict"`` (the workbench contract): ``image`` float32 H x W in [0, 1] (then ``transform``),
  ``labels`` float32 K, ``id`` ``synthetic-<j>``, ``index`` (the wrapper's index), ``report``
  (the prompt). Every other key of the real items gets a blank of the same kind (``""``, -1,
  NaN, False, a blank array; ``patient_id`` ``syn:<prompt key>``), and no key is added: a
  batch mixing real and synthetic items must have the same keys to collate. Tell synthetic
  items apart by ``index >= n_real`` (`is_synthetic`) or the ``synthetic-`` id.
- ``"tuple"`` (torchvision style): ``(transform(image), labels)``, the image a PIL ``"L"`` image
  (8-bit) for ``image_format="pil"`` or a float32 1 x H x W tensor for ``"tensor"``; the labels
  a float32 tensor (a numpy array when the real items' are) in ``label_names`` order, NaN
  unknown. Pass the transform your dataset applies, so that both kinds of item match.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biomed.augment.cache import Request, SyntheticCache
from biomed.augment.prompts import PromptPool, prompt_pool, repeat_weights
from biomed.augment.sources import DiffusionSource
from biomed.augment.synthetic import Planned, plan, requests, resize
from biomed.errors import ConfigError
from biomed.imaging.core.pixels import to_uint16
from biomed.imaging.data.contract import XrayDataset

__all__ = ["IMAGE_FORMATS", "OUTPUTS", "POLICIES", "SyntheticAugmented"]

POLICIES = ("pool", "balanced")
OUTPUTS = ("auto", "dict", "tuple")
IMAGE_FORMATS = ("tensor", "pil")
_SOURCE = "diffusion"  # the source name the cache requests are made for (no oracle findings)
_OURS = frozenset({"image", "labels", "id", "index", "report", "patient_id"})  # dict item keys


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"SyntheticAugmented: {name}={value!r}: choose one of "
                          f"{', '.join(choices)}")
    return value


class SyntheticAugmented(Dataset):
    """A dataset plus synthetic items (see the module docstring).

    Args:
        dataset: the real training dataset (dict items of the contract, or (image, labels)).
        ratio: synthetic items per real item (``round(ratio * len(dataset))`` are planned).
        generator: a `biomed.imaging.diffusion.sample.Generator` (e.g. ``PipelineGenerator``).
        cache_dir: where images are kept by (generator id, prompt, seed); alone, the images
            must be there already.
        source_id: cache-only mode: the source folder under ``cache_dir`` (``diffusion-<id>``),
            found when there is one only.
        prompts / prompt_labels / label_names: report texts, N x K labels, the K names (not
            needed for a contract dataset with report text; a dataset with ``label_names``
            gives them).
        policy: ``pool`` or ``balanced``.
        transform: applied to each synthetic image (the numpy array, the PIL image or the
            tensor, by format).
        image_format: ``tensor`` or ``pil``, the image given to ``transform`` in tuple output.
        seed: the synthetic seed (prompt order and image seeds).
        image_size: side (or (H, W)) of the synthetic images; default the dataset's.
        output: ``auto``, ``dict`` or ``tuple``.
        progress: show a progress bar while images are made.
    """

    def __init__(self, dataset: Any, *, ratio: float, generator: Any = None,
                 cache_dir: str | Path | None = None, source_id: str | None = None,
                 prompts: Sequence[str] | None = None, prompt_labels: Any = None,
                 label_names: Sequence[str] | None = None, policy: str = "pool",
                 transform: Callable[[Any], Any] | None = None, image_format: str = "tensor",
                 seed: int = 0, image_size: int | Sequence[int] | None = None,
                 output: str = "auto", progress: bool = False):
        self.policy = _choice("policy", policy, POLICIES)
        self.image_format = _choice("image_format", image_format, IMAGE_FORMATS)
        _choice("output", output, OUTPUTS)
        ratio = float(ratio)
        if not np.isfinite(ratio) or ratio < 0:
            raise ConfigError(f"SyntheticAugmented: ratio={ratio}: must be a number >= 0")
        self.dataset = dataset
        self.ratio, self.seed, self.transform = ratio, int(seed), transform
        self.n_real = len(dataset)
        self.n_planned = round(ratio * self.n_real)
        first = dataset[0] if self.n_real else None
        self.output = output if output != "auto" else (
            "dict" if isinstance(first, Mapping) else "tuple")
        pool = self._pool(dataset, prompts, prompt_labels, label_names)
        self.label_names: list[str] = list(pool.label_names)
        self.prompts_description = pool.description
        self._template = self._check_template(first)
        items = plan(pool, self.n_planned, self.seed, self.policy, _render_seeds(dataset))
        self.source_id: str | None = None
        self.cache_folder: Path | None = None  # None: a temporary folder, removed
        self.cache_stats: dict[str, Any] = {"requested": 0, "generated": 0, "from_cache": 0,
                                            "seconds": 0.0}
        self.dropped_diverged = 0
        size = _target_size(dataset, image_size, first)
        self._load(pool, items, generator, cache_dir, source_id, size, progress)

    # -- construction ---------------------------------------------------------------------

    def _pool(self, dataset: Any, prompts: Sequence[str] | None, prompt_labels: Any,
              label_names: Sequence[str] | None) -> PromptPool:
        """The candidates: the contract dataset's own reports, or the user's prompts."""
        if prompts is None:
            if prompt_labels is not None:
                raise ConfigError("SyntheticAugmented: prompt_labels=... needs prompts=... "
                                  "(the report texts they label)")
            if not isinstance(dataset, XrayDataset):
                raise ConfigError(
                    f"SyntheticAugmented: {type(dataset).__name__} is not a workbench "
                    "XrayDataset with report text: pass prompts=[report texts] and "
                    "prompt_labels=[one row of labels per prompt] with label_names")
            pool = prompt_pool("train", self.policy, dataset, dataset)
            rows = [i for i, t in enumerate(pool.texts) if t.strip()]
            if not rows:
                raise ConfigError(f"{dataset.name}: no row has report text to prompt the "
                                  "generator with; pass prompts=... and prompt_labels=...")
            # a generated image's labels: what the text says (side columns unknown)
            _same_names(dataset, label_names)
            return _rows(pool, rows, pool.text_labels[rows])
        if isinstance(prompts, str):
            raise ConfigError("SyntheticAugmented: prompts= takes a list of report texts, "
                              "not one string")
        texts = [str(p) for p in prompts]
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if not texts or blank:
            raise ConfigError(f"SyntheticAugmented: prompts: give non-empty report texts "
                              f"({'none given' if not texts else f'prompt {blank[0]} is empty'})")
        if prompt_labels is None:
            raise ConfigError(
                "SyntheticAugmented: prompts=... needs prompt_labels=... (one row of labels per "
                "prompt, in label_names order): the workbench has no reader that labels free "
                "report text")
        _same_names(dataset, label_names)
        names = label_names if label_names is not None else getattr(dataset, "label_names",
                                                                    None)
        if names is None:
            raise ConfigError("SyntheticAugmented: prompt_labels=... needs label_names=... "
                              "(the name of each label column)")
        y = np.asarray(prompt_labels, dtype=np.float32)
        if y.ndim == 1 and len(names) == 1:
            y = y[:, None]
        if y.shape != (len(texts), len(names)):
            raise ConfigError(f"SyntheticAugmented: prompt_labels has shape {y.shape}; expected "
                              f"({len(texts)}, {len(names)}): one row per prompt, one column "
                              "per label name")
        known = y[~np.isnan(y)]
        if np.any((known < 0) | (known > 1)):
            raise ConfigError("SyntheticAugmented: prompt_labels: values must be in [0, 1] "
                              "(1 present, 0 absent) or NaN (unknown)")
        weights = repeat_weights(y) if self.policy == "balanced" else np.ones(len(texts))
        return PromptPool(keys=[f"prompt-{i}" for i in range(len(texts))], texts=texts,
                          findings=None, labels=y, label_names=[str(n) for n in names],
                          weights=weights, description=f"{len(texts)} given prompts")

    def _check_template(self, first: Any) -> Any:
        """What synthetic items copy from the real items' layout to collate with them: for
        dicts, each key with None (a value of ours) or the blank to fill it with; for tuples,
        the real labels (their type and dtype)."""
        k = len(self.label_names)
        if self.output == "dict":
            if not isinstance(first, Mapping):
                return None  # no real item to match (or the user asked for dicts anyway)
            labels = first.get("labels")
            if labels is not None and np.shape(labels) != (k,):
                raise ConfigError(f"SyntheticAugmented: the dataset's labels have shape "
                                  f"{tuple(np.shape(labels))} but label_names has {k} names")
            return {key: None if key in _OURS else _blank(key, value)
                    for key, value in first.items()}
        if not isinstance(first, tuple | list):
            return None
        if len(first) != 2:
            raise ConfigError(f"SyntheticAugmented: the dataset's items are tuples of "
                              f"{len(first)}; tuple output makes (image, labels) pairs")
        if np.shape(first[1]) != (k,):
            raise ConfigError(f"SyntheticAugmented: the dataset's labels have shape "
                              f"{tuple(np.shape(first[1]))} but label_names has {k} names: "
                              "synthetic labels could not be batched with them")
        labels = first[1]  # an empty one of the same type and dtype (not a view: it pickles)
        if isinstance(labels, np.ndarray):
            return np.empty(0, labels.dtype)
        return torch.empty(0, dtype=labels.dtype) if isinstance(labels, torch.Tensor) else None

    def _load(self, pool: PromptPool, items: list[Planned], generator: Any,
              cache_dir: str | Path | None, source_id: str | None,
              size: tuple[int, int] | None, progress: bool) -> None:
        """Make or find the planned images, then keep the non-diverged ones in memory."""
        reqs = requests(pool, items, _SOURCE)
        temp: str | None = None  # without cache_dir: a folder removed once the images are read
        try:
            cache = None
            if reqs and generator is not None:
                source = DiffusionSource(generator)
                if source_id is not None and source_id != source.id:
                    raise ConfigError(f"SyntheticAugmented: source_id={source_id!r} but the "
                                      f"generator's images are cached as {source.id!r}")
                if cache_dir is None:
                    temp = tempfile.mkdtemp(prefix="biomed-synthetic-")
                cache = SyntheticCache(cache_dir or temp, source.id, source.describe())
                from tqdm.auto import tqdm

                with tqdm(total=len({r.key for r in reqs}), disable=not progress, unit="img",
                          desc="synthetic images") as bar:
                    self.cache_stats = cache.ensure(reqs, source.make, source.provenance,
                                                    batch_size=source.batch_size,
                                                    progress=bar.update)
            elif reqs and cache_dir is not None:
                cache = _cached_only(Path(cache_dir).expanduser(), source_id, reqs)
                n = len({r.key for r in reqs})
                self.cache_stats = {"requested": n, "generated": 0, "from_cache": n,
                                    "seconds": 0.0}
            elif reqs:
                raise ConfigError("SyntheticAugmented: give generator=... (a Generator, e.g. "
                                  "PipelineGenerator(pipeline_folder)) or cache_dir=... (images "
                                  f"made before) for the {len(reqs)} synthetic items of "
                                  f"ratio={self.ratio:g}")
            diverged = cache.diverged() if cache is not None else {}
            keep = [k for k, r in enumerate(reqs) if not diverged.get(r.key, False)]
            images = cache.load([reqs[k].key for k in keep]) if cache is not None and keep \
                else np.zeros((0, *(size or (0, 0))), np.float32)
            manifest = cache.manifest() if cache is not None else {}
            if cache is not None:
                self.source_id = cache.folder.name
                self.cache_folder = None if temp else cache.folder
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)
        if size is not None:
            images = resize(images, size)
        self.dropped_diverged = len(reqs) - len(keep)
        self._images = to_uint16(images)  # N x H x W
        prompt = np.array([items[k].prompt for k in keep], dtype=np.int64)
        self._labels = pool.labels[prompt].astype(np.float32) if len(prompt) else \
            np.zeros((0, len(pool.label_names)), np.float32)
        self._texts = [pool.texts[p] for p in prompt]
        self._keys = [pool.keys[p] for p in prompt]
        self._provenance = [{**manifest.get(reqs[k].key, {}), "key": reqs[k].key,
                             "prompt_index": int(items[k].prompt), "image_seed": items[k].seed,
                             "synthetic_seed": self.seed} for k in keep]

    # -- what it holds --------------------------------------------------------------------

    @property
    def n_synthetic(self) -> int:
        """How many synthetic items there are (planned less the diverged ones)."""
        return len(self._images)

    def __len__(self) -> int:
        return self.n_real + self.n_synthetic

    def is_synthetic(self, index: int) -> bool:
        return range(len(self))[index] >= self.n_real

    @property
    def synthetic_labels(self) -> np.ndarray:
        """N_synthetic x K labels of the synthetic items (NaN unknown)."""
        return self._labels.copy()

    @property
    def synthetic_reports(self) -> list[str]:
        """The prompt of each synthetic item."""
        return list(self._texts)

    def image(self, j: int) -> np.ndarray:
        """Synthetic item ``j``'s image before ``transform``: float32 H x W in [0, 1]."""
        return self._images[j].astype(np.float32) / np.float32(65535.0)

    def provenance(self, j: int) -> dict[str, Any]:
        """What made synthetic item ``j``: the generator's provenance as the cache recorded it
        (model id, prompt or its hash, seed, sampler settings), its cache key, prompt index
        and image seed."""
        return dict(self._provenance[range(self.n_synthetic)[j]])

    def summary(self) -> dict[str, Any]:
        """Numbers worth logging beside a run that trained on this dataset."""
        return {"n_real": self.n_real, "ratio": self.ratio, "n_planned": self.n_planned,
                "n_synthetic": self.n_synthetic, "dropped_diverged": self.dropped_diverged,
                "policy": self.policy, "seed": self.seed, "prompts": self.prompts_description,
                "source_id": self.source_id,
                "cache": str(self.cache_folder) if self.cache_folder else None,
                **{f"cache_{k}": v for k, v in self.cache_stats.items()}}

    # -- items ----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Any:
        i = range(len(self))[index]
        if i < self.n_real:
            return self.dataset[i]
        j = i - self.n_real
        return self._dict_item(i, j) if self.output == "dict" else self._tuple_item(j)

    def _dict_item(self, i: int, j: int) -> dict[str, Any]:
        img: Any = self.image(j)
        if self.transform is not None:
            img = self.transform(img)
        ours = {"image": img, "labels": self._labels[j].copy(), "id": f"synthetic-{j}",
                "index": i, "report": self._texts[j], "patient_id": f"syn:{self._keys[j]}"}
        if self._template is None:
            return {k: ours[k] for k in ("image", "labels", "id", "index", "report")}
        return {key: ours[key] if key in _OURS else copy.copy(blank)
                for key, blank in self._template.items()}

    def _tuple_item(self, j: int) -> tuple[Any, Any]:
        img = self.image(j)
        if self.image_format == "pil":
            from PIL import Image

            x: Any = Image.fromarray(np.round(img * 255.0).astype(np.uint8))  # mode "L"
        else:
            x = torch.from_numpy(img)[None]
        if self.transform is not None:
            x = self.transform(x)
        labels = self._labels[j].copy()
        like = self._template
        if isinstance(like, np.ndarray):
            return x, labels.astype(like.dtype) if like.dtype.kind == "f" else labels
        y = torch.from_numpy(labels)
        if isinstance(like, torch.Tensor) and like.is_floating_point():
            y = y.to(like.dtype)
        return x, y

    def __repr__(self) -> str:
        n = len(getattr(self, "_images", ()))
        return (f"SyntheticAugmented({self.n_real} real + {n} synthetic, "
                f"ratio={self.ratio:g}, policy={self.policy!r}, output={self.output!r})")


# ---------------------------------------------------------------------------------------------
# helpers


def _rows(pool: PromptPool, rows: Sequence[int], labels: np.ndarray) -> PromptPool:
    """The candidates at ``rows`` with ``labels``."""
    return PromptPool(keys=[pool.keys[i] for i in rows], texts=[pool.texts[i] for i in rows],
                      findings=[pool.findings[i] for i in rows] if pool.findings else None,
                      labels=np.asarray(labels, np.float32), label_names=pool.label_names,
                      weights=pool.weights[list(rows)], description=pool.description)


def _same_names(dataset: Any, label_names: Sequence[str] | None) -> None:
    """Synthetic labels must be in the real items' order: a dataset that names its labels
    (``label_names``, as the contract's do) fixes ``label_names``."""
    own = getattr(dataset, "label_names", None)
    if label_names is None or own is None or isinstance(own, str):
        return
    if [str(n) for n in label_names] != [str(n) for n in own]:
        raise ConfigError(f"SyntheticAugmented: label_names={list(label_names)} but the "
                          f"dataset's items carry {list(own)}, in that order: give those or "
                          "leave label_names out")


def _render_seeds(dataset: Any) -> frozenset[int]:
    """A phantom dataset's own render seeds, which synthetic seeds avoid as the sweep's do (so
    that the sweep's cached images are found again for the same prompts and seed)."""
    if not isinstance(dataset, XrayDataset):
        return frozenset()
    return frozenset(int(s) for s in dataset.metadata.get("render_seed") or [])


def _target_size(dataset: Any, image_size: int | Sequence[int] | None,
                 first: Any) -> tuple[int, int] | None:
    """The synthetic images' size: ``image_size``, else the dataset's images' (the contract's
    untransformed image, else the first item's image), else None (the generator's)."""
    if image_size is not None:
        size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ConfigError(f"SyntheticAugmented: image_size={image_size}: a side in pixels "
                              "or (height, width)")
        return int(size[0]), int(size[1])
    if first is None:
        return None
    if isinstance(dataset, XrayDataset):
        return tuple(int(s) for s in np.shape(dataset.image(0))[:2])  # type: ignore[return-value]
    img = first.get("image") if isinstance(first, Mapping) else (
        first[0] if isinstance(first, tuple | list) and first else None)
    from PIL import Image

    if isinstance(img, Image.Image):  # size is (W, H)
        return int(img.height), int(img.width)
    shape = getattr(img, "shape", None)
    if shape is not None and len(shape) >= 2:
        return int(shape[-2]), int(shape[-1])
    return None


def _cached_only(root: Path, source_id: str | None, reqs: Sequence[Request]) -> SyntheticCache:
    """The cache folder that must already hold every requested image (no generator given)."""
    if not root.is_dir():
        raise ConfigError(f"cache_dir={root}: no such folder (give generator=... to make the "
                          "synthetic images)")
    if source_id is None:
        found = sorted(p.name for p in root.iterdir()
                       if p.is_dir() and p.name.startswith(f"{_SOURCE}-")
                       and (p / "items").is_dir())
        if len(found) != 1:
            what = f"several source folders ({', '.join(found)})" if found else \
                "no generator's source folder (diffusion-<id>)"
            raise ConfigError(f"cache_dir={root}: {what}; pass source_id=... or generator=...")
        source_id = found[0]
    if not (root / source_id / "items").is_dir():
        raise ConfigError(f"{root / source_id}: no such cache folder (source_id={source_id!r})")
    cache = SyntheticCache(root, source_id)
    keys = {r.key for r in reqs}
    missing = sum(not cache.has(k) for k in keys)
    if missing:
        raise ConfigError(f"{cache.folder}: {missing} of the {len(keys)} planned synthetic "
                          "images are not in the cache; pass generator=... to make them")
    return cache


def _blank(key: str, like: Any) -> Any:
    """A value of ``like``'s kind that says nothing (for keys of the real items that synthetic
    items have no value for), so that batches of both collate."""
    if isinstance(like, bool | np.bool_):
        return False
    if isinstance(like, int | np.integer):
        return -1
    if isinstance(like, float | np.floating):
        return float("nan")
    if isinstance(like, str):
        return ""
    if isinstance(like, torch.Tensor):
        return torch.full_like(like, float("nan")) if like.is_floating_point() else \
            torch.zeros_like(like)
    if isinstance(like, np.ndarray):
        return np.full_like(like, np.nan) if like.dtype.kind == "f" else np.zeros_like(like)
    if like is None:
        return None
    raise ConfigError(f"SyntheticAugmented: the dataset's items have {key!r} "
                      f"({type(like).__name__}), which a synthetic item cannot fill")
