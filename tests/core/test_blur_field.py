"""The blur field (cpgd_core.blur.field): per-pixel trajectory swept during the exposure."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cpgd_core.blur.field import BlurField, estimate_blur_field
from cpgd_core.errors import CPGDInputError


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w + 64, h + 64), interpolation=cv2.INTER_CUBIC), 0, 1)


def _pan(t: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    """T frames of a texture translating by (dx, dy) px per frame, (T, 3, H, W)."""
    tex = _texture(h, w)
    out = []
    for i in range(t):
        m = np.float32([[1, 0, 32 + dx * i], [0, 1, 32 + dy * i]])
        out.append(cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_pan_gives_velocity_times_exposure():
    frames = _pan(4, 96, 128, 3.0, -1.5)
    field = estimate_blur_field(frames, exposure=0.5)
    assert isinstance(field, BlurField)
    assert field.trajectory.shape == (4, 2, 96, 128) and field.trajectory.dtype == torch.float32
    assert field.exposure.shape == (4,) and torch.allclose(field.exposure, torch.full((4,), 0.5))
    assert field.confidence.shape == (4, 1, 96, 128)
    inner = field.trajectory[..., 16:-16, 16:-16]
    # The texture at frame t+1 sits (dx, dy) further along, so each pixel of t is found at p - (dx, dy)... the
    # sign does not matter to the blur model, the length and direction do.
    med = inner.abs().flatten(2).median(-1).values
    assert torch.allclose(med[:, 0], torch.full((4,), 1.5), atol=0.2)
    assert torch.allclose(med[:, 1], torch.full((4,), 0.75), atol=0.2)
    assert float(field.confidence[..., 16:-16, 16:-16].mean()) > 0.8


def test_bad_input_is_refused():
    with pytest.raises(CPGDInputError, match="at least 2"):
        estimate_blur_field(torch.zeros(1, 3, 32, 32))
    with pytest.raises(CPGDInputError, match="exposure"):
        estimate_blur_field(torch.zeros(2, 3, 32, 32), exposure=1.5)
    with pytest.raises(CPGDInputError, match="exposure"):
        estimate_blur_field(torch.zeros(2, 3, 32, 32), exposure="long")
