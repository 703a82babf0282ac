"""Protocol-independent inference types (Open Inference Protocol v2) with converters at the edges.

`InferRequest` / `InferResponse` hold `InferInput` / `InferOutput` tensors: a name, an OIP datatype, a shape,
the data (a numpy array, or a flat ``list[bytes]`` for BYTES) and parameters. Front-ends and backends only
meet these types; the wire formats are converted here, in one place:

- REST JSON (``from_rest`` / ``to_rest``): ``data`` nested or flat, every OIP datatype, plus the binary
  tensor extension: a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors,
  announced per tensor with ``parameters.binary_data_size``; requested outputs come back binary with
  ``binary_data: true`` per output or ``binary_data_output: true`` for all.
- gRPC (``from_grpc`` / ``to_grpc``): typed ``contents`` or ``raw_input_contents`` / ``raw_output_contents``.

Raw layout (binary extension and gRPC raw contents alike): little-endian, row-major; BOOL one byte per
element; BF16 the upper 16 bits of an IEEE float32 (held here as float32 numpy); BYTES each element as a
4-byte little-endian length followed by its bytes.

Every validation failure raises `InvalidInput` naming the tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import zoo.tensors as tensors
from serving.errors import InvalidInput
from zoo.tensors import DATATYPES, NUMPY_DTYPES, TensorData, TensorError

# Which typed `InferTensorContents` field holds each datatype (FP16/BF16 only travel raw).
GRPC_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

MAX_DIMS = 64  # numpy's own limit on dimensions
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a JSON escape that may be a lone surrogate

Parameters = dict[str, Any]


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype for a numpy array (object / bytes / str arrays are BYTES)."""
    try:
        return tensors.datatype_of(array)
    except TensorError as exc:
        raise InvalidInput(str(exc)) from None


def deserialize_bytes(raw: bytes | memoryview, count: int | None, what: str) -> list[bytes]:
    """Length-prefixed raw BYTES back to elements (`zoo.tensors`), InvalidInput when malformed."""
    try:
        return tensors.deserialize_bytes(raw, count, what)
    except TensorError as exc:
        raise InvalidInput(str(exc)) from None


_numel = tensors.numel
serialize_bytes = tensors.serialize_bytes


def _check_shape(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                       for d in shape):
        raise InvalidInput(f"{what}: shape must be a list of integers, got {shape!r}"[:300])
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{what}: shape has {len(shape)} dimensions, at most {MAX_DIMS} are supported")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
    return [int(d) for d in shape]


def _check_datatype(datatype: Any, what: str) -> str:
    if datatype not in DATATYPES:
        raise InvalidInput(f"{what}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    return datatype


@dataclass(slots=True)
class _Tensor:
    """A named tensor. `data` is a numpy array shaped `shape`, or for BYTES a flat list of bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: TensorData
    parameters: Parameters = field(default_factory=dict)

    kind = "tensor"

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray, datatype: str | None = None,
                   parameters: Parameters | None = None) -> _Tensor:
        array = np.asarray(array)
        datatype = datatype or datatype_of(array)
        if datatype == "BYTES":
            flat = array.reshape(-1).tolist()
            elements = [e if isinstance(e, bytes) else str(e).encode("utf-8") for e in flat]
            return cls(name, "BYTES", list(array.shape), elements, dict(parameters or {}))
        data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[_check_datatype(datatype, name)])
        return cls(name, datatype, list(array.shape), data, dict(parameters or {}))

    @classmethod
    def from_bytes_list(cls, name: str, elements: Sequence[bytes], shape: Sequence[int] | None = None,
                        parameters: Parameters | None = None) -> _Tensor:
        elements = [bytes(e) for e in elements]
        return cls(name, "BYTES", list(shape) if shape is not None else [len(elements)], elements,
                   dict(parameters or {}))

    @classmethod
    def from_raw(cls, name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview,
                 parameters: Parameters | None = None) -> _Tensor:
        """From the raw little-endian layout, checking the byte size against the shape."""
        what = f"{cls.kind} '{name}'"
        datatype = _check_datatype(datatype, what)
        shape = _check_shape(list(shape), what)
        try:
            data = tensors.from_raw(datatype, shape, raw, what)
        except TensorError as exc:
            raise InvalidInput(str(exc)) from None
        return cls(name, datatype, shape, data, dict(parameters or {}))

    @classmethod
    def from_values(cls, name: str, datatype: str, shape: Sequence[int], values: Any,
                    parameters: Parameters | None = None) -> _Tensor:
        """From JSON-like values (nested or flat lists), validating types and element count."""
        what = f"{cls.kind} '{name}'"
        datatype = _check_datatype(datatype, what)
        shape = _check_shape(list(shape) if isinstance(shape, (list, tuple)) else shape, what)
        count = _numel(shape)
        if datatype == "BYTES":
            flat = _flatten(values, what)
            if len(flat) != count:
                raise InvalidInput(f"{what}: {len(flat)} data elements for shape {shape} ({count} elements)")
            elements = []
            for value in flat:
                if isinstance(value, str):
                    elements.append(value.encode("utf-8"))
                elif isinstance(value, (bytes, bytearray)):
                    elements.append(bytes(value))
                else:
                    raise InvalidInput(f"{what}: BYTES data must be strings, got {type(value).__name__}")
            return cls(name, datatype, shape, elements, dict(parameters or {}))
        try:
            array = np.asarray(values if isinstance(values, (list, tuple)) else [values])
        except ValueError as exc:  # ragged nesting
            raise InvalidInput(f"{what}: data is not a regular nested list: {exc}") from None
        if array.size != count:
            raise InvalidInput(f"{what}: {array.size} data elements for shape {shape} ({count} elements)")
        target = NUMPY_DTYPES[datatype]
        if target.kind in "iu" and array.dtype.kind not in "iub":
            flat = _flatten(values, what)  # e.g. UINT64 values above 2**63: numpy guesses float64
            if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
                array = np.array(flat, dtype=object)
                if min(flat) < np.iinfo(target).min or max(flat) > np.iinfo(target).max:
                    raise InvalidInput(f"{what}: values [{min(flat)}, {max(flat)}] do not fit {datatype}")
                array = array.astype(target)
        kind = array.dtype.kind
        if array.size and kind not in ("b" if datatype == "BOOL" else "iu" if target.kind in "iu" else "iuf"):
            expected = "booleans" if datatype == "BOOL" else "integers" if target.kind in "iu" else "numbers"
            raise InvalidInput(f"{what}: {datatype} data must be {expected}, got {array.dtype.name} values")
        if target.kind in "iu" and array.size:
            info = np.iinfo(target)
            lo, hi = int(array.min()), int(array.max())
            if lo < info.min or hi > info.max:
                raise InvalidInput(f"{what}: values [{lo}, {hi}] do not fit {datatype}")
        return cls(name, datatype, shape, array.astype(target).reshape(shape), dict(parameters or {}))

    # --- views ----------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return _numel(self.shape)

    def as_numpy(self) -> np.ndarray:
        """The data as a numpy array shaped `shape` (BYTES as an object array of bytes)."""
        if self.datatype == "BYTES":
            array = np.empty(len(self.data), dtype=object)
            array[:] = self.data
            return array.reshape(self.shape)
        return np.asarray(self.data).reshape(self.shape)

    def bytes_elements(self) -> list[bytes]:
        if self.datatype != "BYTES":
            raise InvalidInput(f"{self.kind} '{self.name}' is {self.datatype}, not BYTES")
        return list(self.data)

    def to_raw(self) -> bytes:
        """The raw little-endian layout (binary extension / gRPC raw contents), see `zoo.tensors`."""
        return tensors.to_raw(self.datatype, self.data)

    def to_json_values(self) -> list[Any]:
        """Flat JSON values (BYTES as UTF-8 strings; raises UnicodeDecodeError for other bytes)."""
        if self.datatype == "BYTES":
            return [e.decode("utf-8") for e in self.data]
        return np.asarray(self.data).reshape(-1).tolist()

    def validate(self) -> None:
        what = f"{self.kind} '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput(f"{self.kind} without a name")
        _check_datatype(self.datatype, what)
        _check_shape(self.shape, what)
        size = len(self.data) if self.datatype == "BYTES" else int(np.asarray(self.data).size)
        if size != self.numel:
            raise InvalidInput(f"{what}: {size} data elements for shape {self.shape} ({self.numel} elements)")


class InferInput(_Tensor):
    __slots__ = ()
    kind = "input"


class InferOutput(_Tensor):
    __slots__ = ()
    kind = "output"


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


def _flatten(values: Any, what: str) -> list[Any]:
    if not isinstance(values, list):
        return [values]
    if not values or not isinstance(values[0], list):
        if any(isinstance(v, list) for v in values):
            raise InvalidInput(f"{what}: data is not a regular nested list")
        return values
    out: list[Any] = []
    for item in values:
        out.extend(_flatten(item, what))
    return out


def _check_unicode(doc: Any) -> None:
    """InvalidInput when a string (or object key) of a parsed JSON document holds a lone surrogate (an escape
    like "\\ud800"): it is no Unicode text, and could be neither encoded nor forwarded."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(f"request body holds a lone surrogate escape in the string {item[:40]!a}") \
                    from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_parameters(params: Any, what: str) -> Parameters:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{what}: parameters must be an object")
    return params


# ---------------------------------------------------------------------------------------------------
# Request / response
# ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferInput]
    model_version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output

    def input(self, name: str) -> InferInput:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise InvalidInput(f"model '{self.model_name}' has no input named '{name}' in this request")

    def validate(self) -> None:
        seen: set[str] = set()
        if not self.inputs:
            raise InvalidInput("request has no inputs")
        for tensor in self.inputs:
            tensor.validate()
            if tensor.name in seen:
                raise InvalidInput(f"input '{tensor.name}' appears twice")
            seen.add(tensor.name)

    def binary_output(self, name: str, default: bool = False) -> bool:
        """Whether output `name` should come back binary (REST binary extension)."""
        for requested in self.outputs:
            if requested.name == name and "binary_data" in requested.parameters:
                return bool(requested.parameters["binary_data"])
        return bool(self.parameters.get("binary_data_output", default))

    def wants(self, name: str) -> bool:
        return not self.outputs or any(o.name == name for o in self.outputs)

    # --- REST ----------------------------------------------------------------------------------
    @classmethod
    def from_rest(cls, body: bytes | memoryview, header_length: int | None, model_name: str,
                  model_version: str = "") -> InferRequest:
        """Parse a REST infer body (plain JSON, or JSON header + binary tensors)."""
        body = memoryview(body)
        if header_length is None:
            header_length = len(body)
        if not 0 <= header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        header = bytes(body[:header_length])
        try:
            doc = json.loads(header)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("request body is not valid JSON: nested too deeply") from None
        if _LONE_SURROGATE.search(header):
            _check_unicode(doc)
        if not isinstance(doc, dict):
            raise InvalidInput("request body must be a JSON object with an 'inputs' list")
        raw_inputs = doc.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise InvalidInput("request body must have a non-empty 'inputs' list")
        binary = body[header_length:]
        offset = 0
        inputs: list[InferInput] = []
        for index, item in enumerate(raw_inputs):
            if not isinstance(item, dict):
                raise InvalidInput(f"inputs[{index}] must be an object")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"inputs[{index}] has no 'name'")
            what = f"input '{name}'"
            for key in ("shape", "datatype"):
                if key not in item:
                    raise InvalidInput(f"{what}: missing '{key}'")
            params = dict(_check_parameters(item.get("parameters"), what))
            size = params.pop("binary_data_size", None)
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise InvalidInput(f"{what}: binary_data_size must be a non-negative integer")
                if offset + size > len(binary):
                    raise InvalidInput(
                        f"{what}: binary_data_size {size} overruns the {len(binary) - offset} bytes left"
                    )
                inputs.append(InferInput.from_raw(name, item["datatype"], _check_shape(item["shape"], what),
                                                  binary[offset:offset + size], params))
                offset += size
            elif "data" in item:
                inputs.append(InferInput.from_values(name, item["datatype"], item["shape"], item["data"],
                                                     params))
            else:
                raise InvalidInput(f"{what}: needs 'data' or parameters.binary_data_size")
        if offset != len(binary):
            raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
        outputs = []
        requested = doc.get("outputs") or []
        if not isinstance(requested, list):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        for index, item in enumerate(requested):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
            params = _check_parameters(item.get("parameters"), f"output '{item['name']}'")
            outputs.append(RequestedOutput(item["name"], dict(params)))
        request_id = doc.get("id", "")
        request = cls(model_name, inputs, model_version, str(request_id) if request_id is not None else "",
                      dict(_check_parameters(doc.get("parameters"), "request")), outputs)
        request.validate()
        return request

    def to_rest(self, binary_inputs: bool = True) -> tuple[bytes, int | None]:
        """(body, Inference-Header-Content-Length or None) as a client would send it."""
        doc: dict[str, Any] = {"inputs": []}
        if self.id:
            doc["id"] = self.id
        if self.parameters:
            doc["parameters"] = self.parameters
        chunks: list[bytes] = []
        for tensor in self.inputs:
            item: dict[str, Any] = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
            params = dict(tensor.parameters)
            if binary_inputs:
                raw = tensor.to_raw()
                params["binary_data_size"] = len(raw)
                chunks.append(raw)
            else:
                item["data"] = tensor.to_json_values()
            if params:
                item["parameters"] = params
            doc["inputs"].append(item)
        if self.outputs:
            doc["outputs"] = [{"name": o.name, **({"parameters": o.parameters} if o.parameters else {})}
                              for o in self.outputs]
        header = json.dumps(doc, separators=(",", ":")).encode()
        if not chunks:
            return header, None
        return header + b"".join(chunks), len(header)

    # --- gRPC ----------------------------------------------------------------------------------
    @classmethod
    def from_grpc(cls, msg: Any) -> InferRequest:
        """From an `inference.ModelInferRequest` message."""
        raw = msg.raw_input_contents
        if raw and any(t.HasField("contents") for t in msg.inputs):
            both = ", ".join(f"'{t.name}'" for t in msg.inputs if t.HasField("contents"))
            raise InvalidInput(f"input {both} has typed contents while the request also has raw_input_contents; "
                               "the protocol allows one or the other per request, not both")
        if raw and len(raw) != len(msg.inputs):
            raise InvalidInput(
                f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs (must be one each)"
            )
        inputs = [
            _tensor_from_grpc(InferInput, t, raw[i] if raw else None)
            for i, t in enumerate(msg.inputs)
        ]
        outputs = [RequestedOutput(o.name, params_from_grpc(o.parameters)) for o in msg.outputs]
        request = cls(msg.model_name, inputs, msg.model_version, msg.id, params_from_grpc(msg.parameters),
                      outputs)
        request.validate()
        return request

    def to_grpc(self, message_cls: Callable[..., Any]) -> Any:
        """As an `inference.ModelInferRequest` (raw contents for every input, as tritonclient sends)."""
        msg = message_cls(model_name=self.model_name, model_version=self.model_version, id=self.id)
        params_to_grpc(self.parameters, msg.parameters)
        for tensor in self.inputs:
            item = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            params_to_grpc(tensor.parameters, item.parameters)
            msg.raw_input_contents.append(tensor.to_raw())
        for requested in self.outputs:
            out = msg.outputs.add(name=requested.name)
            params_to_grpc(requested.parameters, out.parameters)
        return msg


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[InferOutput]
    model_version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=dict)

    def output(self, name: str) -> InferOutput:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(f"response has no output named {name!r}")

    # --- REST ----------------------------------------------------------------------------------
    def to_rest(self, binary: Callable[[str], bool] | bool = False) -> tuple[bytes, int | None]:
        """(body, Inference-Header-Content-Length or None). `binary(name)` picks binary outputs; BYTES
        outputs that are not UTF-8 always go binary (JSON cannot carry them)."""
        doc: dict[str, Any] = {"model_name": self.model_name, "model_version": self.model_version,
                               "outputs": []}
        if self.id:
            doc["id"] = self.id
        if self.parameters:
            doc["parameters"] = self.parameters
        chunks: list[bytes] = []
        for tensor in self.outputs:
            item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
            params = dict(tensor.parameters)
            as_binary = binary(tensor.name) if callable(binary) else binary
            if not as_binary:
                try:
                    item["data"] = tensor.to_json_values()
                except UnicodeDecodeError:
                    as_binary = True
            if as_binary:
                raw = tensor.to_raw()
                params["binary_data_size"] = len(raw)
                chunks.append(raw)
            if params:
                item["parameters"] = params
            doc["outputs"].append(item)
        header = json.dumps(doc, separators=(",", ":")).encode()
        if not chunks:
            return header, None
        return header + b"".join(chunks), len(header)

    @classmethod
    def from_rest(cls, body: bytes | memoryview, header_length: int | None = None) -> InferResponse:
        body = memoryview(body)
        header_length = len(body) if header_length is None else header_length
        doc = json.loads(bytes(body[:header_length]))
        binary = body[header_length:]
        offset = 0
        outputs = []
        for item in doc.get("outputs", []):
            params = dict(item.get("parameters") or {})
            size = params.pop("binary_data_size", None)
            if size is not None:
                outputs.append(InferOutput.from_raw(item["name"], item["datatype"], item["shape"],
                                                    binary[offset:offset + size], params))
                offset += size
            else:
                outputs.append(InferOutput.from_values(item["name"], item["datatype"], item["shape"],
                                                       item["data"], params))
        return cls(doc.get("model_name", ""), outputs, doc.get("model_version", ""), doc.get("id", ""),
                   doc.get("parameters") or {})

    # --- gRPC ----------------------------------------------------------------------------------
    def to_grpc(self, message_cls: Callable[..., Any]) -> Any:
        """As an `inference.ModelInferResponse`, every output in raw_output_contents (as Triton does)."""
        msg = message_cls(model_name=self.model_name, model_version=self.model_version, id=self.id)
        params_to_grpc(self.parameters, msg.parameters)
        for tensor in self.outputs:
            item = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            params_to_grpc(tensor.parameters, item.parameters)
            msg.raw_output_contents.append(tensor.to_raw())
        return msg

    @classmethod
    def from_grpc(cls, msg: Any) -> InferResponse:
        raw = msg.raw_output_contents
        outputs = [_tensor_from_grpc(InferOutput, t, raw[i] if i < len(raw) else None)
                   for i, t in enumerate(msg.outputs)]
        return cls(msg.model_name, outputs, msg.model_version, msg.id, params_from_grpc(msg.parameters))


def _tensor_from_grpc(cls: type[_Tensor], t: Any, raw: bytes | None) -> _Tensor:
    what = f"{cls.kind} '{t.name}'"
    datatype = _check_datatype(t.datatype, what)
    shape = _check_shape(list(t.shape), what)
    params = params_from_grpc(t.parameters)
    if raw is not None:
        return cls.from_raw(t.name, datatype, shape, raw, params)
    field_name = GRPC_CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise InvalidInput(f"{what}: {datatype} has no typed contents; send it in raw_input_contents")
    values = list(getattr(t.contents, field_name))
    count = _numel(shape)
    if len(values) != count:
        raise InvalidInput(f"{what}: {len(values)} elements in contents.{field_name} for shape {shape} "
                           f"({count} elements)")
    if datatype == "BYTES":
        return cls(t.name, datatype, shape, values, params)
    target = NUMPY_DTYPES[datatype]
    array = np.asarray(values)
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise InvalidInput(f"{what}: values do not fit {datatype}")
    return cls(t.name, datatype, shape, array.astype(target).reshape(shape), params)


# ---------------------------------------------------------------------------------------------------
# Parameters (gRPC InferParameter oneof <-> plain Python values)
# ---------------------------------------------------------------------------------------------------
def params_from_grpc(params: Any) -> Parameters:
    out: Parameters = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def params_to_grpc(params: Parameters, target: Any) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        elif value is None:
            continue
        else:
            slot.string_param = value if isinstance(value, str) else json.dumps(value)
