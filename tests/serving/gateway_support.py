"""Helpers for the gateway tests: a real TorchServe serving the tiny `toy_echo`, a real gateway in front."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml
from PIL import Image

from cli.gateway import GatewayProcess, start_gateway
from cli.torchserve import TorchServe
from serving.app import Gateway
from serving.config import GatewayConfig

FULL_KEY = "full-key-0123"  # every model
TOY_KEY = "toy-key-4567"  # toy_echo only


def png_bytes(width: int = 16, height: int = 12, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


@contextlib.contextmanager
def running_gateway(ts: TorchServe, workdir: Path, config: dict[str, Any] | None = None,
                    env: dict[str, str] | None = None) -> Iterator[GatewayProcess]:
    """The gateway (subprocess) in front of `ts`, with `config` written as its YAML; stopped on exit."""
    config_path = None
    if config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(ts, config_path=config_path, env={"ZOO_API_KEYS": "", "ZOO_API_KEYS_FILE": "",
                                                              **(env or {})})
    try:
        yield gateway
    finally:
        gateway.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def image_input(module: Any, data: bytes, binary: bool = True) -> Any:
    """`data` as tritonclient's one-element BYTES input `image` (`module`: tritonclient.http or .grpc)."""
    tensor = module.InferInput("image", [1], "BYTES")
    if module is thttp:
        tensor.set_data_from_numpy(np.array([data], dtype=object), binary_data=binary)
    else:
        tensor.set_data_from_numpy(np.array([data], dtype=object))
    return tensor


def infer_over_both(http_url: str, grpc_target: str, model: str, image: bytes, key: str, n_rest: int,
                    n_grpc: int) -> None:
    """`n_rest` OIP inferences with tritonclient.http, then `n_grpc` with tritonclient.grpc (metrics tests)."""
    client = thttp.InferenceServerClient(http_url.removeprefix("http://"))
    for _ in range(n_rest):
        client.infer(model, [image_input(thttp, image)], headers=bearer(key))
    gclient = tgrpc.InferenceServerClient(grpc_target)
    for _ in range(n_grpc):
        gclient.infer(model, [image_input(tgrpc, image)], headers={"authorization": f"Bearer {key}"})


class Running:
    """A Gateway on its own event loop in a thread (as in its own process), for blocking clients."""

    def __init__(self, cfg: GatewayConfig, backends: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(cfg, backends)
        http_port, grpc_port = self.run(self.gateway.start("127.0.0.1", 0, 0))
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def stop(self) -> None:
        self.run(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def in_process_gateway(config: GatewayConfig, backends: dict[str, Any]) -> Iterator[Running]:
    """A `Running` gateway with `config` and `backends` (in-process ones, typically), stopped on exit."""
    running = Running(config, backends)
    try:
        yield running
    finally:
        running.stop()
