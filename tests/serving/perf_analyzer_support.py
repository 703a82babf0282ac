"""Triton's `perf_analyzer` (shipped in tritonclient[all]) for the tests and bench/perf_analyzer.py.

The binary needs Debian's ``libb64-0d`` and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12`` wheel), even
on CPU; `make test` installs both (best effort, see the Makefile's perf-analyzer-tools). `perf_analyzer()`
finds the binary and the library folder (``ZOO_CUDART_DIR`` overrides it) or raises `PerfAnalyzerUnavailable`
saying what is missing, which the tests turn into a skip.

`noop_model()` is the in-process model that answers without work: the gateway's own cost, alone. Its input is
BYTES [-1, 1] (one element per batch item): perf_analyzer builds requests from the metadata's shape without the
batch dimension and cannot for an empty one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.backends.inprocess import InProcessBackend, InProcessModel
from serving.config import BackendConfig, GatewayConfig
from tests.serving.gateway_support import Running, in_process_gateway
from zoo.tensors import TensorSpec

NOOP = "noop"
CUDART = "libcudart.so.12"


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer or a library it needs is missing here."""


def noop_model() -> InProcessModel:
    """One BYTES input `INPUT` (any bytes), one typed output `ok` INT32 [1]: no model work at all."""
    return InProcessModel(NOOP, lambda fields: 1, inputs={"INPUT": "any bytes (ignored)"},
                          input_specs=(TensorSpec("INPUT", "BYTES", (1,), "any bytes (ignored)"),),
                          outputs=(TensorSpec("ok", "INT32", (1,), "always 1"),), tensors=lambda answer: {"ok": [1]})


def noop_config(backend: str = "local") -> GatewayConfig:
    """A gateway config (no keys) routing the no-op model to the in-process backend named `backend`."""
    base = GatewayConfig(backends={backend: BackendConfig(backend, "inprocess")})
    return base.with_routes([base.route(NOOP)])


@contextlib.contextmanager
def noop_gateway(backend: str = "local") -> Iterator[Running]:
    """A gateway (its own loop in a thread) serving only the no-op model."""
    with in_process_gateway(noop_config(backend), {backend: InProcessBackend([noop_model()], name=backend)}) as gw:
        yield gw


def _cudart_dir() -> Path | None:
    override = os.environ.get("ZOO_CUDART_DIR")
    if override:
        return Path(override) if (Path(override) / CUDART).exists() else None
    for base in [*site.getsitepackages(), *sys.path]:
        candidate = Path(base) / "nvidia" / "cuda_runtime" / "lib"
        if (candidate / CUDART).exists():
            return candidate
    return None


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]

    def run(self, model: str, url: str, protocol: str, concurrency: int, *, interval_ms: int = 1000,
            stability_pct: int = 50, extra: tuple[str, ...] = (), timeout_s: float = 300
            ) -> subprocess.CompletedProcess[str]:
        """One perf_analyzer run at one concurrency (`protocol`: http or grpc), output captured. A large
        `stability_pct` takes the first windows as they come (a loaded machine never looks stable)."""
        args = [str(self.binary), "-m", model, "-u", url, "-i", protocol,
                "--concurrency-range", f"{concurrency}:{concurrency}",
                "--measurement-interval", str(interval_ms), "--max-trials", "6",
                "--stability-percentage", str(stability_pct),
                "--percentile", "50", *extra]
        return subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=timeout_s, check=False)


def perf_analyzer() -> PerfAnalyzer:
    """perf_analyzer, ready to run, or PerfAnalyzerUnavailable naming what is missing."""
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    binary = Path(found)
    if not binary.exists():
        raise PerfAnalyzerUnavailable("perf_analyzer not found: `pip install tritonclient[all]`")
    cudart = _cudart_dir()
    if cudart is None:
        raise PerfAnalyzerUnavailable(f"{CUDART} not found: `pip install nvidia-cuda-runtime-cu12` "
                                      "(or set ZOO_CUDART_DIR to the folder holding it)")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        p for p in (str(cudart), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=False)
    missing = re.findall(r"^\s*(\S+) => not found", ldd.stdout, re.M)
    if missing:
        hint = " (Debian: apt-get install libb64-0d)" if any("libb64" in m for m in missing) else ""
        raise PerfAnalyzerUnavailable(f"perf_analyzer lacks {', '.join(missing)}{hint}")
    return PerfAnalyzer(binary, env)


def parse(output: str) -> dict[str, Any]:
    """Throughput (infer/s) and p50 latency (ms) from perf_analyzer's text report (its last measurement)."""
    throughput = re.findall(r"Throughput: ([\d.]+) infer/sec", output)
    p50 = re.findall(r"p50 latency: (\d+) usec", output)
    if not throughput:
        raise ValueError(f"no throughput in perf_analyzer's output:\n{output[-2000:]}")
    return {"rps": float(throughput[-1]), "p50_ms": float(p50[-1]) / 1000 if p50 else float("nan")}
