"""FTCN+TT against the official implementation's golden outputs (tests/data/golden, README sections 3 and 5).

The official weights are not stored; they are regenerated from the key table with the seeded recipe, every
tensor checked against its recorded checksum, then loaded through the official-checkpoint converter. The
full model is expensive on CPU, so the float64 run (clip and its time-reversed copy as one batch of 2) and
the float32 run happen once per module and are shared by the assertions.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from zoo import get_entry
from zoo.ftcn import (
    CLIP_LEN,
    CLIP_SIZE,
    DEFAULT_CONFIG,
    FTCN,
    MEAN_255,
    STD_255,
    convert_checkpoint,
    normalize_clips,
    parameter_count,
)
from zoo.weights import WeightsError, convert_to_zoo, load_strict

BUFFER_KINDS = {"int_keep", "bn_running_mean", "bn_running_var"}


def _draw(kind: str, shape: list[int]) -> torch.Tensor:
    if kind in ("normal_0.02", "embedding_0.02"):
        return torch.randn(shape) * 0.02
    if kind in ("bn_weight", "ln_weight"):
        return 1 + 0.1 * torch.randn(shape)
    if kind in ("bn_bias", "ln_bias", "bn_running_mean"):
        return 0.1 * torch.randn(shape)
    if kind == "bn_running_var":
        return 1 + 0.5 * torch.rand(shape)
    raise AssertionError(f"unknown kind {kind}")


@pytest.fixture(scope="module")
def key_table(golden_dir) -> dict:
    return json.loads((golden_dir / "ftcn_state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def golden(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "ftcn_golden.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def official_state(key_table) -> dict[str, torch.Tensor]:
    """The official I3D8x8 state dict, regenerated (README section 3) and checked tensor by tensor."""
    seed = key_table["seed"]
    assert seed == 2000 and key_table["n_keys"] == len(key_table["keys"]) == 275
    state = {}
    with torch.random.fork_rng():
        for entry in key_table["keys"]:
            if entry["kind"] == "int_keep":
                state[entry["key"]] = torch.tensor(entry["value"], dtype=torch.int64)
                continue
            torch.manual_seed(seed + entry["index"])
            t = _draw(entry["kind"], entry["shape"])
            assert t.dtype == torch.float32 and list(t.shape) == entry["shape"], entry["key"]
            assert t.flatten()[:3].tolist() == entry["check_first"], entry["key"]
            check_sum = pytest.approx(entry["check_sum"], rel=1e-12, abs=1e-12)
            assert t.double().sum().item() == check_sum, entry["key"]
            state[entry["key"]] = t
    assert [e["key"] for e in key_table["keys"]] == sorted(state)
    return state


@pytest.fixture(scope="module")
def model(official_state) -> FTCN:
    m = FTCN()
    load_strict(m, convert_checkpoint(official_state), "regenerated official FTCN weights")
    return m.eval()


@pytest.fixture(scope="module")
def clip(golden) -> torch.Tensor:
    return torch.from_numpy(golden["clip_u8"]).unsqueeze(0)  # (1, 32, 224, 224, 3) uint8


@pytest.fixture(scope="module")
def run64(model, clip):
    """One float64 forward of [clip, time-reversed clip] (a batch of 2): (logits (2,), tokens (2,16,1024))."""
    m64 = FTCN().double().eval()
    m64.load_state_dict(model.state_dict())
    x = normalize_clips(torch.cat([clip, clip.flip(1)]), torch.float64)
    with torch.inference_mode():
        logits, tokens = m64(x, return_tokens=True)
    return logits, tokens


@pytest.fixture(scope="module")
def run32(model, clip) -> torch.Tensor:
    with torch.inference_mode():
        return model(normalize_clips(clip))


# --- weights / layout ------------------------------------------------------------------------------
def test_state_dict_layout_matches_official_key_table(key_table):
    ours = {k: list(v.shape) for k, v in FTCN().state_dict().items()}
    official = {e["key"]: e["shape"] for e in key_table["keys"]}
    assert ours == official


def test_parameter_count_matches_key_table(key_table):
    expected = sum(math.prod(e["shape"]) for e in key_table["keys"] if e["kind"] not in BUFFER_KINDS)
    assert expected == 14_765_889
    assert sum(p.numel() for p in FTCN().parameters()) == expected
    assert parameter_count() == expected


# --- parity with the official model ----------------------------------------------------------------
def test_normalisation_constants_and_layouts(golden, clip):
    np.testing.assert_array_equal(np.array(MEAN_255), golden["mean_255"])
    np.testing.assert_array_equal(np.array(STD_255), golden["std_255"])
    small = clip[:, :2, :8, :8]  # (1, 2, 8, 8, 3)
    last = normalize_clips(small, torch.float64)
    first = normalize_clips(small.permute(0, 4, 1, 2, 3), torch.float64)
    assert last.shape == (1, 3, 2, 8, 8) and torch.equal(last, first)
    ref = (small.double().permute(0, 4, 1, 2, 3) - torch.tensor(golden["mean_255"]).view(1, 3, 1, 1, 1)) / (
        torch.tensor(golden["std_255"]).view(1, 3, 1, 1, 1)
    )
    assert torch.equal(last, ref)


def test_float64_head_tokens_match_golden(run64, golden):
    _, tokens = run64
    np.testing.assert_allclose(tokens[:1].numpy(), golden["head_tokens_float64"], rtol=1e-9, atol=1e-12)


def test_float64_logit_and_output_match_golden(run64, golden):
    logits, _ = run64
    assert logits.shape == (2,) and logits.dtype == torch.float64
    np.testing.assert_allclose(logits[0].item(), golden["logit_float64"].item(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        torch.sigmoid(logits[0]).item(), golden["out_float64"].item(), rtol=1e-9, atol=1e-12
    )


def test_float64_time_reversed_clip_matches_golden(run64, golden):
    logits, _ = run64
    # Reversal moves the logit by only ~4.7e-6, so the tolerance must sit far below that.
    assert abs(golden["logit_reversed_float64"].item() - golden["logit_float64"].item()) > 1e-6
    np.testing.assert_allclose(
        logits[1].item(), golden["logit_reversed_float64"].item(), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        torch.sigmoid(logits[1]).item(), golden["out_reversed_float64"].item(), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        (logits[1] - logits[0]).item(),
        golden["logit_reversed_float64"].item() - golden["logit_float64"].item(),
        rtol=1e-6, atol=1e-12,
    )


def test_float32_matches_golden(run32, golden):
    assert run32.shape == (1,) and run32.dtype == torch.float32
    assert abs(run32.item() - golden["logit_float32"].item()) <= 1e-6
    assert abs(torch.sigmoid(run32).item() - golden["out_float32"].item()) <= 1e-6
    assert abs(run32.item() - golden["logit_float64"].item()) <= 1e-6


# --- input validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ((1, 3, 16, CLIP_SIZE, CLIP_SIZE), "T must be 32"),
        ((1, 3, CLIP_LEN, 112, 112), "224x224"),
        ((1, CLIP_LEN, CLIP_SIZE, CLIP_SIZE, 3), "RGB channels"),
        ((3, CLIP_LEN, CLIP_SIZE, CLIP_SIZE), "5-D"),
    ],
)
def test_wrong_clip_shape_raises_clear_value_error(model, shape, needle):
    with pytest.raises(ValueError, match=needle) as info:
        model(torch.zeros(shape))
    assert "(B, 3, 32, 224, 224)" in str(info.value)


def test_normalize_clips_rejects_bad_layouts():
    with pytest.raises(ValueError, match="5-D"):
        normalize_clips(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 RGB channels"):
        normalize_clips(torch.zeros(1, 4, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="ambiguous"):
        normalize_clips(torch.zeros(1, 3, 2, 8, 3, dtype=torch.uint8))


# --- checkpoint converter --------------------------------------------------------------------------
def _loads_into_fresh_model(state: dict, reference: dict[str, torch.Tensor]) -> None:
    m = FTCN()
    load_strict(m, convert_checkpoint(state), "test checkpoint")
    loaded = m.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())


@pytest.mark.parametrize(
    "layout", ["flat", "module", "wrapped_model", "wrapped_state_dict_module", "classifier", "classifier_ddp"]
)
def test_converter_accepts_official_layouts(official_state, layout):
    s = official_state
    variants = {
        "flat": s,
        "module": {f"module.{k}": v for k, v in s.items()},
        "wrapped_model": {"model": s, "epoch": 7},
        "wrapped_state_dict_module": {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        # Classifier.state_dict(): the same module under `network.` and its alias `_warped_network.`
        "classifier": {
            **{f"network.{k}": v for k, v in s.items()},
            **{f"_warped_network.{k}": v for k, v in s.items()},
        },
        "classifier_ddp": {
            **{f"network.{k}": v for k, v in s.items()},
            **{f"_warped_network.module.{k}": v for k, v in s.items()},
        },
    }
    _loads_into_fresh_model(variants[layout], s)


def test_converter_via_registry_entry(official_state):
    entry = get_entry("ftcn_tt")
    converted = convert_to_zoo(entry, {f"module.{k}": v for k, v in official_state.items()})
    assert set(converted) == set(official_state)


def test_converter_fills_only_missing_bn_counters(official_state):
    state = {k: v for k, v in official_state.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 275 - 43
    converted = convert_checkpoint(state)
    assert set(converted) == set(official_state)


def test_missing_key_fails_naming_it(official_state):
    key = "resnet.s3.pathway0_res0.branch2.b_bn.0.running_var"
    state = {k: v for k, v in official_state.items() if k != key}
    with pytest.raises(WeightsError, match="1 missing: " + key.replace(".", r"\.")):
        load_strict(FTCN(), convert_checkpoint(state))


def test_unknown_key_fails_naming_it(official_state):
    # e.g. a checkpoint that still has res5 (stop_point 6) or an unwrapped BN where a pooled one belongs
    state = {**official_state, "resnet.s5.pathway0_res0.branch1.weight": torch.zeros(2048, 1024, 1, 1, 1)}
    pooled_bn = "resnet.s3.pathway0_res0.branch1_bn.0.weight"
    state["resnet.s3.pathway0_res0.branch1_bn.weight"] = state.pop(pooled_bn)
    with pytest.raises(WeightsError) as info:
        load_strict(FTCN(), convert_checkpoint(state))
    msg = str(info.value)
    assert "resnet.s5.pathway0_res0.branch1.weight" in msg
    assert "resnet.s3.pathway0_res0.branch1_bn.weight" in msg
    assert "missing: resnet.s3.pathway0_res0.branch1_bn.0.weight" in msg


def test_shape_mismatch_fails_naming_it(official_state):
    state = dict(official_state)
    state["resnet.head.time_T.pos_embedding"] = torch.zeros(1, 9, 1024)  # a 16-frame model's embedding
    with pytest.raises(WeightsError, match=r"resnet\.head\.time_T\.pos_embedding \(1, 9, 1024\)"):
        load_strict(FTCN(), convert_checkpoint(state))


def test_converter_rejects_conflicting_duplicates_and_non_tensors(official_state):
    key = "resnet.head.time_T.cls_token"
    bad = {f"network.{k}": v for k, v in official_state.items()}
    bad[f"_warped_network.{key}"] = torch.zeros(1, 1, 1024)
    with pytest.raises(WeightsError, match="two different tensors"):
        convert_checkpoint(bad)
    with pytest.raises(WeightsError, match="non-tensor entries: epoch"):
        convert_checkpoint({**official_state, "epoch": 3})
    with pytest.raises(WeightsError, match="no tensors"):
        convert_checkpoint({"optimizer": {"lr": 0.1}})


# --- registry --------------------------------------------------------------------------------------
def test_registry_entry():
    entry = get_entry("ftcn_tt")
    assert entry.task == "deepfake-detection"
    assert entry.handler == "handlers.ftcn_handler"
    assert entry.paper == "https://arxiv.org/abs/2108.06693"
    assert entry.weights.converter == "zoo.ftcn:convert_checkpoint"
    assert entry.weights.hf_repo is None
    assert entry.weights.upstream_url.endswith("/yinglinzheng/FTCN/releases/download/weights/ftcn_tt.pth")
    assert (entry.serving.batch_size, entry.serving.max_batch_delay_ms, entry.serving.response_timeout_s) == (
        4, 50, 600,
    )
    assert entry.default_serve
    assert entry.config == DEFAULT_CONFIG
    json.dumps(entry.summary())  # archived as JSON
    built = entry.build()
    assert isinstance(built, FTCN) and built.config == DEFAULT_CONFIG
    with pytest.raises(TypeError, match="unknown FTCN config keys: bogus"):
        entry.build(bogus=1)
