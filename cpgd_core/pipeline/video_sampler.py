"""Chunk/tile scheduling, blending and noise for sampling long, large videos with the CPC stage.

The sampler itself (the diffusion solver) is supplied by the caller as ``sample_fn``: ComfyUI's samplers in the
node pack, anything else in tests. This module owns which frames and which latent window each call sees, the
weights that blend overlapping results, and the initial noise.

Shapes: latents (T, C, h, w); a tile is ``(y0, x0, th, tw)`` in latent pixels; a chunk is ``(start, stop)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..codec.flow import resize_flow, warp
from ..errors import CPGDInputError
from .schedule import ChunkBlender, chunk_windows, fit_chunk_and_tile, gaussian_weights, windows_1d


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Latent tiles ``(y0, x0, th, tw)`` covering an h x w latent; ``tile`` <= 0 or >= the size means one tile."""
    ys, xs = windows_1d(h, tile, overlap, "latent tile"), windows_1d(w, tile, overlap, "latent tile")
    return [(y0, x0, y1 - y0, x1 - x0) for y0, y1 in ys for x0, x1 in xs]


LATENT_TILE_CANDIDATES = (128, 96, 64, 48, 32)
CONTROL_OVERHEAD = 1.5  # the CPControlNet (encoder + middle of the UNet) adds about half a UNet pass


def fit_windows(h: int, w: int, chunk: int, chunk_overlap: int, tile: int, tile_overlap: int,
                unet_bytes: Callable[[int, int, int], float], budget: float) -> tuple[int, int, int]:
    """(chunk, chunk_overlap, tile) for an h x w latent whose windows fit ``budget`` bytes of GPU memory.

    ``unet_bytes(batch, th, tw)`` is the denoiser's own estimate for one call (ComfyUI's
    ``model.memory_required``); a window costs that times ``CONTROL_OVERHEAD``. Tiles shrink first (down
    to 32 latent px, 256 image px), then the chunk halves; the requested sizes are upper bounds.
    """
    def fits(c: int, t: int) -> bool:
        th, tw = (h, w) if t <= 0 else (min(t, h), min(t, w))
        return unet_bytes(c, th, tw) * CONTROL_OVERHEAD <= budget

    smaller = [t for t in LATENT_TILE_CANDIDATES if t < max(h, w) and t > tile_overlap]
    return fit_chunk_and_tile(chunk, chunk_overlap, tile, smaller, fits, comfortable_tile=32)


NOISE_MODES = ("independent", "shared", "mv-warped")


def make_noise(shape: tuple[int, int, int, int], seed: int, mode: str = "independent",
               flow_to_prev: Optional[torch.Tensor] = None, valid_to_prev: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
    """Initial noise (T, C, h, w) on the CPU, deterministic in ``seed``.

    - independent: frame t gets ``randn`` of generator ``seed + t`` (a frame's noise does not depend on T);
    - shared: every frame gets frame 0's noise;
    - mv-warped: frame t is frame t-1's noise moved along the codec motion (nearest sampling keeps it
      exactly Gaussian); where the motion is invalid or leaves the frame, fresh noise of frame t is used.
      ``flow_to_prev`` (T, 2, H', W') in pixels of an H'-high grid, rescaled to the latent grid here;
      ``valid_to_prev`` (T, 1, H'', W'') bool.
    """
    t, c, h, w = shape
    if mode not in NOISE_MODES:
        raise CPGDInputError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")

    def fresh(i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed) + i)
        return torch.randn((c, h, w), generator=g)

    if mode == "shared":
        return fresh(0).expand(t, c, h, w).clone()
    noise = torch.stack([fresh(i) for i in range(t)])
    if mode == "independent":
        return noise
    if flow_to_prev is None or valid_to_prev is None:
        raise CPGDInputError("noise mode mv-warped needs codec priors (motion vectors)")
    if flow_to_prev.shape[0] != t:
        raise CPGDInputError(f"mv-warped noise: {flow_to_prev.shape[0]} motion fields for {t} frames")
    flow = resize_flow(flow_to_prev.float(), (h, w))
    valid = torch.nn.functional.interpolate(valid_to_prev.float(), size=(h, w), mode="nearest") > 0.5
    for i in range(1, t):
        moved = warp(noise[i - 1:i], flow[i:i + 1], mode="nearest", padding_mode="zeros")
        inside = warp(torch.ones(1, 1, h, w), flow[i:i + 1], mode="nearest", padding_mode="zeros") > 0.5
        keep = valid[i:i + 1] & inside
        noise[i] = torch.where(keep, moved, noise[i:i + 1])[0]
    return noise


@dataclass
class Window:
    """One call of the sampler: frames [start, stop) and the latent crop (y0, x0, th, tw)."""
    start: int
    stop: int
    y0: int
    x0: int
    th: int
    tw: int

    @property
    def frames(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def crop(self) -> tuple[int, int, int, int]:
        return (self.y0, self.x0, self.th, self.tw)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C, h, w) -> this window's (stop - start, C, th, tw)."""
        return x[self.start:self.stop, :, self.y0:self.y0 + self.th, self.x0:self.x0 + self.tw]


def plan_windows(n: int, h: int, w: int, chunk: int, chunk_overlap: int, tile: int, tile_overlap: int
                 ) -> list[Window]:
    return [Window(a, b, *t) for a, b in chunk_windows(n, chunk, chunk_overlap) for t in tile_grid(h, w, tile,
                                                                                                    tile_overlap)]


def sample_windows(latent: torch.Tensor, noise: torch.Tensor,
                   sample_fn: Callable[[Window, torch.Tensor, torch.Tensor], torch.Tensor],
                   chunk: int, chunk_overlap: int = 0, tile: int = 0, tile_overlap: int = 0,
                   progress: Optional[Callable[[int, int], None]] = None,
                   check_interrupt: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Run ``sample_fn(window, latent_window, noise_window) -> denoised window`` over all chunks and tiles and blend.

    Spatial tiles are blended with Gaussian weights, temporal chunk overlaps with linear cross-fades; the
    result is normalised by the summed weights, so windows that agree blend to exactly their common value.
    Only one chunk's accumulators are alive at a time besides the (small) full latent output.
    """
    n, c, h, w = latent.shape
    ranges = chunk_windows(n, chunk, chunk_overlap)
    tiles = tile_grid(h, w, tile, tile_overlap)
    total = len(ranges) * len(tiles)
    blender = ChunkBlender()
    parts = []
    done = 0
    gauss_cache: dict[tuple[int, int], torch.Tensor] = {}
    for a, b in ranges:
        acc = torch.zeros(b - a, c, h, w, dtype=torch.float32)
        wsum = torch.zeros(1, 1, h, w, dtype=torch.float32)
        for (y0, x0, th, tw) in tiles:
            if check_interrupt is not None:
                check_interrupt()
            win = Window(a, b, y0, x0, th, tw)
            res = sample_fn(win, win.take(latent), win.take(noise)).float().cpu()
            if res.shape != (b - a, c, th, tw):
                raise RuntimeError(f"sampler returned {tuple(res.shape)} for window {win}")
            if len(tiles) == 1:
                g = torch.ones(th, tw)
            else:
                g = gauss_cache.setdefault((th, tw), gaussian_weights(th, tw))
            acc[:, :, y0:y0 + th, x0:x0 + tw] += res * g
            wsum[:, :, y0:y0 + th, x0:x0 + tw] += g
            done += 1
            if progress is not None:
                progress(done, total)
        final = blender.add(a, acc / wsum)
        if final is not None:
            parts.append(final)
    parts.append(blender.flush())
    return torch.cat(parts)
