"""A local Prometheus over the gateway and TorchServe: the repo's config rendered with the real ports, run on
loopback. Used by `zoo serve --with-prometheus` and by tests/e2e/test_observability.py, so the config, rules
and dashboards that ship in deploy/ are the ones that get exercised.

Prometheus itself is Debian's package (`apt-get install prometheus`: /usr/bin/prometheus and promtool);
`find_binary` says when it is missing so callers can explain instead of failing on a missing file.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cli.process import stop_process
from cli.torchserve import LOOPBACK, free_port

# deploy/prometheus is the one source of truth. A wheel carries a copy of its config and rules as package data
# (cli/deploy/prometheus, copied at build time by setup.py); a checkout or an editable install reads deploy/.
PACKAGED_DEPLOY_DIR = Path(__file__).resolve().parent / "deploy" / "prometheus"
CHECKOUT_DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
DEPLOY_DIR = PACKAGED_DEPLOY_DIR if PACKAGED_DEPLOY_DIR.is_dir() else CHECKOUT_DEPLOY_DIR
CONFIG_TEMPLATE = DEPLOY_DIR / "prometheus.yml"
GATEWAY_JOB = "zoo-gateway"
TORCHSERVE_JOB = "torchserve"
TRITON_JOB = "triton"  # nv_inference_* counters and durations per model, Triton's CPU/GPU gauges
INSTALL_HINT = "install Debian's package (`apt-get install prometheus`) or put `prometheus` and `promtool` on PATH"


class PrometheusError(RuntimeError):
    pass


def check_key_file(path: str | Path) -> Path:
    """`path` as the absolute file of one API key for the gateway scrape job; PrometheusError (naming the
    file, never its content) when it is missing, empty or holds more than one line."""
    path = Path(path).expanduser().resolve()
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PrometheusError(f"metrics key file {path}: cannot be read ({type(exc).__name__})") from None
    if len(lines) != 1 or not lines[0].strip():
        raise PrometheusError(f"metrics key file {path}: must hold exactly one API key on one line")
    return path


def find_binary(name: str = "prometheus") -> str | None:
    """`prometheus` / `promtool` from PATH, else Debian's /usr/bin location; None when not installed."""
    found = shutil.which(name)
    if found:
        return found
    debian = Path("/usr/bin") / name
    return str(debian) if debian.exists() else None


def parse_duration(duration: str) -> float:
    """Seconds in a Prometheus duration such as ``15s``, ``1m``, ``500ms`` (ValueError otherwise)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].replace(".", "", 1).isdigit():
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(f"not a Prometheus duration: {duration!r} (e.g. 15s, 1m)")


def render_config(out_dir: str | Path, gateway_target: str | None, torchserve_target: str | None,
                  scrape_interval: str = "15s", triton_target: str | None = None,
                  gateway_key_file: str | Path | None = None) -> Path:
    """deploy/prometheus/prometheus.yml with these targets (host:port; None drops the job), this scrape and
    rule-evaluation interval, and absolute rule paths; with `triton_target`, a ``triton`` job scraping Triton's
    own /metrics (`zoo serve --engine triton`). With `gateway_key_file` (a file holding one gateway API key),
    the gateway job sends that key as a Bearer token, read by Prometheus from the file at each scrape: with keys
    on, an anonymous scrape gets no per-model series. The config names the file, never the key. Returns the
    written file."""
    parse_duration(scrape_interval)
    config = yaml.safe_load(CONFIG_TEMPLATE.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    if parse_duration(scrape_interval) < parse_duration(config["global"].get("scrape_timeout", "10s")):
        config["global"]["scrape_timeout"] = scrape_interval  # must not exceed the interval
    config["rule_files"] = [str((DEPLOY_DIR / rule).resolve()) for rule in config.get("rule_files", [])]
    targets = {GATEWAY_JOB: gateway_target, TORCHSERVE_JOB: torchserve_target}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            if targets[job["job_name"]] is None:
                continue
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            if job["job_name"] == GATEWAY_JOB and gateway_key_file is not None:
                job["authorization"] = {"type": "Bearer",
                                        "credentials_file": str(Path(gateway_key_file).resolve())}
        jobs.append(job)
    if triton_target is not None:
        jobs.append({"job_name": TRITON_JOB, "metrics_path": "/metrics",
                     "static_configs": [{"targets": [triton_target]}]})
    config["scrape_configs"] = jobs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prometheus.yml"
    path.write_text("# rendered from deploy/prometheus/prometheus.yml by cli/prometheus.py\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    """A Prometheus server subprocess on loopback; `stop()` also runs at interpreter exit."""

    def __init__(self, config_path: str | Path, data_dir: str | Path, port: int | None = None,
                 binary: str | None = None, retention: str = "2d") -> None:
        self.config_path = Path(config_path).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.binary = binary or find_binary("prometheus")
        self.retention = retention
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Prometheus:
        if self.binary is None:
            raise PrometheusError(f"Prometheus is not installed: {INSTALL_HINT}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
               f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address={LOOPBACK}:{self.port}",
               "--log.level=warn"]
        self._log = open(self.data_dir / "prometheus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.data_dir, stdout=self._log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        return self

    def log_tail(self, n: int = 30) -> str:
        path = self.data_dir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def _poll(self, done: Callable[[], bool], failure: Callable[[], str], timeout_s: float) -> None:
        """Until `done()` (a connection error counts as not yet), failing fast if Prometheus exits and with
        `failure()` and the log tail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise PrometheusError(f"Prometheus exited with {code}:\n{self.log_tail()}")
            try:
                if done():
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"{failure()}:\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200

        self._poll(ready, lambda: f"Prometheus not ready after {timeout_s:.0f}s", timeout_s)

    def wait_scraped(self, jobs: list[str], timeout_s: float = 30.0) -> None:
        """Until every job in `jobs` has been scraped once (its `up` series exists). Prometheus applies new
        targets on a 5 s tick after start, so without this the first seconds of traffic go unrecorded and a
        counter's first increments are invisible to rate(). A target that is down still counts (up == 0):
        that is for the alerts to report, not a reason to hang."""
        missing = set(jobs)

        def scraped() -> bool:
            doc = self.api("query", {"query": "up"}, timeout_s=5.0)
            missing.difference_update(r["metric"].get("job") for r in doc.get("data", {}).get("result", []))
            return not missing

        self._poll(scraped, lambda: f"Prometheus did not scrape {sorted(missing)} within {timeout_s:.0f}s",
                   timeout_s)

    def api(self, path: str, params: dict[str, Any] | list[tuple[str, str]] | None = None,
            timeout_s: float = 10.0) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded JSON document, error answers (4xx) included."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read() or b"{}")

    def stop(self, timeout_s: float = 20.0) -> None:
        atexit.unregister(self.stop)
        if self.proc is None:
            return
        stop_process(self.proc, timeout_s)
        self._log.close()
        self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local(run_dir: str | Path, gateway_target: str | None, torchserve_target: str | None,
                port: int | None = None, scrape_interval: str = "15s", triton_target: str | None = None,
                gateway_key_file: str | Path | None = None) -> Prometheus:
    """Render the config into `run_dir` and start Prometheus over it on loopback. When this returns it is
    ready and has scraped every target once, so no request sent afterwards goes unrecorded."""
    if find_binary("prometheus") is None:
        raise PrometheusError(f"Prometheus is not installed: {INSTALL_HINT}")
    config = render_config(run_dir, gateway_target, torchserve_target, scrape_interval, triton_target,
                           gateway_key_file)
    checker = find_binary("promtool")
    if checker is not None:
        check = subprocess.run([checker, "check", "config", str(config)], capture_output=True, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
        if check.returncode != 0:
            raise PrometheusError(f"rendered config {config} is invalid:\n{check.stdout}{check.stderr}")
    server = Prometheus(config, run_dir, port=port).start()
    try:
        server.wait_ready()
        scrape_s = parse_duration(scrape_interval)
        server.wait_scraped([job for job, target in ((GATEWAY_JOB, gateway_target),
                                                      (TORCHSERVE_JOB, torchserve_target),
                                                      (TRITON_JOB, triton_target)) if target],
                            timeout_s=30.0 + 2 * scrape_s)
    except PrometheusError:
        server.stop()
        raise
    return server
