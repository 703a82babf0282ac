"""Face tracks across frames by IoU linking, and FTCN's 32-frame windows over them.

Official behaviour (yinglinzheng/FTCN ``test_tools/ct/operations.py``): a track starts on a first-frame
face scoring >= 0.8 and follows, frame by frame, the face with the highest IoU to its previous box, dying
as soon as a frame has none with IoU >= 0.5; only tracks spanning the whole video are kept, and if there
are none, ``find_longest`` falls back to the first track of the longest runs with a constant face count.

Here (deliberate differences, documented in docs): tracks may start and end anywhere, every face gets its
own track (greedy one-to-one matching by IoU >= ``iou_threshold``, new tracks need score >=
``start_score``), and a face missed for up to ``max_gap`` frames does not break its track -- its box and
landmarks are linearly interpolated over the gap (``max_gap=0`` reproduces the official no-gap rule).
Tracks shorter than ``min_length`` frames are dropped. A face present in every frame gives exactly the
official single full-length track.

Windows (``test_on_raw_video.py``): every run of ``clip_len`` consecutive track frames, stride 1; a track
shorter than ``clip_len`` is first mirror-padded ("ping-pong", edges not repeated) by ``clip_len - 1``
frames on both sides. :func:`plan_windows` does the same with a configurable stride; with stride > 1 the
last window is always added so every frame is covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of (x1, y1, x2, y2) boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class Track:
    """One face over consecutive frames ``start .. start + len - 1`` (indices into the analysed frames)."""

    track_id: int
    start: int
    boxes: np.ndarray  # (n, 4) float
    landmarks: np.ndarray  # (n, 5, 2) float
    scores: np.ndarray  # (n,) detector score; NaN where interpolated
    observed: np.ndarray = field(default=None)  # type: ignore[assignment]  # (n,) bool: detected (not filled)

    def __post_init__(self) -> None:
        if self.observed is None:
            self.observed = ~np.isnan(self.scores)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def end(self) -> int:
        """Last frame index (inclusive)."""
        return self.start + len(self) - 1

    @property
    def frames(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self))


class _Builder:
    def __init__(self, frame: int, box: np.ndarray, marks: np.ndarray, score: float) -> None:
        self.frames = [frame]
        self.boxes = [box]
        self.marks = [marks]
        self.scores = [score]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(self, frame: int, box: np.ndarray, marks: np.ndarray, score: float) -> None:
        self.frames.append(frame)
        self.boxes.append(box)
        self.marks.append(marks)
        self.scores.append(score)

    def build(self, track_id: int) -> Track:
        frames = np.asarray(self.frames)
        full = np.arange(frames[0], frames[-1] + 1)
        boxes = np.stack(self.boxes).astype(np.float64)
        marks = np.stack(self.marks).astype(np.float64).reshape(len(frames), 10)
        boxes_full = np.stack([np.interp(full, frames, boxes[:, k]) for k in range(4)], axis=1)
        marks_full = np.stack([np.interp(full, frames, marks[:, k]) for k in range(10)], axis=1)
        scores = np.full(len(full), np.nan)
        scores[frames - frames[0]] = self.scores
        return Track(track_id, int(frames[0]), boxes_full, marks_full.reshape(-1, 5, 2), scores)


def link_tracks(
    detections: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
    start_score: float = 0.8,
    max_gap: int = 2,
    min_length: int = 8,
) -> list[Track]:
    """Link per-frame faces into tracks.

    ``detections``: ``(frame_index, boxes (n, 4), landmarks (n, 5, 2), scores (n,))`` for every *examined*
    frame, in increasing frame order (frames skipped on purpose -- detection every k-th frame -- are simply
    absent; their boxes are interpolated like gaps). ``max_gap`` counts examined frames without a match.
    Returns tracks with ids 0.. in order of their first frame.
    """
    active: list[tuple[_Builder, int]] = []  # (track, examined frames missed so far)
    done: list[_Builder] = []
    for frame, boxes, marks, scores in detections:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        marks = np.asarray(marks, dtype=np.float64).reshape(-1, 5, 2)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        taken = np.zeros(len(boxes), dtype=bool)
        matched = [False] * len(active)
        if active and len(boxes):
            ious = iou_matrix(np.stack([t.boxes[-1] for t, _ in active]), boxes)
            pairs = sorted(((ious[i, j], i, j) for i in range(len(active)) for j in range(len(boxes))
                            if ious[i, j] >= iou_threshold), reverse=True)
            for _, i, j in pairs:
                if matched[i] or taken[j]:
                    continue
                matched[i] = taken[j] = True
                active[i][0].add(frame, boxes[j], marks[j], float(scores[j]))
        still = []
        for (track, missed), hit in zip(active, matched, strict=True):
            missed = 0 if hit else missed + 1
            if missed > max_gap:
                done.append(track)
            else:
                still.append((track, missed))
        for j in np.flatnonzero(~taken):
            if scores[j] >= start_score:
                still.append((_Builder(frame, boxes[j], marks[j], float(scores[j])), 0))
        active = still
    done.extend(t for t, _ in active)
    built = [b for b in done if b.last - b.frames[0] + 1 >= min_length]
    built.sort(key=lambda b: (b.frames[0], b.boxes[0][0]))
    return [b.build(i) for i, b in enumerate(built)]


def mirror_pad(n: int, clip_len: int) -> list[int]:
    """Frame order of a track of ``n`` frames as FTCN feeds it: ``range(n)`` if ``n >= clip_len``, else
    padded by ``clip_len - 1`` ping-pong mirrored frames on each side (..., 2, 1, [0, ..., n-1], n-2, ...).

    (The official code builds the leading pad with a wrong length and fails for n < 9; this is the
    intended padding for every n >= 1.)
    """
    if n < 1:
        raise ValueError("a track needs at least one frame")
    idx = list(range(n))
    if n >= clip_len:
        return idx
    pad = clip_len - 1
    period = idx + idx[-2:0:-1] if n > 1 else [0]  # 0..n-1, n-2..1: one ping-pong cycle
    after = [period[(n - 1 + k) % len(period)] for k in range(1, pad + 1)]
    before = [period[(-k) % len(period)] for k in range(pad, 0, -1)]
    return before + idx + after


def plan_windows(n: int, clip_len: int = 32, stride: int = 1) -> list[list[int]]:
    """The ``clip_len``-frame windows (track-relative frame positions) over a track of ``n`` frames."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    order = mirror_pad(n, clip_len)
    last = len(order) - clip_len
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return [order[s:s + clip_len] for s in starts]
