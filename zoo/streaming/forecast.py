"""Per-object constant-velocity Kalman forecasting, as the sAP toolkit's post-processing.

Mirrors ``forecast/pps_forecast_kf.py --forecast-before-assoc --assoc iou`` of mtli/sAP:

* state ``[l, t, w, h, vl, vt, vw, vh]`` in pixels, time in **frames** (input frame indices);
  ``F`` = identity with ``dt`` at (i, i+4), ``Q = dt² I``, ``R = 10 I``, ``P0 = 100 I``, ``H`` = first four;
* when a new detector output (computed on frame ``f``) arrives, every track is first predicted to ``f``
  (``dt = f - frame of the previous output``), then detections, sorted by descending score, each take
  the unmatched same-class track of highest IoU (>= ``match_iou_th``; on equal IoU the later track), matched
  tracks get the KF update, unmatched detections start new tracks with zero velocity, unmatched tracks are
  dropped; with no match at all, the tracks restart from the detections;
* an output with no detections keeps the (predicted) tracks;
* the forecast for frame ``i`` is ``x[:4] + (i - f) x[4:]``, then ``extrap_clean_up``: clip to the image and
  drop boxes with w <= 0 or h <= 0 or ``int(w) * int(h) < 75``.

The filter is batched over tracks in numpy, in float32 by default as the official run (its float64 variant
differs by < 5e-4 px on the golden stream). State is bounded: the tracks are exactly the last non-empty
output's detections.

One deliberate difference: before a sequence's first non-empty output the official loop re-emits the previous
frame's list (a stale variable); here nothing is reported then. The golden stream never reaches that case.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def box_iou_ltwh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of [l, t, w, h] boxes, in float64 as pycocotools ``maskUtils.iou``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = a[:, 2] * a[:, 3]
    area_b = b[:, 2] * b[:, 3]
    w = np.minimum((a[:, 2] + a[:, 0])[:, None], (b[:, 2] + b[:, 0])[None, :]) - np.maximum(
        a[:, 0][:, None], b[:, 0][None, :])
    h = np.minimum((a[:, 3] + a[:, 1])[:, None], (b[:, 3] + b[:, 1])[None, :]) - np.maximum(
        a[:, 1][:, None], b[:, 1][None, :])
    inter = w * h
    union = (area_a[:, None] + area_b[None, :]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def greedy_iou_assoc(
    iou: np.ndarray, track_labels: np.ndarray, det_labels: np.ndarray, match_iou_th: float
) -> tuple[list[int], list[int], list[int]]:
    """Greedy association in detection order (the official ``iou_assoc``).

    Returns (matched tracks, matched detections, unmatched detections), the matches in detection order.
    Each detection takes, among unmatched tracks of its label with IoU >= ``match_iou_th``, the one of highest
    IoU (the last such track on ties).
    """
    m, n = iou.shape
    free = np.ones(m, dtype=bool)
    same = track_labels[:, None] == det_labels[None, :]
    matched_t: list[int] = []
    matched_d: list[int] = []
    unmatched_d: list[int] = []
    for j in range(n):
        ok = free & same[:, j] & (iou[:, j] >= match_iou_th)
        if not ok.any():
            unmatched_d.append(j)
            continue
        col = np.where(ok, iou[:, j], -np.inf)
        i = int(np.flatnonzero(col == col.max())[-1])
        free[i] = False
        matched_t.append(i)
        matched_d.append(j)
    return matched_t, matched_d, unmatched_d


def extrap_clean_up(
    boxes_ltwh: np.ndarray, w_img: float, h_img: float, min_size: int = 75
) -> tuple[np.ndarray, np.ndarray]:
    """(kept boxes, keep mask): clip [l, t, w, h] boxes to the image and drop degenerate or tiny ones.

    As the official ``extrap_clean_up(lt=True)``: boxes whose forecast w or h is <= 0 are dropped, the rest
    are clipped to [0, w_img] x [0, h_img] in their own dtype, and those with ``int(w) * int(h) < min_size``
    are dropped.
    """
    b = np.array(boxes_ltwh, copy=True).reshape(-1, 4)
    keep = (b[:, 2] > 0) & (b[:, 3] > 0)
    b[:, 2:] = b[:, :2] + b[:, 2:]
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w_img)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h_img)
    b[:, 2:] = b[:, 2:] - b[:, :2]
    keep &= b[:, 2].astype(np.int64) * b[:, 3].astype(np.int64) >= min_size
    return b[keep], keep


class KalmanForecaster:
    """Tracks one stream's objects and forecasts their boxes at any later frame.

    ``update(frame_idx, boxes_ltwh, scores, labels)`` with each new detector output (``frame_idx`` = the frame
    it was computed on, non-decreasing), ``forecast(target_frame_idx)`` whenever an answer is due. Boxes are
    [l, t, w, h] pixels. ``track_ids`` are stable across updates for matched objects.
    """

    def __init__(
        self,
        match_iou_th: float = 0.3,
        *,
        q_scale: float = 1.0,
        r_var: float = 10.0,
        p0_var: float = 100.0,
        min_size: int = 75,
        dtype: Any = np.float32,
    ) -> None:
        self.match_iou_th = float(match_iou_th)
        self.dtype = np.dtype(dtype)
        self.q_scale = q_scale
        self.R = (r_var * np.eye(4)).astype(self.dtype)
        self.P0 = (p0_var * np.eye(8)).astype(self.dtype)
        self.min_size = min_size
        self.reset()

    def reset(self) -> None:
        self.x = np.zeros((0, 8), self.dtype)
        self.P = np.zeros((0, 8, 8), self.dtype)
        self.labels = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float32)
        self.track_ids = np.zeros(0, np.int64)
        self.n_matched = 0
        self.frame_idx: int | None = None
        self._next_id = 0
        self.last_track_ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def _predict(self, dt: int) -> None:
        F = np.eye(8, dtype=self.dtype)
        F[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
        Q = (self.q_scale * dt * dt * np.eye(8)).astype(self.dtype)
        self.x = np.matmul(F, self.x[:, :, None])[:, :, 0]
        self.P = np.matmul(np.matmul(F, self.P), F.T) + Q

    def _update(self, z: np.ndarray) -> None:
        """KF update of every track with measurements ``z`` (same order); H = the first four components."""
        y = z - self.x[:, :4]
        S = self.P[:, :4, :4] + self.R
        K = np.matmul(self.P[:, :, :4], np.linalg.inv(S))
        self.x = self.x + np.matmul(K, y[:, :, None])[:, :, 0]
        self.P = self.P - np.matmul(K, self.P[:, :4, :])

    def _start(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        n = len(boxes)
        self.x = np.concatenate([boxes, np.zeros_like(boxes)], axis=1).astype(self.dtype)
        self.P = np.repeat(self.P0[None], n, axis=0)
        self.labels, self.scores = labels, scores
        self.track_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        self.n_matched = 0

    def update(self, frame_idx: int, boxes_ltwh: Any, scores: Any, labels: Any) -> None:
        """Feed a detector output computed on frame ``frame_idx``."""
        frame_idx = int(frame_idx)
        boxes = np.asarray(boxes_ltwh, dtype=self.dtype).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError("boxes, scores and labels must have the same length")
        if self.frame_idx is not None and frame_idx < self.frame_idx:
            raise ValueError(f"frame_idx went back from {self.frame_idx} to {frame_idx}")
        if len(self.x):
            self._predict(frame_idx - self.frame_idx)
        self.frame_idx = frame_idx
        n = len(boxes)
        if n == 0:
            return  # the predicted tracks carry on
        # highest score first (reversed stable ascending sort: the official order whenever it is stable)
        order = np.argsort(scores, kind="stable")[::-1]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        if len(self.x):
            iou = box_iou_ltwh(self.x[:, :4], boxes)
            mt, md, ud = greedy_iou_assoc(iou, self.labels, labels, self.match_iou_th)
            if mt:
                self.x, self.P = self.x[mt], self.P[mt]
                self._update(boxes[md])
                new = boxes[ud]
                self.x = np.concatenate([self.x, np.concatenate([new, np.zeros_like(new)], axis=1)])
                self.P = np.concatenate([self.P, np.repeat(self.P0[None], len(ud), axis=0)])
                det_order = md + ud
                self.labels, self.scores = labels[det_order], scores[det_order]
                new_ids = np.arange(self._next_id, self._next_id + len(ud), dtype=np.int64)
                self._next_id += len(ud)
                self.track_ids = np.concatenate([self.track_ids[mt], new_ids])
                self.n_matched = len(mt)
                return
        self._start(boxes, scores, labels)

    def forecast(
        self, target_frame_idx: int, image_size: tuple[float, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes_ltwh, scores, labels) forecast at frame ``target_frame_idx``.

        With ``image_size=(width, height)`` the official clean-up is applied (clip, drop degenerate and
        < ``min_size`` px² boxes). ``last_track_ids`` then holds the ids of the returned boxes.
        """
        if not len(self.x):
            self.last_track_ids = np.zeros(0, np.int64)
            return np.zeros((0, 4), self.dtype), np.zeros(0, np.float32), np.zeros(0, np.int64)
        dt = self.dtype.type(int(target_frame_idx) - self.frame_idx)
        m = self.n_matched
        boxes = np.concatenate([self.x[:m, :4] + dt * self.x[:m, 4:], self.x[m:, :4]])
        scores, labels, ids = self.scores, self.labels, self.track_ids
        if image_size is not None:
            boxes, keep = extrap_clean_up(boxes, image_size[0], image_size[1], self.min_size)
            scores, labels, ids = scores[keep], labels[keep], ids[keep]
        self.last_track_ids = ids
        return boxes, scores, labels
