"""Start and stop a real Triton server (PyTriton, `tests/serving/pytriton_server.py`) for the tests.

The server runs in `.venv-triton` (made by `make test`, see the Makefile; ZOO_TRITON_PYTHON overrides the
interpreter). Where that venv could not be made, or the server cannot start here, `pytriton_or_skip()`
skips with the reason; set ZOO_REQUIRE_TRITON=1 to make that a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).resolve().parent / "pytriton_server.py"
TRITON_VENV = REPO / ".venv-triton"
_TRITON_TEMP_DIR = re.compile(r"^/tmp/folder[A-Za-z0-9]{6}(?=/)")


class TritonUnavailable(RuntimeError):
    """PyTriton cannot start here (no venv, or the server died / never became ready)."""


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def triton_python() -> Path:
    """The interpreter with PyTriton; TritonUnavailable (with the set-up's reason) when there is none."""
    override = os.environ.get("ZOO_TRITON_PYTHON")
    python = Path(override) if override else TRITON_VENV / "bin" / "python"
    marker = TRITON_VENV / "UNAVAILABLE"
    if override is None and marker.is_file():
        raise TritonUnavailable(f"PyTriton set-up failed: {marker.read_text().strip()}")
    if not python.exists():
        raise TritonUnavailable(f"{python} not found: `make test` (or `make {TRITON_VENV.name}/.installed`) "
                                "makes the PyTriton venv")
    return python


class PyTriton:
    """One PyTriton server process (its own process group) on free loopback ports."""

    def __init__(self, workdir: Path, ports: tuple[int, int, int] | None = None) -> None:
        self.workdir = workdir
        self.http_port, self.grpc_port, self.metrics_port = ports or tuple(free_ports(3))
        self.log_path = workdir / "pytriton.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._runs = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> None:
        python = triton_python()
        self._runs += 1
        workspace = self.workdir / f"pytriton-ws-{self.grpc_port}-{self._runs}"
        self.log_path = self.workdir / f"pytriton-{self.grpc_port}-{self._runs}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(python), str(SERVER_SCRIPT), "--http-port", str(self.http_port),
                 "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                 "--workspace", str(workspace)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd=self.workdir,
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Until the script prints READY (every model loaded); TritonUnavailable if it dies or times out."""
        assert self.proc is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "READY" in self.log_tail(1 << 22).splitlines():
                return
            if self.proc.poll() is not None:
                raise TritonUnavailable(
                    f"PyTriton exited with {self.proc.returncode} before READY; log tail:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TritonUnavailable(f"PyTriton not READY within {timeout_s:.0f}s; log tail:\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _group_temp_dirs(self) -> set[Path]:
        """Triton's per-model temp dirs (/tmp/folderXXXXXX, named in the stubs' command lines) of this
        server's processes: a graceful stop removes them, a SIGKILL leaves them behind."""
        assert self.proc is not None
        found: set[Path] = set()
        for proc_dir in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(proc_dir.name)) != self.proc.pid:
                    continue
                for arg in (proc_dir / "cmdline").read_bytes().split(b"\0"):
                    match = _TRITON_TEMP_DIR.match(arg.decode(errors="replace"))
                    if match:
                        found.add(Path(match.group(0)))
        return found

    def kill(self) -> None:
        """SIGKILL the whole server (script, tritonserver, python-backend stubs): Triton is gone at once."""
        if self.proc is None:
            return
        temp_dirs = self._group_temp_dirs()
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        time.sleep(0.2)  # the group's other processes die with it
        self._clean_shm()
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM (PyTriton stops tritonserver cleanly), then SIGKILL whatever is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _clean_shm(self) -> None:
        """The python backend's shared-memory regions of a killed server (named after the script's pid)."""
        assert self.proc is not None
        shm = Path("/dev/shm")
        if shm.is_dir():
            for region in shm.glob(f"pytrtion{self.proc.pid}-*"):
                with contextlib.suppress(OSError):
                    region.unlink()


def start_or_skip(server: PyTriton, timeout_s: float = 90) -> None:
    """Start `server` and wait for READY; skip the test (fail under ZOO_REQUIRE_TRITON=1) when it cannot."""
    try:
        server.start()
        server.wait_ready(timeout_s)
    except TritonUnavailable as exc:
        server.stop()
        if os.environ.get("ZOO_REQUIRE_TRITON") == "1":
            pytest.fail(f"Triton tests: {exc}")
        pytest.skip(f"Triton tests: {exc}")


@contextlib.contextmanager
def pytriton_or_skip(workdir: Path, timeout_s: float = 90) -> Iterator[PyTriton]:
    """A running PyTriton server (see pytriton_server.py for its models); always stopped on exit."""
    server = PyTriton(workdir)
    start_or_skip(server, timeout_s)
    try:
        yield server
    finally:
        server.stop()
