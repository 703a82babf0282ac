"""DNLNet R50-D8 against mmsegmentation 1.2.2's golden outputs (tests/data/golden/zoo3/README_dnl.md), plus its
converter (which must fail loudly), pre/post-processing and registry entries.

With the 0.02 weight recipe the argmax maps hardly depend on the input (README section 7), so the checks are
on logits and intermediates in float64 at rtol 1e-9 / atol 1e-12, and float32 end to end (both samples) at the
README's atol. The float64 forward runs sample 0 only (the model is batch-independent, README section 4; the two
samples' logits differ by 1.2e-5 at most), the input-sensitive stem on both.
"""

from __future__ import annotations

import importlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo._registry import MODEL_MODULES
from zoo.dnl import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    MEAN,
    STD,
    TEMPERATURE,
    DisentangledNonLocal2d,
    DNLNet,
    class_fractions,
    colorize,
    convert_mmseg,
    encode_png,
    label_map,
    normalize_u8,
    preprocess,
    rescale_size,
    resize_u8,
    segment,
    upsample_logits,
)
from zoo.weights import WeightsError, load_strict

F64 = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(scope="module")
def zoo3(golden_dir: Path) -> Path:
    path = golden_dir / "zoo3"
    if not (path / "dnl_state_dict_keys.json").is_file():
        pytest.skip(f"zoo3 golden data not found under {path}")
    return path


@pytest.fixture(scope="module")
def g(zoo3: Path) -> dict[str, np.ndarray]:
    with np.load(zoo3 / "dnl_golden.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def official(zoo3: Path) -> dict[str, torch.Tensor]:
    """The mmseg checkpoint layout: ``{"meta", "state_dict"}`` with the auxiliary head."""
    return {"meta": {"mmseg_version": "1.2.2"}, "state_dict": golden_state_dict(zoo3 / "dnl_state_dict_keys.json")}


@pytest.fixture(scope="module")
def model(official) -> DNLNet:
    net = DNLNet(19)
    load_strict(net, convert_mmseg(official), "golden weights")
    return net.eval()


@pytest.fixture(scope="module")
def f64(model: DNLNet, g) -> dict[str, torch.Tensor]:
    """One float64 run of sample 0: every stage and the upsampled logits; the stem output of both samples."""
    net = model.double()
    try:
        x = normalize_u8(g["images_u8"], torch.float64)
        with torch.inference_mode():
            out = net.stages(x[:1])
            out["stem"] = net.backbone.stem_out(x)
            out["pairwise"] = net.decode_head.dnl_block.pairwise(out["dnl_in"])
            out["mask"] = net.decode_head.dnl_block.mask_logits(out["dnl_in"])
            out["seg"] = upsample_logits(out["logits"], x.shape[-2:])
    finally:
        net.float()
    return out


def first(g: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Sample 0 of a golden array."""
    return g[name][:1]


# --- float64 parity ---------------------------------------------------------------------------------------
def test_float64_logits_and_upsampled_logits_match_mmseg(f64, g) -> None:
    assert f64["logits"].shape == (1, 19, 32, 64)
    assert_allclose(f64["logits"].numpy(), first(g, "logits_float64"), **F64)
    rows = g["seg_logits_rows_idx"]
    assert_allclose(f64["seg"][:, :, rows].numpy(), first(g, "seg_logits_rows_float64"), **F64)  # incl. border clamp
    assert_allclose(f64["seg"][:, :, 3::8, 5::8].numpy(), first(g, "seg_logits_grid_float64"), **F64)
    pred = label_map(f64["seg"])
    assert pred.dtype == np.uint8
    assert_array_equal(pred, first(g, "pred_float64"))


def test_float64_backbone_stages_match_mmseg(f64, g) -> None:
    # the stem slice is input-sensitive: it checks the float32-rounded normalisation constants
    assert_allclose(f64["stem"][:, :2].numpy(), g["stem_slice_float64"], **F64)
    assert [tuple(f64[f"c{i}"].shape[1:]) for i in range(1, 5)] == [(256, 64, 128), (512, 32, 64),
                                                                    (1024, 32, 64), (2048, 32, 64)]
    for i in range(1, 5):
        assert_allclose(f64[f"c{i}"].mean(dim=(2, 3)).numpy(), first(g, f"c{i}_chmean_float64"), **F64)
    assert_allclose(f64["c4"][:, :8].numpy(), first(g, "c4_slice_float64"), **F64)


def test_float64_dnl_block_matches_mmseg(f64, g) -> None:
    assert_allclose(f64["pairwise"][:, g["dnl_query_idx"]].numpy(), first(g, "dnl_pairwise_rows_float64"), **F64)
    assert_allclose(f64["mask"].numpy(), first(g, "dnl_mask_logits_float64"), **F64)
    for name in ("dnl_in", "dnl_out", "head_feat"):
        assert_allclose(f64[name].mean(dim=(2, 3)).numpy(), first(g, f"{name}_chmean_float64"), **F64)
        assert_allclose(f64[name][:, :8].numpy(), first(g, f"{name}_slice_float64"), **F64)


def test_dnl_block_details_are_visible_in_float64(model: DNLNet, f64, g) -> None:
    """The temperature and the unary term each move the block output far beyond 1e-12, and
    the query chunking (memory only) moves nothing."""
    block = model.decode_head.dnl_block
    x = f64["dnl_in"]
    want = f64["dnl_out"].numpy()
    saved = (block.temperature, block.query_chunk)
    try:
        block.double()
        with torch.inference_mode():
            block.query_chunk = 300  # not a divisor of 2048 positions
            assert_allclose(block(x).numpy(), want, rtol=0, atol=1e-13)
            block.query_chunk = saved[1]
            block.temperature = 1.0
            assert np.abs(block(x).numpy() - want).max() > 1e-6
            block.temperature = saved[0]
            mask = block.conv_mask
            block.conv_mask = torch.nn.Conv2d(512, 1, 1).double()  # zero weights: a uniform unary mask
            torch.nn.init.zeros_(block.conv_mask.weight)
            assert np.abs(block(x).numpy() - want).max() > 1e-7
            block.conv_mask = mask
    finally:
        block.temperature, block.query_chunk = saved
        block.float()
    assert TEMPERATURE == float(np.float32(0.05)) != 0.05


# --- float32 parity -----------------------------------------------------------------------------------------
def test_float32_end_to_end_matches_mmseg(model: DNLNet, g) -> None:
    x = normalize_u8(g["images_u8"], torch.float32)
    with torch.inference_mode():
        out = model.stages(x)
        seg = upsample_logits(out["logits"], x.shape[-2:])
    assert_allclose(out["logits"].numpy(), g["logits_float32"], rtol=0, atol=1e-5)
    assert_allclose(out["logits"].numpy(), g["logits_float64"], rtol=0, atol=1e-5)
    assert_allclose(out["head_feat"].mean(dim=(2, 3)).numpy(), g["head_feat_chmean_float32"], rtol=0, atol=2e-5)
    assert_allclose(out["c4"].mean(dim=(2, 3)).numpy(), g["c4_chmean_float32"], rtol=0, atol=1e-6)
    pred = label_map(seg)
    # the README's rule: equal except where the float64 top-1/top-2 gap is below 1e-4
    top2 = upsample_logits(torch.from_numpy(g["logits_float64"]), (256, 512)).topk(2, dim=1).values.numpy()
    gap = top2[:, 0] - top2[:, 1]
    assert_array_equal(pred[gap >= 1e-4], g["pred_float32"][gap >= 1e-4])
    assert (pred != g["pred_float32"]).sum() <= (gap < 1e-4).sum()


# --- pre-processing ---------------------------------------------------------------------------------------
def test_normalisation_uses_the_float32_buffers_of_the_preprocessor(g) -> None:
    u8 = g["images_u8"][:1, :16, :16]
    x64 = normalize_u8(u8, torch.float64).numpy()
    mean32 = np.float32(MEAN).astype(np.float64).reshape(1, 3, 1, 1)
    std32 = np.float32(STD).astype(np.float64).reshape(1, 3, 1, 1)
    chw = u8.transpose(0, 3, 1, 2).astype(np.float64)
    assert_array_equal(x64, (chw - mean32) / std32)
    nominal = (chw - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    assert np.abs(x64 - nominal).max() > 1e-9  # the nominal constants are a different input
    x32 = normalize_u8(torch.from_numpy(u8), torch.float32)
    assert x32.dtype == torch.float32
    assert_array_equal(x32.numpy(), (chw.astype(np.float32) - np.float32(MEAN).reshape(1, 3, 1, 1))
                       / np.float32(STD).reshape(1, 3, 1, 1))
    with pytest.raises(ValueError, match="uint8"):
        normalize_u8(u8.astype(np.float32))


def test_keep_ratio_resize_follows_mmcv_rescale_size() -> None:
    assert rescale_size(2048, 1024, (2048, 1024)) == (2048, 1024)  # a Cityscapes frame stays as it is
    assert rescale_size(512, 256, (2048, 1024)) == (2048, 1024)
    assert rescale_size(640, 480, (2048, 512)) == (683, 512)  # ADE20K: short edge 512, rounded half up
    assert rescale_size(4000, 1000, (2048, 512)) == (2048, 512)  # the long edge binds
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    same = resize_u8(img, (3, 2))
    assert_array_equal(same, img) and same is not img
    row = np.array([[[0, 0, 0], [100, 100, 100]]], dtype=np.uint8)  # half-pixel centres, edges clamped
    assert resize_u8(row, (4, 1))[0, :, 0].tolist() == [0, 25, 75, 100]


def test_preprocess_returns_the_sizes_the_postprocessing_needs() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    prepared = preprocess(img, scale=(128, 64))
    assert prepared.x.shape == (1, 3, 64, 96) and prepared.img_shape == (64, 96)
    assert prepared.ori_shape == (100, 150)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(np.zeros((10, 10), dtype=np.uint8))


# --- post-processing --------------------------------------------------------------------------------------
def test_label_png_fractions_and_colours(g, zoo3: Path) -> None:
    labels = g["pred_float64"][0]
    png = encode_png(labels, CITYSCAPES_PALETTE)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "P" and decoded.size == (512, 256)
    assert_array_equal(np.asarray(decoded), labels)
    assert_array_equal(np.asarray(decoded.convert("RGB")), colorize(labels, CITYSCAPES_PALETTE))
    hist = json.loads((zoo3 / "dnl_stats.json").read_text())["pred_class_hist_f64"][0]
    fractions = class_fractions(labels, 19)
    assert_allclose(fractions * labels.size, hist, rtol=0, atol=0)
    assert math.isclose(fractions.sum(), 1.0)
    assert colorize(np.array([[0, 18]], dtype=np.uint8), CITYSCAPES_PALETTE).tolist() == [[[128, 64, 128],
                                                                                            [119, 11, 32]]]
    with pytest.raises(ValueError, match="palette"):
        colorize(np.array([[19]]), CITYSCAPES_PALETTE)
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150 and len(CITYSCAPES_CLASSES) == 19
    assert ADE20K_PALETTE[0] == (120, 120, 120) and ADE20K_PALETTE[-1] == (92, 0, 255)


def test_segment_resizes_back_to_the_original_image(model: DNLNet) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    out = segment(model, img, "cityscapes", scale=(128, 64))
    assert out["labels"].shape == (100, 150) and out["labels"].dtype == np.uint8
    assert_array_equal(np.asarray(Image.open(io.BytesIO(out["png"]))), out["labels"])
    assert math.isclose(sum(out["fractions"].values()), 1.0) and set(out["fractions"]) <= set(CITYSCAPES_CLASSES)
    prepared = preprocess(img, scale=(128, 64))
    with torch.inference_mode():
        seg = model.predict(prepared.x, prepared.ori_shape)
    assert_array_equal(label_map(seg)[0], out["labels"])


# --- converter and entries ----------------------------------------------------------------------------------
def test_converter_drops_the_auxiliary_head_and_names_misfits(official) -> None:
    state = official["state_dict"]
    converted = convert_mmseg(official)
    assert not any(k.startswith("auxiliary_head.") for k in converted)
    assert len(converted) == len(state) - 8 and all(converted[k] is state[k] for k in converted)
    assert list(convert_mmseg({f"module.{k}": v for k, v in state.items()})) == list(converted)
    broken = dict(state)
    broken.pop("decode_head.dnl_block.conv_mask.bias")
    broken["decode_head.dnl_block.gamma"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        convert_mmseg({"meta": {}, "state_dict": broken})
    assert "unknown: decode_head.dnl_block.gamma" in str(err.value)
    assert "missing: decode_head.dnl_block.conv_mask.bias" in str(err.value)
    with pytest.raises(WeightsError, match="non-tensor"):
        convert_mmseg({**state, "meta": {"epoch": 1}})


def test_converter_takes_a_150_class_ade20k_checkpoint() -> None:
    with torch.device("meta"):
        ade = dict(DNLNet(150).state_dict())
        ade["auxiliary_head.conv_seg.weight"] = torch.empty(150, 256, 1, 1)
        converted = convert_mmseg({"state_dict": ade})
        assert converted["decode_head.conv_seg.weight"].shape == (150, 512, 1, 1)
        net = get_entry("dnl_r50_d8.ade20k").build()
        assert set(net.state_dict()) == set(converted)


@pytest.mark.parametrize("name,classes,scale", [("dnl_r50_d8.cityscapes", 19, [2048, 1024]),
                                                ("dnl_r50_d8.ade20k", 150, [2048, 512])])
def test_entries_are_opt_in_and_build_the_mmseg_layout(zoo3: Path, name: str, classes: int, scale) -> None:
    entry = get_entry(name)
    assert entry.task == "semantic-segmentation" and not entry.default_serve
    assert name not in {e.name for e in list_models(default_only=True)}
    assert entry.handler == "handlers.semantic_segmentation_handler" and "Apache-2.0" in entry.license
    assert entry.paper == "https://arxiv.org/abs/2006.06668"
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    assert entry.weights.upstream_url.startswith("https://download.openmmlab.com/mmsegmentation/")
    assert entry.config["test_scale"] == scale and entry.config["test_mode"] == "whole"
    assert entry.config["dataset"] in name
    with torch.device("meta"):
        net = entry.build()
        ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    official = {e["key"]: tuple(e["shape"]) for e in json.loads((zoo3 / "dnl_state_dict_keys.json").read_text())["keys"]
                if not e["key"].startswith("auxiliary_head.")}
    if classes != 19:
        official.update({"decode_head.conv_seg.weight": (classes, 512, 1, 1), "decode_head.conv_seg.bias": (classes,)})
    assert ours == official
    assert isinstance(net.decode_head.dnl_block, DisentangledNonLocal2d) and net.num_classes == classes
