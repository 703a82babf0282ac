"""FTCN served by a real TorchServe: a video in, JSON out; bad videos get 4xx and the worker survives.

Random weights: only the contract is checked (shape of the answer, determinism, errors), never whether a
video is called fake. The MTCNN weights travel inside the archive (``ModelEntry.assets``).
"""

from __future__ import annotations

import base64
import json
import zipfile

import pytest
import torch

from handlers.codec import RequestError
from handlers.ftcn_handler import FtcnHandler
from tests.face_videos import astronaut_video, long_tiny_video, noise_video
from tests.handlers.handler_context import HandlerContext
from tests.support import http_request, json_body, multipart, running_torchserve
from zoo._registry import get_entry
from zoo.faces.pipeline import FacePipeline
from zoo.faces.weights import ensure_mtcnn_weights
from zoo.video import VideoLimits

MODEL = "ftcn_tt"
MTCNN_ASSETS = "zoo.faces.weights:mar_assets"


# --- in-process request parsing (no server) ---------------------------------------------------------
@pytest.fixture(scope="module")
def handler() -> FtcnHandler:
    h = FtcnHandler()
    h.pipeline = FacePipeline.from_dir(ensure_mtcnn_weights())
    h.limits = VideoLimits()
    return h


def test_video_arrives_in_every_supported_shape(handler) -> None:
    video = b"\x00\x00\x00\x18ftypmp42 not really a video"
    b64 = base64.b64encode(video).decode()
    shapes = [
        {"body": bytearray(video)},  # raw body
        {"video": bytearray(video), "stride": b"8"},  # multipart part / OIP BYTES input named "video"
        {"video": b64},  # named input as base64 text
        {"body": {"video": b64, "stride": 8}},  # JSON parsed by TorchServe
        {"body": json.dumps({"video": b64, "threshold": 0.3}).encode()},  # JSON sent without a JSON type
        {"clip.mp4": video},  # the only binary field, whatever its name
    ]
    for request in shapes:
        data, params = handler.video_and_params(request)
        assert data == video, request.keys()
    assert handler.video_and_params(shapes[1])[1] == {"stride": "8"}
    assert handler.video_and_params(shapes[4])[1] == {"threshold": 0.3}


@pytest.mark.parametrize(
    "request_,status,needle",
    [
        ({}, 400, "no video"),
        ({"body": json.dumps({"image": "AAAA"}).encode()}, 400, "no video"),
        ({"body": {"video": "AAAA", "colour": 1}}, 400, "unknown fields"),
        ({"video": "not base64!!"}, 400, "not valid base64"),
        ({"video": b"garbage" * 50}, 400, "not a recognised video"),
        ({"video": long_tiny_video(61)}, 413, "above the limit of 60 s"),
        ({"video": long_tiny_video(61), "max_duration_s": b"90"}, 400, "max_duration_s"),
        ({"video": b"x", "aggregate": b"median"}, 400, "aggregate"),
        ({"video": b"x", "stride": b"0"}, 400, "stride"),
    ],
)
def test_bad_requests_name_the_problem(handler, request_, status, needle) -> None:
    with pytest.raises(RequestError, match=needle) as info:
        handler.decode(request_, 0)
    assert info.value.status == status


class _MeanLogit(torch.nn.Module):
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(1, 2, 3, 4))


def test_one_batch_mixes_clips_of_all_requests_and_isolates_bad_ones(handler) -> None:
    handler.entry = get_entry(MODEL)
    handler.meta = {"weights": {"kind": "stub"}}
    handler.model = _MeanLogit()
    handler.max_clip_batch = 2
    seen: list[list[tuple[int, int]]] = []
    original = handler.pipeline.iter_batches

    def spy(videos, max_batch):
        for refs, clips in original(videos, max_batch):
            seen.append(refs)
            yield refs, clips

    handler.pipeline.iter_batches = spy
    try:
        ctx = HandlerContext()
        answers = handler.handle([{"body": astronaut_video(32)}, {"body": b"junk" * 64},
                                  {"video": astronaut_video(44), "stride": b"16"}], ctx)
    finally:
        del handler.pipeline.iter_batches
    assert ctx.status == {1: 400} and answers[1]["status"] == 400
    assert [answers[0]["clips_analyzed"], answers[2]["clips_analyzed"]] == [1, 2]
    assert answers[0]["batch_size"] == 2 and ctx.headers[2]["X-Zoo-Batch-Size"] == "2"
    assert seen == [[(0, 0), (1, 0)], [(1, 1)]]  # one chunk holds clips of both good requests
    for i in (0, 2):
        assert answers[i]["verdict"] in ("fake", "real") and answers[i]["model"]["weights"] == {"kind": "stub"}


class _ShapeRecorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(clips.shape))
        return clips.mean(dim=(1, 2, 3, 4))


def test_an_archive_with_smaller_clips_gets_a_pipeline_cutting_them_and_warms_both_networks(tmp_path) -> None:
    """config_overrides (e.g. the GPU suite's tiny smoke archive) shrink the clips the pipeline renders, and the
    warm-up runs a full clip batch of that shape through the model and blank frames through MTCNN."""
    (tmp_path / "mtcnn").symlink_to(ensure_mtcnn_weights(), target_is_directory=True)
    h = FtcnHandler()
    h.entry = get_entry(MODEL)
    h.meta = {"config_overrides": {"clip_len": 8, "image_size": 64}}
    h.device = torch.device("cpu")
    h.setup(tmp_path)
    assert (h.pipeline.config.clip_len, h.pipeline.config.crop_size) == (8, 64)
    h.model = _ShapeRecorder()
    detected: list[tuple[int, ...]] = []
    original = h.pipeline.detect
    h.pipeline.detect = lambda frames, config=None: detected.append(frames.shape) or original(frames, config)
    with torch.inference_mode():
        h.warmup()
    assert h.model.shapes == [(h.max_clip_batch, 3, 8, 64, 64)] and len(detected) == 1
    prepared = h.pipeline.prepare(astronaut_video(16))
    assert prepared.clips and all(len(c.positions) == 8 for c in prepared.clips)
    assert tuple(h.pipeline.render(prepared, prepared.clips[0]).shape) == (8, 64, 64, 3)


# --- served end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    work = tmp_path_factory.mktemp("ftcn_ts")
    assert MTCNN_ASSETS in get_entry(MODEL).assets  # the registry entry ships the face detector
    with running_torchserve(work, [MODEL]) as ts:
        yield ts


def predict(ts, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    status, resp_headers, raw = http_request(f"{ts.inference_url}/predictions/{MODEL}", body, headers or {},
                                             timeout=300)
    return status, {k.lower(): v for k, v in resp_headers.items()}, json_body(raw)


def test_archive_carries_the_mtcnn_weights(torchserve) -> None:
    with zipfile.ZipFile(torchserve.model_store / f"{MODEL}.mar") as zf:
        names = set(zf.namelist())
    assert {"mtcnn/pnet.pt", "mtcnn/rnet.pt", "mtcnn/onet.pt", "mtcnn/LICENSE.facenet-pytorch.md"} <= names


def test_video_in_json_out_bad_videos_4xx_worker_survives(torchserve) -> None:
    face = astronaut_video(32)  # exactly one 32-frame clip: one FTCN forward per face request on CPU

    payload = json.dumps({"video": base64.b64encode(face).decode()}).encode()
    status, headers, first = predict(torchserve, payload, {"Content-Type": "application/json"})
    assert status == 200, first
    assert first["verdict"] in ("fake", "real") and 0.0 <= first["fake_probability"] <= 1.0
    (track,) = first["tracks"]
    assert track["track_id"] == 0 and track["frames"] == [0, 31] and track["clips"] == 1
    assert track["score"] == pytest.approx(first["fake_probability"])
    assert len(track["boxes_sample"]) == 5 and len(track["frame_scores"]) == 32
    assert first["frames_analyzed"] == 32
    assert first["model"]["name"] == MODEL and first["model"]["weights"]["kind"] == "random-seeded"
    assert headers["x-zoo-batch-size"] == "1"

    raw = {"Content-Type": "application/octet-stream"}
    status, _, answer = predict(torchserve, b"this is not a video" * 100, raw)
    assert status == 400 and "not a recognised video" in answer["error"]

    status, _, answer = predict(torchserve, long_tiny_video(61), raw)
    assert status == 413 and "61" in answer["error"]

    body, ctype = multipart({"video": ("noise.mp4", noise_video(), "video/mp4")})
    status, _, answer = predict(torchserve, body, {"Content-Type": ctype})
    assert status == 200, answer
    assert answer["verdict"] == "no_face" and answer["fake_probability"] is None and answer["tracks"] == []

    # the worker is still alive and deterministic: the same face, now as a raw body
    status, _, again = predict(torchserve, face, {"Content-Type": "video/mp4"})
    assert status == 200, again
    assert again["fake_probability"] == pytest.approx(first["fake_probability"], abs=1e-5)
    assert again["tracks"][0]["boxes_sample"] == track["boxes_sample"]
