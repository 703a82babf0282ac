"""Helpers for the dense-output handler tests: real photos, requests, the served archive's handler run in
process (same random weights as the server), and the typed-output contract of an entry."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli.torchserve import TorchServe
from tests.handlers.handler_context import HandlerContext
from tests.support import http_request, json_body, multipart, running_torchserve
from zoo._registry import ModelEntry

DATATYPES = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32}
DECLARED = re.compile(r"^(FP32|FP16|INT32|BYTES) \[([-\d, ]+)\]")


def cpu_test_size(entry: ModelEntry) -> dict[str, Any]:
    """Config overrides that shrink a dense-output entry to a CPU test size (the weights' shapes unchanged),
    by task; {} for entries served at their own size. One place for the handler, gateway and engine-parity tests."""
    if entry.task == "image-translation":
        return {"preprocess": {**entry.config["preprocess"], "load_size": 64}}
    if entry.task == "stereo-depth":
        return {"input_size": [128, 128]}
    if entry.task == "instance-segmentation":
        return {"min_size_test": 128, "max_size_test": 192}
    if entry.task == "semantic-segmentation":
        return {"test_scale": [192, 96]}
    return {}


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    """A real photograph shipped with scikit-image (astronaut, coffee, chelsea, rocket ...), resized."""
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.Resampling.BILINEAR)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def post_body(ts: TorchServe, model: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    """One body to TorchServe's prediction route -> (status, JSON answer)."""
    status, _, raw = http_request(f"{ts.inference_url}/predictions/{model}", body, {"Content-Type": content_type},
                                  "POST", timeout=600)
    return status, json_body(raw)  # type: ignore[return-value]


def post(ts: TorchServe, model: str, fields: dict[str, bytes | str]) -> tuple[int, dict[str, Any]]:
    """Multipart fields (bytes as files) -> (status, JSON answer)."""
    return post_body(ts, model, *multipart({k: (k, v, "application/octet-stream") if isinstance(v, bytes) else v
                                            for k, v in fields.items()}))


def post_json(ts: TorchServe, model: str, fields: dict[str, bytes | str]) -> tuple[int, dict[str, Any]]:
    """A JSON object (bytes as base64) -> (status, JSON answer)."""
    doc = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in fields.items()}
    return post_body(ts, model, json.dumps(doc).encode(), "application/json")


def serving_fixtures(model: str, handler_class: type, overrides: dict[str, Any]) -> tuple[Any, Any]:
    """Module fixtures ``(torchserve, in_process)``: one TorchServe serving `model`'s random-weight archive built
    with config `overrides` (a reduced test size), and that archive's handler run in this process. Assign them
    to module names ``torchserve, in_process = serving_fixtures(...)`` so pytest finds them."""

    @pytest.fixture(scope="module")
    def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
        with running_torchserve(tmp_path_factory.mktemp(f"{model}_ts"), [model],
                                config_overrides={model: overrides}) as ts:
            yield ts

    @pytest.fixture(scope="module")
    def in_process(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, HandlerContext]:
        return served_handler(torchserve, model, handler_class, tmp_path_factory.mktemp(f"{model}_mar"))

    return torchserve, in_process


def image_from_b64(text: str) -> Image.Image:
    """A base64 PNG/JPEG of an answer, decoded (mode and format kept)."""
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img


def served_handler(ts: TorchServe, model: str, handler_class: type, folder: Path) -> tuple[Any, HandlerContext]:
    """The served archive's handler, initialised in this process from the archive's own meta and weights."""
    with zipfile.ZipFile(Path(ts.model_store) / f"{model}.mar") as zf:
        zf.extractall(folder)
    handler, context = handler_class(), HandlerContext(folder)
    handler.initialize(context)
    return handler, context


def declared_outputs(entry: ModelEntry) -> dict[str, tuple[str, list[int], str]]:
    """{name: (datatype, shape, description)} of the entry's outputs: ``TensorSpec``s, or descriptions that start
    with ``DATATYPE [shape]`` (``FP32 [-1, 4]: ...``)."""
    if isinstance(entry.outputs, dict):
        out = {}
        for name, description in entry.outputs.items():
            match = DECLARED.match(description)
            assert match, f"{entry.name} output {name!r} does not start with 'DATATYPE [shape]': {description!r}"
            out[name] = (match.group(1), [int(d) for d in match.group(2).split(",")], description)
        return out
    return {spec.name: (spec.datatype, list(spec.shape), spec.description) for spec in entry.outputs}


def check_typed_outputs(entry: ModelEntry, tensors: dict[str, Any]) -> None:
    """`tensors(answer)` gives exactly the outputs the entry declares, in its order, each of its declared datatype
    and shape (-1 is any size; FP32 may come as FP16 where the description says so)."""
    declared = declared_outputs(entry)
    assert list(tensors) == list(declared), (list(tensors), list(declared))
    for name, (datatype, dims, description) in declared.items():
        value = tensors[name]
        if datatype == "BYTES":
            assert isinstance(value, list) and all(isinstance(v, bytes) for v in value), name
            shape: tuple[int, ...] = (len(value),)
        else:
            allowed = {DATATYPES[datatype]} | ({np.float16} if "FP16" in description else set())
            assert isinstance(value, np.ndarray) and value.dtype.type in allowed, (name, type(value))
            shape = value.shape
        assert len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True)), \
            (name, shape, dims)


def served_as(answer: dict[str, Any]) -> str:
    """The registry entry (``arch.tag``) an answer names, whether ``model.name`` is the entry or the served name
    (then ``model.entry`` is the entry)."""
    return answer["model"].get("entry", answer["model"]["name"])
