"""Triton Inference Server behind the gateway, through `tritonclient.grpc.aio`.

One persistent gRPC channel per backend (opened on the gateway's loop in `start()`, or lazily on first use),
reused by every request. Per request:

- `serving.types.InferRequest` -> tritonclient `InferInput` / `InferRequestedOutput` (every OIP datatype,
  BYTES included; request id and parameters passed through), and Triton's `ModelInferResponse` straight
  back into `serving.types.InferResponse` (raw output contents, as Triton sends them).
- The deadline becomes the call's `client_timeout`, so gRPC cancels the call when it passes.
- Triton's gRPC status -> the gateway's errors: INVALID_ARGUMENT -> InvalidInput (400, Triton's message
  kept), NOT_FOUND -> ModelNotFound (404), UNAVAILABLE / CANCELLED (server down, restarting, model not
  ready, queue full) -> BackendUnavailable (503 + Retry-After), DEADLINE_EXCEEDED -> DeadlineExceeded
  (504), RESOURCE_EXHAUSTED (a message over gRPC's size limit) -> PayloadTooLarge (413, as for TorchServe),
  anything else -> BackendError (500).

Zoo models (`zoo build --engine triton`: the Python backend running a zoo handler, recognised by the
``zoo_meta`` parameter of their model config) are served exactly as the TorchServe backend serves the same
handler, so either engine gives a client the same answers: task routes send the handler's named fields (a
field the model declares as an input goes as that BYTES input, any other as a request parameter) and return
the handler's JSON answer as it is; OIP requests fan out to handler requests and come back as ``output`` plus
the answers' numbers (`serving.backends.fields`, shared with TorchServe); metadata shows the zoo's.

The channel reconnects by itself once Triton is back; its reconnect backoff is capped (`max_reconnect_s`)
so a restarted Triton is used again within seconds, not gRPC's default two minutes.

Config (see `from_config`)::

    backends:
      triton:
        type: triton
        url: 127.0.0.1:8001        # Triton's *gRPC* endpoint: host:port or grpc://host:port
        max_reconnect_s: 2         # optional: cap on the channel's reconnect backoff
    models:
      add_sub: {backend: triton, model: add_sub}
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from proto import oip
from serving.backends.base import Backend, ListedModel, RawPrediction, time_left
from serving.backends.fields import OUTPUT, answer_all, answers_to_response, fan_out, typed_answer, zoo_metadata
from serving.config import ConfigError
from serving.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
)
from serving.triton_schema import to_json, to_message
from serving.types import InferInput, InferRequest, InferResponse, RequestedOutput
from zoo.contract import TRITON_ZOO_META_PARAMETER

log = logging.getLogger(__name__)

# Request parameters tritonclient takes as infer() keywords instead of in `parameters`.
_KEYWORD_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")
# REST binary-extension parameters: the gateway's own wire format, never forwarded.
_REST_ONLY_PARAMETERS = ("binary_data_output", "binary_data", "binary_data_size")
# Triton prefixes request errors with this; the request id means nothing to the gateway's client.
_REQUEST_ID_PREFIX = re.compile(r"^\[request id: [^\]]*\]\s*")
# Health and metadata calls are small: they get their own short timeout.
_CONTROL_TIMEOUT_S = 5.0


def _grpc_target(url: str) -> str:
    target = url.strip()
    if target.startswith("grpc://"):
        target = target[len("grpc://"):]
    if "://" in target:
        raise ValueError(
            f"triton backend url {url!r}: give Triton's gRPC endpoint as host:port or grpc://host:port "
            "(the gateway talks gRPC to Triton; its HTTP port is not used)"
        )
    return target.rstrip("/")


class TritonBackend(Backend):
    """A Triton Inference Server reached over gRPC (`tritonclient.grpc.aio`)."""

    name = "triton"

    def __init__(self, url: str, *, name: str = "triton", models: Iterable[str] = (), retry_after_s: int = 1,
                 max_reconnect_s: float = 2.0) -> None:
        """`url`: Triton's gRPC endpoint. `models`: the Triton model names routed here (what `ready()`
        checks besides Triton's own readiness). `retry_after_s`: the Retry-After given with 503s."""
        self.name = name
        self.url = _grpc_target(url)
        self.models = list(dict.fromkeys(models))
        self.retry_after_s = retry_after_s
        self.max_reconnect_s = max_reconnect_s
        self._client: Any = None
        self._zoo: dict[str, ZooModel | None] = {}  # model -> how it runs a zoo handler (None: it does not)

    OPTIONS = ("url", "max_reconnect_s")

    @classmethod
    def from_config(cls, spec: Any, config: Any) -> TritonBackend:
        """From a `serving.config.BackendConfig` (``type: triton``) and its `GatewayConfig`: the routes to
        this backend are what `ready()` checks; `server.retry_after_s` is the 503s' Retry-After."""
        options = dict(spec.options)
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ConfigError(f"backend {spec.name!r} (triton): unknown option {', '.join(unknown)}; "
                              f"known: {', '.join(cls.OPTIONS)}")
        if not options.get("url"):
            raise ConfigError(f"backend {spec.name!r} (triton): needs 'url', Triton's gRPC host:port")
        try:
            return cls(str(options["url"]), name=spec.name,
                       models=[r.model for r in config.models.values() if r.backend == spec.name],
                       retry_after_s=config.retry_after_s,
                       max_reconnect_s=float(options.get("max_reconnect_s", 2.0)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # --- connection -------------------------------------------------------------------------------
    def _channel_args(self) -> list[tuple[str, Any]]:
        from tritonclient.grpc import KeepAliveOptions
        from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

        keepalive = KeepAliveOptions()
        return [  # tritonclient's own defaults (channel_args replaces them all) ...
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            # ... plus a short reconnect backoff, so a restarted Triton is picked up again quickly.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", int(self.max_reconnect_s * 1000)),
        ]

    def _get_client(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=self._channel_args())
        return self._client

    async def start(self) -> None:
        self._get_client()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # closing must not fail the shutdown
                log.debug("closing the Triton client: %s", exc)

    # --- errors -----------------------------------------------------------------------------------
    def _error(self, exc: BaseException, what: str) -> GatewayError:
        """A tritonclient / gRPC failure as the gateway's error."""
        if isinstance(exc, GatewayError):
            return exc
        status = None
        message = str(exc)
        if hasattr(exc, "status") and hasattr(exc, "message") and callable(exc.message):
            status = exc.status()  # tritonclient.utils.InferenceServerException: "StatusCode.X" or None
            message = exc.message() or message
        message = _REQUEST_ID_PREFIX.sub("", message)
        code = str(status or "").rsplit(".", 1)[-1]
        if code == "INVALID_ARGUMENT":
            return InvalidInput(message)
        if code == "NOT_FOUND":
            return ModelNotFound(message)
        if code == "DEADLINE_EXCEEDED":
            return DeadlineExceeded(f"{what}: deadline exceeded waiting for Triton")
        if code == "RESOURCE_EXHAUSTED":
            return PayloadTooLarge(f"{what}: {message}")
        if code in ("UNAVAILABLE", "CANCELLED"):
            return BackendUnavailable(f"{what}: Triton at {self.url} is unavailable: {message}",
                                      retry_after_s=self.retry_after_s)
        if isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
            return BackendUnavailable(f"{what}: Triton at {self.url}: {message}",
                                      retry_after_s=self.retry_after_s)
        return BackendError(f"{what}: Triton answered {code or type(exc).__name__}: {message}")

    # --- health -----------------------------------------------------------------------------------
    async def live(self) -> bool:
        try:
            return bool(await self._get_client().is_server_live(client_timeout=_CONTROL_TIMEOUT_S))
        except Exception as exc:  # a health probe answers False, it does not raise
            log.debug("Triton liveness: %s", exc)
            return False

    async def ready(self) -> bool:
        try:
            client = self._get_client()
            if not await client.is_server_ready(client_timeout=_CONTROL_TIMEOUT_S):
                return False
            for model in self.models:
                if not await client.is_model_ready(model, client_timeout=_CONTROL_TIMEOUT_S):
                    return False
            return True
        except Exception as exc:
            log.debug("Triton readiness: %s", exc)
            return False

    async def list_models(self) -> list[ListedModel]:
        """Triton's loaded models (the gateway's default routes when the config names none). Best effort:
        Triton may restrict its repository API (PyTriton does); then no model is discovered."""
        try:
            index = await self._get_client().get_model_repository_index(
                as_json=True, client_timeout=_CONTROL_TIMEOUT_S)
        except Exception as exc:  # discovery is optional
            log.warning("cannot list Triton's models (%s); route them in the config's `models`",
                        self._error(exc, "model index"))
            return []
        ready = {m["name"] for m in index.get("models", []) if m.get("state", "READY") == "READY"}
        listed = []
        for name in sorted(ready):
            zoo = await self._zoo_model(name, "")
            aliases = tuple(a for a in (zoo.meta.get("aliases") or []) if isinstance(a, str)) if zoo else ()
            listed.append(ListedModel(name, aliases))
        return listed

    async def _zoo_model(self, model: str, version: str) -> ZooModel | None:
        """How `model` runs a zoo handler (from its model config, fetched once), None for any other model."""
        if model not in self._zoo:
            try:
                doc = await self._get_client().get_model_config(
                    model, version, as_json=True, client_timeout=_CONTROL_TIMEOUT_S)
            except Exception as exc:  # e.g. restricted (PyTriton) or down: serve it as a plain Triton model
                log.debug("no config for Triton model %s: %s", model, self._error(exc, "model config"))
                return None
            self._zoo[model] = ZooModel.from_config(doc.get("config", doc))
        return self._zoo[model]

    async def model_ready(self, model: str, version: str = "") -> bool:
        what = f"model '{model}'" + (f" version {version}" if version else "")
        client = self._get_client()
        try:
            if await client.is_model_ready(model, version, client_timeout=_CONTROL_TIMEOUT_S):
                return True
        except Exception as exc:
            error = self._error(exc, what)
            if isinstance(error, ModelNotFound):
                raise error from None
            return False
        # Not ready: Triton says the same for a model it has never heard of; its metadata tells them apart.
        try:
            await client.get_model_metadata(model, version, client_timeout=_CONTROL_TIMEOUT_S)
        except Exception as exc:
            error = self._error(exc, what)
            if isinstance(error, ModelNotFound):
                raise error from None
        return False

    async def _describe(self, kind: str, model: str, version: str) -> dict[str, Any]:
        """Triton's JSON `kind` document ("metadata" or "config") of a model, its errors mapped."""
        what = f"{kind} of model '{model}'" + (f" version {version}" if version else "")
        ask = self._get_client().get_model_metadata if kind == "metadata" else self._get_client().get_model_config
        try:
            return await ask(model, version, as_json=True, client_timeout=_CONTROL_TIMEOUT_S)
        except Exception as exc:
            raise self._error(exc, what) from None

    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        zoo = await self._zoo_model(model, version)
        doc = await self._describe("metadata", model, version)

        def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # protobuf's JSON writes int64 as strings: shapes back to ints.
            return [{"name": t.get("name", ""), "datatype": t.get("datatype", ""),
                     "shape": [int(d) for d in t.get("shape", [])]} for t in items]

        if zoo is not None:
            return zoo.metadata(model, list(doc.get("versions", [])), self.name)
        return {
            "name": doc.get("name", model),
            "versions": list(doc.get("versions", [])),
            "platform": doc.get("platform", ""),
            "inputs": tensors(doc.get("inputs", [])),
            "outputs": tensors(doc.get("outputs", [])),
            "parameters": {"backend": "triton"},
        }

    async def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """Triton's own model config, in the fields the gateway's schema carries."""
        doc = await self._describe("config", model, version)
        return to_json(to_message(doc.get("config", {}), oip.ModelConfig()))

    # --- inference --------------------------------------------------------------------------------
    def _triton_inputs(self, request: InferRequest) -> list[Any]:
        from tritonclient.grpc import InferInput as TritonInput

        inputs = []
        for tensor in request.inputs:
            item = TritonInput(tensor.name, list(tensor.shape), tensor.datatype)
            array = tensor.as_numpy()
            if tensor.datatype == "BF16":  # held as float32; tritonclient truncates it to bfloat16
                array = np.ascontiguousarray(array, dtype=np.float32)
            try:
                item.set_data_from_numpy(array)
            except Exception as exc:  # tritonclient's own checks (dtype / shape)
                raise InvalidInput(f"input '{tensor.name}': {exc}") from None
            inputs.append(item)
        return inputs

    def _triton_outputs(self, request: InferRequest) -> list[Any] | None:
        from tritonclient.grpc import InferRequestedOutput

        if not request.outputs:
            return None
        outputs = []
        for requested in request.outputs:
            class_count = requested.parameters.get("classification", 0)
            if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
                raise InvalidInput(
                    f"output '{requested.name}': 'classification' must be a non-negative integer")
            outputs.append(InferRequestedOutput(requested.name, class_count=class_count))
        return outputs

    @staticmethod
    def _split_parameters(parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(infer() keywords, parameters to forward). tritonclient forwards str / bool / int only."""
        keywords: dict[str, Any] = {}
        forwarded: dict[str, Any] = {}
        for key, value in parameters.items():
            if key in _REST_ONLY_PARAMETERS or value is None:
                continue
            if key in _KEYWORD_PARAMETERS:
                keywords[key] = value
            elif isinstance(value, (str, bool, int)):
                forwarded[key] = value
            else:
                raise InvalidInput(f"request parameter '{key}': the Triton backend forwards string, boolean "
                                   f"and integer parameters only, got {type(value).__name__}")
        return keywords, forwarded

    async def infer(self, request: InferRequest, deadline: float | None) -> InferResponse:
        zoo = await self._zoo_model(request.model_name, request.model_version)
        if zoo is not None:  # the handler's fields, exactly as over TorchServe
            async def answer(fields: dict[str, bytes]) -> Any:
                return typed_answer(await self._zoo_call(zoo, request.model_name, request.model_version, fields,
                                                         deadline))

            return answers_to_response(request, await answer_all(fan_out(request), answer))
        return await self.infer_triton(request, deadline)

    async def infer_triton(self, request: InferRequest, deadline: float | None) -> InferResponse:
        """The request as Triton's own inference, tensors as they are."""
        what = f"model '{request.model_name}'"
        inputs = self._triton_inputs(request)
        outputs = self._triton_outputs(request)
        keywords, parameters = self._split_parameters(request.parameters)
        timeout = time_left(deadline, what)
        try:
            result = await self._get_client().infer(
                request.model_name, inputs, model_version=request.model_version or "", outputs=outputs,
                request_id=request.id or "", parameters=parameters or None, client_timeout=timeout,
                **keywords,
            )
        except Exception as exc:  # every failure leaves as a gateway error
            raise self._error(exc, what) from None
        response = InferResponse.from_grpc(result.get_response())
        response.id = response.id or request.id
        return response

    async def predict_raw(self, model: str, version: str, fields: dict[str, bytes],
                          deadline: float | None) -> RawPrediction:
        """Task route on a Triton model: each byte field becomes the BYTES input of that name (a raw body,
        field "body", goes to the model's only input), one element each; the answer is the OIP REST
        response (JSON, or the binary extension when an output is not UTF-8). A zoo model answers its
        handler's JSON as it is (see the module doc)."""
        zoo = await self._zoo_model(model, version)
        if zoo is not None:
            return RawPrediction(await self._zoo_call(zoo, model, version, fields, deadline), "application/json")
        meta = await self.model_metadata(model, version)
        specs = {t["name"]: t for t in meta["inputs"]}
        if set(fields) == {"body"} and "body" not in specs:
            if len(specs) != 1:
                raise InvalidInput(f"model '{model}' has {len(specs)} inputs ({', '.join(specs)}), so a raw body "
                                   "cannot be routed: send one multipart part per input, named after it")
            fields = {next(iter(specs)): fields["body"]}
        unknown = sorted(set(fields) - set(specs))
        if unknown:
            raise InvalidInput(f"model '{model}' has no input named {', '.join(unknown)}; "
                               f"its inputs: {', '.join(specs)}")
        missing = sorted(set(specs) - set(fields))
        if missing:
            raise InvalidInput(f"model '{model}': missing input {', '.join(missing)}")
        inputs = []
        for name, data in fields.items():
            spec = specs[name]
            if spec["datatype"] != "BYTES":
                raise InvalidInput(f"model '{model}' input '{name}' is {spec['datatype']}; task routes send "
                                   "bytes (BYTES inputs) only: use the /v2 inference route")
            shape = [1 if d < 0 else d for d in spec["shape"]]
            if int(np.prod(shape)) != 1:
                raise InvalidInput(f"model '{model}' input '{name}' has shape {spec['shape']}: a task route "
                                   "sends one element per input")
            inputs.append(InferInput.from_bytes_list(name, [bytes(data)], shape))
        response = await self.infer(InferRequest(model, inputs, version), deadline)
        body, header_length = response.to_rest()
        if header_length is None:
            return RawPrediction(body, "application/json")
        return RawPrediction(body, "application/octet-stream",
                             {"Inference-Header-Content-Length": str(header_length)})

    async def _zoo_call(self, zoo: ZooModel, model: str, version: str, fields: dict[str, bytes],
                        deadline: float | None) -> bytes:
        """One handler request (named byte fields) to a zoo model -> the handler's answer."""
        inputs, parameters = zoo.request(fields)
        # `output` alone: the handler's answer as TorchServe gives it (JSON, or the typed framing it was asked for)
        request = InferRequest(model, inputs, version, parameters=parameters, outputs=[RequestedOutput(OUTPUT)])
        response = await self.infer_triton(request, deadline)
        for output in response.outputs:
            if output.name == OUTPUT:
                elements = output.bytes_elements()
                if len(elements) == 1:
                    return elements[0]
        raise BackendError(f"model '{model}' answered without one '{OUTPUT}' element")


class ZooModel:
    """A Triton model that runs a zoo handler (`zoo build --engine triton`, see zoo/triton_repo.py): its
    declared BYTES inputs and the zoo metadata its config carries."""

    def __init__(self, inputs: list[str], meta: dict[str, Any]) -> None:
        self.inputs = inputs
        self.meta = meta

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ZooModel | None:
        parameter = (config.get("parameters") or {}).get(TRITON_ZOO_META_PARAMETER)
        if not parameter:
            return None
        try:
            meta = json.loads(parameter.get("string_value", ""))
        except (TypeError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        return cls([str(i.get("name", "")) for i in config.get("input", [])], meta)

    def request(self, fields: dict[str, bytes]) -> tuple[list[InferInput], dict[str, Any]]:
        """Handler fields -> (BYTES inputs of one element, request parameters for the undeclared fields)."""
        inputs, parameters = [], {}
        for name, data in fields.items():
            if name in self.inputs:
                inputs.append(InferInput.from_bytes_list(name, [bytes(data)], [1, 1]))
                continue
            try:
                parameters[name] = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"field '{name}' holds binary data, which this model takes only as one of its "
                                   f"inputs: {', '.join(self.inputs)}") from None
        return inputs, parameters

    def metadata(self, model: str, versions: list[str], backend: str) -> dict[str, Any]:
        """The same metadata the TorchServe backend gives for this handler (from its zoo_model.json)."""
        return zoo_metadata(self.meta, model, versions, "triton", backend)
