"""CKDN against the official code's golden outputs, checkpoint layouts and evaluation preprocessing."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo.ckdn import (
    CKDN,
    center_crop_box,
    convert_checkpoint,
    normalize,
    pair_batch_to_inputs,
    preprocess_pair,
    resized_size,
    training_only_keys,
    zoo_keys,
)
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD
from zoo.weights import WeightsError, load_strict, resolve_weights

F64 = {"rtol": 1e-9, "atol": 1e-12}  # float64 vs the official float64 run (README section 7)


@pytest.fixture(scope="module")
def official_state(golden_dir: Path) -> dict[str, torch.Tensor]:
    """The official ResNet's 290 tensors, rebuilt bit for bit from the seeded recipe."""
    return golden_state_dict(golden_dir / "ckdn_state_dict_keys.json")


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "ckdn_golden.npz") as data:
        return dict(data)


def load_model(state: dict[str, torch.Tensor], dtype: torch.dtype) -> CKDN:
    model = CKDN()
    load_strict(model, convert_checkpoint(state), "golden CKDN weights")
    return model.to(dtype).eval()


def golden_inputs(golden: dict[str, np.ndarray], dtype: torch.dtype) -> list[torch.Tensor]:
    """rest1, dist1, rest2, ref1 as [2, 3, 288, 288], normalised as the official prefetcher."""
    images = torch.from_numpy(golden["images_u8"]).permute(0, 1, 4, 2, 3)  # [2, 4, 3, H, W]
    return list(normalize(images, dtype).unbind(1))


@pytest.fixture(scope="module")
def model64(official_state: dict[str, torch.Tensor]) -> CKDN:
    return load_model(official_state, torch.float64)


@pytest.fixture(scope="module")
def inputs64(golden: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return golden_inputs(golden, torch.float64)


# --- weights ---------------------------------------------------------------------------------------
def test_official_keys_split_into_inference_and_training_only(official_state) -> None:
    assert len(official_state) == 290
    dropped = training_only_keys()
    assert dropped == {k for k in official_state if k.startswith(("aux_csp.", "fc1_."))}
    assert len(dropped) == 84
    model_state = CKDN().state_dict()
    assert sorted(model_state) == sorted(set(official_state) - dropped) == sorted(zoo_keys())
    for key, tensor in model_state.items():
        assert tuple(tensor.shape) == tuple(official_state[key].shape), key


def test_official_timm_checkpoint_loads(official_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """model_best.pth.tar as timm's CheckpointSaver writes it: args, optimiser, EMA, `module.` prefixes."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    optimizer.step()
    for prefix in ("module.", "module.module."):
        path = tmp_path / f"{prefix.count('.')}" / "model_best.pth.tar"
        path.parent.mkdir()
        torch.save({
            "epoch": 7, "arch": "resnet", "version": 2, "metric": torch.tensor(1.7),
            "args": argparse.Namespace(model="resnet", img_size=288, mean=None, lr=1e-4),
            "optimizer": optimizer.state_dict(),
            "state_dict": {prefix + k: v for k, v in official_state.items()},
            "state_dict_ema": {prefix + k: torch.zeros_like(v) for k, v in official_state.items()},
        }, path)
        state, label = resolve_weights(get_entry("ckdn_r50"), weights_path=path)
        assert label.kind == "local-file" and len(label.sha256) == 64
        assert tuple(state) == zoo_keys()
        for key, tensor in state.items():  # the evaluated weights, not the EMA copy
            assert torch.equal(tensor, official_state[key]), key


def test_iqa_toolbox_layout_loads(official_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """CKDN_model_best-38b27dc6.pth: the whole official ResNet under `net.`, flat (or under `params`)."""
    flat = {"net." + k: v for k, v in official_state.items()}
    reference = convert_checkpoint(official_state)
    for i, checkpoint in enumerate((flat, {"params": flat})):
        path = tmp_path / f"toolbox{i}.pth"
        torch.save(checkpoint, path)
        state, _ = resolve_weights(get_entry("ckdn_r50"), weights_path=path)
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert convert_checkpoint(reference).keys() == reference.keys()  # zoo layout converts to itself


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.update({"qse_3.weight": torch.zeros(1)}), "1 unknown: qse_3.weight"),
        (lambda s: s.update({"aux_csp.4.conv1.weight": torch.zeros(1)}), "unknown: aux_csp.4.conv1.weight"),
        (lambda s: s.pop("csp.0.conv2.weight"), "1 missing: csp.0.conv2.weight"),
        (lambda s: s.pop("dte_1.weight"), "1 missing: dte_1.weight"),
        (lambda s: s.update({"epoch": 3}), "non-tensor entries: epoch"),
    ],
    ids=["unknown-module", "unknown-training-block", "missing-csp", "missing-stem", "non-tensor"],
)
def test_converter_fails_loudly(official_state: dict[str, torch.Tensor], edit, needle: str) -> None:
    state = dict(official_state)
    edit(state)
    with pytest.raises(WeightsError, match="CKDN checkpoint") as err:
        convert_checkpoint(state)
    assert needle in str(err.value)


# --- golden parity ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dr64(model64: CKDN, inputs64) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched float64 dr features and logits (computed once, used by two tests)."""
    rest1, dist1, _, _ = inputs64
    with torch.inference_mode():
        feat = model64.features(rest1, dist1)
        return feat, model64.fc_(feat)[:, 0]


def test_float64_matches_official_dr_branch(dr64, golden) -> None:
    feat, logit = dr64
    score = torch.sigmoid(logit)  # forward() == sigmoid(logits()) is checked in test_registry_entry
    assert_allclose(feat.numpy(), golden["feat_dr_fr_float64"][:2], **F64)
    assert_allclose(logit.numpy(), golden["logit_dr_float64"][:, 0], **F64)
    assert_allclose(score.numpy(), golden["out_float64"][:, 0], **F64)
    assert_allclose(score.numpy(), golden["score_float64"], **F64)
    assert score.shape == (2,)


def test_float64_matches_official_fr_and_mse(model64: CKDN, inputs64, golden) -> None:
    """The same csp/fc_ with the pristine image through the degraded encoder: pins which stem is which."""
    rest1, dist1, _, ref1 = inputs64
    with torch.inference_mode():
        feat_fr = model64.features(rest1, ref1)
        logit_fr = model64.fc_(feat_fr)[:, 0]
        mse = ((model64.encode_degraded(dist1) - model64.encode_degraded(ref1)) ** 2).flatten(1).mean(1)
    assert_allclose(feat_fr.numpy(), golden["feat_dr_fr_float64"][2:], **F64)
    assert_allclose(logit_fr.numpy(), golden["logit_fr_float64"][:, 0], **F64)
    assert_allclose(mse.numpy(), golden["out_float64"][:, 3], **F64)


def test_batch_independence(model64: CKDN, inputs64, dr64) -> None:
    rest1, dist1, _, _ = inputs64
    with torch.inference_mode():
        alone = torch.cat([model64.logits(rest1[i : i + 1], dist1[i : i + 1]) for i in range(2)])
    assert_allclose(alone.numpy(), dr64[1].numpy(), rtol=0, atol=1e-15)


def test_float32_matches_official(official_state, golden) -> None:
    model = load_model(official_state, torch.float32)
    rest1, dist1, _, _ = golden_inputs(golden, torch.float32)
    with torch.inference_mode():
        score = model(rest1, dist1)
    assert score.dtype == torch.float32 and score.shape == (2,)
    assert_allclose(score.numpy(), golden["out_float32"][:, 0], rtol=0, atol=1e-6)
    assert_allclose(score.numpy(), golden["out_float64"][:, 0], rtol=0, atol=1e-6)


# --- preprocessing ---------------------------------------------------------------------------------
def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("size", "resized", "box"),
    [
        # 329 * 500 / 375 = 438.67 -> 438 (truncated, not rounded); (329 - 288) / 2 = 20.5 -> 20 (to even)
        ((500, 375), (438, 329), (75, 20, 363, 308)),
        ((375, 500), (329, 438), (20, 75, 308, 363)),
        ((640, 427), (493, 329), (102, 20, 390, 308)),  # 493.11 -> 493; 102.5 -> 102
        ((329, 400), (329, 400), (20, 56, 308, 344)),  # shorter side already 329: not resampled
        ((120, 120), (329, 329), (20, 20, 308, 308)),  # upsampling
    ],
)
def test_preprocessing_matches_pillow(size, resized, box) -> None:
    restored, degraded = random_image(*size, seed=1), random_image(*size, seed=2)
    assert resized_size(*size) == resized
    assert center_crop_box(*resized) == box

    def expected(img: Image.Image, resample: Image.Resampling) -> np.ndarray:
        if img.size != resized:
            img = img.resize(resized, resample)
        return np.asarray(img.crop(box))

    pair = preprocess_pair(restored, degraded)
    assert pair.shape == (2, 288, 288, 3) and pair.dtype == np.uint8
    assert_array_equal(pair[0], expected(restored, Image.Resampling.BICUBIC))
    assert_array_equal(pair[1], expected(degraded, Image.Resampling.NEAREST))
    if resized != size:  # the two filters really differ here, so a swapped filter would be caught
        assert not np.array_equal(pair[0], expected(restored, Image.Resampling.NEAREST))


def test_preprocessing_converts_to_rgb() -> None:
    gray = random_image(300, 300).convert("L")
    pair = preprocess_pair(gray, gray.convert("RGBA"))
    assert pair.shape == (2, 288, 288, 3)
    assert_array_equal(pair[0][..., 0], pair[0][..., 2])


def test_normalisation_is_the_official_prefetcher(golden) -> None:
    u8 = golden["images_u8"][:1]  # [1, 4, H, W, 3]
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    assert_array_equal(mean, golden["imagenet_mean"])
    assert_array_equal(std, golden["imagenet_std"])
    expected = (u8.astype(np.float64) - 255 * mean) / (255 * std)  # x[b, 3*i+c] of README section 4
    got = normalize(torch.from_numpy(u8).permute(0, 1, 4, 2, 3), torch.float64).permute(0, 1, 3, 4, 2)
    assert_array_equal(got.numpy(), expected)
    restored, degraded = pair_batch_to_inputs(torch.from_numpy(u8[:, :2]), torch.float64)
    assert_array_equal(restored.permute(0, 2, 3, 1).numpy(), expected[:, 0])
    assert_array_equal(degraded.permute(0, 2, 3, 1).numpy(), expected[:, 1])


# --- registry --------------------------------------------------------------------------------------
def test_registry_entry() -> None:
    entry = get_entry("ckdn_r50")
    assert entry in list_models(task="image-quality", default_only=True)
    assert entry.handler == "handlers.ckdn_handler" and set(entry.inputs) == {"restored", "degraded"}
    assert (entry.serving.batch_size, entry.serving.max_batch_delay_ms) == (16, 20)
    assert entry.license == "MIT" and entry.paper == "https://arxiv.org/abs/2108.07948"
    src = entry.weights
    assert src.converter == "zoo.ckdn:convert_checkpoint"
    assert src.hf_repo == "chaofengc/IQA-PyTorch-Weights" and src.filename == "CKDN_model_best-38b27dc6.pth"
    assert len(src.revision) == 40 and src.sha256.startswith("38b27dc6") and len(src.sha256) == 64
    assert "drive.google.com" in src.upstream_url
    model = entry.build().eval()
    restored, degraded = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        score, logit = model(restored, degraded), model.logits(restored, degraded)
    assert score.shape == (3,) and bool(((score >= 0) & (score <= 1)).all())
    assert torch.equal(score, torch.sigmoid(logit))


def test_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/ckdn.py stays runnable (tiny smoke settings; the numbers are not looked at)."""
    import importlib.util

    path = Path(__file__).parents[2] / "bench" / "ckdn.py"
    spec = importlib.util.spec_from_file_location("bench_ckdn", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "table.md"
    assert bench.main(["--device", "cpu", "--batch-sizes", "1", "2", "--precisions", "fp32", "bf16",
                       "--iters", "1", "--warmup", "0", "--image-size", "64", "--preprocess-size", "64", "48",
                       "--out", str(out)]) == 0
    table = out.read_text()
    assert table in capsys.readouterr().out
    assert table.count("| fp32 |") == 2 and table.count("| bf16 |") == 2 and "ms/pair" in table
