"""Typed tensors, defined once for every layer: the registry's I/O schema and the handler -> gateway framing.

Torch-free and free of project imports (numpy only), so the registry (``zoo._registry``), the handlers (inside
TorchServe) and the gateway (``serving.types``, which never loads torch) share this one definition:

* ``TensorSpec``: one declared input or output (name, Open Inference Protocol datatype, shape with -1 for a
  variable dimension, description). A registry entry's ``outputs`` are these; model metadata, model config
  and the OpenAPI document are derived from them.
* The raw layout of one tensor (the OIP binary extension's and gRPC raw contents'): little-endian,
  row-major; BOOL one byte per element; BF16 the upper 16 bits of an IEEE float32 (held as float32); BYTES
  each element as a 4-byte little-endian length followed by its bytes (``to_raw`` / ``from_raw``).
* The typed answer of one handler request (``encode_tensors`` / ``decode_tensors``): ``MAGIC``, a 4-byte
  little-endian header length, a JSON header in the OIP binary extension's shape
  (``{"outputs": [{"name", "datatype", "shape", "parameters": {"binary_data_size": n}}]}``), then each
  tensor's raw bytes in header order. A handler answers this way when the request carries
  ``ANSWER_FIELD = ANSWER_TENSORS`` (the gateway's OIP path); otherwise it answers readable JSON.

Malformed data raises ``TensorError`` (a ValueError) naming the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# OIP datatype -> numpy dtype of the data held in memory (BF16 is held as float32; BYTES as list[bytes]).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<f4"),
}
DATATYPES = (*NUMPY_DTYPES, "BYTES")
_NUMPY_TO_DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    **{np.dtype(k): v for k, v in {
        "u1": "UINT8", "u2": "UINT16", "u4": "UINT32", "u8": "UINT64",
        "i1": "INT8", "i2": "INT16", "i4": "INT32", "i8": "INT64",
        "f2": "FP16", "f4": "FP32", "f8": "FP64",
    }.items()},
}

# The request field that asks a handler for its typed answer instead of JSON (the gateway's OIP path sets it).
ANSWER_FIELD = "zoo-answer"
ANSWER_TENSORS = b"tensors"
MAGIC = b"ZOOT\x01"
CONTENT_TYPE = "application/x-zoo-tensors"
_LEN = struct.Struct("<I")

TensorData = np.ndarray | list[bytes]


class TensorError(ValueError):
    """Malformed tensor data (wrong size, unknown datatype, broken framing)."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output: what metadata and model config show, and what inference returns."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str = ""
    optional: bool = False  # an input the client may leave out (a parameter with a default)

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if any(not isinstance(d, int) or d < -1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape {self.shape} (dims are sizes or -1 for variable)")
        object.__setattr__(self, "shape", tuple(self.shape))

    def accepts(self, datatype: str, shape: Sequence[int]) -> bool:
        """Whether a tensor of `datatype` and `shape` fits this spec (-1 matches any size)."""
        return datatype == self.datatype and len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape),
                               "description": self.description}
        if self.optional:
            out["optional"] = True
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TensorSpec:
        return cls(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc["shape"]),
                   str(doc.get("description", "")), bool(doc.get("optional", False)))


def specs_from(docs: Iterable[Any]) -> tuple[TensorSpec, ...]:
    """Specs from an archive's JSON (dicts), passing TensorSpecs through."""
    return tuple(d if isinstance(d, TensorSpec) else TensorSpec.from_dict(d) for d in docs)


# --- one tensor's raw layout ---------------------------------------------------------------------------
def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object / bytes / str arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    try:
        return _NUMPY_TO_DATATYPE[dtype]
    except KeyError:
        raise TensorError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES elements as the length-prefixed raw layout."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LEN.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int | None, what: str) -> list[bytes]:
    """Length-prefixed raw BYTES back to elements; `count` (when given) must match exactly."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 4:
            raise TensorError(f"{what}: truncated BYTES element length at offset {offset}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(f"{what}: BYTES element of {length} bytes overruns the data at {offset}")
        out.append(bytes(view[offset:offset + length]))
        offset += length
    if count is not None and len(out) != count:
        raise TensorError(f"{what}: {len(out)} BYTES elements for a shape of {count} elements")
    return out


def to_raw(datatype: str, data: TensorData) -> bytes:
    """A tensor's data (numpy array, or list of bytes for BYTES) in the raw layout."""
    if datatype == "BYTES":
        return serialize_bytes(data)  # type: ignore[arg-type]
    array = np.ascontiguousarray(data, dtype=NUMPY_DTYPES[datatype])
    if datatype == "BF16":
        return (array.view("<u4") >> 16).astype("<u2").tobytes()
    return array.tobytes()


def from_raw(datatype: str, shape: Sequence[int], raw: bytes | memoryview, what: str) -> TensorData:
    """The raw layout back to data shaped `shape`, checking the byte size against the shape."""
    if datatype not in DATATYPES:
        raise TensorError(f"{what}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    count = numel(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, what)
    itemsize = 2 if datatype == "BF16" else NUMPY_DTYPES[datatype].itemsize
    if len(raw) != count * itemsize:
        raise TensorError(f"{what}: {len(raw)} bytes of {datatype} data for shape {list(shape)} "
                          f"(expected {count} x {itemsize} = {count * itemsize} bytes)")
    if datatype == "BF16":
        array = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
    else:
        array = np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype])
    return array.reshape(shape)


def as_tensor(value: Any, datatype: str | None = None) -> tuple[str, list[int], TensorData]:
    """A handler's output value -> (datatype, shape, data): a list of bytes/str is BYTES [n]; anything else
    goes through numpy (object/str arrays as BYTES, keeping their shape)."""
    if isinstance(value, list) and (not value or isinstance(value[0], (bytes, str))) and datatype in (None, "BYTES"):
        elements = [e.encode("utf-8") if isinstance(e, str) else bytes(e) for e in value]
        return "BYTES", [len(elements)], elements
    array = np.asarray(value)
    datatype = datatype or datatype_of(array)
    if datatype == "BYTES":
        elements = [e if isinstance(e, bytes) else str(e).encode("utf-8") for e in array.reshape(-1).tolist()]
        return "BYTES", list(array.shape), elements
    return datatype, list(array.shape), np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype])


# --- a handler's typed answer ----------------------------------------------------------------------------
def encode_tensors(tensors: Mapping[str, tuple[str, list[int], TensorData]]) -> bytes:
    """Named outputs as ``as_tensor`` gives them -> one framed answer (see the module doc)."""
    header: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, (datatype, shape, data) in tensors.items():
        raw = to_raw(datatype, data)
        header.append({"name": name, "datatype": datatype, "shape": shape,
                       "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    head = json.dumps({"outputs": header}, separators=(",", ":")).encode()
    return b"".join((MAGIC, _LEN.pack(len(head)), head, *chunks))


def is_tensors(body: bytes | memoryview) -> bool:
    return bytes(body[:len(MAGIC)]) == MAGIC


def decode_tensors(body: bytes | memoryview) -> list[tuple[str, str, list[int], TensorData]]:
    """One framed answer -> [(name, datatype, shape, data)] in the handler's order."""
    view = memoryview(body)
    if not is_tensors(view) or len(view) < len(MAGIC) + 4:
        raise TensorError("not a typed-tensor answer (missing the framing's magic bytes)")
    (head_len,) = _LEN.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(view[start:start + head_len]))["outputs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TensorError(f"typed-tensor answer with a broken header: {exc}") from None
    offset = start + head_len
    out = []
    for item in header:
        name, datatype, shape = item["name"], item["datatype"], list(item["shape"])
        size = int(item["parameters"]["binary_data_size"])
        if offset + size > len(view):
            raise TensorError(f"output '{name}': {size} bytes overrun the answer")
        out.append((name, datatype, shape, from_raw(datatype, shape, view[offset:offset + size], f"output '{name}'")))
        offset += size
    if offset != len(view):
        raise TensorError(f"{len(view) - offset} bytes of the typed answer belong to no output")
    return out
