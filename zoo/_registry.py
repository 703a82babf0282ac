"""The model registry: one named entry per servable model, looked up by name, failing loudly.

Names follow timm's ``arch.tag``: one architecture, several sets of weights (``cut.horse2zebra``,
``cut.cat2dog``). The bare architecture name is an alias of its default tag (the first one registered), so
``detr_resnet50`` still names ``detr_resnet50.coco``; an entry is served, archived and routed under that short
name when it is its architecture's default, and under its full name otherwise (``ModelEntry.serve_name``).

Entries are declared next to the architecture they build (``zoo/detr.py`` registers ``detr_resnet50.coco``)
and collected by importing the modules in ``MODEL_MODULES``. Each entry carries everything needed to build, weight,
archive and serve the model, so the CLI, the ``.mar`` builder and the handlers share one source of truth.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from zoo.tensors import TensorSpec


@dataclass(frozen=True)
class WeightsSource:
    """Where the real weights of an entry come from, and how a fleet verifies the file it gets.

    ``hf_repo``/``revision``/``filename``/``sha256`` pin a file on the Hugging Face Hub (or a mirror set with
    ``HF_ENDPOINT``). ``converter`` names the ``module:function`` that turns that file's state dict into
    the zoo layout (``None``: the file already is the zoo layout). ``upstream_url`` is where the official
    checkpoint was first published; without a Hub pin it is what ``zoo pull`` fetches.

    Verification of the upstream file: ``upstream_sha256`` (full hash) and ``upstream_size`` from a public
    record; ``upstream_sha256_prefix`` when the record is only a leading part of the hash (torch.hub-style
    file names); with no full hash, ``zoo pull`` trusts the first file it sees and locks it (see
    ``zoo/weights_lock.py``). ``sha256_record`` cites where every pinned hash comes from, so a reviewer can
    check it. ``manual_download``: the URL is a page for a browser (Google Drive), so the user downloads the
    file and hands it to ``zoo pull MODEL --file PATH``; ``upstream_filename`` names the file to get there.
    ``random_only``: a test model that never has real weights.
    """

    hf_repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None
    converter: str | None = None
    upstream_url: str | None = None
    upstream_sha256: str | None = None
    description: str = ""
    upstream_sha256_prefix: str | None = None
    upstream_size: int | None = None
    upstream_filename: str | None = None
    manual_download: bool = False
    sha256_record: str = ""
    random_only: bool = False

    def describe(self) -> str:
        if self.hf_repo:
            rev = (self.revision or "main")[:12]
            return f"hf://{self.hf_repo}@{rev}/{self.filename}"
        return self.upstream_url or "none"

    @property
    def source_kind(self) -> str:
        """``hub`` (a pinned Hub file), ``upstream`` (the authors' URL) or ``none`` (random-only test model)."""
        if self.random_only:
            return "none"
        return "hub" if self.hf_repo else "upstream" if self.upstream_url else "none"

    @property
    def pinned_sha256(self) -> str | None:
        """The full sha256 the file `zoo pull` fetches must have, if a public record gives one."""
        return self.sha256 if self.source_kind == "hub" else self.upstream_sha256

    @property
    def pinned_size(self) -> int | None:
        return self.upstream_size if self.source_kind == "upstream" else None

    @property
    def verification_method(self) -> str:
        """``sha256`` (pinned), ``tofu`` (trust on first use, then locked) or ``none``."""
        if self.source_kind == "none":
            return "none"
        return "sha256" if self.pinned_sha256 else "tofu"

    def verification(self) -> dict[str, Any]:
        """How the file of this source is verified, for `zoo list` and model cards."""
        prefix = self.upstream_sha256_prefix if self.source_kind == "upstream" else None
        return {
            "method": self.verification_method,
            "sha256": self.pinned_sha256,
            "sha256_prefix": prefix,
            "size": self.pinned_size,
            "record": self.sha256_record or None,
            "fetch": self.fetch_method,
            "summary": self.verification_summary(),
        }

    @property
    def fetch_method(self) -> str:
        """How `zoo pull` gets the file: ``hub``, ``http`` (downloads the URL) or ``manual`` (``--file``)."""
        kind = self.source_kind
        if kind == "hub":
            return "hub"
        if kind == "upstream":
            return "manual" if self.manual_download else "http"
        return "none"

    def verification_summary(self) -> str:
        method = self.verification_method
        if method == "none":
            return "none (random-only test model)"
        if method == "sha256":
            return f"sha256 {self.pinned_sha256[:12]}... pinned"  # type: ignore[index]
        prefix = self.upstream_sha256_prefix if self.source_kind == "upstream" else None
        return "trust on first use, locked" + (f"; sha256 prefix {prefix} checked" if prefix else "")


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class GpuServing:
    """Batching and workers for a GPU host, with the measurement that chose them (``measured_by``)."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int = 1  # TorchServe workers per GPU
    measured_by: str = ""


@dataclass(frozen=True)
class ServingConfig:
    """Serving knobs: TorchServe's ``model-config.yaml`` and Triton's ``config.pbtxt`` are written from these,
    plus how a worker runs the model.

    ``precision``/``channels_last``/``compile``/``device_preprocess`` apply on CUDA only (a CPU worker runs
    fp32, eager, PIL preprocessing unless ``ZOO_PRECISION``/``ZOO_CHANNELS_LAST``/``ZOO_COMPILE``/
    ``ZOO_DEVICE_PREPROCESS`` say otherwise; see ``zoo.runtime``): bf16 autocast is slower than fp32 on CPUs
    without bf16 matrix units. ``buckets`` are the padded ``(height, width)`` input shapes a batch is grouped
    into, so a compiled graph (and its CUDA graphs) is reused and every shape is warmed at load;
    ``batch_buckets`` the batch sizes a bucketed batch is padded to. ``accuracy`` states the measured
    difference of ``precision`` (and device preprocessing) from fp32/PIL; ``gpu`` the tuned batching on a GPU.
    """

    batch_size: int = 8
    max_batch_delay_ms: int = 20
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120
    device_type: str = "auto"  # auto -> gpu when the host has one, else cpu
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device_preprocess: bool = False
    buckets: tuple[tuple[int, int], ...] = ()
    batch_buckets: tuple[int, ...] = ()
    accuracy: str = ""
    gpu: GpuServing | None = None
    # Triton's dynamic batcher: batch sizes it prefers to form (empty: the full batch_size only)
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if list(self.batch_buckets) != sorted(set(self.batch_buckets)):
            raise ValueError(f"batch_buckets must be increasing, got {self.batch_buckets}")

    @property
    def preferred_sizes(self) -> tuple[int, ...]:
        return self.preferred_batch_sizes or (self.batch_size,)


@dataclass(frozen=True)
class ModelEntry:
    """A servable model: architecture, weights, I/O contract, provenance."""

    name: str
    task: str
    builder: Callable[..., torch.nn.Module]
    config: dict[str, Any]
    handler: str  # module path under handlers/, e.g. "handlers.detr_handler"
    inputs: dict[str, str]  # name -> description; typed as BYTES inputs (``input_specs``)
    outputs: tuple[TensorSpec, ...]  # the typed outputs inference returns, per request (no batch dimension)
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

    @property
    def arch(self) -> str:
        """The architecture part of ``arch.tag``."""
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        """The weights part of ``arch.tag``."""
        return self.name.partition(".")[2]

    @property
    def is_default_tag(self) -> bool:
        return _DEFAULT_TAGS.get(self.arch) == self.name

    @property
    def serve_name(self) -> str:
        """The name an archive, TorchServe and the gateway use: the bare arch for its default tag (so names
        that predate tags keep working), else ``arch.tag``."""
        return self.arch if self.is_default_tag else self.name

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names that reach this entry (the full name when it is served under the bare arch)."""
        return (self.name,) if self.serve_name != self.name else ()

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The inputs as typed tensors: each a one-element BYTES tensor (an image/video's bytes, or a
        parameter's text, e.g. ``b"0.5"``); a parameter (described as ``optional``) may be left out, the others
        are binary content (sent base64 in JSON)."""
        return tuple(TensorSpec(name, "BYTES", (1,), text, optional=text.startswith("optional"),
                                binary=not text.startswith("optional"))
                     for name, text in self.inputs.items())

    def build(self, **overrides: Any) -> torch.nn.Module:
        """Build the architecture with random (untrained) parameters."""
        return self.builder(**{**self.config, **overrides})

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (used in archives, `zoo list --json` and model metadata)."""
        return {
            "name": self.name,
            "serve_name": self.serve_name,
            "aliases": list(self.aliases),
            "task": self.task,
            "version": self.version,
            "config": self.config,
            "handler": self.handler,
            "inputs": self.inputs,
            "input_specs": [spec.as_dict() for spec in self.input_specs],
            "outputs": [spec.as_dict() for spec in self.outputs],
            "weights": asdict(self.weights),
            "license": self.license,
            "paper": self.paper,
        }


_REGISTRY: dict[str, ModelEntry] = {}
_DEFAULT_TAGS: dict[str, str] = {}  # arch -> full name of its default (first registered) tag
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")

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
    "zoo.condinst",  # instance-segmentation, opt-in (default_serve=False), NON-COMMERCIAL weights
    "zoo.dnl",  # semantic-segmentation, opt-in (default_serve=False)
    "zoo.stereo_mono",  # stereo-depth, opt-in (default_serve=False); NON-COMMERCIAL licence
    "zoo.cut",  # image-translation, opt-in (default_serve=False)
    "zoo.scan",  # image-classification (cluster ids), opt-in (default_serve=False)
)


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry; a malformed name or a second entry under the same name is a programming error."""
    if not NAME_RE.match(entry.name):
        raise ValueError(f"model name {entry.name!r} is not 'arch.tag' (lower-case letters, digits, '_')")
    names = [getattr(spec, "name", spec) for spec in entry.outputs]
    if not names or len(set(names)) != len(names) or not all(isinstance(s, TensorSpec) for s in entry.outputs):
        raise ValueError(f"model {entry.name!r}: outputs must be TensorSpecs with distinct names, got {names}")
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    _DEFAULT_TAGS.setdefault(entry.arch, entry.name)
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
    """The entry named ``arch.tag``, or the default tag of a bare ``arch``."""
    _load_all()
    entry = _REGISTRY.get(name) or _REGISTRY.get(_DEFAULT_TAGS.get(name, ""))
    if entry is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown model {name!r}; registered models: {known}")
    return entry


def create_model(name: str, **overrides: Any) -> torch.nn.Module:
    """Build a registered architecture (random parameters; see ``zoo.weights`` for real ones)."""
    return get_entry(name).build(**overrides)
