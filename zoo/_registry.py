"""The model registry: one named entry per servable model, looked up by name, failing loudly.

Entries are declared next to the architecture they build (``zoo/detr.py`` registers ``detr_resnet50``)
and collected by importing ``zoo.models``. Each entry carries everything needed to build, weight,
archive and serve the model, so the CLI, the ``.mar`` builder and the handlers share one source of truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class WeightsSource:
    """Where the real weights of an entry come from.

    ``hf_repo``/``revision``/``filename``/``sha256`` pin a file on the Hugging Face Hub (or a mirror set with
    ``HF_ENDPOINT``). ``converter`` names the ``module:function`` that turns that file's state dict into
    the zoo layout (``None``: the file already is the zoo layout). ``upstream_url`` records where the
    official checkpoint was first published, for checkpoints the Hub does not host in zoo layout.
    """

    hf_repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None
    converter: str | None = None
    upstream_url: str | None = None
    upstream_sha256: str | None = None
    description: str = ""

    def describe(self) -> str:
        if self.hf_repo:
            rev = (self.revision or "main")[:12]
            return f"hf://{self.hf_repo}@{rev}/{self.filename}"
        return self.upstream_url or "none"


@dataclass(frozen=True)
class ServingConfig:
    """TorchServe knobs written into the archive's ``model-config.yaml``."""

    batch_size: int = 8
    max_batch_delay_ms: int = 20
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120
    device_type: str = "auto"  # auto -> gpu when the host has one, else cpu
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """A servable model: architecture, weights, I/O contract, provenance."""

    name: str
    task: str
    builder: Callable[..., torch.nn.Module]
    config: dict[str, Any]
    handler: str  # module path under handlers/, e.g. "handlers.detr_handler"
    inputs: dict[str, str]
    outputs: dict[str, str]
    weights: WeightsSource
    license: str
    paper: str
    version: str = "1"
    serving: ServingConfig = field(default_factory=ServingConfig)
    default_serve: bool = True  # part of `zoo serve`'s default set
    description: str = ""
    # Extra files the .mar carries (e.g. a face detector's weights): "module:function" callables, each
    # returning {archive-relative name: local path}; handlers find them under model_dir/<name>.
    assets: tuple[str, ...] = ()

    def build(self, **overrides: Any) -> torch.nn.Module:
        """Build the architecture with random (untrained) parameters."""
        return self.builder(**{**self.config, **overrides})

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (used in archives, `zoo list --json` and model metadata)."""
        return {
            "name": self.name,
            "task": self.task,
            "version": self.version,
            "config": self.config,
            "handler": self.handler,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "weights": asdict(self.weights),
            "license": self.license,
            "paper": self.paper,
        }


_REGISTRY: dict[str, ModelEntry] = {}

# Modules that declare entries. Importing them registers their models.
MODEL_MODULES = (
    "zoo.detr",
    "zoo.ckdn",
    "zoo.ftcn",
    "zoo.toy",  # test/demo-only serving-path model (default_serve=False)
    "zoo.autoformer",  # image-classification, opt-in (default_serve=False)
    "zoo.mutualnet",  # image-classification, opt-in (default_serve=False)
    "zoo.dgc",  # image-classification, opt-in (default_serve=False)
    "zoo.isqrtcov",  # image-classification, opt-in (default_serve=False)
    "zoo.addernet",  # image-classification, opt-in (default_serve=False)
    "zoo.bit",  # image-classification, opt-in (default_serve=False)
    "zoo.patchforensics",  # image-forensics, opt-in (default_serve=False)
    "zoo.cut",  # image-translation, opt-in (default_serve=False)
    "zoo.scan",  # image-classification (cluster ids), opt-in (default_serve=False)
)


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry; a second entry under the same name is a programming error."""
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _load_all() -> None:
    for module in MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a model module not written yet must not break the others
            if exc.name != module:
                raise


def list_models(task: str | None = None, default_only: bool = False) -> list[ModelEntry]:
    _load_all()
    entries = sorted(_REGISTRY.values(), key=lambda e: e.name)
    if task:
        entries = [e for e in entries if e.task == task]
    if default_only:
        entries = [e for e in entries if e.default_serve]
    return entries


def get_entry(name: str) -> ModelEntry:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def create_model(name: str, **overrides: Any) -> torch.nn.Module:
    """Build a registered architecture (random parameters; see ``zoo.weights`` for real ones)."""
    return get_entry(name).build(**overrides)
