"""KServe's Python SDK (`kserve`), unmodified: InferenceRESTClient and InferenceGRPCClient infer through the
gateway, and show the gateway's own error message on a 404 and a 400 (the SDK reads a REST error's message only
under Content-Type exactly ``application/json``).

The SDK's pins conflict with this project's, so it lives in its own venv (`.venv-kserve`, made by `make test`;
ZOO_KSERVE_PYTHON overrides the interpreter) and runs `kserve_client.py` there against a gateway served here.
Skipped, saying why, where that venv could not be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.gateway_support import Running
from tests.serving.perf_analyzer_support import NOOP, noop_gateway

REPO = Path(__file__).resolve().parents[2]
KSERVE_VENV = REPO / ".venv-kserve"
CLIENT = Path(__file__).resolve().parent / "kserve_client.py"


def kserve_python() -> Path:
    override = os.environ.get("ZOO_KSERVE_PYTHON")
    python = Path(override) if override else KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / "UNAVAILABLE"
    if override is None and marker.is_file():
        pytest.skip(f"kserve venv set-up failed: {marker.read_text().strip()}")
    if not python.exists():
        pytest.skip(f"{python} not found: `make test` (or `make {KSERVE_VENV.name}/.installed`) makes the kserve venv")
    probe = subprocess.run([str(python), "-c", "import kserve"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"kserve does not import in {python}: {probe.stderr.strip()[-300:]}")
    return python


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with noop_gateway() as running:
        yield running


def test_kserve_clients_infer_and_show_the_gateways_errors(gw: Running) -> None:
    python = kserve_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), str(CLIENT), gw.http_url, gw.grpc_target, NOOP], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rest_ok"] == {"ok": [[1]]} and got["grpc_ok"] == {"ok": [[1]]}
    assert got["rest_404"]["status"] == 404 and "unknown model 'nope'" in got["rest_404"]["message"]
    assert got["rest_400"]["status"] == 400
    assert "input 'INPUT': 1 data elements for shape [3, 1]" in got["rest_400"]["message"]
    assert got["grpc_404"] == {"status": "NOT_FOUND", "message": "unknown model 'nope'; served models: noop"}
    assert got["grpc_400"]["status"] == "INVALID_ARGUMENT" and "input 'INPUT'" in got["grpc_400"]["message"]
    assert sys.executable != str(python)  # the SDK ran in its own interpreter
