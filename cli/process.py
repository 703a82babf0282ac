"""Stopping the subprocesses the project starts (TorchServe, the gateway, Prometheus, test servers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0, process_group: bool = False) -> int | None:
    """SIGTERM, wait up to `timeout_s` for a graceful exit, then SIGKILL. With `process_group`, the signals go
    to the whole group (the child was started with `start_new_session=True`), so its own children die too."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if process_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def watch(children: dict[str, subprocess.Popen], stop: threading.Event, poll_s: float = 0.2) -> str | None:
    """Block until `stop` is set (None) or one of `children` exits (its name returned at once, within `poll_s`).

    `zoo serve` uses it to die with its children: it does not restart them itself but exits non-zero, so the
    supervisor around it (systemd, Kubernetes, compose) sees one failure and restarts the whole stack, whose
    parts are started and checked together (docs/reliability.md)."""
    while not stop.wait(poll_s):
        for name, proc in children.items():
            if proc.poll() is not None:
                return name
    return None
