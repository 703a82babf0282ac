"""OIP tensors <-> a zoo handler's named byte fields: the mapping every backend that runs handler-style models
uses (TorchServe over its gRPC API, the in-process backend), so both answer one OIP request alike.

OIP request -> handler payload (one handler request = a map of named byte fields):
- each BYTES input element goes in as a field named after the input (`image`, `restored`, `degraded`...);
- non-BYTES inputs go in as JSON text (a one-element tensor as a JSON scalar, e.g. ``0.5``; otherwise a
  nested JSON list), under the input's name; at most MAX_JSON_FIELD_ELEMENTS elements (413 beyond), since
  writing JSON holds the event loop (and the GIL, whatever thread does it): large data travels as BYTES;
- request parameters (except protocol ones such as ``binary_data_output``) go in as fields too:
  strings as UTF-8, other values as JSON text (so ``threshold=0.5`` reaches DETR as ``b"0.5"``);
- a BYTES input with N > 1 elements fans out: N handler requests, element i of every BYTES input in
  request i (a BYTES input with one element is shared by all); answers are reassembled in order.

Every handler request carries ``zoo.tensors.ANSWER_FIELD``, so a zoo handler answers its registry entry's
typed outputs (``zoo.tensors`` framing) instead of JSON. Handler answers -> OIP outputs:
- typed answers: each declared output with a leading batch dimension, ``[N, *shape]`` (item i = the answer
  to request i); where items differ in a variable dimension (detections per image), shorter ones are padded
  with zeros (empty strings for BYTES). An output requested with ``parameters.classification = k`` is
  answered as Triton's classification extension: BYTES ``[N, k]`` of ``"<score>:<index>"``, best first;
- an answer that is not typed (a model with no declared outputs, e.g. an in-process test model): ``output``,
  BYTES [N], element i = the answer to request i, byte for byte, plus, for every top-level number in the
  JSON answers (same key numeric in all N), an output of that name, shape [N]: INT64 or FP64.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import numpy as np

from serving.errors import BackendError, GatewayError, InvalidInput, PayloadTooLarge
from serving.types import InferOutput, InferRequest, InferResponse
from zoo.tensors import (
    ANSWER_FIELD,
    ANSWER_TENSORS,
    TensorData,
    TensorError,
    TensorSpec,
    decode_tensors,
    is_tensors,
    specs_from,
)

# Request parameters that belong to the protocol, not to the model.
PROTOCOL_PARAMETERS = frozenset({
    "binary_data_output", "binary_data", "binary_data_size", "timeout", "priority", "sequence_id",
    "sequence_start", "sequence_end", "triton_enable_empty_final_response", "headers",
})
OUTPUT = "output"
MAX_JSON_FIELD_ELEMENTS = 1 << 18
CLASSIFICATION = "classification"  # Triton's classification extension: an output parameter asking for top k

# One request's typed answer: (name, datatype, shape, data) per output, in the handler's order.
ItemOutputs = list[tuple[str, str, list[int], TensorData]]
Answer = bytes | ItemOutputs


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
            if tensor.numel > MAX_JSON_FIELD_ELEMENTS:
                raise PayloadTooLarge(
                    f"input '{tensor.name}' has {tensor.numel} {tensor.datatype} elements; at most "
                    f"{MAX_JSON_FIELD_ELEMENTS} reach a handler-style model as JSON: send large data as BYTES")
            array = tensor.as_numpy()
            shared[tensor.name] = json.dumps(array.reshape(-1)[0].item() if array.size == 1
                                             else array.tolist()).encode()
    shared[ANSWER_FIELD] = ANSWER_TENSORS
    return [{**shared, **{name: elements[i] for name, elements in per_element.items()}} for i in range(count)]


def tensor_metadata(specs: Iterable[TensorSpec], batched: bool = True) -> list[dict[str, Any]]:
    """OIP metadata of declared tensors; `batched`: with the leading batch dimension (-1) inference adds."""
    return [{"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape] if batched else list(spec.shape)}
            for spec in specs]


def typed_answer(body: bytes) -> Answer:
    """A handler's answer: its typed outputs when it answered typed, else the bytes as they came."""
    if not is_tensors(body):
        return body
    try:
        return decode_tensors(body)
    except TensorError as exc:
        raise BackendError(f"the model's typed answer is malformed: {exc}") from None


def _stack(name: str, items: list[tuple[str, list[int], TensorData]]) -> InferOutput:
    """One output of N items -> ``[N, *shape]``, shorter variable dimensions padded."""
    datatypes = {datatype for datatype, _, _ in items}
    ranks = {len(shape) for _, shape, _ in items}
    if len(datatypes) != 1 or len(ranks) != 1:
        raise BackendError(f"output '{name}' differs in datatype or rank between the items of one request")
    datatype = datatypes.pop()
    shape = [max(dims) for dims in zip(*(s for _, s, _ in items), strict=True)] if ranks.pop() else []
    if len(items) == 1 or all(s == shape for _, s, _ in items):
        if datatype == "BYTES":
            return InferOutput(name, datatype, [len(items), *shape], [e for _, _, d in items for e in d])
        return InferOutput(name, datatype, [len(items), *shape], np.stack([np.asarray(d) for _, _, d in items]))
    if datatype == "BYTES":
        out = np.full((len(items), *shape), b"", dtype=object)
        for i, (_, s, data) in enumerate(items):
            out[(i, *(slice(0, d) for d in s))] = np.asarray(data, dtype=object).reshape(s)
        return InferOutput(name, datatype, list(out.shape), out.reshape(-1).tolist())
    first = np.asarray(items[0][2])
    out = np.zeros((len(items), *shape), dtype=first.dtype)
    for i, (_, s, data) in enumerate(items):
        out[(i, *(slice(0, d) for d in s))] = data
    return InferOutput(name, datatype, list(out.shape), out)


def _classification(output: InferOutput, k: Any) -> InferOutput:
    """Triton's classification extension on a probability output: top ``k`` per item as "score:index"."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"output '{output.name}': classification must be a positive integer, got {k!r}")
    if output.datatype == "BYTES" or len(output.shape) != 2:
        raise InvalidInput(f"output '{output.name}' ({output.datatype} {output.shape}) holds no per-item "
                           "probabilities; the classification extension needs a numeric [N, classes] output")
    scores = np.asarray(output.data, dtype=np.float64)
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    elements = [f"{scores[i, j]:f}:{j}".encode() for i in range(scores.shape[0]) for j in best[i]]
    return InferOutput(output.name, "BYTES", [scores.shape[0], k], elements)


def answers_to_response(request: InferRequest, answers: list[Answer]) -> InferResponse:
    """The handler's answers (one per fanned-out request, see ``typed_answer``) as the OIP response,
    restricted to the outputs the request asked for (InvalidInput naming a missing one)."""
    typed = [a for a in answers if not isinstance(a, (bytes, bytearray))]
    if typed and len(typed) != len(answers):
        raise BackendError("the model answered some items of one request typed and others not")
    if typed:
        names = [name for name, _, _, _ in typed[0]]
        by_item = [{name: (datatype, shape, data) for name, datatype, shape, data in item} for item in typed]
        if any(list(item) != names for item in by_item):
            raise BackendError("the model answered different outputs for the items of one request")
        outputs = [_stack(name, [item[name] for item in by_item]) for name in names]
    else:
        outputs = [InferOutput.from_bytes_list(OUTPUT, answers)]  # type: ignore[arg-type]
        if not request.outputs or any(o.name != OUTPUT for o in request.outputs):
            outputs += _numeric_outputs(answers)  # type: ignore[arg-type]
    if request.outputs:
        available = {o.name: o for o in outputs}
        missing = [o.name for o in request.outputs if o.name not in available]
        if missing:
            raise InvalidInput(f"model '{request.model_name}' has no output "
                               f"{', '.join(repr(m) for m in missing)}; available: {', '.join(available)}")
        outputs = [_classification(available[o.name], o.parameters[CLASSIFICATION])
                   if CLASSIFICATION in o.parameters else available[o.name] for o in request.outputs]
    return InferResponse(request.model_name, outputs, request.model_version, request.id)


async def answer_all(payloads: list[dict[str, bytes]],
                     answer_one: Callable[[dict[str, bytes]], Awaitable[Answer]]) -> list[Answer]:
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
    alike on every engine: the declared typed inputs and outputs (an archive built before typed I/O: the
    handler's inputs as BYTES and ``output``) and the zoo's parameters."""
    weights = meta.get("weights") or {}
    kind = weights.get("kind", "unknown")
    if meta.get("input_specs"):
        inputs = tensor_metadata(specs_from(meta["input_specs"]))
    else:  # an archive built before typed I/O
        inputs = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in (meta.get("inputs") or {})]
    declared = meta.get("outputs")
    typed = isinstance(declared, list) and all(isinstance(d, dict) for d in declared)
    outputs = (tensor_metadata(specs_from(declared)) if typed
               else [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}])
    return {
        "name": model,
        "versions": versions or ([str(meta["version"])] if meta.get("version") else []),
        # the weights kind is in the platform string too: gRPC metadata has no parameters field
        "platform": f"{engine} (weights: {kind})",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "backend": backend,
            "backend_model": model,
            "task": meta.get("task", ""),
            "weights_kind": kind,
            "random_weights": kind == "random-seeded",
            "weights": weights,
            "input_descriptions": meta.get("inputs", {}),
            "output_descriptions": ({d["name"]: d.get("description", "") for d in declared} if typed
                                    else meta.get("outputs", {})),
            "license": meta.get("license", ""),
            "paper": meta.get("paper", ""),
        },
    }
