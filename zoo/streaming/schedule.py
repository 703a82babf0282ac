"""Shrinking-tail scheduling and a simulator of a streaming detector.

A detector slower than the frame rate must choose, each time it frees up, between processing the latest frame
now or idling until the next frame arrives. "Towards Streaming Perception" (Sec. 4, Alg. 1; the sAP toolkit's
``det/srt_det.py --dynamic-schedule`` and its scheduling simulator) gives the *shrinking-tail* rule: with time
``s`` in frames when the detector frees up and runtime ``r`` in frames (``r > 1``), with the tail
``tau(x) = x - floor(x)``, **wait for the next frame iff tau(s + r) < tau(s)**, i.e. iff waiting does not
delay the next output past one more frame boundary (computed as ``r < floor(tau(s) + r)``, the official form).
Runtimes of at most one frame never wait.

:func:`simulate_stream` replays a sequence on a simulated clock (as ``srt_det.py``): the detector takes the
latest frame when free (or idles when the policy says so, or when that frame was already processed), its
latency is drawn per run from a fixed value, an array or a seeded callable, and each result becomes a
timestamped :class:`~zoo.streaming.formats.StreamOutput`, ready for
:func:`zoo.streaming.evaluate.streaming_eval`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zoo.streaming.formats import StreamingOutputs, StreamOutput

# policy(fidx_continuous, runtime_frames) -> True to idle until the next frame
Policy = Callable[[float, float], bool]
Latency = float | Sequence[float] | np.ndarray | Callable[[np.random.Generator], float]
Detector = Callable[[int], tuple[Any, Any, Any]]


def tail(x: float) -> float:
    return x - math.floor(x)


def shrinking_tail_wait(t_free_frames: float, runtime_frames: float) -> bool:
    """The shrinking-tail decision: True = idle until the next frame, False = process the latest frame now.

    ``t_free_frames``: time the detector frees up, in frames since the stream started (continuous).
    ``runtime_frames``: expected runtime, in frames.
    """
    if runtime_frames <= 1:
        return False
    return runtime_frames < math.floor(tail(t_free_frames) + runtime_frames)


def never_wait(t_free_frames: float, runtime_frames: float) -> bool:
    """Always process the latest frame as soon as the detector is free (the default policy of the paper)."""
    return False


POLICIES: dict[str, Policy] = {"latest": never_wait, "shrinking_tail": shrinking_tail_wait}


class ShrinkingTailScheduler:
    """Online form for a live stream: decide per free-up, learning the runtime as a running mean.

    ``decide(t_free_s)`` -> ``(frame_idx, start_s)``: the frame to process and when to start it (``start_s``
    is ``t_free_s`` itself, or the next frame's arrival when the rule says to wait). Call
    ``observe(runtime_s)`` after each run. Until a runtime was observed (and no ``expected_runtime_s`` given)
    it never waits.
    """

    def __init__(self, fps: float, expected_runtime_s: float | None = None) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps = float(fps)
        self._sum = 0.0 if expected_runtime_s is None else float(expected_runtime_s)
        self._count = 0 if expected_runtime_s is None else 1
        self.last_frame: int | None = None

    @property
    def runtime_frames(self) -> float:
        return self._sum / self._count * self.fps if self._count else 0.0

    def observe(self, runtime_s: float) -> None:
        self._sum += float(runtime_s)
        self._count += 1

    def decide(self, t_free_s: float) -> tuple[int, float]:
        fc = t_free_s * self.fps
        fidx = math.floor(fc)
        if fidx == self.last_frame or shrinking_tail_wait(fc, self.runtime_frames):
            fidx += 1
            start = fidx / self.fps
        else:
            start = t_free_s
        self.last_frame = fidx
        return fidx, start


def _latency_sampler(latency: Latency, rng: np.random.Generator) -> tuple[Callable[[], float], float]:
    """(draw, expected value) for a fixed value, an array (used in order, cycling) or a callable(rng)."""
    if callable(latency):
        # expectation from an independent generator so the drawn sequence does not depend on it
        probe = np.random.default_rng(np.random.SeedSequence(12345))
        mean = float(np.mean([latency(probe) for _ in range(2000)]))
        return (lambda: float(latency(rng))), mean
    arr = np.asarray(latency, dtype=np.float64).reshape(-1)
    if not len(arr) or np.any(arr <= 0) or not np.all(np.isfinite(arr)):
        raise ValueError("latencies must be positive finite seconds")
    if len(arr) == 1:
        value = float(arr[0])
        return (lambda: value), value
    pos = itertools.count()
    return (lambda: float(arr[next(pos) % len(arr)])), float(arr.mean())


def simulate_stream(
    n_frames: int,
    detector: Detector,
    latency: Latency,
    *,
    fps: float = 30.0,
    policy: str | Policy = "latest",
    expected_latency: float | None = None,
    seed: int = 0,
) -> list[StreamOutput]:
    """Replay a sequence of ``n_frames`` frames at ``fps`` through a simulated detector.

    detector(frame_idx) -> (bboxes_ltrb, scores, labels) for that frame. latency: seconds per run — a number,
    an array (consumed in order, cycling) or ``callable(rng) -> seconds`` drawn with
    ``np.random.default_rng(seed)``. policy: ``"latest"`` (process the latest frame when free),
    ``"shrinking_tail"``, or ``callable(fidx_continuous, runtime_frames) -> wait``; the runtime it is given is
    ``expected_latency`` (default: the latency's mean) in frames. Outputs produced after the last frame's
    display interval ends are dropped, as in the official simulator.
    """
    if n_frames < 0:
        raise ValueError("n_frames must be >= 0")
    decide = POLICIES[policy] if isinstance(policy, str) else policy
    rng = np.random.default_rng(seed)
    draw, mean = _latency_sampler(latency, rng)
    runtime_frames = (mean if expected_latency is None else float(expected_latency)) * fps
    t_total = n_frames / fps
    t = 0.0
    last: int | None = None
    outputs: list[StreamOutput] = []
    while t < t_total:
        fc = t * fps
        fidx = math.floor(fc)
        if fidx == last:
            # the latest frame was already processed: idle until the next one arrives
            fidx += 1
            if fidx >= n_frames:
                break
            t = fidx / fps
        elif decide(fc, runtime_frames):
            # the policy prefers to wait: the next frame is taken on arrival (its tail is 0: no more waiting)
            last = fidx
            continue
        last = fidx
        bboxes, scores, labels = detector(fidx)
        t += draw()
        if t >= t_total:
            break
        outputs.append(StreamOutput(t, fidx, bboxes, scores, labels))
    return outputs


def simulate_streams(
    n_frames: dict[str, int],
    detector: Callable[[str, int], tuple[Any, Any, Any]],
    latency: Latency,
    *,
    fps: float = 30.0,
    policy: str | Policy = "latest",
    expected_latency: float | None = None,
    seed: int = 0,
) -> StreamingOutputs:
    """:func:`simulate_stream` over several sequences (``{name: n_frames}``, ``detector(name, frame_idx)``);
    sequence k uses seed ``seed + k``. Returns the streaming-outputs document (eta 0)."""
    seqs = {}
    for k, (name, n) in enumerate(n_frames.items()):
        seqs[name] = simulate_stream(n, lambda f, _n=name: detector(_n, f), latency, fps=fps, policy=policy,
                                     expected_latency=expected_latency, seed=seed + k)
    return StreamingOutputs(fps=fps, eta=0.0, sequences=seqs)
