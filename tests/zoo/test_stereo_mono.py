"""Stereo-from-mono hourglass PSMNet against the official code's golden outputs (tests/data/golden/zoo3/
README_sfm.md), plus its converter, pre/post-processing and registry entry.

Budget: the float64 forward of a 256x512 pair needs 6-13 GB and minutes on CPU (slow float64 3-D convs), so,
as the README recommends, float64 covers what fits: the left features of pair 0 (2-D only), checked to 1e-12
with the left half of the stored cost-volume row. Pair 0 then runs end to end in float32 (one forward, shared
by the tests below), where the discriminative low-resolution arrays (cost row, classifier crops, cost3 row) are
checked against the float64 golden at 1e-6 (float32-vs-float64 noise there is <= 2e-7, the values span
~0.1) and the disparities at the README's 5e-4.
"""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo._registry import MODEL_MODULES
from zoo.stereo_mono import (
    COLOUR_STOPS,
    KITTI_SIZE,
    StereoHourglass,
    check_size,
    colorize_disparity,
    convert_official,
    decode_png16,
    disparity_to_image,
    encode_png16,
    normalize_u8,
    predict,
    preprocess_pair,
)
from zoo.weights import WeightsError, load_strict

F64 = {"rtol": 0, "atol": 1e-12}
ROW = 32  # cost_row / cost3 row index at 1/4 resolution
COST_CHANNELS = [0, 31, 32, 63]  # L0, L31, R0, R31


@pytest.fixture(scope="module")
def zoo3(golden_dir: Path) -> Path:
    path = golden_dir / "zoo3"
    if not (path / "sfm_state_dict_keys.json").is_file():
        pytest.skip(f"zoo3 golden data not found under {path}")
    return path


@pytest.fixture(scope="module")
def g(zoo3: Path) -> dict[str, np.ndarray]:
    with np.load(zoo3 / "sfm_golden.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def official(zoo3: Path) -> dict[str, torch.Tensor]:
    return golden_state_dict(zoo3 / "sfm_state_dict_keys.json")


@pytest.fixture(scope="module")
def model(official) -> StereoHourglass:
    net = StereoHourglass()
    load_strict(net, convert_official(official), "golden weights")
    return net.eval()


@pytest.fixture(scope="module")
def f32(model: StereoHourglass, g) -> dict[str, torch.Tensor]:
    """Pair 0, float32, every stage."""
    with torch.inference_mode():
        return model.stages(normalize_u8(g["left_u8"][:1]), normalize_u8(g["right_u8"][:1]))


# --- float64 parity (features) ----------------------------------------------------------------------------
def test_float64_left_features_and_cost_row_match_official(model: StereoHourglass, g) -> None:
    assert int(g["max_disparity"]) == 192 and float(g["norm_mean"]) == 0.45 and float(g["norm_std"]) == 0.225
    features = model.feature_extraction.double()
    try:
        with torch.inference_mode():
            left = features(normalize_u8(g["left_u8"][:1], torch.float64))
    finally:
        features.float()
    assert left.shape == (1, 32, 64, 128) and left.dtype == torch.float64
    assert_allclose(left.mean(dim=(2, 3)).numpy(), g["feat_left_chmean_float64"][:1], **F64)
    assert_allclose(left[:, :, :8, :8].numpy(), g["feat_left_crop_float64"][:1], **F64)
    # the left half of the cost volume at feature row 32: left[x] in slice i for x >= i, exact zeros before
    cost = model.cost_volume(left, torch.zeros_like(left))
    assert tuple(cost.shape[1:]) == tuple(g["cost_volume_shape"][1:]) == (64, 48, 64, 128)
    assert_allclose(cost[:, [0, 31], :, ROW, :].numpy(), g["cost_row_float64"][:1, :2], **F64)


# --- float32 end to end (pair 0) ------------------------------------------------------------------------------
def test_float32_features_and_cost_volume_match_official(f32, g) -> None:
    for side in ("left", "right"):
        feat = f32[f"feat_{side}"]
        assert_allclose(feat.mean(dim=(2, 3)).numpy(), g[f"feat_{side}_chmean_float64"][:1], rtol=0, atol=1e-6)
        assert_allclose(feat[:, :, :8, :8].numpy(), g[f"feat_{side}_crop_float64"][:1], rtol=0, atol=1e-6)
    row = f32["cost"][:, COST_CHANNELS, :, ROW, :].numpy()
    assert_allclose(row, g["cost_row_float64"][:1], rtol=0, atol=1e-6)
    for i in (1, 20, 47):  # columns x < i are zero in both halves, exactly
        assert not row[..., i, :i].any() and row[..., i, i:].any()


def test_cost_volume_orientation_is_discriminative(model: StereoHourglass, f32, g) -> None:
    """Swapped views or the opposite shift move the stored cost row beyond the 1e-6 tolerance. (The two views'
    features differ little under the 0.02 recipe, so a swap shows at ~1e-4, the opposite shift at ~1e-1.)"""
    want = g["cost_row_float64"][:1]
    left, right = f32["feat_left"], f32["feat_right"]
    swapped = model.cost_volume(right, left)[:, COST_CHANNELS, :, ROW, :].numpy()
    assert np.abs(swapped - want).max() > 2e-5
    flipped = model.cost_volume(left.flip(-1), right.flip(-1)).flip(-1)  # pairs left[x] with right[x + i]
    assert np.abs(flipped[:, COST_CHANNELS, :, ROW, :].numpy() - want).max() > 1e-2


def test_float32_aggregation_matches_official(f32, g) -> None:
    """The raw classifier outputs (before accumulation) and the accumulated low-resolution cost3: these catch
    the hourglass wiring (pre1 into the third hourglass) and the accumulation."""
    for k in (1, 2, 3):
        crop = f32[f"classif{k}"][:, 0, :, :8, :8].numpy()
        assert_allclose(crop, g[f"classif{k}_lowres_crop_float64"][:1], rtol=0, atol=1e-6)
    cost3 = f32["cost3"][:, 0, :, ROW, :].numpy()
    assert_allclose(cost3, g["cost3_lowres_row_float64"][:1], rtol=0, atol=1e-6)
    raw3 = f32["classif3"][:, 0, :, ROW, :].numpy()
    assert np.abs(raw3 - g["cost3_lowres_row_float64"][:1]).max() > 1e-3  # accumulation matters


def test_float32_disparities_match_official(f32, g) -> None:
    disp = f32["disp"].numpy()
    assert disp.shape == (1, 256, 512) and disp.dtype == np.float32
    assert_allclose(disp, g["disp_float32"][:1], rtol=0, atol=5e-4)
    assert_allclose(disp, g["disp_float64"][:1], rtol=0, atol=5e-4)
    assert_allclose(f32["disp_raw1"][:, ::4, ::4].numpy(), g["disp_raw1_sub4_float64"][:1], rtol=0, atol=5e-4)
    assert_allclose(f32["disp_raw2"][:, ::4, ::4].numpy(), g["disp_raw2_sub4_float64"][:1], rtol=0, atol=5e-4)


# --- shapes, pre-processing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(136, 256), (128, 264), (120, 256), (128, 120), (112, 224)])
def test_sizes_the_network_cannot_take_raise(model: StereoHourglass, height: int, width: int) -> None:
    """The README's probed failures, as ValueError naming the constraint (before any computation)."""
    x = torch.zeros(1, 3, height, width)
    with pytest.raises(ValueError, match="multiples of 16 and at least 128"):
        model(x, x)


def test_valid_sizes_and_pair_checks(model: StereoHourglass) -> None:
    for height, width in ((128, 256), (144, 256), (128, 272), (384, 1280), (1120, 736)):
        check_size(height, width)
    with pytest.raises(ValueError, match="differ in shape"):
        model(torch.zeros(1, 3, 128, 256), torch.zeros(1, 3, 128, 272))
    a = np.zeros((100, 200, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="same size"):
        preprocess_pair(a, np.zeros((100, 201, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="multiples of 16"):
        preprocess_pair(a, a, size=(200, 100))
    with pytest.raises(ValueError, match="right view"):
        preprocess_pair(a, a[..., 0])


def test_preprocessing_is_pil_bilinear_then_scalar_normalisation(g) -> None:
    u8 = g["left_u8"][0]
    x = normalize_u8(u8[None], torch.float64).numpy()
    assert_array_equal(x, (u8.transpose(2, 0, 1)[None] / 255 - 0.45) / 0.225)
    x32 = normalize_u8(u8[None]).numpy()
    assert_array_equal(x32, (u8.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
                             - np.float32(0.45)) / np.float32(0.225))
    same = preprocess_pair(u8, g["right_u8"][0], size=(512, 256))  # the golden size: no resampling
    assert_array_equal(same.left.numpy(), x32) and same.ori_size == (256, 512)
    resized = preprocess_pair(Image.fromarray(u8), Image.fromarray(u8), size=KITTI_SIZE)
    want = np.asarray(Image.fromarray(u8).resize(KITTI_SIZE, Image.Resampling.BILINEAR))
    assert resized.left.shape == (1, 3, 384, 1280)
    assert_array_equal(resized.left.numpy(), normalize_u8(want[None]).numpy())


# --- post-processing -----------------------------------------------------------------------------------------
def test_disparity_back_to_the_original_size_and_pixels() -> None:
    disp = torch.full((1, 128, 256), 10.0)
    up = disparity_to_image(disp, (300, 512))
    assert up.shape == (1, 300, 512) and up.dtype == torch.float32
    assert torch.allclose(up, torch.full_like(up, 20.0))  # twice as wide: twice the disparity
    ramp = torch.arange(4.0).view(1, 1, 4).expand(1, 2, 4)
    half = disparity_to_image(ramp, (2, 2))  # cv2 INTER_LINEAR geometry: exact 2x down = mean of pairs, x 1/2
    assert half[0, 0].tolist() == [0.25, 1.25]
    assert disparity_to_image(ramp, (2, 4)).equal(ramp)


def test_png16_is_kitti_disparity_times_256() -> None:
    disp = np.array([[0.0, 1.0, 1.999], [95.49, 255.99, 400.0]], dtype=np.float32)
    png = encode_png16(disp)
    img = Image.open(io.BytesIO(png))
    assert img.mode.startswith("I") and img.size == (3, 2)
    assert np.asarray(img).tolist() == [[0, 256, 511], [24445, 65533, 65535]]  # truncated, clipped
    assert_allclose(decode_png16(png), [[0, 1, 511 / 256], [24445 / 256, 65533 / 256, 65535 / 256]])
    with pytest.raises(ValueError, match="one"):
        encode_png16(disp[None])


def test_colour_visualisation_uses_the_fixed_map() -> None:
    disp = np.array([[0.0, 50.0, 100.0, 150.0]])
    rgb = colorize_disparity(disp, max_disparity=100)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == list(COLOUR_STOPS[0][1]) and rgb[0, 2].tolist() == list(COLOUR_STOPS[-1][1])
    assert rgb[0, 1].tolist() == list(COLOUR_STOPS[3][1]) and rgb[0, 3].tolist() == rgb[0, 2].tolist()
    assert_array_equal(colorize_disparity(torch.from_numpy(disp)), colorize_disparity(disp, 150))
    flat = colorize_disparity(np.zeros((2, 2)))  # no disparity anywhere: the map's first colour
    assert flat.reshape(-1, 3).tolist() == [list(COLOUR_STOPS[0][1])] * 4


def test_predict_serves_the_original_size(model: StereoHourglass) -> None:
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    out = predict(model, left, right, size=(256, 128))  # the smallest valid network size keeps this cheap
    assert out["disparity"].shape == (150, 200) and out["disparity"].dtype == torch.float32
    assert float(out["disparity"].min()) >= 0 and float(out["disparity"].max()) <= 191 * 200 / 256
    assert_allclose(decode_png16(out["png16"]), out["disparity"].numpy(), rtol=0, atol=1 / 256)
    assert out["colour"].shape == (150, 200, 3)


# --- converter and entry -------------------------------------------------------------------------------------
def test_converter_takes_the_release_layout_and_names_misfits(official) -> None:
    converted = convert_official(official)
    assert set(converted) == set(official) and all(converted[k] is official[k] for k in official)
    data_parallel = {f"module.{k}": v for k, v in official.items()}  # what load_model's fallback strips
    assert list(convert_official(data_parallel)) == list(converted)
    broken = dict(official)
    broken.pop("dres4.conv5.1.running_var")
    broken["feature_extraction.branch5.1.0.weight"] = torch.zeros(32, 128, 1, 1)
    with pytest.raises(WeightsError) as err:
        convert_official(broken)
    assert "unknown: feature_extraction.branch5.1.0.weight" in str(err.value)
    assert "missing: dres4.conv5.1.running_var" in str(err.value)
    with pytest.raises(WeightsError, match="non-tensor"):
        convert_official({**official, "epoch": 10})


def test_entry_is_opt_in_non_commercial_and_builds_the_official_layout(zoo3: Path) -> None:
    entry = get_entry("stereo_from_mono.hourglass")
    assert entry.task == "stereo-depth" and not entry.default_serve
    assert entry.name not in {e.name for e in list_models(default_only=True)}
    assert entry.license.startswith("NON-COMMERCIAL:") and entry.paper == "https://arxiv.org/abs/2008.01484"
    assert entry.handler == "handlers.stereo_depth_handler"
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    assert entry.weights.upstream_url.endswith("hourglass_midas_release.zip")
    width, height = entry.config["input_size"]
    check_size(height, width)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in entry.build().state_dict().items()}
    table = json.loads((zoo3 / "sfm_state_dict_keys.json").read_text())["keys"]
    assert ours == {e["key"]: tuple(e["shape"]) for e in table}
