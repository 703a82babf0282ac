"""CondInst R50-FPN against the official AdelaiDet/detectron2 golden outputs (tests/data/golden/zoo3,
README_condinst.md), plus its converter, pre/post-processing, NMS and registry entries.

Both images run end to end in float32 (the official float32 run) and in float64 (the official run after
``model.double()``), at the README's tolerances: float64 features/logits/mask logits rtol 1e-9 / atol 1e-10
of the array's max, boxes (float32 in both official runs) atol 1e-4 px, float32 logits atol 1e-5 and mask
logits 1e-4 of the max; candidates, NMS keep lists, classes and counts exactly; binary masks may differ
only at pixels whose probability lies within 1e-6 (float64) / 1e-4 (float32) of the 0.5 threshold.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image

from tests.golden_weights import golden_state_dict
from zoo import get_entry, list_models
from zoo._registry import MODEL_MODULES
from zoo.condinst import (
    COCO_CONTIGUOUS_IDS,
    TRAINING_ONLY_KEYS,
    Candidates,
    CondInst,
    DynamicMaskHead,
    InstancePredictions,
    aligned_bilinear,
    batched_nms,
    build_condinst,
    category,
    convert_detectron2,
    decode_rle,
    mask_probabilities,
    normalize_bgr,
    pad_batch,
    postprocess,
    predict,
    preprocess,
    resized_size,
    select_over_all_levels,
    to_coco_instances,
    zoo_keys,
)
from zoo.weights import WeightsError, load_strict

LEVELS = ("p3", "p4", "p5", "p6", "p7")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture(scope="module")
def zoo3(golden_dir: Path) -> Path:
    return golden_dir / "zoo3"


@pytest.fixture(scope="module")
def golden(zoo3: Path) -> dict[str, np.ndarray]:
    with np.load(zoo3 / "condinst_golden.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def official_state(zoo3: Path) -> dict[str, torch.Tensor]:
    return golden_state_dict(zoo3 / "condinst_state_dict_keys.json")


@pytest.fixture(scope="module")
def zoo_state(official_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return convert_detectron2({"model": official_state})


def golden_model(state: dict[str, torch.Tensor], dtype: torch.dtype) -> CondInst:
    model = build_condinst(score_thresh=0.10)  # INFERENCE_TH_TEST of the golden run (README section 1)
    load_strict(model, state, "golden weights")
    return model.to(dtype).eval()


def model_input(g: dict[str, np.ndarray], i: int, dtype: torch.dtype) -> torch.Tensor:
    """README section 4: BGR CHW, ``(image - float32 mean) / std`` in the run dtype, zero-padded to /32."""
    u8 = g[f"img{i}_u8"]
    bgr = torch.from_numpy(np.ascontiguousarray(u8[:, :, ::-1].transpose(2, 0, 1)))
    return pad_batch([normalize_bgr(bgr, dtype)])


@pytest.fixture(scope="module")
def run(golden: dict[str, np.ndarray], zoo_state: dict[str, torch.Tensor]):
    """``run(dtype_name, image)``: one traced forward + postprocess per (dtype, image), cached for the module."""
    models: dict[str, CondInst] = {}
    runs: dict[tuple[str, int], dict[str, Any]] = {}

    def get(dtype_name: str, i: int) -> dict[str, Any]:
        if (dtype_name, i) not in runs:
            if dtype_name not in models:
                models[dtype_name] = golden_model(zoo_state, DTYPES[dtype_name])
            x = model_input(golden, i, DTYPES[dtype_name])
            trace: dict[str, Any] = {}
            with torch.inference_mode():
                (pred,) = models[dtype_name](x, trace)
                size = tuple(int(v) for v in golden[f"img{i}_image_size"])
                padded = tuple(int(v) for v in golden[f"img{i}_padded_size"])
                assert tuple(x.shape[2:]) == padded
                seg = postprocess(pred, size, padded, size)
                prob0 = mask_probabilities(pred.mask_probs[seg.keep[:1]], size, padded, size)
                probs = mask_probabilities(pred.mask_probs[seg.keep], size, padded, size)
            runs[(dtype_name, i)] = {"trace": trace, "pred": pred, "seg": seg, "prob0": prob0, "probs": probs,
                                      "size": size, "padded": padded}
        return runs[(dtype_name, i)]

    return get


def close(ours: torch.Tensor, ref: np.ndarray, rtol: float, atol_rel: float, what: str) -> float:
    """assert_allclose with atol scaled to the reference's max; returns the max abs difference."""
    a = ours.detach().double().cpu().numpy()
    assert a.shape == ref.shape, f"{what}: shape {a.shape} != {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    assert_allclose(a, ref.astype(np.float64), rtol=rtol, atol=atol_rel * scale, err_msg=what)
    return float(np.abs(a - ref).max()) if ref.size else 0.0


# --- converter and layout ------------------------------------------------------------------------------
def test_converter_maps_the_official_layout_minus_training_only_keys(official_state, zoo_state) -> None:
    dropped = sorted(set(official_state) - set(zoo_state))
    assert dropped == sorted(["mask_head._iter"] + [k for k in official_state if k.endswith("num_batches_tracked")])
    assert len(dropped) == 8 and set(zoo_state) == set(zoo_keys())
    for key, value in zoo_state.items():
        assert torch.equal(value, official_state[key]), key
    assert zoo_state["mask_head.sizes_of_interest"].tolist() == [64, 128, 256, 512, 1024]


def test_converter_takes_detectron2_pickles_and_ddp_prefixes(official_state, zoo_state) -> None:
    # detectron2 .pkl checkpoints hold numpy arrays; DDP saves add "module."; *_sem configs add a training head
    as_numpy: dict[str, Any] = {f"module.{k}": v.numpy() for k, v in official_state.items()}
    as_numpy["module.mask_branch.seg_head.0.0.weight"] = np.zeros((128, 256, 3, 3), np.float32)
    as_numpy["module.mask_branch.logits.bias"] = np.zeros(80, np.float32)
    converted = convert_detectron2({"model": as_numpy, "__author__": "AdelaiDet", "matching_heuristics": True})
    assert converted.keys() == zoo_state.keys()
    assert all(torch.equal(converted[k], zoo_state[k]) for k in zoo_state)
    assert len(TRAINING_ONLY_KEYS) == 4


def test_converter_names_unknown_missing_and_non_tensor_keys(official_state) -> None:
    extra = {**official_state, "proposal_generator.fcos_head.share_tower.0.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=re.escape("proposal_generator.fcos_head.share_tower.0.weight")):
        convert_detectron2({"model": extra})
    missing = {k: v for k, v in official_state.items() if k != "controller.bias"}
    with pytest.raises(WeightsError, match=r"missing: controller\.bias"):
        convert_detectron2(missing)
    with pytest.raises(WeightsError, match="iteration"):
        convert_detectron2({"model": {**official_state, "iteration": 90000}})


# --- golden parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("i", [0, 1])
def test_features_and_head_match_official(run, golden, dtype_name: str, i: int) -> None:
    r, p, sfx = run(dtype_name, i), f"img{i}_", f"_{dtype_name}"
    trace, f64 = r["trace"], dtype_name == "float64"
    rtol, atol = (1e-9, 1e-10) if f64 else (1e-5, 2e-6)  # float32: 2e-6 of a ~6 max is the README's ~1e-5
    if f64:
        close(trace["stem"][:, :2], golden[p + "stem_c2_float64"], rtol, atol, "stem")
        for name in ("res3", "res4", "res5"):
            close(trace[name][:, :8], golden[p + f"{name}_c8_float64"], rtol, atol, name)
        for lv in ("p6", "p7"):
            close(trace["features"][lv], golden[p + f"fpn_{lv}_float64"], rtol, atol, lv)
    head = trace["head"]
    for level, lv in enumerate(LEVELS):
        close(trace["features"][lv][:, :8], golden[p + f"fpn_{lv}_c8{sfx}"], rtol, atol, f"fpn {lv}")
        logits = head.logits[level]
        close(logits[:, :8], golden[p + f"cls_logits_{lv}_c8{sfx}"], rtol, atol, f"cls {lv}")
        close(logits.max(1)[0], golden[p + f"cls_logits_{lv}_max{sfx}"], rtol, atol, f"cls max {lv}")
        assert_array_equal(logits.argmax(1).numpy(), golden[p + f"cls_logits_{lv}_argmax{sfx}"])
        close(head.bbox_reg[level], golden[p + f"bbox_reg_{lv}{sfx}"], rtol, atol, f"bbox_reg {lv}")
        close(head.ctrness[level], golden[p + f"ctrness_{lv}{sfx}"], rtol, atol, f"ctrness {lv}")
        if f64:
            close(head.top_feats[level][:, :8], golden[p + f"controller_{lv}_c8_float64"], rtol, atol, f"ctrl {lv}")
    close(trace["mask_feats"], golden[p + f"mask_feats{sfx}"], rtol, atol, "mask_feats")


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("i", [0, 1])
def test_candidates_nms_and_mask_logits_match_official(run, golden, dtype_name: str, i: int) -> None:
    r, p, sfx = run(dtype_name, i), f"img{i}_", f"_{dtype_name}"
    f64 = dtype_name == "float64"
    rtol, atol = (1e-9, 1e-10) if f64 else (1e-5, 2e-6)
    (pre,) = r["trace"]["candidates"]
    (keep,) = r["trace"]["nms_keep"]
    for stage, cands in (("pre", pre), ("post", r["pred"])):
        assert cands.boxes.dtype == torch.float32  # detectron2 Boxes
        for field in ("classes", "fpn_levels") + (("loc_index",) if stage == "pre" else ()):
            assert_array_equal(getattr(cands, field).numpy(), golden[p + f"{stage}_{field}{sfx}"], err_msg=field)
        assert_array_equal(cands.locations.numpy(), golden[p + f"{stage}_locations{sfx}"])
        assert_allclose(cands.boxes.numpy(), golden[p + f"{stage}_boxes{sfx}"], rtol=0, atol=1e-4)
        close(cands.scores, golden[p + f"{stage}_scores{sfx}"], rtol, atol, f"{stage} scores")
        close(cands.top_feat, golden[p + f"{stage}_top_feat{sfx}"], rtol, atol, f"{stage} top_feat")
    assert_array_equal(keep.numpy(), golden[p + f"nms_keep{sfx}"])
    mask_atol = 1e-10 if f64 else 1e-4  # README: float32 mask logits about 1e-4 relative to the max
    close(r["pred"].mask_logits, golden[p + f"mask_logits_s8{sfx}"], rtol if f64 else 0, mask_atol, "mask logits")
    if f64:
        pred = r["pred"]
        h8, w8 = pred.mask_logits.shape[2:]  # the dynamic head's two coordinate input channels
        rel = DynamicMaskHead().relative_coords(pred.locations, pred.fpn_levels, h8, w8, 8).reshape(-1, 2, h8, w8)
        close(rel, golden[p + "mask_head_rel_coords_float64"], 1e-9, 1e-10, "rel coords")
        s4 = aligned_bilinear(pred.mask_logits[:3], 2)
        close(s4, golden[p + "mask_logits_s4_first3_float64"], 1e-9, 1e-10, "mask logits s4")
        close(pred.mask_probs[:3], 1 / (1 + np.exp(-golden[p + "mask_logits_s4_first3_float64"])), 1e-9, 1e-10,
              "pred_global_masks")
        prob0 = r["prob0"][0]
        close(prob0[:96, :128], golden[p + "mask_prob_full_first_tl_float64"], 1e-9, 1e-10, "prob tl")
        close(prob0[-96:, -128:], golden[p + "mask_prob_full_first_br_float64"], 1e-9, 1e-10, "prob br")


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("i", [0, 1])
def test_final_instances_match_official(run, golden, dtype_name: str, i: int) -> None:
    r, p, sfx = run(dtype_name, i), f"img{i}_", f"_{dtype_name}"
    seg = r["seg"]
    assert_array_equal(seg.keep.numpy(), golden[p + f"out_from_post{sfx}"])
    assert_array_equal(seg.classes.numpy(), golden[p + f"out_classes{sfx}"])
    assert_allclose(seg.boxes.numpy(), golden[p + f"out_boxes{sfx}"], rtol=0, atol=1e-4)
    close(seg.scores, golden[p + f"out_scores{sfx}"], 1e-9 if dtype_name == "float64" else 1e-5, 1e-10, "scores")
    ref = golden[p + f"out_masks{sfx}"].astype(bool)
    ours = seg.masks.numpy()
    assert ours.shape == ref.shape
    differ = ours != ref
    margin = 1e-6 if dtype_name == "float64" else 1e-4
    near = np.abs(r["probs"].double().numpy() - 0.5) < margin
    assert differ.sum() <= 3 and not (differ & ~near).any(), f"{differ.sum()} mask pixels differ"


# --- NMS ------------------------------------------------------------------------------------------------
def _reference_nms(boxes: np.ndarray, scores: torch.Tensor, thr: float) -> list[int]:
    """Scalar transliteration of torchvision's CPU kernel (float32 scalars, double comparison)."""
    order = scores.sort(0, descending=True)[1].tolist()
    b = boxes.astype(np.float32)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = [False] * len(b)
    keep = []
    for _i, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[_i + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = np.float32(w * h)
            ovr = np.float32(inter / np.float32(np.float32(areas[i] + areas[j]) - inter))
            if float(ovr) > thr:
                suppressed[j] = True
    return keep


def _random_boxes(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=gen) * 200).round()  # grid-snapped: many near-duplicates
    wh = (torch.rand(n, 2, generator=gen) * 60 + 4).round()
    boxes = torch.cat([xy, xy + wh], 1)
    scores = (torch.rand(n, generator=gen) * 20).round() / 20  # many tied scores
    return boxes, scores, torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize(("n", "classes", "thr"), [(240, 3, 0.6), (160, 1, 0.3), (1100, 80, 0.5)])
def test_batched_nms_equals_the_torchvision_kernel(n: int, classes: int, thr: float) -> None:
    boxes, scores, idxs = _random_boxes(n, classes, seed=n)
    ours = batched_nms(boxes, scores, idxs, thr)
    if boxes.numel() <= 4000:  # coordinate trick: one NMS over class-offset boxes
        offsets = idxs.float() * (boxes.max() + 1)
        ref = _reference_nms((boxes + offsets[:, None]).numpy(), scores, thr)
    else:  # per-class NMS, kept indices re-sorted by score
        mask = torch.zeros(n, dtype=torch.bool)
        for c in idxs.unique():
            members = torch.where(idxs == c)[0]
            mask[members[_reference_nms(boxes[members].numpy(), scores[members], thr)]] = True
        kept = torch.where(mask)[0]
        ref = kept[scores[kept].sort(descending=True)[1]].tolist()
    assert ours.tolist() == ref


def test_post_nms_cap_keeps_the_top_scores_in_nms_order() -> None:
    n = 130
    x = torch.arange(n, dtype=torch.float32) * 20  # disjoint boxes: NMS keeps all
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)
    scores = torch.linspace(0.2, 0.9, n).flip(0)
    cands = Candidates(boxes, scores, torch.zeros(n, dtype=torch.long), boxes[:, :2], torch.zeros(n, dtype=torch.long),
                       torch.arange(n), torch.zeros(n, 169))
    kept, keep = select_over_all_levels(cands, 0.6, 100)
    assert keep.tolist() == list(range(100)) and len(kept.scores) == 100


def test_an_image_without_candidates_gives_no_instances() -> None:
    head = DynamicMaskHead()
    assert head(torch.zeros(1, 8, 6, 4), torch.zeros(0, 169), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long),
                8).shape == (0, 1, 6, 4)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).tolist() == []
    empty = InstancePredictions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                                torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, 169),
                                torch.zeros(0, 1, 6, 4), torch.zeros(0, 1, 12, 8))
    seg = postprocess(empty, (40, 30), (48, 32), (80, 60))
    assert seg.masks.shape == (0, 80, 60) and to_coco_instances(seg) == []


# --- pre- and post-processing ----------------------------------------------------------------------------
def test_preprocess_is_the_official_test_input(golden) -> None:
    u8 = golden["img1_u8"]
    prepared = preprocess(Image.fromarray(u8), min_size=0)  # no resize: the golden run's model input
    assert prepared.image_size == prepared.original_size == (376, 504)
    assert torch.equal(pad_batch([prepared.image]), model_input(golden, 1, torch.float32))
    assert_allclose(golden["pixel_mean_bgr_float32"], np.float32([103.53, 116.28, 123.675]))
    # ResizeShortestEdge(800, 1333): int(x + 0.5) rounding, long side capped
    assert resized_size(376, 504) == (800, 1072)
    assert resized_size(480, 640) == (800, 1067)
    assert resized_size(100, 1000) == (133, 1333)
    assert resized_size(1000, 100) == (1333, 133)
    rgb = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    prepared = preprocess(rgb)  # PIL bilinear on uint8, then BGR and mean subtraction
    expected = np.asarray(Image.fromarray(rgb).resize((1200, 800), Image.Resampling.BILINEAR))
    assert prepared.image_size == (800, 1200) and prepared.original_size == (60, 90)
    assert torch.equal(prepared.image, normalize_bgr(torch.from_numpy(expected[:, :, ::-1].transpose(2, 0, 1).copy())))


def test_inputs_the_model_cannot_take_raise_value_error() -> None:
    with pytest.raises(ValueError, match="too elongated"):
        preprocess(np.zeros((1, 5000, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(np.zeros((8, 8), np.uint8))
    with torch.device("meta"):
        model = build_condinst()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 40, 64, device="meta"))


def test_postprocess_scales_clips_drops_empty_boxes_and_resizes_masks(run) -> None:
    r = run("float32", 0)
    pred: InstancePredictions = r["pred"]
    n = len(pred.scores)
    boxes = pred.boxes.clone()
    boxes[1] = torch.tensor([500.0, 10.0, 520.0, 40.0])  # right of the 480-wide image: empty after clipping
    pred = pred._replace(boxes=boxes)
    size, padded = r["size"], r["padded"]
    out = postprocess(pred, size, padded, (2 * size[0], 3 * size[1]))
    assert out.keep.tolist() == [k for k in range(n) if k != 1]
    expected = boxes[out.keep].clone()
    expected[:, 0::2] = (expected[:, 0::2] * 3.0).clamp(0, 3 * size[1])
    expected[:, 1::2] = (expected[:, 1::2] * 2.0).clamp(0, 2 * size[0])
    assert torch.equal(out.boxes, expected)
    assert out.masks.shape == (n - 1, 2 * size[0], 3 * size[1])
    # the same masks at the input size, nearest-sampled up, agree away from edges
    small = r["seg"].masks[[k for k in range(n) if k != 1]]
    assert (out.masks[:, ::2, ::3] == small).float().mean() > 0.99


def test_served_instances_round_trip_rle_and_coco_labels(run, golden) -> None:
    seg = run("float32", 1)["seg"]
    served = to_coco_instances(seg)
    assert [d["score"] for d in served] == sorted((d["score"] for d in served), reverse=True)
    for d, mask, cls in zip(served, seg.masks, seg.classes, strict=True):
        assert_array_equal(decode_rle(d["mask"]), mask.numpy().astype(np.uint8))
        assert d["mask"]["size"] == [376, 504] and isinstance(d["mask"]["counts"], str)
        assert (d["label_id"], d["label"]) == category(int(cls))
    json.dumps(served)
    assert category(0) == (1, "person") and category(11) == (13, "stop sign") and category(79) == (90, "toothbrush")
    assert len(set(COCO_CONTIGUOUS_IDS)) == 80
    assert to_coco_instances(seg, min_score=1.0) == []


def test_predict_serves_the_golden_run(zoo_state, golden, run) -> None:
    model = golden_model(zoo_state, torch.float32)
    (served,) = predict(model, [Image.fromarray(golden["img0_u8"])], min_size=0)
    ref = golden["img0_out_masks_float32"]
    assert len(served) == len(ref)
    seg = run("float32", 0)["seg"]
    for d, box, mask in zip(served, golden["img0_out_boxes_float32"], ref, strict=True):
        assert_allclose(d["box"], box, atol=1e-4)
        assert (decode_rle(d["mask"]) != mask).sum() <= 3
    assert [d["label_id"] for d in served] == [category(int(c))[0] for c in seg.classes]


# --- registry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["condinst_r50.coco_ms1x", "condinst_r50.coco_ms3x"])
def test_entries_are_opt_in_non_commercial_and_build_the_zoo_layout(zoo3: Path, name: str) -> None:
    entry = get_entry(name)
    assert entry.task == "instance-segmentation" and not entry.default_serve
    assert name not in {e.name for e in list_models(default_only=True)}
    assert entry.license.startswith("NON-COMMERCIAL") and entry.paper.startswith("https://arxiv.org/abs/2003.05664")
    module, func = entry.weights.converter.split(":")
    assert module in MODEL_MODULES and callable(getattr(importlib.import_module(module), func))
    assert entry.weights.hf_repo == "tianzhi/AdelaiDet-CondInst" and re.fullmatch(r"[0-9a-f]{64}", entry.weights.sha256)
    assert re.fullmatch(r"[0-9a-f]{40}", entry.weights.revision) and entry.weights.filename.endswith(".pth")
    json.dumps(entry.summary())
    with torch.device("meta"):
        model = entry.build()
    assert isinstance(model, CondInst) and model.score_thresh == 0.05 and model.mask_head.num_gen_params == 169
    official = {e["key"] for e in json.loads((zoo3 / "condinst_state_dict_keys.json").read_text())["keys"]}
    training_only = {k for k in official if k.endswith("num_batches_tracked")} | {"mask_head._iter"}
    assert set(model.state_dict()) == official - training_only
