"""Synthetic streaming data: boxes moving at constant velocity, and a noisy detector that sees them.

Used by the tests and ``bench/streaming.py`` to measure what forecasting and scheduling buy under a known
latency, with ground truth that is exact by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.streaming.formats import StreamingOutputs, StreamOutput


def moving_boxes_gt(
    n_seqs: int = 2,
    n_frames: int = 60,
    objects_per_seq: int = 4,
    *,
    image_size: tuple[int, int] = (1920, 1200),
    speed_px: tuple[float, float] = (4.0, 10.0),
    size_px: tuple[float, float] = (80.0, 200.0),
    horizontal: bool = False,
    categories: tuple[str, ...] = ("person", "car"),
    seed: int = 0,
) -> dict[str, Any]:
    """An Argoverse-HD-style COCO ground truth of ``n_seqs`` sequences of ``n_frames`` frames.

    Each object has a fixed size (w, h drawn in ``size_px``), a constant velocity of magnitude drawn in
    ``speed_px`` (pixels per frame; along x only if ``horizontal``) and stays fully inside the image for the
    whole sequence. Sequences are named ``seq_0``, ``seq_1``, ...; categories are 0-based.
    """
    rng = np.random.default_rng(seed)
    W, H = image_size
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    names = [f"seq_{s}" for s in range(n_seqs)]
    track = 0
    for sid in range(n_seqs):
        objs = []
        for _ in range(objects_per_seq):
            w, h = rng.uniform(*size_px, size=2)
            speed = rng.uniform(*speed_px)
            angle = 0.0 if horizontal else rng.uniform(0, 2 * np.pi)
            sign = rng.choice([-1.0, 1.0])
            vx, vy = sign * speed * np.cos(angle), sign * speed * np.sin(angle)
            travel_x, travel_y = vx * (n_frames - 1), vy * (n_frames - 1)
            lo_x, hi_x = max(0.0, -travel_x), min(W - w, W - w - travel_x)
            lo_y, hi_y = max(0.0, -travel_y), min(H - h, H - h - travel_y)
            if hi_x < lo_x or hi_y < lo_y:
                raise ValueError("objects would leave the image: use fewer frames, slower or smaller boxes")
            objs.append((rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), w, h, vx, vy,
                         int(rng.integers(len(categories))), track))
            track += 1
        for fid in range(n_frames):
            iid = len(images)
            images.append({"id": iid, "sid": sid, "fid": fid, "name": f"{fid:06d}.jpg",
                           "width": W, "height": H})
            for x0, y0, w, h, vx, vy, cat, tk in objs:
                bbox = [float(x0 + vx * fid), float(y0 + vy * fid), float(w), float(h)]
                anns.append({"id": len(anns) + 1, "image_id": iid, "bbox": bbox, "category_id": cat,
                             "area": bbox[2] * bbox[3], "iscrowd": False, "ignore": False, "track": tk})
    return {
        "categories": [{"id": i, "name": n} for i, n in enumerate(categories)],
        "images": images,
        "annotations": anns,
        "sequences": names,
        "seq_dirs": names,
    }


class NoisyDetector:
    """``detector(seq_name, frame_idx) -> (bboxes_ltrb, scores, labels)``: the ground truth of that frame with
    Gaussian box noise (``sigma_px`` on each side), objects missed with probability ``miss_rate``, and
    ``n_false_pos`` low-score random boxes per frame. Deterministic in (seed, sequence, frame)."""

    def __init__(
        self, gt: dict[str, Any], *, sigma_px: float = 2.0, miss_rate: float = 0.0, n_false_pos: int = 0,
        seed: int = 0,
    ) -> None:
        self.sigma_px, self.miss_rate, self.n_false_pos, self.seed = sigma_px, miss_rate, n_false_pos, seed
        self.n_classes = len(gt["categories"])
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in gt["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        self._sid = {name: sid for sid, name in enumerate(gt["sequences"])}
        self._frames: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}
        for img in gt["images"]:
            objs = by_image.get(img["id"], [])
            boxes = np.array([a["bbox"] for a in objs], dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            labels = np.array([a["category_id"] for a in objs], dtype=np.int64)
            self._frames[(img["sid"], img["fid"])] = (boxes, labels, (img["width"], img["height"]))

    def __call__(self, seq: str, fidx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sid = self._sid[seq]
        boxes, labels, (W, H) = self._frames[(sid, fidx)]
        rng = np.random.default_rng([self.seed, sid, fidx])
        keep = rng.random(len(boxes)) >= self.miss_rate
        out = boxes[keep] + rng.normal(0.0, self.sigma_px, size=(int(keep.sum()), 4))
        scores = rng.uniform(0.5, 1.0, size=len(out))
        labs = labels[keep]
        if self.n_false_pos:
            wh = rng.uniform(40, 200, size=(self.n_false_pos, 2))
            lt = rng.uniform(0, 1, size=(self.n_false_pos, 2)) * (np.array([W, H]) - wh)
            out = np.concatenate([out, np.concatenate([lt, lt + wh], axis=1)])
            scores = np.concatenate([scores, rng.uniform(0.05, 0.4, size=self.n_false_pos)])
            labs = np.concatenate([labs, rng.integers(self.n_classes, size=self.n_false_pos)])
        return out.astype(np.float32), scores.astype(np.float32), labs.astype(np.int64)

    def offline(self, gt: dict[str, Any], fps: float = 30.0) -> dict[str, Any]:
        """Zero-latency outputs: each frame answered by its own detections (the detector's offline AP)."""
        seqs: dict[str, list[StreamOutput]] = {}
        for name in gt["sequences"]:
            sid = self._sid[name]
            n = sum(1 for img in gt["images"] if img["sid"] == sid)
            seqs[name] = [StreamOutput(f / fps, f, *self(name, f)) for f in range(n)]
        return StreamingOutputs(fps=fps, eta=0.0, sequences=seqs).to_json()
