"""Streaming-perception benchmarks.

(a) capacity — how many concurrent real-time (30 FPS) video streams one device sustains through the gateway's
    served streams (serving/streams.py) + TorchServe with the DETR .mar: streams are ramped up, and for each
    count the processed-frame rate, drop ratio, forecast horizon and frame latency are measured.
(b) quality — streaming AP with vs without Kalman forecasting and with vs without shrinking-tail scheduling,
    for a simulated detector of set latency and box noise on synthetic moving boxes (pure CPU, seeded).

    .venv/bin/python bench/streaming.py quality                # markdown table on stdout
    .venv/bin/python bench/streaming.py quality --out table.md
    .venv/bin/python bench/streaming.py capacity --device gpu --resolution 1280x720 --streams 1 2 4 8 16
    .venv/bin/python bench/streaming.py capacity --device cpu --resolution 320x240 --streams 1 2 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
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
# (a) capacity through the gateway + TorchServe
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CapacityConfig:
    device: str = "auto"  # cpu | gpu | auto (gpu when torch sees one)
    resolution: tuple[int, int] = (1280, 720)
    streams: tuple[int, ...] = (1, 2, 4, 8)
    duration_s: float = 15.0
    fps: float = 30.0
    transport: str = "grpc"  # grpc | websocket
    max_drop_ratio: float = 0.5  # sustained: at most this share of each stream's frames dropped
    store: Path | None = None  # model store (DETR archive built there if missing, random weights)
    jpeg_quality: int = 85
    warmup: int = 3  # unary DETR calls before measuring (the first inference is slow)
    stop_after_unsustained: int = 2  # stop the ramp after this many unsustained counts in a row


def synthetic_frames(width: int, height: int, n: int = 30, quality: int = 85) -> list[bytes]:
    """A looping clip: a few coloured boxes moving over a textured background, JPEG-encoded once."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    boxes = [(rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7), rng.uniform(0.1, 0.3) * width,
              rng.uniform(0.15, 0.4) * height, rng.uniform(-4, 4), rng.uniform(-2, 2)) for _ in range(4)]
    out = []
    for t in range(n):
        img = Image.fromarray(background)
        draw = ImageDraw.Draw(img)
        for k, (x, y, w, h, vx, vy) in enumerate(boxes):
            x0, y0 = (x + vx * t) % (width - w), (y + vy * t) % (height - h)
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=((70 * k + 90) % 256, 200 - 40 * k, 60 + 50 * k))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _device_env(device: str) -> tuple[dict[str, str], str]:
    """TorchServe environment for the device, and the device actually used."""
    import torch

    has_gpu = torch.cuda.is_available()
    if device == "gpu" and not has_gpu:
        raise SystemExit("--device gpu: torch sees no CUDA device on this host")
    if device == "cpu" or (device == "auto" and not has_gpu):
        return {"CUDA_VISIBLE_DEVICES": ""}, "cpu"
    return {}, f"gpu ({torch.cuda.get_device_name(0)})"


async def _one_stream(target: str, frames: list[bytes], duration_s: float, fps: float, stream_id: int,
                      ) -> dict[str, Any]:
    from clients.streams import stream_frames

    n = int(round(duration_s * fps))
    offset = stream_id * 7  # streams do not send identical frames in lockstep
    items = ((i, i / fps, frames[(i + offset) % len(frames)]) for i in range(n))
    results = [r async for r in stream_frames(target, items, "detr_resnet50", threshold=0.5, fps=fps,
                                              realtime=True)]
    processed = sum(r.status == "processed" for r in results)
    with_output = [r for r in results if r.computed_from_frame >= 0]
    return {
        "received": len(results),
        "processed": processed,
        "dropped": len(results) - processed,
        "round_trips": [r.round_trip_s for r in results],
        "horizons": [r.horizon_frames for r in with_output],
        "no_output": len(results) - len(with_output),
    }


def _gpu_util(metrics_text: str) -> float | None:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
              if line.startswith("zoo_gateway_gpu_utilization_ratio")]
    return sum(values) / len(values) if values else None


async def _capacity_step(target: str, metrics_url: str, frames: list[bytes], n: int,
                         cfg: CapacityConfig) -> dict[str, Any]:
    import urllib.request

    utils: list[float] = []

    async def sample_gpu() -> None:
        while True:
            await asyncio.sleep(1.0)
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read().decode())
            util = _gpu_util(text)
            if util is not None:
                utils.append(util)

    sampler = asyncio.create_task(sample_gpu())
    started = time.monotonic()
    per_stream = await asyncio.gather(*(_one_stream(target, frames, cfg.duration_s, cfg.fps, k)
                                        for k in range(n)))
    wall = time.monotonic() - started
    sampler.cancel()
    received = sum(s["received"] for s in per_stream)
    processed = sum(s["processed"] for s in per_stream)
    drops = [s["dropped"] / s["received"] for s in per_stream]
    round_trips = np.concatenate([s["round_trips"] for s in per_stream])
    horizons = [h for s in per_stream for h in s["horizons"]]
    return {
        "streams": n,
        "offered_fps": n * cfg.fps,
        "processed_fps": processed / cfg.duration_s,
        "per_stream_fps": processed / cfg.duration_s / n,
        "drop_ratio": 1 - processed / received,
        "worst_drop_ratio": max(drops),
        "mean_horizon": float(np.mean(horizons)) if horizons else float("nan"),
        "p50_ms": float(np.percentile(round_trips, 50) * 1000),
        "p95_ms": float(np.percentile(round_trips, 95) * 1000),
        "no_output": sum(s["no_output"] for s in per_stream),
        "gpu_util": float(np.mean(utils)) if utils else None,
        "wall_s": wall,
        "sustained": max(drops) <= cfg.max_drop_ratio,
    }


def capacity_benchmark(cfg: CapacityConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Part (a): concurrent real-time streams through gateway + TorchServe (DETR .mar). Returns one row per
    stream count and the setup (device, archive weights). Sustained = every stream drops at most
    `max_drop_ratio` of its frames, i.e. each stream gets at least (1 - max_drop_ratio) x fps detector runs."""
    import tempfile

    from cli.gateway import start_gateway
    from cli.torchserve import TorchServe
    from zoo._registry import get_entry
    from zoo.mar import build_mar, read_archive_meta

    env, device = _device_env("gpu" if cfg.device == "cuda" else cfg.device)
    work = Path(tempfile.mkdtemp(prefix="zoo-bench-streams-"))
    store = cfg.store or work / "store"
    mar = store / "detr_resnet50.mar"
    if not mar.exists():  # throughput does not depend on the weight values: random weights are fine here
        build_mar(get_entry("detr_resnet50"), store, random_weights=True, progress=False)
    weights = read_archive_meta(mar)["weights"]
    frames = synthetic_frames(*cfg.resolution, quality=cfg.jpeg_quality)
    setup = {"device": device, "weights": weights.get("kind", "?"),
             "frame_bytes": int(np.mean([len(f) for f in frames]))}
    rows: list[dict[str, Any]] = []
    ts = TorchServe(store, [mar.name], work / "run", extra_env=env)
    with ts:
        ts.wait_ready(timeout_s=600)
        (work / "gw.yaml").write_text(f"streams: {{max_sessions: {max(cfg.streams) + 4}}}\n")
        gateway = start_gateway(ts, config_path=work / "gw.yaml", env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""})
        try:
            target = gateway.grpc_target if cfg.transport == "grpc" else gateway.http_url
            for _ in range(cfg.warmup):
                _unary_detr(gateway.http_url, frames[0])
            unsustained = 0
            for n in cfg.streams:
                row = asyncio.run(_capacity_step(target, f"{gateway.http_url}/metrics", frames, n, cfg))
                rows.append(row)
                print(f"  {n} streams: {row['processed_fps']:.1f} processed fps, drop ratio {row['drop_ratio']:.3f}",
                      file=sys.stderr, flush=True)
                unsustained = 0 if row["sustained"] else unsustained + 1
                if cfg.stop_after_unsustained and unsustained >= cfg.stop_after_unsustained:
                    break
        finally:
            gateway.stop()
    return rows, setup


def _unary_detr(http_url: str, image: bytes) -> None:
    import urllib.request

    req = urllib.request.Request(f"{http_url}/v1/models/detr_resnet50:predict", data=image,
                                 headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()


def capacity_markdown(rows: list[dict[str, Any]], cfg: CapacityConfig) -> str:
    lines = [
        "| streams | offered (fps) | processed (fps) | per stream (fps) | drop ratio (mean / worst) "
        "| mean horizon (frames) | round trip p50 / p95 (ms) | GPU util | sustained |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util'] * 100:.0f} %"
        lines.append(
            f"| {r['streams']} | {r['offered_fps']:.0f} | {r['processed_fps']:.1f} | {r['per_stream_fps']:.2f} "
            f"| {r['drop_ratio']:.3f} / {r['worst_drop_ratio']:.3f} | {r['mean_horizon']:.1f} "
            f"| {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {util} | {'yes' if r['sustained'] else 'no'} |")
    sustained = [r["streams"] for r in rows if r["sustained"]]
    lines.append("")
    lines.append(f"Sustained (every stream drops at most {cfg.max_drop_ratio:.0%} of its frames): "
                 + (f"up to {max(sustained)} concurrent {cfg.fps:g}-FPS streams." if sustained
                    else f"none; not even one {cfg.fps:g}-FPS stream."))
    return "\n".join(lines)


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
    c = sub.add_parser("capacity", help="(a) concurrent real-time streams through gateway + TorchServe (DETR)")
    dc = CapacityConfig()
    c.add_argument("--device", choices=("auto", "cpu", "gpu", "cuda"), default=dc.device,
                   help="where TorchServe runs DETR (cuda = gpu; auto: gpu when torch sees one)")
    c.add_argument("--resolution", default="x".join(map(str, dc.resolution)), help="frame size WxH")
    c.add_argument("--streams", type=int, nargs="+", default=list(dc.streams), help="stream counts to ramp")
    c.add_argument("--duration", type=float, default=dc.duration_s, help="seconds per stream count")
    c.add_argument("--fps", type=float, default=dc.fps, help="frame rate of every stream")
    c.add_argument("--transport", choices=("grpc", "websocket"), default=dc.transport)
    c.add_argument("--max-drop-ratio", type=float, default=dc.max_drop_ratio,
                   help="sustained: every stream drops at most this share of its frames")
    c.add_argument("--stop-after-unsustained", type=int, default=dc.stop_after_unsustained,
                   help="end the ramp after this many unsustained stream counts in a row (0: never)")
    c.add_argument("--store", type=Path, help="model store to (re)use for the DETR archive")
    c.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.part == "capacity":
        try:
            width, height = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            parser.error(f"--resolution must be WxH, got {args.resolution!r}")
        ccfg = CapacityConfig(args.device, (width, height), tuple(args.streams), args.duration, args.fps,
                              args.transport, args.max_drop_ratio, args.store,
                              stop_after_unsustained=args.stop_after_unsustained)
        t0 = time.perf_counter()
        rows, setup = capacity_benchmark(ccfg)
        table = capacity_markdown(rows, ccfg)
        print(table)
        print(f"\n(device {setup['device']}, DETR weights {setup['weights']}, {width}x{height} JPEG frames of "
              f"~{setup['frame_bytes'] / 1024:.0f} KiB, {args.transport}; {time.perf_counter() - t0:.0f} s; "
              f"python {platform.python_version()}, {platform.machine()})", file=sys.stderr)
        if args.out:
            args.out.write_text(table + "\n")
        return 0
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
