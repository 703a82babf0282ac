"""Writes the Grafana dashboards in deploy/grafana/dashboards/*.json (the JSON files are this script's output).

    python deploy/grafana/generate_dashboards.py          # rewrite the JSON files
    python deploy/grafana/generate_dashboards.py --check  # exit 1 if a JSON file differs from this script

Why a script: every panel then uses the same `$datasource` variable, ids are unique and the grid layout is
computed, so a new panel is one line. tests/e2e/test_observability.py checks that the JSON files are this
script's output, that their layout is sane, and evaluates every query against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
INFER_ROUTES = 'route=~"infer|predict|stream_infer"'
TAGS = ["zoo-gateway"]


# --- building blocks -----------------------------------------------------------------------------------
def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": True}


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
          w: int = 12, h: int = 8, description: str = "", **field_defaults: Any) -> dict[str, Any]:
    """A panel; `targets` are (expr, legend) pairs."""
    refs = "ABCDEFGHIJ"
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, legend, refs[i]) for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, **field_defaults}, "overrides": []},
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
    }
    if kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return out


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids in order, and grid positions left to right, wrapping at Grafana's 24 columns."""
    x = y = line_h = 0
    for pid, p in enumerate(panels, start=1):
        p["id"] = pid
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            x, y, line_h = 0, y + line_h, 0
        g["x"], g["y"] = x, y
        if p["type"] == "row":
            y += 1
            continue
        x += g["w"]
        line_h = max(line_h, g["h"])
    return panels


def datasource_var() -> dict[str, Any]:
    return {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name: str, label: str, query: str, multi: bool = True) -> dict[str, Any]:
    return {"type": "query", "name": name, "label": label, "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi, "allValue": ".*" if multi else None,
            "current": {}, "hide": 0, "options": [], "regex": ""}


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "zoo-gateway",
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": [datasource_var(), *variables]},
        "panels": layout(panels),
    }


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
             f"{{{{{by}}}}} p{round(q * 100)}") for q in qs]


# --- dashboards ------------------------------------------------------------------------------------------
def overview() -> dict[str, Any]:
    sel = 'model=~"$model", protocol=~"$protocol"'
    req = f"zoo_gateway_requests_total{{{sel}, {INFER_ROUTES}}}"
    panels = [
        row("Traffic"),
        panel("Inference requests / s by model", [(f"sum by (model) (rate({req}[{RATE}]))", "{{model}}")],
              "reqps", description="OIP infer, task-route predict and gRPC stream messages answered by the gateway"),
        panel("Requests / s by protocol and route",
              [(f"sum by (protocol, route) (rate(zoo_gateway_requests_total{{{sel}}}[{RATE}]))",
                "{{protocol}} {{route}}")], "reqps"),
        panel("Answers / s by status", [(f"sum by (status) (rate({req}[{RATE}]))", "{{status}}")], "reqps", w=8),
        panel("In-flight requests", [('sum by (protocol) (zoo_gateway_in_flight_requests{protocol=~"$protocol"})',
                                      "{{protocol}}")], "short", w=8),
        panel("Request rate per model (5m)", [('model:zoo_gateway_requests:rate5m{model=~"$model"}', "{{model}}")],
              "reqps", w=8, description="recording rule model:zoo_gateway_requests:rate5m"),
        row("Errors"),
        panel("Server error ratio (5xx) by model", [('model:zoo_gateway_request_error_ratio:rate5m{model=~"$model"}',
                                                     "{{model}}")], "percentunit", w=8,
              description="recording rule; alert ZooGatewayHighErrorRatio fires above 5% for 5m"),
        panel("Client error ratio (4xx) by model",
              [(f'(sum by (model) (rate(zoo_gateway_requests_total{{{sel}, {INFER_ROUTES}, status=~"4.."}}[{RATE}]))'
                f" or 0 * sum by (model) (rate({req}[{RATE}])))"
                f" / sum by (model) (rate({req}[{RATE}]))", "{{model}}")], "percentunit", w=8),
        panel("Backend errors / s by kind",
              [(f"sum by (backend, kind) (rate(zoo_gateway_backend_errors_total[{RATE}]))", "{{backend}} {{kind}}")],
              "reqps", w=8),
        row("Latency"),
        panel("Gateway latency per model (p50 / p95 / p99, 5m)",
              [(f'model:zoo_gateway_request_duration_seconds:p{q}_5m{{model=~"$model"}}', f"{{{{model}}}} p{q}")
               for q in (50, 95, 99)], "s", description="recording rules; alert ZooGatewayLatencyAboveSLO on p99 > 5s"),
        panel("Gateway latency per protocol (p50 / p95 / p99)",
              quantiles("zoo_gateway_request_duration_seconds", "protocol", f"{sel}, {INFER_ROUTES}"), "s"),
        panel("Backend time per model (p50 / p95 / p99)",
              quantiles("zoo_gateway_backend_duration_seconds", "model", 'model=~"$model"'), "s",
              description="time the gateway waited for the backend (TorchServe / Triton)"),
        panel("Request and response size per model (p95)",
              [(f"histogram_quantile(0.95, sum by (model, le) (rate(zoo_gateway_request_size_bytes_bucket"
                f"{{{sel}}}[{RATE}])))", "{{model}} request"),
               (f"histogram_quantile(0.95, sum by (model, le) (rate(zoo_gateway_response_size_bytes_bucket"
                f"{{{sel}}}[{RATE}])))", "{{model}} response")], "bytes"),
        row("Health"),
        panel("Scrape targets up", [('up{job=~"zoo-gateway|torchserve"}', "{{job}} {{instance}}")], "short",
              kind="stat", w=8, h=5),
        panel("Backends up (gateway's view)", [("zoo_gateway_backend_up", "{{backend}}")], "short", kind="stat",
              w=8, h=5),
        panel("Models ready", [('zoo_gateway_model_ready{model=~"$model"}', "{{model}}")], "short", kind="stat",
              w=8, h=5),
    ]
    return dashboard(
        "zoo-gateway-overview", "zoo-gateway / Overview",
        "Traffic, errors and latency quantiles of the gateway per model and protocol",
        [query_var("model", "Model", 'label_values(zoo_gateway_requests_total{model!="_unknown"}, model)'),
         query_var("protocol", "Protocol", "label_values(zoo_gateway_requests_total, protocol)")],
        panels)


def model_detail() -> dict[str, Any]:
    m = 'model=~"$model"'
    ts = 'model_name=~"$model"'
    handler = 'ModelName=~"$model"'
    panels = [
        row("Requests"),
        panel("Answers / s by protocol, route and status",
              [(f"sum by (protocol, route, status) (rate(zoo_gateway_requests_total{{{m}}}[{RATE}]))",
                "{{protocol}} {{route}} {{status}}")], "reqps"),
        panel("Gateway latency (p50 / p95 / p99, 5m)",
              [(f"model:zoo_gateway_request_duration_seconds:p{q}_5m{{{m}}}", f"{{{{model}}}} p{q}")
               for q in (50, 95, 99)], "s"),
        row("Batching (TorchServe handler)"),
        panel("Mean batch size",
              [(f"sum by (ModelName) (rate(ZooBatchSize{{{handler}}}[{RATE}]))"
                f" / sum by (ModelName) (rate(ZooBatches{{{handler}}}[{RATE}]))", "{{ModelName}}")], "short",
              description="requests decoded per handler call (ZooBatchSize / ZooBatches, from handlers/base.py)"),
        panel("Handler calls and requests / s",
              [(f"sum by (ModelName) (rate(ZooBatches{{{handler}}}[{RATE}]))", "{{ModelName}} batches"),
               (f"sum by (ModelName) (rate(ZooBatchSize{{{handler}}}[{RATE}]))", "{{ModelName}} requests"),
               (f"sum by (model_name) (rate(ts_inference_requests_total{{{ts}}}[{RATE}]))",
                "{{model_name}} TorchServe requests")], "ops"),
        row("Where the time goes"),
        panel("Per request: gateway total, backend wait, handler",
              [(f"sum by (model) (rate(zoo_gateway_request_duration_seconds_sum{{{m}, {INFER_ROUTES}}}[{RATE}]))"
                f" / sum by (model) (rate(zoo_gateway_request_duration_seconds_count{{{m}, {INFER_ROUTES}}}"
                f"[{RATE}]))", "{{model}} gateway total (mean)"),
               (f"model:zoo_gateway_backend_duration_seconds:mean5m{{{m}}}", "{{model}} backend wait (5m mean)"),
               (f"HandlerTime{{{handler}}} / 1000", "{{ModelName}} handler (last batch)"),
               (f"PredictionTime{{{handler}}} / 1000", "{{ModelName}} TorchServe predict (last batch)")], "s",
              description="backend wait minus handler time is TorchServe's queue plus transport"),
        panel("TorchServe queue time (per host)",
              [(f"avg by (instance) (avg_over_time(QueueTime[{RATE}])) / 1000", "{{instance}} last requests"),
               ("instance:torchserve_queue_time_seconds:avg5m", "{{instance}} 5m mean")], "s",
              description="TorchServe's QueueTime gauge has no model label, and its per-model queue/latency "
                          "counters count REST calls only (the gateway uses gRPC). Alert ZooQueueTimeRising "
                          "fires above 0.5 s and growing."),
        row("Workers"),
        panel("Workers by status", [(f"zoo_gateway_backend_workers{{{m}}}", "{{model}} {{status}}"),
                                    (f"zoo_gateway_backend_min_workers{{{m}}}", "{{model}} minimum")], "short",
              description="TorchServe's worker list as the gateway sees it at scrape time"),
        panel("Model ready", [(f"zoo_gateway_model_ready{{{m}}}", "{{model}}")], "short", kind="stat", w=6),
        panel("Backend up", [("zoo_gateway_backend_up", "{{backend}}")], "short", kind="stat", w=6),
    ]
    return dashboard(
        "zoo-gateway-model", "zoo-gateway / Model detail",
        "One model: answers, latency, batch sizes, queue vs inference time and workers",
        [query_var("model", "Model", 'label_values(zoo_gateway_requests_total{model!="_unknown"}, model)')],
        panels)


def streams() -> dict[str, Any]:
    m = 'model=~"$model"'
    frames = "zoo_gateway_stream_frames_total"
    panels = [
        row("Streams"),
        panel("Active streams", [(f"sum by (model) (zoo_gateway_streams_active{{{m}}})", "{{model}}")], "short"),
        panel("Frames / s by outcome",
              [(f"sum by (model, outcome) (rate({frames}{{{m}}}[{RATE}]))", "{{model}} {{outcome}}")], "fps"),
        panel("Dropped frame ratio",
              [(f'sum by (model) (rate({frames}{{{m}, outcome="dropped"}}[{RATE}]))'
                f' / sum by (model) (rate({frames}{{{m}, outcome="received"}}[{RATE}]))', "{{model}}")],
              "percentunit"),
        panel("Frame latency (p50 / p95 / p99)",
              quantiles("zoo_gateway_stream_frame_latency_seconds", "model", m), "s"),
        panel("Forecast horizon (p50 / p95, frames)",
              quantiles("zoo_gateway_stream_forecast_horizon_frames", "model", m, (0.5, 0.95)), "short"),
    ]
    return dashboard(
        "zoo-gateway-streams", "zoo-gateway / Streams",
        "Streaming inference: active streams, frames received/processed/dropped, frame latency, forecast horizon "
        "(metric contract in docs/observability.md)",
        [query_var("model", "Model", "label_values(zoo_gateway_streams_active, model)")],
        panels)


def gpu() -> dict[str, Any]:
    g = 'gpu=~"$gpu"'
    panels = [
        row("GPUs (NVML on the gateway host)"),
        panel("GPUs available", [("zoo_gateway_gpu_available", "{{instance}}")], "short", kind="stat", w=6, h=5,
              description="0 on a CPU-only host: the panels below stay empty there"),
        panel("GPU memory in use", [(f"zoo_gateway_gpu_memory_used_bytes{{{g}}} / zoo_gateway_gpu_memory_total_bytes"
                                     f"{{{g}}}", "GPU {{gpu}}")], "percentunit", kind="stat", w=18, h=5,
              description="alert ZooGpuMemoryNearFull fires above 95% for 5m"),
        panel("GPU utilisation", [(f"zoo_gateway_gpu_utilization_ratio{{{g}}}", "GPU {{gpu}} {{name}}")],
              "percentunit", min=0, max=1),
        panel("GPU memory", [(f"zoo_gateway_gpu_memory_used_bytes{{{g}}}", "GPU {{gpu}} used"),
                             (f"zoo_gateway_gpu_memory_total_bytes{{{g}}}", "GPU {{gpu}} total")], "bytes"),
        row("Host (TorchServe system metrics)"),
        panel("Host CPU utilisation", [("CPUUtilization", "{{Hostname}}")], "percent", w=8),
        panel("Host memory utilisation", [("MemoryUtilization", "{{Hostname}}")], "percent", w=8),
        panel("Host memory used", [("MemoryUsed", "{{Hostname}}")], "decmbytes", w=8),
    ]
    return dashboard(
        "zoo-gateway-gpu", "zoo-gateway / GPU",
        "GPU utilisation and memory per device (NVML, exported by the gateway) and host load (TorchServe)",
        [query_var("gpu", "GPU", "label_values(zoo_gateway_gpu_memory_total_bytes, gpu)")],
        panels)


DASHBOARDS = {"overview.json": overview, "model.json": model_detail, "streams.json": streams, "gpu.json": gpu}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    args = p.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
