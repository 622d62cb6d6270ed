"""Splitting one long video into segments that are restored in parallel, and joining them again.

A segment is a run of the streaming windows (``schedule.stream_windows``) that ``deblur`` processes, so every
window is restored from exactly the same frames and priors as in a single-process run: decoding seeks to the
keyframe before a segment's first frame and the priors restart at keyframes (``codec.decode``), so a frame's
priors do not depend on where decoding began. Segments start just after a keyframe (little decoding thrown
away) and share their boundary window's overlap with the next segment. A segment writes three parts:

* ``head``: its first ``overlap`` frames, which the previous segment's last window also covers (float32),
* ``body``: the frames no other segment touches, final (lossless FFV1 RGB, exactly the uint8 a writer makes),
* ``tail``: its last ``overlap`` frames, shared with the next segment (float32).

``join_segments`` cross-fades each tail with the next head using ``schedule.ChunkBlender``, the blend of the
streaming path, and encodes everything once. Needs ``2 * overlap < chunk`` (each frame in at most two windows).
Videos whose priors come from a re-encode (codecs without motion vectors) are not split: the re-encode
starts where decoding starts, so their priors would depend on the split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import av
import numpy as np
import torch

from ..errors import CPGDInputError
from ..fileio import atomic_write
from .schedule import ChunkBlender, stream_windows

_BLOCK = 16  # frames per block when reading a body back


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of the processed video; ``head``/``tail`` frames at the ends are shared."""

    index: int
    start: int
    stop: int
    head: int
    tail: int

    @property
    def frames(self) -> int:
        """Frames this segment adds to the output (its head belongs to the previous segment's count)."""
        return self.stop - self.start - self.head


def plan_segments(total: int, chunk: int, overlap: int, segment_frames: int, keyframes: Iterable[int] = (),
                  splittable: bool = True) -> list[Segment]:
    """Cut ``total`` frames into segments of about ``segment_frames`` (at least two chunks) on window starts.

    ``keyframes``: display indices of the keyframes. A cut goes at the first window start that lies just
    after a keyframe (within one window step) once the segment is long enough; without one within twice the
    length it goes where the length is reached. No segment is shorter than half the length. One segment when
    ``splittable`` is False, ``segment_frames`` <= 0 or ``2 * overlap >= chunk``.
    """
    windows = stream_windows(total, chunk, overlap)
    step = chunk - overlap
    length = max(segment_frames, 2 * chunk)
    if not splittable or segment_frames <= 0 or 2 * overlap >= chunk or total < length + length // 2:
        return [Segment(0, 0, total, 0, 0)]
    keys = sorted(k for k in keyframes if k > 0)
    cuts = [0]
    for i in range(1, len(windows)):
        s, seg_start = windows[i][0], windows[cuts[-1]][0]
        if s - seg_start < length or total - s < length // 2:
            continue
        after_key = any(k < s <= k + step for k in keys)
        if after_key or s - seg_start >= 2 * length:
            cuts.append(i)
    bounds = cuts + [len(windows)]
    segs = []
    for n, (i, j) in enumerate(zip(bounds[:-1], bounds[1:])):
        head = windows[i - 1][1] - windows[i][0] if i > 0 else 0
        tail = windows[j - 1][1] - windows[j][0] if j < len(windows) else 0
        segs.append(Segment(n, windows[i][0], windows[j - 1][1], head, tail))
    return segs


def part_paths(parts_dir: str, seg: Segment) -> dict[str, str]:
    base = os.path.join(parts_dir, f"seg{seg.index:05d}")
    return {"head": base + ".head.pt", "body": base + ".body.mkv", "tail": base + ".tail.pt"}


def _save_tensor(t: torch.Tensor, path: str) -> None:
    with atomic_write(path) as tmp:
        torch.save(t.contiguous().clone(), tmp)


def write_segment(blocks: Iterable[torch.Tensor], seg: Segment, parts_dir: str, fps) -> int:
    """Store the restored frames of ``seg`` (float32 (n, 3, H, W) blocks in order) as its head/body/tail parts.
    Returns the frames received; raises if that is not the segment's length (a corrupt or short file)."""
    from ..codec.encode import VideoWriter

    paths = part_paths(parts_dir, seg)
    os.makedirs(parts_dir, exist_ok=True)
    head: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []  # body frames held back until it is known they are not the tail
    got = 0
    with VideoWriter(paths["body"], fps, codec="ffv1", pix_fmt="bgr0", overwrite=True) as body:
        for block in blocks:
            got += len(block)
            need = seg.head - sum(len(h) for h in head)
            if need > 0:
                head.append(block[:need])
                block = block[need:]
            pending.append(block)
            held = torch.cat(pending)
            if len(held) > seg.tail:
                body.write(held[: len(held) - seg.tail])
                held = held[len(held) - seg.tail:]
            pending = [held]
        if got != seg.stop - seg.start:
            raise CPGDInputError(f"segment {seg.index} (frames {seg.start}-{seg.stop}) decoded to {got} frames: "
                                 f"corrupt or truncated video")
    if seg.head:
        _save_tensor(torch.cat(head), paths["head"])
    if seg.tail:
        _save_tensor(torch.cat(pending), paths["tail"])
    return got


def _body_blocks(path: str) -> Iterator[np.ndarray]:
    """(n, 3, H, W) uint8 blocks of a lossless body file."""
    buf = []
    try:
        with av.open(path) as c:
            for fr in c.decode(c.streams.video[0]):
                buf.append(fr.to_ndarray(format="rgb24"))
                if len(buf) == _BLOCK:
                    yield np.stack(buf).transpose(0, 3, 1, 2)
                    buf = []
    except (av.error.FFmpegError, IndexError) as e:
        raise CPGDInputError(f"segment part {path} is unreadable ({e})") from e
    if buf:
        yield np.stack(buf).transpose(0, 3, 1, 2)


def joined_frames(segs: list[Segment], parts_dir: str) -> Iterator[torch.Tensor | np.ndarray]:
    """The whole restored video from the segments' parts: bodies as stored, each boundary cross-faded exactly
    as ``restore_stream`` cross-fades consecutive windows."""
    tail: Optional[torch.Tensor] = None
    for seg in segs:
        paths = part_paths(parts_dir, seg)
        if seg.head:
            blender = ChunkBlender()
            blender.add(0, tail)
            blender.add(0, torch.load(paths["head"], weights_only=True))
            yield blender.flush()
        yield from _body_blocks(paths["body"])
        tail = torch.load(paths["tail"], weights_only=True) if seg.tail else None


def join_segments(segs: list[Segment], parts_dir: str, output: str, fps, audio: Optional[dict], crf: int,
                  metadata: Optional[dict[str, str]] = None, progress: Optional[Callable[[int], None]] = None) -> int:
    """Encode the joined segments into ``output`` (appears only when complete); returns the frame count."""
    from ..codec.encode import VideoWriter

    expected = sum(s.stop - s.start - s.head for s in segs)
    done = 0
    with VideoWriter(output, fps, audio=audio, crf=crf, overwrite=True, metadata=metadata) as w:
        for block in joined_frames(segs, parts_dir):
            w.write(block)
            done += len(block)
            if progress is not None:
                progress(done)
        if done != expected:
            raise CPGDInputError(f"joined {done} frames, expected {expected} ({output})")
    return done
