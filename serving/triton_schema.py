"""Triton's model-config and statistics schemas, filled in from what the gateway knows.

Why: Triton's own tools (`perf_analyzer`, `image_client`, tritonclient's ``get_model_config`` and
``get_inference_statistics``) ask for these before or after their first request. One JSON form per document is
built here (Triton's REST form: int64 values as JSON numbers, enums by name); the gRPC messages are parsed from
it (`to_message`) so REST and gRPC cannot disagree.

Model config: derived from the model's OIP metadata (inputs/outputs; a leading -1 on every tensor is the
batch dimension the gateway accepts, so ``max_batch_size`` > 0 and ``dims`` leave it out; a scalar per item
is ``dims [1]`` with ``reshape []``, Triton's way) and the backend's
`Scheduling` (TorchServe's batch size, max batch delay and worker count).

Statistics: `Statistics` keeps the gateway's own counters per (public model name, version): successes and
failures with their whole-request durations, the time before the backend call (compute_input), the backend
round trip (compute_infer, per batch size too) and the time after it (compute_output). Queue time is what a
backend reports (TorchServe's gRPC answer reports none, so it stays 0).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INT64_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64})


def triton_type(datatype: str) -> str:
    """OIP datatype -> Triton's model-config data type name (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass(frozen=True)
class Scheduling:
    """How a backend runs a model: what model config's batching and instance fields say."""

    max_batch_size: int = 1  # the largest batch the backend runs at once (when the model takes a batch dim)
    preferred_batch_sizes: tuple[int, ...] = ()  # non-empty: the backend batches requests dynamically
    max_queue_delay_us: int = 0
    instances: int = 1
    kind: str = "KIND_CPU"


def _batched(tensors: Iterable[dict[str, Any]]) -> bool:
    shapes = [list(t.get("shape", [])) for t in tensors]
    return bool(shapes) and all(shape and shape[0] == -1 for shape in shapes)


def model_config(meta: dict[str, Any], scheduling: Scheduling, backend: str) -> dict[str, Any]:
    """Triton model config (REST JSON form) of a model from its OIP metadata and its backend's scheduling."""
    inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
    batched = _batched([*inputs, *outputs])

    def shape(tensor: dict[str, Any]) -> dict[str, Any]:
        """dims (and reshape): a scalar per batch item is dims [1], reshape [] as in Triton (whose clients
        cannot build a request for empty dims)."""
        dims = [int(d) for d in tensor.get("shape", [])]
        if batched:
            dims = dims[1:]
        return {"dims": dims} if dims else {"dims": [1], "reshape": {"shape": []}}

    config: dict[str, Any] = {
        "name": meta.get("name", ""),
        "platform": meta.get("platform", ""),
        "backend": backend,
        "max_batch_size": max(scheduling.max_batch_size, 1) if batched else 0,
        "input": [{"name": t["name"], "data_type": triton_type(t["datatype"]), "format": "FORMAT_NONE",
                   **shape(t), "optional": bool(t.get("optional", False))} for t in inputs],
        "output": [{"name": t["name"], "data_type": triton_type(t["datatype"]), **shape(t),
                    "label_filename": ""} for t in outputs],
        "instance_group": [{"name": meta.get("name", ""), "kind": scheduling.kind,
                            "count": max(scheduling.instances, 1), "gpus": []}],
        "parameters": {},
    }
    if scheduling.preferred_batch_sizes:
        config["dynamic_batching"] = {"preferred_batch_size": list(scheduling.preferred_batch_sizes),
                                      "max_queue_delay_microseconds": scheduling.max_queue_delay_us,
                                      "preserve_ordering": True}
    return config


def to_message(doc: dict[str, Any], message: Message) -> Message:
    """A REST-form document into its gRPC message (fields the gateway's schema lacks are dropped)."""
    return json_format.ParseDict(doc, message, ignore_unknown_fields=True)


def to_json(message: Message) -> dict[str, Any]:
    """A message in Triton's REST form: field names as in the .proto, every field present, int64 as numbers
    (protobuf's JSON writes them as strings; Triton and perf_analyzer read numbers)."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
    return _int64_as_numbers(doc, message.DESCRIPTOR)


def _int64_as_numbers(doc: dict[str, Any], descriptor: Any) -> dict[str, Any]:
    for fd in descriptor.fields:
        if fd.name not in doc:
            continue
        value = doc[fd.name]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is not None:
                doc[fd.name] = {k: _int64_as_numbers(v, value_fd.message_type) for k, v in value.items()}
        elif fd.message_type is not None:
            items = value if isinstance(value, list) else [value]
            for item in items:
                _int64_as_numbers(item, fd.message_type)
        elif fd.type in _INT64_TYPES:
            doc[fd.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return doc


# Requests that name no version are reported under this version label: Triton's clients (perf_analyzer) parse
# a statistics entry's version as a number and abort on an empty one.
DEFAULT_VERSION = "1"


# --- statistics ---------------------------------------------------------------------------------------------
@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(int(seconds * 1e9), 0)

    def doc(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelCounters:
    """One model version's counters, in Triton's statistics terms."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    by_batch: dict[int, tuple[Duration, Duration, Duration]] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0


class Statistics:
    """The gateway's inference counters per (public model name, version), reported in Triton's schema."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ModelCounters] = {}

    def record(self, model: str, version: str, *, ok: bool, total_s: float, backend_s: float | None,
               before_backend_s: float | None, batch_size: int, queue_s: float = 0.0) -> None:
        """One inference request that ended: `backend_s` None when it never reached the backend. `queue_s`,
        the wait for a slot in the gateway's per-model queue (Triton's "queue"), is part of `before_backend_s`;
        the rest of that is reading and checking the request ("compute_input")."""
        counters = self._models.setdefault((model, version), ModelCounters())
        counters.last_inference_ms = int(time.time() * 1000)
        if not ok:
            counters.fail.add(total_s)
            return
        counters.success.add(total_s)
        counters.inference_count += batch_size
        if backend_s is None or before_backend_s is None:
            return
        counters.execution_count += 1
        after_s = max(total_s - before_backend_s - backend_s, 0.0)
        per_batch = counters.by_batch.setdefault(batch_size, (Duration(), Duration(), Duration()))
        counters.queue.add(queue_s)
        for total, batch, seconds in ((counters.compute_input, per_batch[0], max(before_backend_s - queue_s, 0.0)),
                                      (counters.compute_infer, per_batch[1], backend_s),
                                      (counters.compute_output, per_batch[2], after_s)):
            total.add(seconds)
            batch.add(seconds)

    def versions_of(self, model: str) -> list[str]:
        """The version labels a model has counters under (requests naming no version count as the default)."""
        return sorted({version or DEFAULT_VERSION for name, version in self._models if name == model})

    def _counters(self, model: str, version: str) -> ModelCounters:
        """One version's counters; the default version's include the requests that named no version."""
        found = [c for (name, v), c in self._models.items()
                 if name == model and (v or DEFAULT_VERSION) == (version or DEFAULT_VERSION)]
        if len(found) <= 1:
            return found[0] if found else ModelCounters()
        total = ModelCounters()
        for c in found:
            for kind in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                mine, theirs = getattr(total, kind), getattr(c, kind)
                mine.count, mine.ns = mine.count + theirs.count, mine.ns + theirs.ns
            for size, durations in c.by_batch.items():
                into = total.by_batch.setdefault(size, (Duration(), Duration(), Duration()))
                for mine, theirs in zip(into, durations, strict=True):
                    mine.count, mine.ns = mine.count + theirs.count, mine.ns + theirs.ns
            total.inference_count += c.inference_count
            total.execution_count += c.execution_count
            total.last_inference_ms = max(total.last_inference_ms, c.last_inference_ms)
        return total

    def report(self, model: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics (REST form) of one model version; zeros when it has served nothing."""
        c = self._counters(model, version)
        return {
            "name": model,
            "version": version or DEFAULT_VERSION,
            "last_inference": c.last_inference_ms,
            "inference_count": c.inference_count,
            "execution_count": c.execution_count,
            "inference_stats": {name: getattr(c, name).doc() for name in (
                "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
            "batch_stats": [{"batch_size": size, "compute_input": d[0].doc(), "compute_infer": d[1].doc(),
                             "compute_output": d[2].doc()} for size, d in sorted(c.by_batch.items())],
        }
