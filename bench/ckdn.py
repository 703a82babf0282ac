"""CKDN throughput: scored (restored, degraded) pairs per second of the model forward, by batch size and
precision (fp32, bf16 autocast), plus the CPU cost of the official preprocessing per pair.

    .venv/bin/python bench/ckdn.py --device cuda          # batch 1/16/64, fp32 and bf16
    .venv/bin/python bench/ckdn.py --device cpu --batch-sizes 1 2 --iters 1 --warmup 1 --image-size 96
    .venv/bin/python bench/ckdn.py --device cuda --out table.md

Weights are seeded random (speed does not depend on their values); inputs are 288x288 as served unless
--image-size says otherwise (smaller sizes are only for smoke runs: their numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoo.ckdn import CKDN, CROP_SIZE, preprocess_pair

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: CKDN, batch: int, precision: str, device: torch.device, iters: int, warmup: int,
                 size: int = CROP_SIZE) -> float:
    """Seconds per forward of ``batch`` pairs (mean over ``iters`` after ``warmup`` runs)."""
    gen = torch.Generator().manual_seed(batch)
    restored = torch.randn(batch, 3, size, size, generator=gen).to(device)
    degraded = torch.randn(batch, 3, size, size, generator=gen).to(device)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(restored, degraded)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model(restored, degraded)
        _sync(device)
    return (time.perf_counter() - start) / iters


def time_preprocess(width: int, height: int, repeats: int) -> float:
    """Seconds to preprocess one pair of ``width`` x ``height`` images (bicubic + nearest resize, crop)."""
    rng = np.random.default_rng(0)
    restored, degraded = (Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
                          for _ in range(2))
    start = time.perf_counter()
    for _ in range(repeats):
        preprocess_pair(restored, degraded)
    return (time.perf_counter() - start) / repeats


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| batch | precision | pairs/s | ms / batch |", "|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['precision']} | {r['pairs_per_s']:.1f} | {r['ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=20, help="timed forwards per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per setting")
    parser.add_argument("--image-size", type=int, default=CROP_SIZE,
                        help=f"input side (served: {CROP_SIZE}; smaller only for quick smoke runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="run the model in channels_last layout")
    parser.add_argument("--preprocess-size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"),
                        help="image size for the preprocessing timing (0 0 to skip)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = CKDN().eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for precision in args.precisions:
        for batch in args.batch_sizes:
            seconds = time_forward(model, batch, precision, device, args.iters, args.warmup, args.image_size)
            rows.append({"batch": batch, "precision": precision, "pairs_per_s": batch / seconds,
                         "ms": seconds * 1000})
            print(f"batch {batch:>3} {precision}: {batch / seconds:8.1f} pairs/s", file=sys.stderr)
    table = markdown(rows)
    notes = [f"CKDN (ckdn_r50) forward, {args.image_size}x{args.image_size} pairs, {device_name(device)}, "
             f"torch {torch.__version__}, {args.iters} timed iterations after {args.warmup} warm-up"
             + (", channels_last" if args.channels_last else "")]
    width, height = args.preprocess_size
    if width and height:
        per_pair = time_preprocess(width, height, repeats=max(args.iters, 5))
        notes.append(f"preprocessing (PIL, one thread, {width}x{height} pair): {per_pair * 1000:.1f} ms/pair "
                     f"= {1 / per_pair:.0f} pairs/s per worker")
    report = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
