"""cpgd_core.metrics: full-reference basics and the offline no-reference scores on real photos."""
import math

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from cpgd_core import metrics
from cpgd_core.errors import CPGDInputError


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma else img


def test_psnr_ssim_basics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    assert metrics.psnr(x, x) == math.inf
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    # a uniform offset of 4 grey levels has MSE 16 -> 10*log10(255^2/16)
    flat = torch.full((1, 3, 64, 64), 0.5)
    assert metrics.psnr(flat, flat + 4 / 255) == pytest.approx(10 * math.log10(255 ** 2 / 16), abs=1e-6)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    noisier = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert metrics.psnr(x, noisy) > metrics.psnr(x, noisier)
    assert 0 < metrics.ssim(x, noisier) < metrics.ssim(x, noisy) < 1


def test_metrics_reuse_the_training_definitions():
    from cpgd_core.train import common

    assert metrics.psnr is common.psnr and metrics.ssim is common.ssim


def test_niqe_increases_with_blur_on_a_real_photo():
    img = skimage.data.rocket()  # 427x640 real photograph
    scores = [metrics.niqe(_blur(img, s)) for s in (0, 1, 2, 3)]
    assert all(np.isfinite(scores))
    assert scores == sorted(scores) and len(set(scores)) == 4, scores


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_niqe_prefers_the_sharp_photo(name):
    img = getattr(skimage.data, name)()
    assert metrics.niqe(_blur(img, 1.5)) > metrics.niqe(img) + 2


def test_niqe_tensor_and_uint8_inputs_agree():
    img = skimage.data.astronaut()
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    assert metrics.niqe(t) == pytest.approx(metrics.niqe(img), rel=1e-6)
    assert metrics.niqe_features(img).shape == (25, 36)  # 5x5 patches of 96 px, 18 features x 2 scales


def test_niqe_rejects_bad_input():
    with pytest.raises(CPGDInputError, match="at least 192x192"):
        metrics.niqe(torch.rand(3, 128, 400))
    with pytest.raises(CPGDInputError, match="uint8"):
        metrics.niqe(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(CPGDInputError, match="shape"):
        metrics.niqe(torch.rand(2, 3, 256, 256))


def test_brisque_increases_with_blur_when_available():
    if not metrics.brisque_available():
        pytest.skip("optional brisque/libsvm-official packages not installed")
    img = skimage.data.astronaut()
    scores = [metrics.brisque(_blur(img, s)) for s in (0, 1, 2, 3)]
    assert scores == sorted(scores) and len(set(scores)) == 4, scores
