"""Zoo breadth: images/s of each image-classification model, per knob setting, beside the published accuracy
of that setting, so the accuracy/speed trade-off of per-request knobs (AutoFormer's subnet, MutualNet's
width x resolution) is visible in one table.

    .venv/bin/python bench/zoo_breadth.py                                   # every model, every knob setting
    .venv/bin/python bench/zoo_breadth.py --device cuda --dtype fp32 bf16 --batch-sizes 1 32
    .venv/bin/python bench/zoo_breadth.py --models mutualnet_mbv2 --batch-sizes 4 --iters 3 --warmup 1
    .venv/bin/python bench/zoo_breadth.py --threads 1 --clock cpu     # compute cost on a shared CPU

Patch-Forensics (image-forensics: a patch logit map, no classes) is timed the same way, and so are the dense
tasks of zoo breadth II at their served network sizes (``BenchModel.inputs``): CondInst on a 4:3 photo as the
official test resize makes it (800x1067, zero-padded to 800x1088), DNLNet on a whole Cityscapes frame (1024x2048)
and an ADE20K-sized image (512x683), stereo-from-mono on a KITTI-size pair (two 384x1280 views), CUT/FastCUT
at 256x256; SCAN through the classification path.

Timed: the model forward on a normalised batch at the entry's crop size (224x224 unless the table note says
otherwise), as the handler runs it (``model(x, **knobs)``),
after ``--warmup`` untimed runs; preprocessing and serving are not included. Weights are seeded random
(speed does not depend on their values). ``--dtype bf16`` casts the model and input to bfloat16 (meant for
``--device cuda``). Adding a model is one ``BenchModel`` line in ``MODELS``: by default every combination of
the knobs its entry declares is measured.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo import get_entry
from zoo.classify import Preprocess, knob_settings, knob_specs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BenchModel:
    """One registry entry to benchmark. ``settings``: knob settings to time (None: all the entry declares).
    ``published``: top-1 (%) by settings label (see ``label``), with a note where it needs one."""

    name: str
    settings: tuple[dict[str, Any], ...] | None = None
    published: dict[str, str] = field(default_factory=dict)
    dtypes: tuple[str, ...] | None = None  # the precisions the model supports (None: all)
    # (height, width) of each input tensor the forward takes (None: one image at the entry's crop size)
    inputs: tuple[tuple[int, int], ...] | None = None


MODELS: tuple[BenchModel, ...] = (
    # AutoFormer README model zoo. T and S were measured on their own supernets (supernet-T/-S); here
    # they are sliced from supernet-B, so only "base" is the published checkpoint's setting (marked *).
    BenchModel("autoformer_supernet_b",
               published={"subnet=tiny": "75.3*", "subnet=small": "81.7*", "subnet=base": "82.4"}),
    # MutualNet README, MobileNet v2 query table (best configurations; others not published). Measured with
    # BatchNorm statistics re-estimated per setting, which a server cannot do (see zoo/mutualnet.py).
    BenchModel("mutualnet_mbv2",
               published={"width=1.0 resolution=224": "72.9", "width=0.9 resolution=224": "72.4",
                          "width=1.0 resolution=192": "71.8", "width=0.9 resolution=192": "71.4",
                          "width=0.7 resolution=192": "69.6", "width=0.7 resolution=160": "67.6",
                          "width=0.7 resolution=128": "64.2"}),
    # DGC README: ResNet-18, heads 4, pruning rate 0.55, top-1 error 31.22.
    BenchModel("dgc_resnet18", published={"": "68.78"}),
    # fast-MPN-COV README: ResNet-50, top-1 error 21.71 (reproduced; paper 22.14), single 224 crop.
    BenchModel("isqrtcov_resnet50", published={"": "78.29"}),
    # AdderNet README: ResNet-20 on CIFAR-10 (32x32 inputs), 91.8% test accuracy. Float32/64 only (its BN
    # statistics are ~1e2 and cannot be resolved in bf16; the model refuses it).
    BenchModel("addernet_resnet20", published={"": "91.8 (CIFAR-10)"}, dtypes=("fp32",)),
    # BiT-M R50x1 upstream (ImageNet-21k head): no top-1 is published for the 21k head itself.
    BenchModel("bit_m_r50x1"),
    # Patch-Forensics (image-forensics, 299x299, patch logit map): reported as average precision, not top-1.
    BenchModel("patchforensics_block2"),
    BenchModel("patchforensics_block3"),
    # Zoo breadth II (dense outputs), at the served network sizes; "published" = the headline metric.
    BenchModel("condinst_r50.coco_ms1x", published={"": "35.7 mask AP"}, inputs=((800, 1088),)),
    BenchModel("dnl_r50_d8.cityscapes", published={"": "79.33 mIoU"}, inputs=((1024, 2048),)),
    BenchModel("dnl_r50_d8.ade20k", published={"": "41.87 mIoU"}, inputs=((512, 683),)),
    BenchModel("stereo_from_mono.hourglass", inputs=((384, 1280), (384, 1280))),
    BenchModel("cut.horse2zebra", inputs=((256, 256),)),
    BenchModel("scan_r50.imagenet", published={"": "39.9 (clustering ACC)"}),
    BenchModel("scan_r18.cifar10", published={"": "81.6 (clustering ACC, CIFAR-10)"}),
)


def label(knobs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_forward(model: torch.nn.Module, xs: tuple[torch.Tensor, ...], knobs: dict[str, Any], iters: int,
                 warmup: int, clock: str = "wall") -> float:
    """Seconds per forward of ``xs`` with ``knobs``: the median of ``iters`` timed runs after ``warmup`` (the
    median, not the mean, so a shared machine's stalls do not decide the number). ``clock="cpu"`` counts
    this thread's CPU time instead of wall time: with one torch thread on CPU, the compute cost of a
    forward even while other jobs share the cores."""
    now = CLOCKS[clock]
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(*xs, **knobs)
        for _ in range(iters):
            _sync(xs[0].device)
            start = now()
            model(*xs, **knobs)
            _sync(xs[0].device)
            times.append(now() - start)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run(bench: BenchModel, device: torch.device, dtypes: list[str], batch_sizes: list[int], iters: int,
        warmup: int, clock: str = "wall") -> list[dict[str, Any]]:
    entry = get_entry(bench.name)
    sizes = bench.inputs or ((Preprocess.from_config(entry.config.get("preprocess")).crop,) * 2,)
    settings = bench.settings or tuple(knob_settings(knob_specs(entry.config)))
    torch.manual_seed(0)
    base = entry.build().eval()
    rows = []
    for dtype in dtypes:
        if bench.dtypes is not None and dtype not in bench.dtypes:
            print(f"{bench.name}: {dtype} skipped (supports {', '.join(bench.dtypes)})", file=sys.stderr)
            continue
        model = base.to(device=device, dtype=DTYPES[dtype])
        for batch in batch_sizes:
            xs = tuple(torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch + i)).to(
                device=device, dtype=DTYPES[dtype]) for i, (h, w) in enumerate(sizes))
            for knobs in settings:
                seconds = time_forward(model, xs, knobs, iters, warmup, clock)
                row = {"model": bench.name, "knobs": label(knobs) or "—", "published": bench.published.get(
                    label(knobs), "—"), "batch": batch, "dtype": dtype, "images_per_s": batch / seconds,
                    "ms": seconds * 1000, "input": " + ".join(f"{w}x{h}" for h, w in sizes)}
                rows.append(row)
                print(f"{bench.name} {row['knobs']} batch {batch} {dtype}: {row['images_per_s']:.1f} images/s",
                      file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | knobs | published (top-1 % unless noted) | batch | dtype | images/s | ms / batch |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        rate = r["images_per_s"]
        lines.append(f"| {r['model']} | {r['knobs']} | {r['published']} | {r['batch']} | {r['dtype']} | "
                     f"{rate:.1f} | {r['ms']:.1f} |" if rate >= 1 else
                     f"| {r['model']} | {r['knobs']} | {r['published']} | {r['batch']} | {r['dtype']} | "
                     f"{rate:.3g} | {r['ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=[m.name for m in MODELS], default=[m.name for m in MODELS])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32"],
                        help="model/input precision(s); bf16 is meant for cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--iters", type=int, default=10, help="timed forwards per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per setting")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this thread's CPU time (cpu device with --threads 1 only)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != 1):
        parser.error("--clock cpu measures one thread: use it with --device cpu --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for bench in MODELS:
        if bench.name in args.models:
            rows += run(bench, device, args.dtype, args.batch_sizes, args.iters, args.warmup, args.clock)
    other_sizes = sorted({(r["model"], r["input"]) for r in rows if r["input"] != "224x224"})
    sizes = "224x224 inputs" + (" (" + ", ".join(f"{m}: {c}" for m, c in other_sizes) + ")" if other_sizes
                                else "")
    note = (f"Model forward, {sizes}, {device_name(device)}, torch {torch.__version__}, median of "
            f"{args.iters} timed forwards ({args.clock} clock) after {args.warmup} warm-up; seeded random weights. "
            f"* = published for a different checkpoint (see bench/zoo_breadth.py).")
    table = markdown(rows) + "\n\n" + note
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
