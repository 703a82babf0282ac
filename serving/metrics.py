"""Prometheus metrics of one gateway, declared once, in a registry of its own (never the global one), so
several gateways (tests) can live in one process and `/metrics` shows exactly this gateway's series.

Labels: `protocol` is ``rest`` or ``grpc``; `route` names the operation (``infer``, ``predict``,
``stream_infer``, ``model_metadata``, ``model_ready``, ``server_metadata``); `status` is the HTTP status
(gRPC answers use the HTTP status of the same error, so both protocols count alike: OK is ``200``).
Requests for models the gateway does not serve are labelled ``model="_unknown"`` (bounded cardinality); a
request under a model's alias is labelled with the model's own public name. Written only through
`serving.dataplane.DataPlane.observe` (one path for every front-end).

Video stream sessions (serving/streams.py) add ``zoo_gateway_streams_active``, ``zoo_gateway_stream_frames_total``
(``outcome`` = ``received``, ``processed`` or ``dropped``), ``zoo_gateway_stream_forecast_horizon_frames`` and
``zoo_gateway_stream_frame_latency_seconds`` (frame received -> its answer sent), all by ``model``; each session
also counts once in ``zoo_gateway_requests_total`` with ``route="stream"`` (no duration: it is a session).
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
# forecast horizon in frames (answer frame - frame the detections were computed on)
HORIZON_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0)


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
        # The autoscaling signal (deploy/k8s KEDA ScaledObject / HPA): backend calls of a model admitted and not
        # yet answered (sent or waiting in the gateway's per-model queue), and of those, the ones waiting.
        self.model_in_flight = Gauge(
            "zoo_gateway_model_in_flight", "Backend calls of a model sent or queued in the gateway, not yet answered",
            ["model"], registry=r)
        self.model_queued = Gauge(
            "zoo_gateway_model_queued", "Backend calls of a model waiting in the gateway's queue", ["model"],
            registry=r)
        self.request_size = Histogram(
            "zoo_gateway_request_size_bytes", "Request payload size", ["model", "protocol", "route"],
            buckets=SIZE_BUCKETS, registry=r)
        self.response_size = Histogram(
            "zoo_gateway_response_size_bytes", "Response payload size", ["model", "protocol", "route"],
            buckets=SIZE_BUCKETS, registry=r)
        self.backend_errors = Counter(
            "zoo_gateway_backend_errors_total", "Backend calls that failed, by error kind",
            ["backend", "kind"], registry=r)
        # SIGHUP re-reads the API keys; a failed reload keeps the old keys, so it must be visible (alertable)
        self.key_reloads = Counter(
            "zoo_gateway_api_key_reloads_total", "API key reloads (SIGHUP), by result: ok or failed (old keys kept)",
            ["result"], registry=r)
        self._children: dict[tuple, tuple] = {}
        self.streams_active = Gauge(
            "zoo_gateway_streams_active", "Video stream sessions open now", ["model"], registry=r)
        self.stream_frames = Counter(
            "zoo_gateway_stream_frames_total",
            "Stream frames: received, then each either processed (given to the detector) or dropped",
            ["model", "outcome"], registry=r)
        self.stream_horizon = Histogram(
            "zoo_gateway_stream_forecast_horizon_frames",
            "Frames between an answered frame and the frame its detections were computed on",
            ["model"], buckets=HORIZON_BUCKETS, registry=r)
        self.stream_frame_latency = Histogram(
            "zoo_gateway_stream_frame_latency_seconds", "Stream frame received to its answer sent",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(GpuCollector())  # zoo_gateway_gpu_* per device via NVML; gpu_available 0 on CPU-only hosts

    def observe_request(self, model: str, version: str, protocol: str, route: str, status: int,
                        seconds: float, request_bytes: int | None, response_bytes: int | None) -> None:
        key = (model, version, protocol, route, status)
        children = self._children.get(key)
        if children is None:  # label lookups are the costly part: once per label set
            children = self._children[key] = (
                self.requests.labels(model, version, protocol, route, str(status)),
                self.request_duration.labels(model, protocol, route),
                self.request_size.labels(model, protocol, route),
                self.response_size.labels(model, protocol, route),
            )
        count, duration, request_size, response_size = children
        count.inc()
        duration.observe(seconds)
        if request_bytes is not None:
            request_size.observe(request_bytes)
        if response_bytes is not None:
            response_size.observe(response_bytes)

    def count_request(self, model: str, version: str, protocol: str, route: str, status: int) -> None:
        """Count without duration or sizes: a stream session (or its refusal)."""
        self.requests.labels(model, version, protocol, route, str(status)).inc()

    def observe_backend(self, model: str, backend: str, seconds: float) -> None:
        key = (model, backend)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.backend_duration.labels(model, backend)
        child.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
