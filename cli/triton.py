"""Run a real Triton Inference Server on loopback over a zoo model repository, as `cli.torchserve` runs TorchServe.

Used by `zoo serve --engine triton`, the engine-parity tests and the benchmarks. Which `tritonserver`:

1. ``ZOO_TRITONSERVER`` (a path), else a system ``tritonserver`` (PATH, or NGC images' /opt/tritonserver), with
   its own backends (``--backend-directory`` from ``ZOO_TRITON_BACKENDS`` or /opt/tritonserver/backends);
2. else the server that the ``nvidia-pytriton`` wheel bundles, in the Triton venv (``ZOO_TRITON_PYTHON``, else
   ``.venv-triton`` made by `make test`, else this interpreter, e.g. the image's with the ``triton`` extra):
   its Python backend plus the stub for that venv's Python version are laid out in the run directory,
   ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries (libcudart included), and the venv's ``bin`` goes
   first on PATH, so the stub's interpreter is that venv (torch + this package).

Hardened like TorchServe: every endpoint on loopback (metrics may bind wider for a pod's Prometheus), models
loaded explicitly (no repository polling), its own shared-memory prefix so servers run side by side.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cli.process import stop_process
from cli.torchserve import LOOPBACK, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEM_TRITON_HOME = Path("/opt/tritonserver")
# Largest request Triton's HTTP/gRPC front ends and the Python backend's shared memory must carry (video).
PYTHON_BACKEND_SHM_BYTES = 64 * 1024 * 1024


class TritonError(RuntimeError):
    pass


@dataclass
class TritonPorts:
    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    metrics_host: str = LOOPBACK  # a pod that lets Prometheus scrape Triton binds it wider


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver: the binary, its backends folder (None: lay out the wheel's), its environment."""

    binary: Path
    backends: Path | None
    env: dict[str, str]
    python_backend: Path | None = None  # the wheel's backends/python, laid out with its stub per run
    stub: Path | None = None


def triton_python() -> Path:
    """The interpreter with PyTriton and torch: ZOO_TRITON_PYTHON, else this checkout's .venv-triton (`make`),
    else this interpreter (an install with the ``triton`` extra, as in the image)."""
    override = os.environ.get("ZOO_TRITON_PYTHON")
    if override:
        return Path(override)
    checkout_venv = REPO_ROOT / ".venv-triton"
    if checkout_venv.is_dir():
        return checkout_venv / "bin" / "python"
    return Path(sys.executable)


def find_triton() -> TritonInstall:
    """A system tritonserver, else the PyTriton wheel's; TritonError naming what to install when neither."""
    explicit = os.environ.get("ZOO_TRITONSERVER")
    system = explicit or shutil.which("tritonserver") or (
        str(SYSTEM_TRITON_HOME / "bin" / "tritonserver")
        if (SYSTEM_TRITON_HOME / "bin" / "tritonserver").exists() else None)
    if system:
        backends = Path(os.environ.get("ZOO_TRITON_BACKENDS", SYSTEM_TRITON_HOME / "backends"))
        return TritonInstall(Path(system), backends, {})
    python = triton_python()
    if not python.exists():
        raise TritonError(f"no tritonserver: none on PATH, and no Triton venv at {python} (`make .venv-triton/"
                          ".installed` makes one with PyTriton's bundled server; or set ZOO_TRITONSERVER)")
    marker = python.parent.parent / "UNAVAILABLE"
    if marker.is_file():
        raise TritonError(f"the Triton venv's set-up failed: {marker.read_text().strip()}")
    # torch and safetensors: what the zoo's handlers need inside the Python backend's stub
    probe = subprocess.run(
        [str(python), "-c", "import json, sys, pathlib, pytriton, torch, safetensors; "
         "p = pathlib.Path(pytriton.__file__).parent; "
         "print(json.dumps([str(p), f'{sys.version_info[0]}.{sys.version_info[1]}', sys.prefix]))"],
        capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise TritonError(f"{python} cannot import pytriton, torch and safetensors (`make .venv-triton/.installed` "
                          f"installs them): {probe.stderr.strip()[-500:]}")
    package, version, prefix = json.loads(probe.stdout)
    dist = Path(package) / "tritonserver"
    libs = Path(package).parent / "nvidia_pytriton.libs"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"PyTriton has no Python-backend stub for Python {version} ({stub})")
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")])),
        # the stub embeds libpython and finds its prefix (site-packages: torch, this package) from PATH
        "PATH": os.pathsep.join([str(Path(prefix) / "bin"), os.environ.get("PATH", "")]),
        "VIRTUAL_ENV": prefix,
    }
    return TritonInstall(dist / "bin" / "tritonserver", None, env, dist / "backends" / "python", stub)


def layout_backends(install: TritonInstall, run_dir: Path) -> Path:
    """The backends folder for this run: the system one, or the wheel's Python backend with its stub."""
    if install.backends is not None:
        return install.backends
    assert install.python_backend is not None and install.stub is not None
    target = run_dir / "backends" / "python"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, target / "triton_python_backend_stub")
    return target.parent


class TritonServer:
    """A tritonserver subprocess on loopback. Use as a context manager or call start()/stop()."""

    def __init__(self, repository: str | Path, models: list[str], run_dir: str | Path,
                 ports: TritonPorts | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.repository = Path(repository).resolve()
        self.models = models  # Triton model names (the entries' serve names)
        self.run_dir = Path(run_dir).resolve()
        self.ports = ports or TritonPorts()
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self._log = None

    # the names `cli.gateway` and `zoo serve` use for either engine
    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def gateway_args(self) -> list[str]:
        """How `python -m serving.app` reaches this server (see `cli.gateway.start_gateway`)."""
        return ["--triton-grpc", self.grpc_target]

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "tritonserver.out"

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        shm_prefix = f"zoo{os.getpid()}-{secrets.token_hex(4)}-"
        cmd = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.models),
            f"--http-address={LOOPBACK}", f"--http-port={self.ports.http}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.ports.grpc}",
            "--allow-metrics=true", f"--metrics-address={self.ports.metrics_host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-cpu-metrics=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=20",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={PYTHON_BACKEND_SHM_BYTES}",
            "--log-verbose=0",
        ]
        return cmd

    def start(self) -> TritonServer:
        install = find_triton()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        backends = layout_backends(install, self.run_dir)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(install.env)
        env.update(self.extra_env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(install, backends), cwd=self.run_dir, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, OSError):
            return 0

    def ready(self) -> bool:
        """Triton is ready and so is every model it was asked to load."""
        return self._get("/v2/health/ready") == 200 and all(
            self._get(f"/v2/models/{name}/ready") == 200 for name in self.models)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until every model is ready; fail with the server's log if it exits (a model that fails to
        load makes tritonserver exit: --exit-on-error is on by default) or stalls."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TritonError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.5)
        raise TritonError(f"Triton not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, timeout_s, process_group=True)
        if self._log is not None:
            self._log.close()
        self.proc = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # `python -m cli.triton REPOSITORY MODEL...`: a quick manual check
    server = TritonServer(sys.argv[1], sys.argv[2:], Path(sys.argv[1]) / ".run")
    with server:
        server.wait_ready()
        print(f"ready: http {server.http_url} grpc {server.grpc_target} metrics {server.metrics_url}", flush=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
