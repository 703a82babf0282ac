"""Zoo breadth II through the gateway + a real TorchServe: CondInst (instance masks), DNLNet (label maps), CUT
(image translation), stereo-from-mono (a named left/right pair) and SCAN (clusters over the classification
contract), with random weights at reduced test sizes. The SDK's typed methods, OIP REST and gRPC with named
BYTES inputs, `zoo predict --draw`, and a bad pair refused with the handler's message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from PIL import Image

from cli.main import main as cli_main
from clients import DisparityResult, InvalidInputError, TranslationResult, ZooClient
from clients.draw import disparity_colors
from tests.handlers.served import cpu_test_size, photo, served_as
from tests.serving.gateway_support import running_gateway
from tests.support import http_request, json_body, running_torchserve
from zoo import get_entry

pytestmark = pytest.mark.integration

TRANSLATION, STEREO, CLUSTERS = "cut", "stereo_from_mono", "scan_r18"
INSTANCES, SEMANTIC = "condinst_r50", "dnl_r50_d8"
OVERRIDES = {name: cpu_test_size(get_entry(name)) for name in (TRANSLATION, STEREO, INSTANCES, SEMANTIC)}
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("breadth_gw")
    with running_torchserve(workdir / "ts", [TRANSLATION, STEREO, CLUSTERS, INSTANCES, SEMANTIC],
                            config_overrides=OVERRIDES) as ts, \
            running_gateway(ts, workdir / "gw") as gw:
        yield gw


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("breadth_files")
    wide = photo("astronaut", (106, 72))  # a stereo pair: two crops of one photo, 10 px apart
    paths = {"left.png": wide.crop((0, 0, 96, 72)), "right.png": wide.crop((10, 0, 106, 72)),
             "cat.jpg": photo("chelsea", (90, 60))}
    out = {}
    for name, img in paths.items():
        out[name] = folder / name
        img.save(out[name])
    return out


def test_sdk_typed_results_through_the_gateway(gateway, files) -> None:
    with ZooClient(gateway.http_url, timeout_s=TIMEOUT_S) as zoo:
        translated = zoo.translate(files["cat.jpg"], format="jpeg", quality=90)
        assert isinstance(translated, TranslationResult) and translated.format == "jpeg"
        assert translated.image().size == (64, 64) and translated.input_size == (90, 60)
        assert translated.direction == "horse -> zebra" and translated.model.random_weights

        disparity = zoo.estimate_disparity(files["left.png"], files["right.png"], dtype="float16")
        assert isinstance(disparity, DisparityResult) and disparity.disparity.dtype == np.float16
        assert disparity.disparity.shape == (72, 96) and disparity.image_size == (96, 72)
        np.testing.assert_allclose(disparity.disparity_from_png16(), disparity.disparity.astype(np.float32),
                                   atol=0.05)

        clusters = zoo.predict(CLUSTERS, {"image": files["cat.jpg"].read_bytes(), "top_k": "3"})
        assert [c["label"] for c in clusters["top_k"]] == [None] * 3  # clusters are not classes
        assert all(0 <= c["index"] < 10 for c in clusters["top_k"]) and served_as(clusters) == "scan_r18.cifar10"
        assert sum(c["score"] for c in clusters["top_k"]) <= 1.0 + 1e-6

        meta = zoo.model_metadata(STEREO)
        assert [t.name for t in meta.inputs] == ["left", "right", "dtype"] and meta.task == "stereo-depth"
        assert set(meta.parameters["output_descriptions"]) == {"disparity", "disparity_png16"}

        with pytest.raises(InvalidInputError) as refused:
            zoo.estimate_disparity(files["left.png"], files["cat.jpg"])
        assert "'left' (96x72) and 'right' (90x60) must have the same size" in str(refused.value)


def test_oip_named_inputs_equal_the_task_route(gateway, files) -> None:
    left, right = files["left.png"].read_bytes(), files["right.png"].read_bytes()
    client = tgrpc.InferenceServerClient(gateway.grpc_target)
    tensors = []
    for name, data in (("left", left), ("right", right)):
        tensor = tgrpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        tensors.append(tensor)
    via_grpc = client.infer(STEREO, tensors)  # typed outputs, a batch of one

    with ZooClient(gateway.http_url, timeout_s=TIMEOUT_S) as zoo:
        via_rest = zoo.infer(TRANSLATION, {"image": files["cat.jpg"].read_bytes()})
        via_task = DisparityResult.from_json(zoo.predict(STEREO, {"left": left, "right": right}))
        translated = TranslationResult.from_json(zoo.predict(TRANSLATION, {"image": files["cat.jpg"].read_bytes()}))
    np.testing.assert_array_equal(via_grpc.as_numpy("disparity")[0], via_task.disparity)
    assert bytes(via_grpc.as_numpy("disparity_png16").reshape(-1)[0]) == via_task.png16
    assert bytes(via_rest["image"].reshape(-1)[0]) == translated.image_bytes and translated.format == "png"

    status, _, raw = http_request(f"{gateway.http_url}/v1/models/{STEREO}:predict", b"\x89PNG broken",
                                  {"Content-Type": "image/png"}, "POST")
    assert status == 400 and "missing image 'left' and 'right'" in json_body(raw)["error"]  # type: ignore[index]


def test_zoo_predict_draws_translation_and_disparity(gateway, files, tmp_path, capsys) -> None:
    out = tmp_path / "stereo.png"
    code = cli_main(["predict", STEREO, str(files["left.png"]), str(files["right.png"]), "--draw", str(out),
                     "--json", "--url", gateway.http_url, "--timeout", str(TIMEOUT_S)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (entry,) = json.loads(captured.out)
    result = DisparityResult.from_json(entry["result"])
    drawn = np.asarray(Image.open(out).convert("RGB"))
    top = drawn.shape[0] - (72 + max(12, 72 // 22) + 12)
    assert drawn.shape[1] == 96 + 8 + 96 and "RANDOM" in captured.err
    np.testing.assert_array_equal(drawn[top:top + 72, 104:], disparity_colors(result.disparity))

    out = tmp_path / "zebra.png"
    code = cli_main(["predict", TRANSLATION, str(files["cat.jpg"]), "-p", "format=png", "--draw", str(out),
                     "--url", gateway.http_url, "--timeout", str(TIMEOUT_S)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "horse -> zebra, 64x64 PNG" in captured.out
    assert out.is_file()
    code = cli_main(["predict", TRANSLATION, str(files["cat.jpg"]), "--threshold", "0.5", "--url", gateway.http_url])
    assert code == 1 and "takes -p format, quality, preprocess (not --threshold)" in capsys.readouterr().err


def test_masks_and_label_maps_through_the_gateway_typed_and_task_route_agree(gateway, files) -> None:
    """CondInst and DNLNet on a real photo: the SDK's typed results over the task route, and the same answers
    as typed OIP outputs over gRPC (one image in, a batch of one out)."""
    image = files["cat.jpg"].read_bytes()
    client = tgrpc.InferenceServerClient(gateway.grpc_target)
    tensor = tgrpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    with ZooClient(gateway.http_url, timeout_s=TIMEOUT_S) as zoo:
        instances = zoo.segment_instances(files["cat.jpg"], model=INSTANCES)
        assert instances.image_size == (90, 60) and instances.model.random_weights
        typed = client.infer(INSTANCES, [tensor])
        boxes, scores = typed.as_numpy("boxes"), typed.as_numpy("scores")
        assert boxes.shape == (1, len(instances), 4) and scores.shape == (1, len(instances))
        for row, instance in enumerate(instances):
            assert instance.mask().shape == (60, 90)
            np.testing.assert_allclose(boxes[0, row], instance.box, atol=1e-4)
            assert scores[0, row] == pytest.approx(instance.score, abs=1e-6)

        labels = zoo.segment(files["cat.jpg"], model=SEMANTIC)
        assert labels.label_map().shape == (60, 90) and labels.dataset == "cityscapes"
        assert sum(c.fraction for c in labels.class_fractions) == pytest.approx(1.0, abs=1e-6)
        typed = client.infer(SEMANTIC, [tensor])
        assert bytes(typed.as_numpy("label_map_png").reshape(-1)[0]) == labels.label_map_png
        fractions = typed.as_numpy("class_fractions")
        assert fractions.shape == (1, 19) and fractions.sum() == pytest.approx(1.0, abs=1e-5)
