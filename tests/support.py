"""Test helpers that start real components (TorchServe, ...) on free loopback ports and stop them."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cli.torchserve import TorchServe
from zoo._registry import _DEFAULT_TAGS, _REGISTRY, ModelEntry, WeightsSource, get_entry, register
from zoo.mar import build_mar
from zoo.tensors import TensorSpec


def build_archives(store: Path, names: list[str], seed: int = 0,
                   config_overrides: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Build (once per store) random-weight archives for the named models; `config_overrides` by name (e.g. a
    smaller test size, see `zoo.mar.build_mar`)."""
    archives = []
    for name in names:
        mar = store / f"{name}.mar"
        if not mar.exists():
            build_mar(get_entry(name), store, random_weights=True, seed=seed, progress=False,
                      config_overrides=(config_overrides or {}).get(name))
        archives.append(mar.name)
    return archives


@contextlib.contextmanager
def running_torchserve(workdir: Path, names: list[str], ready_timeout_s: float = 300,
                       config_overrides: dict[str, dict[str, Any]] | None = None) -> Iterator[TorchServe]:
    """A real TorchServe serving random-weight archives of `names`; stopped on exit."""
    store = workdir / "store"
    archives = build_archives(store, names, config_overrides=config_overrides)
    ts = TorchServe(store, archives, workdir / "run")
    ts.start()
    try:
        ts.wait_ready(timeout_s=ready_timeout_s)
        yield ts
    finally:
        ts.stop()


def http_request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None,
    timeout: float = 120,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for any status code, without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def json_body(raw: bytes) -> object:
    return json.loads(raw.decode("utf-8"))


def multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    """Encode {name: (filename, bytes, content_type) | text value} as multipart/form-data.

    Returns (body, content type)."""
    boundary = "zoo-test-boundary-7d1f"
    parts = []
    for name, value in fields.items():
        if isinstance(value, str):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
            continue
        filename, data, ctype = value
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def tiny_builder(width: int = 4) -> torch.nn.Module:
    """A model small enough to publish, pull and load in milliseconds."""
    return torch.nn.Sequential(torch.nn.Linear(width, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@contextlib.contextmanager
def tiny_entries(**weights_defaults: Any) -> Iterator[Callable[..., ModelEntry]]:
    """Register throwaway tiny entries (`make(name, **WeightsSource fields)`) for one test, never kept after it."""
    names: list[str] = []

    def make(arch: str, **weights: Any) -> ModelEntry:
        name = f"{arch}.test"  # registry names are `arch.tag`
        entry = ModelEntry(
            name=name, task="image-classification", builder=tiny_builder, config={"width": 4},
            handler="handlers.detr_handler", inputs={}, outputs=(TensorSpec("logits", "FP32", (2,)),),
            weights=WeightsSource(**{**weights_defaults, **weights}), license="MIT",
            paper="https://example.org/tiny",
        )
        names.append(name)
        return register(entry)

    try:
        yield make
    finally:
        for name in names:
            _REGISTRY.pop(name, None)
            _DEFAULT_TAGS.pop(name.partition(".")[0], None)
