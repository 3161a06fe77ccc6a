"""Image augmentation for training: one random radiograph view per image, shared by the
classifier and CXR-CLIP.

(The name ``augment`` belongs to synthetic augmentation, `biomed.augment`: adding generated
images to a training set. This module only perturbs the images a model already has.)

`random_view_transform` draws, per image, a small affine (rotation, zoom, shift; border pixels
repeat) and intensity jitter (gamma, contrast about the image mean, brightness), in torch on the
images' device. The affine has a positive determinant: there is never a horizontal flip, which
would put the patient's left on the image's left and swap every sided finding (``effusion_left``
and ``effusion_right``, and "left"/"right" in a paired report).

Random stream: seven uniform draws of ``torch.rand(B, device=images.device)`` per call, in the
order rotation, zoom, shift x, shift y, gamma, contrast, brightness. This is the stream the
classifier has drawn since it was written; CXR-CLIP's former copy drew from the CPU generator
and computed the rotation in another order of float operations (see the docstring of
`random_view_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from biomed.errors import ConfigError

__all__ = ["VIEW_TRANSFORM_KEYS", "random_view_transform", "view_transform_kwargs"]

# the keys of an ``augment`` config node (conf/train_classifier.yaml, conf/train_clip.yaml)
VIEW_TRANSFORM_KEYS = ("enabled", "rotate_deg", "scale", "translate", "gamma", "contrast",
                       "brightness")


def random_view_transform(images: torch.Tensor, *, rotate_deg: float = 5.0,
                          scale: float = 0.05, translate: float = 0.04, gamma: float = 0.15,
                          contrast: float = 0.1, brightness: float = 0.05,
                          enabled: bool = True) -> torch.Tensor:
    """A random view of each image of a batch in [0, 1] (B x 1 x H x W or B x H x W; the
    shape is kept), one independent draw per image.

    Rotation +-``rotate_deg`` degrees, zoom 1 +- ``scale``, shift +-``translate`` of the size
    (bilinear, border pixels repeat), then gamma exp(+-``gamma``), contrast 1 +- ``contrast``
    about the image mean and brightness +-``brightness``; clipped to [0, 1]. No horizontal
    flip. ``enabled=False`` returns ``images`` unchanged and draws nothing.

    A setting of 0 still draws its random number, so the stream does not depend on the
    settings. The classifier's former ``augment_batch`` is this function exactly; CXR-CLIP's
    former ``augment`` drew on the CPU (a different stream on a GPU) and rounded its rotation
    angle differently (last-bit differences on a CPU).
    """
    if not enabled or images.shape[0] == 0:
        return images
    gray = images.ndim == 3
    x = images[:, None] if gray else images
    b, dev = x.shape[0], x.device

    def uniform(r: float) -> torch.Tensor:
        return (torch.rand(b, device=dev) * 2 - 1) * float(r)

    angle = uniform(rotate_deg) * math.pi / 180
    zoom = 1 + uniform(scale)
    shift = float(translate) * 2  # affine_grid's coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, uniform(1) * shift], 1),
                         torch.stack([sin, cos, uniform(1) * shift], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    g = torch.exp(uniform(gamma)).view(b, 1, 1, 1)
    x = x.clamp(0, 1) ** g
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = (1 + uniform(contrast)).view(b, 1, 1, 1)
    shift_b = uniform(brightness).view(b, 1, 1, 1)
    x = ((x - mean) * c + mean + shift_b).clamp(0, 1)
    return x[:, 0] if gray else x


def view_transform_kwargs(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of `random_view_transform` from an ``augment`` config node
    (None or empty: the defaults); an unknown key is a `ConfigError`."""
    if not cfg:
        return {}
    unknown = sorted(set(cfg) - set(VIEW_TRANSFORM_KEYS))
    if unknown:
        raise ConfigError(f"augment: unknown setting(s) {unknown}; known: "
                          f"{', '.join(VIEW_TRANSFORM_KEYS)}")
    return {k: (bool(v) if k == "enabled" else float(v)) for k, v in cfg.items()}
