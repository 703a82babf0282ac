"""Served video streams end to end: real TorchServe (DETR with random weights + toy_echo), real gateway
subprocesses, real gRPC (`zoo.stream.v1.DetectionStream`) and WebSocket (`/v1/streams/{model}`) clients.

CPU DETR takes seconds per frame, far slower than 30 FPS: streams here send frames at 30 FPS until detector
outputs have come back, which exercises latest-frame-wins dropping for real. The frames are small and
elongated (384 x 24): DETR resizes every image to a short side of 800 unless the long side would pass 1333,
so this shape runs at 1333 x 83 px, ~8x fewer pixels than a 4:3 frame, and keeps the module within a few
minutes on a busy CPU. The session logic itself is tested deterministically in test_streams_session.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from types import SimpleNamespace

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from PIL import Image, ImageDraw

from cli.gateway import GatewayProcess
from cli.torchserve import TorchServe
from clients.errors import AuthenticationError, InvalidInputError, NotFoundError, PermissionDeniedError
from clients.streams import TooManyStreamsError, stream_frames, ws_url
from proto import stream as pb
from tests.serving.gateway_support import FULL_KEY, TOY_KEY, bearer, running_gateway
from tests.support import http_request, running_torchserve

pytestmark = pytest.mark.integration

MODEL = "detr_resnet50"
W, H = 384, 24
KEYS = {"keys": [{"key": FULL_KEY, "name": "full", "models": ["*"]},
                 {"key": TOY_KEY, "name": "toy", "models": ["toy_echo"]}]}
GRPC_AUTH = (("authorization", f"Bearer {FULL_KEY}"),)
METHOD = "/zoo.stream.v1.DetectionStream/Stream"
IDLE_S = 4.0  # gw_small's idle timeout


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> TorchServe:
    pytest.importorskip("zoo.detr")
    with running_torchserve(tmp_path_factory.mktemp("ts"), [MODEL, "toy_echo"]) as server:
        yield server


@pytest.fixture(scope="module")
def gw(ts: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    with running_gateway(ts, tmp_path_factory.mktemp("gw"), {"auth": KEYS, "streams": {"max_sessions": 8}}) as g:
        yield g


@pytest.fixture(scope="module")
def gw_small(ts: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    """One session at most, idle sessions expire after IDLE_S."""
    config = {"auth": KEYS, "streams": {"max_sessions": 1, "idle_timeout_s": IDLE_S}}
    with running_gateway(ts, tmp_path_factory.mktemp("gw_small"), config) as g:
        yield g


def jpeg(i: int) -> bytes:
    img = Image.new("RGB", (W, H), (40, 40, 40))
    ImageDraw.Draw(img).rectangle([5 + 4 * i, 4, 60 + 4 * i, 20], fill=(220, 60, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def metrics(gw: GatewayProcess) -> str:
    status, _, raw = http_request(f"{gw.http_url}/metrics", headers=bearer(FULL_KEY))  # keyed: model series
    assert status == 200
    return raw.decode()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.1)


async def live_stream(target, outputs_wanted: int, max_s: float = 60.0, **kwargs) -> list:
    """Frames at 30 FPS (paced) until `outputs_wanted` distinct detector outputs were used in answers."""
    seen: set[int] = set()

    async def frames():
        start = time.monotonic()
        i = 0
        while len(seen) < outputs_wanted and time.monotonic() - start < max_s:
            yield i, i / 30, jpeg(i % 30)
            i += 1

    results = []
    async for result in stream_frames(target, frames(), MODEL, FULL_KEY, threshold=0.0, top_k=5, realtime=True,
                                      **kwargs):
        results.append(result)
        if result.computed_from_frame >= 0:
            seen.add(result.computed_from_frame)
    assert len(seen) >= outputs_wanted, f"only {len(seen)} detector outputs in {max_s:g} s"
    return results


def check_stream(results: list) -> tuple[int, int]:
    """Every frame answered once, in order; answers only come from processed frames; forecasts are sane."""
    indices = [r.index for r in results]
    assert indices == list(range(len(results)))
    processed = {r.index for r in results if r.status == "processed"}
    dropped = [r for r in results if r.status == "dropped"]
    assert len(processed) + len(dropped) == len(results) and dropped and 0 in processed
    for r in results:
        assert r.computed_from_frame <= r.index
        if r.computed_from_frame < 0:
            assert r.horizon_frames == 0 and not r.detections and r.image_size == (0, 0)
            continue
        assert r.computed_from_frame in processed and r.computed_from_frame < r.index
        assert r.horizon_frames == r.index - r.computed_from_frame
        assert r.image_size == (W, H) and len(r.detections) <= 5
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H and d.track_id >= 0 and d.label
    assert any(r.detections for r in results)  # threshold 0, top_k 5: random DETR boxes get forecast
    return len(processed), len(dropped)


# --- the two transports through DETR ---------------------------------------------------------------------
def test_grpc_stream_answers_every_frame_latest_frame_wins(gw: GatewayProcess) -> None:
    before = metrics(gw)
    results = asyncio.run(live_stream(gw.grpc_target, outputs_wanted=2))
    n_processed, n_dropped = check_stream(results)
    after = metrics(gw)
    m = {"model": MODEL}

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    frames = "zoo_gateway_stream_frames_total"
    assert delta(frames, **m, outcome="received") == len(results)
    assert delta(frames, **m, outcome="processed") == n_processed
    assert delta(frames, **m, outcome="dropped") == n_dropped
    with_output = sum(r.computed_from_frame >= 0 for r in results)
    assert delta("zoo_gateway_stream_forecast_horizon_frames_count", **m) == with_output
    assert delta("zoo_gateway_stream_forecast_horizon_frames_sum", **m) == sum(
        r.horizon_frames for r in results if r.computed_from_frame >= 0)
    assert delta("zoo_gateway_stream_frame_latency_seconds_count", **m) == len(results)
    assert metric(after, "zoo_gateway_streams_active", **m) == 0
    assert delta("zoo_gateway_requests_total", **m, protocol="grpc", route="stream", status="200") == 1
    # a dropped frame is answered when the next one arrives: well under a second, not a detector run
    assert np.median([r.latency_s for r in results if r.status == "dropped"]) < 0.5


def test_websocket_stream_binary_and_base64_frames(gw: GatewayProcess) -> None:
    results = asyncio.run(live_stream(gw.http_url, outputs_wanted=1))
    check_stream(results)
    assert set(results[0].raw) == {"index", "capture_time_s", "status", "computed_from_frame", "horizon_frames",
                                   "detections", "image_size", "latency_s", "error"}

    async def base64_frames() -> list:  # the one-message form, and the end message
        async with aiohttp.ClientSession() as s, s.ws_connect(
                ws_url(gw.http_url, MODEL, {"api_key": FULL_KEY, "threshold": 0.0})) as ws:
            for i in range(2):
                await ws.send_str(json.dumps({"index": i, "capture_time_s": i / 30,
                                              "image": base64.b64encode(jpeg(i)).decode()}))
            await ws.send_str('{"end": true}')
            docs = [json.loads(msg.data) async for msg in ws]
            return docs, ws.close_code

    docs, code = asyncio.run(base64_frames())
    assert code == 1000 and [(d["index"], d["status"]) for d in docs] == [(0, "processed"), (1, "dropped")]
    wait_for(lambda: metric(metrics(gw), "zoo_gateway_streams_active", model=MODEL) == 0, 10, "no session")


# --- disconnects -----------------------------------------------------------------------------------------
def test_client_disconnect_frees_the_session_and_torchserve_keeps_answering(gw: GatewayProcess) -> None:
    async def cancel_grpc_midway() -> None:
        async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
            call = channel.stream_stream(METHOD, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=pb.FrameResult.FromString)(metadata=GRPC_AUTH)
            opener = pb.StreamFrame(index=0, capture_time_s=0.0, image=jpeg(0))
            opener.config.model = MODEL
            await call.write(opener)  # frame 0 goes to DETR at once
            first = await call.read()
            assert first.index == 0 and first.status == pb.FrameResult.Status.Value("PROCESSED")
            for i in range(1, 4):
                await call.write(pb.StreamFrame(index=i, capture_time_s=i / 30, image=jpeg(i)))
            await asyncio.sleep(0.1)
            assert metric(metrics(gw), "zoo_gateway_streams_active", model=MODEL) == 1
            call.cancel()  # gone while DETR works on frame 0

    async def close_ws_midway() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(ws_url(gw.http_url, MODEL, {}), headers=bearer(FULL_KEY))
            await ws.send_str(json.dumps({"index": 0, "capture_time_s": 0.0}))
            await ws.send_bytes(jpeg(0))
            assert json.loads((await ws.receive()).data)["index"] == 0
            await ws.close()

    asyncio.run(cancel_grpc_midway())
    wait_for(lambda: metric(metrics(gw), "zoo_gateway_streams_active", model=MODEL) == 0, 5, "gRPC session freed")
    asyncio.run(close_ws_midway())
    wait_for(lambda: metric(metrics(gw), "zoo_gateway_streams_active", model=MODEL) == 0, 5, "WS session freed")
    text = metrics(gw)
    assert metric(text, "zoo_gateway_requests_total", model=MODEL, protocol="grpc", route="stream", status="499") >= 1
    assert metric(text, "zoo_gateway_requests_total", model=MODEL, protocol="rest", route="stream", status="499") >= 1

    # other requests keep working: a unary OIP infer answers promptly (TorchServe once hung every model when a
    # client stream closed early; DETR's abandoned calls finish in its own worker)
    client = tgrpc.InferenceServerClient(gw.grpc_target)
    tensor = tgrpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(0)], dtype=object))
    started = time.monotonic()
    result = client.infer("toy_echo", [tensor], headers=dict(GRPC_AUTH), client_timeout=20)
    assert result.as_numpy("width")[0] == W and time.monotonic() - started < 10


# --- bounds: session limit, idle expiry --------------------------------------------------------------------
async def _open_grpc(target: str, model: str = MODEL, key: str = FULL_KEY, **config):
    channel = grpc.aio.insecure_channel(target)
    call = channel.stream_stream(METHOD, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=pb.FrameResult.FromString)(
        metadata=(("authorization", f"Bearer {key}"),) if key else ())
    opener = pb.StreamFrame()
    opener.config.model = model
    for name, value in config.items():
        setattr(opener.config, name, value)
    await call.write(opener)
    return channel, call


def test_session_limit_and_idle_expiry(gw_small: GatewayProcess) -> None:
    async def run() -> None:
        opened = time.monotonic()
        channel, held = await _open_grpc(gw_small.grpc_target)  # config-only: a session with no frame yet
        for _ in range(50):
            if metric(metrics(gw_small), "zoo_gateway_streams_active", model=MODEL) == 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(TooManyStreamsError, match="stream sessions") as info:  # gRPC
            async for _ in stream_frames(gw_small.grpc_target, [(0, 0.0, jpeg(0))], MODEL, FULL_KEY):
                pass
        assert info.value.status == 429 and info.value.code == "RESOURCE_EXHAUSTED"
        with pytest.raises(TooManyStreamsError, match="stream sessions") as info:  # WebSocket: HTTP 429
            async for _ in stream_frames(gw_small.http_url, [(0, 0.0, jpeg(0))], MODEL, FULL_KEY):
                pass
        assert info.value.status == 429
        # the held session sends nothing: it expires after idle_timeout_s
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await held.read()
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "expired" in expired.value.details()
        assert IDLE_S - 0.5 < time.monotonic() - opened < IDLE_S + 6
        await channel.close()

        async def ws_idle() -> tuple[dict, int]:
            async with aiohttp.ClientSession() as s, s.ws_connect(
                    ws_url(gw_small.http_url, MODEL, {"api_key": FULL_KEY})) as ws:
                docs = [json.loads(msg.data) async for msg in ws]
                return docs, ws.close_code

        docs, code = await ws_idle()  # the slot is free again; this one expires too
        assert code == 4504 and docs[-1]["status"] == 504 and "expired" in docs[-1]["error"]

    asyncio.run(run())
    text = metrics(gw_small)
    assert metric(text, "zoo_gateway_streams_active", model=MODEL) == 0
    assert metric(text, "zoo_gateway_requests_total", model=MODEL, protocol="grpc", route="stream",
                  status="429") == 1
    assert metric(text, "zoo_gateway_requests_total", model=MODEL, protocol="grpc", route="stream",
                  status="504") == 1


# --- auth and bad input ------------------------------------------------------------------------------------
def test_auth_and_refusals(gw: GatewayProcess) -> None:
    async def refused(target: str, model: str = MODEL, key: str | None = None, **options) -> Exception:
        try:
            async for _ in stream_frames(target, [(0, 0.0, jpeg(0))], model, key, **options):
                pass
        except Exception as exc:  # noqa: BLE001 - returned for the caller to check
            return exc
        raise AssertionError("the stream was not refused")

    for target in (gw.grpc_target, gw.http_url):
        assert isinstance(asyncio.run(refused(target)), AuthenticationError)
        assert isinstance(asyncio.run(refused(target, key="wrong")), AuthenticationError)
        exc = asyncio.run(refused(target, key=TOY_KEY))
        assert isinstance(exc, PermissionDeniedError) and "not allowed" in exc.message
        assert isinstance(asyncio.run(refused(target, model="nope", key=FULL_KEY)), NotFoundError)
        exc = asyncio.run(refused(target, key=FULL_KEY, top_k=1000))
        assert isinstance(exc, InvalidInputError) and "top_k" in exc.message

    async def ws_query_key_and_empty_stream() -> tuple[list, int]:  # browsers: the key as a query parameter
        async with aiohttp.ClientSession() as s, s.ws_connect(
                ws_url(gw.http_url, MODEL, {"api_key": FULL_KEY})) as ws:
            await ws.send_str('{"end": true}')
            return [msg async for msg in ws], ws.close_code

    messages, code = asyncio.run(ws_query_key_and_empty_stream())
    assert messages == [] and code == 1000
    # synchronous iteration (the SDK's ZooClient.stream), an SDK-client-like target (url + api_key)
    with pytest.raises(AuthenticationError):
        list(stream_frames(gw.grpc_target, [(0, 0.0, jpeg(0))], MODEL))
    client = SimpleNamespace(url=gw.http_url, api_key=FULL_KEY)
    results = list(stream_frames(client, [(0, 0.0, jpeg(0)), (1, 1 / 30, jpeg(1))], MODEL))
    # sent back to back: frame 0 goes to the idle detector, frame 1 is dropped at the end of the stream
    assert [(r.index, r.status, r.computed_from_frame) for r in results] == [(0, "processed", -1),
                                                                            (1, "dropped", -1)]
    assert all(r.round_trip_s >= 0 for r in results)
    status, _, raw = http_request(f"{gw.http_url}/v1/streams/{MODEL}?api_key={FULL_KEY}")  # no upgrade
    assert status == 400 and "WebSocket route" in json.loads(raw)["error"]


def test_bad_frames_end_the_stream_with_a_clear_error(gw: GatewayProcess) -> None:
    async def grpc_empty_image() -> grpc.aio.AioRpcError:
        channel, call = await _open_grpc(gw.grpc_target)
        await call.write(pb.StreamFrame(index=0, capture_time_s=0.0, image=b""))
        try:
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            await channel.close()
        raise AssertionError("not refused")

    exc = asyncio.run(grpc_empty_image())
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "no image" in exc.details()
    assert dict(exc.trailing_metadata())["zoo-http-status"] == "400"

    async def ws_messages(send) -> tuple[list, int]:
        async with aiohttp.ClientSession() as s, s.ws_connect(
                ws_url(gw.http_url, MODEL, {"api_key": FULL_KEY})) as ws:
            sender = asyncio.create_task(send(ws))
            docs = [json.loads(msg.data) async for msg in ws]
            sender.cancel()
            return docs, ws.close_code

    async def binary_first(ws) -> None:
        await ws.send_bytes(jpeg(0))

    docs, code = asyncio.run(ws_messages(binary_first))
    assert code == 4400 and "without its JSON header" in docs[-1]["error"]

    async def undecodable(ws) -> None:  # TorchServe's handler refuses each one (400): 3 in a row end it
        for i in range(200):  # until the gateway closes the stream (a busy DETR worker may delay them)
            if ws.closed:
                return
            await ws.send_str(json.dumps({"index": i, "capture_time_s": i / 30,
                                          "image": base64.b64encode(b"not an image").decode()}))
            await asyncio.sleep(0.3)

    docs, code = asyncio.run(ws_messages(undecodable))
    assert code == 4400 and docs[-1]["status"] == 400 and "3 frames in a row" in docs[-1]["error"]
    answers = docs[:-1]
    assert [d["index"] for d in answers] == list(range(len(answers)))
    assert any(d["error"] and "detector failed on frame" in d["error"] for d in answers)
    wait_for(lambda: metric(metrics(gw), "zoo_gateway_streams_active", model=MODEL) == 0, 10, "no session")


def test_gateway_shutdown_ends_open_streams_at_once(ts: TorchServe, tmp_path) -> None:
    """SIGTERM: open sessions end with UNAVAILABLE right away instead of holding the shutdown for grace_s."""
    with running_gateway(ts, tmp_path, {"auth": KEYS, "server": {"grace_s": 20}}) as gateway:
        async def run() -> tuple[grpc.aio.AioRpcError, float]:
            channel, call = await _open_grpc(gateway.grpc_target)
            await call.initial_metadata()  # admitted
            stopper = asyncio.get_running_loop().run_in_executor(None, gateway.stop)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                started = time.monotonic()
                await stopper
                return info.value, time.monotonic() - started
            finally:
                await channel.close()

        error, stop_s = asyncio.run(run())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
    assert stop_s < 10 and gateway.proc.returncode == 0


# --- the CLI --------------------------------------------------------------------------------------------------
def test_zoo_stream_cli_writes_an_annotated_video(gw: GatewayProcess, tmp_path, capsys) -> None:
    import av

    from cli.main import main
    from zoo.video import encode_video

    frames = np.stack([np.asarray(Image.open(io.BytesIO(jpeg(i)))) for i in range(20)])
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(frames, fps=30))
    out = tmp_path / "annotated.mp4"
    rc = main(["stream", MODEL, str(video), "--url", gw.grpc_target, "--api-key", FULL_KEY, "--out", str(out),
               "--threshold", "0", "--top-k", "3", "--json", "--quiet"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["frames"] == 20 and stats["processed"] + stats["dropped"] == 20 and stats["processed"] >= 1
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 20 and decoded[0].shape == (H, W, 3)
    # the header line is drawn: the annotated frame differs from the source frame
    assert np.abs(decoded[0].astype(int) - frames[0].astype(int)).max() > 100

    assert main(["stream", MODEL, "camera", "--url", gw.grpc_target]) == 1
    assert "device path" in capsys.readouterr().err
