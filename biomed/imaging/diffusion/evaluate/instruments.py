"""The measuring instruments of evaluate-generation: Fréchet distance, MS-SSIM diversity, CLIP
score, and the classifier and CXR-CLIP as feature extractors.

These follow the evaluation of RoentGen (Chambon et al. 2022, arXiv 2211.12737) and the
papers it cites; which feature space and which prompts is `scoring`'s and `suites`' business.

- **Fréchet distance** (Heusel et al. 2017, the "FID" formula) between Gaussians fitted to two
  feature sets: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The matrix square root
  is scipy's ``linalg.sqrtm`` with the usual numerical fixes of the reference implementations
  (pytorch-fid): when the product is singular (fewer images than feature dimensions) ``eps`` is
  added to both diagonals, and the imaginary part that rounding leaves is dropped. The value is
  biased upwards at small N (Chong & Forsyth 2020): always report N beside it.
- **MS-SSIM** (Wang, Simoncelli & Bovik 2003) in torch: Gaussian windows, ``valid`` filtering,
  2x2 average-pool downsampling between scales, contrast-structure terms at every scale and the
  luminance term at the coarsest. The five standard scales need images of at least
  ``window * 2**4`` pixels (176 px for 11x11 windows); smaller images use fewer scales, with the
  paper's weights of the finest scales renormalised to sum to one (`ms_ssim_settings`).
  As a diversity measure (mean pairwise MS-SSIM between samples of one prompt) lower means more
  diverse.
- **CLIP score** (Hessel et al. 2021, as torchmetrics scales it): ``100 * max(cos(image, text),
  0)`` per pair.
- **Feature extractors**: :class:`ClassifierTool` (a loaded classifier: sigmoid probabilities and
  the penultimate-layer features, read by a hook on the input of its head) and
  :func:`clip_embeddings` / :func:`clip_text_embeddings` (normalised CXR-CLIP embeddings).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from biomed.errors import ConfigError
from biomed.imaging.core import pixels

__all__ = ["WANG_WEIGHTS", "ClassifierTool", "MsSsimSettings", "clip_embeddings", "clip_scores",
           "clip_text_embeddings", "frechet_distance", "gaussian_stats", "ms_ssim",
           "ms_ssim_settings", "pairwise_ms_ssim", "penultimate_layer"]

#: MS-SSIM exponents of the five scales, finest first (Wang et al. 2003, Table/Eq. 7).
WANG_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D) and covariance (D x D, unbiased) of N x D features, in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"Fréchet distance needs N x D features with N >= 2, got {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm(a: np.ndarray, check: bool = True, tol: float = 1e-3) -> np.ndarray | None:
    """``sqrtm(a)``; with ``check``, None when it is not finite or does not square back to
    ``a`` within ``tol`` (relative Frobenius error): the sign of a singular product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: handled by the caller
        root = linalg.sqrtm(a)
    if not check:
        return root
    if not np.isfinite(root).all():
        return None
    scale = max(float(np.linalg.norm(a)), 1e-300)
    return root if np.linalg.norm(root @ root - a) / scale <= tol else None


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N x D) and ``b`` (M x D).

    ``eps`` is added to both covariance diagonals when ``sqrtm`` of their product is not finite
    or inaccurate (singular covariances: fewer images than dimensions). Clamped at 0 (rounding can leave a
    tiny negative value for identical sets)."""
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} and {mu2.shape[0]}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if covmean is None:  # singular product: make both covariances positive definite
        offset = np.eye(len(s1)) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset), check=False)
    covmean = np.real(covmean)  # rounding leaves a small imaginary part
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


# ---------------------------------------------------------------------------------------------
# MS-SSIM


@dataclass(frozen=True)
class MsSsimSettings:
    """What an MS-SSIM value was computed with (stated beside every value)."""

    scales: int  # scales used
    requested_scales: int
    window: int  # Gaussian window side (pixels)
    sigma: float  # its standard deviation (pixels)
    weights: tuple[float, ...]  # exponents per scale, finest first, summing to 1
    data_range: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def ms_ssim_settings(size: int | Sequence[int], scales: int = 5, window: int = 11,
                     sigma: float = 1.5, data_range: float = 1.0) -> MsSsimSettings:
    """The scales usable at image ``size``: at most ``scales``, each coarser scale halving the
    image, the coarsest still at least ``window`` pixels; Wang's weights of those scales
    renormalised. Raises `ConfigError` when even one scale does not fit."""
    side = int(min(size)) if isinstance(size, Sequence) else int(size)
    if not 1 <= int(scales) <= len(WANG_WEIGHTS):
        raise ConfigError(f"ms_ssim.scales={scales}: choose 1 to {len(WANG_WEIGHTS)}")
    if int(window) < 3 or int(window) % 2 == 0 or float(sigma) <= 0:
        raise ConfigError(f"ms_ssim.window={window}, sigma={sigma}: an odd window >= 3 and a "
                          "positive sigma are required")
    fit = max((s for s in range(1, int(scales) + 1) if side // 2 ** (s - 1) >= int(window)),
              default=0)
    if fit == 0:
        raise ConfigError(f"MS-SSIM: {side} px images are smaller than the {window}x{window} "
                          "window; use a smaller ms_ssim.window")
    w = np.asarray(WANG_WEIGHTS[:fit], np.float64)
    return MsSsimSettings(fit, int(scales), int(window), float(sigma),
                          tuple(float(v) for v in w / w.sum()), float(data_range))


def _gaussian(window: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of B x 1 x H x W, ``valid`` (no padding)."""
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, c1: float,
                c2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the mean SSIM map and the mean contrast-structure map (B each)."""
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def _as_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    t = t.to(torch.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"MS-SSIM takes H x W, N x H x W or N x 1 x H x W, got {tuple(t.shape)}")
    return t


def ms_ssim(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
            settings: MsSsimSettings | None = None) -> torch.Tensor:
    """MS-SSIM of each pair of images (N, float64); 1 for identical images.

    Negative contrast-structure terms are clipped at 0 before the power (as pytorch-msssim
    does; anticorrelated images score 0)."""
    a, b = _as_batch(x), _as_batch(y)
    if a.shape != b.shape:
        raise ValueError(f"MS-SSIM of images of different shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    st = settings or ms_ssim_settings(a.shape[-2:])
    g = _gaussian(st.window, st.sigma)
    c1, c2 = (0.01 * st.data_range) ** 2, (0.03 * st.data_range) ** 2
    out = torch.ones(len(a), dtype=torch.float64)
    for j, w in enumerate(st.weights):
        if j:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        ssim, cs = _ssim_terms(a, b, g, c1, c2)
        term = ssim if j == st.scales - 1 else cs
        out = out * term.clamp_min(0.0) ** w
    return out


def pairwise_ms_ssim(groups: Sequence[np.ndarray], settings: MsSsimSettings | None = None,
                     batch_size: int = 256) -> np.ndarray:
    """Mean MS-SSIM over all pairs within each group (K x H x W): one value per group with
    K >= 2 (the diversity of the samples of one prompt; lower is more diverse)."""
    pairs = [(g, i, j) for g, imgs in enumerate(groups)
             for i, j in itertools.combinations(range(len(imgs)), 2)]
    if not pairs:
        return np.zeros(0)
    values = np.zeros(len(pairs))
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        a = np.stack([groups[g][i] for g, i, _ in chunk])
        b = np.stack([groups[g][j] for g, _, j in chunk])
        values[s:s + len(chunk)] = ms_ssim(a, b, settings).numpy()
    owner = np.array([g for g, _, _ in pairs])
    return np.array([values[owner == g].mean() for g in range(len(groups))
                     if (owner == g).any()])


# ---------------------------------------------------------------------------------------------
# CLIP score


def clip_scores(image_emb: np.ndarray | torch.Tensor,
                text_emb: np.ndarray | torch.Tensor) -> np.ndarray:
    """CLIP score of each (image, text) pair: ``100 * max(cos, 0)`` of row-aligned N x D
    embeddings (normalised here, so raw embeddings work too)."""
    a = torch.as_tensor(np.asarray(image_emb, np.float64))
    b = torch.as_tensor(np.asarray(text_emb, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"image embeddings {tuple(a.shape)} and text embeddings "
                         f"{tuple(b.shape)} are not row-aligned")
    cos = F.cosine_similarity(a, b, dim=1)
    return (100.0 * cos.clamp_min(0.0)).numpy()


# ---------------------------------------------------------------------------------------------
# the classifier and CXR-CLIP as feature extractors


def penultimate_layer(model: nn.Module) -> nn.Module:
    """The classifier's head (its input is the penultimate-layer feature vector): timm's
    ``get_classifier()``, a ``head``/``classifier``/``fc`` linear layer, else the last linear
    layer of the network."""
    net = getattr(model, "net", model)
    getter = getattr(net, "get_classifier", None)
    if callable(getter) and isinstance(getter(), nn.Module) \
            and any(p.numel() for p in getter().parameters()):
        return getter()
    for name in ("head", "classifier", "fc"):
        layer = getattr(net, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError(f"{type(net).__name__}: no linear head to read features before")
    return linear[-1]


class ClassifierTool:
    """A loaded classifier as a measuring instrument: images (any size: resized to its input)
    -> (sigmoid probabilities N x K, penultimate-layer features N x D)."""

    def __init__(self, model: nn.Module, labels: Sequence[str], *,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 input_size: Sequence[int] | None = None):
        self.model = model.to(device).eval()
        self.labels = list(labels)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        size = input_size or getattr(model, "input_size", None)
        self.input_size = tuple(int(v) for v in size) if size else None
        self.head = penultimate_layer(model)

    def index(self, name: str) -> int | None:
        return self.labels.index(name) if name in self.labels else None

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if self.input_size and images.shape[1:] != self.input_size:
            images = np.stack([pixels.resize(im, self.input_size) for im in images])
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(
            lambda _m, inputs: captured.append(inputs[0].detach().flatten(1).float().cpu()))
        probs = []
        try:
            for s in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[s:s + self.batch_size])[:, None].to(self.device)
                probs.append(torch.sigmoid(self.model(x).float()).cpu())
        finally:
            hook.remove()
        if not probs:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, 0), np.float32)
        return torch.cat(probs).numpy(), torch.cat(captured).numpy()


def clip_embeddings(clip: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Normalised CXR-CLIP image embeddings (N x D) of workbench images of any size."""
    from biomed.imaging.clip import model as cm

    device = next(clip.model.parameters()).device
    fitted = cm.fit_images(list(images), clip.preprocess_cfg)
    return cm.encode_images(clip.model, fitted, clip.preprocess_cfg, batch_size, device).numpy()


def clip_text_embeddings(clip: Any, texts: Sequence[str]) -> np.ndarray:
    from biomed.imaging.clip.model import encode_texts

    device = next(clip.model.parameters()).device
    return encode_texts(clip.model, clip.tokenizer, list(texts), device=device).numpy()
