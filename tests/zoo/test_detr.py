"""zoo.detr: parity with transformers' DETR, checkpoint converters, official pre/post-processing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import zoo.detr as detr
from zoo import create_model, get_entry
from zoo.weights import WeightsError, load_strict

transformers = pytest.importorskip("transformers")


# -----------------------------------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------------------------------


def _randomize_hf(model: torch.nn.Module, seed: int = 0) -> None:
    """Seeded weights that make the comparison discriminative.

    transformers' init leaves frozen BN at identity and gives nearly identical outputs for all 100 queries;
    here BN statistics/affines are non-trivial and q/k projections are scaled up so cross-attention is
    peaked and queries differ (a missing query position shifts logits by ~0.15, a BN eps of 0 by ~4e-4).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if "running_mean" in name:
                new = torch.randn(t.shape, generator=g) * 0.1
            elif "running_var" in name:
                new = torch.rand(t.shape, generator=g) + 0.5
            elif t.dim() == 4:  # convolutions
                new = torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel())
            elif t.dim() == 2:
                if "query_position" in name:
                    new = torch.randn(t.shape, generator=g)
                else:
                    gain = 4.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                    new = torch.randn(t.shape, generator=g) * gain / math.sqrt(t.shape[1])
            elif name.endswith("weight"):  # BN / LayerNorm scales
                new = torch.rand(t.shape, generator=g) + 0.5
            else:  # biases
                new = torch.randn(t.shape, generator=g) * 0.1
            t.copy_(new)


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two already-normalised images, 160x224 and 200x130 (HxW), zero-padded into one 200x224 batch."""
    g = torch.Generator().manual_seed(1)
    sizes = [(160, 224), (200, 130)]
    h_max, w_max = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(2, 3, h_max, w_max)
    padding_mask = torch.ones(2, h_max, w_max, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        padding_mask[i, :h, :w] = False
    return pixel_values, padding_mask


def _official_from_zoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the zoo naming: the facebookresearch/detr ``model`` state dict."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out["backbone.0.body." + key[len("backbone."):]] = value
            continue
        key = key.replace(".cross_attn.", ".multihead_attn.")
        for proj in ("q_proj", "k_proj", "v_proj"):
            marker = f".{proj}."
            if marker in key:
                prefix, kind = key.split(marker)
                packed.setdefault(f"{prefix}.in_proj_{kind}", {})[proj] = value
                break
        else:
            out[key] = value
    for key, parts in packed.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


_HF_LAYER_NAMES = {
    "encoder": {"self_attn.": "self_attn.", "linear1.": "fc1.", "linear2.": "fc2.",
                "norm1.": "self_attn_layer_norm.", "norm2.": "final_layer_norm."},
    "decoder": {"self_attn.": "self_attn.", "cross_attn.": "encoder_attn.", "linear1.": "fc1.",
                "linear2.": "fc2.", "norm1.": "self_attn_layer_norm.", "norm2.": "encoder_attn_layer_norm.",
                "norm3.": "final_layer_norm."},
}


def _hf_timm_from_zoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published ``main`` layout: timm resnet50 (torchvision names) under ``conv_encoder.model``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out["model.backbone.conv_encoder.model." + key[len("backbone."):]] = value
            if key.endswith("downsample.1.running_var"):  # the published file carries these too
                out["model.backbone.conv_encoder.model." + key[len("backbone."):-len("running_var")]
                    + "num_batches_tracked"] = torch.tensor(0)
        elif key.startswith("transformer.decoder.norm."):
            out["model.decoder.layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("transformer."):
            _, part, _, index, rest = key.split(".", 4)
            for ours, theirs in _HF_LAYER_NAMES[part].items():
                if rest.startswith(ours):
                    out[f"model.{part}.layers.{index}.{theirs}{rest[len(ours):]}"] = value
                    break
            else:
                raise AssertionError(f"unmapped {key}")
        else:
            out[key.replace("query_embed.", "model.query_position_embeddings.")
                .replace("input_proj.", "model.input_projection.")
                .replace("class_embed.", "class_labels_classifier.")
                .replace("bbox_embed.", "bbox_predictor.")] = value
    return out


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# -----------------------------------------------------------------------------------------------------
# fixtures
# -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    config = DetrConfig(
        backbone_config=ResNetConfig(out_features=["stage4"]),  # transformers ResNet-50, no timm, random
        num_labels=91,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    _randomize_hf(model)
    return model


@pytest.fixture(scope="module")
def zoo_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("detr_resnet50").eval()


# -----------------------------------------------------------------------------------------------------
# parity with transformers
# -----------------------------------------------------------------------------------------------------


def test_matches_transformers_on_padded_batch(hf_model, zoo_model) -> None:
    load_strict(zoo_model, detr.convert_checkpoint(hf_model.state_dict()), "transformers DETR")
    pixel_values, padding_mask = _padded_batch()
    with torch.inference_mode():
        ref = hf_model(pixel_values=pixel_values, pixel_mask=(~padding_mask).long())
        out = zoo_model(pixel_values, padding_mask)
        unmasked = zoo_model(pixel_values)
    assert out["logits"].shape == (2, 100, 92)
    assert out["boxes"].shape == (2, 100, 4)
    torch.testing.assert_close(out["logits"], ref.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["boxes"], ref.pred_boxes, atol=1e-4, rtol=0)
    # the comparison means something: queries differ, images differ, and the mask matters
    assert out["logits"].std(dim=1).mean() > 1e-2
    assert (out["logits"][0] - out["logits"][1]).abs().mean() > 1e-2
    assert (unmasked["logits"] - out["logits"]).abs().max() > 1e-2


def test_transformers_saved_file_layout_converts_identically(hf_model, tmp_path) -> None:
    """What ``save_pretrained`` writes: the published ``no_timm`` key names.

    (``conv_encoder``, ``out_proj``, ``fc1``: transformers 5.x renames them only in memory.)
    """
    from safetensors.torch import load_file

    in_memory = detr.convert_checkpoint(hf_model.state_dict())
    hf_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "model.backbone.conv_encoder.model.encoder.stages.0.layers.0.shortcut.convolution.weight" in saved
    assert "model.encoder.layers.0.self_attn.out_proj.weight" in saved
    assert detr.detect_layout(saved) == "hf"
    _assert_same_state(detr.convert_checkpoint(saved), in_memory)


# -----------------------------------------------------------------------------------------------------
# converters
# -----------------------------------------------------------------------------------------------------


def test_official_layout_round_trip(zoo_model) -> None:
    state = {k: v.clone() for k, v in zoo_model.state_dict().items()}
    official = _official_from_zoo(state)
    assert "transformer.decoder.layers.5.multihead_attn.in_proj_weight" in official
    assert official["transformer.encoder.layers.0.self_attn.in_proj_weight"].shape == (768, 256)
    official["backbone.0.body.layer1.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    ckpt = {"model": official, "epoch": 499}  # the official file wraps the state dict
    assert detr.detect_layout(official) == "official"
    converted = detr.convert_checkpoint(ckpt)
    _assert_same_state(converted, state)
    fresh = create_model("detr_resnet50")
    load_strict(fresh, converted)


def test_hf_timm_backbone_layout(zoo_model) -> None:
    state = {k: v.clone() for k, v in zoo_model.state_dict().items()}
    hf = _hf_timm_from_zoo(state)
    assert "model.backbone.conv_encoder.model.layer1.0.conv1.weight" in hf
    assert "model.backbone.conv_encoder.model.bn1.running_mean" in hf
    assert "model.decoder.layers.0.encoder_attn.q_proj.weight" in hf
    _assert_same_state(detr.convert_checkpoint(hf), state)


def test_zoo_layout_passes_through(zoo_model) -> None:
    state = zoo_model.state_dict()
    assert detr.detect_layout(state) == "zoo"
    _assert_same_state(detr.convert_checkpoint(state), dict(state))


def test_unknown_layout_is_a_clear_error() -> None:
    with pytest.raises(WeightsError, match="unrecognised DETR checkpoint layout"):
        detr.convert_checkpoint({"encoder.weight": torch.zeros(1), "head.bias": torch.zeros(1)})
    with pytest.raises(WeightsError, match="mapping of tensors"):
        detr.convert_checkpoint([])  # type: ignore[arg-type]


def test_missing_and_unknown_keys_fail_conversion_and_shapes_fail_strict_loading(zoo_model) -> None:
    official = _official_from_zoo(zoo_model.state_dict())
    del official["class_embed.bias"]
    official["backbone.0.body.fc.weight"] = torch.zeros(1000, 2048)  # a classifier DETR does not have
    with pytest.raises(WeightsError) as info:
        detr.convert_checkpoint({"model": official})
    assert "1 missing: class_embed.bias" in str(info.value)
    assert "1 unknown: backbone.fc.weight" in str(info.value)

    shapes = dict(zoo_model.state_dict())
    shapes["class_embed.weight"] = torch.zeros(251, 256)  # a panoptic-sized head
    with pytest.raises(WeightsError, match="shape mismatches: class_embed.weight"):
        load_strict(create_model("detr_resnet50"), shapes)


# -----------------------------------------------------------------------------------------------------
# preprocessing
# -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        # short side -> 800; long side int(800 * 640 / 480) = int(1066.67) = 1066 (truncated, not rounded)
        (640, 480, (1066, 800)),
        (480, 640, (800, 1066)),
        (500, 375, (1066, 800)),  # upscaling follows the same rule
        (800, 800, (800, 800)),  # already at size: returned unchanged
        # 2000/500 * 800 = 3200 > 1333 -> size = int(round(1333 * 500 / 2000)) = int(round(333.25)) = 333;
        # long side int(333 * 2000 / 500) = 1332 (not 1333)
        (2000, 500, (1332, 333)),
        # 1000/600 * 800 = 1333.3 > 1333 -> size = int(round(799.8)) = 800 again; long side int(1333.3) = 1333
        (1000, 600, (1333, 800)),
        # tall: 1000/100 * 800 > 1333 -> size = int(round(133.3)) = 133; long side int(133 * 10) = 1330
        (100, 1000, (133, 1330)),
        # 1333 * 665 / 2666 = 332.5 exactly: Python's round() goes to even -> 332;
        # long side int(332 * 2666 / 665) = int(1330.99) = 1330
        (2666, 665, (1330, 332)),
    ],
)
def test_resized_size_follows_official_rounding(w: int, h: int, expected: tuple[int, int]) -> None:
    assert detr.resized_size(w, h) == expected


def test_preprocess_batch_padding_mask_and_normalization() -> None:
    solid = Image.new("RGB", (64, 48), (255, 0, 128))  # -> 1066x800
    # grayscale -> RGB; 2 * 800 > 1333 -> size = round(666.5) = 666 (to even) -> 666x1332
    tall = Image.new("L", (48, 96), 51)
    pixel_values, padding_mask, orig_sizes = detr.preprocess([solid, tall])
    assert orig_sizes == [(48, 64), (96, 48)]
    assert pixel_values.shape == (2, 3, 1332, 1066) and pixel_values.dtype == torch.float32
    assert padding_mask.shape == (2, 1332, 1066) and padding_mask.dtype == torch.bool
    assert not padding_mask[0, :800, :1066].any() and padding_mask[0, 800:].all()
    assert not padding_mask[1, :1332, :666].any() and padding_mask[1, :, 666:].all()
    # padding is zero in normalised space
    assert (pixel_values[0, :, 800:] == 0).all() and (pixel_values[1, :, :, 666:] == 0).all()
    # normalisation: (x / 255 - mean) / std per channel
    mean, std = torch.tensor(detr.IMAGENET_MEAN), torch.tensor(detr.IMAGENET_STD)
    expected_solid = (torch.tensor([255.0, 0.0, 128.0]) / 255 - mean) / std
    torch.testing.assert_close(pixel_values[0, :, 400, 500], expected_solid)
    torch.testing.assert_close(pixel_values[0, :, :800, :1066].amax(dim=(1, 2)), expected_solid)
    expected_gray = (torch.full((3,), 51.0) / 255 - mean) / std
    torch.testing.assert_close(pixel_values[1, :, 1000, 300], expected_gray)


def test_preprocess_resizes_with_pil_bilinear() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    pixel_values, _, _ = detr.preprocess([image])
    resized = np.asarray(image.resize((1066, 800), Image.BILINEAR), dtype=np.float32) / 255
    mean = torch.tensor(detr.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(detr.IMAGENET_STD)[:, None, None]
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(pixel_values[0], expected)


# -----------------------------------------------------------------------------------------------------
# postprocessing
# -----------------------------------------------------------------------------------------------------


def _logits_for(classes_and_logit: list[tuple[int, float]]) -> torch.Tensor:
    """One image, one query per entry: that class gets the given logit, every other class 0."""
    logits = torch.zeros(1, len(classes_and_logit), 92)
    for q, (cls, value) in enumerate(classes_and_logit):
        logits[0, q, cls] = value
    return logits


def test_postprocess_threshold_order_boxes_and_names() -> None:
    logits = _logits_for([(1, 8.0), (17, 12.0), (91, 12.0), (3, 5.0)])  # person, cat, no-object, car
    boxes = torch.tensor([[
        [0.5, 0.5, 0.2, 0.4],  # person
        [0.25, 0.5, 0.5, 1.0],  # cat: the left half of the image
        [0.5, 0.5, 1.0, 1.0],
        [0.95, 0.1, 0.3, 0.4],  # car: sticks out right and top -> clipped
    ]])
    orig_sizes = [(200, 400)]  # (h, w)
    # softmax scores: e^12 / (e^12 + 91) = 0.99944, e^8 / (e^8 + 91) = 0.97038, e^5 / (e^5 + 91) = 0.61991;
    # the no-object query's best real class has 1 / (e^12 + 91) ~ 6e-6
    (dets,) = detr.postprocess(logits, boxes, orig_sizes, threshold=0.7)
    assert [d["label"] for d in dets] == ["cat", "person"]
    assert [d["label_id"] for d in dets] == [17, 1]
    assert dets[0]["score"] == pytest.approx(math.exp(12) / (math.exp(12) + 91), abs=1e-6)
    assert dets[1]["score"] == pytest.approx(math.exp(8) / (math.exp(8) + 91), abs=1e-6)
    assert dets[0]["box"] == pytest.approx([0.0, 0.0, 200.0, 200.0])
    assert dets[1]["box"] == pytest.approx([160.0, 60.0, 240.0, 140.0])

    (low,) = detr.postprocess(logits, boxes, orig_sizes, threshold=0.5)
    assert [d["label"] for d in low] == ["cat", "person", "car"]
    # car: cx 380 w 120 -> x 320..440 -> clipped to 400; cy 20 h 80 -> y -20..60 -> clipped to 0
    assert low[2]["box"] == pytest.approx([320.0, 0.0, 400.0, 60.0])
    assert json.dumps(low)  # plain Python types only

    (top1,) = detr.postprocess(logits, boxes, orig_sizes, threshold=0.0, top_k=1)
    assert [d["label"] for d in top1] == ["cat"]
    (everything,) = detr.postprocess(logits, boxes, orig_sizes, threshold=0.0)
    assert len(everything) == 4
    assert detr.postprocess(logits, boxes, orig_sizes, threshold=0.9999)[0] == []


def test_postprocess_batches_scale_per_image() -> None:
    logits = torch.cat([_logits_for([(44, 9.0)]), _logits_for([(44, 9.0)])])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5, 0.5]]])
    first, second = detr.postprocess(logits, boxes, [(100, 200), (300, 50)])
    assert first[0]["label"] == second[0]["label"] == "bottle"
    assert first[0]["box"] == pytest.approx([50.0, 25.0, 150.0, 75.0])
    assert second[0]["box"] == pytest.approx([12.5, 75.0, 37.5, 225.0])
    with pytest.raises(ValueError):
        detr.postprocess(logits, boxes, [(100, 200)])


def test_coco_category_names() -> None:
    names = detr.COCO_CATEGORY_NAMES
    assert len(names) == 91
    assert names[0] == "N/A" and names[1] == "person" and names[90] == "toothbrush"
    unused = {0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert {i for i, n in enumerate(names) if n == "N/A"} == unused
    assert len(set(names) - {"N/A"}) == 80


# -----------------------------------------------------------------------------------------------------
# registry
# -----------------------------------------------------------------------------------------------------


def test_registry_entry() -> None:
    entry = get_entry("detr_resnet50")
    assert entry.task == "detection"
    assert entry.handler == "handlers.detr_handler"
    assert entry.license == "Apache-2.0"
    assert entry.paper == "https://arxiv.org/abs/2005.12872"
    assert entry.weights.converter == "zoo.detr:convert_checkpoint"
    assert entry.weights.hf_repo == "facebook/detr-resnet-50"
    assert entry.weights.revision and len(entry.weights.revision) == 40
    assert entry.weights.sha256 and len(entry.weights.sha256) == 64
    assert entry.weights.upstream_url.endswith("detr-r50-e632da11.pth")
    assert entry.serving.batch_size == 8 and entry.serving.max_batch_delay_ms == 50
    assert entry.config["num_queries"] == 100 and entry.config["num_classes"] == 91
    json.dumps(entry.summary(), default=str)


def test_builder_accepts_config_overrides() -> None:
    model = create_model(
        "detr_resnet50", num_queries=7, num_classes=4, d_model=64, nhead=4, num_encoder_layers=1,
        num_decoder_layers=2, dim_feedforward=128, backbone_depths=[1, 1, 1, 1],
    ).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 96, 64))
    assert out["logits"].shape == (1, 7, 5)
    assert out["boxes"].shape == (1, 7, 4)
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
