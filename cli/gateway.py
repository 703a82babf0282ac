"""The gateway as a subprocess: `python -m serving.app`, started and stopped for `zoo serve`, tests and benches.

`start_gateway(ts, ...)` returns a handle with ``.http_url``, ``.grpc_target`` and ``.stop()`` once the child
printed its READY line (``serving.app.READY_PREFIX``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import serving
from cli.process import stop_process
from serving.app import READY_PREFIX

# The folder that holds the `serving` package the child must import: the checkout or site-packages.
IMPORT_ROOT = Path(serving.__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
class GatewayProcess:
    """A gateway subprocess; `stop()` is graceful (SIGTERM, then SIGKILL after the grace period)."""

    def __init__(self, proc: subprocess.Popen, host: str, http_port: int, grpc_port: int) -> None:
        self.proc = proc
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        return stop_process(self.proc, timeout_s)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies (a killed test run or
    `zoo serve` must not leave gateways behind). Linux only."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def launch(args: list[str], host: str = "127.0.0.1", env: dict[str, str] | None = None,
           timeout_s: float = 60.0) -> GatewayProcess:
    """Start `python -m serving.app ARGS` and wait for its READY line."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(IMPORT_ROOT), child_env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--host", host, *args],
                            stdout=subprocess.PIPE, env=child_env, text=True,
                            preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
    ready: dict[str, Any] = {}

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX) and not ready:
                ready.update(json.loads(line[len(READY_PREFIX):]))
            else:
                sys.stdout.write(line)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not ready:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the gateway was not ready after {timeout_s:.0f}s")
        time.sleep(0.05)
    return GatewayProcess(proc, host, int(ready["http"]), int(ready["grpc"]))


def start_gateway(engine: Any, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0,
                  config_path: str | Path | None = None, env: dict[str, str] | None = None) -> GatewayProcess:
    """The gateway in front of a running engine (`cli.torchserve.TorchServe` or `cli.triton.TritonServer`),
    serving its models."""
    args = [*engine.gateway_args(), "--models", ",".join(engine.model_names),
            "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    if config_path:
        args += ["--config", str(config_path)]
    return launch(args, host=host, env=env)
