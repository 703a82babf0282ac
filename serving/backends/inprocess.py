"""Models served from Python callables in the gateway's own process: no network, no serving system.

Why: the data plane's tests serve a real (tiny) model through every front-end without TorchServe, and a
benchmark uses it as the "no-op backend" that isolates the gateway's own cost. The gateway never imports a
model itself: whoever builds this backend hands it the callables (serving/ stays free of torch and zoo).

A model (`InProcessModel`) answers the task route's input, the handler-style named byte fields (``{"body":
...}`` or one field per multipart part, plus query parameters), with bytes (passed through), a
`RawPrediction`, or any JSON-serialisable object (sent as JSON). OIP inference maps tensors to those fields
and the answers back to outputs exactly as the TorchServe backend does (`serving.backends.fields`), unless
the model brings its own `infer(InferRequest) -> InferResponse`. A model that declares typed `outputs` and
a `tensors(answer)` mapping (a zoo handler's) answers OIP requests with those outputs, as a handler does.

Callables may be plain functions (run inline on the event loop: keep them short) or coroutines (awaited
until the request's deadline, then cancelled: 504). They raise `serving.errors` exceptions for what the
client did wrong (InvalidInput: 400); any other exception is a BackendError (500), like a crashing handler.
`available = False` makes the backend behave as one that is down (503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.backends.base import Backend, ListedModel, RawPrediction, time_left
from serving.backends.fields import (
    OUTPUT,
    Answer,
    ItemOutputs,
    answer_all,
    answers_to_response,
    fan_out,
    tensor_metadata,
    typed_answer,
)
from serving.errors import BackendError, BackendUnavailable, DeadlineExceeded, GatewayError, ModelNotFound
from serving.types import InferRequest, InferResponse
from zoo.tensors import ANSWER_FIELD, TensorSpec, as_tensor

# fields -> bytes | RawPrediction | JSON-able object (or an awaitable of one)
Predict = Callable[[dict[str, bytes]], Any]
Infer = Callable[[InferRequest], "InferResponse | Awaitable[InferResponse]"]


@dataclass
class InProcessModel:
    name: str
    predict: Predict
    infer: Infer | None = None  # None: OIP requests go through `predict`, field by field as TorchServe's do
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> description (metadata)
    versions: tuple[str, ...] = ("1",)
    aliases: tuple[str, ...] = ()  # reported to discovery: more public names for this model
    ready: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)  # extra model metadata parameters
    outputs: tuple[TensorSpec, ...] = ()  # typed outputs; () answers OIP with the JSON answer in `output`
    tensors: Callable[[Any], Mapping[str, Any]] | None = None  # one answer -> {output name: value}


def _as_prediction(answer: Any) -> RawPrediction:
    if isinstance(answer, RawPrediction):
        return answer
    if isinstance(answer, (bytes, bytearray, memoryview)):
        return RawPrediction(bytes(answer))
    return RawPrediction(json.dumps(answer, separators=(",", ":")).encode())


def _typed(model: InProcessModel, answer: Any) -> ItemOutputs:
    """A model's answer as its declared outputs (a handler's ``tensors``, with the declared datatypes)."""
    values = model.tensors(answer)  # type: ignore[misc]
    declared = {spec.name: spec for spec in model.outputs}
    if list(values) != list(declared):
        raise BackendError(f"model '{model.name}' answered outputs {list(values)}, it declares {list(declared)}")
    return [(name, *as_tensor(value, declared[name].datatype)) for name, value in values.items()]


class InProcessBackend(Backend):
    name = "inprocess"

    def __init__(self, models: Iterable[InProcessModel] = (), name: str = "inprocess",
                 retry_after_s: int = 1) -> None:
        self.name = name
        self.models: dict[str, InProcessModel] = {m.name: m for m in models}
        self.available = True
        self.retry_after_s = retry_after_s

    def add(self, model: InProcessModel) -> None:
        """Serve `model` from now on (discovery sees it at its next refresh)."""
        self.models[model.name] = model

    # --- health and discovery --------------------------------------------------------------------
    async def live(self) -> bool:
        return self.available

    async def ready(self) -> bool:
        return self.available

    async def list_models(self) -> list[ListedModel]:
        return [ListedModel(m.name, tuple(m.aliases)) for m in self.models.values()]

    def _model(self, name: str, version: str = "") -> InProcessModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        if version and version not in model.versions:
            raise ModelNotFound(f"model '{name}' version {version} not found")
        return model

    async def model_ready(self, model: str, version: str = "") -> bool:
        return self.available and self._model(model, version).ready

    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        found = self._model(model, version)
        return {
            "name": found.name,
            "versions": list(found.versions),
            "platform": "inprocess",
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in found.inputs],
            "outputs": (tensor_metadata(found.outputs) if found.outputs
                        else [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}]),
            "parameters": {"backend": self.name, "backend_model": found.name,
                           "input_descriptions": dict(found.inputs), **found.parameters},
        }

    # --- inference -------------------------------------------------------------------------------
    def _servable(self, name: str, version: str) -> InProcessModel:
        model = self._model(name, version)
        if not self.available or not model.ready:
            raise BackendUnavailable(f"model '{name}' is not available now", retry_after_s=self.retry_after_s)
        return model

    async def _run(self, model: InProcessModel, fn: Callable[[Any], Any], arg: Any, deadline: float | None) -> Any:
        """`fn(arg)`, a coroutine bounded by the deadline; failures as gateway errors."""
        what = f"model '{model.name}'"
        left = time_left(deadline, what)
        try:
            result = fn(arg)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, left)
            else:
                time_left(deadline, what)  # a slow plain function: its answer is too late
            return result
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"{what}: deadline exceeded before the backend answered") from None
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model bug answers 500, like a crashing handler
            raise BackendError(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    async def infer(self, request: InferRequest, deadline: float | None) -> InferResponse:
        model = self._servable(request.model_name, request.model_version)
        if model.infer is not None:
            return await self._run(model, model.infer, request, deadline)

        async def answer(fields: dict[str, bytes]) -> Answer:
            fields = {k: v for k, v in fields.items() if k != ANSWER_FIELD}
            result = await self._run(model, model.predict, fields, deadline)
            if model.tensors is not None and model.outputs:
                return _typed(model, result)
            return typed_answer(_as_prediction(result).body)

        return answers_to_response(request, await answer_all(fan_out(request), answer))

    async def predict_raw(self, model: str, version: str, fields: dict[str, bytes],
                          deadline: float | None) -> RawPrediction:
        found = self._servable(model, version)
        return _as_prediction(await self._run(found, found.predict, fields, deadline))
