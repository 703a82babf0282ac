"""Gateway overhead: the same requests sent straight to TorchServe and through the gateway, side by side.

    .venv/bin/python bench/gateway_overhead.py [--duration 3] [--rounds 2] [--concurrency 1,4,16,64]

Starts a real TorchServe serving the tiny test-only `toy_echo` (so model time does not hide the serving
path) and a real gateway subprocess in front of it, then for each concurrency level runs closed-loop clients
against four paths, alternating direct/gateway in rounds so drift hits both alike:

- REST: TorchServe ``POST /predictions/toy_echo``  vs  gateway task route ``POST /v1/models/toy_echo:predict``
- gRPC: TorchServe ``InferenceAPIsService/Predictions``  vs  gateway OIP ``GRPCInferenceService/ModelInfer``

Prints a markdown table: throughput of each, the ratio (gateway / direct), p50/p99 latency and what the
gateway adds. Every request's answer is checked (status 200 / width 16).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.gateway import start_gateway  # noqa: E402
from cli.torchserve import TorchServe  # noqa: E402
from proto import oip, ts  # noqa: E402

MODEL = "toy_echo"
WIDTH_16 = (16).to_bytes(4, "little")  # toy_echo's typed `width` output (INT32 [1, 1])


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _ser(m) -> bytes:
    return m.SerializeToString()


class Paths:
    """The four request kinds, each an async zero-argument call that raises on a wrong answer."""

    def __init__(self, server: TorchServe, gateway_http: str, gateway_grpc: str, payload: bytes) -> None:
        self.payload = payload
        self.ts_rest_url = f"{server.inference_url}/predictions/{MODEL}"
        self.gw_rest_url = f"{gateway_http}/v1/models/{MODEL}:predict"
        self.ts_target, self.gw_target = server.grpc_target, gateway_grpc
        self.ts_request = ts.PredictionsRequest(model_name=MODEL, input={"image": payload})
        msg = oip.ModelInferRequest(model_name=MODEL)
        msg.inputs.add(name="image", datatype="BYTES", shape=[1])
        msg.raw_input_contents.append(len(payload).to_bytes(4, "little") + payload)
        self.oip_request = msg

    async def __aenter__(self) -> Paths:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.ts_channel = grpc.aio.insecure_channel(self.ts_target)
        self.gw_channel = grpc.aio.insecure_channel(self.gw_target)
        self.ts_predict = self.ts_channel.unary_unary(
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
            request_serializer=_ser, response_deserializer=ts.PredictionResponse.FromString)
        self.gw_infer = self.gw_channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=_ser, response_deserializer=oip.ModelInferResponse.FromString)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.ts_channel.close()
        await self.gw_channel.close()

    async def _rest(self, url: str) -> None:
        async with self.session.post(url, data=self.payload, headers={"Content-Type": "image/png"}) as resp:
            body = await resp.read()
            if resp.status != 200 or b'"width": 16' not in body:
                raise RuntimeError(f"{url}: {resp.status} {body[:200]!r}")

    async def ts_rest(self) -> None:
        await self._rest(self.ts_rest_url)

    async def gw_rest(self) -> None:
        await self._rest(self.gw_rest_url)

    async def ts_grpc(self) -> None:
        reply = await self.ts_predict(self.ts_request, timeout=30)
        if b'"width": 16' not in reply.prediction:
            raise RuntimeError(f"TorchServe gRPC: {reply.prediction[:200]!r}")

    async def gw_grpc(self) -> None:
        reply = await self.gw_infer(self.oip_request, timeout=30)
        width = reply.outputs[0].name == "width" and reply.raw_output_contents[0] == WIDTH_16
        if not width and b'"width": 16' not in reply.raw_output_contents[0]:  # typed answer, or (before) JSON
            raise RuntimeError("gateway gRPC: unexpected answer")


async def closed_loop(call: Callable[[], Awaitable[None]], concurrency: int, duration_s: float) -> list[float]:
    """`concurrency` clients sending back to back for `duration_s`; returns per-request latencies (s)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def client() -> None:
        while (now := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(paths: Paths, levels: list[int], duration_s: float, rounds: int, gateway_pid: int) -> list[dict]:
    pairs = [("REST", paths.ts_rest, paths.gw_rest), ("gRPC", paths.ts_grpc, paths.gw_grpc)]
    for _, direct, via in pairs:  # warm up connections, JITs and caches
        await closed_loop(direct, 4, 1.0)
        await closed_loop(via, 4, 1.0)
    rows = []
    for level in levels:
        for protocol, direct, via in pairs:
            lat = {"direct": [], "gateway": []}
            elapsed = {"direct": 0.0, "gateway": 0.0}
            gateway_cpu = 0.0
            for r in range(rounds):
                order = [("direct", direct), ("gateway", via)]
                for name, call in order if r % 2 == 0 else reversed(order):
                    started, cpu = time.perf_counter(), cpu_seconds(gateway_pid)
                    lat[name] += await closed_loop(call, level, duration_s)
                    elapsed[name] += time.perf_counter() - started
                    if name == "gateway":
                        gateway_cpu += cpu_seconds(gateway_pid) - cpu
            rps = {k: len(v) / elapsed[k] for k, v in lat.items()}
            row = {"protocol": protocol, "concurrency": level, "direct_rps": rps["direct"],
                   "gateway_rps": rps["gateway"], "ratio": rps["gateway"] / rps["direct"],
                   "gateway_cpu_ms": gateway_cpu / len(lat["gateway"]) * 1e3}
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                d, g = pct(lat["direct"], q) * 1e3, pct(lat["gateway"], q) * 1e3
                row.update({f"direct_{label}": d, f"gateway_{label}": g, f"added_{label}": g - d})
            rows.append(row)
            print(f"  {protocol} c={level}: ratio {row['ratio']:.2f}, added p50 {row['added_p50']:+.2f} ms, "
                  f"p99 {row['added_p99']:+.2f} ms, gateway CPU {row['gateway_cpu_ms']:.2f} ms/request",
                  file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| path (direct vs gateway) | conc. | direct req/s | gateway req/s | ratio | direct p50 ms | "
            "gateway p50 ms | added p50 ms | direct p99 ms | gateway p99 ms | added p99 ms | gateway CPU ms/req |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    names = {"REST": "REST: /predictions vs task route", "gRPC": "gRPC: Predictions vs OIP ModelInfer"}
    for r in rows:
        lines.append(
            f"| {names[r['protocol']]} | {r['concurrency']} | {r['direct_rps']:.0f} | {r['gateway_rps']:.0f} | "
            f"{r['ratio']:.2f} | {r['direct_p50']:.2f} | {r['gateway_p50']:.2f} | {r['added_p50']:+.2f} | "
            f"{r['direct_p99']:.2f} | {r['gateway_p99']:.2f} | {r['added_p99']:+.2f} | {r['gateway_cpu_ms']:.2f} |")
    return "\n".join(lines)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per path, level and round")
    p.add_argument("--rounds", type=int, default=2, help="direct/gateway alternations per level")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated concurrency levels")
    p.add_argument("--workdir", default=None, help="where TorchServe's store and logs go (default: temp)")
    p.add_argument("--gateway-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the gateway's event loop (uvloop must be installed)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    from tests.support import build_archives

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zoo-bench-gw-"))
    os.environ.setdefault("ZOO_HOME", str(workdir / "home"))
    store = workdir / "store"
    server = TorchServe(store, build_archives(store, [MODEL]), workdir / "ts")
    with server:
        server.wait_ready(timeout_s=300)
        gateway = start_gateway(server, env={"ZOO_GATEWAY_LOG_LEVEL": "WARNING",
                                             "ZOO_GATEWAY_LOOP": args.gateway_loop})
        try:
            async def run() -> list[dict]:
                async with Paths(server, gateway.http_url, gateway.grpc_target, png()) as paths:
                    return await measure(paths, levels, args.duration, args.rounds, gateway.proc.pid)

            rows = asyncio.run(run())
        finally:
            gateway.stop()
    loop = "uvloop" if args.gateway_loop == "uvloop" and _has_uvloop() else "asyncio"
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{os.cpu_count()} cores (load average {load} at the end), Python {platform.python_version()}, "
          f"gateway loop {loop}, "
          f"{args.duration:g} s x {args.rounds} rounds per cell, closed-loop clients in one asyncio process\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
