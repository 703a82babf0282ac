"""The one handler base: decode -> batch -> predict -> encode, with per-request errors.

Subclasses implement four small methods. The base owns the TorchServe plumbing: loading the archived
zoo model and its labelled weights, picking the device TorchServe assigned, isolating each request's
client error (a 4xx for that request only), turning unexpected failures into 500s for the affected
requests without killing the worker, and guaranteeing exactly one answer per request.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler

from handlers.codec import RequestError
from zoo._registry import ModelEntry, get_entry
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE, BATCH_SIZE_HEADER
from zoo.weights import load_strict

logger = logging.getLogger(__name__)


def pick_device(properties: dict[str, Any]) -> torch.device:
    """The GPU TorchServe assigned to this worker, else CPU."""
    gpu_id = properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class ZooHandler(BaseHandler):
    """Base for every zoo handler (TorchServe custom service)."""

    entry: ModelEntry
    meta: dict[str, Any]

    # --- lifecycle -------------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir", "."))
        self.meta = json.loads((model_dir / ARCHIVE_META_FILE).read_text())
        self.entry = get_entry(self.meta["name"])
        self.device = pick_device(properties)
        self.model = self.load_model(model_dir)
        self.setup(model_dir)
        self.initialized = True
        logger.info(
            "loaded %s on %s with weights %s", self.entry.name, self.device, self.meta.get("weights")
        )

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        model = self.entry.build(**self.meta.get("config_overrides", {}))
        load_strict(model, load_file(str(model_dir / ARCHIVE_WEIGHTS_FILE)), f"{self.entry.name} archive weights")
        return model.to(self.device).eval()

    def setup(self, model_dir: Path) -> None:
        """Optional per-worker setup after the model is loaded."""

    # --- the four steps subclasses implement -----------------------------------------------------
    def decode(self, request: dict[str, Any], index: int) -> Any:
        """One raw TorchServe request -> one decoded item. Raise RequestError for client errors."""
        raise NotImplementedError

    def batch(self, items: list[Any]) -> Any:
        """Decoded items -> one model input."""
        raise NotImplementedError

    def predict(self, batch: Any) -> Any:
        """Model input -> model output (already under inference_mode)."""
        return self.model(batch)

    def encode(self, output: Any, items: list[Any]) -> list[Any]:
        """Model output -> one JSON-serialisable answer per item, in order."""
        raise NotImplementedError

    # --- plumbing --------------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        """Model metadata attached to every answer (weights label included, so random weights show)."""
        return {
            "name": self.entry.name,
            "version": self.entry.version,
            "weights": self.meta.get("weights", {}),
        }

    def _error(self, index: int, status: int, message: str) -> dict[str, Any]:
        self.context.set_response_status(status, message, index)
        self.context.set_response_content_type(index, "application/json")
        return {"error": message, "status": status, "model": self.entry.name}

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        started = time.perf_counter()
        answers: list[Any] = [None] * len(data)
        decoded: list[tuple[int, Any]] = []
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
                    answers[index] = answer
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
