"""The Python SDK and the `zoo predict` / `zoo models` commands against a real gateway + TorchServe.

Random weights everywhere: the answers' contract is checked (types, shapes, the weights label, drawings,
errors, retries), never what the models say. FTCN runs only on a face-free video here (the MTCNN pass, no
FTCN clip); the one real FTCN clip of the e2e suite is the quickstart's (tests/e2e/test_quickstart.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http
from PIL import Image

from cli.commands.samples import encode_mp4, write_samples
from cli.main import main as cli_main
from clients import (
    AsyncZooClient,
    AuthenticationError,
    DeepfakeResult,
    DetectionResult,
    InvalidInputError,
    NotFoundError,
    QualityResult,
    RetryPolicy,
    UnavailableError,
    ZooClient,
    ZooTimeoutError,
)
from clients.draw import CAPTION_BG, draw_deepfake, draw_quality, label_color, line_width
from clients.inputs import image_bytes
from tests.serving.gateway_support import png_bytes, running_gateway
from tests.support import http_request, running_torchserve

pytestmark = pytest.mark.integration

TIMEOUT_S = 600  # CPU models on a shared machine
API_KEY = "clients-key-0123"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_samples(tmp_path_factory.mktemp("samples"))
    rng = np.random.default_rng(0)  # smooth coloured noise: a video without any face
    small = rng.integers(0, 256, (12, 32, 40, 3), dtype=np.uint8)
    paths["noface.mp4"] = paths["face.mp4"].with_name("noface.mp4")
    paths["noface.mp4"].write_bytes(encode_mp4(small.repeat(8, axis=1).repeat(8, axis=2), 25.0))
    return paths


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def zoo_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """`zoo ...` in this process (a `zoo` process would spend seconds importing torch for other commands)."""

    def run(*args: str, env: dict[str, str] | None = None) -> CliRun:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            code = cli_main(list(args))
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run


def metric(url: str, model: str, route: str, status: int) -> float:
    """zoo_gateway_requests_total for one (model, route, status), summed over versions and protocols."""
    _, _, body = http_request(f"{url}/metrics", headers={"x-api-key": API_KEY})  # keyed: model series
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("zoo_gateway_requests_total{") and f'model="{model}"' in line \
                and f'route="{route}"' in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- typed helpers, sync and async ----------------------------------------------------------------------
def test_sync_helpers_return_typed_results(flagship, samples) -> None:
    with ZooClient(flagship.url, timeout_s=TIMEOUT_S) as zoo:
        assert zoo.live() and zoo.ready()
        det = zoo.detect(samples["astronaut.jpg"], threshold=0, top_k=3)
        assert isinstance(det, DetectionResult) and len(det) == 3 and det.image_size == (512, 512)
        assert det.model.name == "detr_resnet50" and det.model.random_weights
        assert [d.score for d in det] == sorted((d.score for d in det), reverse=True)
        for d in det:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= 512 and 0 <= y0 <= y1 <= 512 and 0 < d.score < 1 and d.label

        quality = zoo.score_quality(samples["restored.png"], samples["degraded.png"])
        assert isinstance(quality, QualityResult) and 0 <= quality.score <= 1
        assert quality.model.name == "ckdn_r50" and "RANDOM" in quality.model.weights_label

        verdict = zoo.detect_deepfake(samples["noface.mp4"])
        assert isinstance(verdict, DeepfakeResult)
        assert verdict.verdict == "no_face" and verdict.fake_probability is None and verdict.tracks == []
        assert verdict.frames_analyzed == 12 and verdict.clips_analyzed == 0 and verdict.video["width"] == 320


def test_every_image_input_kind_is_sent_as_the_same_pixels(samples) -> None:
    """path / bytes / file object: the file's own bytes; PIL image and uint8 array: the same lossless PNG."""
    raw = samples["cat.jpg"].read_bytes()
    photo = Image.open(samples["cat.jpg"]).convert("RGB")
    assert image_bytes(samples["cat.jpg"]) == image_bytes(str(samples["cat.jpg"])) == image_bytes(raw) == raw
    assert image_bytes(io.BytesIO(raw)) == raw
    png = image_bytes(photo)
    assert image_bytes(np.asarray(photo)) == png and Image.open(io.BytesIO(png)).format == "PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(photo))
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.asarray(Image.open(io.BytesIO(image_bytes(gray[:, :, None])))).tolist() == gray.tolist()
    with pytest.raises(TypeError, match="uint8"):
        image_bytes(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        image_bytes(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(FileNotFoundError):
        image_bytes("no/such/photo.jpg")
    with pytest.raises(TypeError, match="expected a path"):
        image_bytes(12)


def test_async_client(flagship, samples) -> None:
    photo = np.asarray(Image.open(samples["cat.jpg"]).convert("RGB"))

    async def main() -> tuple:
        async with AsyncZooClient(flagship.url, timeout_s=TIMEOUT_S) as zoo:
            assert await zoo.ready() and await zoo.live()
            return await asyncio.gather(  # in flight together
                zoo.detect(photo, threshold=0, top_k=2),
                zoo.score_quality(io.BytesIO(samples["restored.png"].read_bytes()), samples["degraded.png"]),
                zoo.models(),
            )

    detections, quality, models = asyncio.run(main())
    assert isinstance(detections, DetectionResult) and len(detections) == 2
    assert detections.image_size == (300, 300) and detections.model.random_weights
    assert isinstance(quality, QualityResult) and 0 <= quality.score <= 1
    by_name = {m.name: m for m in models}
    assert set(by_name) == {"detr_resnet50", "ckdn_r50", "ftcn_tt"} and all(m.ready for m in models)
    assert by_name["ftcn_tt"].metadata.task == "deepfake-detection" and by_name["ftcn_tt"].metadata.random_weights


def test_raw_oip_infer_metadata_and_readiness(flagship, samples) -> None:
    zoo = ZooClient(flagship.url, timeout_s=TIMEOUT_S)
    meta = zoo.model_metadata("ckdn_r50")
    assert [t.name for t in meta.inputs] == ["restored", "degraded"] and meta.inputs[0].datatype == "BYTES"
    assert meta.task == "image-quality" and meta.random_weights and meta.versions == ["1"]
    assert zoo.model_ready("ckdn_r50") and zoo.server_metadata()["name"] == "zoo-gateway"
    result = zoo.infer("ckdn_r50", {"restored": samples["restored.png"].read_bytes(),
                                    "degraded": samples["degraded.png"].read_bytes()}, request_id="r-1")
    assert result.model_name == "ckdn_r50" and result.id == "r-1"
    assert list(result.outputs) == ["score"] and result["score"].dtype == np.float32  # the declared output
    assert result["score"].shape == (1, 1) and 0.0 <= float(result["score"][0, 0]) <= 1.0

    async def main() -> tuple:
        async with AsyncZooClient(flagship.url, timeout_s=TIMEOUT_S) as azoo:
            return await azoo.model_metadata("detr_resnet50"), await azoo.model_ready("detr_resnet50")

    detr_meta, ready = asyncio.run(main())
    assert detr_meta.task == "detection" and ready


# --- errors carry the server's message ------------------------------------------------------------------
def test_errors_carry_the_servers_message_and_a_400_is_tried_once(flagship, samples) -> None:
    zoo = ZooClient(flagship.url, timeout_s=TIMEOUT_S, retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.01))
    before = metric(flagship.url, "detr_resnet50", "predict", 400)
    with pytest.raises(InvalidInputError) as err:
        zoo.detect(b"this is not an image")
    assert err.value.status == 400 and err.value.attempts == 1
    assert "'image' is not a recognised image" in err.value.message
    assert metric(flagship.url, "detr_resnet50", "predict", 400) == before + 1  # the server saw ONE request

    with pytest.raises(InvalidInputError, match="aspect ratios differing"):
        zoo.score_quality(samples["restored.png"], np.zeros((64, 200, 3), np.uint8))
    with pytest.raises(NotFoundError) as err:
        zoo.detect(samples["cat.jpg"], model="no_such_model")
    assert err.value.status == 404 and "served models: ckdn_r50, detr_resnet50, ftcn_tt" in err.value.message

    async def bad_video() -> None:
        async with AsyncZooClient(flagship.url, retry=RetryPolicy(max_attempts=5)) as azoo:
            await azoo.detect_deepfake(b"garbage" * 64)

    with pytest.raises(InvalidInputError, match="not a recognised video") as err:
        asyncio.run(bad_video())
    assert err.value.attempts == 1
    with pytest.raises(TypeError, match="uint8"):
        zoo.detect(np.zeros((8, 8, 3), np.float32))


# --- retries: only 503 / connection refused, honouring Retry-After ---------------------------------------
def test_retries_on_503_with_backoff_and_never_on_client_errors(tmp_path, zoo_cli) -> None:
    png = png_bytes(32, 24)
    keys = {"ZOO_API_KEYS": f"{API_KEY}=*;limited-key=ckdn_r50"}
    with running_torchserve(tmp_path / "ts", ["toy_echo"]) as ts, \
            running_gateway(ts, tmp_path / "gw", {"server": {"retry_after_s": 1}}, env=keys) as gw:
        url = gw.http_url
        fields = {"image": png}
        with pytest.raises(AuthenticationError, match="missing API key"):
            ZooClient(url).predict("toy_echo", fields)
        zoo = ZooClient(url, API_KEY, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01, jitter=0))
        assert zoo.predict("toy_echo", fields)["width"] == 32
        # the model list is per key, and is Triton's repository index
        assert [(m.name, m.ready) for m in zoo.models(metadata=False)] == [("toy_echo", True)]
        assert ZooClient(url, "limited-key").models() == []
        index = tritonclient.http.InferenceServerClient(url.split("://")[1]).get_model_repository_index(
            headers={"x-api-key": API_KEY})
        assert index == [{"name": "toy_echo", "state": "READY", "reason": ""}]
        # a model of no known task: one file per declared input, the answer printed as JSON
        image = tmp_path / "toy.png"
        image.write_bytes(png)
        run = zoo_cli("predict", "toy_echo", str(image), "--url", url, "--api-key", API_KEY, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)[0]["result"]["width"] == 32
        # numeric OIP inputs travel as JSON fields to the handler (toy_echo echoes the names it got)
        out = zoo.infer("toy_echo", {"image": png, "sleep_ms": np.array([0], np.int32)})
        # typed outputs carry the batch dimension: one request in, [1, *shape] out
        assert out["width"].tolist() == [[32]] and b"sleep_ms" in out["fields"].reshape(-1).tolist()
        with pytest.raises(ZooTimeoutError):  # the client's own timeout: not retried
            zoo.predict("toy_echo", {**fields, "sleep_ms": "2000"}, timeout_s=0.3)

        before_400 = metric(url, "toy_echo", "predict", 400)
        with pytest.raises(InvalidInputError) as err:
            zoo.predict("toy_echo", {"image": b"garbage"})
        assert err.value.attempts == 1 and metric(url, "toy_echo", "predict", 400) == before_400 + 1

        os.killpg(ts.proc.pid, signal.SIGKILL)  # the backend dies: the gateway answers 503 + Retry-After: 1
        ts.stop()
        started = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            zoo.predict("toy_echo", fields)
        elapsed = time.monotonic() - started
        assert err.value.status == 503 and err.value.attempts == 3 and err.value.retry_after_s == 1
        assert "TorchServe unavailable" in err.value.message
        assert elapsed >= 2.0  # two waits, each at least the server's Retry-After (backoff alone: 0.03 s)
        assert metric(url, "toy_echo", "predict", 503) == 3  # the server saw exactly three attempts

        async def oip_async() -> None:
            async with AsyncZooClient(url, API_KEY, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0)) as a:
                await a.infer("toy_echo", {"image": png})

        with pytest.raises(UnavailableError) as err:
            asyncio.run(oip_async())
        assert err.value.attempts == 2 and metric(url, "toy_echo", "infer", 503) == 2
        assert not zoo.ready()  # readiness is an answer (False), not an error to retry

    # nothing listens any more: connection refused is retryable too, and counted
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="cannot connect") as err:
        ZooClient(url, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.2, jitter=0)).server_metadata()
    assert err.value.attempts == 3 and err.value.status is None
    assert time.monotonic() - started >= 0.2 + 0.4  # exponential: 0.2 s, then 0.4 s


# --- the CLI ----------------------------------------------------------------------------------------------
def test_zoo_models_lists_readiness_versions_and_random_weights(flagship, zoo_cli) -> None:
    run = zoo_cli("models", "--url", flagship.url)
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
    assert set(rows) == {"ckdn_r50", "detr_resnet50", "ftcn_tt"}
    assert rows["ftcn_tt"][1:4] == ["1", "yes", "deepfake-detection"] and "RANDOM" in rows["ftcn_tt"]
    assert "RANDOM weights" in run.stderr
    doc = json.loads(zoo_cli("models", "--json", env={"ZOO_URL": flagship.url}).stdout)
    assert {m["name"]: m["random_weights"] for m in doc} == dict.fromkeys(rows, True)
    down = zoo_cli("models", "--url", "http://127.0.0.1:9", "--retries", "0")
    assert down.returncode == 1 and "cannot connect" in down.stderr


def test_zoo_predict_draws_the_detection_box(flagship, samples, tmp_path, zoo_cli) -> None:
    out = tmp_path / "det.png"
    run = zoo_cli("predict", "detr_resnet50", str(samples["astronaut.jpg"]), "--threshold", "0", "--top-k", "1",
                  "--draw", str(out), "--json", "--url", flagship.url, "--timeout", str(TIMEOUT_S))
    assert run.returncode == 0, run.stderr
    (entry,) = json.loads(run.stdout)
    (det,) = entry["result"]["detections"]
    drawn = Image.open(out)
    drawn.load()
    assert drawn.format == "PNG" and drawn.width == 512 and drawn.height > 512  # caption strip below
    photo = np.asarray(Image.open(samples["astronaut.jpg"]).convert("RGB"))
    pixels = np.asarray(drawn.convert("RGB"))
    x0, y0, x1, y1 = (round(v) for v in det["box"])
    assert x1 - x0 > 10 and y1 - y0 > 10, det  # big enough to see its edges
    color = label_color(det["label_id"])
    inset = line_width(512, 512) // 2
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    for x, y in [(x0 + inset, ym), (min(x1, 511) - inset, ym), (xm, min(y1, 511) - inset)]:  # left, right, bottom
        assert tuple(pixels[y, x]) == color, (x, y)
        assert tuple(photo[y, x]) != color
    assert tuple(pixels[ym, xm]) == tuple(photo[ym, xm])  # inside the box: the photo, untouched
    assert tuple(pixels[-2, 2]) == CAPTION_BG


def test_zoo_predict_tables_errors_and_drawings(flagship, samples, tmp_path, zoo_cli) -> None:
    run = zoo_cli("predict", "ckdn_r50", str(samples["restored.png"]), str(samples["degraded.png"]),
                  str(samples["restored.png"]), str(samples["restored.png"]), "--draw", str(tmp_path / "q.png"),
                  "--timeout", str(TIMEOUT_S), env={"ZOO_URL": flagship.url})
    assert run.returncode == 0, run.stderr
    scores = re.findall(r"quality (\d\.\d{4}) \(higher is better\)", run.stdout)
    assert len(scores) == 2 and "RANDOM" in run.stderr
    for i in (1, 2):
        assert Image.open(tmp_path / f"q_{i}.png").format == "PNG"

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    run = zoo_cli("predict", "detr_resnet50", str(bad), "--url", flagship.url)
    assert run.returncode == 1 and "'image' is not a recognised image" in run.stderr
    assert "(400 INVALID_ARGUMENT)" in run.stderr
    run = zoo_cli("predict", "ckdn_r50", str(samples["restored.png"]), "--url", flagship.url)
    assert run.returncode == 1 and "RESTORED DEGRADED pairs" in run.stderr
    run = zoo_cli("predict", "nope", str(bad), "--url", flagship.url)
    assert run.returncode == 1 and "unknown model 'nope'" in run.stderr

    run = zoo_cli("predict", "ftcn_tt", str(samples["noface.mp4"]), "--draw", str(tmp_path / "df.png"),
                  "--url", flagship.url, "--timeout", str(TIMEOUT_S))
    assert run.returncode == 0, run.stderr
    assert "NO_FACE" in run.stdout
    sheet = Image.open(tmp_path / "df.png")
    assert sheet.width == 4 * 320 + 3 * 6  # 8 evenly spaced frames, 4 per row


def test_drawings_of_quality_and_deepfake_results(samples) -> None:
    """The renderers on answers of the handlers' documented shape (no server needed)."""
    model = {"name": "m", "version": "1", "weights": {"kind": "random-seeded", "seed": 0}}
    quality = QualityResult.from_json({"score": 0.75, "model": model})
    img = draw_quality(samples["restored.png"], samples["degraded.png"], quality, height=200)
    restored = Image.open(samples["restored.png"])
    assert img.width == 2 * round(restored.width * 200 / restored.height) + 8

    box = [100.0, 40.0, 220.0, 200.0]
    verdict = DeepfakeResult.from_json({
        "verdict": "real", "fake_probability": 0.2, "frames_analyzed": 32, "clips_analyzed": 1,
        "video": {"fps": 25.0}, "analysis": {"threshold": 0.5}, "model": model,
        "tracks": [{"track_id": 0, "frames": [0, 31], "time_s": [0, 1.24], "score": 0.2, "clips": 1,
                    "boxes_sample": [{"frame": 0, "box": box}, {"frame": 31, "box": box}],
                    "frame_scores": [0.2] * 32}]})
    sheet = draw_deepfake(samples["face.mp4"], verdict, max_frames=4, columns=4)
    pixels = np.asarray(sheet.convert("RGB"))
    banner = sheet.height - (256 + max(11, 320 // 26) + 10)  # the frames row sits under the banner
    for k in range(4):  # every frame shows the track's box in the "real" colour at its left edge
        assert tuple(pixels[banner + 120, k * (320 + 6) + 101]) == (30, 190, 60)


# --- streams --------------------------------------------------------------------------------------------
def test_stream_answers_every_frame_in_order_sync_and_async(flagship, samples) -> None:
    pytest.importorskip("clients.streams", reason="the served-streams client is not in this checkout")
    import av

    with av.open(str(samples["face.mp4"])) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(5), container.decode(video=0), strict=False)]

    with ZooClient(flagship.url, timeout_s=TIMEOUT_S) as zoo:  # bare images: frame i at i / fps
        results = list(zoo.stream(frames[:3], threshold=0, top_k=2, fps=25))
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.capture_time_s for r in results] == pytest.approx([0, 0.04, 0.08])
    assert all(r.status in ("processed", "dropped") for r in results) and results[0].processed
    for r in results:
        assert len(r.detections) <= 2 and r.computed_from_frame <= r.index
        if r.computed_from_frame >= 0:
            assert r.image_size == (320, 256)

    async def tagged() -> AsyncIterator[tuple[int, float, object]]:
        for k, frame in enumerate(frames[3:]):
            yield 10 + k, k / 25, Image.fromarray(frame)

    async def main() -> list:
        async with AsyncZooClient(flagship.url, timeout_s=TIMEOUT_S) as azoo:
            return [r async for r in azoo.stream(tagged(), top_k=1)]

    assert [r.index for r in asyncio.run(main())] == [10, 11]


# --- client internals without a server --------------------------------------------------------------------
def test_retry_policy_and_retry_after_parsing() -> None:
    from email.utils import formatdate

    from clients.errors import ServerError, error_for_status
    from clients.transport import HttpResponse, error_from_response, parse_retry_after

    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, multiplier=2, max_backoff_s=1.5, jitter=0)
    assert [policy.delay_s(n, None) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]  # doubling, capped
    assert policy.delay_s(1, 3.0) == 3.0  # never shorter than Retry-After
    unavailable, bad = error_for_status(503, "down"), error_for_status(400, "bad")
    assert policy.should_retry(unavailable, 3) and not policy.should_retry(unavailable, 4)
    assert not policy.should_retry(bad, 1) and not policy.should_retry(error_for_status(500, "x"), 1)
    assert not policy.should_retry(error_for_status(503, "x", retry_after_s=600), 1)  # too long to wait
    jittered = RetryPolicy(initial_backoff_s=1.0, jitter=0.2)
    assert all(1.0 <= jittered.delay_s(1, None) <= 1.2 for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)

    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 25 <= parse_retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30
    err = error_from_response(HttpResponse(502, {"retry-after": "1"}, b"<html>bad gateway</html>"), "http://x/")
    assert isinstance(err, ServerError) and err.status == 502 and err.message == "<html>bad gateway</html>"
    assert str(err) == "<html>bad gateway</html> (502 INTERNAL)"
