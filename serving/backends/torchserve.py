"""TorchServe behind the gateway, over TorchServe's gRPC inference API (unary `Predictions` only).

Transport: one persistent `grpc.aio` channel (reconnects by itself, with a short backoff so a restarted
TorchServe is picked up within ~2 s), message limits as large as the gateway's request limit, and a
timeout per call derived from the request's deadline.

OIP tensors <-> handler fields: `serving.backends.fields` (shared with the in-process backend).

Errors: TorchServe's gRPC API answers a handler's per-request status (``set_response_status(400, msg)``)
with gRPC OK and the handler's body; the zoo handler base always writes that body as
``{"error": msg, "status": code, ...}``, so that envelope is mapped back with `error_for_status` (400 ->
InvalidInput with the handler's message). Unknown model/version (TorchServe: INTERNAL, "Model not found")
-> ModelNotFound; UNAVAILABLE / no worker -> BackendUnavailable; deadline -> DeadlineExceeded.

Tokens: when TorchServe runs with token authorization (`zoo serve` does), `token_file` is its
``key_file.json``: the inference token goes with every gRPC call (``authorization: Bearer``), the management
token with every management call. The file is re-read when it changes (a restarted TorchServe has new tokens).

Cancellation: a call already sent to TorchServe is never cancelled from here (its client may go away, a
stream may be closed): it runs to completion (or deadline + `backend_grace_s`) in the background and its
answer is dropped. TorchServe cannot abort a running inference anyway, and this keeps its cancel paths
(where a closed client stream once hung every model) out of play. `close()` waits for those calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc

from proto import serialize, ts
from serving.backends.base import Backend, ListedModel, ModelWorkers, RawPrediction, time_left
from serving.backends.fields import answer_all, answers_to_response, fan_out, typed_answer, zoo_metadata
from serving.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    error_for_status,
)
from serving.triton_schema import Scheduling
from serving.types import InferRequest, InferResponse
from zoo.contract import ARCHIVE_META_FILE
from zoo.tensors import specs_from

logger = logging.getLogger(__name__)

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
PING = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping"
# TorchServe's answers that mean "no capacity now" (queue full, no worker, worker died): 503 + Retry-After
UNAVAILABLE_MARKERS = ("Worker died", "has no worker", "no worker to serve", "ServiceUnavailable",
                       "queue is full", "job queue", "Model is not ready", "not ready to serve")


def handler_error(body: bytes) -> GatewayError | None:
    """The zoo handler base's error envelope ``{"error": msg, "status": code}`` as a gateway error."""
    if not body.startswith(b"{") or b'"error"' not in body[:4096]:
        return None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    status = doc.get("status") if isinstance(doc, dict) else None
    if isinstance(status, int) and status >= 400 and isinstance(doc.get("error"), str):
        return error_for_status(status, doc["error"])
    return None


class TorchServeBackend(Backend):
    name = "torchserve"

    def __init__(
        self,
        grpc_target: str,
        management_url: str | None = None,
        model_store: str | Path | None = None,
        token_file: str | Path | None = None,
        max_message_bytes: int = 512 * 1024 * 1024,
        backend_grace_s: float = 30.0,
        retry_after_s: int = 1,
        name: str = "torchserve",
    ) -> None:
        self.name = name
        self.grpc_target = grpc_target
        self.management_url = management_url.rstrip("/") if management_url else None
        self.model_store = Path(model_store) if model_store else None
        self.max_message_bytes = max_message_bytes
        self.backend_grace_s = backend_grace_s
        self.retry_after_s = retry_after_s
        self._channel: grpc.aio.Channel | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Future] = set()
        self._meta_cache: dict[str, dict[str, Any]] = {}
        self._binary_inputs: dict[tuple[str, str], frozenset[str]] = {}  # model, version -> binary input names
        self.token_file = Path(token_file) if token_file else None
        self._tokens: tuple[float, dict[str, str]] = (0.0, {})  # (file mtime, token kind -> token)

    def _token(self, kind: str) -> str | None:
        """TorchServe's `kind` token ("management" or "inference") from its key file; None without one."""
        if self.token_file is None:
            return None
        try:
            mtime = self.token_file.stat().st_mtime
            if mtime != self._tokens[0]:
                doc = json.loads(self.token_file.read_text())
                self._tokens = (mtime, {k: str(v["key"]) for k, v in doc.items() if isinstance(v, dict) and "key" in v})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailable(f"TorchServe token file {self.token_file} unreadable: {exc}",
                                     retry_after_s=self.retry_after_s) from None
        return self._tokens[1].get(kind)

    def _grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        token = self._token("inference")
        return None if token is None else (("authorization", f"Bearer {token}"),)

    def _management_headers(self) -> dict[str, str]:
        token = self._token("management")
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        size = min(self.max_message_bytes + (1 << 20), 2**31 - 1)
        self._channel = grpc.aio.insecure_channel(self.grpc_target, options=[
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            # reconnect fast after a TorchServe restart (min_reconnect_backoff_ms is left alone: gRPC core
            # also uses it as the connect timeout, and a busy TorchServe may take >200 ms to answer)
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ])
        self._predict = self._channel.unary_unary(
            PREDICTIONS, request_serializer=serialize,
            response_deserializer=ts.PredictionResponse.FromString)
        self._ping = self._channel.unary_unary(
            PING, request_serializer=serialize,
            response_deserializer=ts.TorchServeHealthResponse.FromString)
        if self.management_url:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)
        if self._http is not None:
            await self._http.close()
        if self._channel is not None:
            await self._channel.close(grace=None)

    # --- health ----------------------------------------------------------------------------------
    async def live(self) -> bool:
        try:
            reply = await self._ping(ts.Empty(), timeout=2.0, metadata=self._grpc_metadata())
        except BackendUnavailable:
            return False
        except grpc.aio.AioRpcError as exc:
            logger.info("TorchServe ping failed: %s %s", exc.code().name, exc.details())
            return False
        try:
            status = json.loads(reply.health).get("status")
        except (ValueError, AttributeError):
            status = reply.health
        return status == "Healthy"

    async def _describe(self, model: str, version: str) -> list[dict[str, Any]] | None:
        """Management API description of a model (None without a management URL). ModelNotFound if unknown."""
        if self._http is None:
            return None
        # quoted: a name or version never adds path segments (the gateway also refuses such versions)
        url = f"{self.management_url}/models/{quote(model, safe='')}" + (f"/{quote(version, safe='')}"
                                                                         if version else "")
        try:
            async with self._http.get(url, headers=self._management_headers()) as resp:
                if resp.status == 404:
                    which = f" version {version}" if version else ""
                    raise ModelNotFound(f"model '{model}'{which} not found")
                if resp.status != 200:
                    raise BackendUnavailable(f"TorchServe management answered {resp.status}",
                                             retry_after_s=self.retry_after_s)
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(f"TorchServe management API unreachable: {exc}",
                                     retry_after_s=self.retry_after_s) from None

    async def list_models(self) -> list[ListedModel]:
        """TorchServe's registered models, each with the aliases its archive's zoo metadata lists."""
        if self._http is None:
            return []
        try:
            async with self._http.get(f"{self.management_url}/models?limit=1000",
                                      headers=self._management_headers()) as resp:
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, BackendUnavailable):
            return []
        listed = []
        for entry in doc.get("models", []):
            name = entry["modelName"]
            aliases = self._archive_meta(name, entry.get("modelUrl")).get("aliases") or []
            listed.append(ListedModel(name, tuple(str(a) for a in aliases if isinstance(a, str))))
        return listed

    async def model_workers(self, model: str) -> ModelWorkers | None:
        """Workers by status from the management API (None without one); raises when it cannot answer."""
        described = await self._describe(model, "")
        if described is None:
            return None
        if not described:
            raise ModelNotFound(f"model '{model}' has no version registered")
        workers: dict[str, int] = {"READY": 0}
        min_workers = 0
        for version in described:
            min_workers += int(version.get("minWorkers", 0) or 0)
            for worker in version.get("workers", []):
                status = str(worker.get("status", "UNKNOWN"))
                workers[status] = workers.get(status, 0) + 1
        return ModelWorkers(workers, min_workers)

    async def ready(self) -> bool:
        return await self.live()

    async def model_ready(self, model: str, version: str = "") -> bool:
        try:
            described = await self._describe(model, version)
        except BackendUnavailable:
            return False
        if described is None:  # no management API: ready when TorchServe answers
            return await self.live()
        return any(w.get("status") == "READY" for d in described for w in d.get("workers", []))

    # --- metadata --------------------------------------------------------------------------------
    def _archive_meta(self, model: str, archive: str | None) -> dict[str, Any]:
        key = archive or model
        if key in self._meta_cache:
            return self._meta_cache[key]
        meta: dict[str, Any] = {}
        if self.model_store is not None:
            path = self.model_store / (Path(archive).name if archive else f"{model}.mar")
            try:
                with zipfile.ZipFile(path) as zf:
                    meta = json.loads(zf.read(ARCHIVE_META_FILE))
            except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
                logger.warning("no zoo metadata for %s in %s: %s", model, path, exc)
        self._meta_cache[key] = meta
        return meta

    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        described = await self._describe(model, version)
        versions: list[str] = []
        archive = None
        if described:
            versions = [str(d.get("modelVersion")) for d in described if d.get("modelVersion")]
            archive = described[0].get("modelUrl")
        meta = self._archive_meta(model, archive)
        if described is None and not meta:
            raise ModelNotFound(f"model '{model}' not found")
        return zoo_metadata(meta, model, versions, "torchserve", self.name)

    async def binary_inputs(self, model: str, version: str = "") -> frozenset[str]:
        """From the archive's declared inputs (asked once per model and version, then remembered)."""
        key = (model, version)
        if key not in self._binary_inputs:
            described = await self._describe(model, version)
            archive = described[0].get("modelUrl") if described else None
            specs = specs_from(self._archive_meta(model, archive).get("input_specs") or [])
            self._binary_inputs[key] = frozenset(spec.name for spec in specs if spec.binary)
        return self._binary_inputs[key]

    async def model_scheduling(self, model: str, version: str = "") -> Scheduling:
        """From the management API: the archive's batch size and max batch delay (TorchServe batches
        dynamically when the size is over 1) and the model's workers (GPU ones make the kind KIND_GPU)."""
        described = await self._describe(model, version)
        if not described:
            return Scheduling()
        first = described[0]
        batch_size = max(int(first.get("batchSize", 1) or 1), 1)
        workers = first.get("workers", [])
        return Scheduling(
            max_batch_size=batch_size,
            preferred_batch_sizes=(batch_size,) if batch_size > 1 else (),
            max_queue_delay_us=int(first.get("maxBatchDelay", 0) or 0) * 1000,
            instances=max(len(workers), int(first.get("minWorkers", 0) or 0), 1),
            kind="KIND_GPU" if any(w.get("gpu") for w in workers) else "KIND_CPU")

    # --- inference -------------------------------------------------------------------------------
    def _map_rpc_error(self, exc: grpc.aio.AioRpcError, model: str, version: str) -> GatewayError:
        code, details = exc.code(), exc.details() or ""
        first_line = details.splitlines()[0] if details else code.name
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"model '{model}': deadline exceeded waiting for TorchServe")
        # "Worker died.": the model's worker crashed or TorchServe is shutting down; TorchServe restarts
        # workers by itself, so this is retryable like UNAVAILABLE. A full job queue and a model scaled to 0
        # workers ("has no worker to serve inference request") are capacity, not bugs: 503 too.
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or any(
                marker in details for marker in UNAVAILABLE_MARKERS):
            return BackendUnavailable(f"TorchServe unavailable for model '{model}': {first_line}",
                                      retry_after_s=self.retry_after_s)
        if ("ModelNotFoundException" in details or "ModelVersionNotFoundException" in details
                or code == grpc.StatusCode.NOT_FOUND):
            return ModelNotFound(first_line)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInput(first_line)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PayloadTooLarge(first_line)
        return BackendError(f"TorchServe error for model '{model}': {code.name}: {first_line}")

    async def _call(self, model: str, version: str, fields: dict[str, bytes],
                    deadline: float | None) -> bytes:
        left = time_left(deadline, f"model '{model}'")
        request = ts.PredictionsRequest(model_name=model, model_version=version, input=fields)
        call = asyncio.ensure_future(self._predict(
            request, timeout=None if left is None else left + self.backend_grace_s, metadata=self._grpc_metadata()))
        self._pending.add(call)
        call.add_done_callback(self._forget)
        # asyncio.wait never cancels what it waits for: a caller that goes away (or times out) leaves the
        # TorchServe call running to completion
        await asyncio.wait((call,), timeout=left)
        if not call.done():
            raise DeadlineExceeded(f"model '{model}': deadline exceeded waiting for TorchServe")
        try:
            reply = call.result()
        except grpc.aio.AioRpcError as exc:
            raise self._map_rpc_error(exc, model, version) from None
        body = reply.prediction
        error = handler_error(body)
        if error is not None:
            raise error
        return body

    def _forget(self, call: asyncio.Future) -> None:
        self._pending.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: an abandoned call's failure is not an "unhandled" error

    async def infer(self, request: InferRequest, deadline: float | None) -> InferResponse:
        model, version = request.model_name, request.model_version
        async def answer(fields: dict[str, bytes]) -> Any:
            return typed_answer(await self._call(model, version, fields, deadline))

        return answers_to_response(request, await answer_all(fan_out(request), answer))

    async def predict_raw(self, model: str, version: str, fields: dict[str, bytes],
                          deadline: float | None) -> RawPrediction:
        return RawPrediction(await self._call(model, version, fields, deadline))
