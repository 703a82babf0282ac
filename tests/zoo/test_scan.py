"""SCAN clustering models (ImageNet ResNet-50 with 10 heads, CIFAR-10 ResNet-18) against the official
implementation's golden outputs (tests/data/golden/zoo3/README_scan.md), plus the converters (head index
included), pre/post-processing, the classification handler serving them unchanged, and the entries.

Tolerances are the README's: float64 rtol 1e-9 / atol 1e-12 on features, every head's logits, probabilities and
stage means; float32 atol 2e-6 (ImageNet) / 5e-7 (CIFAR) on logits, 1e-6 on features, rtol 2e-6 on probs.
"""

from __future__ import annotations

import functools
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
from zoo.classify import Preprocess, top_k
from zoo.scan import (
    BEST_HEAD_KEY,
    CifarResNet18,
    ResNet50Backbone,
    ScanClusteringModel,
    cluster_probabilities,
    convert_cifar10,
    convert_imagenet,
    official_keys,
    top_clusters,
)
from zoo.weights import WeightsError, load_strict

VARIANTS = {  # golden name: (entry, converter, model args, float32 logits atol)
    "imagenet": ("scan_r50.imagenet", convert_imagenet, ("resnet50", 1000, 10), 2e-6),
    "cifar10": ("scan_r18.cifar10", convert_cifar10, ("resnet18_cifar", 10, 1), 5e-7),
}


@pytest.fixture(scope="module")
def zoo3(golden_dir: Path) -> Path:
    path = golden_dir / "zoo3"
    if not (path / "scan_cifar10_state_dict_keys.json").is_file():
        pytest.skip(f"zoo3 golden data not found under {path}")
    return path


def table(zoo3: Path, variant: str) -> dict:
    return json.loads((zoo3 / f"scan_{variant}_state_dict_keys.json").read_text())


@functools.cache
def official_state(zoo3: Path, variant: str) -> dict[str, torch.Tensor]:
    """The official-layout golden weights (rebuilt once per variant; callers copy before changing the dict)."""
    return golden_state_dict(zoo3 / f"scan_{variant}_state_dict_keys.json")


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, zoo3: Path) -> tuple[str, dict, dict[str, torch.Tensor], dict]:
    """(variant, golden arrays, official-layout state dict, key-table header) per variant."""
    name = request.param
    with np.load(zoo3 / f"scan_{name}_golden.npz") as data:
        golden = dict(data)
    meta = table(zoo3, name)
    return name, golden, official_state(zoo3, name), meta


def released(official: dict[str, torch.Tensor], head: int) -> dict:
    """The released SCAN file layout: ``{'model': model.module.state_dict(), 'head': best_loss_head}``."""
    return {"model": dict(official), "head": head}


def loaded(name: str, official: dict[str, torch.Tensor], head: int, dtype: torch.dtype) -> ScanClusteringModel:
    _, convert, args, _ = VARIANTS[name]
    model = ScanClusteringModel(*args)
    load_strict(model, convert(released(official, head)), f"golden SCAN {name} weights")
    return model.to(dtype).eval()


def model_input(name: str, golden: dict, dtype: torch.dtype) -> torch.Tensor:
    pre = Preprocess.from_config(get_entry(VARIANTS[name][0]).config["preprocess"])
    assert_allclose(pre.mean, golden["mean"]) and assert_allclose(pre.std, golden["std"])
    return pre.normalize(torch.from_numpy(golden["images_u8"]), dtype)  # stored images are the model-size crops


# --- parity -----------------------------------------------------------------------------------------
def test_float64_features_every_head_and_stages_match_official(variant) -> None:
    name, golden, official, meta = variant
    head = int(golden["head"])
    assert head == meta["head"] and int(golden["num_heads"]) == VARIANTS[name][2][2]
    model = loaded(name, official, head, torch.float64)
    assert int(model.best_head) == head
    with torch.inference_mode():
        x = model_input(name, golden, torch.float64)
        out = model.forward_all(x, with_stages=True)
        served = model(x)
    tol = {"rtol": 1e-9, "atol": 1e-12}
    assert_allclose(out.features.numpy(), golden["features_float64"], **tol)
    assert_allclose(out.logits.numpy(), golden["logits_float64"], **tol)
    assert_allclose(cluster_probabilities(out.logits).numpy(), golden["probs_float64"], **tol)
    for i, stage in enumerate(out.stages, start=1):
        assert_allclose(stage.mean((2, 3)).numpy(), golden[f"layer{i}_chmean_float64"], **tol, err_msg=f"layer{i}")
    # the served output is softmax of head `head` (not head 0 for ImageNet: the golden head is 7)
    assert torch.equal(served, out.logits[:, head])
    assert_allclose(cluster_probabilities(served).numpy(), golden["probs_best_float64"], **tol)
    assert_array_equal(served.argmax(-1).numpy(), golden["pred_best_float64"])
    if name == "imagenet":  # head choice is visible: every head predicts a different cluster here
        assert len(set(out.logits[0].argmax(-1).tolist())) == 10


def test_float32_matches_official(variant) -> None:
    name, golden, official, _ = variant
    head = int(golden["head"])
    model = loaded(name, official, head, torch.float32)
    with torch.inference_mode():
        out = model.forward_all(model_input(name, golden, torch.float32))
    assert_allclose(out.features.numpy(), golden["features_float32"], rtol=0, atol=1e-6)
    assert_allclose(out.logits.numpy(), golden["logits_float32"], rtol=0, atol=VARIANTS[name][3])
    probs = cluster_probabilities(out.logits[:, head]).numpy()
    assert_allclose(probs, golden["probs_best_float32"], rtol=2e-6, atol=0)
    assert_array_equal(probs.argmax(-1), golden["pred_best_float32"])


# --- architecture -----------------------------------------------------------------------------------
def test_backbones_follow_the_official_layouts() -> None:
    cifar = CifarResNet18().eval()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in cifar.modules())  # no max-pool
    with torch.inference_mode():
        feats, stages = cifar.forward_stages(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 512) and [s.shape[-1] for s in stages] == [32, 16, 8, 4]
    assert len(cifar.layer1[0].shortcut) == 0 and len(cifar.layer2[0].shortcut) == 2  # identity / projection
    r50 = ResNet50Backbone()
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)  # v1.5
    assert [len(getattr(r50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    with pytest.raises(ValueError, match="backbone must be one of"):
        ScanClusteringModel("vit")


# --- converters -------------------------------------------------------------------------------------
def test_converters_take_every_released_layout_and_keep_the_head(zoo3: Path) -> None:
    official = dict(official_state(zoo3, "cifar10"))
    keys = official_keys("resnet18_cifar", 10, 1)
    assert set(keys) == set(official) and len(keys) == 122
    training = {"model": {f"module.{k}": v for k, v in official.items()}, "best_loss_head": 0, "epoch": 50,
                "optimizer": {}, "best_loss": 1.2}
    for layout in (released(official, 0), training, dict(official)):  # SCAN file, scan.py checkpoint, self-label
        converted = convert_cifar10(layout)
        assert list(converted) == [*keys, BEST_HEAD_KEY] and int(converted[BEST_HEAD_KEY]) == 0
        assert all(converted[k] is official[k] for k in keys)
        converted_again = convert_cifar10(converted)  # the zoo layout converts to itself
        assert converted_again.keys() == converted.keys()
    # a zoo-layout ImageNet dict keeps its head; the released file's head is what gets served
    r50 = dict(official_state(zoo3, "imagenet"))
    zoo = convert_imagenet(released(r50, 7))
    assert int(zoo[BEST_HEAD_KEY]) == 7 and int(convert_imagenet(zoo)[BEST_HEAD_KEY]) == 7
    assert int(convert_imagenet(dict(r50))[BEST_HEAD_KEY]) == 0  # a bare state dict: eval.py's head 0


def test_converters_name_unknown_and_missing_keys_and_bad_heads(zoo3: Path) -> None:
    official = dict(official_state(zoo3, "cifar10"))
    with pytest.raises(WeightsError, match=r"unknown: contrastive_head\.0\.weight"):
        convert_cifar10(released({**official, "contrastive_head.0.weight": torch.zeros(1)}, 0))
    missing = {k: v for k, v in official.items() if k != "backbone.layer3.0.shortcut.1.running_var"}
    with pytest.raises(WeightsError, match=r"missing: backbone\.layer3\.0\.shortcut\.1\.running_var"):
        convert_cifar10(released(missing, 0))
    with pytest.raises(WeightsError, match=r"missing: cluster_head\.1\.bias"):  # 10 heads expected, 1 given
        convert_imagenet(released({k: v for k, v in official_state(zoo3, "imagenet").items()
                                   if not k.startswith("cluster_head.") or k.startswith("cluster_head.0.")}, 0))
    with pytest.raises(WeightsError, match="no head index"):
        convert_cifar10({"model": dict(official)})
    with pytest.raises(WeightsError, match="head index 1 is outside the 1 cluster heads"):
        convert_cifar10(released(official, 1))
    model = ScanClusteringModel("resnet18_cifar", 10, 1)
    model.best_head.fill_(3)
    with pytest.raises(ValueError, match="best_head 3 is outside"):
        model(torch.zeros(1, 3, 32, 32))


# --- post-processing and the classification contract -----------------------------------------------
def test_top_clusters_equal_the_classification_top_k() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, -0.3, 0.2]])
    clusters = top_clusters(logits, 3)
    assert [[c.cluster for c in row] for row in clusters] == [[1, 3, 0], [0, 3, 1]]
    classes = top_k(logits, 3)
    assert [[(c.cluster, c.probability) for c in row] for row in clusters] == \
        [[(p.index, p.score) for p in row] for row in classes]
    assert_allclose(sum(c.probability for c in top_clusters(logits, 4)[0]), 1.0, rtol=1e-6)


def test_classification_handler_serves_scan_unchanged(zoo3: Path) -> None:
    """``handlers.classify_handler`` decodes, preprocesses, runs ``model(x)`` and answers softmax top-k: for SCAN
    that is the best head's cluster distribution, with the cluster id as ``index`` and no label."""
    from handlers.classify_handler import ClassifyHandler

    with np.load(zoo3 / "scan_cifar10_golden.npz") as data:
        golden = dict(data)
    handler = ClassifyHandler()
    handler.entry, handler.device, handler.meta = get_entry("scan_r18.cifar10"), torch.device("cpu"), {"weights": {}}
    handler.model = handler.entry.build()
    official = dict(official_state(zoo3, "cifar10"))
    load_strict(handler.model, convert_cifar10(released(official, 0)))
    handler.model.eval()
    handler.setup(Path("."))
    items = []
    for image in golden["images_u8"]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        items.append(handler.decode({"body": buf.getvalue(), "top_k": "10"}, len(items)))
    assert_array_equal(np.stack([i.pixels for i in items]), golden["images_u8"])  # 32x32: preprocessing is identity
    with torch.inference_mode():
        answers = handler.encode(handler.predict(handler.batch(items)), items)
    for answer, probs in zip(answers, golden["probs_best_float32"], strict=True):
        assert all(p["label"] is None for p in answer["top_k"])
        assert answer["top_k"][0]["index"] == int(golden["pred_best_float32"][0])
        ids = [p["index"] for p in answer["top_k"]]
        assert_allclose([p["score"] for p in answer["top_k"]], probs[ids], rtol=2e-6)


def test_imagenet_preprocessing_is_resize_256_centre_crop_224() -> None:
    pre = Preprocess.from_config(get_entry("scan_r50.imagenet").config["preprocess"])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    resized = img.resize((341, 256), Image.Resampling.BILINEAR)  # torchvision Resize(256): int(256 * 400 / 300)
    assert_array_equal(pre.image(img), np.asarray(resized.crop((58, 16, 282, 240))))
    cifar = Preprocess.from_config(get_entry("scan_r18.cifar10").config["preprocess"])
    assert (cifar.resize, cifar.crop, cifar.std) == (32, 32, (0.2023, 0.1994, 0.2010))


# --- entries ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "variant_name"), [("scan_r50.imagenet", "imagenet"), ("scan_r18.cifar10", "cifar10"),
                                                    ("scan_r18.cifar10_selflabel", "cifar10")])
def test_entries_build_the_official_layout_and_name_real_things(zoo3: Path, name: str, variant_name: str) -> None:
    entry = get_entry(name)
    assert entry.task == "image-classification" and entry.handler == "handlers.classify_handler"
    assert not entry.default_serve and name not in {e.name for e in list_models(default_only=True)}
    assert entry.license.startswith("NON-COMMERCIAL:") and "CC BY-NC 4.0" in entry.license
    assert entry.config["labels"] is None and entry.config["knobs"] == {}
    assert "not class labels" in {o.name: o for o in entry.outputs}["top_k_indices"].description
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    assert entry.weights.upstream_url.startswith("https://drive.google.com/file/d/")
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in entry.build().state_dict().items()}
    assert ours.pop(BEST_HEAD_KEY) == ()
    assert ours == {e["key"]: tuple(e["shape"]) for e in table(zoo3, variant_name)["keys"]}
