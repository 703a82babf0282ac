"""iSQRT-COV, AdderNet, BiT-M and Patch-Forensics against the official implementations' golden outputs
(tests/data/golden/zoo2, README_isqrtcov.md, README_addernet.md, README_bit.md, README_patchforensics.md), plus
their checkpoint converters (which must fail loudly), entries and model-specific paths.

Tolerances are the READMEs' recommendations. Float64 is used where the READMEs say the float32 signal is
weak (iSQRT-COV's covariance and vector, AdderNet's raw adder maps) or where only float64 can see the effect
(BiT's eps); Patch-Forensics runs float32 at atol 1e-6 (its float64 depthwise convs take tens of seconds
on CPU, and float32 at that tolerance is discriminative per its README).
"""

from __future__ import annotations

import importlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo._registry import MODEL_MODULES
from zoo.addernet import Adder2d, AdderResNet20, adder2d_lean, adder2d_reference
from zoo.addernet import convert_checkpoint as convert_addernet
from zoo.bit import BiTResNetV2, StdConv2d, npz_name, npz_to_state_dict
from zoo.bit import convert_checkpoint as convert_bit
from zoo.classify import Preprocess, normalize_u8
from zoo.isqrtcov import ISqrtCovResNet, covariance_pool, newton_schulz_sqrtm, triu_vector
from zoo.isqrtcov import convert_checkpoint as convert_isqrtcov
from zoo.patchforensics import (
    PatchXception,
    convert_block2,
    convert_block3,
    crop_box_in_input,
    fake_probability,
    patch_probabilities,
    render_overlay,
)
from zoo.weights import WeightsError, load_strict, read_checkpoint, resolve_weights

TABLES = {
    "isqrtcov": "isqrtcov_state_dict_keys.json",
    "addernet": "addernet_state_dict_keys.json",
    "bit": "bit_state_dict_keys.json",
    "patchforensics": "patchforensics_state_dict_keys.json",
    "patchforensics_block3": "patchforensics_block3_state_dict_keys.json",
}
ENTRIES = {
    "isqrtcov_resnet50": ("isqrtcov", ISqrtCovResNet, "image-classification"),
    "addernet_resnet20": ("addernet", AdderResNet20, "image-classification"),
    "bit_m_r50x1": ("bit", BiTResNetV2, "image-classification"),
    "patchforensics_block2": ("patchforensics", lambda: PatchXception("block2"), "image-forensics"),
    "patchforensics_block3": ("patchforensics_block3", lambda: PatchXception("block3"), "image-forensics"),
}


@pytest.fixture(scope="module")
def zoo2(golden_dir: Path) -> Path:
    path = golden_dir / "zoo2"
    if not (path / TABLES["bit"]).is_file():
        pytest.skip(f"zoo2 golden data not found under {path}")
    return path


def golden(zoo2: Path, model: str) -> dict[str, np.ndarray]:
    with np.load(zoo2 / f"{model}_golden.npz") as data:
        return dict(data)


def inputs(g: dict[str, np.ndarray], dtype: torch.dtype, rows: slice = slice(None)) -> torch.Tensor:
    """The stored uint8 images as the README's model input ``(u8 / 255 - mean) / std`` in the run dtype."""
    return normalize_u8(torch.from_numpy(g["images_u8"][rows]), g["mean"], g["std"], dtype)


def loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    load_strict(model, state, "golden weights")
    return model.to(dtype).eval()


# --- layouts and entries ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENTRIES)
def test_entries_are_opt_in_and_build_the_official_layout(zoo2: Path, name: str) -> None:
    table, factory, task = ENTRIES[name]
    entry = get_entry(name)
    assert entry.task == task and not entry.default_serve
    assert name not in {e.name for e in list_models(default_only=True)}
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in entry.build().state_dict().items()}
        direct = {k: tuple(v.shape) for k, v in factory().state_dict().items()}
    official = {e["key"]: tuple(e["shape"]) for e in json.loads((zoo2 / TABLES[table]).read_text())["keys"]}
    assert ours == direct == official
    Preprocess.from_config(entry.config["preprocess"])


def test_preprocessing_follows_each_official_evaluation_transform() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))  # 200 wide, 120 high
    bit = Preprocess.from_config(get_entry("bit_m_r50x1").config["preprocess"])
    assert_array_equal(bit.image(img), np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR)))  # squash
    pf = Preprocess.from_config(get_entry("patchforensics_block2").config["preprocess"])
    resized = img.resize((498, 299), Image.Resampling.LANCZOS)
    assert_array_equal(pf.image(img), np.asarray(resized.crop((100, 0, 399, 299))))
    adder = Preprocess.from_config(get_entry("addernet_resnet20").config["preprocess"])
    assert adder.image(img).shape == (32, 32, 3) and adder.mean == (0.4914, 0.4822, 0.4465)
    isq = Preprocess.from_config(get_entry("isqrtcov_resnet50").config["preprocess"])
    assert (isq.resize, isq.crop, isq.interpolation, isq.square) == (256, 224, "bilinear", False)


# --- iSQRT-COV ----------------------------------------------------------------------------------------
def released_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The zoo (= ``get_model``) names back to the released ``MPNCOVResNet`` names (mpncovresnet50-*.pth)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^features\.([4-7])\.", lambda m: f"layer{int(m.group(1)) - 3}.", key)
        for old, new in (("features.0.", "conv1."), ("features.1.", "bn1."), ("classifier.", "fc."),
                         ("representation.conv_dr_block.0.", "layer_reduce."),
                         ("representation.conv_dr_block.1.", "layer_reduce_bn.")):
            key = new + key[len(old):] if key.startswith(old) else key
        out[key] = value
    return out


@pytest.fixture(scope="module")
def isqrtcov(zoo2: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    official = golden_state_dict(zoo2 / TABLES["isqrtcov"])
    return convert_isqrtcov(released_layout(official)), golden(zoo2, "isqrtcov")


def test_isqrtcov_float64_covariance_iteration_and_logits_match_official(isqrtcov) -> None:
    state, g = isqrtcov
    assert int(g["iterN"]) == 5
    model = loaded(ISqrtCovResNet(), state, torch.float64)
    with torch.inference_mode():
        out = model.stages(inputs(g, torch.float64))
    assert out["reduced"].shape == (2, 256, 14, 14)  # layer4 keeps stride 1
    assert_allclose(out["reduced"].numpy(), g["reduced_float64"], rtol=1e-9, atol=1e-15)
    assert_allclose(out["cov"].numpy(), g["cov_float64"], rtol=1e-9, atol=1e-15)
    assert_allclose(out["vector"].numpy(), g["cov_vec_float64"], rtol=1e-9, atol=1e-15)
    assert_allclose(out["logits"].numpy(), g["out_float64"], rtol=1e-9, atol=1e-15)


def test_isqrtcov_is_the_five_step_iteration_with_official_centering(isqrtcov) -> None:
    """On the golden covariance: exactly 5 Newton-Schulz steps, not an exact square root, and the
    float32-built centering matrix (an exact float64 one is off by ~2e-5 relative)."""
    _, g = isqrtcov
    cov = torch.from_numpy(g["cov_float64"])
    want = g["cov_vec_float64"]
    assert_allclose(triu_vector(newton_schulz_sqrtm(cov, 5)).numpy(), want, rtol=1e-9, atol=1e-15)
    for steps in (4, 6):
        assert np.abs(triu_vector(newton_schulz_sqrtm(cov, steps)).numpy() - want).max() > 1e-4
    evals, evecs = torch.linalg.eigh(cov)
    exact = evecs @ torch.diag_embed(evals.clamp(min=0).sqrt()) @ evecs.transpose(1, 2)
    assert np.abs(triu_vector(exact).numpy() - want).max() > 1e-4
    reduced = torch.from_numpy(g["reduced_float64"])
    assert_allclose(covariance_pool(reduced).numpy(), g["cov_float64"], rtol=1e-9, atol=1e-15)
    centred = reduced.flatten(2) - reduced.flatten(2).mean(-1, keepdim=True)
    exact_cov = centred @ centred.transpose(1, 2) / centred.shape[-1]
    assert np.abs(exact_cov.numpy() - g["cov_float64"]).max() > 1e-9  # the float32 I_hat is visible
    vec = triu_vector(torch.arange(9.0).view(1, 3, 3))
    assert vec.tolist() == [[0.0, 1.0, 2.0, 4.0, 5.0, 8.0]]  # row-major upper triangle with the diagonal


def test_isqrtcov_float32_matches_official(isqrtcov) -> None:
    state, g = isqrtcov
    model = loaded(ISqrtCovResNet(), state, torch.float32)
    with torch.inference_mode():
        out = model.stages(inputs(g, torch.float32, slice(1, 2)))
    assert_allclose(out["vector"].numpy(), g["cov_vec_float32"][1:], rtol=0, atol=1e-5)
    assert_allclose(out["logits"].numpy(), g["out_float32"][1:], rtol=0, atol=1e-5)


def test_isqrtcov_converter_takes_every_official_layout_and_names_misfits(isqrtcov) -> None:
    state, _ = isqrtcov
    zoo = {k: v for k, v in state.items()}
    training = {"state_dict": {k.replace("features.", "features.module.", 1): v for k, v in zoo.items()},
                "epoch": 65, "arch": "mpncovresnet50", "best_prec1": 78.3, "optimizer": {}}
    finetuned = {re.sub(r"^representation\.conv_dr_block\.([01])\.", lambda m: f"features.{8 + int(m.group(1))}.",
                        k): v for k, v in zoo.items()}
    for layout in (zoo, training, {f"module.{k}": v for k, v in finetuned.items()}):
        converted = convert_isqrtcov(layout)
        assert list(converted) == list(zoo) and all(converted[k] is zoo[k] for k in zoo)
    broken = released_layout(zoo)
    broken.pop("layer_reduce.weight")
    broken["layer_reduce.bias"] = torch.zeros(256)
    with pytest.raises(WeightsError) as err:
        convert_isqrtcov(broken)
    assert "unknown: representation.conv_dr_block.0.bias" in str(err.value)
    assert "missing: representation.conv_dr_block.0.weight" in str(err.value)
    with pytest.raises(WeightsError, match="two keys map to 'classifier.weight'"):
        convert_isqrtcov({**released_layout(zoo), "classifier.weight": zoo["classifier.weight"]})


# --- AdderNet -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def addernet(zoo2: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    official = golden_state_dict(zoo2 / TABLES["addernet"])
    # the released models/ResNet20-AdderNet.pth is a DataParallel state dict
    return convert_addernet({f"module.{k}": v for k, v in official.items()}), golden(zoo2, "addernet")


def test_addernet_float64_adder_maps_and_logits_match_official(addernet) -> None:
    state, g = addernet
    model = loaded(AdderResNet20(), state, torch.float64)
    x = inputs(g, torch.float64)
    with torch.inference_mode():
        stem = torch.relu(model.bn1(model.conv1(x)))
        first = model.layer1[0].conv1(stem)
        down = model.layer3[0].downsample[0](model.layer2(model.layer1(stem)))
        pooled, logits = model.pooled(x), model(x)
    assert [m.last_path for m in model.adders()] == ["reference"] * 20  # 2 small images: 18 + 2 downsamples
    assert_allclose(first.numpy(), g["adder_l1_0_conv1_float64"], rtol=1e-10, atol=0)
    assert_allclose(down.numpy(), g["adder_l3_0_down_float64"], rtol=1e-10, atol=0)
    assert_allclose(pooled.numpy(), g["pooled_float64"], rtol=1e-10, atol=1e-10)
    assert_allclose(logits.numpy(), g["out_float64"], rtol=0, atol=1e-10)
    assert np.abs(g["out_float64"][0] - g["out_float64"][1]).max() > 1e-3  # input-dependent


def test_addernet_float32_matches_official_on_both_paths(addernet) -> None:
    state, g = addernet
    model = loaded(AdderResNet20(), state, torch.float32)
    x = inputs(g, torch.float32)
    with torch.inference_mode():
        reference = model(x)
        model.set_adder_path("lean", max_temp_bytes=50_000)  # row bands of one image
        bands = model(x)
        model.set_adder_path("lean", max_temp_bytes=1_000_000)  # whole images, several at a time
        groups = model(x)
    assert {m.last_path for m in model.adders()} == {"lean"}
    assert_allclose(reference.numpy(), g["out_float32"], rtol=0, atol=5e-6)
    assert torch.equal(bands, reference) and torch.equal(groups, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cin", "cout", "k", "stride", "pad", "size"),
                         [(3, 5, 3, 1, 1, (9, 7)), (4, 6, 3, 2, 1, (11, 8)), (6, 4, 1, 2, 0, (9, 9))])
def test_adder_lean_path_is_bit_identical_to_the_reference(dtype, cin, cout, k, stride, pad, size) -> None:
    gen = torch.Generator().manual_seed(cin * 100 + k)
    x = torch.randn(3, cin, *size, generator=gen, dtype=dtype)
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=dtype)
    reference = adder2d_reference(x, w, stride, pad)
    # the official definition, written out: zero padding, so padded positions contribute |w|
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    ho, wo = reference.shape[-2:]
    direct = torch.empty_like(reference)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            direct[:, :, i, j] = -(w[None] - patch[:, None]).abs().sum((2, 3, 4))
    assert_allclose(reference.numpy(), direct.numpy(), rtol=1e-6 if dtype == torch.float32 else 1e-12)
    for budget in (1, 400, 5_000, 10**9):  # single positions, row bands, image groups, everything
        assert torch.equal(adder2d_lean(x, w, stride, pad, max_temp_bytes=budget), reference)


def test_adder_layer_picks_the_lean_path_for_large_inputs_automatically() -> None:
    layer = Adder2d(16, 16, 3, 1, 1)
    small = torch.randn(2, 16, 32, 32)
    large = torch.randn(64, 16, 32, 32)  # the reference unfold: 144 x 65536 positions, 113 MB with float64
    with torch.inference_mode():
        small_out = layer(small)
        assert layer.last_path == "reference"
        lean = layer(large)
        assert layer.last_path == "lean"
        layer.path = "reference"
        assert torch.equal(lean, layer(large))
        assert torch.equal(small_out, adder2d_lean(small, layer.adder, 1, 1, max_temp_bytes=10_000))


def test_addernet_refuses_inputs_it_cannot_answer(addernet) -> None:
    state, _ = addernet
    model = loaded(AdderResNet20(), state, torch.float32)
    with pytest.raises(ValueError, match="32x32 inputs"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="float32 or float64"):
        model.bfloat16()(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16))


def test_addernet_converter_names_misfits(addernet) -> None:
    state, _ = addernet
    broken = {f"module.{k}": v for k, v in state.items() if k != "layer2.0.downsample.0.adder"}
    broken["module.layer2.0.downsample.0.weight"] = torch.zeros(32, 16, 1, 1)  # an ordinary conv's name
    with pytest.raises(WeightsError) as err:
        convert_addernet(broken)
    assert "unknown: layer2.0.downsample.0.weight" in str(err.value)
    assert "missing: layer2.0.downsample.0.adder" in str(err.value)


# --- BiT ----------------------------------------------------------------------------------------------
def as_npz(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as the official npz stores it: TF variable names, HWIO kernels."""
    return {npz_name(k): (v.permute(2, 3, 1, 0) if v.ndim == 4 else v).numpy() for k, v in state.items()}


@pytest.fixture(scope="module")
def bit(zoo2: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    official = golden_state_dict(zoo2 / TABLES["bit"])
    state = convert_bit(as_npz(official))  # through the npz mapping, with every official variable name
    assert all(torch.equal(state[k], official[k]) for k in official)
    return state, golden(zoo2, "bit")


def test_bit_float32_logits_and_pooled_features_match_official(bit) -> None:
    state, g = bit
    model = loaded(BiTResNetV2(), state, torch.float32)
    x = inputs(g, torch.float32)
    with torch.inference_mode():
        pooled = model.pooled(x)
        logits = model.head.conv(pooled[:, :, None, None])[:, :, 0, 0]
    assert logits.shape == (2, 21843)
    assert_allclose(pooled.numpy(), g["pooled_float32"], rtol=0, atol=5e-5)
    assert_allclose(logits.numpy(), g["out_float32"], rtol=0, atol=5e-5)


def test_bit_float64_matches_official_to_rtol_1e9(bit) -> None:
    """Only float64 resolves the standardisation eps (1e-10 vs 0 moves the logits by 4e-7); one sample."""
    state, g = bit
    model = loaded(BiTResNetV2(), state, torch.float64)
    with torch.inference_mode():
        logits = model(inputs(g, torch.float64, slice(0, 1)))
    assert_allclose(logits.numpy(), g["out_float64"][:1], rtol=1e-9, atol=1e-12)


def test_bit_weight_standardisation_is_biased_with_eps_1e10() -> None:
    conv = StdConv2d(3, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 6.0], [5.0, 5.0, 5.0]], dtype=torch.float64).view(2, 3, 1, 1))
        w = conv.standardized_weight().flatten(1)
    assert_allclose(w[0].numpy(), (np.array([1.0, 2.0, 6.0]) - 3.0) / np.sqrt(14.0 / 3.0 + 1e-10), rtol=1e-15)
    assert torch.equal(w[1], torch.zeros(3, dtype=torch.float64))  # zero variance: eps keeps it finite
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.inference_mode():  # serving: standardised once, reused, recomputed when the weight changes
        first = conv(x)
        assert conv._cache is not None and torch.equal(conv(x), first)
    conv.load_state_dict({"weight": conv.weight.detach().flip(1)})  # other values (scaling would not show)
    with torch.inference_mode():
        changed = conv(x)
    expected = torch.nn.functional.conv2d(x, conv.standardized_weight().detach())  # the per-call official way
    assert torch.equal(changed, expected) and not torch.equal(changed, first)
    assert conv(x).requires_grad  # with gradients the official per-call path runs (nothing cached)


def test_bit_npz_file_loads_through_read_checkpoint(tmp_path: Path) -> None:
    """A small synthetic npz (ResNetV2 with one unit per block, 10 classes) with the official names/shapes."""
    torch.manual_seed(0)
    small = BiTResNetV2(block_units=(1, 1, 1, 1), num_classes=10).eval()
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in small.state_dict().items()}
    arrays = as_npz(state)
    assert arrays["resnet/root_block/standardized_conv2d/kernel"].shape == (7, 7, 3, 64)
    assert arrays["resnet/block4/unit01/a/proj/standardized_conv2d/kernel"].shape == (1, 1, 1024, 2048)
    assert arrays["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 10)
    assert arrays["resnet/block2/unit01/c/group_norm/gamma"].shape == (128,)
    path = tmp_path / "BiT-small.npz"
    np.savez(path, **arrays)
    loaded_small = BiTResNetV2(block_units=(1, 1, 1, 1), num_classes=10).eval()
    load_strict(loaded_small, npz_to_state_dict(read_checkpoint(path), tuple(state), "small BiT"))
    assert all(torch.equal(loaded_small.state_dict()[k], state[k]) for k in state)
    x = torch.randn(1, 3, 64, 64)
    small.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(loaded_small(x), small(x))


def test_bit_npz_misfits_fail_loudly(bit, tmp_path: Path) -> None:
    state, _ = bit
    arrays = as_npz(state)
    arrays.pop("resnet/head/conv2d/bias")
    arrays["resnet/pre_logits/kernel"] = np.zeros(1, np.float32)
    with pytest.raises(WeightsError, match="1 unknown: resnet/pre_logits/kernel; 1 missing: resnet/head/conv2d/bias"):
        convert_bit(arrays)
    shallower = as_npz({k: v for k, v in state.items() if not k.startswith("body.block4.unit03")})
    with pytest.raises(WeightsError, match="9 missing: resnet/block4/unit03/a/group_norm/beta"):
        convert_bit(shallower)
    finetuned = as_npz({k: v for k, v in state.items() if not k.startswith("head.conv")})  # an ILSVRC2012 head
    finetuned["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 2048, 1000), np.float32)
    finetuned["resnet/head/conv2d/bias"] = np.zeros(1000, np.float32)
    path = tmp_path / "BiT-M-R50x1-ILSVRC2012.npz"
    np.savez(path, **finetuned)
    weights, label = resolve_weights(get_entry("bit_m_r50x1"), weights_path=path)  # the entry's own converter
    assert label.kind == "local-file" and weights["root.conv.weight"].shape == (64, 3, 7, 7)
    with torch.device("meta"):
        model = get_entry("bit_m_r50x1").build()
    with pytest.raises(WeightsError, match=r"head.conv.weight \(1000, 2048, 1, 1\)!=\(21843, 2048, 1, 1\)"):
        load_strict(model, weights)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(WeightsError, match="cannot read npz checkpoint"):
        read_checkpoint(tmp_path / "broken.npz")


# --- Patch-Forensics ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "table", "grid"), [("block2", "patchforensics", 37),
                                                      ("block3", "patchforensics_block3", 19)])
def test_patchforensics_float32_patch_logits_and_fake_probability_match_official(zoo2, layer, table, grid) -> None:
    g = golden(zoo2, table)
    official = golden_state_dict(zoo2 / TABLES[table])
    checkpoint = {"state_dict": official, "optimizer": {}, "scheduler": {}, "epoch": 40, "best_val_metric": 0.9,
                  "best_val_ep": 39}  # base_model.save_networks
    convert = convert_block2 if layer == "block2" else convert_block3
    model = loaded(PatchXception(layer), convert(checkpoint), torch.float32)
    with torch.inference_mode():
        logits = model(inputs(g, torch.float32))
    assert logits.shape == (2, 2, grid, grid)
    assert_allclose(logits.numpy(), g["out_float32"], rtol=0, atol=1e-6)
    assert_allclose(patch_probabilities(logits).numpy(), g["patch_prob_float64"], rtol=0, atol=1e-6)
    assert_allclose(fake_probability(logits).numpy(), g["avg_prob_float64"][:, 0], rtol=0, atol=1e-6)
    spread = np.abs(g["out_float64"][0] - g["out_float64"][1]).max()
    assert spread > 50 * 1e-6  # the comparison tells the two images apart


def test_patchforensics_converters_refuse_the_other_cut(zoo2: Path) -> None:
    block3 = {e["key"]: torch.zeros(1) for e in json.loads((zoo2 / TABLES["patchforensics_block3"]).read_text())
              ["keys"]}
    with pytest.raises(WeightsError, match=r"20 unknown: block3\.rep\.1\.conv1\.weight"):
        convert_block2({"state_dict": block3, "epoch": 1})
    block2 = {k: v for k, v in block3.items() if not k.startswith("block3.")}
    with pytest.raises(WeightsError, match=r"missing: block3\."):
        convert_block3(block2)


def test_patchforensics_overlay_covers_the_crop_the_model_saw() -> None:
    pre = Preprocess.from_config(get_entry("patchforensics_block2").config["preprocess"])
    assert crop_box_in_input(299, 598, pre) == (0.0, 150.0, 299.0, 449.0)  # no resize, centre 299 rows
    left, top, right, bottom = crop_box_in_input(400, 200, pre)  # resized to 598x299, then cropped
    assert (top, bottom) == (0.0, 200.0) and right - left == pytest.approx(299 * 400 / 598)
    assert (left + right) / 2 == pytest.approx(200, abs=1)
    img = Image.new("RGB", (400, 200), (200, 200, 200))
    heat = np.zeros((37, 37))
    heat[:, 19:] = 1.0  # right half of the patches fake
    png = render_overlay(img, heat, (left, top, right, bottom))
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert out.shape == (200, 400, 3)
    assert_array_equal(out[100, 10], [100, 100, 100])  # outside the crop: dimmed only (image * 0.5)
    assert_array_equal(out[100, 390], [100, 100, 100])
    assert_array_equal(out[100, 120], [100, 100, 138])  # P(fake) 0: jet blue * 0.3 over image * 0.5
    assert_array_equal(out[100, 280], [138, 100, 100])  # P(fake) 1: jet red


# --- the classification entries under the generic handler ---------------------------------------------
def test_classification_entries_work_with_the_generic_handler() -> None:
    from handlers.classify_handler import ClassifyHandler
    from handlers.codec import RequestError

    def handler_for(name: str) -> ClassifyHandler:
        handler = ClassifyHandler()
        handler.entry, handler.device, handler.meta = get_entry(name), torch.device("cpu"), {"weights": {}}
        return handler

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    adder = handler_for("addernet_resnet20")
    torch.manual_seed(0)
    adder.model = adder.entry.build().eval()
    item = adder.decode({"body": buf.getvalue(), "top_k": "3"}, 0)
    assert item.pixels.shape == (32, 32, 3)
    with torch.inference_mode():
        answer = adder.encode(adder.predict(adder.batch([item])), [item])[0]
    assert [p["label"] for p in answer["top_k"]][0] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                        "frog", "horse", "ship", "truck")
    assert len(answer["top_k"]) == 3
    bit = handler_for("bit_m_r50x1")
    assert bit.decode({"body": buf.getvalue(), "top_k": "21843"}, 0).pixels.shape == (224, 224, 3)
    with pytest.raises(RequestError, match="'top_k' must be between 1 and 21843"):
        bit.decode({"body": buf.getvalue(), "top_k": "21844"}, 0)
