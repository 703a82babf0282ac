"""FTCN+TT throughput: the model alone (clips/s), and a hook for the end-to-end video pipeline.

Model part: normalised (B, 3, 32, 224, 224) clips already on the device, so decoding, face detection,
alignment and normalisation are excluded. For every dtype (fp32, and bf16 under autocast) and batch size it
reports clips/s, latency per batch, and the equivalent seconds of video per second: the official
``test_on_raw_video.py`` slides the 32-frame window with stride 1, i.e. one clip per video frame per face
track, so at stride 1 and 25 fps a model needs 25 clips/s to keep up with real time (``--clip-stride``,
``--fps`` change the assumption). bf16 rows also give ``max dp vs fp32``, the largest |p_bf16 - p_fp32|
over the batch on the same input, as a sanity check of the reduced precision (it depends on the
weights; pass ``--weights``).

Examples::

    python bench/ftcn.py --device cpu --iters 1 --warmup 0 --batch-sizes 1      # quick smoke run
    python bench/ftcn.py --device cuda --iters 20 --out bench/results/ftcn_h100.md
    python bench/ftcn.py --weights ftcn_tt.pth                                     # official weights

End-to-end part: ``--end-to-end VIDEO`` (or ``--end-to-end astronaut`` for a synthetic face video) times
decode + face detection + tracking + alignment + model through ``zoo.faces.pipeline`` and reports seconds of
video processed per second (see :func:`end_to_end`; ``--e2e-stride`` is the window stride, default 16)::

    python bench/ftcn.py --device cpu --end-to-end astronaut --e2e-seconds 2 --batch-sizes 1 --precisions fp32
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from zoo import get_entry
from zoo.ftcn import CLIP_LEN, CLIP_SIZE, FTCN
from zoo.weights import load_strict, resolve_weights

MODEL_NAME = "ftcn_tt"
# Resident CPU memory of one clip's forward pass (measured: ~1.1 GB fp32 or bf16, plus ~0.3 GB fixed).
CPU_BYTES_PER_CLIP = 1.2e9


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def load_model(weights: str | None, device: torch.device) -> tuple[FTCN, str]:
    """The ftcn_tt architecture with a local checkpoint (official or zoo layout), else random init."""
    entry = get_entry(MODEL_NAME)
    if weights:
        state, label = resolve_weights(entry, weights_path=weights)
    else:
        state, label = resolve_weights(entry, random_weights=True, seed=0)
    model = entry.build()
    load_strict(model, state, f"{MODEL_NAME} weights")
    return model.to(device).eval(), label.short()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _precision(dtype: str, device: torch.device) -> Iterator[None]:
    if dtype == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif dtype == "fp32":
        yield
    else:
        raise ValueError(f"unknown dtype {dtype!r} (fp32, bf16)")


def _cpu_available_bytes() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bench_model_case(
    model: FTCN, device: torch.device, dtype: str, batch: int, iters: int, warmup: int,
    reference: torch.Tensor | None = None, x: torch.Tensor | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Time ``iters`` forwards of one batch; returns the row and the probabilities of the last forward."""
    if x is None:
        x = torch.randn(batch, 3, CLIP_LEN, CLIP_SIZE, CLIP_SIZE, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), _precision(dtype, device):
        for _ in range(warmup):
            model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(max(iters, 1)):
            logits = model(x)
        _sync(device)
        elapsed = time.perf_counter() - start
    probs = torch.sigmoid(logits.float())
    n = max(iters, 1)
    row: dict[str, Any] = {
        "dtype": dtype,
        "batch": batch,
        "clips/s": batch * n / elapsed,
        "ms/batch": 1e3 * elapsed / n,
    }
    if device.type == "cuda":
        row["peak GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    if reference is not None:
        row["max dp vs fp32"] = (probs - reference).abs().max().item()
    return row, probs


def model_rows(args: argparse.Namespace, model: FTCN, device: torch.device) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        if device.type == "cpu":
            avail = _cpu_available_bytes()
            if avail is not None and batch * CPU_BYTES_PER_CLIP > 0.9 * avail:
                rows.append({"dtype": "-", "batch": batch,
                             "note": f"skipped: needs ~{batch * CPU_BYTES_PER_CLIP / 1e9:.0f} GB RAM"})
                continue
        torch.manual_seed(batch)
        x = torch.randn(batch, 3, CLIP_LEN, CLIP_SIZE, CLIP_SIZE, device=device)
        reference = None
        for dtype in args.precisions:
            try:
                row, probs = bench_model_case(
                    model, device, dtype, batch, args.iters, args.warmup,
                    reference=reference if dtype != "fp32" else None, x=x,
                )
            except torch.OutOfMemoryError:
                rows.append({"dtype": dtype, "batch": batch, "note": "out of memory"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if dtype == "fp32":
                reference = probs
            row["video s/s"] = row["clips/s"] * args.clip_stride / args.fps
            rows.append(row)
            print(_format_progress(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# end to end (hook for the video pipeline)
# --------------------------------------------------------------------------------------------------
def synthetic_face_video(seconds: float = 8.0, fps: float = 25.0, size: tuple[int, int] = (640, 480)) -> bytes:
    """A face video made from scikit-image's astronaut photo (slow pan and zoom), H.264 at ``size``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from zoo.video import encode_video

    photo = Image.fromarray(data.astronaut())
    width, height = size
    frames = []
    for t in range(int(round(seconds * fps))):
        zoom = 1.6 + 0.2 * np.sin(t / 40.0)
        cx, cy = 224 + 20 * np.sin(t / 30.0), 130 + 10 * np.cos(t / 25.0)
        # output pixel (u, v) samples the photo at centre + ((u, v) - size / 2) / zoom
        coeffs = (1 / zoom, 0, cx - width / 2 / zoom, 0, 1 / zoom, cy - height / 2 / zoom)
        frames.append(np.asarray(photo.transform(size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)))
    return encode_video(np.stack(frames), fps, options={"crf": "20"})


def end_to_end(args: argparse.Namespace, model: FTCN, device: torch.device) -> list[dict[str, Any]]:
    """Seconds of video per second through decode + detect + track + align + model, per precision and batch.

    The video (``--end-to-end PATH``, or ``astronaut`` for a synthetic 640x480 H.264 face video of
    ``--e2e-seconds``) is decoded, its faces detected (MTCNN) and tracked once per run -- those stages do not
    depend on the model's precision or batch size -- and each (precision, clip batch) row then renders the
    aligned clips and runs FTCN. Row columns: per-stage wall seconds, ``total s`` (decode + detect/track +
    align + model), ``video s/s`` = video duration / total, and on non-fp32 rows ``max dp vs fp32``: the largest
    |p - p_fp32| over the video's real aligned face clips (an fp32 row must come first). The MTCNN weights are
    fetched (if needed) before any clock starts; CUDA is synchronised before every reading.
    """
    from zoo.faces.pipeline import FacePipeline
    from zoo.faces.weights import ensure_mtcnn_weights

    source = str(args.end_to_end)
    if source == "astronaut" and not Path(source).exists():
        data = synthetic_face_video(args.e2e_seconds)
        name = f"synthetic astronaut {args.e2e_seconds:g} s 640x480 H.264"
    else:
        data = Path(source).read_bytes()
        name = Path(source).name
    pipeline = FacePipeline.from_dir(ensure_mtcnn_weights(), device, stride=args.e2e_stride,
                                     detect_every=args.e2e_detect_every)
    pipeline.prepare(data)  # warm-up (allocator, kernels)
    _sync(device)
    start = time.perf_counter()
    prepared = pipeline.prepare(data)
    _sync(device)
    prepare_s = time.perf_counter() - start
    video = prepared.video
    base = {
        "video": name,
        "video s": round(video.duration_s, 2),
        "frames": len(video),
        "tracks": len(prepared.tracks),
        "clips": len(prepared.clips),
        "stride": args.e2e_stride,
        "decode s": prepared.timings_ms["decode"] / 1e3,
        "detect s": prepared.timings_ms["detect"] / 1e3,
        "track s": prepared.timings_ms["track"] / 1e3,
    }
    print(_format_progress(base), file=sys.stderr, flush=True)
    rows = []
    reference = None  # fp32 clip probabilities: what bf16 is compared with on these real aligned face clips
    for dtype in args.precisions:
        for batch in args.batch_sizes:
            with _precision(dtype, device):
                start = time.perf_counter()
                (probs,) = pipeline.score(model, [prepared], batch)
                _sync(device)
                score_s = time.perf_counter() - start
            total = prepare_s + score_s
            row = {**base, "dtype": dtype, "clip batch": batch,
                   "align s": prepared.timings_ms["align_batch"] / 1e3,
                   "model s": prepared.timings_ms["model_batch"] / 1e3,
                   "total s": total, "video s/s": video.duration_s / total}
            if dtype == "fp32" and reference is None:
                reference = probs
            elif reference is not None and len(probs):
                row["max dp vs fp32"] = float(abs(probs - reference).max())
            rows.append(row)
            print(_format_progress(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-2:
            return f"{value:.1e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _format_progress(row: dict[str, Any]) -> str:
    return "  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="fp32, and/or bf16 under autocast")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8], help="clips per forward")
    p.add_argument("--iters", type=int, default=10, help="timed forwards per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per case (cudnn autotune etc.)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--weights", default=None, help="local checkpoint (official ftcn_tt.pth or zoo layout); "
                   "default: seeded random weights (throughput does not depend on them)")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate for the 'video s/s' column")
    p.add_argument("--clip-stride", type=int, default=1,
                   help="frames between clip starts (1 = official sliding window) for 'video s/s'")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    p.add_argument("--end-to-end", metavar="VIDEO", type=Path, default=None,
                   help="also time the full video pipeline on VIDEO ('astronaut': a synthetic face video)")
    p.add_argument("--e2e-stride", type=int, default=16, help="window stride of the end-to-end run")
    p.add_argument("--e2e-detect-every", type=int, default=1, help="face detection every k-th frame")
    p.add_argument("--e2e-seconds", type=float, default=8.0, help="length of the synthetic video")
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.iters < 1 or args.warmup < 0 or args.clip_stride < 1:
        p.error("batch sizes and --iters must be >= 1, --warmup >= 0, --clip-stride >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
    model, weights = load_model(args.weights, device)
    e2e_rows = end_to_end(args, model, device) if args.end_to_end else None

    header = [
        f"# FTCN+TT ({MODEL_NAME}) throughput",
        "",
        f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {describe_device(device)}; torch {torch.__version__}; host {platform.node() or '?'}"
        f" ({os.cpu_count()} CPUs)",
        f"- weights: {weights}",
        f"- input: ({', '.join(map(str, args.batch_sizes))}) x (3, {CLIP_LEN}, {CLIP_SIZE}, {CLIP_SIZE}) "
        f"normalised clips on the device; {args.warmup} warm-up + {args.iters} timed forwards per case",
        f"- video s/s: clips/s x {args.clip_stride} (clip stride) / {args.fps:g} fps",
        "",
        "## Model only",
        "",
    ]
    report = "\n".join(header) + markdown_table(model_rows(args, model, device)) + "\n"
    if e2e_rows is not None:
        report += "\n## End to end\n\n" + markdown_table(e2e_rows) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
