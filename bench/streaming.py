"""Streaming-perception benchmarks.

(a) capacity — concurrent video streams through the gateway + TorchServe: NOT IMPLEMENTED YET, see
    ``capacity_benchmark`` below (to be added with the served video streams).
(b) quality — streaming AP with vs without Kalman forecasting and with vs without shrinking-tail scheduling,
    for a simulated detector of set latency and box noise on synthetic moving boxes (pure CPU, seeded).

    .venv/bin/python bench/streaming.py quality                # markdown table on stdout
    .venv/bin/python bench/streaming.py quality --out table.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.streaming import simulate_streams, streaming_eval
from zoo.streaming.synthetic import NoisyDetector, moving_boxes_gt

# ---------------------------------------------------------------------------------------------------------
# (a) capacity through the gateway + TorchServe — placeholder for whoever adds the served video streams.
# ---------------------------------------------------------------------------------------------------------


def capacity_benchmark(**_: Any) -> str:
    """Part (a): how many concurrent real-time streams the gateway + TorchServe sustain (per-stream sAP and
    frame lag vs number of streams, GPU utilisation, dropped frames). Not implemented yet: it needs the served
    video streams (gateway stream sessions using ``zoo.streaming.KalmanForecaster`` and
    ``ShrinkingTailScheduler`` per stream)."""
    raise NotImplementedError("part (a), capacity through the gateway + TorchServe, is not implemented yet")


# ---------------------------------------------------------------------------------------------------------
# (b) quality: forecasting and scheduling under a simulated detector
# ---------------------------------------------------------------------------------------------------------


@dataclass
class QualityConfig:
    latencies_ms: tuple[float, ...] = (20.0, 50.0, 65.0, 110.0)
    jitter_ms: float = 5.0
    sigma_px: float = 3.0
    miss_rate: float = 0.05
    false_pos: int = 1
    seqs: int = 8
    frames: int = 100
    objects: int = 5
    speed_px: tuple[float, float] = (2.0, 7.0)
    size_px: tuple[float, float] = (40.0, 250.0)
    fps: float = 30.0
    seed: int = 0


def _latency(mean_s: float, jitter_s: float) -> Any:
    if jitter_s <= 0:
        return mean_s

    def draw(rng: np.random.Generator) -> float:
        return max(0.001, float(rng.normal(mean_s, jitter_s)))

    return draw


def quality_benchmark(cfg: QualityConfig) -> list[dict[str, Any]]:
    """One row per (latency, scheduling, forecasting), plus the zero-latency reference first."""
    gt = moving_boxes_gt(cfg.seqs, cfg.frames, cfg.objects, speed_px=cfg.speed_px, size_px=cfg.size_px,
                         seed=cfg.seed)
    det = NoisyDetector(gt, sigma_px=cfg.sigma_px, miss_rate=cfg.miss_rate, n_false_pos=cfg.false_pos,
                        seed=cfg.seed + 1)
    n_frames = {s: cfg.frames for s in gt["sequences"]}
    total = cfg.seqs * cfg.frames
    off = streaming_eval(gt, det.offline(gt, cfg.fps))
    rows = [{"latency": "0 (offline)", "scheduling": "every frame", "forecasting": "none", "result": off,
             "processed": total}]
    for ms in cfg.latencies_ms:
        lat = _latency(ms / 1000, cfg.jitter_ms / 1000)
        label = f"{ms:g} ± {cfg.jitter_ms:g} ms ({ms / 1000 * cfg.fps:.2f} fr)"
        for policy in ("latest", "shrinking_tail"):
            outs = simulate_streams(n_frames, det, lat, fps=cfg.fps, policy=policy, seed=cfg.seed + 2)
            processed = sum(len(v) for v in outs.sequences.values())
            for forecast in (False, True):
                res = streaming_eval(gt, outs, forecast=forecast)
                rows.append({"latency": label, "scheduling": policy.replace("_", "-"),
                             "forecasting": "Kalman" if forecast else "none", "result": res,
                             "processed": processed})
    return rows


def quality_markdown(rows: list[dict[str, Any]], cfg: QualityConfig) -> str:
    lines = [
        "| detector latency | scheduling | forecasting | sAP | sAP50 | sAP75 | mean lag (frames) "
        "| missed frames | frames processed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = cfg.seqs * cfg.frames
    for r in rows:
        res = r["result"]
        lines.append(
            f"| {r['latency']} | {r['scheduling']} | {r['forecasting']} | {res.sAP:.3f} | {res.sAP50:.3f} "
            f"| {res.sAP75:.3f} | {res.mean_lag:.2f} | {res.miss} | {r['processed']}/{total} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality", help="(b) sAP with/without forecasting and shrinking-tail scheduling")
    d = QualityConfig()
    q.add_argument("--latencies-ms", type=float, nargs="+", default=list(d.latencies_ms),
                   help="mean detector latencies to try (ms)")
    q.add_argument("--jitter-ms", type=float, default=d.jitter_ms, help="latency std (Gaussian, ms)")
    q.add_argument("--sigma-px", type=float, default=d.sigma_px, help="detector box noise std (px per side)")
    q.add_argument("--miss-rate", type=float, default=d.miss_rate, help="probability an object is missed")
    q.add_argument("--false-pos", type=int, default=d.false_pos, help="low-score false positives per frame")
    q.add_argument("--seqs", type=int, default=d.seqs, help="synthetic sequences")
    q.add_argument("--frames", type=int, default=d.frames, help="frames per sequence")
    q.add_argument("--objects", type=int, default=d.objects, help="objects per sequence")
    q.add_argument("--fps", type=float, default=d.fps)
    q.add_argument("--seed", type=int, default=d.seed)
    q.add_argument("--out", type=Path, help="also write the markdown table here")
    sub.add_parser("capacity", help="(a) streams through gateway + TorchServe (not implemented yet)")
    args = parser.parse_args(argv)
    if args.part == "capacity":
        try:
            capacity_benchmark()
        except NotImplementedError as exc:
            print(f"bench/streaming.py capacity: {exc}", file=sys.stderr)
            return 2
    cfg = QualityConfig(tuple(args.latencies_ms), args.jitter_ms, args.sigma_px, args.miss_rate,
                        args.false_pos, args.seqs, args.frames, args.objects, fps=args.fps, seed=args.seed)
    t0 = time.perf_counter()
    rows = quality_benchmark(cfg)
    table = quality_markdown(rows, cfg)
    print(table)
    print(f"\n({len(rows)} evaluations in {time.perf_counter() - t0:.1f} s; "
          f"python {platform.python_version()}, {platform.machine()})", file=sys.stderr)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
