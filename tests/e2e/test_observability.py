"""Observability end to end: the Prometheus config, rules and alerts in deploy/prometheus and the Grafana
dashboards in deploy/grafana, checked by promtool and evaluated by a real Prometheus that scrapes a real
gateway and TorchServe (`zoo serve toy_echo toy_detect --with-prometheus`, 1 s scrapes) after a bounded
mixed load (REST, gRPC, client errors, deadline misses, one WebSocket stream on the test-only detector).
API keys are on, as in production: Prometheus scrapes the gateway with a key of its own
(`--metrics-key-file`, a key allowed no model), so the per-model series every dashboard reads reach it.

Every dashboard query runs as a range query over the load, its template variables set to the values their
own queries return, and must draw data. Exemptions, each reported as a warning:
- GPU panels, on a host where the gateway reports `zoo_gateway_gpu_available 0` (no NVIDIA driver).
- Streams panels, only while a metric of the streams contract (docs/observability.md) is not declared by the
  gateway (all four are declared in serving/metrics.py now, so they are enforced).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cli.prometheus import DEPLOY_DIR, find_binary, render_config
from cli.torchserve import free_port

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = [DEPLOY_DIR / "rules" / "recording.yml", DEPLOY_DIR / "rules" / "alerts.yml"]
RULE_TESTS = sorted((DEPLOY_DIR / "tests").glob("*.yml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
PROMTOOL = find_binary("promtool")
PROMETHEUS = find_binary("prometheus")
INSTALL = "install the Debian package `prometheus` (`make test` does when run as root)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool not found: {INSTALL}")

DS = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval becomes here (>= 4 scrapes of 1 s)
STREAM_METRICS = ("zoo_gateway_streams_active", "zoo_gateway_stream_frames_total",
                  "zoo_gateway_stream_forecast_horizon_frames", "zoo_gateway_stream_frame_latency_seconds")
LOAD_KEY = "observability-load-key"  # the load's key: every model
SCRAPE_KEY = "observability-scrape-key"  # Prometheus's key: no model, so it can scrape but not infer
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "NO_COLOR": "1"})


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, matchers, label lists and ranges removed)."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    names = set()
    for m in re.finditer(r"(?<![0-9.\w])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue  # a function call or a keyword
        names.add(m.group(0))
    return names


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def declared_by_gateway() -> set[str]:
    """Metric names the gateway declares: its registry's families, or a quoted name anywhere in serving/."""
    from serving.metrics import GatewayMetrics

    names = set()
    for family in GatewayMetrics().registry.collect():
        names.add(family.name)
        names.add(family.name + "_total")
    sources = "\n".join(p.read_text() for p in (REPO / "serving").rglob("*.py"))
    names.update(n for n in STREAM_METRICS if f'"{n}"' in sources or f'"{n.removesuffix("_total")}"' in sources)
    return names


# --- promtool: config, rules, unit tests ---------------------------------------------------------------------
@needs_promtool
def test_promtool_checks_shipped_and_rendered_config(tmp_path: Path) -> None:
    shipped = promtool("check", "config", str(DEPLOY_DIR / "prometheus.yml"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    rendered = render_config(tmp_path, "127.0.0.1:18080", "127.0.0.1:18082", scrape_interval="1s")
    checked = promtool("check", "config", str(rendered))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doc = yaml.safe_load(rendered.read_text())
    assert doc["global"]["scrape_interval"] == doc["global"]["scrape_timeout"] == "1s"
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]} == {
        "zoo-gateway": ["127.0.0.1:18080"], "torchserve": ["127.0.0.1:18082"]}
    assert all(Path(r).is_absolute() and Path(r).exists() for r in doc["rule_files"])
    # TorchServe only (`zoo serve --no-gateway`)
    only_ts = yaml.safe_load(render_config(tmp_path, None, "127.0.0.1:18082").read_text())
    assert [j["job_name"] for j in only_ts["scrape_configs"]] == ["torchserve"]
    # with keys on, the gateway job sends a key read from a file; the config names the file only
    key_file = tmp_path / "scrape.key"
    key_file.write_text(SCRAPE_KEY + "\n")
    with_key = render_config(tmp_path / "keyed", "127.0.0.1:18080", "127.0.0.1:18082", gateway_key_file=key_file)
    checked = promtool("check", "config", str(with_key))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(with_key.read_text())["scrape_configs"]}
    assert jobs["zoo-gateway"]["authorization"] == {"type": "Bearer", "credentials_file": str(key_file.resolve())}
    assert "authorization" not in jobs["torchserve"] and SCRAPE_KEY not in with_key.read_text()


def test_zoo_serve_knows_when_an_anonymous_scrape_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What decides `zoo serve`'s note that Prometheus needs --metrics-key-file: keys on, metrics not `full`."""
    from cli.commands.serve import anonymous_scrapes_redacted

    monkeypatch.setenv("ZOO_API_KEYS", "")
    monkeypatch.setenv("ZOO_API_KEYS_FILE", "")
    keys = {"auth": {"keys": [{"key": LOAD_KEY, "models": ["*"]}]}}
    for name, doc, redacted in (("no-keys", {}, False), ("keys", keys, True),
                                ("keys-full", {**keys, "server": {"metrics_anonymous": "full"}}, False)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert anonymous_scrapes_redacted(str(path)) is redacted, name
    monkeypatch.setenv("ZOO_API_KEYS", f"{LOAD_KEY}=*")
    assert anonymous_scrapes_redacted(None)


def test_metrics_key_file_is_checked_without_echoing_the_key(tmp_path: Path) -> None:
    from cli.prometheus import PrometheusError, check_key_file

    good = tmp_path / "good.key"
    good.write_text(f"  {SCRAPE_KEY}\n")
    assert check_key_file(good) == good.resolve()
    for name, text in (("empty.key", "\n"), ("two.key", f"{SCRAPE_KEY}\nsecond-key\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(PrometheusError, match="exactly one API key") as err:
            check_key_file(tmp_path / name)
        assert SCRAPE_KEY not in str(err.value)
    with pytest.raises(PrometheusError, match="cannot be read"):
        check_key_file(tmp_path / "missing.key")


@needs_promtool
def test_promtool_check_rules() -> None:
    checked = promtool("check", "rules", *map(str, RULE_FILES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_annotations_runbook_and_unit_test() -> None:
    anchors = github_anchors(RUNBOOKS.read_text())
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested.update(t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts"))
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 6
    for alert in alerts:
        name = alert["alert"]
        notes = alert.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(notes), f"{name}: annotations {sorted(notes)}"
        assert alert.get("labels", {}).get("severity") in {"critical", "warning"}, name
        doc, _, anchor = notes["runbook"].partition("#")
        assert doc == "docs/runbooks.md" and anchor == name.lower() and anchor in anchors, f"{name}: runbook"
        assert name in tested, f"{name} has no firing case in deploy/prometheus/tests"


# --- dashboards: generated, sane layout, one datasource variable -----------------------------------------------
def test_dashboards_are_the_generator_output() -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "generate_dashboards.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in DASHBOARDS} == {"overview.json", "model.json", "streams.json", "gpu.json"}


def test_dashboard_schema() -> None:
    uids = set()
    for name, dash in load_dashboards().items():
        assert dash["uid"] not in uids and dash["title"] and dash["schemaVersion"] >= 36, name
        uids.add(dash["uid"])
        variables = dash["templating"]["list"]
        ds_vars = [v for v in variables if v["type"] == "datasource"]
        assert len(ds_vars) == 1 and ds_vars[0]["name"] == "datasource" and ds_vars[0]["query"] == "prometheus"
        defined = {v["name"] for v in variables} | GRAFANA_BUILTINS
        for var in variables:
            if var["type"] == "query":
                assert var["datasource"] == DS, f"{name}: variable {var['name']}"
        panels = all_panels(dash)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        boxes = []
        for p in panels:
            g = p["gridPos"]
            assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), f"{name}: {p['title']}"
            assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1 and g["x"] + g["w"] <= 24, \
                f"{name}: {p['title']} gridPos {g}"
            boxes.append((g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"], p["title"]))
            if p["type"] == "row":
                continue
            assert p["datasource"] == DS, f"{name}: {p['title']} datasource {p['datasource']}"
            assert p["targets"], f"{name}: {p['title']} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), f"{name}: {p['title']} refIds"
            for t in p["targets"]:
                assert t["datasource"] == DS and t["expr"].strip(), f"{name}: {p['title']}"
                used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
                assert used <= defined, f"{name}: {p['title']} uses undefined {used - defined}"
        for i, a in enumerate(boxes):  # no two panels overlap on the grid
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"{name}: {a[4]} / {b[4]}"


def test_grafana_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/zoo-prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and [d["type"] for d in ds["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/zoo-gateway.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]


def test_streams_contract_is_documented() -> None:
    streams = load_dashboards()["streams.json"]
    exprs = " ".join(t["expr"] for p in all_panels(streams) for t in p.get("targets", []))
    doc = (REPO / "docs" / "observability.md").read_text()
    for name in STREAM_METRICS:
        assert name.removesuffix("_total") in exprs and name in doc, name


def test_local_prometheus_is_ready_once_every_target_was_scraped(tmp_path: Path) -> None:
    """`start_local` returns only after the first scrape of each job (Prometheus applies new targets on a
    5 s tick, and traffic before that went unrecorded); a target that is down counts as scraped (up == 0),
    so a dead backend is reported by the alerts instead of hanging start-up."""
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip(f"prometheus/promtool not found: {INSTALL}")
    from cli.prometheus import start_local

    server = start_local(tmp_path, None, f"127.0.0.1:{free_port()}", scrape_interval="1s")
    try:
        up = server.api("query", {"query": "up"})["data"]["result"]
        assert [(r["metric"]["job"], r["value"][1]) for r in up] == [("torchserve", "0")]
    finally:
        server.stop()


# --- zoo serve --with-prometheus: refusals before anything starts ---------------------------------------------
def test_zoo_serve_without_prometheus_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Prometheus is installed here, so its absence is simulated by hiding the binary from the lookup."""
    import cli.prometheus
    from cli.main import main

    monkeypatch.setattr(cli.prometheus, "find_binary", lambda name="prometheus": None)
    code = main(["serve", "toy_echo", "--random-weights", "--with-prometheus", "--store", str(tmp_path / "store"),
                 "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 2 and "Prometheus is not installed" in out and "apt-get install prometheus" in out
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()  # nothing was started


def test_zoo_serve_refuses_a_bad_scrape_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if PROMETHEUS is None:
        pytest.skip(f"prometheus not found: {INSTALL}")
    from cli.main import main

    code = main(["serve", "toy_echo", "--random-weights", "--with-prometheus", "--prometheus-scrape-interval",
                 "soon", "--store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "run")])
    assert code == 1 and "not a Prometheus duration: 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


# --- gateway collectors ------------------------------------------------------------------------------------------
def scrape(collector: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_gpu_collector_on_this_host() -> None:
    from serving.gpu_metrics import GpuCollector

    collector = GpuCollector()
    got = scrape(collector)
    available = got["zoo_gateway_gpu_available"][0][1]
    devices = got.get("zoo_gateway_gpu_memory_total_bytes", [])
    if available == 0:  # CPU-only: clean degrade, the reason is kept for the log
        assert devices == [] and got.get("zoo_gateway_gpu_utilization_ratio", []) == []
        assert collector.unavailable_reason
    else:
        assert devices and all(v > 0 for _, v in devices)
    assert scrape(collector)["zoo_gateway_gpu_available"][0][1] == available  # stable across scrapes


class StandInNvml:
    """The part of NVML's Python API the collector calls, answering like a host with two GPUs, the second of
    which cannot report utilisation (as on MIG slices). This machine has no GPU to read for real."""

    class NVMLError(Exception):
        pass

    def __init__(self, init_error: Exception | None = None) -> None:
        self.init_error = init_error

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes | str:
        return b"NVIDIA H100 80GB HBM3" if handle == 0 else "NVIDIA A10"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30, free=0)


def test_gpu_collector_series_per_device() -> None:
    from serving.gpu_metrics import GpuCollector

    got = scrape(GpuCollector(StandInNvml()))
    assert got["zoo_gateway_gpu_available"] == [({}, 1.0)]
    assert got["zoo_gateway_gpu_utilization_ratio"] == [
        ({"gpu": "0", "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0"}, 0.37)]
    assert [(s["gpu"], s["name"], v) for s, v in got["zoo_gateway_gpu_memory_used_bytes"]] == [
        ("0", "NVIDIA H100 80GB HBM3", 2.0**30), ("1", "NVIDIA A10", 2.0**31)]
    assert [v for _, v in got["zoo_gateway_gpu_memory_total_bytes"]] == [80.0 * 2**30] * 2
    down = scrape(GpuCollector(StandInNvml(init_error=OSError("NVML Shared Library Not Found"))))
    assert down["zoo_gateway_gpu_available"] == [({}, 0.0)] and down["zoo_gateway_gpu_memory_used_bytes"] == []


def test_backend_gauges_when_torchserve_is_down() -> None:
    """A TorchServe that is not running (nothing listens on its ports): backend down, models not ready, no
    READY worker, within the collector's time bound."""
    from serving.app import make_backend
    from serving.backend_metrics import BackendStateCollector
    from serving.config import BackendConfig, load_config
    from serving.dataplane import DataPlane
    from serving.metrics import GatewayMetrics

    spec = BackendConfig("torchserve", "torchserve", {"grpc": f"127.0.0.1:{free_port()}",
                                                      "management": f"http://127.0.0.1:{free_port()}"})
    config = load_config(None, {"torchserve": spec})
    config = config.with_routes([config.route("toy_echo"), config.route("toy_alias", model="toy_echo")])
    backends = {"torchserve": make_backend(spec, config)}
    collector = BackendStateCollector(DataPlane(config, backends, GatewayMetrics()), timeout_s=1.0)

    async def refresh() -> float:
        await backends["torchserve"].start()
        started = time.monotonic()
        try:
            await collector.refresh()
        finally:
            await backends["torchserve"].close()
        return time.monotonic() - started

    assert asyncio.run(refresh()) < 5.0
    got = scrape(collector)
    assert got["zoo_gateway_backend_up"] == [({"backend": "torchserve"}, 0.0)]
    assert sorted((s["model"], v) for s, v in got["zoo_gateway_model_ready"]) == [("toy_alias", 0.0),
                                                                                  ("toy_echo", 0.0)]
    assert sorted((s["model"], s["status"], v) for s, v in got["zoo_gateway_backend_workers"]) == [
        ("toy_alias", "READY", 0.0), ("toy_echo", "READY", 0.0)]


# --- live: zoo serve --with-prometheus, load, every query ----------------------------------------------------
def prom_api(url: str, path: str, params: dict[str, Any] | list[tuple[str, str]] | None = None) -> dict[str, Any]:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=15) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read() or b"{}")


def has_data(result: list[dict[str, Any]]) -> bool:
    """Some series has a finite value (a panel would draw something)."""
    for series in result:
        values = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip(f"prometheus/promtool not found: {INSTALL}")
    work = tmp_path_factory.mktemp("observability")
    gateway_config = work / "gateway.yaml"
    gateway_config.write_text(yaml.safe_dump({"models": {
        "toy_echo": {}, "toy_slow": {"model": "toy_echo", "deadline_s": 0.3}, "toy_detect": {}},
        "auth": {"keys": [{"key": LOAD_KEY, "name": "load", "models": ["*"]},
                          {"key": SCRAPE_KEY, "name": "prometheus", "models": []}]}}))
    scrape_key = work / "scrape.key"
    scrape_key.write_text(SCRAPE_KEY + "\n")
    prom_port = free_port()
    cmd = [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())", "serve", "toy_echo",
           "toy_detect", "--random-weights", "--store", str(work / "store"), "--run-dir", str(work / "run"),
           "--http-port", "0", "--grpc-port", "0", "--gateway-config", str(gateway_config),
           "--with-prometheus", "--prometheus-port", str(prom_port), "--prometheus-scrape-interval", "1s",
           "--metrics-key-file", str(scrape_key), "--ready-timeout", "240"]
    env = {**os.environ, "ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("press Ctrl-C to stop" in ln for ln in lines):
            assert proc.poll() is None, f"zoo serve exited with {proc.returncode}:\n{''.join(lines[-40:])}"
            assert time.monotonic() < deadline, f"zoo serve not ready after 300s:\n{''.join(lines[-40:])}"
            time.sleep(0.2)
        text = "".join(lines)
        handle = SimpleNamespace(
            proc=proc, lines=lines, prom_port=prom_port, run_dir=work / "run",
            gateway=re.search(r"gateway REST .*: (http://\S+)", text).group(1),
            grpc=re.search(r"gateway gRPC .*: (\S+)", text).group(1),
            prometheus=re.search(r"Prometheus .*: (http://\S+)", text).group(1))
        assert handle.prometheus == f"http://127.0.0.1:{prom_port}"
        # "ready" promises both targets were scraped once already, so the load's first requests count
        up = prom_api(handle.prometheus, "query", {"query": "up"})["data"]["result"]
        assert {r["metric"]["job"] for r in up} == {"zoo-gateway", "torchserve"}, up
        handle.load_window = send_load(handle)
        wait_for_rules(handle.prometheus)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def send_load(served: Any) -> tuple[float, float]:
    """A bounded mix over ~8 s: task route and OIP infer over REST, OIP infer over gRPC, client errors (400)
    on both protocols, deadline misses (504) on the `toy_slow` route, and one WebSocket stream session on
    the test-only detector `toy_detect`. Returns (start, end) unix times."""
    import numpy as np
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp
    from PIL import Image
    from tritonclient.utils import InferenceServerException

    from tests.support import http_request

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, "PNG")
    png = buf.getvalue()
    http = thttp.InferenceServerClient(served.gateway.removeprefix("http://"))
    grpc_client = tgrpc.InferenceServerClient(served.grpc)

    def image(module: Any, data: bytes) -> Any:
        tensor = module.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        return tensor

    auth = {"Authorization": f"Bearer {LOAD_KEY}"}
    grpc_auth = {"authorization": f"Bearer {LOAD_KEY}"}  # gRPC metadata keys are lower case
    png_headers = {**auth, "Content-Type": "image/png"}
    started = time.time()
    for _ in range(3):
        for _ in range(4):
            status, _, body = http_request(f"{served.gateway}/v1/models/toy_echo:predict", png, png_headers,
                                           "POST", timeout=30)
            assert status == 200, body
        assert http.infer("toy_echo", [image(thttp, png)], headers=auth).as_numpy("width").tolist() == [[16]]
        answer = grpc_client.infer("toy_echo", [image(tgrpc, png)], headers=grpc_auth)
        assert answer.as_numpy("width").tolist() == [[16]]
        status, _, _ = http_request(f"{served.gateway}/v1/models/toy_echo:predict", b"not an image", png_headers,
                                    "POST", timeout=30)
        assert status == 400
        with pytest.raises(InferenceServerException):
            grpc_client.infer("toy_echo", [image(tgrpc, b"not an image")], headers=grpc_auth)
        status, _, _ = http_request(f"{served.gateway}/v1/models/toy_slow:predict?sleep_ms=400", png, png_headers,
                                    "POST", timeout=30)
        assert status == 504
        time.sleep(1.5)
    with pytest.raises(InferenceServerException):
        grpc_client.infer("toy_slow", [image(tgrpc, png)], parameters={"sleep_ms": 400}, headers=grpc_auth)
    # the slept requests drain, then one more of each so the last scrapes see the worker idle again
    time.sleep(1.0)
    assert grpc_client.infer("toy_echo", [image(tgrpc, png)], headers=grpc_auth).as_numpy("width").tolist() == [[16]]
    answers, sent = asyncio.run(stream_frames(served.gateway))
    assert [a["index"] for a in answers] == list(range(sent)), answers[-3:]  # each frame once, in order
    assert sum(a["computed_from_frame"] >= 0 for a in answers) >= 3, answers[-3:]
    return started, time.time()


def frame_png(index: int) -> bytes:
    """A dark 64x48 frame with a bright 8x8 square moving 2 px per frame (what toy_detect finds)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), (20, 20, 20))
    x = 4 + 2 * (index % 24)
    ImageDraw.Draw(image).rectangle((x, 20, x + 7, 27), fill=(250, 250, 250))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


async def stream_frames(gateway: str, max_frames: int = 60, timeout_s: float = 60.0) -> tuple[list[dict], int]:
    """One WebSocket stream session on `toy_detect`: idle for 2 scrapes first (its series start at 0, so
    rates see every frame), then pairs of frames back to back (some wait or drop) for >= 3 s and until at
    least 3 answers carry a detector output. Returns (answers, frames sent)."""
    import base64

    import aiohttp

    answers: list[dict] = []
    url = gateway.replace("http://", "ws://") + "/v1/streams/toy_detect?fps=10"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {LOAD_KEY}"}) as ws:
            async def read() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        answers.append(json.loads(msg.data))

            reader = asyncio.create_task(read())
            await asyncio.sleep(2.5)
            sent, until = 0, time.monotonic() + 3.0
            while sent < max_frames and (time.monotonic() < until
                                         or sum(a.get("computed_from_frame", -1) >= 0 for a in answers) < 3):
                for _ in range(2):
                    await ws.send_str(json.dumps({"index": sent, "capture_time_s": sent / 10,
                                                  "image": base64.b64encode(frame_png(sent)).decode()}))
                    sent += 1
                await asyncio.sleep(0.2)
            await ws.send_str(json.dumps({"end": True}))
            await asyncio.wait_for(reader, timeout_s)
    assert all("error" not in a or not a["error"] for a in answers), answers
    return answers, sent


def wait_for_rules(prometheus: str, timeout_s: float = 90.0) -> None:
    """Until the recording rules and TorchServe's handler metrics have data from the load (bounded)."""
    wanted = ['model:zoo_gateway_request_error_ratio:rate5m{model="toy_slow"}',
              'model:zoo_gateway_request_duration_seconds:p99_5m{model="toy_echo"}',
              'model:zoo_gateway_backend_duration_seconds:mean5m{model="toy_echo"}',
              "instance:torchserve_queue_time_seconds:avg5m", "rate(ZooBatches[15s])",
              "histogram_quantile(0.5, sum by (le) (rate(zoo_gateway_stream_forecast_horizon_frames_bucket[15s])))",
              "histogram_quantile(0.5, sum by (le) (rate(zoo_gateway_stream_frame_latency_seconds_bucket[15s])))"]
    deadline = time.monotonic() + timeout_s
    missing = wanted
    while time.monotonic() < deadline:
        missing = [q for q in wanted if not has_data(prom_api(prometheus, "query", {"query": q})
                                                     .get("data", {}).get("result", []))]
        if not missing:
            return
        time.sleep(1.0)
    raise AssertionError(f"no data after {timeout_s:.0f}s for {missing}")


def variable_values(prometheus: str, query: str, window: tuple[float, float]) -> list[str]:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, f"unsupported variable query {query!r}"
    selector, label = match.groups()
    doc = prom_api(prometheus, "series", [("match[]", selector), ("start", str(window[0] - 60)),
                                          ("end", str(time.time()))])
    assert doc.get("status") == "success", doc
    return sorted({s[label] for s in doc["data"] if label in s})


def substitute(expr: str, values: dict[str, str]) -> str:
    out = expr.replace("$__rate_interval", RATE_INTERVAL).replace("${__rate_interval}", RATE_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        out = out.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


@pytest.mark.integration
def test_live_targets_up_and_rules_healthy(served: Any) -> None:
    targets = prom_api(served.prometheus, "targets")["data"]["activeTargets"]
    assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [("torchserve", "up"),
                                                                          ("zoo-gateway", "up")], targets
    groups = prom_api(served.prometheus, "rules")["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    shipped = {r.get("record") or r["alert"] for r in rules()}
    assert set(loaded) == shipped
    bad = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok" or r.get("lastError")}
    assert not bad, bad


@pytest.mark.integration
def test_live_every_rule_expression_evaluates(served: Any) -> None:
    exported = set(prom_api(served.prometheus, "label/__name__/values")["data"])
    gpu = gpu_available(served)
    failures = []
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        doc = prom_api(served.prometheus, "query", {"query": rule["expr"]})
        if doc.get("status") != "success":
            failures.append(f"{name}: {doc.get('error')}")
            continue
        missing = {m for m in metric_names(rule["expr"]) - exported
                   if gpu or not m.startswith("zoo_gateway_gpu_")}
        if missing:
            failures.append(f"{name} reads series nothing exports: {sorted(missing)}")
        if "record" in rule and not has_data(doc["data"]["result"]):
            failures.append(f"recording rule {name} has no data after the load")
    assert not failures, "\n".join(failures)


@pytest.mark.integration
def test_live_error_ratio_alert_pending_for_the_route_that_timed_out(served: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        alerts = prom_api(served.prometheus, "alerts")["data"]["alerts"]
        slow = [a for a in alerts if a["labels"]["alertname"] == "ZooGatewayHighErrorRatio"
                and a["labels"].get("model") == "toy_slow"]
        if slow or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert [a["state"] for a in slow] == ["pending"], alerts  # `for: 5m` has not passed
    assert slow[0]["annotations"]["runbook"] == "docs/runbooks.md#zoogatewayhigherrorratio"
    assert not [a for a in alerts if a["labels"].get("model") == "toy_echo"], alerts


def gpu_available(served: Any) -> bool:
    result = prom_api(served.prometheus, "query", {"query": "max(zoo_gateway_gpu_available)"})["data"]["result"]
    assert result, "the gateway exports no zoo_gateway_gpu_available"
    return float(result[0]["value"][1]) > 0


@pytest.mark.integration
def test_live_every_dashboard_query_returns_data(served: Any) -> None:
    declared = declared_by_gateway()
    undeclared_streams = [n for n in STREAM_METRICS if n not in declared]
    gpu = gpu_available(served)

    def exemption(expr: str) -> str | None:
        streams = [n for n in undeclared_streams if n.removesuffix("_total") in expr]
        if streams:
            return f"streams metrics not declared by the gateway yet: {', '.join(streams)}"
        if not gpu and re.search(r"zoo_gateway_gpu_(?!available)", expr):
            return "no GPU on this host (zoo_gateway_gpu_available is 0)"
        return None

    start, end = served.load_window
    failures, exempt, checked = [], [], 0
    for name, dash in load_dashboards().items():
        values: dict[str, str] = {}
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found = variable_values(served.prometheus, query, served.load_window)
            reason = exemption(query)
            if not found:
                if reason is None:
                    failures.append(f"{name}: variable ${var['name']} ({query}) has no values")
                else:
                    exempt.append(f"{name}: variable ${var['name']}: {reason}")
            # Grafana's multi-value format for Prometheus: a regex alternation (or the All value when empty)
            values[var["name"]] = f"({'|'.join(re.escape(v) for v in found)})" if found else ".*"
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                expr = substitute(target["expr"], values)
                doc = prom_api(served.prometheus, "query_range", {
                    "query": expr, "start": f"{start - 5:.3f}", "end": f"{time.time():.3f}", "step": "1"})
                checked += 1
                if doc.get("status") != "success":
                    failures.append(f"{name} / {panel['title']}: {doc.get('error')}\n    {expr}")
                    continue
                reason = exemption(target["expr"])
                if has_data(doc["data"]["result"]):
                    continue
                if reason is None:
                    failures.append(f"{name} / {panel['title']}: no data\n    {expr}")
                else:
                    exempt.append(f"{name} / {panel['title']}: {reason}")
    for line in exempt:
        warnings.warn(f"dashboard check exempt: {line}", stacklevel=1)
    hint = ("" if undeclared_streams else "\n(streams metrics are declared: send_load must open a stream so "
            "the Streams dashboard has data)")
    assert not failures, "\n".join(failures) + hint
    assert checked >= 40


@pytest.mark.integration
def test_live_gateway_exports_worker_and_gpu_gauges(served: Any) -> None:
    def value(query: str) -> list[tuple[dict[str, str], float]]:
        result = prom_api(served.prometheus, "query", {"query": query})["data"]["result"]
        return [(r["metric"], float(r["value"][1])) for r in result]

    routes = {"toy_echo": 1.0, "toy_slow": 1.0, "toy_detect": 1.0}
    assert {m["model"]: v for m, v in value('zoo_gateway_backend_workers{status="READY"}')} == routes
    assert {m["model"]: v for m, v in value("zoo_gateway_model_ready")} == routes
    assert value("zoo_gateway_backend_up")[0][1] == 1.0
    # the handler's batch metrics reach Prometheus (auto-detected custom metrics); one request per batch
    (_, mean_batch), = value('sum(increase(ZooBatchSize{ModelName="toy_echo"}[5m])) '
                             '/ sum(increase(ZooBatches{ModelName="toy_echo"}[5m]))')
    assert 0.5 < mean_batch <= 1.0  # toy_echo batch_size=1; a bad request is a batch that decodes none


@pytest.mark.integration
def test_live_per_model_series_reach_prometheus_with_keys_on(served: Any) -> None:
    """Keys are on, so an anonymous scrape of the gateway is redacted; Prometheus scrapes with its own key
    from a file, so it has the per-model series; neither its config nor `zoo serve`'s output holds the key."""
    from tests.support import http_request

    anonymous = http_request(f"{served.gateway}/metrics", timeout=30)[2].decode()
    assert "zoo_gateway_in_flight_requests{" in anonymous and 'model="toy_echo"' not in anonymous
    assert http_request(f"{served.gateway}/v1/models/toy_echo:predict", b"x",
                        {"Authorization": f"Bearer {SCRAPE_KEY}"}, "POST", timeout=30)[0] == 403
    result = prom_api(served.prometheus, "query", {"query": 'sum by (model) (zoo_gateway_requests_total'
                                                             '{job="zoo-gateway", route="predict"})'})
    assert {"toy_echo", "toy_slow"} <= {r["metric"].get("model") for r in result["data"]["result"]}, result
    rendered = (served.run_dir / "prometheus" / "prometheus.yml").read_text()
    job = next(j for j in yaml.safe_load(rendered)["scrape_configs"] if j["job_name"] == "zoo-gateway")
    assert job["authorization"]["type"] == "Bearer" and Path(job["authorization"]["credentials_file"]).is_file()
    assert SCRAPE_KEY not in rendered and SCRAPE_KEY not in "".join(served.lines)


@pytest.mark.integration
def test_zoo_serve_ctrl_c_stops_prometheus(served: Any) -> None:
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=60) == 0, "".join(served.lines[-30:])
    assert "stopped" in "".join(served.lines[-5:])
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{served.prometheus}/-/ready", timeout=2)
