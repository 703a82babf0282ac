"""Every GPU table of issue 18 in one run, written as one markdown report.

Sections (each a table, ratios side by side from the same run):
  1. raw DETR-R50: the zoo model (fp32 eager; bf16 + channels_last; compiled) vs Hugging Face
     ``DetrForObjectDetection`` (eager fp32, bf16 + channels_last, compiled) on the same seeded weights;
  2. raw CKDN: the zoo inference path (2 encoders, 1 head) vs the official architecture's training forward
     (4 encoder passes, both heads, the no-reference branch);
  3. raw FTCN+TT clips/s, and the end-to-end deepfake analysis (decode + MTCNN + track + align + model);
  4. decode + preprocess: PIL on one core vs the device path (nvjpeg + torch resize where available);
  5. served through the gateway + TorchServe (closed-loop clients over the gateway's task route, several
     concurrencies: p50/p99 and img/s for DETR, pairs/s for CKDN, videos/s and seconds of video per second
     for FTCN -- a synthetic 30-FPS face video uploaded to ``/v1/models/ftcn_tt:predict``), with the
     served/raw ratio of the same run; streams capacity;
  6. the batch-size sweep per model (raw rows at the served precision) and the batch size and delay it
     suggests for ``ServingConfig.gpu`` (see ``batch_sweep``).

On an H100 (about 9 minutes; TorchServe and a JRE packed into .gpu/ by ../shared/tools/torchserve-gpu-bundle.sh,
the MTCNN weights copied to .gpu/mtcnn; docs/benchmarks.md, "GPU fast path"):

    eval "$(bash .gpu/unpack.sh)" && ZOO_MTCNN_DIR=$PWD/.gpu/mtcnn python bench/gpu_suite.py --out "$OUT/gpu_suite.md"

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
import shutil
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
    # the served FTCN upload: a synthetic face video of this length, frame rate and size (bench/ftcn.py)
    served_video_s: float = 4.0
    served_video_fps: float = 30.0
    served_video_size: tuple[int, int] = (640, 480)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_run(cls, smoke: bool) -> Settings:
        device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        if not smoke:
            return cls(device, smoke)
        return cls(device, smoke, detr_size=(96, 128), detr_batches=(1,), ckdn_size=64, ckdn_batches=(1,),
                   ftcn_batches=(1,), iters=1, warmup=0, compile=False, decode_images=3, concurrency=(1,),
                   served_s=1.0, streams=(1,), stream_s=1.0, e2e_seconds=1.4, served_video_s=0.32,
                   served_video_fps=25.0, served_video_size=(256, 192))


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
                              # fp32 first: the bf16 row then states its difference on real face clips
                              precisions=["fp32"] if s.smoke else ["fp32", "bf16"],
                              batch_sizes=[1] if s.smoke else [32])
    try:
        return ftcn.end_to_end(args, model, s.device)  # each row runs under its own precision (autocast)
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
SERVED_MODELS = ("detr_resnet50", "ckdn_r50", "ftcn_tt")


def served_video(s: Settings) -> bytes:
    """The FTCN upload: a synthetic face video (scikit-image's astronaut under a slow pan and zoom, H.264),
    made offline by bench/ftcn.py; 30 FPS on the GPU run, as the issue's goal counts video seconds."""
    return _bench("ftcn").synthetic_face_video(s.served_video_s, s.served_video_fps, s.served_video_size)


def request_for(model: str, s: Settings) -> dict[str, Any]:
    """One task-route request per model: its body, content type, and a key every good answer carries."""
    if model == "detr_resnet50":
        return {"body": photo_jpeg(), "content_type": "image/jpeg", "check": b"detections"}
    if model == "ftcn_tt":
        return {"body": served_video(s), "content_type": "video/mp4", "check": b"verdict"}
    small = photo_jpeg((512, 384))
    doc = {"restored": base64.b64encode(small).decode(), "degraded": base64.b64encode(small).decode()}
    return {"body": json.dumps(doc).encode(), "content_type": "application/json", "check": b"score"}


def video_columns(answer: dict[str, Any], req_per_s: float) -> dict[str, Any]:
    """FTCN's units: one request is one video, so videos/s is req/s; seconds of video per second count the
    upload's frames / fps (what the decoder reported in the answer)."""
    video = answer["video"]
    seconds = video["frames"] / video["fps"]
    return {"videos/s": req_per_s, "video s/s": req_per_s * seconds, "video s": seconds,
            "clips/video": answer["clips_analyzed"]}


async def served_rows(gateway_url: str, models: list[str], s: Settings) -> list[dict[str, Any]]:
    import aiohttp

    closed_loop = _bench("gateway_overhead").closed_loop
    rows = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)  # a loaded FTCN worker answers in seconds
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for model in models:
            req = request_for(model, s)
            url = f"{gateway_url}/v1/models/{model}:predict"

            async def call(req: dict[str, Any] = req, url: str = url) -> bytes:
                async with session.post(url, data=req["body"], headers={"Content-Type": req["content_type"]}) as r:
                    body = await r.read()
                    if r.status != 200 or req["check"] not in body:
                        raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")
                    return body

            first = json.loads(await call())  # FTCN: the video's length and clips, checked before any clock
            if model == "ftcn_tt" and not first["clips_analyzed"]:
                raise RuntimeError(f"ftcn_tt found no face in the served video: {first['verdict']}")
            await closed_loop(call, max(s.concurrency[0], 1), min(s.served_s, 2.0))  # connections, caches
            for level in s.concurrency:
                started = time.perf_counter()
                lat = await closed_loop(call, level, s.served_s)
                elapsed = time.perf_counter() - started
                p50, p99 = (float(np.percentile(lat, q) * 1e3) for q in (50, 99))
                row = {"model": model, "concurrency": level, "req/s": len(lat) / elapsed,
                       "p50 ms": p50, "p99 ms": p99, "requests": len(lat)}
                if model == "ftcn_tt":
                    row.update(video_columns(first, row["req/s"]))
                rows.append(row)
                print(f"  served {model} c={level}: {row['req/s']:.1f} req/s", file=sys.stderr, flush=True)
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


def build_archive(name: str, store: Path, s: Settings) -> None:
    """A random-weight archive of ``name``; in --smoke FTCN is built tiny (TINY_FTCN clips, whose shorter
    positional embedding needs its own seeded weights file) so the CPU serves videos in a fraction of a second."""
    from zoo.contract import RANDOM_WEIGHTS_KIND, WeightsLabel
    from zoo.mar import build_mar
    from zoo.weights import save_zoo_weights

    entry = get_entry(name)
    if not (s.smoke and name == "ftcn_tt"):
        build_mar(entry, store, random_weights=True, progress=False)
        return
    with tempfile.TemporaryDirectory(prefix="zoo-gpu-suite-ftcn-") as tmp:
        torch.manual_seed(0)
        weights = save_zoo_weights(entry.build(**TINY_FTCN).state_dict(), Path(tmp) / "tiny_ftcn.safetensors",
                                   WeightsLabel(RANDOM_WEIGHTS_KIND, "torch.manual_seed", None, 0))
        build_mar(entry, store, weights_path=weights, progress=False, config_overrides=TINY_FTCN)


@contextlib.contextmanager
def serving(models: list[str], s: Settings) -> Iterator[tuple[Any, list[str]]]:
    """TorchServe with random-weight archives of ``models`` and the gateway in front of it; yields the gateway
    and the models actually served (FTCN is left out, with a note, where its archive cannot be built, e.g. no
    MTCNN weights on an offline host)."""
    from cli.gateway import start_gateway
    from cli.torchserve import TorchServe

    work = Path(tempfile.mkdtemp(prefix="zoo-gpu-suite-"))
    store = work / "store"
    served = []
    for name in models:
        try:
            build_archive(name, store, s)
        except Exception as exc:  # noqa: BLE001 - the other models' rows are still worth measuring
            if s.smoke or name != "ftcn_tt":
                raise
            s.notes.append(f"ftcn_tt not served: its archive could not be built: {type(exc).__name__}: {exc}")
            continue
        served.append(name)
    env = {} if s.device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
    ts = TorchServe(store, [f"{get_entry(m).serve_name}.mar" for m in served], work / "run", extra_env=env)
    try:
        with ts:
            ts.wait_ready(timeout_s=900)  # readiness comes after each worker's warm-up
            # a generous deadline: at concurrency 128 a queued FTCN video waits behind dozens of others
            (work / "gw.yaml").write_text(f"streams: {{max_sessions: {max(s.streams) + 4}}}\n"
                                          "limits: {deadline_s: 300}\n")
            gateway = start_gateway(ts, config_path=work / "gw.yaml",
                                    env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""})
            try:
                yield gateway, served
            finally:
                gateway.stop()
    except BaseException:
        print(f"serving failed; its archives and logs are kept in {work}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # the archives weigh hundreds of MB: a smoke run per CI job adds up


# --- 6. batch-size sweep -------------------------------------------------------------------------------
# per served model: the raw section, its row label at the precision the worker serves (registry settings) and
# the fp32 eager label --smoke runs instead, the unit, and the ServingConfig.gpu field the chosen batch goes to
SWEEP: dict[str, tuple[str, str, str, str, str]] = {
    "detr_resnet50": ("raw DETR-R50", "zoo bf16 + channels_last", "zoo fp32 eager", "img/s",
                      "gpu.batch_size (images)"),
    "ckdn_r50": ("raw CKDN", "zoo (2 branches) bf16 + channels_last", "zoo (2 branches) fp32 eager", "pairs/s",
                 "gpu.batch_size (pairs)"),
    "ftcn_tt": ("raw FTCN+TT", "zoo FTCN+TT bf16", "zoo FTCN+TT fp32 eager", "clips/s",
                "ZOO_FTCN_CLIP_BATCH (clips per forward)"),
}
GOOD_ENOUGH = 0.9  # the smallest batch within 10 % of the best throughput: more only adds queueing latency


def batch_sweep(report: dict[str, list[dict[str, Any]]], s: Settings) -> list[dict[str, Any]]:
    """Throughput against batch size per model at its served precision, and the choice it suggests: the
    smallest batch reaching GOOD_ENOUGH of the best throughput, with a batching delay of about one batch's
    compute time (a batch then fills while the previous one runs). Workers per GPU come from the served
    table instead: a second worker pays where served req/s stays well below this raw throughput."""
    rows = []
    for model, (section, label, fp32_label, unit, field_name) in SWEEP.items():
        found = [r for r in report[section] if r["model"] == label]
        if not found:  # --smoke runs fp32 only
            label = fp32_label
            found = [r for r in report[section] if r["model"] == label]
            s.notes.append(f"batch sweep of {model} from its {label!r} rows (the served precision was not run)")
        if not found:
            continue
        top = max(r[unit] for r in found)
        chosen = min((r for r in found if r[unit] >= GOOD_ENOUGH * top), key=lambda r: r["batch"])
        for r in sorted(found, key=lambda r: r["batch"]):
            picked = r is chosen
            rows.append({"model": model, "rows": label, "batch": r["batch"], unit: r[unit],
                         "ms/batch": r["p50 ms"], "of best": r[unit] / top,
                         "suggests": f"{field_name} = {r['batch']}, delay ~{max(1, round(r['p50 ms']))} ms"
                         if picked else ""})
    return rows


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
    ftcn_served = [r for r in served if r["model"] == "ftcn_tt"]
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
        ("served deepfake analysis, video s/s", ftcn_served and f"{max(r['video s/s'] for r in ftcn_served):.1f}",
         ">= 60"),
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
        print(f"served ... ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
        try:
            with serving(list(SERVED_MODELS), s) as (gateway, models):
                report["served (gateway + TorchServe)"] = asyncio.run(served_rows(gateway.http_url, models, s))
                report["streams"] = stream_rows(gateway, s)
        except Exception as exc:  # noqa: BLE001 - the raw tables are still worth writing; the note says why
            if args.smoke:
                raise
            s.notes.append(f"serving sections failed: {type(exc).__name__}: {exc}")
    report["batch sweep (raw, served precision)"] = batch_sweep(report, s)
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
