"""The GPU fast path, checked on CPU: device-side decode/resize/normalise against the PIL path, bf16 against
fp32, shape buckets, the serving runtime's settings and the warm-up hook.

The bounds asserted here are the ones the registry entries state (``ServingConfig.accuracy``) and
``zoo.device_image.RESIZE_TOLERANCE``; photos are scikit-image's, weights seeded random.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from handlers.codec import RequestError, decode_image, decode_on_device, probe_image
from handlers.detr_handler import DetrHandler
from tests.handlers.handler_context import HandlerContext
from zoo import create_model, get_entry
from zoo import device_image as di
from zoo.ckdn import CKDN, pair_batch_to_inputs, preprocess_pair, preprocess_pair_tensors
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE
from zoo.detr import DETR_BUCKETS, box_cxcywh_to_xyxy, eval_tensor, preprocess
from zoo.runtime import Runtime, ServedModel, group_by_bucket, pick_bucket, warmup_batches, warmup_shapes

CPU = torch.device("cpu")
PHOTOS = ("astronaut", "coffee", "chelsea")


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def encoded(img: Image.Image, fmt: str = "JPEG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b)
    inter = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area_a, area_b = (a[..., 2:] - a[..., :2]).prod(-1), (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area_a + area_b - inter)


# --- decode --------------------------------------------------------------------------------------------
def test_cpu_decode_is_the_pil_decode_with_exif_rotation() -> None:
    img = photo("coffee").resize((120, 80))
    exif = Image.Exif()
    exif[di.EXIF_ORIENTATION] = 6  # rotate 90 degrees on display
    for data in (encoded(img), encoded(img, "PNG"), encoded(img, exif=exif)):
        probed = probe_image(data)
        pixels = decode_on_device(probed, CPU)
        expected = np.asarray(decode_image(data))
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, *expected.shape[:2])
        assert np.array_equal(pixels.permute(1, 2, 0).numpy(), expected)
        assert probed.upright_size == (expected.shape[1], expected.shape[0])
    assert not di.gpu_decoder_available(CPU) and not di.decodes_on_gpu(probe_image(encoded(img)), CPU)


def test_probe_checks_the_header_and_decode_refuses_corrupt_pixels() -> None:
    with pytest.raises(RequestError, match="not a recognised image"):
        probe_image(b"not an image at all")
    with pytest.raises(RequestError) as too_big:
        probe_image(encoded(Image.new("RGB", (400, 300))), max_pixels=100_000)
    assert too_big.value.status == 413
    truncated = encoded(photo("coffee"))[:2000]
    with pytest.raises(RequestError, match="corrupt"):
        decode_on_device(probe_image(truncated), CPU)


# --- resize and normalise against PIL ------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_resize_matches_pil_within_the_stated_bound(name: str) -> None:
    img = photo(name)
    big = img.resize((img.width * 3, img.height * 3), Image.Resampling.BICUBIC)  # a shrink as well as a stretch
    for source in (img, big):
        tensor = di.pil_to_tensor(source)
        for mode, pil_mode, size in (("bilinear", Image.Resampling.BILINEAR, (800, 1066)),
                                     ("bicubic", Image.Resampling.BICUBIC, (329, 493))):
            expected = torch.from_numpy(np.asarray(source.resize(size[::-1], pil_mode)).copy()).permute(2, 0, 1)
            diff = (di.resize(tensor, size, mode).int() - expected.int()).abs().float()
            assert diff.mean() <= di.RESIZE_TOLERANCE["mean_abs"], (mode, source.size)
            assert diff.max() <= di.RESIZE_TOLERANCE["max_abs"], (mode, source.size)
        nearest = source.resize((493, 329), Image.Resampling.NEAREST)
        diff = (di.resize(tensor, (329, 493), "nearest").int() - di.pil_to_tensor(nearest).int()).abs().float()
        assert diff.mean() <= 0.1  # a few pixel centres round to the neighbouring source pixel


def test_normalize_and_pad_match_the_official_batching() -> None:
    images = [photo("coffee").resize((90, 60)), photo("chelsea").resize((60, 80))]
    pixel_values, padding_mask, sizes = preprocess(images, size=64, max_size=100)
    tensors = [eval_tensor(di.pil_to_tensor(img), size=64, max_size=100) for img in images]
    ours, mask = di.pad_batch(tensors, tuple(pixel_values.shape[-2:]))
    assert torch.equal(mask, padding_mask)
    assert (ours - pixel_values).abs().max() <= 2 / 255 / 0.224  # one rounding step of 1/255 after the resize
    assert sizes == [(60, 90), (80, 60)]
    padded, padded_mask = di.pad_batch(tensors, (96, 96), batch=4)
    assert padded.shape == (4, 3, 96, 96) and not padded_mask[2:].any()  # blank rows are not all padding


# --- DETR and CKDN outputs: device preprocessing vs PIL, bf16 vs fp32 --------------------------------------
@pytest.fixture(scope="module")
def detr() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("detr_resnet50").eval()


def test_detr_bf16_and_device_preprocessing_stay_within_the_stated_tolerance(detr: torch.nn.Module) -> None:
    img = photo("astronaut")
    pixel_values, padding_mask, _ = preprocess([img])
    device_values = eval_tensor(di.pil_to_tensor(img))[None]
    with torch.inference_mode():
        fp32 = detr(pixel_values, padding_mask)
        device = detr(device_values, padding_mask)
        bf16 = ServedModel(detr, Runtime(CPU, precision="bf16"))(pixel_values, padding_mask)
    probs = {k: out["logits"].float().softmax(-1)[..., :-1].max(-1) for k, out in
             (("fp32", fp32), ("device", device), ("bf16", bf16))}
    for other, logits_tol, iou_min, score_tol in (("device", 1e-3, 0.999, 1e-4), ("bf16", 0.02, 0.99, 5e-4)):
        out = {"device": device, "bf16": bf16}[other]
        assert torch.equal(probs[other].indices, probs["fp32"].indices), other  # every query keeps its class
        assert (probs[other].values - probs["fp32"].values).abs().max() <= score_tol, other
        assert (out["logits"].float() - fp32["logits"]).abs().max() <= logits_tol, other
        assert box_iou(out["boxes"].float(), fp32["boxes"]).min() >= iou_min, other


def test_ckdn_bf16_and_device_preprocessing_stay_within_the_stated_tolerance() -> None:
    torch.manual_seed(0)
    model = CKDN().eval()
    bf16_model = ServedModel(model, Runtime(CPU, precision="bf16", channels_last=True))
    for name in PHOTOS:
        restored = photo(name)
        degraded = restored.resize((restored.width // 2, restored.height // 2)).resize(restored.size)
        pil_pair = torch.from_numpy(preprocess_pair(restored, degraded))[None]
        device_pair = preprocess_pair_tensors(di.pil_to_tensor(restored), di.pil_to_tensor(degraded))[None]
        pixel_diff = (pil_pair.int() - device_pair.int()).abs().float()
        assert pixel_diff[:, 0].mean() <= 0.2 and pixel_diff[:, 1].mean() <= 0.1, name
        with torch.inference_mode():
            fp32 = model(*pair_batch_to_inputs(pil_pair))
            assert (model(*pair_batch_to_inputs(device_pair)) - fp32).abs().max() <= 1e-4, name
            assert (bf16_model(*pair_batch_to_inputs(pil_pair)).float() - fp32).abs().max() <= 1e-3, name


# --- buckets and the runtime ---------------------------------------------------------------------------
def test_buckets_hold_every_eval_size_and_group_a_mixed_batch() -> None:
    assert pick_bucket(800, 1066, DETR_BUCKETS) == (800, 1088)
    assert pick_bucket(750, 1333, DETR_BUCKETS) == (800, 1344)
    assert pick_bucket(1200, 800, DETR_BUCKETS) == (1216, 800)
    assert pick_bucket(500, 1333, ()) == (512, 1344)  # outside every bucket: multiples of 32
    groups = group_by_bucket([(800, 1066), (1066, 800), (800, 1000)], DETR_BUCKETS)
    assert groups == {(800, 1088): [0, 2], (1088, 800): [1]}
    assert group_by_bucket([(800, 1066), (700, 1100)], ()) == {(800, 1100): [0, 1]}  # official: largest of each


def test_runtime_defaults_cpu_to_fp32_and_cuda_to_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    serving = get_entry("detr_resnet50").serving
    cpu = Runtime.for_serving(serving, CPU, env={})
    assert (cpu.precision, cpu.channels_last, cpu.device_preprocess, cpu.warmup, cpu.is_default) == (
        "fp32", False, False, False, True)
    cuda = Runtime.for_serving(serving, torch.device("cuda", 0), env={})
    assert (cuda.precision, cuda.channels_last, cuda.device_preprocess, cuda.warmup) == ("bf16", True, True, True)
    assert cuda.max_batch == serving.gpu.batch_size and warmup_batches(cuda) == [1, 2, 4, 8, 16, 32]
    assert len(list(warmup_shapes(cuda))) == len(DETR_BUCKETS) * 6
    forced = Runtime.for_serving(serving, CPU, env={"ZOO_PRECISION": "bf16", "ZOO_DEVICE_PREPROCESS": "1"})
    assert (forced.precision, forced.device_preprocess) == ("bf16", True)
    with pytest.raises(ValueError, match="ZOO_PRECISION"):
        Runtime.for_serving(serving, CPU, env={"ZOO_PRECISION": "int3"})
    assert cpu.batch_bucket(3) == 4 and cpu.batch_bucket(33) == 33


def test_served_model_keeps_the_model_s_attributes() -> None:
    model = CKDN().eval()
    served = Runtime(CPU, precision="bf16").prepare(model)
    assert isinstance(served, ServedModel) and served.fc_ is model.fc_
    assert Runtime(CPU).prepare(model) is model  # fp32/eager/contiguous: served as built


# --- the DETR handler on the device path, with warm-up before readiness --------------------------------------
TINY_DETR = {"backbone_depths": [1, 1, 1, 1], "num_encoder_layers": 1, "num_decoder_layers": 1,
             "dim_feedforward": 64, "d_model": 64, "num_queries": 20}


@pytest.fixture(scope="module")
def tiny_detr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("detr_tiny")
    meta = {"name": "detr_resnet50", "config_overrides": TINY_DETR, "weights": {"kind": "random-seeded"}}
    (folder / ARCHIVE_META_FILE).write_text(json.dumps(meta))
    torch.manual_seed(0)
    save_file(get_entry("detr_resnet50").build(**TINY_DETR).state_dict(), str(folder / ARCHIVE_WEIGHTS_FILE))
    return folder


def test_detr_handler_device_path_agrees_with_the_pil_path_and_warms_up_first(
        tiny_detr_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [{"body": encoded(photo(name).resize(size)), "threshold": "0", "top_k": "5"}
                for name, size in (("coffee", (160, 120)), ("chelsea", (160, 200)))]  # 4:3 landscape, portrait
    monkeypatch.setenv("ZOO_WARMUP", "0")
    pil_handler, context = DetrHandler(), HandlerContext(tiny_detr_dir)
    pil_handler.initialize(context)
    pil_answers = pil_handler.handle(requests, context)

    warmed: list[tuple[int, ...]] = []
    monkeypatch.setenv("ZOO_WARMUP", "1")
    monkeypatch.setenv("ZOO_DEVICE_PREPROCESS", "1")
    monkeypatch.setattr("handlers.detr_handler.warmup_shapes", lambda runtime: [(1, (800, 800))])
    device_handler = DetrHandler()
    original_model = DetrHandler.load_model

    def spy_model(self: DetrHandler, model_dir: Path) -> torch.nn.Module:
        model = original_model(self, model_dir)
        return lambda pixels, mask: warmed.append(tuple(pixels.shape)) or model(pixels, mask)

    monkeypatch.setattr(DetrHandler, "load_model", spy_model)
    device_handler.initialize(context)
    assert warmed == [(1, 3, 800, 800)]  # warmed inside initialize, before TorchServe reports the worker ready
    device_answers = device_handler.handle(requests, context)
    assert sorted(warmed[1:]) == [(1, 3, 800, 1088), (1, 3, 1088, 800)]  # one bucket each, not one 1088x1088
    for pil, device in zip(pil_answers, device_answers, strict=True):
        assert device["image_size"] == pil["image_size"]
        assert [d["label_id"] for d in device["detections"]] == [d["label_id"] for d in pil["detections"]]
        for a, b in zip(pil["detections"], device["detections"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-3
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) <= 1.0  # pixels
