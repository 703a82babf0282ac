"""Chaos suite: the gateway probed as an attacker, a flaky network and an overloaded cluster would, against the
real stack (TorchServe serving random-weight `toy_echo` and `toy_detect`, the gateway in front with API keys).

    .venv/bin/python bench/chaos.py                      # full run (~10 min), writes docs/reliability.md
    .venv/bin/python bench/chaos.py --quick --out /tmp/r.md   # CI size (tests/chaos, ~2 min)

Scenarios (docs/reliability.md has the figures of the last full run):
- R1 malformed: a hand-made corpus over REST, raw HTTP and gRPC (bodies, images, "videos", protobuf) plus
  requests schemathesis generates from the gateway's own /openapi.json (schema-valid and schema-breaking)
  -> counts of 5xx, hangs (no answer in 15 s), REST errors that are not JSON (`{"error": ...}` under
  Content-Type exactly application/json), TorchServe worker restarts, gateway alive; and where the
  document and the server disagree (schema-valid requests refused 400, schema-breaking ones answered 2xx).
- R1b liveness while worst-case bodies are handled (a gzip bomb, a 50 MB binary tensor).
- R2 kill -9 of a TorchServe worker under load -> recovery time, failed and unanswered requests; kill -9 of
  the gateway and of TorchServe under `zoo serve` -> seconds until `zoo serve` exits non-zero.
- R3 overload: a burst far over a model's concurrency -> statuses, Retry-After, gateway memory, recovery.
- R5 soak: steady mixed load -> gateway memory growth %.
- R6 stream churn: WebSocket stream sessions opened and closed -> fds, memory, active sessions afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import yaml
import yarl
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.gateway import GatewayProcess, start_gateway  # noqa: E402
from cli.torchserve import TorchServe  # noqa: E402
from proto import OIP_SERVICE, oip, serialize  # noqa: E402
from zoo._registry import get_entry  # noqa: E402
from zoo.mar import build_mar  # noqa: E402

KEY = "chaos-key-0123"
NARROW_KEY = "chaos-narrow-4567"  # toy_echo only
MODELS = ["toy_echo", "toy_detect"]
HANG_S = 15.0
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
# schemathesis requests per operation and generation mode (positive, negative): CI size, full run
SCHEMATHESIS_PER_OPERATION = {True: 6, False: 32}
Request = tuple[str, str, dict[str, str], bytes]  # method, path (with query), headers, body
# what schemathesis generated a request as: (operation, "positive" | "negative"); None: the hand-made corpus
Origin = tuple[str, str] | None


def png(width: int = 32, height: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


# --- the stack ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[tuple[TorchServe, GatewayProcess]]:
    store = workdir / "store"
    archives = []
    for name in MODELS:
        if not (store / f"{name}.mar").exists():
            build_mar(get_entry(name), store, random_weights=True, seed=0, progress=False)
        archives.append(f"{name}.mar")
    ts = TorchServe(store, archives, workdir / "ts", token_auth=True)  # as `zoo serve` runs it
    ts.start()
    try:
        ts.wait_ready(timeout_s=300)
        config = workdir / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "auth": {"keys": [{"key": KEY, "name": "chaos", "models": ["*"]},
                              {"key": NARROW_KEY, "name": "narrow", "models": ["toy_echo"]}]},
            "limits": {"deadline_s": 10},
            "models": {"toy_echo": {"max_concurrency": 4, "max_queue": 16}, "toy_detect": {}},
            "server": {"header_timeout_s": 5, "body_timeout_s": 5},
        }))
        gateway = start_gateway(ts, config_path=config, env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": "",
                                                             "ZOO_GATEWAY_LOG_LEVEL": "WARNING"})
        try:
            yield ts, gateway
        finally:
            gateway.stop()
    finally:
        ts.stop()


def worker_pids(ts: TorchServe, model: str) -> list[int]:
    return sorted(int(w["pid"]) for w in ts.model_status(model) if w.get("pid") and w.get("status") == "READY")


def all_worker_pids(ts: TorchServe) -> dict[str, list[int]]:
    return {m: worker_pids(ts, m) for m in MODELS}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# --- R1: malformed requests ---------------------------------------------------------------------------------------
def rest_corpus(rng: random.Random) -> list[Request]:
    """(method, path, headers, body) of hand-made malformed REST requests."""
    auth = {"Authorization": f"Bearer {KEY}"}
    js = {**auth, "Content-Type": "application/json"}
    good = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    out: list[Request] = []
    infer = "/v2/models/toy_echo/infer"
    specials: list[Any] = [
        {"inputs": []}, {"inputs": {}}, {"inputs": [1]}, {"inputs": [{}]}, {"outputs": 5, **good},
        {**good, "outputs": [{"name": 5}]}, {**good, "parameters": []}, [], 5, "x", None,
        {"inputs": [{"name": "image", "shape": [1] * 65, "datatype": "BYTES", "data": ["x"]}]},
        {"inputs": [{"name": "image", "shape": [-1], "datatype": "BYTES", "data": ["x"]}]},
        {"inputs": [{"name": "image", "shape": [2**62, 2**62], "datatype": "FP32", "data": [1.0]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "FP99", "data": [1]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8", "data": [300]}]},
        {"inputs": [{"name": "image", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]},
        {"inputs": [{"name": "image", "shape": "1", "datatype": "BYTES", "data": ["x"]}]},
        {"inputs": [{"name": "\ud800", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["\udfff"]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}] * 2},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [None]}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BOOL", "data": ["yes"]}]},
    ]
    for doc in specials:
        out.append(("POST", infer, js, json.dumps(doc).encode()))
    out.append(("POST", infer, js, b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"))
    out.append(("POST", infer, js, b"\xff\xfe{not json"))
    out.append(("POST", infer, {**js, "Inference-Header-Content-Length": "99999"}, json.dumps(good).encode()))
    out.append(("POST", infer, {**js, "Inference-Header-Content-Length": "-5"}, json.dumps(good).encode()))
    out.append(("POST", infer, {**js, "Inference-Header-Content-Length": "abc"}, json.dumps(good).encode()))
    out.append(("POST", infer, {**js, "Content-Encoding": "gzip"}, b"not gzip at all"))
    out.append(("POST", infer, {**js, "Content-Encoding": "gzip"}, gzip.compress(json.dumps(good).encode())[:20]))
    # mutations of a valid body: byte flips, truncations, insertions
    base = json.dumps(good).encode()
    for _ in range(260):
        body = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            pos = rng.randrange(len(body)) if body else 0
            if kind < 0.4 and body:
                body[pos] = rng.randrange(256)
            elif kind < 0.7:
                body = body[:pos]
            else:
                body[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        out.append(("POST", infer, js, bytes(body)))
    # images and "videos" on the task routes
    image = png()
    images = [b"", image[:30], image[:-10], b"\x89PNG\r\n\x1a\n" + os.urandom(200), os.urandom(2000), png(1, 1),
              png(4, 4), b"GIF89a" + os.urandom(100), b"\xff\xd8\xff\xe0" + os.urandom(500),
              b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000),  # an MP4 header, then noise
              b"\x1a\x45\xdf\xa3" + os.urandom(4000)]  # a WebM/Matroska header, then noise
    # a PNG that claims 60000 x 60000 pixels (a decompression bomb header)
    bomb = bytearray(image)
    bomb[16:24] = struct.pack(">II", 60000, 60000)
    images.append(bytes(bomb))
    for _ in range(60):
        mutated = bytearray(image)
        for _ in range(rng.randint(1, 20)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        images.append(bytes(mutated))
    for model in MODELS:
        for data in images:
            out.append(("POST", f"/v1/models/{model}:predict", {**auth, "Content-Type": "image/png"}, data))
    for body in (b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",  # no end boundary
                 b"garbage", b"--x--\r\n", b"--x\r\n\r\n\r\n--x--"):
        out.append(("POST", "/v1/models/toy_echo:predict",
                    {**auth, "Content-Type": "multipart/form-data; boundary=x"}, body))
    # path segments, names, keys
    for version in ("..%2Fck", "..%2F..%2Fapi-description", "%00", "1%2F2", "a" * 300, "%E2%80%AE", "-1", "1.0.."):
        for suffix in ("", "/ready"):
            out.append(("GET", f"/v2/models/toy_echo/versions/{version}{suffix}", {"x-api-key": NARROW_KEY}, b""))
        out.append(("POST", f"/v2/models/toy_echo/versions/{version}/infer", js, base))
    for name in ("..", "%2E%2E", "toy_echo%00", "a" * 500, "%ED%A0%80", "toy_detect"):
        out.append(("GET", f"/v2/models/{name}", {"x-api-key": NARROW_KEY}, b""))
        out.append(("GET", f"/v2/models/{name}/ready", {}, b""))
    for header in ({"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"x-api-key": ""},
                   {"x-api-key": "x" * 4000}, {"Authorization": "Bearer " + "\u00e9" * 10}):
        out.append(("GET", "/v2/models/toy_echo", header, b""))
    out.append(("POST", "/v2/repository/index", {**auth, "Content-Type": "application/json"}, b"{broken"))
    out.append(("POST", "/v2/repository/index", auth, b"[" * 10000))
    return out


def raw_corpus(rng: random.Random, host: str) -> list[bytes]:
    """Raw HTTP byte strings (connection closed after each)."""
    key = f"x-api-key: {KEY}\r\n".encode()
    out = [
        b"GET /v2/models/toy_echo HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\xed\r\n\r\n",
        b"GET /v1/streams/toy_detect HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\n" + key + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\n" + key + b"Content-Length: -1\r\n\r\n",
        b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\n" + key + b"Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello on plain HTTP
        b"GET /v2/health/live HTTP/9.9\r\n\r\n", b"BREW /v2 HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n\r\n",
    ]
    for _ in range(120):
        line = bytearray(b"POST /v2/models/toy_echo/infer HTTP/1.1\r\nHost: x\r\n" + key
                         + b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"inputs\":")
        for _ in range(rng.randint(1, 4)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        out.append(bytes(line))
    return out


def grpc_corpus(rng: random.Random) -> list[tuple[str, bytes]]:
    """(method, serialized request bytes)."""
    out: list[tuple[str, bytes]] = []
    methods = ["ModelInfer", "ModelMetadata", "ModelReady", "ServerMetadata"]
    for _ in range(120):
        out.append((rng.choice(methods), bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))))

    def infer(**fields: Any) -> bytes:
        return serialize(oip.ModelInferRequest(model_name="toy_echo", **fields))

    tensor = oip.ModelInferRequest.InferInputTensor
    contents = oip.InferTensorContents
    cases = [
        infer(),
        infer(inputs=[tensor(name="image", datatype="BYTES", shape=[1])]),
        infer(inputs=[tensor(name="image", datatype="BYTES", shape=[1] * 70,
                             contents=contents(bytes_contents=[b"x"]))]),
        infer(inputs=[tensor(name="image", datatype="FP32", shape=[2], contents=contents(fp32_contents=[1.0]))]),
        infer(inputs=[tensor(name="image", datatype="NOPE", shape=[1])]),
        infer(inputs=[tensor(name="image", datatype="BYTES", shape=[1])], raw_input_contents=[b"\x09\x00\x00\x00a"]),
        infer(inputs=[tensor(name="image", datatype="BYTES", shape=[1])], raw_input_contents=[b"a", b"b"]),
        infer(inputs=[tensor(name="image", datatype="FP16", shape=[3])], raw_input_contents=[b"\x00" * 5]),
        infer(inputs=[tensor(name="image", datatype="BYTES", shape=[1],
                             contents=contents(bytes_contents=[b"\x89PNG"]))]),
        serialize(oip.ModelInferRequest(model_name="toy_echo", model_version="../toy_detect")),
        serialize(oip.ModelMetadataRequest(name="toy_echo", version="../toy_detect")),
        serialize(oip.ModelReadyRequest(name="toy_echo", version="..%2Ftoy_detect")),
        serialize(oip.ModelMetadataRequest(name="toy_detect")),  # with the narrow key: 403
    ]
    for data in cases:
        out.append(("ModelInfer" if b"toy_echo" in data[:12] else "ModelMetadata", data))
    out.append(("ModelReady", serialize(oip.ModelReadyRequest(name="toy_echo", version="..%2Ftoy_detect"))))
    for data in list(cases):
        mutated = bytearray(data)
        for _ in range(8):
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                out.append(("ModelInfer", bytes(mutated)))
    return out


def schemathesis_corpus(openapi_url: str, per_operation: int) -> tuple[list[tuple[Request, Origin]], list[str]]:
    """Requests schemathesis generates from the live /openapi.json (fetched with the suite's key, so the typed
    inference paths of the served models are in it): for every operation up to `per_operation` requests of
    each of schemathesis's generation modes, positive (following the schema) and negative (breaking it;
    operations with nothing to break have none), each as the exact bytes schemathesis would send, with the
    suite's key. Deterministic (derandomized). Returns the requests, each with its operation and whether its
    path, query or body breaks the schema, and the operations that could not be generated, with why."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    def draw(strategy: Any, n: int) -> list[Any]:
        """Up to `n` distinct examples of `strategy` (Hypothesis's generate phase, no shrinking, no database)."""
        found: list[Any] = []

        @settings(max_examples=n, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(case: Any) -> None:
            found.append(case)

        collect()
        return found

    schema = schemathesis.openapi.from_url(openapi_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    auth = {"Authorization": f"Bearer {KEY}"}
    out: list[tuple[Request, Origin]] = []
    skipped: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
        plans: list[tuple[Any, dict[str, str], int]] = [(positive, {}, per_operation), (negative, {}, per_operation)]
        if "{model}" in operation.path:  # most made-up names are 404: also requests that reach a served model
            plans += [(positive, {"model": name}, per_operation // len(MODELS)) for name in MODELS]
        for mode, pinned, n in plans:
            try:
                cases = draw(operation.as_strategy(generation_mode=mode, path_parameters=pinned or None), n)
            except Unsatisfiable:
                skipped.append(f"{operation.label} {mode.value}: nothing in its schema to break")
                continue
            for case in cases:
                # the suite's key replaces whatever auth headers schemathesis made up, so a case counts as
                # schema-breaking only where its path, query or body breaks the schema
                broken = [location.name for location, info in (case.meta.components if case.meta else {}).items()
                          if info.mode.is_negative and location.name.lower() != "header"]
                kwargs = case.as_transport_kwargs(base_url="http://gateway", headers=auth)
                fields = {k: v for k, v in kwargs.items()
                          if k in ("method", "url", "headers", "params", "data", "json", "cookies", "files")}
                prepared = requests.Request(**fields).prepare()
                body = prepared.body or b""
                headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
                path = prepared.url.removeprefix("http://gateway")
                out.append(((prepared.method or "GET", path, headers, body.encode() if isinstance(body, str) else body),
                            (operation.label, "negative" if broken else "positive")))
    return out, skipped


def is_json_error(content_type: str, data: bytes) -> bool:
    """The gateway's error form: Content-Type exactly application/json, a body {"error": "<message>"}."""
    try:
        return content_type == "application/json" and isinstance(json.loads(data)["error"], str)
    except (ValueError, KeyError, TypeError):
        return False


async def run_malformed(gateway: GatewayProcess, ts: TorchServe, quick: bool) -> dict[str, Any]:
    rng = random.Random(17)
    base = gateway.http_url
    statuses: Counter[str] = Counter()
    fives: list[str] = []
    hangs: list[str] = []
    non_json: list[str] = []
    generated: Counter[str] = Counter()  # schemathesis: "<mode> <status class>"
    refused_valid: list[str] = []  # schema-valid requests answered 400: the document is looser than the server
    accepted_invalid: list[str] = []  # schema-breaking requests answered 2xx: the document is stricter
    workers_before = all_worker_pids(ts)
    gateway_pid = gateway.proc.pid
    requests: list[tuple[Request, Origin]] = [(r, None) for r in rest_corpus(rng)]
    if quick:
        requests = rng.sample(requests, len(requests) // 2)
    by_schemathesis, not_generated = await asyncio.to_thread(
        schemathesis_corpus, f"{base}/openapi.json", SCHEMATHESIS_PER_OPERATION[quick])
    requests += by_schemathesis
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HANG_S),
                                     auto_decompress=False) as session:
        sem = asyncio.Semaphore(8)

        async def one(request: Request, origin: Origin) -> None:
            method, path, headers, body = request
            async with sem:
                label = f"REST {method} {path[:80]}" + (f" ({origin[0]}, {origin[1]})" if origin else "")
                url: Any = base + path
                if origin is not None:  # exactly the bytes schemathesis generated, no requoting
                    url = yarl.URL(url, encoded=True)
                try:
                    async with session.request(method, url, headers=headers, data=body or None,
                                               skip_auto_headers=["Content-Type"]) as resp:
                        data = await resp.read()
                        statuses[f"rest {resp.status // 100}xx"] += 1
                        if resp.status >= 500:
                            fives.append(f"{label} -> {resp.status} {data[:120]!r}")
                        elif resp.status >= 400 and not is_json_error(resp.headers.get("Content-Type", ""), data):
                            non_json.append(f"{label} -> {resp.status} {resp.headers.get('Content-Type')} "
                                            f"{data[:60]!r}")
                        if origin is not None:
                            generated[f"{origin[1]} {resp.status // 100}xx"] += 1
                            if origin[1] == "positive" and resp.status == 400:
                                refused_valid.append(f"{label} -> {data[:160]!r}")
                            elif origin[1] == "negative" and resp.status < 300:
                                accepted_invalid.append(f"{label} {body[:100]!r}")
                except asyncio.TimeoutError:
                    hangs.append(label)
                except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a header aiohttp will not send
                    statuses[f"rest not sent or refused ({type(exc).__name__})"] += 1

        await asyncio.gather(*(one(*r) for r in requests))
        n_rest = len(requests)

        host, port = base.removeprefix("http://").split(":")
        raws = raw_corpus(rng, host)

        async def raw(data: bytes) -> None:
            async with sem:
                try:
                    reader, writer = await asyncio.open_connection(host, int(port))
                    writer.write(data)
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_S)
                    code = head[9:12].decode(errors="replace") if head.startswith(b"HTTP/") else "closed"
                    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
                    length = int(fields.get(b"Content-Length", b"0"))
                    body = await asyncio.wait_for(reader.readexactly(length), HANG_S) if length else b""
                    writer.close()
                    statuses[f"raw {code[:1]}xx" if code != "closed" else "raw closed"] += 1
                    if code.startswith("5"):
                        fives.append(f"RAW {data[:60]!r} -> {head[:80]!r}")
                    elif code.startswith("4") and not is_json_error(
                            fields.get(b"Content-Type", b"").decode(errors="replace"), body):
                        non_json.append(f"RAW {data[:60]!r} -> {head[:80]!r} {body[:60]!r}")
                except asyncio.TimeoutError:
                    hangs.append(f"RAW {data[:60]!r}")
                except asyncio.IncompleteReadError as exc:  # closed before (all of) an answer
                    statuses["raw closed" if not exc.partial else "raw cut short"] += 1
                except OSError:
                    statuses["raw reset"] += 1

        await asyncio.gather(*(raw(r) for r in raws))

    grpc_cases = grpc_corpus(rng)
    channel = grpc.aio.insecure_channel(gateway.grpc_target)
    codes: Counter[str] = Counter()

    async def rpc(method: str, data: bytes, key: str) -> None:
        stub = channel.unary_unary(f"/{OIP_SERVICE}/{method}", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            await stub(data, metadata=(("x-api-key", key),), timeout=HANG_S)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                fives.append(f"gRPC {method} {data[:40]!r} -> {exc.code().name} {exc.details()[:100]}")
            elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                hangs.append(f"gRPC {method} {data[:40]!r}")

    for i, (method, data) in enumerate(grpc_cases):
        await rpc(method, data, NARROW_KEY if i % 5 == 0 else KEY)
    # a stream of garbage on ModelStreamInfer
    stream = channel.stream_stream(f"/{OIP_SERVICE}/ModelStreamInfer", request_serializer=lambda b: b,
                                   response_deserializer=oip.ModelStreamInferResponse.FromString)
    call = stream(iter([os.urandom(20) for _ in range(5)]), metadata=(("x-api-key", KEY),), timeout=HANG_S)
    try:
        answers = [r async for r in call]
        codes["stream answered in-band"] += sum(1 for a in answers if a.error_message)
    except grpc.aio.AioRpcError as exc:
        codes[f"stream {exc.code().name}"] += 1
    await channel.close()
    workers_after = all_worker_pids(ts)
    management = await asyncio.to_thread(torchserve_without_token, ts)
    total = n_rest + len(raws) + len(grpc_cases) + 1
    return {
        "requests": total, "rest": n_rest, "raw_http": len(raws), "grpc": len(grpc_cases) + 1,
        "schemathesis": {"requests": len(by_schemathesis), "statuses": dict(sorted(generated.items())),
                         "valid_refused_400": len(refused_valid), "valid_refused_examples": refused_valid[:10],
                         "invalid_accepted": len(accepted_invalid), "invalid_accepted_examples": accepted_invalid[:10],
                         "not_generated": not_generated},
        "statuses": dict(statuses), "grpc_codes": dict(codes), "5xx": len(fives), "5xx_examples": fives[:10],
        "hangs": len(hangs), "hang_examples": hangs[:10], "non_json_errors": len(non_json),
        "non_json_examples": non_json[:10],
        "worker_restarts": sum(len(set(workers_before[m]) - set(workers_after[m])) for m in MODELS),
        "gateway_alive": psutil.pid_exists(gateway_pid) and gateway.proc.poll() is None,
        "torchserve_without_token": management,
    }


def torchserve_without_token(ts: TorchServe) -> dict[str, Any]:
    """What a local process without TorchServe's token gets from its APIs (scale to 0, list, infer), and
    whether its metrics stay scrapeable without one."""
    def status(url: str, method: str = "GET") -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    before = worker_pids(ts, "toy_echo")
    found = {"scale_to_0": status(f"{ts.management_url}/models/toy_echo?min_worker=0&max_worker=0", "PUT"),
             "list_models": status(f"{ts.management_url}/models"),
             "infer": status(f"{ts.inference_url}/predictions/toy_echo", "POST"),
             "metrics": status(ts.metrics_url)}
    found["workers_unchanged"] = worker_pids(ts, "toy_echo") == before
    return found


# --- R1b: liveness while worst-case bodies are handled ------------------------------------------------------------
async def run_liveness(gateway: GatewayProcess) -> dict[str, Any]:
    base = gateway.http_url
    bomb = gzip.compress(b'{"inputs": [' + b" " * (200 << 20) + b"]}", compresslevel=9)
    header = json.dumps({"inputs": [{"name": "image", "shape": [50 << 20], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 50 << 20}}]}).encode()
    binary = header + os.urandom(50 << 20)
    video_header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 4 + (50 << 20)}}]}).encode()
    video = video_header + struct.pack("<I", 50 << 20) + b"\x00\x00\x00\x18ftypmp42" + os.urandom((50 << 20) - 12)
    auth = {"Authorization": f"Bearer {KEY}"}
    worst: dict[str, Any] = {}
    peak = rss_mb(gateway.proc.pid)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for label, body, headers in (
            (f"gzip bomb ({len(bomb) // 1024} KB -> 200 MB)", bomb,
             {**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"}),
            ("50 MB binary UINT8 tensor", binary, {**auth, "Content-Type": "application/octet-stream",
                                                   "Inference-Header-Content-Length": str(len(header))}),
            ("50 MB binary BYTES tensor (a video-sized upload)", video,
             {**auth, "Content-Type": "application/octet-stream",
              "Inference-Header-Content-Length": str(len(video_header))}),
        ):
            done = asyncio.Event()
            latencies: list[float] = []

            async def probe(done: asyncio.Event = done, latencies: list[float] = latencies) -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    async with session.get(f"{base}/v2/health/live") as resp:
                        await resp.read()
                    latencies.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

            prober = asyncio.ensure_future(probe())
            started = time.perf_counter()
            async with session.post(f"{base}/v2/models/toy_echo/infer", data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
            took = time.perf_counter() - started
            await asyncio.sleep(0.2)
            done.set()
            await prober
            peak = max(peak, rss_mb(gateway.proc.pid))
            worst[label] = {"status": status, "seconds": round(took, 2),
                            "liveness_max_s": round(max(latencies), 3), "probes": len(latencies)}
    worst["gateway_rss_mb_after"] = round(peak, 1)
    return worst


# --- R2: kills ----------------------------------------------------------------------------------------------------
async def closed_loop(url: str, stop: asyncio.Event, log: list[tuple[float, int | str]], clients: int = 6,
                      query: str = "") -> None:
    body = png()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=12)) as session:
        async def client() -> None:
            while not stop.is_set():
                try:
                    async with session.post(f"{url}/v1/models/toy_echo:predict{query}", data=body,
                                            headers={"Authorization": f"Bearer {KEY}",
                                                     "Content-Type": "image/png"}) as resp:
                        await resp.read()
                        log.append((time.monotonic(), resp.status))
                except asyncio.TimeoutError:
                    log.append((time.monotonic(), "unanswered"))
                except aiohttp.ClientError:
                    log.append((time.monotonic(), "refused"))
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(client() for _ in range(clients)))


async def run_worker_kill(gateway: GatewayProcess, ts: TorchServe, window_s: float) -> dict[str, Any]:
    stop = asyncio.Event()
    log: list[tuple[float, int | str]] = []
    load = asyncio.ensure_future(closed_loop(gateway.http_url, stop, log))
    await asyncio.sleep(2)
    victim = worker_pids(ts, "toy_echo")[0]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced = None
    while time.monotonic() - killed < window_s:
        await asyncio.sleep(0.1)
        pids = await asyncio.to_thread(worker_pids, ts, "toy_echo")
        if replaced is None and pids and victim not in pids:
            replaced = time.monotonic() - killed
    stop.set()
    await load
    after = [(t, s) for t, s in log if t >= killed]
    failed = [s for _, s in after if s != 200]
    first_ok_after_failure = None
    last_failure = max((t for t, s in after if s != 200), default=None)
    if last_failure is not None:
        first_ok_after_failure = round(last_failure - killed, 2)
    return {"requests_after_kill": len(after), "failed": len(failed), "failures": dict(Counter(map(str, failed))),
            "unanswered": failed.count("unanswered"),
            "worker_replaced_s": None if replaced is None else round(replaced, 2),
            "last_failure_s_after_kill": first_ok_after_failure,
            "ok_after_kill": sum(1 for _, s in after if s == 200)}


def run_serve_kill(workdir: Path, target: str) -> dict[str, Any]:
    """`zoo serve toy_echo` on free ports; kill -9 its gateway or its TorchServe; seconds until it exits."""
    store = workdir / "store"
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_API_KEYS": f"{KEY}=*"}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "toy_echo", "--store", str(store), "--run-dir",
                             str(workdir / f"serve-{target}"), "--random-weights", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if "press Ctrl-C" in line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("zoo serve not ready")
        children = psutil.Process(proc.pid).children(recursive=False)
        if target == "gateway":
            victim = next(c for c in children if "serving.app" in " ".join(c.cmdline()))
        else:  # the JVM itself, not only its launcher
            launcher = next(c for c in children if "serving.app" not in " ".join(c.cmdline()))
            victim = next((c for c in launcher.children(recursive=True) if c.name() == "java"), launcher)
        killed = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return {"killed": target, "exit_code": None, "exit_after_s": None}
        return {"killed": target, "exit_code": code, "exit_after_s": round(time.monotonic() - killed, 2)}
    except Exception as exc:  # noqa: BLE001 - reported, the other scenarios' figures are kept
        return {"killed": target, "exit_code": f"error: {exc}", "exit_after_s": None}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- R3: overload -------------------------------------------------------------------------------------------------
async def run_overload(gateway: GatewayProcess, burst: int) -> dict[str, Any]:
    base = gateway.http_url
    body = png()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
    rss_before = rss_mb(gateway.proc.pid)
    peak = rss_before
    statuses: Counter[int | str] = Counter()
    retry_after_missing = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> None:
            nonlocal retry_after_missing
            try:
                async with session.post(f"{base}/v1/models/toy_echo:predict?sleep_ms=500", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                    if resp.status in (429, 503) and not resp.headers.get("Retry-After"):
                        retry_after_missing += 1
            except asyncio.TimeoutError:
                statuses["unanswered"] += 1

        started = time.monotonic()
        tasks = [asyncio.ensure_future(one()) for _ in range(burst)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mb(gateway.proc.pid))
            await asyncio.sleep(0.1)
        burst_s = time.monotonic() - started
        ended = time.monotonic()
        recovered = None
        while time.monotonic() - ended < 30:
            t0 = time.monotonic()
            async with session.post(f"{base}/v1/models/toy_echo:predict", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200 and time.monotonic() - t0 < 1.0:
                    recovered = time.monotonic() - ended
                    break
            await asyncio.sleep(0.1)
    return {"burst": burst, "statuses": {str(k): v for k, v in statuses.items()},
            "retry_after_missing": retry_after_missing, "burst_s": round(burst_s, 2),
            "recovered_s": None if recovered is None else round(recovered, 2),
            "gateway_rss_mb": {"before": round(rss_before, 1), "peak": round(peak, 1)}}


# --- R5: soak -----------------------------------------------------------------------------------------------------
async def run_soak(gateway: GatewayProcess, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    log: list[tuple[float, int | str]] = []
    load = asyncio.ensure_future(closed_loop(gateway.http_url, stop, log, clients=4))
    warm = max(5.0, seconds * 0.15)
    await asyncio.sleep(warm)
    start_rss = rss_mb(gateway.proc.pid)
    await asyncio.sleep(seconds - warm)
    end_rss = rss_mb(gateway.proc.pid)
    stop.set()
    await load
    return {"seconds": seconds, "requests": len(log), "non_200": sum(1 for _, s in log if s != 200),
            "rss_mb": {"after_warmup": round(start_rss, 1), "end": round(end_rss, 1)},
            "growth_pct": round(100 * (end_rss - start_rss) / start_rss, 2)}


# --- R6: stream churn ---------------------------------------------------------------------------------------------
async def run_stream_churn(gateway: GatewayProcess, cycles: int) -> dict[str, Any]:
    proc = psutil.Process(gateway.proc.pid)
    url = f"{gateway.http_url}/v1/streams/toy_detect?api_key={KEY}"
    frame = png(64, 48)
    outcomes: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        async def cycle(i: int) -> None:
            try:
                async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                    if i % 3:
                        await ws.send_str(json.dumps({"index": 0, "capture_time_s": 0.0}))
                        await ws.send_bytes(frame)
                    if i % 2:
                        await ws.send_str(json.dumps({"end": True}))
                        async for _ in ws:
                            pass
                    outcomes["closed"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

        for i in range(20):  # warm-up
            await cycle(i)
        await asyncio.sleep(0.5)
        fds_before, rss_before = proc.num_fds(), rss_mb(proc.pid)
        for i in range(cycles):
            await cycle(i)
        await asyncio.sleep(1.0)
        async with session.get(f"{gateway.http_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}) as resp:
            text = await resp.text()
    active = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("zoo_gateway_streams_active{"))
    return {"cycles": cycles, "outcomes": dict(outcomes), "fds": {"before": fds_before, "after": proc.num_fds()},
            "rss_mb": {"before": round(rss_before, 1), "after": round(rss_mb(proc.pid), 1)},
            "streams_active_after": active}


# --- report -------------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    r1, live, r2, r3, r5, r6 = (results.get(k, {}) for k in ("R1", "R1b", "R2", "R3", "R5", "R6"))
    lines = [BEGIN, f"Run: `{results['command']}` on {results['host']} ({results['date']}, "
                    f"{results['seconds']:.0f} s).",
             "", "| scenario | figure | result |", "|---|---|---|"]

    def row(scenario: str, figure: str, value: Any) -> None:
        lines.append(f"| {scenario} | {figure} | {value} |")

    if r1:
        row("R1 malformed", "requests (REST / raw HTTP / gRPC)",
            f"{r1['requests']} ({r1['rest']} / {r1['raw_http']} / "
            f"{r1['grpc']})")
        row("R1 malformed", "5xx / hangs / worker restarts / gateway alive",
            f"{r1['5xx']} / {r1['hangs']} / {r1['worker_restarts']} / {r1['gateway_alive']}")
        row("R1 malformed", "REST errors that are not JSON (`{\"error\"}`, application/json)", r1["non_json_errors"])
        st = r1.get("schemathesis")
        if st:
            modes: Counter[str] = Counter()
            for key, count in st["statuses"].items():
                modes[key.split()[0]] += count
            row("R1 malformed", "of the REST requests, generated by schemathesis from /openapi.json",
                f"{st['requests']} ({modes['positive']} schema-valid / {modes['negative']} schema-breaking)")
            row("R1 malformed", "schemathesis: schema-valid answered 400 / schema-breaking answered 2xx",
                f"{st['valid_refused_400']} / {st['invalid_accepted']}")
    for label, figures in live.items():
        if isinstance(figures, dict):
            row("R1b worst-case body", label, f"{figures['status']} in {figures['seconds']} s; liveness max "
                f"{figures['liveness_max_s']} s over {figures['probes']} probes")
    if live:
        row("R1b worst-case body", "gateway RSS after", f"{live['gateway_rss_mb_after']} MB")
    if r2:
        w = r2.get("worker", {})
        if w:
            row("R2 worker kill -9", "worker replaced after", f"{w['worker_replaced_s']} s")
            row("R2 worker kill -9", "failed / unanswered / answered OK after the kill",
                f"{w['failed']} / {w['unanswered']} / {w['ok_after_kill']} ({w['failures']})")
        for kill in r2.get("serve", []):
            row(f"R2 {kill['killed']} kill -9 under `zoo serve`", "zoo serve exits",
                f"code {kill['exit_code']} after {kill['exit_after_s']} s")
    if r3:
        row("R3 overload", f"burst of {r3['burst']} (model: 4 at once, 16 queued, 0.5 s each)",
            ", ".join(f"{k}: {v}" for k, v in sorted(r3["statuses"].items())))
        row("R3 overload", "503 without Retry-After", r3["retry_after_missing"])
        row("R3 overload", "back to normal after the burst", f"{r3['recovered_s']} s")
        row("R3 overload", "gateway RSS before / peak", f"{r3['gateway_rss_mb']['before']} / "
            f"{r3['gateway_rss_mb']['peak']} MB")
    if r5:
        row("R5 soak", f"{r5['seconds']:.0f} s, {r5['requests']} requests ({r5['non_200']} not 200)",
            f"RSS {r5['rss_mb']['after_warmup']} -> {r5['rss_mb']['end']} MB ({r5['growth_pct']} %)")
    if r6:
        row("R6 stream churn", f"{r6['cycles']} open/close cycles",
            f"fds {r6['fds']['before']} -> {r6['fds']['after']}, "
            f"RSS {r6['rss_mb']['before']} -> {r6['rss_mb']['after']} MB, active sessions after: "
            f"{r6['streams_active_after']:.0f}")
    lines.append(END)
    return "\n".join(lines)


def write_report(path: Path, results: dict[str, Any]) -> None:
    table = markdown(results)
    text = path.read_text() if path.exists() else "# Reliability\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text += "\n" + table + "\n"
    path.write_text(text)


async def run_all(ts: TorchServe, gateway: GatewayProcess, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["R1"] = await run_malformed(gateway, ts, quick)
    results["R1b"] = await run_liveness(gateway)
    results["R2"] = {"worker": await run_worker_kill(gateway, ts, 12 if quick else 20)}
    results["R3"] = await run_overload(gateway, 120 if quick else 300)
    results["R5"] = await run_soak(gateway, 15 if quick else 300)
    results["R6"] = await run_stream_churn(gateway, 100 if quick else 1200)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: fewer requests, shorter soak, no zoo serve kills")
    p.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"), help="markdown file to update")
    p.add_argument("--workdir", help="where archives and logs go (default: a temporary folder)")
    args = p.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zoo-chaos-") as tmp:
        workdir = Path(args.workdir or tmp)
        with stack(workdir) as (ts, gateway):
            results = asyncio.run(run_all(ts, gateway, args.quick))
        if not args.quick:
            results["R2"]["serve"] = [run_serve_kill(workdir, target) for target in ("gateway", "torchserve")]
    results.update(command="bench/chaos.py" + (" --quick" if args.quick else ""), host=os.uname().nodename,
                   date=time.strftime("%Y-%m-%d"), seconds=time.monotonic() - started)
    write_report(Path(args.out), results)
    print(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
