"""`perf_analyzer`, unmodified, against the gateway over HTTP and gRPC: it reads the model's metadata and config,
runs inference, reads statistics before and after, and reports throughput. A short run on the in-process no-op
model (no timing assertions); skipped, saying why, where the binary or its libraries cannot be set up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.gateway_support import Running
from tests.serving.perf_analyzer_support import NOOP, PerfAnalyzer, PerfAnalyzerUnavailable, noop_gateway, parse
from tests.serving.perf_analyzer_support import perf_analyzer as find_perf_analyzer


@pytest.fixture(scope="module")
def tool() -> PerfAnalyzer:
    try:
        return find_perf_analyzer()
    except PerfAnalyzerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with noop_gateway() as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_against_the_gateway(tool: PerfAnalyzer, gw: Running, protocol: str) -> None:
    url = gw.http_url.removeprefix("http://") if protocol == "http" else gw.grpc_target
    done = tool.run(NOOP, url, protocol, 2, interval_ms=500, stability_pct=10_000, timeout_s=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert parse(done.stdout)["rps"] > 0
    stats = gw.gateway.dataplane.model_statistics(None, NOOP)["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] > 0 and stats["fail"]["count"] == 0
