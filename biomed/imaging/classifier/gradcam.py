"""Grad-CAM saliency for one image and one finding (Selvaraju et al., ICCV 2017).

The heat map is the ReLU of the target layer's activations weighted by the spatial mean of the
finding logit's gradient with respect to them, upsampled to the image and scaled to [0, 1]. It
shows where the evidence for a finding lies at the target layer's resolution (an 8 x 8 map for
the default small_cnn at 128 px, 4 x 4 for DenseNet-121 at 128 px): a coarse pointer, not a
segmentation. `overlay` blends it over the radiograph for the teaching app.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomed.errors import ConfigError
from biomed.imaging.core import pixels

__all__ = ["default_target_layer", "grad_cam", "overlay"]


def default_target_layer(model: nn.Module) -> nn.Module:
    """The layer a model names in ``cam_layer_name`` (`XrayClassifier` does: the last stage of
    small_cnn, DenseNet's ``features``, a timm model's last feature stage), else the last
    ``Conv2d`` in module order."""
    name = getattr(model, "cam_layer_name", None)
    if name:
        return model.get_submodule(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__}: no convolution layer for Grad-CAM; pass "
                          "target_layer=")
    return convs[-1]


def grad_cam(model: nn.Module, image: np.ndarray, label_index: int,
             target_layer: nn.Module | None = None) -> np.ndarray:
    """H x W heat map in [0, 1] of the evidence for output ``label_index`` in ``image``.

    ``image`` is a 2-D array in the workbench convention; when the model records an
    ``input_size`` (a loaded classifier does) the image is resized to it for the forward pass
    and the map is upsampled back to the image's own size. All zeros when nothing in the
    target layer speaks for the finding. The model's parameters and mode are left as found.
    """
    img = pixels.check_image(np.asarray(image, dtype=np.float32), "Grad-CAM image")
    size = getattr(model, "input_size", None)
    x_img = pixels.resize(img, tuple(size)) if size and tuple(size) != img.shape else img
    layer = target_layer if target_layer is not None else default_target_layer(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.from_numpy(np.ascontiguousarray(x_img))[None, None].to(device).requires_grad_(True)
    seen: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        seen["act"] = output[0] if isinstance(output, (tuple, list)) else output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            if not 0 <= label_index < logits.shape[1]:
                raise ConfigError(f"label_index {label_index} out of range for "
                                  f"{logits.shape[1]} outputs")
            if "act" not in seen:
                raise ConfigError("the Grad-CAM target layer was not used by the forward pass")
            act = seen["act"]
            (grad,) = torch.autograd.grad(logits[0, label_index].float(), act)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.float().mean(dim=(2, 3), keepdim=True)  # 1 x C x 1 x 1
    cam = F.relu((weights * act.float()).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=img.shape, mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


#: the heat map's colours: perceptually uniform and readable with colour-vision deficiencies
#: (matplotlib's inferno; jet, the usual Grad-CAM choice, is neither)
HEAT_CMAP = "inferno"


def _heat(v: np.ndarray) -> np.ndarray:
    """`HEAT_CMAP` (black -> purple -> orange -> pale yellow) of values in [0, 1]: H x W x 3."""
    from matplotlib import colormaps

    return colormaps[HEAT_CMAP](np.clip(v, 0, 1))[..., :3].astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The radiograph in gray with the heat map blended in colour where it is high: RGB uint8.

    Each pixel mixes in ``alpha * cam`` of the colour, so regions without evidence stay the
    plain radiograph.
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if cam.shape != img.shape:
        cam = pixels.resize(cam, img.shape)
    weight = (float(alpha) * cam)[..., None]
    rgb = (1 - weight) * img[..., None] + weight * _heat(cam)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
