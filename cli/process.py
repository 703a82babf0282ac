"""Stopping the subprocesses the project starts (TorchServe, the gateway, Prometheus, test servers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


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
