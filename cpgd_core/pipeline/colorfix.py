"""Colour correction of diffusion output against the stage-one restoration (wavelet, AdaIN).

Frames are (T, 3, H, W) float in [0, 1]. The diffusion stage hallucinates texture but drifts in colour; both
methods keep the colour statistics of ``reference`` and the detail of ``image``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CPGDInputError

_BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def atrous_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (à trous) of the given dilation, replicate padding. (N, C, H, W)."""
    c = x.shape[1]
    k = _BINOMIAL.to(x.device, x.dtype).expand(c, 1, 3, 3)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, k, groups=c, dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == x: ``levels`` à-trous levels with dilation 2^i."""
    low = x
    for i in range(levels):
        low = atrous_blur(low, 2 ** i)
    return x - low, low


def _match(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    if image.ndim != 4 or reference.ndim != 4 or image.shape[1] != reference.shape[1]:
        raise CPGDInputError(f"colour fix needs (T, C, H, W) frames with equal channels, got image "
                             f"{tuple(image.shape)} and reference {tuple(reference.shape)}")
    if reference.shape[0] not in (1, image.shape[0]):
        raise CPGDInputError(f"colour fix: reference has {reference.shape[0]} frames, image has {image.shape[0]}")
    if reference.shape[-2:] != image.shape[-2:]:
        reference = F.interpolate(reference, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return reference.expand(image.shape[0], -1, -1, -1).to(image.dtype)


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = 5,
                      chunk: int = 8) -> torch.Tensor:
    """High frequencies of ``image`` + low frequencies of ``reference`` (DiffBIR/StableSR-style), per chunk."""
    reference = _match(image, reference)
    out = torch.empty_like(image)
    for s in range(0, image.shape[0], chunk):
        hi, _ = wavelet_decompose(image[s:s + chunk], levels)
        _, lo = wavelet_decompose(reference[s:s + chunk], levels)
        out[s:s + chunk] = hi + lo
    return out


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per frame and channel: normalise ``image`` to the mean and std of ``reference``."""
    reference = _match(image, reference)
    mu_i, sd_i = image.mean((2, 3), keepdim=True), image.std((2, 3), keepdim=True)
    mu_r, sd_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return (image - mu_i) / (sd_i + eps) * sd_r + mu_r


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    if method == "wavelet":
        return wavelet_color_fix(image, reference)
    if method == "adain":
        return adain_color_fix(image, reference)
    raise CPGDInputError(f"unknown colour-fix method {method!r} (wavelet or adain)")
