"""TorchServe vs Triton, side by side in one run, through the same gateway: what the zoo's models see.

    .venv/bin/python bench/engines.py [--duration 5] [--rounds 2] [--concurrency 1,4,16] [--models toy_echo,ckdn_r50]

Builds random-weight (seed 0, identical on both) `.mar` archives and a Triton model repository
(`zoo build --engine triton`) for the models, starts a real TorchServe and a real tritonserver (PyTriton's, from
the Triton venv; see cli/triton.py) and ONE gateway with both as backends: each model is routed twice,
``<model>-torchserve`` and ``<model>-triton``. Closed-loop clients then call the gateway's task route
(``POST /v1/models/{m}:predict``, what users call), alternating the engines in rounds so drift hits both alike.
Every answer is checked (200 and the handler's JSON). Prints a markdown table: throughput and p50/p99 latency
per engine, model and concurrency.

On a GPU host set ZOO_TRITONSERVER (or put tritonserver on PATH) to use a system Triton; the models then run
on the GPU on both engines (their device_type is auto).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_overhead import closed_loop, pct  # noqa: E402
from cli.gateway import launch  # noqa: E402
from cli.torchserve import TorchServe  # noqa: E402
from cli.triton import TritonServer  # noqa: E402
from zoo._registry import get_entry  # noqa: E402
from zoo.mar import build_mar  # noqa: E402
from zoo.triton_repo import build_triton_model  # noqa: E402

ENGINES = ("torchserve", "triton")


def image(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def request_for(model: str) -> tuple[bytes, str, bytes]:
    """(body, content type, a byte string every good answer contains) for one model's task route."""
    if model.startswith("ckdn"):
        from tests.support import multipart

        body, ctype = multipart({"restored": ("r.png", image(256, 256, 1), "image/png"),
                                 "degraded": ("d.png", image(256, 256, 2), "image/png")})
        return body, ctype, b'"score"'
    if model.startswith("detr"):
        return image(320, 240, 3), "image/png", b'"detections"'
    return image(16, 12, 0), "image/png", b'"width": 16'


def gateway_config(ts: TorchServe, triton: TritonServer, models: list[str]) -> dict:
    return {
        "backends": {
            "torchserve": {"type": "torchserve", "grpc": ts.grpc_target, "management": ts.management_url,
                           "model_store": str(ts.model_store)},
            "triton": {"type": "triton", "url": triton.grpc_target},
        },
        "models": {f"{m}-{engine}": {"backend": engine, "model": m} for m in models for engine in ENGINES},
        "limits": {"deadline_s": 300},
    }


async def post(session: aiohttp.ClientSession, url: str, body: bytes, ctype: str, expect: bytes) -> None:
    """One task-route request; raises unless the answer is a 200 holding `expect`."""
    async with session.post(url, data=body, headers={"Content-Type": ctype}) as resp:
        answer = await resp.read()
        if resp.status != 200 or expect not in answer:
            raise RuntimeError(f"{url}: {resp.status} {answer[:300]!r}")


async def measure(http_url: str, models: list[str], levels: list[int], duration_s: float, rounds: int) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for model in models:
            body, ctype, expect = request_for(model)

            calls = {engine: functools.partial(post, session, f"{http_url}/v1/models/{model}-{engine}:predict",
                                               body, ctype, expect) for engine in ENGINES}
            for call in calls.values():  # warm up: connections, first batches, allocator
                await closed_loop(call, 2, min(2.0, duration_s))
            for level in levels:
                lat: dict[str, list[float]] = {e: [] for e in ENGINES}
                elapsed = dict.fromkeys(ENGINES, 0.0)
                for r in range(rounds):
                    for engine in ENGINES if r % 2 == 0 else reversed(ENGINES):
                        started = time.perf_counter()
                        lat[engine] += await closed_loop(calls[engine], level, duration_s)
                        elapsed[engine] += time.perf_counter() - started
                for engine in ENGINES:
                    row = {"model": model, "engine": engine, "concurrency": level,
                           "rps": len(lat[engine]) / elapsed[engine], "requests": len(lat[engine]),
                           "p50": pct(lat[engine], 0.5) * 1e3, "p99": pct(lat[engine], 0.99) * 1e3}
                    rows.append(row)
                    print(f"  {model} {engine} c={level}: {row['rps']:.1f} req/s, p50 {row['p50']:.1f} ms, "
                          f"p99 {row['p99']:.1f} ms ({row['requests']} requests)", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | conc. | TorchServe req/s | Triton req/s | Triton / TorchServe | TorchServe p50 / p99 ms | " \
           "Triton p50 / p99 ms |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_key = {(r["model"], r["concurrency"], r["engine"]): r for r in rows}
    for model, level in dict.fromkeys((r["model"], r["concurrency"]) for r in rows):
        ts, tr = by_key[(model, level, "torchserve")], by_key[(model, level, "triton")]
        lines.append(f"| {model} | {level} | {ts['rps']:.1f} | {tr['rps']:.1f} | {tr['rps'] / ts['rps']:.2f} | "
                     f"{ts['p50']:.1f} / {ts['p99']:.1f} | {tr['p50']:.1f} / {tr['p99']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="toy_echo,ckdn_r50", help="comma-separated registry models")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per engine, level and round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per level (engines alternate their order)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--workdir", default=None, help="where stores, repositories and logs go (default: temp)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zoo-bench-engines-"))
    os.environ.setdefault("ZOO_HOME", str(workdir / "home"))
    store, repository = workdir / "store", workdir / "triton"
    archives = []
    for name in models:
        entry = get_entry(name)
        if not (store / f"{entry.serve_name}.mar").exists():
            build_mar(entry, store, random_weights=True, seed=0, progress=False)
        archives.append(f"{entry.serve_name}.mar")
        if not (repository / entry.serve_name).exists():
            build_triton_model(entry, repository, random_weights=True, seed=0)
    names = [get_entry(m).serve_name for m in models]
    ts = TorchServe(store, archives, workdir / "ts-run")
    triton = TritonServer(repository, names, workdir / "triton-run")
    with ts, triton:
        ts.wait_ready(timeout_s=600)
        triton.wait_ready(timeout_s=600)
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(ts, triton, names)))
        gateway = launch(["--config", str(config_path), "--http-port", "0", "--grpc-port", "0"],
                         env={"ZOO_GATEWAY_LOG_LEVEL": "WARNING", "ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""})
        try:
            rows = asyncio.run(measure(gateway.http_url, names, levels, args.duration, args.rounds))
        finally:
            gateway.stop()
    print(f"\nengines through one gateway, task route; {platform.node()} ({os.cpu_count()} CPUs), "
          f"{args.rounds} x {args.duration:.0f} s per engine and level\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
