"""The Triton Python-backend model that runs a zoo handler: the same handler class, the same steps, as TorchServe.

`zoo build --engine triton` (``zoo.triton_repo``) writes a model repository whose version directory holds the
same files as a ``.mar`` (handler and model sources, labelled safetensors, ``zoo_model.json``, assets) plus a
two-line ``model.py`` that imports ``TritonPythonModel`` from here. So Triton runs the entry's handler class
itself: ``ZooHandler.initialize`` loads the model and weights, and ``ZooHandler.handle`` does decode -> batch ->
predict -> encode with its per-request errors; this module only translates Triton's requests and responses.

I/O (the config is written from the registry's I/O schema by ``zoo.triton_repo``):

- each Triton request carries one or more items (its batch dimension); item i is one handler request whose
  fields are element i of every BYTES input that is present (the entry's declared inputs, plus ``body``: a raw
  upload, or a JSON object of fields, exactly as TorchServe passes a request body), and the request's
  parameters (strings as UTF-8, other values as JSON text), which is how undeclared fields (``top_k``...) travel;
- a request that asks for ``output`` alone gets the handler's answer per item there, byte for byte what
  TorchServe would answer (readable JSON, or the ``zoo.tensors`` framing when the request carries that
  field: the gateway's path); any other request gets the entry's typed outputs (the handler's ``tensors``),
  each ``[items, *shape]``, shorter variable dimensions padded with zeros / empty strings.

A handler's per-request error (its ``set_response_status``) fails that Triton request alone with the handler's
message (4xx -> INVALID_ARG, 503 -> UNAVAILABLE, else INTERNAL); its batch-mates are answered normally.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from handlers.base import ZooHandler
from zoo.contract import ARCHIVE_META_FILE
from zoo.tensors import ANSWER_FIELD, ANSWER_TENSORS, TensorData, decode_tensors

try:  # only inside Triton's Python backend stub; tests hand `TritonPythonModel` a stand-in
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - depends on the interpreter
    pb_utils = None

logger = logging.getLogger(__name__)

OUTPUT = "output"


class TritonContext:
    """What ``ZooHandler`` needs from TorchServe's context, recorded per request of one batch."""

    def __init__(self, model_dir: Path, gpu_id: int | None, batch_size: int = 0) -> None:
        self.system_properties: dict[str, Any] = {"model_dir": str(model_dir), "gpu_id": gpu_id}
        self.metrics = None  # Triton keeps its own per-model metrics
        self.statuses: dict[int, tuple[int, str]] = {}
        self.batch_size = batch_size

    def for_batch(self, batch_size: int) -> TritonContext:
        return TritonContext(Path(self.system_properties["model_dir"]), self.system_properties["gpu_id"], batch_size)

    def set_response_status(self, code: int, phrase: str, idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Triton answers are tensors: the content type is implied (JSON bytes in ``output``)."""

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """No per-item headers in Triton; the batch size is visible in Triton's own statistics."""


def error_code(status: int) -> Any:
    """The Triton error code for a handler's HTTP status."""
    if 400 <= status < 500:
        return pb_utils.TritonError.INVALID_ARG
    if status == 503:
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def _parameter_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode("utf-8")


def request_items(request: Any, input_names: list[str]) -> list[dict[str, bytes]]:
    """One Triton request -> its handler requests (one per item of its batch dimension)."""
    parameters = json.loads(request.parameters() or "{}")
    shared = {key: _parameter_bytes(value) for key, value in parameters.items()}
    columns: dict[str, list[bytes]] = {}
    for name in input_names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            columns[name] = [bytes(v) for v in np.asarray(tensor.as_numpy(), dtype=object).reshape(-1)]
    count = max((len(values) for values in columns.values()), default=1)
    for name, values in columns.items():
        if len(values) not in (1, count):
            raise ValueError(f"input '{name}' has {len(values)} elements, others have {count}")
    return [{**shared, **{name: values[i if len(values) > 1 else 0] for name, values in columns.items()}}
            for i in range(count)]


class TritonPythonModel:
    """Triton's Python-backend entry point around the entry's zoo handler (see the module doc)."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"]) / args["model_version"]
        meta = json.loads((model_dir / ARCHIVE_META_FILE).read_text())
        handler_cls = handler_class(meta["handler"])
        gpu_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        self.input_names = [spec["name"] for spec in config.get("input", [])]
        self.output_names = [spec["name"] for spec in config.get("output", [])]
        self.context = TritonContext(model_dir, gpu_id)
        self.handler: ZooHandler = handler_cls()
        self.handler.initialize(self.context)

    def execute(self, requests: list[Any]) -> list[Any]:
        items: list[dict[str, bytes]] = []
        spans: list[tuple[int, int] | str] = []  # per Triton request: its items' range, or why it was refused
        typed: list[list[str]] = []  # per Triton request: the typed outputs it asks for (none: `output`)
        for request in requests:
            try:
                fields = request_items(request, self.input_names)
            except (ValueError, UnicodeDecodeError) as exc:
                spans.append(f"cannot read the request: {exc}")
                typed.append([])
                continue
            wanted = [name for name in self.output_names if name in set(request.requested_output_names())]
            typed.append([] if wanted == [OUTPUT] else [name for name in wanted if name != OUTPUT])
            if typed[-1]:
                for item in fields:
                    item[ANSWER_FIELD] = ANSWER_TENSORS
            spans.append((len(items), len(items) + len(fields)))
            items.extend(fields)
        context = self.context.for_batch(len(items))
        answers = self.handler.handle(items, context) if items else []
        responses = []
        for span in spans:
            if isinstance(span, str):
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(span, pb_utils.TritonError.INVALID_ARG)))
                continue
            failed = [context.statuses[i] for i in range(*span) if i in context.statuses]
            if failed:
                status, message = failed[0]
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, error_code(status))))
                continue
            encoded = [_answer_bytes(answers[i]) for i in range(*span)]
            if typed[len(responses)]:
                outputs = typed_outputs([decode_tensors(answer) for answer in encoded], typed[len(responses)])
                tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            else:
                tensors = [pb_utils.Tensor(OUTPUT, np.array(encoded, dtype=object).reshape(-1, 1))]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        logger.info("unloading %s", getattr(self.handler, "entry", None))


def handler_class(module_name: str) -> type[ZooHandler]:
    """The one ZooHandler subclass a handler module defines (TorchServe's rule: one class per handler module)."""
    module = importlib.import_module(module_name)
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, ZooHandler) and v is not ZooHandler
             and v.__module__ == module.__name__]
    if len(found) != 1:
        raise TypeError(f"{module_name} defines {len(found)} zoo handler classes; expected exactly one")
    return found[0]


def typed_outputs(answers: list[list[tuple[str, str, list[int], TensorData]]], names: list[str]) -> dict[str, Any]:
    """The typed answers of one request's items -> ``{name: array [items, *shape]}`` for the asked names, items
    whose variable dimensions are shorter padded (zeros; empty strings for BYTES)."""
    out = {}
    for name in names:
        parts = [next((datatype, shape, data) for n, datatype, shape, data in answer if n == name)
                 for answer in answers]
        shape = [max(dims) for dims in zip(*(s for _, s, _ in parts), strict=True)] if parts[0][1] else []
        bytes_like = parts[0][0] == "BYTES"
        array = np.full((len(parts), *shape), b"", dtype=object) if bytes_like else \
            np.zeros((len(parts), *shape), dtype=np.asarray(parts[0][2]).dtype)
        for i, (_, item_shape, data) in enumerate(parts):
            value = np.asarray(data, dtype=object if bytes_like else None).reshape(item_shape)
            array[(i, *(slice(0, d) for d in item_shape))] = value
        out[name] = array
    return out


def _answer_bytes(answer: Any) -> bytes:
    """A handler answer as TorchServe's worker sends it (bytes as they are, anything else as ``json.dumps(...,
    indent=2)``), so both engines answer byte for byte alike."""
    if isinstance(answer, (bytes, bytearray)):
        return bytes(answer)
    if isinstance(answer, str):
        return answer.encode("utf-8")
    return json.dumps(answer, indent=2).encode("utf-8")
