"""CUT / FastCUT generator against the official implementation's golden outputs
(tests/data/golden/zoo3/README_cut.md), plus its converter, pre/post-processing, size rules and entries.

Float64 runs one 256x256 image (about 15 s of CPU; the README's 1e-10 tolerances); float32 runs every stored
input at the README's atol 2e-5 and the served uint8 image within one level.
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
from zoo.cut import (
    CUT_ENTRIES,
    FEATURE_LAYERS,
    ResnetGenerator,
    TranslatePreprocess,
    convert_official,
    encode_image,
    power_of_base_size,
    to_uint8,
)
from zoo.weights import WeightsError, load_strict

TABLE = "cut_state_dict_keys.json"
NAMES = [f"{arch}.{tag}" for arch in ("cut", "fastcut") for tag in ("horse2zebra", "cat2dog", "cityscapes")]


@pytest.fixture(scope="module")
def zoo3(golden_dir: Path) -> Path:
    path = golden_dir / "zoo3"
    if not (path / TABLE).is_file():
        pytest.skip(f"zoo3 golden data not found under {path}")
    return path


@pytest.fixture(scope="module")
def official(zoo3: Path) -> dict[str, torch.Tensor]:
    return golden_state_dict(zoo3 / TABLE)


@pytest.fixture(scope="module")
def golden(zoo3: Path) -> dict[str, np.ndarray]:
    with np.load(zoo3 / "cut_golden.npz") as data:
        return dict(data)


def generator(official: dict[str, torch.Tensor], dtype: torch.dtype) -> ResnetGenerator:
    model = ResnetGenerator()
    load_strict(model, convert_official(official), "golden CUT weights")
    return model.to(dtype).eval()


def model_input(images_u8: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return TranslatePreprocess().normalize(torch.from_numpy(images_u8), dtype)


# --- parity -----------------------------------------------------------------------------------------
def test_float64_output_and_every_stored_feature_match_official(official, golden) -> None:
    model = generator(official, torch.float64)
    with torch.inference_mode():
        out, feats = model.forward_features(model_input(golden["images_u8"][:1], torch.float64),
                                            FEATURE_LAYERS.values())
    assert out.shape == (1, 3, 256, 256)
    assert_allclose(out.numpy(), golden["out_float64"][:1], rtol=0, atol=1e-10)
    pre_tanh = feats[FEATURE_LAYERS["pre_tanh"]]
    assert_allclose(pre_tanh[:, :, :32, :32].numpy(), golden["pre_tanh_crop_float64"][:1], rtol=1e-10, atol=1e-12)
    for name, index in FEATURE_LAYERS.items():
        if name == "pre_tanh":
            continue
        feat = feats[index]
        assert_allclose(feat.mean((2, 3)).numpy(), golden[f"feat_{name}_chmean_float64"][:1], rtol=1e-10,
                        atol=1e-12, err_msg=name)
        assert_allclose(feat[:, :8, :8, :8].numpy(), golden[f"feat_{name}_crop_float64"][:1], rtol=1e-10,
                        atol=1e-12, err_msg=name)
    assert np.abs(golden["out_float64"][0] - golden["out_float64"][1]).max() > 0.5  # input-dependent


def test_float32_outputs_and_served_images_match_official(official, golden) -> None:
    model = generator(official, torch.float32)
    with torch.inference_mode():
        out = model(model_input(golden["images_u8"], torch.float32))  # a batch of both: batch-independent
        out_ns, feats = model.forward_features(model_input(golden["image_ns_u8"], torch.float32),
                                               [FEATURE_LAYERS["res9"], FEATURE_LAYERS["pre_tanh"]])
    assert out_ns.shape == (1, 3, 256, 384)  # non-square, multiple of 4: the size is kept
    assert_allclose(out.numpy(), golden["out_float32"], rtol=0, atol=2e-5)
    assert_allclose(out_ns.numpy(), golden["out_ns_float32"], rtol=0, atol=2e-5)
    assert_allclose(out.numpy(), golden["out_float64"], rtol=0, atol=2e-5)
    assert_allclose(out_ns.numpy(), golden["out_ns_float64"], rtol=0, atol=2e-5)
    res9 = feats[FEATURE_LAYERS["res9"]]
    assert_allclose(res9.mean((2, 3)).numpy(), golden["feat_res9_ns_chmean_float64"], rtol=0, atol=1e-4)
    assert_allclose(res9[:, :8, -8:, -8:].numpy(), golden["feat_res9_ns_crop_float64"], rtol=0, atol=1e-4)
    pre_tanh = feats[FEATURE_LAYERS["pre_tanh"]][:, :, -32:, -32:]
    assert_allclose(pre_tanh.numpy(), golden["pre_tanh_ns_crop_float64"], rtol=0, atol=2e-5)
    for ours, theirs in ((to_uint8(out), golden["out_u8"]), (to_uint8(out_ns), golden["out_ns_u8"])):
        assert ours.dtype == np.uint8 and ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # tensor2im truncates


# --- architecture facts -----------------------------------------------------------------------------
def test_blur_filters_padding_and_sizes_follow_the_official_generator(official) -> None:
    model = generator(official, torch.float32)
    assert torch.equal(model.model[7].filt[0, 0], torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    assert torch.equal(model.model[21].filt[5, 0], torch.outer(torch.tensor([1., 3, 3, 1]),
                                                                torch.tensor([1., 3, 3, 1])) / 16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 1 + 2 + 9 * 2 + 2 and not any(m.affine or m.track_running_stats for m in norms)
    small = ResnetGenerator(ngf=4, n_blocks=1).eval()
    with torch.inference_mode():  # official probes: each side becomes 4 * ceil(side / 4)
        for (h, w), want in {(62, 66): (64, 68), (61, 63): (64, 64), (5, 5): (8, 8), (32, 48): (32, 48)}.items():
            assert small(torch.zeros(1, 3, h, w)).shape[-2:] == want
        with pytest.raises(ValueError, match="at least 5 px"):
            small(torch.zeros(1, 3, 4, 4))
        x = torch.randn(1, 3, 16, 20)
        small.train()
        train_out = small(x)
        small.eval()
        assert torch.equal(train_out, small(x))  # no running statistics: modes agree


# --- converter --------------------------------------------------------------------------------------
def test_converter_takes_official_and_wrapped_layouts(official) -> None:
    assert len(official) == 52
    for layout in (official, {f"module.{k}": v for k, v in official.items()}, {"state_dict": dict(official)}):
        converted = convert_official(layout)
        assert list(converted) == list(ResnetGenerator().state_dict())
        assert all(converted[k] is official[k] for k in official)


def test_converter_names_unknown_missing_and_wrong_filter_keys(official) -> None:
    extra = {**official, "model.31.weight": torch.zeros(3)}
    with pytest.raises(WeightsError, match=r"unknown: model\.31\.weight"):
        convert_official(extra)
    missing = {k: v for k, v in official.items() if k != "model.12.conv_block.5.bias"}
    with pytest.raises(WeightsError, match=r"missing: model\.12\.conv_block\.5\.bias"):
        convert_official(missing)
    no_filters = {k: v for k, v in official.items() if not k.endswith(".filt")}
    with pytest.raises(WeightsError, match=r"4 missing: model\.11\.filt"):
        convert_official(no_filters)
    wrong = {**official, "model.7.filt": torch.full((128, 1, 3, 3), 1 / 9)}
    with pytest.raises(WeightsError, match=r"model\.7\.filt is not the fixed anti-aliasing filter"):
        convert_official(wrong)
    with pytest.raises(WeightsError, match="non-tensor entries: epoch"):
        convert_official({**official, "epoch": 400})


# --- pre/post-processing ----------------------------------------------------------------------------
def test_preprocess_matches_the_official_test_transform(golden) -> None:
    pre = TranslatePreprocess()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    assert_array_equal(pre.image(img), np.asarray(img.resize((256, 256), Image.Resampling.BICUBIC)))  # squash
    stored = Image.fromarray(golden["images_u8"][0])
    assert_array_equal(pre.image(stored), golden["images_u8"][0])  # 256x256: Resize and make_power_2 are no-ops
    grey = Image.fromarray(golden["images_u8"][0][..., 0], "L")
    assert pre.image(grey).shape == (256, 256, 3)  # the dataset converts to RGB
    x = pre.normalize(torch.from_numpy(golden["images_u8"][:1]), torch.float32)
    want = (golden["images_u8"][:1].astype(np.float32) / 255 - golden["mean"].astype(np.float32)) / golden["std"]
    assert_array_equal(x.numpy(), want.transpose(0, 3, 1, 2).astype(np.float32))

    none = TranslatePreprocess(mode="none")
    ns = Image.fromarray(golden["image_ns_u8"][0])
    assert_array_equal(none.image(ns), golden["image_ns_u8"][0])  # 384x256 is fed as is
    assert power_of_base_size(66, 62) == (64, 64)  # round(16.5) = 16, round(15.5) = 16: halves to even
    assert power_of_base_size(70, 61) == (72, 60)
    assert_array_equal(none.image(img.resize((66, 62))),
                       np.asarray(img.resize((66, 62)).resize((64, 64), Image.Resampling.BICUBIC)))
    with pytest.raises(ValueError, match="at least 8 px"):
        none.image(img.resize((40, 5)))
    with pytest.raises(ValueError, match="at most 1024 px"):
        none.output_size(2000, 100)
    with pytest.raises(ValueError, match="'resize' or 'none'"):
        TranslatePreprocess(mode="scale_width")


def test_postprocess_truncates_like_tensor2im_and_encodes_png_and_jpeg() -> None:
    fake = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6).contiguous()
    img = to_uint8(fake)
    assert img.shape == (1, 1, 6, 3) and img.dtype == np.uint8
    assert img[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]  # 127.5 -> 127, 254.87 -> 254: truncation
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = encode_image(rgb, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), rgb)  # lossless
    jpeg = encode_image(rgb, "JPEG", quality=90)
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (32, 24)
    with pytest.raises(ValueError, match="image format"):
        encode_image(rgb, "gif")


# --- entries ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_entries_build_the_official_layout_and_name_real_things(zoo3: Path, name: str) -> None:
    entry = get_entry(name)
    assert entry in CUT_ENTRIES and entry.task == "image-translation" and not entry.default_serve
    assert name not in {e.name for e in list_models(default_only=True)}
    assert entry.license == "BSD-2-Clause" and "2007.15651" in entry.paper
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    arch, tag = name.split(".")
    assert f"checkpoints/{tag}_{arch}_pretrained/latest_net_G.pth" in entry.weights.description
    assert entry.weights.upstream_url.startswith("http://efrosgans.eecs.berkeley.edu/CUT/")
    assert entry.config["mode"] == {"cut": "CUT", "fastcut": "FastCUT"}[arch]
    assert entry.config["official_direction"] == ("BtoA" if tag == "cityscapes" else "AtoB")
    assert "->" in entry.config["direction"] and "->" in {o.name: o for o in entry.outputs}["image"].description
    TranslatePreprocess.from_config(entry.config["preprocess"])
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in entry.build().state_dict().items()}
    table = {e["key"]: tuple(e["shape"]) for e in json.loads((zoo3 / TABLE).read_text())["keys"]}
    assert ours == table
