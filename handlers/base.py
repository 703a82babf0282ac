"""The one handler base: decode -> batch -> predict -> encode, with per-request errors.

A handler declares the request fields it accepts (``FIELDS``, see ``handlers.fields``) and implements only
its model's steps: ``decode_fields`` (checked fields -> one item), ``batch``, ``predict``, ``encode`` (one
readable JSON answer per item) and ``tensors`` (one answer -> the entry's typed outputs).
The base owns everything else: loading the archived zoo model and its labelled weights, picking the device
TorchServe assigned, checking the handler's declaration when the worker starts, picking and checking each
request's fields (missing, unknown and out-of-range ones are that request's 4xx), isolating each request's
client error, turning unexpected failures into 500s for the affected requests without killing the worker,
tagging every answer with the model/weights metadata, and guaranteeing exactly one answer per request.

Answer forms: readable JSON (the task routes, TorchServe's own clients), or, when the request carries
``zoo.tensors.ANSWER_FIELD`` (the gateway's OIP path), the typed outputs the registry entry declares, framed by
``zoo.tensors.encode_tensors`` and checked against the declaration. Keys of an ``encode`` answer that start
with ``_`` reach ``tensors`` but not the JSON (e.g. a full probability vector behind a top-k answer).
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, final

import torch
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler

from handlers.codec import RequestError
from handlers.fields import CheckedFields, ExtraFields, Field, RequestSpec
from zoo._registry import ModelEntry, get_entry
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE, BATCH_SIZE_HEADER
from zoo.runtime import Runtime
from zoo.tensors import ANSWER_FIELD, ANSWER_TENSORS, CONTENT_TYPE, TensorData, as_tensor, encode_tensors
from zoo.weights import load_strict

logger = logging.getLogger(__name__)


def pick_device(properties: dict[str, Any]) -> torch.device:
    """The GPU TorchServe assigned to this worker, else CPU."""
    gpu_id = properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def wants_tensors(request: dict[str, Any] | None) -> bool:
    """Whether one raw request asks for the typed answer; the asking field is taken out of the request."""
    if not request:
        return False
    value = request.pop(ANSWER_FIELD, None)
    return bytes(value) == ANSWER_TENSORS if isinstance(value, (bytes, bytearray)) else value == ANSWER_TENSORS.decode()


class ZooHandler(BaseHandler):
    """Base for every zoo handler (TorchServe custom service)."""

    # The request fields the handler accepts; override ``fields()`` instead where they depend on the entry.
    FIELDS: ClassVar[tuple[Field, ...]] = ()
    # Fields a request carries beyond FIELDS: refused (400 naming them and the accepted ones) or ignored.
    EXTRA_FIELDS: ClassVar[ExtraFields] = "reject"
    # Whether each answer also says in its JSON how many requests its batch held (always in a header).
    BATCH_SIZE_IN_ANSWER: ClassVar[bool] = False
    # The steps a handler must implement itself (predict defaults to calling the model).
    OWN_STEPS: ClassVar[tuple[str, ...]] = ("decode_fields", "batch", "encode", "tensors")

    entry: ModelEntry
    meta: dict[str, Any]
    runtime: Runtime = Runtime(torch.device("cpu"))  # replaced at initialize; handlers built in tests run as CPU

    # --- lifecycle -------------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir", "."))
        self.meta = json.loads((model_dir / ARCHIVE_META_FILE).read_text())
        self.entry = get_entry(self.meta["name"])
        self.device = pick_device(properties)
        self.runtime = Runtime.for_serving(self.entry.serving, self.device)
        self.model = self.load_model(model_dir)
        self.setup(model_dir)
        self.check_contract()
        if self.runtime.warmup:
            started = time.perf_counter()
            with torch.inference_mode():
                self.warmup()
            logger.info("warmed up %s in %.1f s", self.entry.name, time.perf_counter() - started)
        self.initialized = True  # TorchServe reports the worker ready only now: after the warm-up
        logger.info(
            "loaded %s on %s with weights %s", self.entry.name, self.device, self.meta.get("weights")
        )

    @cached_property
    def config(self) -> dict[str, Any]:
        """The entry's config with the archive's overrides (``zoo.mar.build_mar(config_overrides=...)``)."""
        return {**self.entry.config, **self.meta.get("config_overrides", {})}

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        model = self.entry.build(**self.meta.get("config_overrides", {}))
        load_strict(model, load_file(str(model_dir / ARCHIVE_WEIGHTS_FILE)), f"{self.entry.name} archive weights")
        return self.runtime.prepare(model.to(self.device).eval())

    def setup(self, model_dir: Path) -> None:
        """Optional per-worker setup after the model is loaded."""

    def warmup(self) -> None:
        """Run every input shape the worker will meet once (compiles, autotunes, allocates) before readiness.

        Called at the end of ``initialize`` under ``inference_mode`` when the runtime asks for it (CUDA by
        default, ``ZOO_WARMUP``), so the first user request is as fast as the hundredth. Default: nothing.
        """

    def check_contract(self) -> None:
        """Fail the worker's start, not its first request, when the handler's steps or fields do not add up."""
        cls = type(self)
        if cls.decode is not ZooHandler.decode:
            raise TypeError(f"{cls.__name__} overrides decode: declare FIELDS and implement decode_fields instead")
        missing = [step for step in self.OWN_STEPS if getattr(cls, step) is getattr(ZooHandler, step)]
        if missing:
            raise TypeError(f"{cls.__name__} does not implement {', '.join(missing)}")
        if not self.request_spec.fields:
            raise TypeError(f"{cls.__name__} declares no request fields (FIELDS or fields())")

    # --- request fields --------------------------------------------------------------------------
    def fields(self) -> tuple[Field, ...]:
        """The fields this handler accepts; override where they come from the entry or the worker's setup."""
        return self.FIELDS

    @cached_property
    def request_spec(self) -> RequestSpec:
        """The declared fields, built (and so validated) once per worker."""
        entry = getattr(self, "entry", None)  # unset in handlers built without TorchServe (tests)
        return RequestSpec(self.fields(), self.EXTRA_FIELDS, entry.serve_name if entry is not None else None)

    @final
    def decode(self, request: dict[str, Any], index: int) -> Any:
        """One raw TorchServe request -> one decoded item: fields picked and checked here, then decode_fields."""
        spec = self.request_spec
        return self.decode_fields(spec.check(spec.pick(request)))

    # --- the four steps subclasses implement -----------------------------------------------------
    def decode_fields(self, fields: CheckedFields) -> Any:
        """One request's checked fields -> one decoded item. Raise RequestError for client errors."""
        raise NotImplementedError

    def batch(self, items: list[Any]) -> Any:
        """Decoded items -> one model input."""
        raise NotImplementedError

    def predict(self, batch: Any) -> Any:
        """Model input -> model output (already under inference_mode)."""
        return self.model(batch)

    def encode(self, output: Any, items: list[Any]) -> list[dict[str, Any]]:
        """Model output -> one JSON object per item, in order (the base appends the model tag)."""
        raise NotImplementedError

    def tensors(self, answer: dict[str, Any]) -> dict[str, TensorData]:
        """One ``encode`` answer -> the entry's typed outputs, ``{name: numpy array | list[bytes]}``, one per
        declared output (``entry.outputs``; shapes without a batch dimension)."""
        raise NotImplementedError

    def typed_answer(self, answer: dict[str, Any]) -> bytes:
        """The framed typed outputs of one answer, refused (a handler bug: 500) unless they are exactly what
        the entry declares, so model metadata always equals what inference returns."""
        outputs = self.tensors(answer)
        declared = {spec.name: spec for spec in self.entry.outputs}
        if list(outputs) != list(declared):
            raise RuntimeError(f"{type(self).__name__}.tensors returned {list(outputs)}, the entry declares "
                               f"{list(declared)}")
        typed = {}
        for name, value in outputs.items():
            spec = declared[name]
            datatype, shape, data = typed[name] = as_tensor(value, spec.datatype)
            if not spec.accepts(datatype, shape):
                raise RuntimeError(f"output {name!r} is {datatype} {shape}, the entry declares {spec.datatype} "
                                   f"{list(spec.shape)}")
        return encode_tensors(typed)

    # --- plumbing --------------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        """Model metadata attached to every answer (weights label included, so random weights show)."""
        return {
            "name": self.entry.serve_name,  # the name it is served under
            "entry": self.entry.name,  # the registry's `arch.tag`
            "version": self.entry.version,
            "weights": self.meta.get("weights", {}),
        }

    def tag(self, answer: dict[str, Any], batch_size: int) -> dict[str, Any]:
        """One answer with the batch size (where declared) and the model metadata appended."""
        public = {key: value for key, value in answer.items() if not key.startswith("_")}
        if self.BATCH_SIZE_IN_ANSWER:
            public["batch_size"] = batch_size
        public["model"] = self.model_info()
        return public

    def _error(self, index: int, status: int, message: str) -> dict[str, Any]:
        self.context.set_response_status(status, message, index)
        self.context.set_response_content_type(index, "application/json")
        return {"error": message, "status": status, "model": self.entry.serve_name}

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        started = time.perf_counter()
        answers: list[Any] = [None] * len(data)
        decoded: list[tuple[int, Any]] = []
        typed = [wants_tensors(request) for request in data]
        for index, request in enumerate(data):
            try:
                decoded.append((index, self.decode(request or {}, index)))
            except RequestError as exc:
                answers[index] = self._error(index, exc.status, exc.message)
            except Exception as exc:  # noqa: BLE001 - an unexpected decode failure is still one request's
                logger.exception("decode failed")
                answers[index] = self._error(index, 400, f"cannot decode request: {exc}")
        if decoded:
            indices = [i for i, _ in decoded]
            items = [item for _, item in decoded]
            try:
                with torch.inference_mode():
                    output = self.predict(self.batch(items))
                encoded = self.encode(output, items)
                if len(encoded) != len(items):
                    raise RuntimeError(f"handler produced {len(encoded)} answers for {len(items)} requests")
                for index, answer in zip(indices, encoded, strict=True):
                    if typed[index]:
                        answers[index] = self.typed_answer(answer)
                        context.set_response_content_type(index, CONTENT_TYPE)
                    else:
                        answers[index] = self.tag(answer, len(items))
                        context.set_response_content_type(index, "application/json")
                    context.set_response_header(index, BATCH_SIZE_HEADER, str(len(items)))
            except RequestError as exc:
                for index in indices:
                    answers[index] = self._error(index, exc.status, exc.message)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                for index in indices:
                    answers[index] = self._error(index, 503, "GPU out of memory for this batch; retry")
            except Exception as exc:  # noqa: BLE001 - keep the worker alive, answer every request
                logger.exception("inference failed")
                for index in indices:
                    answers[index] = self._error(index, 500, f"inference failed: {type(exc).__name__}: {exc}")
        if context.metrics is not None:
            context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
            context.metrics.add_metric("ZooBatchSize", len(decoded), "count", None)
            context.metrics.add_counter("ZooBatches", 1, None)  # mean batch = rate(ZooBatchSize) / rate(this)
        return answers
