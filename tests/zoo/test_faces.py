"""The video + face pipeline behind FTCN: decoding, MTCNN, NMS, tracking, alignment, clip planning, scoring.

The face tests use a real face (scikit-image's astronaut photo) moved by a known pan/zoom, so detections,
landmarks and aligned crops can be checked against geometry rather than eyeballed.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tests.face_videos import (
    HEIGHT,
    WIDTH,
    astronaut_frames,
    astronaut_video,
    long_tiny_video,
    noise_video,
    to_frame,
    to_photo,
)
from zoo.faces.align import (
    apply_affine,
    clip_transform,
    crop_box,
    invert_affine,
    template,
    umeyama,
    warp_clip,
)
from zoo.faces.boxes import batched_nms, box_overlap, nms
from zoo.faces.mtcnn import MTCNN, crop_resize_area, integral_images
from zoo.faces.pipeline import FacePipeline, analyze_video
from zoo.faces.tracking import link_tracks, mirror_pad, plan_windows
from zoo.faces.weights import AssetError, check_dir, ensure_mtcnn_weights, find_mtcnn_weights
from zoo.video import VideoError, VideoLimits, decode_video
from zoo.weights import WeightsError

N_FRAMES = 44


@pytest.fixture(scope="module")
def mtcnn_dir():
    return ensure_mtcnn_weights()


@pytest.fixture(scope="module")
def pipeline(mtcnn_dir) -> FacePipeline:
    return FacePipeline.from_dir(mtcnn_dir, "cpu")


@pytest.fixture(scope="module")
def prepared(pipeline):
    return pipeline.prepare(astronaut_video(N_FRAMES))


# --- NMS ----------------------------------------------------------------------------------------------
def _overlap(a, b, mode):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (min(area_a, area_b) if mode == "min" else area_a + area_b - inter)


def _brute_nms(boxes, scores, threshold, mode):
    keep = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(_overlap(boxes[i], boxes[k], mode) <= threshold for k in keep):
            keep.append(i)
    return keep


def _random_boxes(rng, n):
    centres = rng.uniform(0, 200, (8, 2))[rng.integers(0, 8, n)] + rng.normal(0, 6, (n, 2))
    sizes = rng.uniform(10, 60, (n, 1)) * np.array([[1.0, 1.2]])
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(mode, threshold):
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 400)
    scores = rng.uniform(0, 1, len(boxes))
    kept = nms(torch.tensor(boxes), torch.tensor(scores), threshold, mode).tolist()
    assert kept == _brute_nms(boxes.tolist(), scores.tolist(), threshold, mode)
    assert 8 <= len(kept) < len(boxes)


def test_batched_nms_never_suppresses_across_groups():
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 200)
    scores = rng.uniform(0, 1, len(boxes))
    groups = rng.integers(0, 3, len(boxes))
    kept = set(batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups), 0.5).tolist())
    expected = set()
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        expected |= {int(idx[k]) for k in _brute_nms(boxes[idx].tolist(), scores[idx].tolist(), 0.5, "union")}
    assert kept == expected
    identical = torch.tensor([[0.0, 0, 10, 10]] * 2)
    assert box_overlap(identical, identical).allclose(torch.ones(2, 2))


# --- MTCNN building blocks ------------------------------------------------------------------------------
def test_crop_resize_area_equals_area_interpolation_of_zero_padded_crop():
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 50, 60), generator=rng).float()
    boxes = torch.tensor([[5, 7, 40, 45], [-10, -5, 30, 20], [0, 0, 60, 50], [55, 40, 70, 62],
                          [3, 4, 13, 14]])
    ids = torch.tensor([0, 1, 1, 0, 1])
    out = crop_resize_area(integral_images(images), ids, boxes, 24)
    pad = 20
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        padded = torch.nn.functional.pad(images[ids[k]], (pad, pad, pad, pad))
        crop = padded[:, y0 + pad:y1 + pad, x0 + pad:x1 + pad]
        ref = torch.nn.functional.interpolate(crop[None], size=(24, 24), mode="area")[0]
        assert torch.allclose(out[k], ref, atol=1e-3), k


# facenet-pytorch 2.6.0 ``detect_face`` (min face 20, thresholds 0.6/0.7/0.7, factor 0.709) on these images,
# computed offline with the reference code and these weights; boxes shifted to 0-based like ours.
REFERENCE_DETECTIONS = {
    "photo": ((slice(None), slice(None)), [180.0514, 61.1561, 266.7473, 171.0502],
              [[205.0109, 101.7275], [246.7626, 103.7141], [224.6714, 128.965], [201.7161, 139.2462],
               [245.2655, 141.857]]),
    "crop": ((slice(50, 450), slice(20, 500)), [158.5495, 9.0069, 247.1135, 124.8044],
             [[184.8656, 50.6893], [227.7228, 54.203], [205.5564, 78.3024], [182.0556, 89.7792],
              [225.3409, 92.4196]]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_DETECTIONS))
def test_mtcnn_reproduces_the_reference_implementation(mtcnn_dir, name):
    from skimage import data

    window, box, marks = REFERENCE_DETECTIONS[name]
    found = MTCNN.from_dir(mtcnn_dir, min_face_size=20).detect(data.astronaut()[window][None])[0]
    assert len(found) == 1 and found.scores[0] > 0.9999
    np.testing.assert_allclose(found.boxes[0], box, atol=0.05)
    np.testing.assert_allclose(found.landmarks[0], marks, atol=0.05)


def test_mtcnn_zero_pads_faces_cut_by_the_border(mtcnn_dir):
    """Where the reference clamps and stretches a border crop (eyes 13 px too high here), ours stays put."""
    from skimage import data

    photo_marks = np.array(REFERENCE_DETECTIONS["photo"][2])
    found = MTCNN.from_dir(mtcnn_dir, min_face_size=20).detect(data.astronaut()[80:400, 120:450][None])[0]
    assert len(found) == 1
    assert np.abs(found.landmarks[0] - (photo_marks - [120, 80])).max() < 3.0


def test_mtcnn_loads_its_weights_strictly_and_fails_loudly(mtcnn_dir, tmp_path):
    detector = MTCNN.from_dir(mtcnn_dir)
    assert sum(p.numel() for p in detector.parameters()) > 400_000
    for name in MTCNN.WEIGHT_FILES:
        shutil.copy(mtcnn_dir / name, tmp_path / name)
    state = torch.load(tmp_path / "rnet.pt", weights_only=True)
    state.pop("dense5_2.bias")
    torch.save(state, tmp_path / "rnet.pt")
    with pytest.raises(WeightsError, match=r"dense5_2\.bias"):
        MTCNN.from_dir(tmp_path)
    shutil.copy(mtcnn_dir / "rnet.pt", tmp_path / "rnet.pt")
    (tmp_path / "onet.pt").unlink()
    with pytest.raises(WeightsError, match="not found"):
        MTCNN.from_dir(tmp_path)


def test_weights_lookup_prefers_env_dir_and_refuses_corrupt_files(mtcnn_dir, tmp_path, monkeypatch):
    good = tmp_path / "good"
    assert ensure_mtcnn_weights(good) == good and not check_dir(good)
    monkeypatch.setenv("ZOO_MTCNN_DIR", str(good))
    assert find_mtcnn_weights() == good
    data = bytearray((good / "pnet.pt").read_bytes())
    data[-20] ^= 0xFF
    (good / "pnet.pt").write_bytes(bytes(data))
    assert any("pnet.pt has sha256" in p for p in check_dir(good))
    with pytest.raises(AssetError, match="corrupt"):
        find_mtcnn_weights()


# --- alignment ---------------------------------------------------------------------------------------
def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def test_umeyama_recovers_a_known_similarity_exactly():
    rng = np.random.default_rng(1)
    src = rng.normal(0, 50, (12, 2))
    known = _similarity(1.7, 0.4, 12.0, -5.0)
    np.testing.assert_allclose(umeyama(src, apply_affine(known, src)), known, atol=1e-9)
    mirrored = apply_affine(known, src) * np.array([-1.0, 1.0])
    reflect = umeyama(src, mirrored, allow_reflection=True)
    np.testing.assert_allclose(apply_affine(reflect, src), mirrored, atol=1e-9)
    proper = umeyama(src, mirrored)
    assert np.linalg.det(proper[:, :2]) > 0
    assert np.abs(apply_affine(proper, src) - mirrored).max() > 1.0


def _linear_lstsq_similarity(src, dst):
    """cp2tform's formulation: solve [x y 1 0; y -x 0 1] r = [u; v] for r = (a, b, tx, ty)."""
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.vstack([np.stack([x, y, ones, zeros], 1), np.stack([y, -x, zeros, ones], 1)])
    a, b, tx, ty = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, b, tx], [-b, a, ty]])


def test_noisy_umeyama_is_the_least_squares_similarity():
    rng = np.random.default_rng(2)
    src = rng.normal(0, 40, (30, 2))
    dst = apply_affine(_similarity(0.8, -0.3, 5.0, 9.0), src) + rng.normal(0, 3, (30, 2))
    np.testing.assert_allclose(umeyama(src, dst), _linear_lstsq_similarity(src, dst), atol=1e-8)


def test_clip_transform_equals_the_official_stacked_fit():
    """Official: fit template -> image on all 32x5 stacked points, then invert. Same as the mean fit."""
    rng = np.random.default_rng(4)
    base = apply_affine(_similarity(1.9, 0.1, 40.0, 30.0), template(224))
    marks = base[None] + rng.normal(0, 4, (32, 5, 2)) + rng.normal(0, 6, (32, 1, 2))
    stacked = _linear_lstsq_similarity(np.tile(template(224), (32, 1)), marks.reshape(-1, 2))
    np.testing.assert_allclose(clip_transform(marks, 224), invert_affine(stacked), atol=1e-8)


def test_crop_box_is_the_official_get_crop_box():
    assert crop_box([100.4, 50.6, 140.2, 101.0], (480, 640)).tolist() == [80, 26, 160, 126]
    assert crop_box([5, 5, 45, 45], (60, 50)).tolist() == [0, 0, 49, 59]


def test_warp_clip_is_bilinear_with_black_outside_each_crop_box():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    boxes = np.array([[10, 12, 150, 110], [30, 20, 100, 90]])
    matrix = _similarity(1.3, 0.2, -5.0, -10.0)
    out = warp_clip(frames, boxes, matrix, size=64).numpy()
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    inverse = invert_affine(matrix)
    checked = 0
    for i, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, boxes, strict=True)):
        masked = np.zeros((120, 160, 3))
        masked[y1:y2, x1:x2] = frame[y1:y2, x1:x2]
        for v, u in [(0, 0), (10, 50), (31, 31), (63, 5), (40, 60), (20, 20)]:
            sx, sy = apply_affine(inverse, np.array([[u, v]], dtype=np.float64))[0]
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0

            def px(yy, xx):
                inside = 0 <= yy < 120 and 0 <= xx < 160
                return masked[yy, xx] if inside else np.zeros(3)  # noqa: B023 - evaluated immediately

            ref = ((1 - fx) * (1 - fy) * px(y0, x0) + fx * (1 - fy) * px(y0, x0 + 1)
                   + (1 - fx) * fy * px(y0 + 1, x0) + fx * fy * px(y0 + 1, x0 + 1))
            assert np.abs(out[i, v, u].astype(float) - ref).max() <= 1.0, (i, u, v)
            checked += 1
    assert checked == 12


# --- tracks and windows ------------------------------------------------------------------------------
def test_mirror_padding_and_windows_follow_the_official_scheme():
    assert plan_windows(40, 32, 1) == [list(range(s, s + 32)) for s in range(9)]
    assert plan_windows(40, 32, 16) == [list(range(0, 32)), list(range(8, 40))]
    assert plan_windows(32, 32, 16) == [list(range(32))]
    order = mirror_pad(5, 32)
    assert len(order) == 5 + 2 * 31
    assert order[31:36] == [0, 1, 2, 3, 4]
    assert order[36:44] == [3, 2, 1, 0, 1, 2, 3, 4]  # after the last frame: ping-pong without repeats
    assert order[27:31] == [4, 3, 2, 1]
    assert len(plan_windows(5, 32, 1)) == 5 + 31
    windows = plan_windows(5, 32, 16)
    assert [len(w) for w in windows] == [32] * len(windows) and windows[-1][-1] == order[-1]
    assert mirror_pad(1, 32) == [0] * 63
    assert mirror_pad(2, 32)[29:35] == [0, 1, 0, 1, 0, 1]


def test_link_tracks_bridges_short_gaps_and_separates_faces():
    def face(x, y, s=40.0):
        return np.array([x, y, x + s, y + s]), np.tile([[x + s / 2, y + s / 2]], (5, 1))

    detections = []
    for t in range(30):
        items = [face(10 + t, 20)]  # face A, moving right
        if not 12 <= t <= 13:  # face B missed in two frames
            items.append(face(200, 100 - t))
        if t == 5:
            items.append(face(400, 300))  # a one-frame false positive
        if t >= 20:
            items.append(face(500, 50))  # face C appears late
        boxes = np.stack([b for b, _ in items])
        marks = np.stack([m for _, m in items])
        detections.append((t, boxes, marks, np.full(len(items), 0.99)))
    tracks = link_tracks(detections, max_gap=2, min_length=8)
    assert [(t.start, len(t)) for t in tracks] == [(0, 30), (0, 30), (20, 10)]
    b_track = tracks[1] if tracks[1].boxes[0][0] == 200 else tracks[0]
    assert not b_track.observed[12] and np.isnan(b_track.scores[12])
    np.testing.assert_allclose(b_track.boxes[12], [200, 88, 240, 128])  # interpolated
    assert len(link_tracks(detections, max_gap=0, min_length=8)) == 4  # official rule: a miss ends a track


# --- decoding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec,container", [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("mjpeg", "avi")])
def test_decode_common_formats(codec, container):
    frames = astronaut_frames(12)
    video = decode_video(astronaut_video(12, codec, container))
    assert video.frames.shape == (12, HEIGHT, WIDTH, 3) and video.frames.dtype == np.uint8
    assert abs(video.fps - 25.0) < 0.01 and video.scale == 1.0
    np.testing.assert_allclose(video.timestamps, np.arange(12) / 25.0, atol=1e-3)
    assert np.abs(video.frames.astype(float) - frames).mean() < 8.0


def test_decode_rejects_what_is_not_a_usable_video():
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(astronaut_frames(1)[0]).save(png, "PNG")
    cases = [(b"", 400, "empty"), (b"definitely not a video" * 40, 400, "not a recognised"),
             (png.getvalue(), 400, "still image"), (long_tiny_video(61), 413, "61.0 s")]
    for data, status, text in cases:
        with pytest.raises(VideoError, match=text) as info:
            decode_video(data)
        assert info.value.status == status
    with pytest.raises(VideoError, match="more than 10 frames|above the limit of 10") as info:
        decode_video(astronaut_video(12), limits=VideoLimits(max_frames=10))
    assert info.value.status == 413


def test_decode_downscales_to_the_memory_budget_and_subsamples():
    data = astronaut_video(12)
    per_frame = HEIGHT * WIDTH * 3
    small = decode_video(data, limits=VideoLimits(max_frame_bytes=per_frame * 3))
    assert small.frames.shape == (12, HEIGHT // 2, WIDTH // 2, 3) and small.scale == 0.5
    stepped = decode_video(data, frame_step=3)
    assert stepped.frame_numbers.tolist() == [0, 3, 6, 9] and abs(stepped.fps - 25 / 3) < 0.01


# --- the face pipeline on a real face ----------------------------------------------------------------
def test_detector_finds_the_face_and_landmarks_follow_the_known_motion(prepared):
    assert len(prepared.video) == N_FRAMES
    assert len(prepared.tracks) == 1
    track = prepared.tracks[0]
    assert (track.start, len(track)) == (0, N_FRAMES) and track.observed.all()  # detected in every frame
    assert track.scores.min() > 0.95
    marks = track.landmarks
    eyes_y, mouth_y = marks[:, :2, 1].mean(1), marks[:, 3:, 1].mean(1)
    assert (marks[:, 0, 0] < marks[:, 2, 0]).all() and (marks[:, 2, 0] < marks[:, 1, 0]).all()
    assert (eyes_y < marks[:, 2, 1]).all() and (marks[:, 2, 1] < mouth_y).all()
    box = track.boxes
    assert ((box[:, None, 0] < marks[..., 0]) & (marks[..., 0] < box[:, None, 2])).all()
    # the photo's landmarks seen in frame 0, carried through the known pan/zoom, land where MTCNN finds them
    photo_marks = to_photo(0, marks[0])
    errors = [np.abs(to_frame(t, photo_marks) - marks[t]).max() for t in range(N_FRAMES)]
    assert max(errors) < 4.0, errors


def test_aligned_clips_put_the_face_on_the_template(prepared, pipeline):
    track = prepared.tracks[0]
    assert [c.positions[0] for c in prepared.clips] == [0, N_FRAMES - 32]
    tpl = template(224)
    for clip in prepared.clips:
        crops = pipeline.render(prepared, clip).numpy()
        assert crops.shape == (32, 224, 224, 3) and crops.dtype == np.uint8
        mapped = apply_affine(clip.matrix, track.landmarks[clip.positions].reshape(-1, 2)).reshape(32, 5, 2)
        # The clip's eyes land on the template's eyes within a few px: the fit balances all 5 points, so
        # what is left is this face's own shape against the generic template (her broad smile), which no
        # single similarity removes. `best` is that floor, from the photo's landmarks aligned on their own;
        # the pipeline (detection, tracking, the per-clip fit) adds under 1 px to it.
        photo = np.array([to_photo(t, track.landmarks[t]) for t in clip.positions]).mean(0)
        best = apply_affine(umeyama(photo, tpl), photo)
        eyes = mapped.mean(0)[:2]
        assert np.abs(eyes - tpl[:2]).max() < 4.0, eyes - tpl[:2]
        assert np.abs(eyes - tpl[:2]).max() < np.abs(best[:2] - tpl[:2]).max() + 1.0
        assert np.linalg.norm(mapped.mean(0) - tpl, axis=1).mean() < 7.0
        # Frame by frame they move with the camera (one transform per clip, as the official code does): the
        # known pan/zoom predicts where, to within the landmark noise.
        expected = apply_affine(clip.matrix, np.array([to_frame(t, photo) for t in clip.positions])
                                .reshape(-1, 2)).reshape(32, 5, 2)
        assert np.abs(mapped[:, :2] - expected[:, :2]).max() < 5.0
        assert np.abs(mapped[:, :2] - tpl[:2]).max() < 13.0  # the pan/zoom moves them <= ~10 px per clip
        # and the pixels really are there: the detector, run on the aligned crops, finds the same points
        found = pipeline.detector.detect(crops[[0, 16, 31]])
        for k, frame in enumerate([0, 16, 31]):
            assert len(found[k]) >= 1
            assert np.abs(found[k].landmarks[0] - mapped[frame]).max() < 5.0


class _MeanLogit(nn.Module):
    """A stand-in for FTCN: the logit is a fixed function of the clip's mean normalised intensity."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        assert clips.shape[1:] == (3, 32, 224, 224)
        return clips.mean(dim=(1, 2, 3, 4)) * 4.0


class _BatchRecorder(_MeanLogit):
    """_MeanLogit that records the batch sizes it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        self.batches.append(clips.shape[0])
        return super().forward(clips)


def test_padded_clip_batches_keep_one_shape_and_the_same_scores(prepared, pipeline):
    """4 clips in chunks of 3: eager runs 3 + 1; padded (a compiled model) runs 3 + 3 and drops the blanks."""
    eager, padded = _BatchRecorder(), _BatchRecorder()
    plain = pipeline.score(eager, [prepared, prepared], max_batch=3)
    same_shape = pipeline.score(padded, [prepared, prepared], max_batch=3, pad_batches=True)
    assert eager.batches == [3, 1] and padded.batches == [3, 3]
    for a, b in zip(plain, same_shape, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_scores_aggregate_per_clip_track_frame_and_video(prepared, pipeline):
    probs = pipeline.score(_MeanLogit(), [prepared, prepared], max_batch=3)
    assert len(probs) == 2 and np.allclose(probs[0], probs[1]) and len(probs[0]) == 2
    summary = pipeline.summarize(prepared, probs[0])
    (track,) = summary["tracks"]
    assert track["frames"] == [0, N_FRAMES - 1] and track["clips"] == 2
    assert track["score"] == pytest.approx(probs[0].mean())
    assert summary["fake_probability"] == pytest.approx(track["score"])
    assert summary["verdict"] == ("fake" if track["score"] >= 0.5 else "real")
    frame_scores = track["frame_scores"]
    assert frame_scores[0] == pytest.approx(probs[0][0], abs=1e-5)  # only in the first window
    assert frame_scores[-1] == pytest.approx(probs[0][1], abs=1e-5)
    assert frame_scores[20] == pytest.approx(probs[0].mean(), abs=1e-5)  # in both
    assert len(track["boxes_sample"]) == 5 and summary["frames_analyzed"] == N_FRAMES


def test_analyze_video_reports_no_face_without_a_guess(pipeline):
    result = analyze_video(noise_video(), _MeanLogit(), pipeline=pipeline)
    assert result["verdict"] == "no_face" and result["fake_probability"] is None
    assert result["tracks"] == [] and result["frames_analyzed"] == 24 and result["clips_analyzed"] == 0


def test_short_face_video_is_mirror_padded(pipeline):
    result = analyze_video(astronaut_video(12), _MeanLogit(), pipeline=pipeline, stride=64)
    (track,) = result["tracks"]
    assert track["frames"] == [0, 11] and track["clips"] == 2  # first and last padded window
    assert result["verdict"] in ("fake", "real")
