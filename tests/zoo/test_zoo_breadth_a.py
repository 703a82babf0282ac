"""AutoFormer, MutualNet and DGC against the official implementations' golden outputs (tests/data/golden/zoo2,
README_autoformer_mutualnet_dgc.md), plus their checkpoint converters, entries and preprocessing.

Float64 comparisons use the README's rtol 1e-9 / atol 1e-12; float32 ones atol 1e-6 on logits. To stay fast
on two CPU cores, every model runs the cheapest configuration in float64 and the others in float32.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo.autoformer import SUBNETS, AutoFormerSupernet, SubnetConfig
from zoo.autoformer import convert_checkpoint as convert_autoformer
from zoo.autoformer import zoo_keys as autoformer_keys
from zoo.classify import Preprocess, knob_settings, knob_specs, normalize_u8
from zoo.dgc import DGCResNet
from zoo.dgc import convert_checkpoint as convert_dgc
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD
from zoo.mutualnet import MutualNetMobileNetV2, slim_channels
from zoo.mutualnet import convert_checkpoint as convert_mutualnet
from zoo.weights import WeightsError, load_strict, resolve_weights

F64 = {"rtol": 1e-9, "atol": 1e-12}
F32 = {"rtol": 0, "atol": 1e-6}
TABLES = {
    "autoformer": "autoformer_supernetB_state_dict_keys.json",
    "mutualnet": "mutualnet_mbv2_state_dict_keys.json",
    "dgc": "dgc_dyresnet18_state_dict_keys.json",
}
ENTRIES = ("autoformer_supernet_b", "mutualnet_mbv2", "dgc_resnet18")


@pytest.fixture(scope="module")
def zoo2(golden_dir: Path) -> Path:
    path = golden_dir / "zoo2"
    if not (path / TABLES["dgc"]).is_file():
        pytest.skip(f"zoo2 golden data not found under {path}")
    return path


def golden(zoo2: Path, model: str) -> dict[str, np.ndarray]:
    with np.load(zoo2 / f"{model}_golden.npz") as data:
        return dict(data)


def key_table(zoo2: Path, model: str) -> dict[str, tuple[int, ...]]:
    return {e["key"]: tuple(e["shape"]) for e in json.loads((zoo2 / TABLES[model]).read_text())["keys"]}


def inputs(g: dict[str, np.ndarray], dtype: torch.dtype, rows: slice = slice(None)) -> torch.Tensor:
    """The golden 224 crops normalised as README section 4 (ToTensor + Normalize, in the run dtype)."""
    assert_array_equal(g["imagenet_mean"], IMAGENET_MEAN)
    assert_array_equal(g["imagenet_std"], IMAGENET_STD)
    return normalize_u8(torch.from_numpy(g["images_u8"][rows]), IMAGENET_MEAN, IMAGENET_STD, dtype)


def loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    load_strict(model, state, "golden weights")
    return model.to(dtype).eval()


# --- layouts and entries ------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "factory"), [("autoformer", AutoFormerSupernet), ("mutualnet", MutualNetMobileNetV2),
                                                ("dgc", DGCResNet)])
def test_zoo_modules_have_the_official_keys_and_shapes(zoo2: Path, model: str, factory) -> None:
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in factory().state_dict().items()}
    assert ours == key_table(zoo2, model)


@pytest.mark.parametrize("name", ENTRIES)
def test_entries_are_opt_in_classifiers_whose_knobs_the_model_takes(name: str) -> None:
    entry = get_entry(name)
    assert entry.task == "image-classification" and not entry.default_serve
    assert entry.handler == "handlers.classify_handler"
    assert entry.weights.converter == f"zoo.{name.split('_')[0]}:convert_checkpoint"
    assert name not in {e.name for e in list_models(default_only=True)}
    specs = knob_specs(entry.config)
    params = inspect.signature(entry.builder.args[0].forward).parameters
    for knob in specs.values():  # every declared knob is a forward() keyword with the same default
        assert params[knob.name].default == knob.default
    assert len(knob_settings(specs)) == {"autoformer_supernet_b": 3, "mutualnet_mbv2": 12, "dgc_resnet18": 1}[name]
    Preprocess.from_config(entry.config["preprocess"])


# --- AutoFormer ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def autoformer(zoo2: Path) -> tuple[AutoFormerSupernet, dict[str, np.ndarray]]:
    state = convert_autoformer({"model": golden_state_dict(zoo2 / TABLES["autoformer"]), "epoch": 499})
    return loaded(AutoFormerSupernet(), state, torch.float32), golden(zoo2, "autoformer")


def test_autoformer_subnets_have_the_published_sizes(zoo2: Path) -> None:
    g = golden(zoo2, "autoformer")
    with torch.device("meta"):
        model = AutoFormerSupernet()
    for name, tag in (("tiny", "T"), ("small", "S"), ("base", "B"), ("max", "supernet_max")):
        assert model.sampled_params(name) == int(g[f"sampled_params_{tag}"])
    configs = json.loads(str(g["configs_json"]))
    for name, tag in (("tiny", "T"), ("small", "S"), ("base", "B")):
        cfg = configs[tag]
        assert SUBNETS[name].layer_num == cfg["layer_num"] and [SUBNETS[name].embed_dim] * cfg["layer_num"] == \
            cfg["embed_dim"]
        assert list(SUBNETS[name].num_heads) == cfg["num_heads"] and list(SUBNETS[name].mlp_ratio) == cfg["mlp_ratio"]


def test_autoformer_tiny_float64_matches_official(autoformer) -> None:
    model, g = autoformer
    model64 = AutoFormerSupernet()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    x = inputs(g, torch.float64)
    with torch.inference_mode():
        feat = model64.features(x, "tiny")
        logits = model64(x, "tiny")
    # our GELU is the official float32 round trip, so the reference is the official float64 run
    assert_allclose(feat.numpy(), g["feat_T_float64"], **F64)
    assert_allclose(logits.numpy(), g["logits_T_float64"], **F64)


@pytest.mark.parametrize(("subnet", "tag", "rows"), [("small", "S", slice(1, 2)), ("base", "B", slice(None))])
def test_autoformer_float32_subnets_from_the_same_weights_match_official(autoformer, subnet, tag, rows) -> None:
    model, g = autoformer
    with torch.inference_mode():
        logits = model(inputs(g, torch.float32, rows), subnet)
    assert_allclose(logits.numpy(), g[f"logits_{tag}_float32"][rows], **F32)
    assert logits.shape[-1] == 1000


def test_autoformer_rejects_what_the_supernet_cannot_run(autoformer) -> None:
    model, _ = autoformer
    with pytest.raises(ValueError, match="unknown AutoFormer subnet 'huge'"):
        model(torch.zeros(1, 3, 224, 224), "huge")
    with pytest.raises(ValueError, match="224x224"):
        model(torch.zeros(1, 3, 160, 160), "tiny")
    with pytest.raises(ValueError, match="does not fit"):
        model.resolve(SubnetConfig(704, (3,), (4.0,)))


# --- MutualNet ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mutualnet(zoo2: Path) -> tuple[MutualNetMobileNetV2, dict[str, np.ndarray]]:
    official = golden_state_dict(zoo2 / TABLES["mutualnet"])
    checkpoint = {"model": {f"module.{k}": v for k, v in official.items()}, "last_epoch": 249}  # train.py layout
    return loaded(MutualNetMobileNetV2(), convert_mutualnet(checkpoint), torch.float32), golden(zoo2, "mutualnet")


def test_mutualnet_float32_every_width_and_resolution_matches_official(mutualnet) -> None:
    model, g = mutualnet
    assert list(g["widths"]) == [1.0, 0.9, 0.7] and list(g["resolutions"]) == [224, 160]
    x = inputs(g, torch.float32)
    with torch.inference_mode():
        for width in (1.0, 0.9, 0.7):
            for resolution in (224, 160):
                tag = f"w{width}_r{resolution}_float32"
                feat = model.features_of(x, width, resolution)
                assert_allclose(feat.numpy(), g[f"feat_{tag}"], **F32)
                assert_allclose(model.classifier(feat).numpy(), g[f"logits_{tag}"], **F32)


def test_mutualnet_float64_stem_and_first_block_carry_the_input_signal(mutualnet) -> None:
    """The logits of the public weights no longer depend on the image (README section 6); the stem and the
    first block do, so they test normalisation, the resolution switch and per-width BatchNorm."""
    model, g = mutualnet
    model64 = MutualNetMobileNetV2()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    with torch.inference_mode():
        outs = model64.stages(inputs(g, torch.float64), 0.7, 160)
        logits = model64.classifier(outs[-1].flatten(1))
    stem, block1 = outs[1], outs[2]
    assert stem.shape == (2, slim_channels(32, 0.7), 80, 80) == (2, 24, 80, 80)
    assert_allclose(stem.numpy(), g["stem_out_w0.7_r160_float64"], **F64)
    assert_allclose(block1.numpy(), g["block1_out_w0.7_r160_float64"], **F64)
    assert_allclose(outs[-1].flatten(1).numpy(), g["feat_w0.7_r160_float64"], **F64)
    assert_allclose(logits.numpy(), g["logits_w0.7_r160_float64"], **F64)


def test_mutualnet_only_serves_widths_with_batchnorm_statistics(mutualnet) -> None:
    model, _ = mutualnet
    with pytest.raises(ValueError, match=r"width must be one of \(0.7, 0.9, 1.0\)"):
        model(torch.zeros(1, 3, 224, 224), width=0.8)  # the official code fails here too


# --- DGC ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dgc(zoo2: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    official = golden_state_dict(zoo2 / TABLES["dgc"])
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 119, "best_prec1": 0.0}
    return convert_dgc(checkpoint), golden(zoo2, "dgc")


def test_dgc_float64_logits_lasso_saliency_and_gates_match_official(dgc) -> None:
    state, g = dgc
    model = loaded(DGCResNet(), state, torch.float64)
    with torch.inference_mode():
        logits, feat, trace = model.forward_details(inputs(g, torch.float64))
    assert [t.name for t in trace] == list(g["dgc_layer_order"])
    assert_allclose(logits.numpy(), g["logits_float64"], **F64)
    assert_allclose(feat.numpy(), g["feat_float64"], **F64)
    assert_allclose(torch.stack([t.lasso for t in trace]).numpy(), g["lasso_float64"], **F64)
    for t, k in zip(trace, g["inactive_channels"], strict=True):
        assert_allclose(t.saliency.numpy(), g[f"saliency_float64__{t.name}"], **F64)
        assert_allclose(t.gate.numpy(), g[f"gate_float64__{t.name}"], **F64)
        assert_array_equal(t.gate.numpy() != 0, g[f"selected__{t.name}"])
        assert (t.gate == 0).sum(-1).min() >= k  # each head drops at least its k channels
    assert sum(int((a.gate[0] != 0).ne(a.gate[1] != 0).sum()) for a in trace) == 436  # input-dependent


def test_dgc_float32_selects_the_same_channels(dgc) -> None:
    state, g = dgc
    model = loaded(DGCResNet(), state, torch.float32)
    with torch.inference_mode():
        logits, _, trace = model.forward_details(inputs(g, torch.float32))
        plain = model(inputs(g, torch.float32))
    assert_allclose(logits.numpy(), g["logits_float32"], **F32)
    assert torch.equal(plain, logits)
    for t in trace:
        assert_array_equal(t.gate.numpy() != 0, g[f"selected__{t.name}"])


def test_dgc_pruning_counts_come_from_the_checkpoint(dgc) -> None:
    state, g = dgc
    with torch.device("meta"):
        names = [n for n, m in DGCResNet().named_modules() if type(m).__name__ == "DynamicGroupConv"]
    stored = [int(state[f"{n}._inactive_channels"][0]) for n in names]
    assert stored == list(g["inactive_channels"])  # 35/70/141/282 = round(C_in * (1 - 0.45))
    fresh = DGCResNet().state_dict()
    assert [int(fresh[f"{n}._inactive_channels"][0]) for n in names] == stored


# --- converters fail loudly -------------------------------------------------------------------------
def test_converters_name_unknown_missing_and_non_tensor_entries(zoo2: Path) -> None:
    keys = autoformer_keys()
    fake = {k: torch.zeros(1) for k in keys}  # names only: shapes are load_strict's job
    assert list(convert_autoformer({"model": {f"module.{k}": v for k, v in fake.items()}})) == list(keys)
    broken = dict(fake)
    broken.pop("blocks.3.attn.qkv.weight")
    broken["blocks.3.attn.qkv_super.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        convert_autoformer({"model": broken})
    message = str(err.value)
    assert "1 unknown: blocks.3.attn.qkv_super.weight" in message and "1 missing: blocks.3.attn.qkv.weight" in message
    with pytest.raises(WeightsError, match="non-tensor entries: epoch"):
        convert_autoformer({**fake, "epoch": 3})
    no_stats = {k: v for k, v in key_table(zoo2, "mutualnet").items() if ".bn." not in k}
    with pytest.raises(WeightsError, match=r"missing: features\.0\.1\.bn\.0\.num_batches_tracked"):
        convert_mutualnet({"model": {k: torch.zeros(1) for k in no_stats}})
    dgc_keys = [k for k in key_table(zoo2, "dgc") if not k.endswith("_inactive_channels")]
    with pytest.raises(WeightsError, match="19 missing: layer1.0.conv1._inactive_channels"):
        convert_dgc({"state_dict": {k: torch.zeros(1) for k in dgc_keys}})


def test_wrong_shapes_fail_in_load_strict(dgc) -> None:
    state, _ = dgc
    bad = dict(state)
    bad["fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(WeightsError, match=r"fc.weight \(10, 512\)!=\(1000, 512\)"):
        load_strict(DGCResNet(), bad)


def test_official_checkpoint_file_resolves_through_the_entry(mutualnet, tmp_path: Path) -> None:
    model, _ = mutualnet
    path = tmp_path / "mutualnet_mbv2.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": {},
                "last_epoch": 249}, path)
    state, label = resolve_weights(get_entry("mutualnet_mbv2"), weights_path=path)
    assert label.kind == "local-file"
    fresh = get_entry("mutualnet_mbv2").build()
    load_strict(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(),
                                                    strict=True))


# --- preprocessing --------------------------------------------------------------------------------------
def test_preprocess_is_resize_short_side_then_centre_crop() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    pre = Preprocess.from_config(get_entry("autoformer_supernet_b").config["preprocess"])
    expected = img.resize((384, 256), Image.Resampling.BICUBIC).crop((80, 16, 304, 240))
    assert_array_equal(pre.image(img), np.asarray(expected))
    bilinear = Preprocess.from_config(get_entry("dgc_resnet18").config["preprocess"])
    square = img.crop((0, 0, 256, 256))  # already 256: no resize, only the crop
    assert_array_equal(bilinear.image(square), np.asarray(square)[16:240, 16:240])
    x = bilinear.normalize(torch.from_numpy(bilinear.image(square).copy()[None]))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
