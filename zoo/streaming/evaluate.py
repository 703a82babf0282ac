"""Streaming AP (Li, Wang, Ramanan, "Towards Streaming Perception", ECCV 2020), as the official sAP toolkit.

Semantics (``det/streaming_eval.py`` of mtli/sAP):

* each output carries the time it was produced; frame ``i`` of a sequence is shown at ``(i - eta) / fps``;
* frame ``i`` is judged on the **latest output whose timestamp <= its time**; a frame with no output yet is a
  *missed* frame and contributes no detections (its ground truth still counts);
* all (frame, output) pairs are scored together with COCO AP[.5:.95] (pycocotools ``COCOeval``, bbox);
* ``mismatch`` = sum over paired frames of ``i - input_fidx`` (the frame lag), ``in_time`` = frames whose
  paired output was computed on that very frame. ``mean_lag`` = mismatch / paired frames.

Boxes are float32 and ltrb->ltwh is computed in float32 as the official code does; the detections are
handed to COCOeval the way ``COCO.loadRes`` builds them from the official numpy rows (area = w*h in the boxes'
dtype), but without ``loadRes`` itself, whose ``anns[0]['bbox'] == []`` test breaks on numpy rows with
numpy >= 1.25.

With ``forecast=True`` every paired frame is instead answered by the official Kalman-filter post-processing
(``forecast/pps_forecast_kf.py --forecast-before-assoc``), see :mod:`zoo.streaming.forecast`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.streaming.forecast import KalmanForecaster
from zoo.streaming.formats import StreamingOutputs, as_outputs, load_gt, sequence_frames

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def ltrb_to_ltwh(boxes: np.ndarray) -> np.ndarray:
    """[l, t, r, b] -> [l, t, w, h] on a copy, in the boxes' own dtype (float32 for streaming outputs)."""
    out = np.array(boxes, copy=True).reshape(-1, 4)
    out[:, 2:] -= out[:, :2]
    return out


def pair_frames(timestamps: Any, n_frames: int, fps: float, eta: float = 0.0) -> np.ndarray:
    """For frames 0..n_frames-1, the index of the latest output with timestamp <= (i - eta)/fps, or -1."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        raise ValueError("output timestamps must be non-decreasing")
    t = (np.arange(n_frames) - eta) / fps
    return np.searchsorted(ts, t, side="right").astype(np.int64) - 1


def _results_coco(db: Any, results: list[dict[str, Any]]) -> Any:
    """The detections as a COCO object, built as ``COCO.loadRes`` builds bbox results."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset["images"] = list(db.dataset["images"])
    res.dataset["categories"] = copy.deepcopy(db.dataset["categories"])
    known = set(db.getImgIds())
    anns = []
    for k, r in enumerate(results):
        if r["image_id"] not in known:
            raise ValueError(f"result for image_id {r['image_id']!r}, which is not in the ground truth")
        bb = r["bbox"]
        if not isinstance(bb, np.ndarray):
            bb = np.asarray(bb, dtype=np.float64)
        l, t, w, h = (float(v) for v in bb)
        anns.append({
            "image_id": r["image_id"],
            "bbox": [l, t, w, h],
            "score": float(r["score"]),
            "category_id": int(r["category_id"]),
            "segmentation": [[l, t, l, float(bb[1] + bb[3]), float(bb[0] + bb[2]), float(bb[1] + bb[3]),
                              float(bb[0] + bb[2]), t]],
            # computed in the boxes' dtype, exactly as loadRes does on the official float32 rows
            "area": float(bb[2] * bb[3]),
            "id": k + 1,
            "iscrowd": 0,
        })
    res.dataset["annotations"] = anns
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def coco_eval(db: Any, results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO bbox AP/AR (the 12 ``COCOeval.stats``, by name) of results ``{image_id, bbox ltwh, score,
    category_id}`` against a pycocotools ``COCO`` ground truth. Order of ``results`` matters only for ties."""
    from pycocotools.cocoeval import COCOeval

    res = _results_coco(db, results)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(db, res, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}


@dataclass
class StreamingEvalResult:
    """What ``streaming_eval`` measured. ``results_ccf`` are the scored detections in official order."""

    stats: dict[str, float]
    miss: int
    in_time: int
    mismatch: int
    n_frames: int
    fps: float
    eta: float
    forecast: bool
    pairing: dict[str, list[int]] = field(default_factory=dict)
    paired_input_fidx: dict[str, list[int]] = field(default_factory=dict)
    results_ccf: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sAP(self) -> float:  # noqa: N802 - the paper's name
        return self.stats["AP"]

    @property
    def sAP50(self) -> float:  # noqa: N802
        return self.stats["AP50"]

    @property
    def sAP75(self) -> float:  # noqa: N802
        return self.stats["AP75"]

    @property
    def paired_frames(self) -> int:
        return self.n_frames - self.miss

    @property
    def mean_lag(self) -> float:
        """Mean frame lag ``i - input_fidx`` over frames that had an output (nan if none had)."""
        return self.mismatch / self.paired_frames if self.paired_frames else math.nan

    def per_frame(self) -> dict[int, list[dict[str, Any]]]:
        """image_id -> its detections ``{bbox_ltwh, score, category_id}`` (frames without any are absent)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for r in self.results_ccf:
            out.setdefault(r["image_id"], []).append(_json_det(r, with_image=False))
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready headline numbers (no per-frame data)."""
        lag = self.mean_lag
        return {
            "sAP": self.sAP, "sAP50": self.sAP50, "sAP75": self.sAP75,
            "stats": dict(self.stats),
            "frames": self.n_frames, "missed_frames": self.miss, "in_time": self.in_time,
            "mismatch": self.mismatch, "mean_lag_frames": None if math.isnan(lag) else lag,
            "fps": self.fps, "eta": self.eta, "forecast": self.forecast,
            "detections": len(self.results_ccf),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready: the summary plus pairing and the scored detections."""
        return {
            **self.summary(),
            "pairing": self.pairing,
            "paired_input_fidx": self.paired_input_fidx,
            "results_ccf": [_json_det(r) for r in self.results_ccf],
        }


def _json_det(r: Mapping[str, Any], with_image: bool = True) -> dict[str, Any]:
    d = {"bbox_ltwh": [float(v) for v in r["bbox"]], "score": float(r["score"]),
         "category_id": int(r["category_id"])}
    return {"image_id": r["image_id"], **d} if with_image else d


def streaming_eval(
    gt: Any,
    outputs: StreamingOutputs | Mapping[str, Any] | str | Path,
    *,
    fps: float | None = None,
    eta: float | None = None,
    forecast: bool | Callable[[], Any] = False,
    match_iou_th: float = 0.3,
) -> StreamingEvalResult:
    """Streaming AP of timestamped ``outputs`` against an Argoverse-HD-style COCO ground truth.

    gt: path, dict or pycocotools ``COCO``. outputs: :class:`StreamingOutputs`, its JSON dict, or a path.
    fps/eta: the stream clock; default to the values recorded in ``outputs`` (30 and 0 if absent).
    forecast: ``True`` for the official KF forecasting (greedy IoU association at ``match_iou_th``), or a
    factory returning a fresh forecaster per sequence (with ``update``/``forecast`` like
    :class:`~zoo.streaming.forecast.KalmanForecaster`).

    A sequence of the ground truth without outputs counts as all-missed; outputs for a sequence that the
    ground truth does not have are an error.
    """
    db = load_gt(gt)
    outs = as_outputs(outputs)
    fps = float(outs.fps if fps is None else fps)
    eta = float(outs.eta if eta is None else eta)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if eta < -1:
        raise ValueError(f"eta must be >= -1 (as in the official toolkit), got {eta}")
    seqs = sequence_frames(db)
    unknown = sorted(set(outs.sequences) - {name for name, _ in seqs})
    if unknown:
        raise ValueError(f"outputs for sequences not in the ground truth: {', '.join(unknown)}")

    factory: Callable[[], Any] | None
    if forecast is True:
        def factory() -> Any:
            return KalmanForecaster(match_iou_th=match_iou_th)
    else:
        factory = forecast or None

    results: list[dict[str, Any]] = []
    miss = in_time = mismatch = n_frames = 0
    pairing: dict[str, list[int]] = {}
    paired_fidx: dict[str, list[int]] = {}
    for name, frames in seqs:
        seq_outs = outs.sequences.get(name, [])
        pair = pair_frames([o.timestamp for o in seq_outs], len(frames), fps, eta)
        pairing[name] = pair.tolist()
        paired_fidx[name] = [seq_outs[k].input_fidx if k >= 0 else -1 for k in pair]
        n_frames += len(frames)
        forecaster = factory() if factory is not None else None
        fed = -1
        for ii, (img, k) in enumerate(zip(frames, pair.tolist(), strict=True)):
            if k < 0:
                miss += 1
                continue
            out = seq_outs[k]
            lag = ii - out.input_fidx
            in_time += int(lag == 0)
            mismatch += lag
            if forecaster is None:
                boxes, scores, labels = ltrb_to_ltwh(out.bboxes_ltrb), out.scores, out.labels
            else:
                if k != fed:  # a new output: only the latest one is ever fed, as in the official loop
                    forecaster.update(out.input_fidx, ltrb_to_ltwh(out.bboxes_ltrb), out.scores, out.labels)
                    fed = k
                boxes, scores, labels = forecaster.forecast(ii, image_size=(img["width"], img["height"]))
            for i in range(len(boxes)):
                results.append({"image_id": img["id"], "bbox": boxes[i], "score": scores[i],
                                "category_id": int(labels[i])})

    stats = coco_eval(db, results)
    return StreamingEvalResult(stats, miss, in_time, mismatch, n_frames, fps, eta, factory is not None,
                               pairing, paired_fidx, results)
