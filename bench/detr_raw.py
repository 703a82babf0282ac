"""Raw model throughput: the zoo DETR-R50 vs transformers' eager DetrForObjectDetection, same weights.

No serving stack: one process, random inputs of a fixed size, ``torch.inference_mode``; fp32 and bf16
(``torch.autocast``). Both models get the same seeded random weights (transformers' model, converted into
the zoo layout by ``zoo.detr.convert_checkpoint``), so the max logit difference is reported alongside.

    .venv/bin/python bench/detr_raw.py --device cuda                      # batch 1/8/32, 800x1066
    .venv/bin/python bench/detr_raw.py --device cpu --batch-sizes 1 --iters 2 --image-size 320x480
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from zoo import create_model  # noqa: E402
from zoo.detr import convert_checkpoint  # noqa: E402
from zoo.weights import load_strict  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def build_models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(zoo DETR, transformers DETR) with identical seeded random weights, eval mode, on ``device``."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    config = DetrConfig(
        backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=91, attn_implementation="eager"
    )
    torch.manual_seed(0)
    hf = DetrForObjectDetection(config).eval()
    zoo = create_model("detr_resnet50").eval()
    load_strict(zoo, convert_checkpoint(hf.state_dict()), "transformers DETR weights")
    return zoo.to(device), hf.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(
    run: Callable[[], torch.Tensor], device: torch.device, iters: int, warmup: int
) -> tuple[list[float], torch.Tensor]:
    """Seconds per call for ``iters`` timed calls after ``warmup`` untimed ones; also the first output."""
    first = run()
    for _ in range(max(warmup - 1, 0)):
        run()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, first


def bench_one(
    zoo: torch.nn.Module, hf: torch.nn.Module, device: torch.device, batch: int, height: int, width: int,
    dtype_name: str, iters: int, warmup: int,
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch)
    pixel_values = torch.randn(batch, 3, height, width, generator=g).to(device)
    padding_mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=device)
    amp_dtype = DTYPES[dtype_name]
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )

    def run_zoo() -> torch.Tensor:
        return zoo(pixel_values, padding_mask)["logits"]

    def run_hf() -> torch.Tensor:
        return hf(pixel_values=pixel_values, pixel_mask=pixel_mask).logits

    row: dict[str, Any] = {"batch": batch, "dtype": dtype_name}
    outputs = {}
    for name, run in (("zoo", run_zoo), ("hf", run_hf)):
        try:
            with torch.inference_mode(), autocast:
                times, first = time_model(run, device, iters, warmup)
        except torch.cuda.OutOfMemoryError:
            row[name] = None
            torch.cuda.empty_cache()
            continue
        outputs[name] = first.float()
        row[name] = {
            "img_s": batch * len(times) / sum(times),
            "p50_ms": statistics.median(times) * 1000,
        }
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(outputs) == 2:
        row["max_diff"] = float((outputs["zoo"] - outputs["hf"]).abs().max())
    return row


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    def cell(result: dict[str, float] | None, key: str, fmt: str) -> str:
        return "OOM" if result is None else format(result[key], fmt)

    lines = [
        header,
        "",
        "| batch | dtype | zoo img/s | HF img/s | zoo/HF throughput | zoo p50 ms | HF p50 ms "
        "| max abs Δ logits |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = (
            f"{r['zoo']['img_s'] / r['hf']['img_s']:.2f}x" if r.get("zoo") and r.get("hf") else "n/a"
        )
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "n/a"
        lines.append(
            f"| {r['batch']} | {r['dtype']} "
            f"| {cell(r['zoo'], 'img_s', '.2f')} | {cell(r['hf'], 'img_s', '.2f')} | {ratio} "
            f"| {cell(r['zoo'], 'p50_ms', '.1f')} | {cell(r['hf'], 'p50_ms', '.1f')} | {diff} |"
        )
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be HxW, e.g. 800x1066, got {text!r}") from None
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per setting (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default: 3 on cuda, 1 on cpu)")
    parser.add_argument("--image-size", type=parse_size, default=(800, 1066),
                        help="input HxW (default 800x1066: a 4:3 photo after the eval resize)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated from fp32,bf16")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = set(dtypes) - set(DTYPES)
    if unknown:
        parser.error(f"unknown dtype(s) {sorted(unknown)}; choose from {sorted(DTYPES)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    device = torch.device(args.device)
    height, width = args.image_size
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 1

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for both models
        torch.backends.cudnn.allow_tf32 = False
    zoo, hf = build_models(device)
    rows = []
    for dtype_name in dtypes:
        for batch in batch_sizes:
            row = bench_one(zoo, hf, device, batch, height, width, dtype_name, args.iters, args.warmup)
            rows.append(row)
            print(f"  done batch {batch} {dtype_name}", file=sys.stderr, flush=True)

    import transformers

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine() or "cpu"
    header = (
        f"DETR-R50 raw forward, {height}x{width} input, {args.iters} timed iters (+{args.warmup} warm-up); "
        f"device {device_name} ({args.device}, {torch.get_num_threads()} CPU threads); "
        f"torch {torch.__version__}, "
        f"transformers {transformers.__version__} (eager attention); bf16 = torch.autocast"
    )
    table = markdown(rows, header)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
