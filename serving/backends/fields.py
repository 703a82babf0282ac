"""OIP tensors <-> a zoo handler's named byte fields: the mapping every backend that runs handler-style models
uses (TorchServe over its gRPC API, the in-process backend), so both answer one OIP request alike.

OIP request -> handler payload (one handler request = a map of named byte fields):
- each BYTES input element goes in as a field named after the input (`image`, `restored`, `degraded`...);
- non-BYTES inputs go in as JSON text (a one-element tensor as a JSON scalar, e.g. ``0.5``; otherwise a
  nested JSON list), under the input's name;
- request parameters (except protocol ones such as ``binary_data_output``) go in as fields too:
  strings as UTF-8, other values as JSON text (so ``threshold=0.5`` reaches DETR as ``b"0.5"``);
- a BYTES input with N > 1 elements fans out: N handler requests, element i of every BYTES input in
  request i (a BYTES input with one element is shared by all); answers are reassembled in order.

Handler answers -> OIP outputs:
- ``output``: BYTES, shape [N], element i = the handler's answer to request i, byte for byte (JSON);
- plus, for every top-level number in the answers (JSON object; same key numeric in all N), an output of
  that name, shape [N]: INT64 if all are integers, else FP64 (CKDN's ``score``, toy_echo's ``width``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from serving.errors import GatewayError, InvalidInput
from serving.types import InferOutput, InferRequest, InferResponse

# Request parameters that belong to the protocol, not to the model.
PROTOCOL_PARAMETERS = frozenset({
    "binary_data_output", "binary_data", "binary_data_size", "timeout", "priority", "sequence_id",
    "sequence_start", "sequence_end", "triton_enable_empty_final_response", "headers",
})
OUTPUT = "output"


def _field_value(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def _numeric_outputs(answers: list[bytes]) -> list[InferOutput]:
    docs = []
    for body in answers:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return []
        if not isinstance(doc, dict):
            return []
        docs.append(doc)
    out = []
    for key, first in docs[0].items():
        if key == OUTPUT or isinstance(first, bool) or not isinstance(first, (int, float)):
            continue
        values = [d.get(key) for d in docs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        if all(isinstance(v, int) for v in values):
            out.append(InferOutput.from_numpy(key, np.asarray(values, dtype=np.int64)))
        else:
            out.append(InferOutput.from_numpy(key, np.asarray(values, dtype=np.float64)))
    return out


def fan_out(request: InferRequest) -> list[dict[str, bytes]]:
    """OIP request -> one handler input map per element of the BYTES inputs (see module doc)."""
    shared: dict[str, bytes] = {}
    per_element: dict[str, list[bytes]] = {}
    for key, value in request.parameters.items():
        if key not in PROTOCOL_PARAMETERS and value is not None:
            shared[key] = _field_value(value)
    count = 1
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            elements = tensor.bytes_elements()
            if not elements:
                raise InvalidInput(f"input '{tensor.name}' has no elements")
            if len(elements) == 1:
                shared[tensor.name] = elements[0]
            else:
                if count not in (1, len(elements)):
                    raise InvalidInput(
                        f"input '{tensor.name}' has {len(elements)} elements but another BYTES input has "
                        f"{count}: BYTES inputs must have the same number of elements (or one)")
                count = len(elements)
                per_element[tensor.name] = elements
        else:
            array = tensor.as_numpy()
            shared[tensor.name] = json.dumps(array.reshape(-1)[0].item() if array.size == 1
                                             else array.tolist()).encode()
    return [{**shared, **{name: elements[i] for name, elements in per_element.items()}} for i in range(count)]


def answers_to_response(request: InferRequest, answers: list[bytes]) -> InferResponse:
    """The handler's answers (one per fanned-out request) as the OIP response, restricted to the outputs
    the request asked for (InvalidInput naming a missing one)."""
    outputs = [InferOutput.from_bytes_list(OUTPUT, answers)]
    if not request.outputs or any(o.name != OUTPUT for o in request.outputs):
        outputs += _numeric_outputs(answers)
    if request.outputs:
        available = {o.name: o for o in outputs}
        missing = [o.name for o in request.outputs if o.name not in available]
        if missing:
            raise InvalidInput(f"model '{request.model_name}' has no output "
                               f"{', '.join(repr(m) for m in missing)}; available: {', '.join(available)}")
        outputs = [available[o.name] for o in request.outputs]
    return InferResponse(request.model_name, outputs, request.model_version, request.id)


async def answer_all(payloads: list[dict[str, bytes]],
                     answer_one: Callable[[dict[str, bytes]], Awaitable[bytes]]) -> list[bytes]:
    """Every fanned-out request answered (concurrently when there are several), in order; a failure is
    raised with the index of the element it belongs to."""
    if len(payloads) == 1:
        return [await answer_one(payloads[0])]
    results = await asyncio.gather(*(answer_one(p) for p in payloads), return_exceptions=True)
    for i, result in enumerate(results):
        if isinstance(result, GatewayError):
            result.message = f"element {i}: {result.message}"
            result.args = (result.message,)
            raise result
        if isinstance(result, BaseException):
            raise result
    return list(results)


def zoo_metadata(meta: dict[str, Any], model: str, versions: list[str], engine: str, backend: str) -> dict[str, Any]:
    """OIP metadata of a model that runs a zoo handler, from its ``zoo_model.json`` (`meta`, may be empty),
    alike on every engine: the handler's inputs as BYTES, ``output``, and the zoo's parameters."""
    weights = meta.get("weights") or {}
    kind = weights.get("kind", "unknown")
    return {
        "name": model,
        "versions": versions or ([str(meta["version"])] if meta.get("version") else []),
        # the weights kind is in the platform string too: gRPC metadata has no parameters field
        "platform": f"{engine} (weights: {kind})",
        "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in (meta.get("inputs") or {})],
        "outputs": [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}],
        "parameters": {
            "backend": backend,
            "backend_model": model,
            "task": meta.get("task", ""),
            "weights_kind": kind,
            "random_weights": kind == "random-seeded",
            "weights": weights,
            "input_descriptions": meta.get("inputs", {}),
            "output_descriptions": meta.get("outputs", {}),
            "license": meta.get("license", ""),
            "paper": meta.get("paper", ""),
        },
    }
