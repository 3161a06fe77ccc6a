"""The chest X-ray classifier as a saved model: architectures, building, weight surgery, the
folder format, loading for inference.

Architectures (``classifier=``): ``small_cnn`` (the CPU default, below), ``densenet121``
(torchvision; the CheXpert / torchxrayvision standard, first convolution adapted to one channel)
and ``timm`` (any ``timm`` model name, ``in_chans=1``). Every network sits behind
`XrayClassifier`, which takes images in the workbench pixel convention (B x 1 x H x W float in
[0, 1], lungs dark) and applies the training data's mean/std itself, so that whoever loads a
saved classifier feeds it pixels and gets logits.

The folder (``classifier/`` of a `biomed train-classifier` run): ``model.safetensors``,
``config.json`` (architecture and its kwargs, label names, input size, normalisation,
thresholds, training data) and the model card ``README.md`` (`biomed.imaging.classifier.card`).
`XrayClassifier.from_pretrained` / `load_classifier` read it back with torch and safetensors
only: this module imports no training code and no Hydra, so the app and the evaluation of other
models can load a classifier cheaply.

A folder may come from anywhere, so its ``config.json`` chooses no code and no file: the
constructor kwargs are allow-listed per architecture (`ALLOWED_KWARGS`: what
``conf/classifier/*.yaml`` sets), plain values only, and a timm name is a registry name (no
``hf-hub:`` or ``local-dir:`` source, no ``pretrained``, ``checkpoint_path`` or
``pretrained_cfg_overlay``). Training configs go through the same check, so everything the
workbench saves loads back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from biomed import runs
from biomed.errors import ConfigError, InputError
from biomed.imaging.core.folder_values import is_number, is_plain, names_a_source

__all__ = ["ALLOWED_KWARGS", "ARCHITECTURES", "CONFIG", "FORMAT", "PIXEL_CONVENTION", "SUBDIR",
           "WEIGHTS", "SmallCNN", "XrayClassifier", "architecture_kwargs", "build_classifier",
           "kwargs_problem", "load_classifier", "load_pretrained", "predict_batches",
           "read_config", "resolve_classifier_dir", "save_classifier"]


SUBDIR = "classifier"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "biomed-classifier"
PIXEL_CONVENTION = ("single-channel float32 in [0, 1], lungs dark, bone bright (MONOCHROME2 "
                    "sense), B x 1 x H x W at input_size; the model applies its normalisation")


# ---------------------------------------------------------------------------------------------
# models


class XrayClassifier(nn.Module):
    """A network behind the workbench pixel convention.

    ``forward`` takes B x 1 x H x W (or B x H x W) images in [0, 1], normalises them with the
    training data's ``mean``/``std`` (buffers, saved with the weights), replicates the gray
    channel when the network wants more than one, and returns B x K logits.
    ``cam_layer_name`` names the layer Grad-CAM looks at by default
    (`biomed.imaging.classifier.gradcam`); ``input_size`` (H, W) is the size the model was
    trained at (callers resize to it; None when unknown). Every attribute is a constructor
    argument, so `from_pretrained` restores a saved model whole.
    """

    def __init__(self, net: nn.Module, *, in_chans: int = 1, mean: float = 0.5,
                 std: float = 0.25, cam_layer_name: str | None = None,
                 input_size: Sequence[int] | None = None):
        super().__init__()
        self.net = net
        self.in_chans = int(in_chans)
        self.register_buffer("mean", torch.tensor([float(mean)]))
        self.register_buffer("std", torch.tensor([max(float(std), 1e-6)]))
        self.cam_layer_name = cam_layer_name
        self.input_size: tuple[int, int] | None = (
            None if input_size is None else tuple(int(v) for v in input_size))

    @classmethod
    def from_pretrained(cls, path: str | Path,
                        device: torch.device | str = "cpu") -> XrayClassifier:
        """The saved classifier of a classifier folder or the run folder holding it, in eval
        mode on ``device`` (`load_classifier` also returns its config)."""
        return load_classifier(path, device)[0]

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

# The constructor kwargs a classifier config (and so a saved config.json) may carry: what
# conf/classifier/*.yaml sets, and for timm a few shape and regularisation arguments that every
# family takes or ignores. Nothing here names a file, a download or code.
ALLOWED_KWARGS: dict[str, frozenset[str]] = {
    "small_cnn": frozenset({"in_chans", "stem_width", "widths", "strides", "pool_grid",
                            "global_max", "dropout"}),
    "densenet121": frozenset({"in_chans", "drop_rate", "memory_efficient"}),
    "timm": frozenset({"name", "in_chans", "drop_rate", "drop_path_rate", "drop_block_rate",
                       "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate",
                       "global_pool", "img_size", "output_stride"}),
}
# timm keywords that load or fetch something, with why they are refused
_REFUSED_KWARGS = {
    "pretrained": "would download weights (give local weights as classifier.pretrained)",
    "checkpoint_path": "would load a local file",
    "pretrained_cfg": "names weights to fetch",
    "pretrained_cfg_overlay": "can name a file or a URL to load",
    "cache_dir": "is a download cache",
}
_MAX_NUMBER = 65536  # the largest width, size or count a config may hold


def kwargs_problem(arch: str, kwargs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, reason) of the first constructor kwarg that ``arch`` may not be given, or None.

    Keys outside `ALLOWED_KWARGS`, values that are not plain (`is_plain`), and a timm name with a
    source prefix (``hf-hub:``, ``local-dir:``) or a path are refused."""
    allowed = ALLOWED_KWARGS.get(arch, frozenset())
    for key, value in kwargs.items():
        if key in _REFUSED_KWARGS:
            return str(key), f"refused: it {_REFUSED_KWARGS[key]}"
        if key not in allowed:
            return str(key), f"not a {arch} setting (allowed: {', '.join(sorted(allowed))})"
        if key == "name":
            if not isinstance(value, str) or not value:
                return "name", "not a timm model name"
            if names_a_source(value):
                return "name", (f"{value!r} is a download source or a path (hf-hub:, local-dir: "
                                "and paths are refused); give a timm registry name")
        elif not is_plain(value, _MAX_NUMBER):
            return str(key), f"{value!r} is not a number, a flag, a word or a list of numbers"
    return None


def architecture_kwargs(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, constructor kwargs) of a ``classifier`` config node, checked against
    `ALLOWED_KWARGS` (a `ConfigError` names the key)."""
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
    problem = kwargs_problem(arch, kwargs)
    if problem:
        key, reason = problem
        raise ConfigError(f"classifier.{key if key == 'name' else 'model.' + key}: {reason}")
    return arch, kwargs


def _build(arch: str, kwargs: Mapping[str, Any], num_labels: int, mean: float,
           std: float, input_size: Sequence[int] | None = None) -> XrayClassifier:
    try:
        net, cam = ARCHITECTURES[arch](num_labels, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # a missing or unfit keyword
        raise ConfigError(f"classifier {arch}: {' '.join(str(e).split())[:300]}") from None
    return XrayClassifier(net, in_chans=int(kwargs.get("in_chans", 1)), mean=mean, std=std,
                          cam_layer_name=cam, input_size=input_size)


def build_classifier(cfg: Mapping[str, Any], num_labels: int, *, mean: float = 0.5,
                     std: float = 0.25,
                     input_size: Sequence[int] | None = None) -> XrayClassifier:
    """The classifier of a ``classifier`` config node (``conf/classifier/*.yaml``) for
    ``num_labels`` outputs at ``input_size`` (H, W); ``classifier.pretrained`` (a classifier
    folder, a ``.safetensors`` or a ``.pth`` state dict) initialises every layer whose shape
    fits."""
    if num_labels < 1:
        raise ConfigError("classifier: no labels to predict")
    arch, kwargs = architecture_kwargs(cfg)
    model = _build(arch, kwargs, num_labels, mean, std, input_size)
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
# the folder


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


def read_config(path: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a classifier folder or the run folder holding it: its
    format and architecture, its kwargs (`kwargs_problem`), labels and normalisation."""
    folder = resolve_classifier_dir(path)
    where = folder / CONFIG
    try:
        config = json.loads(where.read_text())
    except ValueError:
        raise InputError(where, "not valid JSON") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT \
            or config.get("architecture") not in ARCHITECTURES:
        got = config if isinstance(config, dict) else {}
        raise InputError(where, f"not a {FORMAT} config (format "
                         f"{got.get('format')!r}, architecture {got.get('architecture')!r})")
    kwargs = config.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise InputError(where, "kwargs: not a mapping")
    problem = kwargs_problem(config["architecture"], kwargs)
    if problem:
        raise InputError(where, f"kwargs.{problem[0]}: {problem[1]}")
    labels, norm = config.get("labels"), config.get("normalization")
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) for n in labels):
        raise InputError(where, "labels: not a non-empty list of names")
    if not isinstance(norm, dict) or not all(
            is_number(norm.get(k), _MAX_NUMBER) and not isinstance(norm.get(k), bool)
            for k in ("mean", "std")):
        raise InputError(where, "normalization: needs numbers mean and std")
    size = config.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in size)):
        raise InputError(where, f"input_size: {size!r} is not [height, width] in pixels")
    return config


def load_classifier(path: str | Path,
                    device: torch.device | str = "cpu") -> tuple[XrayClassifier, dict[str, Any]]:
    """(model in eval mode, config) from a classifier folder or the run folder holding it.

    Every attribute of the model comes from the folder through the constructor: architecture
    and kwargs, normalisation, Grad-CAM layer, input size; then the weights.
    """
    from safetensors.torch import load_model

    folder = resolve_classifier_dir(path)
    config = read_config(folder)
    norm = config["normalization"]
    try:
        model = _build(config["architecture"], config.get("kwargs", {}), len(config["labels"]),
                       norm["mean"], norm["std"], config.get("input_size"))
    except ConfigError as e:  # the folder's settings, not the user's: name its config.json
        raise InputError(folder / CONFIG, str(e)) from None
    try:
        load_model(model, str(folder / WEIGHTS), device="cpu")
    except Exception as e:  # missing/unexpected tensors or a corrupt file
        raise InputError(folder / WEIGHTS, f"weights do not load into "
                         f"{config['architecture']}: {' '.join(str(e).split())[:300]}") from None
    return model.to(device).eval(), config


# ---------------------------------------------------------------------------------------------
# inference


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

