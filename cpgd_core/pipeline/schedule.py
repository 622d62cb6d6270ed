"""Scheduling shared by both stages: fitting chunk and tile sizes into a memory budget.

A run is cut into temporal chunks of ``chunk`` frames and spatial tiles of ``tile`` pixels (0 = whole frames);
the caller supplies ``fits(chunk, tile)``, its own estimate of whether one window fits the budget.
"""
from __future__ import annotations

from typing import Callable, Sequence


def fit_chunk_and_tile(chunk: int, overlap: int, tile: int, smaller_tiles: Sequence[int],
                       fits: Callable[[int, int], bool], comfortable_tile: int) -> tuple[int, int, int]:
    """The largest (chunk, overlap, tile) not above the requested ones for which ``fits`` holds.

    ``tile`` (0 = whole frames) is tried first, then ``smaller_tiles`` (descending) down to
    ``comfortable_tile``; if none fits, the chunk halves (the overlap shrinks to at most a quarter of it)
    and the tiles are tried again; at one frame per chunk every smaller tile is tried too. If nothing
    fits, the smallest plan is returned (the caller's out-of-memory handling takes over).
    """
    tiles = [tile] + [t for t in smaller_tiles if tile <= 0 or t < tile]
    while True:
        for t in tiles:
            if (t == tile or t >= comfortable_tile or chunk == 1) and fits(chunk, t):
                return chunk, overlap, t
        if chunk == 1:
            return chunk, overlap, tiles[-1]
        chunk = max(1, chunk // 2)
        overlap = min(overlap, chunk // 4)
