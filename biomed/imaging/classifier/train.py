"""`biomed train-classifier`: a multi-label chest X-ray classifier under the shared engine.

Architectures (``classifier=``): ``small_cnn`` (the CPU default, below), ``densenet121``
(torchvision; the CheXpert / torchxrayvision standard, first convolution adapted to one channel)
and ``timm`` (any ``timm`` model name, ``in_chans=1``). Every network sits behind
`XrayClassifier`, which takes images in the workbench pixel convention (B x 1 x H x W float in
[0, 1], lungs dark) and applies the training data's mean/std itself, so that whoever loads a
saved classifier feeds it pixels and gets logits.

Training: masked BCE-with-logits (NaN labels ignored), optional positive-class weights from the
training prevalence, on-the-fly augmentation of each batch in torch (small affine, brightness,
contrast, gamma; never a horizontal flip, which would swap left and right findings).

Evaluation on the held-out split (``eval_split``, default test; val is also reported): per-finding
AUROC and average precision with bootstrap 95% CIs, macro AUROC overall and over the findings
with clear visual signs (``eval.clear_findings``), calibration (ECE), per-finding thresholds chosen
on the validation split (Youden's J or F1), and for side-specific labels the left/right accuracy.

The run folder gets ``classifier/`` (``model.safetensors``, ``config.json``, a model card
``README.md``), ``metrics.json`` and the engine's ``log.jsonl``. `load_classifier` reads it back
with torch and safetensors only.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from biomed import runs
from biomed.engine import Engine
from biomed.errors import BiomedError, ConfigError, InputError
from biomed.hydra_app import hydra_app
from biomed.imaging.core import metrics as M
from biomed.imaging.core.labels import SIDED
from biomed.splits import SPLITS

SUBDIR = "classifier"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "biomed-classifier"
PIXEL_CONVENTION = ("single-channel float32 in [0, 1], lungs dark, bone bright (MONOCHROME2 "
                    "sense), B x 1 x H x W at input_size; the model applies its normalisation")
CLEAR_FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema", "mass")


# ---------------------------------------------------------------------------------------------
# models


class XrayClassifier(nn.Module):
    """A network behind the workbench pixel convention.

    ``forward`` takes B x 1 x H x W (or B x H x W) images in [0, 1], normalises them with the
    training data's ``mean``/``std`` (buffers, saved with the weights), replicates the gray
    channel when the network wants more than one, and returns B x K logits.
    ``cam_layer_name`` names the layer Grad-CAM looks at by default (`biomed.imaging.classifier.gradcam`).
    """

    def __init__(self, net: nn.Module, *, in_chans: int = 1, mean: float = 0.5,
                 std: float = 0.25, cam_layer_name: str | None = None):
        super().__init__()
        self.net = net
        self.in_chans = int(in_chans)
        self.register_buffer("mean", torch.tensor([float(mean)]))
        self.register_buffer("std", torch.tensor([max(float(std), 1e-6)]))
        self.cam_layer_name = cam_layer_name
        self.input_size: tuple[int, int] | None = None  # set by training and by load_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        x = (x - self.mean) / self.std
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1)
        return self.net(x)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """A strided 3x3 conv-BN-ReLU, then a residual 3x3 conv-BN (ResNet's basic block, with the
    downsampling convolution as its shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.down = _conv_bn_relu(cin, cout, 3, stride)
        self.conv = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """A compact CNN for CPU training (~0.85M parameters, ~70 M multiply-adds at 128 px).

    Stem 5x5/2, then residual stages; the head sees an average pool over a coarse
    ``pool_grid`` x ``pool_grid`` grid (which keeps left from right: a global average would lose
    the side of an effusion) and, with ``global_max``, a global max pool (small focal findings
    such as nodules are a few strong activations, which an average dilutes).
    """

    def __init__(self, num_labels: int, in_chans: int = 1, stem_width: int = 16,
                 widths: Sequence[int] = (32, 64, 128, 192),
                 strides: Sequence[int] = (2, 2, 2, 1), pool_grid: int = 2,
                 global_max: bool = True, dropout: float = 0.1):
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ConfigError(f"small_cnn: widths {list(widths)} and strides {list(strides)} "
                              "must be non-empty and of the same length")
        self.stem = _conv_bn_relu(in_chans, stem_width, 5, 2)
        stages, c = [], stem_width
        for w, s in zip(widths, strides, strict=True):
            stages.append(_Stage(c, int(w), int(s)))
            c = int(w)
        self.stages = nn.Sequential(*stages)
        self.grid = nn.AdaptiveAvgPool2d(int(pool_grid))
        self.global_max = bool(global_max)
        features = c * int(pool_grid) ** 2 + (c if self.global_max else 0)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(features, num_labels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stages(self.stem(x))  # B x C x H/16 x W/16 with the default strides
        parts = [self.grid(f).flatten(1)]
        if self.global_max:
            parts.append(f.amax(dim=(2, 3)))
        return self.head(self.dropout(torch.cat(parts, 1)))


def _small_cnn(num_labels: int, **kw: Any) -> tuple[nn.Module, str]:
    return SmallCNN(num_labels, **kw), "net.stages"


def _densenet121(num_labels: int, in_chans: int = 1, drop_rate: float = 0.0,
                 memory_efficient: bool = False) -> tuple[nn.Module, str]:
    """torchvision's DenseNet-121 with random weights and a first convolution for ``in_chans``."""
    from torchvision.models import densenet121

    net = densenet121(weights=None, num_classes=num_labels, drop_rate=float(drop_rate),
                      memory_efficient=bool(memory_efficient))
    if in_chans != 3:
        net.features.conv0 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3,
                                       bias=False)
        nn.init.kaiming_normal_(net.features.conv0.weight)
    return net, "net.features"  # after norm5: the feature map the classifier pools


def _timm(num_labels: int, name: str, in_chans: int = 1, **kw: Any) -> tuple[nn.Module, str]:
    """Any timm model by name, without downloading anything (``pretrained=False``)."""
    import timm

    try:
        net = timm.create_model(name, pretrained=False, in_chans=in_chans,
                                num_classes=num_labels, **kw)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"classifier.name={name!r}: {e}") from None
    info = getattr(net, "feature_info", None)
    module = info[-1].get("module") if isinstance(info, list) and info else None
    return net, f"net.{module}" if module else None


ARCHITECTURES = {"small_cnn": _small_cnn, "densenet121": _densenet121, "timm": _timm}


def architecture_kwargs(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, constructor kwargs) of a ``classifier`` config node."""
    arch = str(cfg.get("arch", ""))
    if arch not in ARCHITECTURES:
        raise ConfigError(f"classifier.arch={arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    model = cfg.get("model") or {}
    kwargs = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) \
        else dict(model)
    if arch == "timm":
        if not cfg.get("name"):
            raise ConfigError("classifier=timm needs classifier.name=<a timm model name>")
        kwargs = {"name": str(cfg.name), **kwargs}
    return arch, kwargs


def _build(arch: str, kwargs: Mapping[str, Any], num_labels: int, mean: float,
           std: float) -> XrayClassifier:
    try:
        net, cam = ARCHITECTURES[arch](num_labels, **kwargs)
    except TypeError as e:  # an unknown or missing keyword in classifier.model
        raise ConfigError(f"classifier {arch}: {e}") from None
    return XrayClassifier(net, in_chans=int(kwargs.get("in_chans", 1)), mean=mean, std=std,
                          cam_layer_name=cam)


def build_classifier(cfg: Mapping[str, Any], num_labels: int, *, mean: float = 0.5,
                     std: float = 0.25) -> XrayClassifier:
    """The classifier of a ``classifier`` config node (``conf/classifier/*.yaml``) for
    ``num_labels`` outputs; ``classifier.pretrained`` (a classifier folder, a ``.safetensors``
    or a ``.pth`` state dict) initialises every layer whose shape fits."""
    if num_labels < 1:
        raise ConfigError("classifier: no labels to predict")
    arch, kwargs = architecture_kwargs(cfg)
    model = _build(arch, kwargs, num_labels, mean, std)
    if cfg.get("pretrained"):
        load_pretrained(model, cfg.pretrained)
    return model


# ---------------------------------------------------------------------------------------------
# pretrained weights

# torchvision's old DenseNet checkpoints name "norm.1" what the module calls "norm1"
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if p.is_dir():
        p = resolve_classifier_dir(p) / WEIGHTS
    if not p.is_file():
        raise InputError(p, "pretrained weights not found")
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: one line, not a traceback
        raise InputError(p, f"unreadable weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(p, "not a state dict of tensors")
    return obj


def _clean_key(key: str) -> str:
    for prefix in ("module.", "_orig_mod.", "model.", "net."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    m = _DENSENET_OLD.match(key)
    return m.group(1) + m.group(2) if m else key


def load_pretrained(model: XrayClassifier, path: str | Path) -> dict[str, int]:
    """Copy every pretrained tensor whose name and shape fit into ``model.net``.

    A first convolution stored for RGB (C_out x 3 x k x k) is summed over its input channels
    for a gray network (the response to a gray image is unchanged). Tensors that do not fit
    (the head of another label set) keep their random values. Returns the counts.
    """
    source = {_clean_key(k): v for k, v in _read_state_dict(path).items()}
    target = model.net.state_dict()
    take: dict[str, torch.Tensor] = {}
    for key, want in target.items():
        have = source.get(key)
        if have is None:
            continue
        if have.shape != want.shape and have.ndim == 4 and have.shape[1] == 3 \
                and want.shape[1] == 1 and have.shape[0] == want.shape[0]:
            have = have.sum(dim=1, keepdim=True)
        if have.shape == want.shape:
            take[key] = have.to(want.dtype)
    if not take:
        raise InputError(path, "no pretrained tensor matches this architecture's names and "
                         "shapes")
    model.net.load_state_dict(take, strict=False)
    return {"loaded": len(take), "kept_random": len(target) - len(take)}


# ---------------------------------------------------------------------------------------------
# loss and augmentation


def masked_bce(logits: torch.Tensor, targets: torch.Tensor,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits over the known labels (NaN targets contribute nothing)."""
    known = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), torch.where(known, targets, 0.0).float(), reduction="none",
        pos_weight=None if pos_weight is None else pos_weight.to(logits.device))
    return (loss * known).sum() / known.sum().clamp_min(1)


def pos_weights(labels: np.ndarray, mode: str = "none", cap: float = 10.0) -> torch.Tensor | None:
    """Positive-class weights from the training prevalence: ``balanced`` = neg/pos, ``sqrt`` =
    its square root (a milder push that hurts calibration less), ``none``; clipped to
    [1/cap, cap]."""
    if mode in (None, "none", False):
        return None
    if mode not in ("balanced", "sqrt"):
        raise ConfigError(f"loss.class_weights={mode!r}: choose none, sqrt or balanced")
    pos = np.sum(labels == 1, axis=0).astype(np.float64)
    neg = np.sum(labels == 0, axis=0).astype(np.float64)
    ratio = neg / np.maximum(pos, 1.0)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    return torch.tensor(np.clip(ratio, 1.0 / cap, cap), dtype=torch.float32)


def augment_batch(x: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """Radiograph augmentation of a B x 1 x H x W batch in [0, 1], one draw per image.

    A small affine (rotation +-``rotate_deg``, scale 1 +- ``scale``, translation +-``translate``
    of the size; border pixels repeat) and intensity jitter (gamma exp(+-``gamma``), contrast
    1 +- ``contrast`` about the image mean, brightness +-``brightness``). The affine has a
    positive determinant: no reflection, so the patient's left stays on the image's right.
    """
    b, dev = x.shape[0], x.device

    def uniform(r: float) -> torch.Tensor:
        return (torch.rand(b, device=dev) * 2 - 1) * float(r)

    angle = uniform(cfg.get("rotate_deg", 5.0)) * math.pi / 180
    scale = 1 + uniform(cfg.get("scale", 0.05))
    shift = float(cfg.get("translate", 0.04)) * 2  # affine_grid's coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, uniform(1) * shift], 1),
                         torch.stack([sin, cos, uniform(1) * shift], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(uniform(cfg.get("gamma", 0.15))).view(b, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + uniform(cfg.get("contrast", 0.1))).view(b, 1, 1, 1)
    brightness = uniform(cfg.get("brightness", 0.05)).view(b, 1, 1, 1)
    return ((x - mean) * contrast + mean + brightness).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# data


def load_splits(data_cfg: DictConfig) -> dict[str, Any]:
    """train / val / test datasets of a ``data`` config (the dataset contract of
    `biomed.imaging.data.datasets`): built once and split when the class can (``with_split``),
    else instantiated once per split."""
    from hydra.utils import get_class

    missing = sorted(OmegaConf.missing_keys(data_cfg))
    if missing:
        raise ConfigError(f"data: set {', '.join(f'{k}=...' for k in missing)} on the command "
                          f"line (e.g. data.root=/path/to/the/dataset)")
    try:
        cls = get_class(str(data_cfg._target_))
    except Exception:
        cls = None
    if cls is not None and hasattr(cls, "with_split"):
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


def select_labels(dataset: Any, wanted: Sequence[str] | None) -> list[int]:
    """Label columns to learn: ``wanted`` by name, or (None) every column with both classes
    in ``dataset`` (the training split)."""
    names = list(dataset.label_names)
    if wanted is not None:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError(f"classifier.labels: {missing} not in the dataset's labels {names}")
        return [names.index(w) for w in wanted]
    y = np.asarray(dataset.labels)
    cols = [k for k in range(len(names)) if (y[:, k] == 1).any() and (y[:, k] == 0).any()]
    if not cols:
        raise ConfigError(f"{getattr(dataset, 'name', 'dataset')}: no label has both classes in "
                          f"the training split ({len(y)} rows)")
    return cols


class Collate:
    """Items -> ``{"image": B x 1 x H x W, "labels": B x K}`` for the chosen label columns."""

    def __init__(self, columns: Sequence[int]):
        self.columns = np.asarray(columns, dtype=np.int64)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        shapes = {np.shape(it["image"]) for it in items}
        if len(shapes) > 1:
            raise ConfigError(f"images of different sizes {sorted(shapes)} in one batch: set "
                              "data.size so that every image is resized alike")
        images = np.stack([np.asarray(it["image"], dtype=np.float32) for it in items])
        labels = np.stack([np.asarray(it["labels"], dtype=np.float32)[self.columns]
                           for it in items])
        return {"image": torch.from_numpy(images)[:, None], "labels": torch.from_numpy(labels)}


def _spread(n: int, k: int | None) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them for k None)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(k)).round().astype(np.int64))


def estimate_normalization(dataset: Any, sample: int = 512) -> tuple[float, float]:
    """Pixel mean and standard deviation of up to ``sample`` evenly spread training images."""
    imgs = np.stack([np.asarray(dataset[int(i)]["image"], np.float32)
                     for i in _spread(len(dataset), sample)])
    return float(imgs.mean()), float(max(imgs.std(), 1e-3))


def _preload(dataset: Any, columns: Sequence[int],
             limit: int | None) -> dict[str, torch.Tensor]:
    idx = _spread(len(dataset), limit)
    return Collate(columns)([dataset[int(i)] for i in idx])


# ---------------------------------------------------------------------------------------------
# prediction and evaluation


@torch.no_grad()
def predict_batches(model: nn.Module, images: torch.Tensor, batch_size: int = 64,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Sigmoid probabilities (N x K) of a stack of images (N x 1 x H x W in [0, 1])."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            out.append(torch.sigmoid(model(images[i:i + batch_size].to(device)).float()).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Any, columns: Sequence[int],
                    batch_size: int = 64,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels), both N x K, over a whole dataset in index order."""
    collate = Collate(columns)
    probs, labels = [], []
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(len(dataset), i + batch_size))])
        probs.append(predict_batches(model, batch["image"], batch_size, device))
        labels.append(batch["labels"].numpy())
    if not probs:
        return np.zeros((0, len(columns)), np.float32), np.zeros((0, len(columns)), np.float32)
    return np.concatenate(probs), np.concatenate(labels)


def _column_auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.array([M.auroc(y[:, k], s[:, k]) for k in range(y.shape[1])])


def macro_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mean AUROC over the columns (N x K) that have both classes; NaN when none has."""
    vals = _column_auroc(y, s)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if len(vals) else float("nan")


def choose_threshold(y: np.ndarray, s: np.ndarray, rule: str = "youden") -> float | None:
    """The probability threshold (positive when ``p >= t``) maximising Youden's J
    (sensitivity + specificity - 1) or F1 on one label; None with a single class."""
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # the last row of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    if rule == "youden":
        score = tp / pos - fp / neg
    elif rule == "f1":
        score = 2 * tp / (2 * tp + fp + (pos - tp))
    else:
        raise ConfigError(f"eval.threshold_rule={rule!r}: choose youden or f1")
    best = int(np.argmax(score))
    lower = ss[last[best] + 1] if last[best] + 1 < len(ss) else 0.0
    return float((ss[last[best]] + lower) / 2)  # halfway to the next lower score


def side_accuracy(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], *,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Left/right accuracy of each sided finding (`biomed.imaging.core.labels.SIDED`).

    Among images positive for the parent with exactly one side positive (and the other side
    known negative), the share where the higher of the two side probabilities is the true side.
    """
    out: dict[str, dict[str, Any]] = {}
    for parent, (left, right) in SIDED.items():
        if left not in names or right not in names:
            continue
        yl, yr = labels[:, names.index(left)], labels[:, names.index(right)]
        one = ((yl == 1) & (yr == 0)) | ((yl == 0) & (yr == 1))
        if parent in names:
            one &= labels[:, names.index(parent)] != 0  # positive or unknown: the sides say
        n = int(one.sum())
        entry: dict[str, Any] = {"n": n, "accuracy": None}
        if n:
            pl, pr = probs[one, names.index(left)], probs[one, names.index(right)]
            correct = np.where(yl[one] == 1, pl > pr, pr > pl).astype(np.float64)
            entry.update(M.bootstrap(np.mean, correct, n=n_boot, seed=seed).to_dict())
            entry["accuracy"] = entry["value"]
        out[parent] = entry
    return out


def _at_threshold(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float | None]:
    keep = ~np.isnan(y)
    y, call = y[keep], p[keep] >= t
    pos, neg = y == 1, y == 0
    return {"sensitivity": float(call[pos].mean()) if pos.any() else None,
            "specificity": float((~call[neg]).mean()) if neg.any() else None}


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], *,
                         thresholds: Mapping[str, float],
                         clear_findings: Sequence[str] = CLEAR_FINDINGS, n_boot: int = 1000,
                         seed: int = 0, ece_bins: int = 15) -> dict[str, Any]:
    """Every number of one split: per finding AUROC / AP with CIs, ECE, sensitivity and
    specificity at its threshold; macro AUROC (all, and ``clear_findings``) with CIs; pooled
    ECE; left/right accuracy."""
    names = list(names)
    out: dict[str, Any] = {"n": int(len(labels))}
    if len(labels) == 0:
        return out
    auc = M.per_label(M.auroc, labels, probs, names, n_boot=n_boot, seed=seed)
    ap = M.per_label(M.average_precision, labels, probs, names, n_boot=n_boot, seed=seed)
    per = {}
    for k, name in enumerate(names):
        y, p = labels[:, k], probs[:, k]
        per[name] = {"n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()),
                     "auroc": auc[name].to_dict() if name in auc else None,
                     "ap": ap[name].to_dict() if name in ap else None,
                     "ece": M.expected_calibration_error(y, p, ece_bins),
                     "threshold": thresholds.get(name, 0.5),
                     **_at_threshold(y, p, thresholds.get(name, 0.5))}
    out["per_label"] = per
    valid = [k for k, n in enumerate(names) if n in auc]
    clear = [k for k in valid if names[k] in set(clear_findings)]
    for key, cols in (("macro_auroc", valid), ("clear_macro_auroc", clear)):
        out[key] = (M.bootstrap(macro_auroc, labels[:, cols], probs[:, cols], n=n_boot,
                                seed=seed).to_dict() if cols else None)
    out["clear_findings_used"] = [names[k] for k in clear]
    out["ece"] = M.expected_calibration_error(labels.ravel(), probs.ravel(), ece_bins)
    out["left_right"] = side_accuracy(labels, probs, names, n_boot=n_boot, seed=seed)
    return out


# ---------------------------------------------------------------------------------------------
# saving and loading


def resolve_classifier_dir(path: str | Path) -> Path:
    """The ``classifier/`` folder of a run folder, or the folder itself."""
    p = Path(path).expanduser()
    for candidate in (p / SUBDIR, p):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise InputError(p, f"not a classifier folder (no {CONFIG} and {WEIGHTS} here or in "
                     f"{SUBDIR}/)")


def save_classifier(model: XrayClassifier, config: Mapping[str, Any], out: str | Path,
                    card: str = "") -> Path:
    """Write ``model.safetensors``, ``config.json`` and the model card ``README.md``."""
    from safetensors.torch import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS))
    runs.write_json(out / CONFIG, dict(config))
    if card:
        (out / "README.md").write_text(card)
    return out


def load_classifier(path: str | Path,
                    device: torch.device | str = "cpu") -> tuple[XrayClassifier, dict[str, Any]]:
    """(model in eval mode, config) from a classifier folder or the run folder holding it."""
    from safetensors.torch import load_model

    folder = resolve_classifier_dir(path)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except ValueError:
        raise InputError(folder / CONFIG, "not valid JSON") from None
    if config.get("format") != FORMAT or config.get("architecture") not in ARCHITECTURES:
        raise InputError(folder / CONFIG, f"not a {FORMAT} config (format "
                         f"{config.get('format')!r}, architecture {config.get('architecture')!r})")
    norm = config["normalization"]
    model = _build(config["architecture"], config.get("kwargs", {}), len(config["labels"]),
                   norm["mean"], norm["std"])
    try:
        load_model(model, str(folder / WEIGHTS), device="cpu")
    except Exception as e:  # missing/unexpected tensors or a corrupt file
        raise InputError(folder / WEIGHTS, f"weights do not load into "
                         f"{config['architecture']}: {' '.join(str(e).split())[:300]}") from None
    model.input_size = tuple(config["input_size"])
    return model.to(device).eval(), config


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
        "```python", "from biomed.imaging.classifier.train import load_classifier",
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


# ---------------------------------------------------------------------------------------------
# the command


def _data_name(cfg: DictConfig, dataset: Any) -> str:
    return str(cfg.data.get("name") or getattr(dataset, "name", None)
               or str(cfg.data._target_).rsplit(".", 1)[-1])


def train_classifier(cfg: DictConfig, run_dir: str | Path, log=print) -> dict[str, Any]:
    """Train, evaluate and save the classifier of ``cfg`` (``conf/train_classifier.yaml``)."""
    from accelerate import PartialState

    run_dir = Path(run_dir)
    with PartialState().main_process_first():  # under a launcher: one process builds caches
        splits = load_splits(cfg.data)
    train, val, test = (splits[s] for s in SPLITS)
    if len(train) == 0:
        raise ConfigError(f"{_data_name(cfg, train)}: the training split is empty")
    columns = select_labels(train, cfg.classifier.get("labels"))
    names = [train.label_names[c] for c in columns]
    norm = cfg.classifier.get("norm") or {}
    if norm.get("mean") is not None and norm.get("std") is not None:
        mean, std = float(norm.mean), float(norm.std)
    else:
        mean, std = estimate_normalization(train, int(norm.get("sample") or 512))

    engine = Engine(cfg.trainer, run_dir, seed=int(cfg.seed))  # seeds before the model's init
    model = build_classifier(cfg.classifier, len(names), mean=mean, std=std)
    model.input_size = tuple(int(v) for v in np.shape(train[0]["image"]))
    params = sum(p.numel() for p in model.parameters())
    pw = pos_weights(np.asarray(train.labels)[:, columns], cfg.loss.get("class_weights", "none"),
                     float(cfg.loss.get("pos_weight_cap", 10.0)))
    log(f"train-classifier: {cfg.classifier.name} ({params:,} parameters) on "
        f"{_data_name(cfg, train)}: {len(train)} train / {len(val)} val / {len(test)} test "
        f"images of {model.input_size}, {len(names)} labels")
    aug = cfg.get("augment") or {}

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = augment_batch(batch["image"], aug) if aug.get("enabled", True) else batch["image"]
        return masked_bce(m(x), batch["labels"], pw)

    ev = cfg.eval
    device = engine.accelerator.device
    periodic = _preload(val, columns, ev.get("periodic_max_items")) if len(val) else None

    def eval_fn(m: nn.Module) -> dict[str, float]:
        p = predict_batches(m, periodic["image"], int(ev.batch_size), device)
        y = periodic["labels"].numpy()
        loss = masked_bce(torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6)),
                          periodic["labels"])
        return {"val_macro_auroc": macro_auroc(y, p), "val_loss": float(loss)}

    t0 = time.perf_counter()
    result = engine.fit(model, train, loss_fn, optim=cfg.optim, collate_fn=Collate(columns),
                        eval_fn=eval_fn if periodic is not None else None)
    wall = time.perf_counter() - t0
    if not engine.is_main:
        return {}
    plain = engine.unwrap(engine.model)
    metrics = _evaluate_and_save(cfg, plain, splits, columns, names, device, run_dir, log)
    seconds = engine.state.train_seconds
    images = result.step * engine.cfg.batch_size * engine.cfg.grad_accum \
        * engine.accelerator.num_processes
    metrics.update(steps=result.step, train_seconds=seconds, train_wall_seconds=wall,
                   images_per_s=images / seconds if seconds else None,
                   epochs=images / len(train), train_loss=result.metrics.get("train_loss"),
                   params=params, precision=engine.precision)
    card = model_card(json.loads((Path(metrics["classifier_dir"]) / CONFIG).read_text()), metrics)
    (Path(metrics["classifier_dir"]) / "README.md").write_text(card)
    _log_summary(metrics, log)
    return metrics


def _evaluate_and_save(cfg: DictConfig, model: XrayClassifier, splits: Mapping[str, Any],
                       columns: Sequence[int], names: Sequence[str], device: torch.device,
                       run_dir: Path, log) -> dict[str, Any]:
    """Thresholds on val, every metric on val and the eval split, ``classifier/`` saved."""
    ev = cfg.eval
    eval_split = str(cfg.get("eval_split", "test"))
    if eval_split not in SPLITS:
        raise ConfigError(f"eval_split={eval_split!r}: choose one of {', '.join(SPLITS)}")
    bs, rule = int(ev.batch_size), str(ev.get("threshold_rule", "youden"))
    preds = {s: predict_dataset(model, splits[s], columns, bs, device)
             for s in dict.fromkeys(("val", eval_split))}
    p_val, y_val = preds["val"]
    thresholds = {}
    for k, name in enumerate(names):
        t = choose_threshold(y_val[:, k], p_val[:, k], rule) if len(y_val) else None
        thresholds[name] = 0.5 if t is None else t
    common = {"thresholds": thresholds, "clear_findings": list(ev.clear_findings),
              "seed": int(cfg.seed), "ece_bins": int(ev.get("ece_bins", 15))}
    metrics: dict[str, Any] = {"eval_split": eval_split, "labels": list(names)}
    for split, (p, y) in preds.items():
        n_boot = int(ev.n_boot if split == eval_split else ev.get("val_n_boot", ev.n_boot))
        metrics[split] = evaluate_predictions(y, p, names, n_boot=n_boot, **common)
        if len(y) == 0:
            log(f"train-classifier: the {split} split is empty; no {split} metrics")
    metrics.update({f"n_{s}": len(splits[s]) for s in SPLITS})
    main = metrics[eval_split]
    for key in ("macro_auroc", "clear_macro_auroc"):
        metrics[key] = (main.get(key) or {}).get("value")
    metrics["ece"] = main.get("ece")
    for parent, lr in (main.get("left_right") or {}).items():
        metrics[f"lr_accuracy_{parent}"] = lr["accuracy"]
        metrics[f"lr_n_{parent}"] = lr["n"]
    metrics["key_metrics"] = [k for k in ("clear_macro_auroc", "macro_auroc",
                                          "lr_accuracy_effusion", "lr_accuracy_pneumothorax")
                              if metrics.get(k) is not None]
    arch, kwargs = architecture_kwargs(cfg.classifier)
    train = splits["train"]
    config = {
        "format": FORMAT, "version": 1, "architecture": arch, "name": str(cfg.classifier.name),
        "kwargs": kwargs, "labels": list(names), "input_size": list(model.input_size),
        "in_chans": model.in_chans,
        "normalization": {"mean": float(model.mean), "std": float(model.std),
                          "applied_inside_model": True},
        "pixel_convention": PIXEL_CONVENTION, "thresholds": thresholds,
        "threshold_rule": rule, "threshold_split": "val",
        "training_data": _data_name(cfg, train),
        "label_space": getattr(train, "label_space", None),
        "train_prevalence": _prevalence(np.asarray(train.labels)[:, columns], names),
        "seed": int(cfg.seed), "pretrained": cfg.classifier.get("pretrained"),
    }
    out = save_classifier(model.cpu(), config, run_dir / SUBDIR)
    model.to(device)
    metrics["classifier_dir"] = str(out)
    return metrics


def _prevalence(labels: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Share of positives among the known labels of each column."""
    out = {}
    for k, name in enumerate(names):
        known = labels[~np.isnan(labels[:, k]), k]
        out[name] = float(known.mean()) if len(known) else None
    return out


def _log_summary(metrics: Mapping[str, Any], log) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lr = ", ".join(f"left/right {k[len('lr_accuracy_'):]} {f(v)}" for k, v in metrics.items()
                   if k.startswith("lr_accuracy_"))
    log(f"train-classifier: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s; "
        f"{metrics['eval_split']}: macro AUROC {f(metrics.get('macro_auroc'))}, clear findings "
        f"{f(metrics.get('clear_macro_auroc'))}{', ' + lr if lr else ''}; "
        f"saved {metrics['classifier_dir']}")


def _data_files(cfg: DictConfig) -> list[str]:
    data = cfg.get("data") or {}
    return [str(data[k]) for k in ("root", "csv_file", "reports") if data.get(k)
            and not str(data[k]).startswith("???")]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the classifier of ``cfg`` (``conf/train_classifier.yaml``) in its run folder."""
    from accelerate import PartialState

    with runs.experiment(cfg, _data_files(cfg)) as run_dir:
        metrics = train_classifier(cfg, run_dir)
        if PartialState().is_main_process:
            runs.finish_run(run_dir, metrics)
    return metrics


main = hydra_app("train_classifier")(run)

if __name__ == "__main__":
    main()
