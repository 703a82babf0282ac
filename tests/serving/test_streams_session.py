"""Stream session logic (serving/streams.py) with a fake async detector the test releases by hand: pure asyncio,
deterministic. The served path (real gRPC / WebSocket, gateway + TorchServe + DETR) is in test_streams.py."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from serving.config import ApiKey, BackendConfig, ConfigError, GatewayConfig, digest
from serving.dataplane import DataPlane
from serving.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, PayloadTooLarge, Unauthenticated
from serving.metrics import GatewayMetrics
from serving.streams import (
    DROPPED,
    PROCESSED,
    Detections,
    Frame,
    NotADetector,
    StreamManager,
    StreamOptions,
    StreamSession,
    StreamSettings,
    TooManyStreams,
    parse_detections,
)
from zoo.streaming import KalmanForecaster, shrinking_tail_wait

MODEL = "det"
SIZE = (200, 100)


def output_for(index: int, n: int = 2) -> Detections:
    """Objects moving 3 px/frame right (label 1) and 2 px/frame down (label 3)."""
    boxes = np.array([[10 + 3 * index, 20, 60 + 3 * index, 70], [100, 5 + 2 * index, 150, 45 + 2 * index]] * n,
                     np.float32)[:n]
    scores = np.linspace(0.9, 0.5, n).astype(np.float32)
    labels = np.array([1, 3] * n, np.int64)[:n]
    return Detections(boxes, scores, labels, SIZE, {1: "person", 3: "car"})


class FakeDetector:
    """Each call waits until the test resolves it (`release`); the image bytes are the frame index."""

    def __init__(self, outputs=output_for) -> None:
        self.calls: list[tuple[int, dict[str, bytes], asyncio.Future]] = []
        self.outputs = outputs

    async def __call__(self, image: bytes, params: dict[str, bytes]) -> Detections:
        fut = asyncio.get_running_loop().create_future()
        self.calls.append((int(image), params, fut))
        return await fut

    def release(self, result: Detections | BaseException | None = None) -> int:
        index, _, fut = next(c for c in self.calls if not c[2].done())
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result if result is not None else self.outputs(index))
        return index


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def frame(i: int) -> Frame:
    return Frame(i, i / 30, str(i).encode())


def drain(session: StreamSession) -> list:
    out = list(session._answers)
    session._answers.clear()
    return out


def expected_boxes(outputs: list[int], target: int) -> np.ndarray:
    """The forecast an independent KalmanForecaster gives, fed the same outputs, as xyxy."""
    kf = KalmanForecaster()
    for f in outputs:
        d = output_for(f)
        kf.update(f, np.concatenate([d.boxes_xyxy[:, :2], d.boxes_xyxy[:, 2:] - d.boxes_xyxy[:, :2]], 1),
                  d.scores, d.labels)
    ltwh, _, _ = kf.forecast(target, image_size=SIZE)
    return np.concatenate([ltwh[:, :2], ltwh[:, :2] + ltwh[:, 2:]], 1)


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_latest_frame_wins_every_frame_answered_in_order_with_kalman_forecasts() -> None:
    async def run() -> None:
        metrics = GatewayMetrics()
        det = FakeDetector()
        s = StreamSession(MODEL, det, StreamSettings(), StreamOptions(MODEL, threshold=0.25, top_k=7), metrics)
        s.start()
        await s.push(frame(0))
        await settle()
        [a0] = drain(s)  # taken at once, nothing to forecast from yet
        assert (a0.index, a0.status, a0.computed_from_frame, a0.horizon_frames) == (0, PROCESSED, -1, 0)
        assert len(a0.scores) == 0 and a0.image_size == (0, 0)
        assert det.calls[0][1] == {"top_k": b"7", "threshold": b"0.25"}
        for i in range(1, 6):  # the detector is busy with frame 0: each newer frame replaces the waiting one
            await s.push(frame(i))
        await settle()
        answers = drain(s)
        assert [(a.index, a.status, a.computed_from_frame) for a in answers] == [(i, DROPPED, -1) for i in range(1, 5)]
        assert det.release() == 0
        await settle()
        [a5] = drain(s)  # frame 5 was waiting: taken as soon as the detector is free
        assert (a5.index, a5.status, a5.computed_from_frame, a5.horizon_frames) == (5, PROCESSED, 0, 5)
        np.testing.assert_allclose(a5.boxes_xyxy, expected_boxes([0], 5), atol=1e-4)
        assert a5.image_size == SIZE and [a5.names[int(x)] for x in a5.labels] == ["person", "car"]
        await s.push(frame(6))
        await s.push(frame(8))  # gaps in the indices are fine
        assert det.release() == 5
        await settle()
        a6, a8 = drain(s)
        assert (a6.index, a6.status, a6.computed_from_frame, a6.horizon_frames) == (6, DROPPED, 0, 6)
        assert (a8.index, a8.status, a8.computed_from_frame, a8.horizon_frames) == (8, PROCESSED, 5, 3)
        np.testing.assert_allclose(a8.boxes_xyxy, expected_boxes([0, 5], 8), atol=1e-3)
        # with two outputs the filter has a velocity: the forecast runs ahead of the last output
        assert a8.boxes_xyxy[0, 0] > output_for(5).boxes_xyxy[0, 0]
        assert list(a8.track_ids) == list(a5.track_ids)  # same objects, same tracks
        await s.push(frame(9))
        s.end_input()  # frame 9 waits for the busy detector: dropped now, no later frame needs it
        [a9] = drain(s)
        assert (a9.index, a9.status, a9.computed_from_frame) == (9, DROPPED, 5)
        assert s.finished and [a async for a in s.answers()] == []
        assert (s.received, s.processed, s.dropped) == (9, 3, 6)
        m = {"model": MODEL}
        assert sample(metrics, "zoo_gateway_stream_frames_total", **m, outcome="received") == 9
        assert sample(metrics, "zoo_gateway_stream_frames_total", **m, outcome="processed") == 3
        assert sample(metrics, "zoo_gateway_stream_frames_total", **m, outcome="dropped") == 6
        # horizon observed for every answer that had an output: frames 5, 6, 8, 9
        assert sample(metrics, "zoo_gateway_stream_forecast_horizon_frames_count", **m) == 4
        assert sample(metrics, "zoo_gateway_stream_forecast_horizon_frames_sum", **m) == 5 + 6 + 3 + 4
        s.close()

    asyncio.run(run())


def test_an_idle_detector_takes_the_frame_on_arrival() -> None:
    """Frames arriving in one burst (no event-loop turn between them): the first goes to the idle detector,
    it is not replaced by the second."""

    async def run() -> None:
        det = FakeDetector()
        s = StreamSession(MODEL, det, StreamSettings(), StreamOptions(MODEL), None)
        s.start()
        await s.push(frame(0))
        await s.push(frame(1))
        s.end_input()
        assert [(a.index, a.status) for a in drain(s)] == [(0, PROCESSED), (1, DROPPED)]
        await settle()
        assert det.calls == []  # the stream ended before the detector ran: no later frame needs the call
        s.close()

    asyncio.run(run())


def test_a_disconnect_counts_the_waiting_frame_as_dropped() -> None:
    async def run() -> None:
        metrics = GatewayMetrics()
        s = StreamSession(MODEL, FakeDetector(), StreamSettings(), StreamOptions(MODEL), metrics)
        s.start()
        for i in range(3):
            await s.push(frame(i))
        s.close(499)  # frame 2 was waiting: never answered, but every received frame has an outcome
        assert (s.received, s.processed, s.dropped) == (3, 1, 2)
        assert sample(metrics, "zoo_gateway_stream_frames_total", model=MODEL, outcome="dropped") == 2

    asyncio.run(run())


def test_answers_iterator_and_latency_metric() -> None:
    async def run() -> None:
        metrics = GatewayMetrics()
        clock = Clock()
        det = FakeDetector()
        s = StreamSession(MODEL, det, StreamSettings(), StreamOptions(MODEL), metrics, clock=clock)
        s.start()
        got = []

        async def consume() -> None:
            async for a in s.answers():
                clock.t += 0.01  # sending takes 10 ms
                s.sent(a)
                got.append(a)

        consumer = asyncio.create_task(consume())
        for i in range(4):
            await s.push(frame(i))
        s.end_input()
        await asyncio.wait_for(consumer, 5)
        assert [a.index for a in got] == [0, 1, 2, 3]
        assert sample(metrics, "zoo_gateway_stream_frame_latency_seconds_count", model=MODEL) == 4
        assert sample(metrics, "zoo_gateway_stream_frame_latency_seconds_sum", model=MODEL) == pytest.approx(
            0.01 + 0.02 + 0.03 + 0.04)
        s.close()

    asyncio.run(run())


@pytest.mark.parametrize("since_frames, waits", [(0.5, True), (0.1, False)])
def test_shrinking_tail_decides_whether_to_wait_for_the_next_frame(since_frames: float, waits: bool) -> None:
    """Runtime 1.5 frames; the detector frees up `since_frames` after the waiting frame 1 arrived (on time, or
    late): the rule of zoo.streaming (tau(s + r) < tau(s)) says wait at tail 0.5 and go at tail 0.1."""
    assert shrinking_tail_wait(1 + since_frames, 1.5) is waits

    async def run() -> None:
        clock = Clock()
        det = FakeDetector()
        s = StreamSession(MODEL, det, StreamSettings(shrinking_tail=True), StreamOptions(MODEL, fps=30), clock=clock)
        s.start()
        await s.push(frame(0))  # no runtime known yet: never waits
        await settle()
        clock.t = (1.5 - since_frames) / 30
        await s.push(frame(1))
        clock.t = 1.5 / 30
        det.release()  # frame 0 took 1.5 frames: the scheduler's runtime estimate
        await settle()
        assert s.scheduler.runtime_frames == pytest.approx(1.5)
        a0, a1 = drain(s)
        assert (a0.index, a0.status) == (0, PROCESSED)
        assert a1.index == 1 and a1.status == (DROPPED if waits else PROCESSED)
        clock.t = 2 / 30
        await s.push(frame(2))
        await settle()
        later = drain(s)
        if waits:  # after a wait the next frame is taken on arrival
            assert [(a.index, a.status, a.computed_from_frame) for a in later] == [(2, PROCESSED, 0)]
        else:  # the detector is busy with frame 1: frame 2 waits in the slot
            assert later == [] and s._pending is not None and s._pending.index == 2
        s.close()

    asyncio.run(run())


def test_tracks_are_bounded_by_max_tracks() -> None:
    async def run() -> None:
        det = FakeDetector(outputs=lambda i: output_for(i, n=10))
        s = StreamSession(MODEL, det, StreamSettings(max_tracks=3), StreamOptions(MODEL), None)
        s.start()
        await s.push(frame(0))
        await settle()
        assert det.calls[0][1] == {"top_k": b"3"}  # asked for at most max_tracks ...
        det.release()  # ... and a detector that answers more is cut to the 3 best
        await s.push(frame(1))
        await settle()
        answers = drain(s)
        assert len(s.forecaster) == 3 and len(answers[-1].scores) == 3
        assert answers[-1].scores.tolist() == sorted(answers[-1].scores.tolist(), reverse=True)
        s.close()

    asyncio.run(run())


def test_detector_failures_are_reported_in_band_then_end_the_session() -> None:
    async def run() -> None:
        det = FakeDetector()
        s = StreamSession(MODEL, det, StreamSettings(max_consecutive_errors=2), StreamOptions(MODEL), None)
        s.start()
        await s.push(frame(0))
        await settle()
        det.release(BackendUnavailable("TorchServe unavailable"))
        await settle()
        await s.push(frame(1))  # taken; its answer carries the failure on frame 0
        await settle()
        a0, a1 = drain(s)
        assert a0.error == "" and "frame 0" in a1.error and "TorchServe unavailable" in a1.error
        det.release(BackendUnavailable("TorchServe unavailable"))  # second failure in a row: session over
        await settle()
        with pytest.raises(BackendUnavailable, match="2 frames in a row"):
            async for _ in s.answers():
                pass
        s.close()

    asyncio.run(run())


def test_a_model_without_detections_ends_the_stream_at_once() -> None:
    toy = json.dumps({"width": 16, "height": 12, "fields": ["image"]}).encode()
    with pytest.raises(NotADetector, match="did not answer with detections"):
        parse_detections(toy, "toy_echo")

    async def run() -> None:
        det = FakeDetector()
        s = StreamSession("toy_echo", det, StreamSettings(), StreamOptions("toy_echo"), None)
        s.start()
        await s.push(frame(0))
        await settle()
        det.release(NotADetector("model 'toy_echo' did not answer with detections"))
        await settle()
        with pytest.raises(NotADetector):
            async for _ in s.answers():
                pass
        s.close()

    asyncio.run(run())


def test_parse_detr_answer() -> None:
    body = json.dumps({"detections": [
        {"label": "cat", "label_id": 17, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0]},
        {"label": "dog", "label_id": 18, "score": 0.8, "box": [5.0, 6.0, 7.0, 8.0]}],
        "image_size": {"width": 64, "height": 48}, "batch_size": 1, "model": {}}).encode()
    d = parse_detections(body, "detr_resnet50")
    assert d.image_size == (64, 48) and d.labels.tolist() == [17, 18] and d.names == {17: "cat", 18: "dog"}
    np.testing.assert_allclose(d.boxes_xyxy, [[1, 2, 30, 40], [5, 6, 7, 8]])
    empty = parse_detections(b'{"detections": [], "image_size": {"width": 4, "height": 3}}', "m")
    assert len(empty) == 0 and empty.boxes_xyxy.shape == (0, 4)


def test_bad_frames_are_refused() -> None:
    async def run() -> None:
        s = StreamSession(MODEL, FakeDetector(), StreamSettings(max_frame_bytes=10), StreamOptions(MODEL), None)
        s.start()
        await s.push(frame(3))
        for bad, err, match in [(Frame(3, 0, b"1"), InvalidInput, "greater than the previous"),
                                (Frame(2, 0, b"1"), InvalidInput, "greater than the previous"),
                                (Frame(4, 0, b""), InvalidInput, "no image"),
                                (Frame(5, 0, b"x" * 11), PayloadTooLarge, "over the limit of 10 bytes")]:
            with pytest.raises(err, match=match):
                await s.push(bad)
        s.end_input()
        with pytest.raises(InvalidInput, match="after the end"):
            await s.push(frame(9))
        s.close()

    asyncio.run(run())


def test_unread_answers_pause_reading() -> None:
    async def run() -> None:
        s = StreamSession(MODEL, FakeDetector(), StreamSettings(max_unsent_answers=2), StreamOptions(MODEL), None)
        s.start()
        await s.push(frame(0))
        await settle()
        await s.push(frame(1))
        await s.push(frame(2))  # frame 1 dropped: 2 answers unread
        blocked = asyncio.create_task(s.push(frame(3)))
        await settle()
        assert not blocked.done() and s.received == 3
        it = s.answers()
        assert (await it.__anext__()).index == 0
        await settle()
        assert blocked.done() and s.received == 4
        s.close()
        await it.aclose()

    asyncio.run(run())


def test_settings_from_config() -> None:
    assert StreamSettings.from_config(None) == StreamSettings()
    s = StreamSettings.from_config({"max_sessions": 2, "idle_timeout_s": 0.5, "shrinking_tail": True})
    assert (s.max_sessions, s.idle_timeout_s, s.shrinking_tail) == (2, 0.5, True)
    for bad, match in [({"max_session": 2}, "unknown key"), ({"max_sessions": 0}, "positive"),
                       ({"max_sessions": 1.5}, "integer"), ({"shrinking_tail": "yes"}, "true or false")]:
        with pytest.raises(ConfigError, match=match):
            StreamSettings.from_config(bad)
    with pytest.raises(InvalidInput, match="top_k"):
        StreamOptions(MODEL, top_k=101).validate(StreamSettings())
    with pytest.raises(InvalidInput, match="threshold"):
        StreamOptions(MODEL, threshold=1.5).validate(StreamSettings())


# --- the manager: auth, routing, limits, expiry, shutdown ------------------------------------------------
def manager(settings: StreamSettings, keys: dict[str, ApiKey] | None = None) -> tuple[StreamManager, FakeDetector]:
    config = GatewayConfig(backends={"fake": BackendConfig("fake", "fake")}, api_keys=keys or {})
    config = config.with_routes([config.route(MODEL, backend="fake")])
    det = FakeDetector()
    return StreamManager(DataPlane(config, {}, GatewayMetrics()), settings, detector_factory=lambda route: det), det


def test_manager_limits_sessions_and_frees_them_on_close() -> None:
    async def run() -> None:
        mgr, _ = manager(StreamSettings(max_sessions=1))
        m = mgr.metrics
        first = await mgr.open(MODEL, None, StreamOptions(MODEL), "grpc")
        assert sample(m, "zoo_gateway_streams_active", model=MODEL) == 1
        with pytest.raises(TooManyStreams) as info:
            await mgr.open(MODEL, None, StreamOptions(MODEL), "rest")
        assert info.value.http_status == 429 and info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.close(499)
        assert sample(m, "zoo_gateway_streams_active", model=MODEL) == 0 and not mgr.sessions
        second = await mgr.open(MODEL, None, StreamOptions(MODEL), "grpc")
        second.close(200)
        req = "zoo_gateway_requests_total"
        assert sample(m, req, model=MODEL, version="", protocol="rest", route="stream", status="429") == 1
        assert sample(m, req, model=MODEL, version="", protocol="grpc", route="stream", status="499") == 1
        assert sample(m, req, model=MODEL, version="", protocol="grpc", route="stream", status="200") == 1
        await mgr.shutdown()

    asyncio.run(run())


def test_manager_auth_unknown_model_and_shutdown() -> None:
    async def run() -> None:
        mgr, _ = manager(StreamSettings(), keys={digest("k1"): ApiKey("k1", frozenset({"other"}))})
        with pytest.raises(Unauthenticated):
            await mgr.open(MODEL, None, StreamOptions(MODEL), "grpc")
        with pytest.raises(Exception, match="not allowed"):
            await mgr.open(MODEL, "k1", StreamOptions(MODEL), "grpc")
        mgr2, _ = manager(StreamSettings())
        with pytest.raises(Exception, match="unknown model"):
            await mgr2.open("nope", None, StreamOptions("nope"), "grpc")
        session = await mgr2.open(MODEL, None, StreamOptions(MODEL), "grpc")
        await mgr2.shutdown()
        with pytest.raises(BackendUnavailable, match="shutting down"):
            async for _ in session.answers():
                pass
        session.close(503)
        with pytest.raises(BackendUnavailable):
            await mgr2.open(MODEL, None, StreamOptions(MODEL), "grpc")

    asyncio.run(run())


def test_idle_sessions_expire() -> None:
    async def run() -> None:
        mgr, _ = manager(StreamSettings(idle_timeout_s=0.2))
        session = await mgr.open(MODEL, None, StreamOptions(MODEL), "grpc")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="expired"):
            async for _ in session.answers():
                pass
        assert 0.2 <= loop.time() - started < 2.0
        session.close(504)
        assert sample(mgr.metrics, "zoo_gateway_streams_active", model=MODEL) == 0
        await mgr.shutdown()

    asyncio.run(run())
