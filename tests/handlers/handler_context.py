"""A stand-in for the slice of TorchServe's context that ZooHandler uses, for in-process handler tests."""

from __future__ import annotations

from pathlib import Path


class HandlerContext:
    """Records the per-request statuses and headers a handler sets; ``model_dir`` feeds ``initialize``."""

    metrics = None

    def __init__(self, model_dir: Path | None = None) -> None:
        self.system_properties = {"model_dir": str(model_dir or ".")}
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def set_response_status(self, code: int, phrase: str, idx: int = 0) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.headers.setdefault(idx, {})["Content-Type"] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value
