"""Backend health, model readiness and TorchServe worker counts as gauges, asked for just before each scrape.

Why: TorchServe's Prometheus endpoint has no worker count and says nothing when a model has no live worker
(requests then just queue or fail), and Triton's readiness is not scraped at all. The gateway already talks
to every backend, so it reports what it sees: alerts and dashboards then need only the gateway's series.

`refresh()` runs on the gateway's event loop (awaited by the `/metrics` route through
`GatewayMetrics.refresh`); every backend call is bounded by `timeout_s`, so a hung backend makes a scrape
at most that much slower and shows up as 0, never as a stale 1. Series:

- ``zoo_gateway_backend_up{backend}`` 1 when the backend answered its liveness check
- ``zoo_gateway_model_ready{model,backend}`` 1 when the model can take requests (public model name)
- ``zoo_gateway_backend_workers{model,backend,status}`` workers by status (``READY`` always present, 0 when
  none is ready); only for backends with a worker view (`Backend.model_workers`: TorchServe with its
  management API)
- ``zoo_gateway_backend_min_workers{model,backend}`` the model's configured minimum number of workers
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from serving.dataplane import DataPlane

logger = logging.getLogger(__name__)


@dataclass
class ModelState:
    backend: str
    ready: bool
    workers: dict[str, int] | None = None  # status -> count; None when the backend has no worker view
    min_workers: int | None = None


@dataclass
class Snapshot:
    backends_up: dict[str, bool] = field(default_factory=dict)
    models: dict[str, ModelState] = field(default_factory=dict)


class BackendStateCollector:
    """prometheus_client collector over the last `refresh()` of a DataPlane's backends and routes."""

    def __init__(self, dataplane: DataPlane, timeout_s: float = 2.0) -> None:
        self.dataplane = dataplane
        self.timeout_s = timeout_s
        self.snapshot = Snapshot()

    async def refresh(self) -> None:
        dp = self.dataplane
        names = list(dp.backends)
        up = await asyncio.gather(*(self._bounded(dp.backends[n].live()) for n in names))
        backends_up = {n: bool(u) for n, u in zip(names, up, strict=True)}
        routes = dp.repository.routes()
        # one backend question per (backend, backend model), however many public routes share it
        keys = sorted({(r.backend, r.model) for r in routes})
        answers = await asyncio.gather(*(self._model_state(b, m, backends_up.get(b, False)) for b, m in keys))
        by_key = dict(zip(keys, answers, strict=True))
        self.snapshot = Snapshot(backends_up, {r.public_name: by_key[(r.backend, r.model)] for r in routes})

    async def _bounded(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - down, hung or erroring: all mean "not available"
            logger.debug("backend state check failed: %s", exc)
            return None

    async def _model_state(self, backend_name: str, model: str, backend_up: bool) -> ModelState:
        backend = self.dataplane.backends[backend_name]
        try:
            workers = await asyncio.wait_for(backend.model_workers(model), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - unreachable, hung or unknown: nothing is ready
            logger.debug("worker check of %s on %s failed: %s", model, backend_name, exc)
            return ModelState(backend_name, False, {"READY": 0})
        if workers is None:  # no worker view: readiness only
            ready = bool(backend_up and await self._bounded(backend.model_ready(model)))
            return ModelState(backend_name, ready)
        return ModelState(backend_name, workers.by_status["READY"] > 0, dict(workers.by_status),
                          workers.min_workers)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily("zoo_gateway_backend_up", "1 when the backend answered the gateway's liveness check",
                               labels=["backend"])
        for name, is_up in sorted(snap.backends_up.items()):
            up.add_metric([name], 1.0 if is_up else 0.0)
        ready = GaugeMetricFamily("zoo_gateway_model_ready", "1 when the model can take requests now",
                                  labels=["model", "backend"])
        workers = GaugeMetricFamily("zoo_gateway_backend_workers", "Backend (TorchServe) workers by status",
                                    labels=["model", "backend", "status"])
        minimum = GaugeMetricFamily("zoo_gateway_backend_min_workers", "Configured minimum workers of the model",
                                    labels=["model", "backend"])
        for model, state in sorted(snap.models.items()):
            ready.add_metric([model, state.backend], 1.0 if state.ready else 0.0)
            for status, count in sorted((state.workers or {}).items()):
                workers.add_metric([model, state.backend, status], float(count))
            if state.min_workers is not None:
                minimum.add_metric([model, state.backend], float(state.min_workers))
        yield from (up, ready, workers, minimum)
