"""Triton's `perf_analyzer`, unmodified, against the gateway in front of each backend, side by side in one run.

    .venv/bin/python bench/perf_analyzer.py [--concurrency 1,4,16,64] [--interval-ms 2000]

Starts, on loopback:
- TorchServe serving the tiny test-only `toy_echo` and a gateway in front of it;
- a real Triton (PyTriton, `tests/serving/pytriton_server.py`, model `add_sub`: two FP32 [4] inputs) and a
  gateway in front of it (ZOO_TRITON_PYTHON names PyTriton's interpreter; its row is left out if it cannot start);
- a gateway with the in-process no-op model (`tests/serving/perf_analyzer_support.py`): the gateway's own cost.

perf_analyzer (REST and gRPC, each concurrency) measures: gateway over TorchServe (`toy_echo`, a real PNG as the
input), the gateway over Triton (`add_sub`), and the no-op gateway. (Triton direct is not measured: PyTriton
restricts the statistics API perf_analyzer reads before and after each window.) TorchServe direct does not
speak the Open Inference Protocol, so perf_analyzer cannot drive it: TorchServe direct vs the gateway over it is
measured with bench/gateway_overhead.py's closed-loop clients in the same run (the ratio and added p50 goals).
Prints two markdown tables and the machine's load average (the numbers move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_overhead import MODEL, Paths, measure, png, table  # noqa: E402
from cli.gateway import GatewayProcess, launch, start_gateway  # noqa: E402
from cli.torchserve import TorchServe  # noqa: E402
from serving.app import Gateway  # noqa: E402
from serving.backends.inprocess import InProcessBackend  # noqa: E402
from tests.serving.perf_analyzer_support import (  # noqa: E402
    NOOP,
    PerfAnalyzer,
    noop_config,
    noop_model,
    parse,
    perf_analyzer,
)
from tests.serving.pytriton_support import PyTriton, TritonUnavailable, free_ports  # noqa: E402
from tests.support import build_archives  # noqa: E402

TRITON_MODEL = "add_sub"
QUIET = {"ZOO_GATEWAY_LOG_LEVEL": "WARNING", "ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": ""}


def serve_noop(http_port: int, grpc_port: int) -> None:
    """This script's child mode: a gateway with only the in-process no-op model, until SIGTERM."""
    async def main() -> None:
        gateway = Gateway(noop_config(), {"local": InProcessBackend([noop_model()], name="local")})
        await gateway.start("127.0.0.1", http_port, grpc_port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("READY", flush=True)
        await stop.wait()
        await gateway.stop()

    asyncio.run(main())


@contextlib.contextmanager
def noop_gateway(workdir: Path) -> Iterator[tuple[str, str, int]]:
    """The no-op gateway in its own process (its CPU apart from the clients'): (http, grpc, pid)."""
    http_port, grpc_port = free_ports(2)
    log = open(workdir / "noop-gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-noop", str(http_port), str(grpc_port)],
        stdout=subprocess.PIPE, stderr=log, env={**os.environ, **QUIET})
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            raise RuntimeError(f"no-op gateway did not start; see {log.name}")
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@contextlib.contextmanager
def triton_and_gateway(workdir: Path) -> Iterator[tuple[PyTriton, GatewayProcess] | None]:
    server = PyTriton(workdir)
    try:
        server.start()
        server.wait_ready(120)
    except TritonUnavailable as exc:
        print(f"Triton rows left out: {exc}", file=sys.stderr)
        server.stop()
        yield None
        return
    config = workdir / "gateway-triton.yaml"
    config.write_text(yaml.safe_dump({
        "backends": {"triton": {"type": "triton", "url": f"grpc://{server.grpc_url}"}},
        "models": {TRITON_MODEL: {"backend": "triton", "model": TRITON_MODEL}}}))
    gateway = launch(["--config", str(config), "--http-port", "0", "--grpc-port", "0"], env=QUIET)
    try:
        yield server, gateway
    finally:
        gateway.stop()
        server.stop()


def run_perf(tool: PerfAnalyzer, targets: list[tuple[str, str, str, str, tuple[str, ...]]], levels: list[int],
             interval_ms: int) -> list[dict[str, Any]]:
    """perf_analyzer for each (label, model, protocol, url, extra args) and concurrency."""
    rows = []
    for label, model, protocol, url, extra in targets:
        for level in levels:
            done = tool.run(model, url, protocol, level, interval_ms=interval_ms, stability_pct=10_000,
                            extra=extra, timeout_s=600)
            try:
                result = parse(done.stdout) if done.returncode == 0 else None
            except ValueError:
                result = None
            if result is None:
                print(f"  {label} {protocol} c={level}: perf_analyzer failed ({done.returncode}):\n"
                      f"{(done.stdout + done.stderr)[-800:]}", file=sys.stderr)
                result = {"rps": float("nan"), "p50_ms": float("nan")}
            rows.append({"target": label, "protocol": protocol, "concurrency": level, **result})
            print(f"  {label} {protocol} c={level}: {result['rps']:.0f} infer/s, p50 {result['p50_ms']:.2f} ms",
                  file=sys.stderr, flush=True)
    return rows


def perf_table(rows: list[dict[str, Any]], levels: list[int]) -> str:
    head = "| target | protocol | " + " | ".join(f"c={c} infer/s (p50 ms)" for c in levels) + " |"
    lines = [head, "|" + "---|" * (len(levels) + 2)]
    keys = list(dict.fromkeys((r["target"], r["protocol"]) for r in rows))
    for target, protocol in keys:
        cells = []
        for level in levels:
            r = next(r for r in rows if (r["target"], r["protocol"], r["concurrency"]) == (target, protocol, level))
            cells.append(f"{r['rps']:.0f} ({r['p50_ms']:.2f})")
        lines.append(f"| {target} | {protocol.upper() if protocol == 'http' else 'gRPC'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated concurrency levels")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's measurement window")
    p.add_argument("--duration", type=float, default=3.0, help="closed-loop seconds per path, level and round")
    p.add_argument("--rounds", type=int, default=2, help="closed-loop direct/gateway alternations per level")
    p.add_argument("--workdir", default=None, help="where stores and logs go (default: temp)")
    p.add_argument("--serve-noop", nargs=2, type=int, metavar=("HTTP_PORT", "GRPC_PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_noop:
        serve_noop(*args.serve_noop)
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    tool = perf_analyzer()  # raises, saying what is missing, before anything starts
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zoo-bench-pa-"))
    os.environ.setdefault("ZOO_HOME", str(workdir / "home"))
    input_data = workdir / "toy_echo_input.json"
    # perf_analyzer sends a "b64" BYTES value as the tensor's raw bytes: the PNG with its 4-byte length first
    image = png()
    raw = len(image).to_bytes(4, "little") + image
    input_data.write_text(json.dumps({"data": [{"image": {"b64": base64.b64encode(raw).decode()}}]}))
    store = workdir / "store"
    server = TorchServe(store, build_archives(store, [MODEL]), workdir / "ts")
    with server, contextlib.ExitStack() as stack:
        server.wait_ready(timeout_s=300)
        gateway = start_gateway(server, env=QUIET)
        stack.callback(gateway.stop)
        triton = stack.enter_context(triton_and_gateway(workdir))
        noop_http, noop_grpc, _ = stack.enter_context(noop_gateway(workdir))
        ts_input = ("--input-data", str(input_data))
        targets = []
        for protocol in ("http", "grpc"):
            gw_url = gateway.http_url.removeprefix("http://") if protocol == "http" else gateway.grpc_target
            targets.append(("gateway → TorchServe (toy_echo)", MODEL, protocol, gw_url, ts_input))
            if triton is not None:
                _, tgw = triton
                via = tgw.http_url.removeprefix("http://") if protocol == "http" else tgw.grpc_target
                targets.append(("gateway → Triton (add_sub)", TRITON_MODEL, protocol, via, ()))
            targets.append(("gateway, no-op backend", NOOP, protocol, noop_http if protocol == "http" else noop_grpc,
                            ()))
        perf_rows = run_perf(tool, targets, levels, args.interval_ms)
        load_perf = os.getloadavg()

        async def closed_loop() -> list[dict]:
            async with Paths(server, gateway.http_url, gateway.grpc_target, png()) as paths:
                return await measure(paths, levels, args.duration, args.rounds, gateway.proc.pid)

        direct_rows = asyncio.run(closed_loop())
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{os.cpu_count()} cores, Python {platform.python_version()}; load average (1/5/15 min) "
          f"{' / '.join(f'{v:.1f}' for v in load_perf)} after the perf_analyzer runs, {load} at the end\n")
    print(f"perf_analyzer, {args.interval_ms} ms windows (first 3 taken: the machine is never stable enough "
          "for its stability check):\n")
    print(perf_table(perf_rows, levels))
    print(f"\nTorchServe direct vs the gateway over it (closed-loop clients, {args.duration:g} s x {args.rounds} "
          "rounds per cell):\n")
    print(table(direct_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
