"""Every GPU table of issue 18 in one run, written as one markdown report.

Sections (each a table, ratios side by side from the same run):
  1. raw DETR-R50: the zoo model (fp32 eager; bf16 + channels_last; compiled) vs Hugging Face
     ``DetrForObjectDetection`` (eager fp32, bf16 + channels_last, compiled) on the same seeded weights;
  2. raw CKDN: the zoo inference path (2 encoders, 1 head) vs the official architecture's training forward
     (4 encoder passes, both heads, the no-reference branch);
  3. raw FTCN+TT clips/s, and the end-to-end deepfake analysis (decode + MTCNN + track + align + model);
  4. decode + preprocess: PIL on one core vs the device path (nvjpeg + torch resize where available);
  5. served through the gateway + TorchServe (closed-loop clients over the gateway's task route, several
     concurrencies: img/s, p50/p99), with the served/raw ratio of the same run; streams capacity.

On an H100 (about 8 minutes; TorchServe and a JRE packed by ../shared/tools/torchserve-gpu-bundle.sh):

    bash .gpu/unpack.sh > .gpu/env && . .gpu/env && python bench/gpu_suite.py --out docs/gpu_suite_h100.md

``--smoke`` runs the same code paths on CPU with tiny sizes (a test runs it; timings mean nothing there).
"""

# ruff: noqa: B023 - every lambda over a loop variable is run at once by timed(), inside its iteration

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from handlers.codec import decode_image, probe_image  # noqa: E402
from zoo import device_image, get_entry  # noqa: E402
from zoo.ckdn import CKDN, CROP_SIZE  # noqa: E402
from zoo.detr import eval_tensor, preprocess  # noqa: E402
from zoo.layers import resnet_stage  # noqa: E402
from zoo.runtime import Runtime  # noqa: E402

GOALS = {
    "served DETR img/s": 1000, "served DETR p99 ms": 150, "served/raw": 0.9, "zoo/HF compiled": 1.2,
    "single request p50 ms": 10, "CKDN served pairs/s": 8000, "FTCN clips/s": 750, "video s/s": 60,
    "streams": 32,
}


def _bench(name: str) -> Any:
    """A sibling bench script as a module (bench/ is not a package), loaded once."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[key]


@dataclass
class Settings:
    device: torch.device
    smoke: bool
    detr_size: tuple[int, int] = (800, 1216)
    detr_batches: tuple[int, ...] = (1, 8, 32, 64)
    ckdn_size: int = CROP_SIZE
    ckdn_batches: tuple[int, ...] = (1, 16, 64)
    ftcn_batches: tuple[int, ...] = (1, 8, 32)
    iters: int = 10
    warmup: int = 3
    compile: bool = True
    decode_images: int = 64
    concurrency: tuple[int, ...] = (1, 16, 64, 128)
    served_s: float = 8.0
    streams: tuple[int, ...] = (8, 16, 32, 48)
    stream_s: float = 8.0
    e2e_seconds: float = 8.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_run(cls, smoke: bool) -> Settings:
        device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        if not smoke:
            return cls(device, smoke)
        return cls(device, smoke, detr_size=(96, 128), detr_batches=(1,), ckdn_size=64, ckdn_batches=(1,),
                   ftcn_batches=(1,), iters=1, warmup=0, compile=False, decode_images=3, concurrency=(1,),
                   served_s=1.0, streams=(1,), stream_s=1.0, e2e_seconds=1.4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], s: Settings) -> list[float]:
    """Seconds per call of ``iters`` calls after ``warmup`` (at least one, so compiles are not timed)."""
    with torch.inference_mode():
        for _ in range(max(s.warmup, 1)):
            run()
        _sync(s.device)
        times = []
        for _ in range(s.iters):
            start = time.perf_counter()
            run()
            _sync(s.device)
            times.append(time.perf_counter() - start)
    return times


def throughput_row(what: str, batch: int, times: list[float], unit: str = "img/s", **extra: Any) -> dict[str, Any]:
    return {"model": what, "batch": batch, unit: batch / statistics.median(times),
            "p50 ms": statistics.median(times) * 1e3, **extra}


def _compiled(model: torch.nn.Module, s: Settings) -> torch.nn.Module | None:
    return torch.compile(model) if s.compile else None


# --- 1. raw DETR ---------------------------------------------------------------------------------------
# --smoke: the same architectures, one block per stage / layer, so a CPU runs the code paths in seconds
TINY_DETR = {"backbone_depths": [1, 1, 1, 1], "num_encoder_layers": 1, "num_decoder_layers": 1}
TINY_FTCN = {"clip_len": 8, "image_size": 64}


def detr_models(s: Settings) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(zoo DETR-R50, transformers DETR) with the same seeded weights (bench/detr_raw.py); tiny in --smoke."""
    if not s.smoke:
        return _bench("detr_raw").build_models(s.device)
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    hf = DetrForObjectDetection(DetrConfig(
        backbone_config=ResNetConfig(depths=TINY_DETR["backbone_depths"], out_features=["stage4"]), num_labels=91,
        encoder_layers=1, decoder_layers=1, attn_implementation="eager")).eval()
    zoo = get_entry("detr_resnet50").build(**TINY_DETR).eval()  # own weights: the converter wants all of R50's
    return zoo.to(s.device), hf.to(s.device)


def raw_detr(s: Settings) -> list[dict[str, Any]]:
    zoo, hf = detr_models(s)
    variants: list[tuple[str, Runtime]] = [("fp32 eager", Runtime(s.device)),
                                           ("bf16 + channels_last", Runtime(s.device, "bf16", True))]
    rows = []
    h, w = s.detr_size
    for batch in s.detr_batches:
        pixels = torch.randn(batch, 3, h, w, device=s.device)
        mask = torch.zeros(batch, h, w, dtype=torch.bool, device=s.device)
        pixel_mask = torch.ones(batch, h, w, dtype=torch.long, device=s.device)
        for label, rt in variants:
            if label == "fp32 eager" and batch > 8:
                continue  # the baseline a user starts from; large fp32 batches add nothing
            if not rt.channels_last:  # a channels_last variant converted the weights in place
                zoo, hf = zoo.to(memory_format=torch.contiguous_format), hf.to(memory_format=torch.contiguous_format)
            served_zoo, served_hf = rt.prepare(zoo), rt.prepare(hf)
            rows.append(throughput_row(f"zoo {label}", batch, timed(lambda m=served_zoo: m(pixels, mask), s)))
            rows.append(throughput_row(f"HF {label}", batch,
                                       timed(lambda m=served_hf: m(pixel_values=pixels, pixel_mask=pixel_mask), s)))
        if s.compile:
            rt = Runtime(s.device, "bf16", True)
            for name, model, run in (("zoo", zoo, lambda m: m(pixels, mask)),
                                     ("HF", hf, lambda m: m(pixel_values=pixels, pixel_mask=pixel_mask))):
                compiled = torch.compile(model.to(memory_format=torch.channels_last))
                with rt.autocast():
                    rows.append(throughput_row(f"{name} bf16 + channels_last compiled", batch,
                                               timed(lambda c=compiled, r=run: r(c), s)))
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    if not s.compile:
        s.notes.append("DETR compiled rows not run (--smoke or --no-compile)")
    return rows


# --- 2. raw CKDN ---------------------------------------------------------------------------------------
class OfficialCKDNForward(CKDN):
    """The official network's ``forward`` cost: 4 encoder passes, ``csp``+``fc_`` twice, the no-reference
    ``aux_csp``+``fc1_`` branch and the feature MSE (what the official code runs even for one score)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux_csp = resnet_stage(256, 128, 4, stride=2)
        self.fc1_ = copy.deepcopy(self.fc_)

    def forward(self, stack: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        rest1, dist1, rest2, ref1 = stack.chunk(4, dim=1)
        f_rest1, f_dist1 = self.encode_restored(rest1), self.encode_degraded(dist1)
        f_rest2, f_ref1 = self.encode_restored(rest2), self.encode_degraded(ref1)
        pool = lambda x: torch.flatten(self.avgpool(x), 1)  # noqa: E731
        dr, fr = pool(self.csp(f_rest1 - f_dist1)), pool(self.csp(f_rest2 - f_ref1))
        nr = pool(self.aux_csp(f_rest1))
        mse = (f_dist1 - f_ref1).pow(2).mean()
        return [torch.sigmoid(self.fc_(dr)), torch.sigmoid(self.fc_(fr)), torch.sigmoid(self.fc1_(nr)), mse]


def raw_ckdn(s: Settings) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    zoo = CKDN().eval().to(s.device)
    official = OfficialCKDNForward().eval().to(s.device)
    rt = Runtime(s.device, "bf16", True)
    rows = []
    for batch in s.ckdn_batches:
        restored = torch.randn(batch, 3, s.ckdn_size, s.ckdn_size, device=s.device)
        degraded = torch.randn_like(restored)
        stack = torch.cat([restored, degraded, restored, degraded], dim=1)
        for label, runtime in (("fp32 eager", Runtime(s.device)), ("bf16 + channels_last", rt)):
            z, o = runtime.prepare(zoo), runtime.prepare(official)
            rows.append(throughput_row(f"zoo (2 branches) {label}", batch,
                                       timed(lambda m=z: m(restored, degraded), s), "pairs/s"))
            rows.append(throughput_row(f"official forward (4 branches) {label}", batch,
                                       timed(lambda m=o: m(stack), s), "pairs/s"))
        if s.compile:
            compiled = torch.compile(zoo.to(memory_format=torch.channels_last))
            with rt.autocast():
                rows.append(throughput_row("zoo (2 branches) bf16 + channels_last compiled", batch,
                                           timed(lambda: compiled(restored, degraded), s), "pairs/s"))
    return rows


# --- 3. FTCN: model, then end to end -------------------------------------------------------------------
def raw_ftcn(s: Settings) -> list[dict[str, Any]]:
    if s.smoke:
        torch.manual_seed(0)
        model = get_entry("ftcn_tt").build(**TINY_FTCN).eval()
    else:
        model, _ = _bench("ftcn").load_model(None, s.device)
    rows = []
    variants = [("fp32 eager", Runtime(s.device)), ("bf16", Runtime(s.device, "bf16"))]
    for batch in s.ftcn_batches:
        clip_len, size = model.clip_len, model.image_size
        clips = torch.randn(batch, 3, clip_len, size, size, device=s.device)
        for label, runtime in variants[: 1 if s.smoke else 2]:
            served = runtime.prepare(model)
            rows.append(throughput_row(f"zoo FTCN+TT {label}", batch, timed(lambda m=served: m(clips), s), "clips/s"))
        if s.compile:
            compiled = torch.compile(model)
            with Runtime(s.device, "bf16").autocast():
                rows.append(throughput_row("zoo FTCN+TT bf16 compiled", batch, timed(lambda: compiled(clips), s),
                                           "clips/s"))
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def end_to_end_ftcn(s: Settings) -> list[dict[str, Any]]:
    ftcn = _bench("ftcn")
    model, _ = ftcn.load_model(None, s.device)
    args = argparse.Namespace(end_to_end="astronaut", e2e_seconds=s.e2e_seconds, e2e_stride=16,
                              e2e_detect_every=4 if s.smoke else 1,
                              precisions=["fp32"] if s.smoke else ["bf16"],
                              batch_sizes=[1] if s.smoke else [32])
    try:
        return ftcn.end_to_end(args, Runtime(s.device, "bf16").prepare(model) if not s.smoke else model, s.device)
    except Exception as exc:  # noqa: BLE001 - e.g. no MTCNN weights on an offline host: say so in the report
        s.notes.append(f"end-to-end FTCN not run: {type(exc).__name__}: {exc}")
        return []


# --- 4. decode + preprocess ----------------------------------------------------------------------------
def photo_jpeg(size: tuple[int, int] = (1216, 800)) -> bytes:
    """A 1216x800 JPEG of scikit-image's astronaut (a smooth synthetic picture where skimage is missing)."""
    try:
        from skimage import data

        img = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    except ImportError:
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], -1).astype(np.uint8)
        img = Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def decode_rows(s: Settings) -> list[dict[str, Any]]:
    jpeg = photo_jpeg()
    n = s.decode_images
    rows = []

    def per_image(run: Callable[[], Any]) -> float:
        run()
        _sync(s.device)
        start = time.perf_counter()
        for _ in range(n):
            run()
        _sync(s.device)
        return (time.perf_counter() - start) / n

    pil_decode = per_image(lambda: decode_image(jpeg))
    pil_full = per_image(lambda: preprocess([decode_image(jpeg)]))
    probed = probe_image(jpeg)
    dev_decode = per_image(lambda: device_image.decode(probed, s.device))
    dev_full = per_image(lambda: eval_tensor(device_image.decode(probed, s.device)))
    on_gpu = device_image.decodes_on_gpu(probed, s.device)
    rows.append({"path": "PIL decode, one core", "img/s": 1 / pil_decode, "ms/img": pil_decode * 1e3})
    rows.append({"path": "PIL decode + DETR preprocess (PIL resize)", "img/s": 1 / pil_full, "ms/img": pil_full * 1e3})
    rows.append({"path": f"device decode ({'nvjpeg' if on_gpu else 'PIL fallback'}), one image at a time",
                 "img/s": 1 / dev_decode, "ms/img": dev_decode * 1e3})
    rows.append({"path": "device decode + DETR preprocess (torch resize)", "img/s": 1 / dev_full,
                 "ms/img": dev_full * 1e3})
    if on_gpu:
        batch = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)] * 32
        tv_decode = device_image._tv_decode_jpeg
        t = per_image(lambda: tv_decode(batch, device=s.device)) / 32
        rows.append({"path": "nvjpeg batched (32)", "img/s": 1 / t, "ms/img": t * 1e3})
    # pixel agreement of the two paths on this photo (the bound the tests assert on the bundled photos)
    pil_pixels, _, _ = preprocess([decode_image(jpeg)])
    dev_pixels = eval_tensor(device_image.decode(probed, s.device)).cpu()
    diff = (pil_pixels[0] - dev_pixels).abs() * 0.226 * 255  # back to 1/255 units (std ~0.226)
    s.notes.append(f"device vs PIL preprocessing on the 1216x800 JPEG: mean |d| {diff.mean():.2f}/255, "
                   f"max {diff.max():.1f}/255")
    return rows


# --- 5. served ----------------------------------------------------------------------------------------
def _jpeg_for(model: str) -> dict[str, Any]:
    jpeg = photo_jpeg()
    if model == "detr_resnet50":
        return {"body": jpeg, "content_type": "image/jpeg", "check": b"detections"}
    small = photo_jpeg((512, 384))
    doc = {"restored": base64.b64encode(small).decode(), "degraded": base64.b64encode(small).decode()}
    return {"body": json.dumps(doc).encode(), "content_type": "application/json", "check": b"score"}


async def served_rows(gateway_url: str, models: list[str], s: Settings) -> list[dict[str, Any]]:
    import aiohttp

    closed_loop = _bench("gateway_overhead").closed_loop
    rows = []
    async with aiohttp.ClientSession() as session:
        for model in models:
            req = _jpeg_for(model)
            url = f"{gateway_url}/v1/models/{model}:predict"

            async def call(req: dict[str, Any] = req, url: str = url) -> None:
                async with session.post(url, data=req["body"], headers={"Content-Type": req["content_type"]}) as r:
                    body = await r.read()
                    if r.status != 200 or req["check"] not in body:
                        raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")

            await closed_loop(call, max(s.concurrency[0], 1), min(s.served_s, 2.0))  # connections, caches
            for level in s.concurrency:
                started = time.perf_counter()
                lat = await closed_loop(call, level, s.served_s)
                elapsed = time.perf_counter() - started
                p50, p99 = (float(np.percentile(lat, q) * 1e3) for q in (50, 99))
                rows.append({"model": model, "concurrency": level, "req/s": len(lat) / elapsed,
                             "p50 ms": p50, "p99 ms": p99, "requests": len(lat)})
                print(f"  served {model} c={level}: {rows[-1]['req/s']:.1f} req/s", file=sys.stderr, flush=True)
    return rows


def stream_rows(gateway: Any, s: Settings) -> list[dict[str, Any]]:
    streaming = _bench("streaming")
    cfg = streaming.CapacityConfig(device=s.device.type, resolution=(1280, 720), streams=s.streams,
                                   duration_s=s.stream_s)
    frames = streaming.synthetic_frames(640, 360, n=8 if s.smoke else 30)
    rows = []
    for n in s.streams:
        rows.append(asyncio.run(streaming._capacity_step(gateway.grpc_target, f"{gateway.http_url}/metrics",
                                                         frames, n, cfg)))
    return rows


@contextlib.contextmanager
def serving(models: list[str], s: Settings) -> Iterator[Any]:
    """TorchServe with random-weight archives of ``models`` and the gateway in front of it."""
    from cli.gateway import start_gateway
    from cli.torchserve import TorchServe
    from zoo.mar import build_mar

    work = Path(tempfile.mkdtemp(prefix="zoo-gpu-suite-"))
    store = work / "store"
    for name in models:
        build_mar(get_entry(name), store, random_weights=True, progress=False)
    env = {} if s.device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
    ts = TorchServe(store, [f"{get_entry(m).serve_name}.mar" for m in models], work / "run", extra_env=env)
    with ts:
        ts.wait_ready(timeout_s=900)  # readiness comes after each worker's warm-up
        (work / "gw.yaml").write_text(f"streams: {{max_sessions: {max(s.streams) + 4}}}\n")
        gateway = start_gateway(ts, config_path=work / "gw.yaml", env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""})
        try:
            yield gateway
        finally:
            gateway.stop()


# --- report -------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(no rows)_"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else (  # noqa: E731
        f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def best(rows: list[dict[str, Any]], prefix: str, unit: str) -> float:
    values = [r[unit] for r in rows if r["model"].startswith(prefix) and unit in r]
    return max(values) if values else float("nan")


def against_goals(report: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    detr, served = report["raw DETR-R50"], report["served (gateway + TorchServe)"]
    detr_served = [r for r in served if r["model"] == "detr_resnet50"]
    ckdn_served = [r for r in served if r["model"] == "ckdn_r50"]
    zoo_best, hf_compiled = best(detr, "zoo bf16", "img/s"), best(detr, "HF bf16 + channels_last compiled", "img/s")
    top = max(detr_served, key=lambda r: r["req/s"]) if detr_served else None
    single = next((r for r in detr_served if r["concurrency"] == 1), None)
    e2e = report["FTCN end to end"]
    streams = [r for r in report["streams"] if r.get("sustained")]
    rows = [
        ("served DETR img/s (p99 at that load)", top and f"{top['req/s']:.0f} ({top['p99 ms']:.0f} ms)",
         ">= 1000 (p99 <= 150 ms)"),
        ("served / zoo raw (best)", top and f"{top['req/s'] / zoo_best:.2f}", ">= 0.9"),
        ("zoo raw / HF compiled", f"{zoo_best / hf_compiled:.2f}", ">= 1.2"),
        ("single request p50 ms", single and f"{single['p50 ms']:.1f}", "<= 10"),
        ("CKDN served pairs/s", ckdn_served and f"{max(r['req/s'] for r in ckdn_served):.0f}", ">= 8000"),
        ("FTCN model clips/s", f"{best(report['raw FTCN+TT'], 'zoo', 'clips/s'):.0f}", ">= 750"),
        ("deepfake end to end, video s/s", e2e and f"{max(r['video s/s'] for r in e2e):.1f}", ">= 60"),
        ("30-FPS streams sustained", str(max((r["streams"] for r in streams), default=0)), ">= 32"),
    ]
    return [{"goal": g, "measured": m or "n/a", "target": t} for g, m, t in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the code paths, not the numbers")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here (else stdout)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-serve", action="store_true", help="skip TorchServe + gateway (raw sections only)")
    args = p.parse_args(argv)
    s = Settings.for_run(args.smoke)
    if args.smoke:
        torch.set_num_threads(1)  # a shared CI core: oversubscribed threads only slow the smoke run down
    if args.no_compile:
        s.compile = False
    started = time.perf_counter()
    report: dict[str, list[dict[str, Any]]] = {}
    sections: list[tuple[str, Callable[[Settings], list[dict[str, Any]]]]] = [
        ("raw DETR-R50", raw_detr), ("raw CKDN", raw_ckdn), ("raw FTCN+TT", raw_ftcn),
        ("FTCN end to end", end_to_end_ftcn), ("decode + preprocess", decode_rows)]
    for name, run in sections:
        print(f"{name} ... ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
        report[name] = run(s)
    report["served (gateway + TorchServe)"], report["streams"] = [], []
    if not args.no_serve:
        models = ["detr_resnet50", "ckdn_r50"]
        print(f"served ... ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
        try:
            with serving(models, s) as gateway:
                report["served (gateway + TorchServe)"] = asyncio.run(served_rows(gateway.http_url, models, s))
                report["streams"] = stream_rows(gateway, s)
        except Exception as exc:  # noqa: BLE001 - the raw tables are still worth writing; the note says why
            if args.smoke:
                raise
            s.notes.append(f"serving sections failed: {type(exc).__name__}: {exc}")
    device = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    head = [f"# GPU suite{' (smoke: CPU, tiny sizes, timings meaningless)' if s.smoke else ''}", "",
            f"{device}; torch {torch.__version__}; Python {platform.python_version()}; "
            f"{time.perf_counter() - started:.0f} s; seeded random weights; DETR input {s.detr_size[0]}x"
            f"{s.detr_size[1]}; served settings from the registry (zoo/runtime.py)", ""]
    body = [f"## Against the goals\n\n{table(against_goals(report))}"]
    body += [f"## {name}\n\n{table(rows)}" for name, rows in report.items()]
    body += ["## Notes\n\n" + "\n".join(f"- {n}" for n in s.notes)] if s.notes else []
    text = "\n".join(head) + "\n" + "\n\n".join(body) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
