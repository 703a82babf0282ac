"""Prometheus metrics of one gateway, declared once, in a registry of its own (never the global one), so
several gateways (tests) can live in one process and `/metrics` shows exactly this gateway's series.

Labels: `protocol` is ``rest`` or ``grpc``; `route` names the operation (``infer``, ``predict``,
``stream_infer``, ``model_metadata``, ``model_ready``, ``server_metadata``); `status` is the HTTP status
(gRPC answers use the HTTP status of the same error, so both protocols count alike: OK is ``200``).
Requests for models the gateway does not serve are labelled ``model="_unknown"`` (bounded cardinality).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.gpu_metrics import GpuCollector

# 1 ms .. 30 s
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# 256 B .. 512 MiB, x4 per bucket
SIZE_BUCKETS = tuple(float(256 * 4**i) for i in range(12))
UNKNOWN_MODEL = "_unknown"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "zoo_gateway_requests_total", "Requests answered by the gateway",
            ["model", "version", "protocol", "route", "status"], registry=r)
        self.request_duration = Histogram(
            "zoo_gateway_request_duration_seconds", "Request received to answer sent (gateway total)",
            ["model", "protocol", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_duration = Histogram(
            "zoo_gateway_backend_duration_seconds", "Time spent waiting for the backend",
            ["model", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "zoo_gateway_in_flight_requests", "Requests being handled now", ["protocol"], registry=r)
        self.request_size = Histogram(
            "zoo_gateway_request_size_bytes", "Request payload size", ["model", "protocol", "route"],
            buckets=SIZE_BUCKETS, registry=r)
        self.response_size = Histogram(
            "zoo_gateway_response_size_bytes", "Response payload size", ["model", "protocol", "route"],
            buckets=SIZE_BUCKETS, registry=r)
        self.backend_errors = Counter(
            "zoo_gateway_backend_errors_total", "Backend calls that failed, by error kind",
            ["backend", "kind"], registry=r)
        r.register(GpuCollector())  # zoo_gateway_gpu_* per device via NVML; gpu_available 0 on CPU-only hosts

    def observe_request(self, model: str, version: str, protocol: str, route: str, status: int,
                        seconds: float, request_bytes: int | None, response_bytes: int | None) -> None:
        self.requests.labels(model, version, protocol, route, str(status)).inc()
        self.request_duration.labels(model, protocol, route).observe(seconds)
        if request_bytes is not None:
            self.request_size.labels(model, protocol, route).observe(request_bytes)
        if response_bytes is not None:
            self.response_size.labels(model, protocol, route).observe(response_bytes)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
