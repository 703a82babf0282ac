"""Streaming perception (Li, Wang, Ramanan, ECCV 2020): streaming AP, Kalman forecasting, shrinking-tail
scheduling. Pure python/numpy (+ pycocotools for COCO AP); nothing here imports the serving stack.

* :mod:`zoo.streaming.formats`   the streaming-outputs JSON format and the Argoverse-HD-style ground truth
* :mod:`zoo.streaming.evaluate`  ``streaming_eval``: sAP as the official toolkit (optionally with forecasting)
* :mod:`zoo.streaming.forecast`  ``KalmanForecaster``: the official KF post-processing, usable per live stream
* :mod:`zoo.streaming.schedule`  shrinking-tail policy and a seeded streaming-detector simulator
* :mod:`zoo.streaming.synthetic` moving-box sequences and a noisy detector, for tests and benchmarks
"""

from zoo.streaming.evaluate import STAT_NAMES, StreamingEvalResult, coco_eval, pair_frames, streaming_eval
from zoo.streaming.forecast import KalmanForecaster, extrap_clean_up
from zoo.streaming.formats import StreamingOutputs, StreamOutput, load_gt
from zoo.streaming.schedule import (
    ShrinkingTailScheduler,
    shrinking_tail_wait,
    simulate_stream,
    simulate_streams,
)

__all__ = [
    "STAT_NAMES",
    "KalmanForecaster",
    "ShrinkingTailScheduler",
    "StreamOutput",
    "StreamingEvalResult",
    "StreamingOutputs",
    "coco_eval",
    "extrap_clean_up",
    "load_gt",
    "pair_frames",
    "shrinking_tail_wait",
    "simulate_stream",
    "simulate_streams",
    "streaming_eval",
]
