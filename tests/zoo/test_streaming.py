"""Streaming perception: parity with the official sAP toolkit (golden files), forecasting and scheduling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as zoo_main
from zoo.streaming import (
    KalmanForecaster,
    ShrinkingTailScheduler,
    StreamingOutputs,
    StreamOutput,
    extrap_clean_up,
    shrinking_tail_wait,
    simulate_stream,
    simulate_streams,
    streaming_eval,
)
from zoo.streaming.evaluate import pair_frames
from zoo.streaming.synthetic import NoisyDetector, moving_boxes_gt


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict:
    return {
        "gt": golden_dir / "sap_gt.json",
        "stream": golden_dir / "sap_det_stream.json",
        "eval": _load(golden_dir / "sap_streaming_eval_expected.json"),
        "kf": _load(golden_dir / "sap_kf_forecast_expected.json"),
    }


def _assert_stats(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9, rel=0), name


def _assert_headline(res, exp: dict) -> None:
    got = (res.sAP, res.sAP50, res.sAP75)
    assert got == pytest.approx((exp["sAP"], exp["sAP50"], exp["sAP75"]), abs=1e-9, rel=0)


def _assert_same_dets(got: list[dict], expected: list[dict], atol: float) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.get("image_id") == b.get("image_id")
        assert a["category_id"] == b["category_id"]
        assert a["score"] == b["score"]
        np.testing.assert_allclose(a["bbox_ltwh"], b["bbox_ltwh"], rtol=0, atol=atol)


# ---------------------------------------------------------------- parity with the official toolkit


def test_streaming_eval_matches_official(golden: dict) -> None:
    exp = golden["eval"]
    res = streaming_eval(golden["gt"], golden["stream"])
    _assert_stats(res.stats, exp["stats"])
    _assert_headline(res, exp)
    assert (res.miss, res.in_time, res.mismatch) == (exp["miss"], exp["in_time"], exp["mismatch"])
    assert (res.miss, res.mismatch) == (6, 581)
    assert res.pairing == exp["pairing"]
    assert res.paired_input_fidx == exp["paired_input_fidx"]
    # the exact list the official code handed to loadRes, in order (float32 ltrb->ltwh: exact equality)
    _assert_same_dets(res.to_json()["results_ccf"], exp["results_ccf"], atol=0)
    assert res.mean_lag == pytest.approx(581 / 114)


def test_pairing_uses_less_or_equal(golden: dict) -> None:
    # seq_a output #3 has timestamp == 9/30 exactly: frame 9 must pair with it
    stream = _load(golden["stream"])
    seq_a = stream["sequences"]["seq_a"]
    assert seq_a[3]["timestamp"] == 9 / 30
    pair = pair_frames([o["timestamp"] for o in seq_a], 60, 30.0, 0.0)
    assert pair[9] == 3 and pair[8] == 2
    # seq_b: the first output arrives after frame 3 was shown
    seq_b = stream["sequences"]["seq_b"]
    assert pair_frames([o["timestamp"] for o in seq_b], 60, 30.0, 0.0)[:5].tolist() == [-1, -1, -1, -1, 0]


def test_kf_forecast_matches_official(golden: dict) -> None:
    exp = golden["kf"]
    res = streaming_eval(golden["gt"], golden["stream"], forecast=True)
    _assert_stats(res.stats, exp["stats"])
    _assert_headline(res, exp)
    per_frame = res.per_frame()
    # 114 frames; the 6 missed ones are absent
    assert sorted(per_frame) == sorted(int(k) for k in exp["per_frame"])
    for image_id, dets in exp["per_frame"].items():
        # same boxes kept (count, class, score, order) and the forecast boxes to 1e-3 px
        _assert_same_dets(per_frame[int(image_id)], dets, atol=1e-3)
    _assert_same_dets(res.to_json()["results_ccf"], exp["results_ccf"], atol=1e-3)
    assert len(res.results_ccf) == 566


def test_kf_forecast_float64_is_close(golden: dict) -> None:
    # README 7: the official script in float64 moves boxes by < 4.5e-4 px and leaves every stat unchanged
    exp = golden["kf"]
    res = streaming_eval(golden["gt"], golden["stream"], forecast=lambda: KalmanForecaster(dtype=np.float64))
    _assert_stats(res.stats, exp["stats"])
    _assert_same_dets(res.to_json()["results_ccf"], exp["results_ccf"], atol=1e-3)


def test_outputs_round_trip_and_validation(golden: dict, tmp_path: Path) -> None:
    outs = StreamingOutputs.load(golden["stream"])
    assert outs.fps == 30 and outs.eta == 0 and sorted(outs.sequences) == ["seq_a", "seq_b"]
    assert outs.sequences["seq_a"][8].bboxes_ltrb.shape == (0, 4)  # an output with no detections
    assert outs.sequences["seq_a"][0].bboxes_ltrb.dtype == np.float32
    path = tmp_path / "outs.json"
    outs.dump(path)
    again = streaming_eval(golden["gt"], path)
    assert again.sAP == pytest.approx(golden["eval"]["sAP"], abs=1e-12)
    with pytest.raises(ValueError, match="non-decreasing"):
        StreamingOutputs(sequences={"s": [StreamOutput(0.2, 0, [], [], []),
                                          StreamOutput(0.1, 1, [], [], [])]})
    with pytest.raises(ValueError, match="boxes"):
        StreamOutput(0.1, 0, [[0, 0, 1, 1]], [], [])
    with pytest.raises(ValueError, match="not in the ground truth"):
        streaming_eval(golden["gt"], {"fps": 30, "sequences": {"nope": []}})


def test_sequence_without_outputs_is_all_missed(golden: dict) -> None:
    stream = _load(golden["stream"])
    del stream["sequences"]["seq_b"]
    res = streaming_eval(golden["gt"], stream)
    assert res.miss == 2 + 60
    assert all(k == -1 for k in res.pairing["seq_b"])
    empty = streaming_eval(golden["gt"], {"fps": 30, "eta": 0, "sequences": {}})
    assert empty.miss == 120 and empty.sAP == 0.0 and math.isnan(empty.mean_lag)


# ---------------------------------------------------------------- forecasting


def test_forecasting_raises_sap_under_three_frame_latency() -> None:
    # 100x100 px boxes moving horizontally at 6 px/frame, detector noise sigma 2 px, latency exactly 3 frames.
    fps, n = 30.0, 60
    gt = moving_boxes_gt(n_seqs=3, n_frames=n, objects_per_seq=4, speed_px=(6, 6), size_px=(100, 100),
                         horizontal=True, seed=1)
    det = NoisyDetector(gt, sigma_px=2.0, seed=2)
    offline = streaming_eval(gt, det.offline(gt)).sAP
    outs = simulate_streams({s: n for s in gt["sequences"]}, det, 3 / fps, fps=fps)
    plain = streaming_eval(gt, outs)
    fc = streaming_eval(gt, outs, forecast=True)
    assert plain.mean_lag >= 3 and plain.miss == fc.miss
    # Why the margins. An output is at least 3 frames old when first shown, so without forecasting each box
    # is >= 3 * 6 = 18 px behind its object: IoU <= (100 - 18) / (100 + 18) = 0.695, so at most 4 of the 10
    # COCO IoU thresholds (.50-.65) can ever match -> sAP < 0.4; at the typical 4-5 frame lag (24-30 px,
    # IoU 0.54-0.61) only .50-.60 can, and only partly (measured 0.10). Constant-velocity forecasting cancels
    # the lag once a track has seen two outputs (~6 of 60 frames), up to the noise (sigma 2 px: IoU ~0.95), so
    # it keeps most of the offline AP: >= 0.6 x offline (measured 0.65 vs 0.90 offline). The 0.3 gap asked
    # for is about half the measured 0.56: it fails if forecasting did nothing or were a frame off.
    assert offline > 0.8
    assert plain.sAP < 0.4
    assert fc.sAP >= 0.6 * offline
    assert fc.sAP - plain.sAP >= 0.3


def test_kalman_forecaster_streaming_api() -> None:
    kf = KalmanForecaster()
    assert [len(a) for a in kf.forecast(5)] == [0, 0, 0]
    box = np.array([[100.0, 200.0, 50.0, 40.0]])
    for f in range(0, 40, 4):  # an object moving +3 px/frame in x, seen every 4 frames
        kf.update(f, box + [3.0 * f, 0, 0, 0], [0.9], [1])
    assert len(kf) == 1 and kf.track_ids.tolist() == [0]  # one track kept all along
    boxes, scores, labels = kf.forecast(40)
    np.testing.assert_allclose(boxes[0], [100 + 3 * 40, 200, 50, 40], atol=0.5)
    assert scores.tolist() == [pytest.approx(0.9)] and labels.tolist() == [1]
    # an output with no detections keeps (predicts) the tracks
    kf.update(40, np.zeros((0, 4)), [], [])
    assert len(kf) == 1
    # a different-class detection does not match: the old track is dropped, a new one starts (bounded state)
    kf.update(44, box + [132.0, 0, 0, 0], [0.8], [0])
    assert len(kf) == 1 and kf.track_ids.tolist() == [1] and kf.labels.tolist() == [0]
    with pytest.raises(ValueError, match="went back"):
        kf.update(10, box, [0.5], [0])


def test_extrap_clean_up() -> None:
    boxes = np.array([
        [-10, -10, 30, 30],     # clipped to 20x20 = 400 px² -> kept
        [100, 100, -5, 10],     # negative width -> dropped
        [1915, 10, 20, 20],     # clipped to 5x20 = 100 -> kept
        [10, 10, 8.9, 8.9],     # int(8.9)*int(8.9) = 64 < 75 -> dropped
        [1919.5, 5, 10, 200],   # clipped to 0.5 wide: int -> 0 -> dropped
    ], dtype=np.float32)
    kept, keep = extrap_clean_up(boxes, 1920, 1200)
    assert keep.tolist() == [True, False, True, False, False]
    np.testing.assert_array_equal(kept, np.array([[0, 0, 20, 20], [1915, 10, 5, 20]], dtype=np.float32))
    assert kept.dtype == np.float32


# ---------------------------------------------------------------- scheduling


@pytest.mark.parametrize(
    ("t_free", "runtime", "wait"),
    [
        (0.0, 1.5, False),  # tail 0 -> tail(1.5) = .5: not shrinking
        (1.5, 1.5, True),   # tail .5 -> tail(3.0) = 0: waiting half a frame saves a frame
        (2.2, 1.5, False),  # tail .2 -> tail(3.7) = .7
        (2.6, 1.5, True),   # tail .6 -> tail(4.1) = .1
        (0.8, 2.3, True),   # tail .8 -> tail(3.1) = .1
        (0.5, 2.3, False),  # tail .5 -> tail(2.8) = .8
        (3.5, 2.0, False),  # integer runtime: the tail never shrinks
        (5.9, 0.8, False),  # runtime <= 1 frame: never wait
        (5.9, 1.0, False),
    ],
)
def test_shrinking_tail_decisions(t_free: float, runtime: float, wait: bool) -> None:
    assert shrinking_tail_wait(t_free, runtime) is wait


def test_shrinking_tail_equals_the_papers_form() -> None:
    rng = np.random.default_rng(0)
    for s, r in zip(rng.uniform(0, 100, 2000), rng.uniform(1.01, 6, 2000), strict=True):
        tau_s, tau_next = s - math.floor(s), (s + r) - math.floor(s + r)
        if min(abs(tau_s - tau_next), tau_s, tau_next, 1 - tau_s, 1 - tau_next) < 1e-9:
            continue  # float ties at frame boundaries
        assert shrinking_tail_wait(s, r) is (tau_next < tau_s)


def test_simulator_hand_computed_schedules() -> None:
    # fps 1 and a fixed runtime of 1.625 frames (exact in binary). Frames 0..11.
    def det(f: int):
        return [[f, 0, f + 10, 10]], [0.5], [0]

    latest = simulate_stream(12, det, 1.625, fps=1.0, policy="latest")
    assert [o.input_fidx for o in latest] == [0, 1, 3, 4, 6, 8, 9]
    assert [o.timestamp for o in latest] == [1.625, 3.25, 4.875, 6.5, 8.125, 9.75, 11.375]
    tail = simulate_stream(12, det, 1.625, fps=1.0, policy="shrinking_tail")
    assert [o.input_fidx for o in tail] == [0, 2, 4, 6, 8, 10]
    assert [o.timestamp for o in tail] == [1.625, 3.625, 5.625, 7.625, 9.625, 11.625]
    assert tail[0].bboxes_ltrb.tolist() == [[0, 0, 10, 10]]
    assert tail[1].bboxes_ltrb.tolist() == [[2, 0, 12, 10]]
    # frame lags of frames 2..11 (0 and 1 have no output yet): 28 vs 25
    mismatch = {}
    for name, outs in (("latest", latest), ("tail", tail)):
        pair = pair_frames([o.timestamp for o in outs], 12, 1.0)
        mismatch[name] = sum(i - outs[k].input_fidx for i, k in enumerate(pair) if k >= 0)
    assert mismatch == {"latest": 28, "tail": 25}
    # a detector faster than the frame rate processes every frame once, then idles
    fast = simulate_stream(5, det, 0.25, fps=1.0, policy="shrinking_tail")
    assert [o.input_fidx for o in fast] == [0, 1, 2, 3, 4]
    assert [o.timestamp for o in fast] == [0.25, 1.25, 2.25, 3.25, 4.25]


def test_online_scheduler() -> None:
    sched = ShrinkingTailScheduler(fps=1.0, expected_runtime_s=1.5)
    assert sched.decide(0.0) == (0, 0.0)
    assert sched.decide(1.5) == (2, 2.0)   # wait for frame 2
    assert sched.decide(3.5) == (4, 4.0)
    assert sched.decide(4.2) == (5, 5.0)   # frame 4 already done: idle until 5
    sched.observe(0.5)                     # running mean 1.0 frame: never waits any more
    assert sched.runtime_frames == pytest.approx(1.0)
    assert sched.decide(6.6) == (6, 6.6)


def test_simulator_is_deterministic() -> None:
    gt = moving_boxes_gt(n_seqs=2, n_frames=40, objects_per_seq=3, seed=3)
    det = NoisyDetector(gt, sigma_px=3.0, miss_rate=0.1, n_false_pos=1, seed=4)

    def latency(rng: np.random.Generator) -> float:
        return 0.04 + 0.03 * rng.random()

    n = {s: 40 for s in gt["sequences"]}
    a = simulate_streams(n, det, latency, policy="shrinking_tail", seed=7).to_json()
    b = simulate_streams(n, det, latency, policy="shrinking_tail", seed=7).to_json()
    c = simulate_streams(n, det, latency, policy="shrinking_tail", seed=8).to_json()
    assert a == b and a != c
    # an array of latencies is used in order, cycling
    outs = simulate_stream(30, lambda f: det("seq_0", f), [0.05, 0.1], fps=30.0)
    gaps = np.diff([0.0] + [o.timestamp for o in outs])
    assert np.allclose(gaps[0::2], 0.05) and np.allclose(gaps[1::2], 0.1)


# ---------------------------------------------------------------- CLI


def test_cli_streaming_eval(golden: dict, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["streaming-eval", "--gt", str(golden["gt"]), "--outputs", str(golden["stream"])]
    assert zoo_main(args) == 0
    out = capsys.readouterr().out
    assert "0.1837" in out and "missed frames" in out and "581" in out
    assert zoo_main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sAP"] == pytest.approx(golden["eval"]["sAP"], abs=1e-9)
    assert summary["missed_frames"] == 6 and summary["mismatch"] == 581
    assert zoo_main([*args, "--json", "--forecast"]) == 0
    assert json.loads(capsys.readouterr().out)["sAP"] == pytest.approx(golden["kf"]["sAP"], abs=1e-9)
    assert zoo_main(["streaming-eval", "--gt", str(golden["gt"]), "--outputs", "/nonexistent.json"]) == 1
