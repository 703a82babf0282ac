"""Build a Triton Inference Server model repository from registry entries (`zoo build --engine triton`).

One model per entry, named like its ``.mar`` (``entry.serve_name``)::

    <repository>/<serve_name>/config.pbtxt       backend "python", batching and instances from the registry
    <repository>/<serve_name>/1/model.py         imports handlers.triton_model.TritonPythonModel
    <repository>/<serve_name>/1/...              the .mar's files: sources, weights.safetensors, zoo_model.json, assets

The version directory holds exactly what the ``.mar`` holds (``zoo.mar.stage_model_files``) plus the adapter,
so Triton runs the same handler class on the same labelled weights as TorchServe.

I/O, from the registry's schema: inputs are the entry's ``input_specs`` (one-element BYTES tensors per item),
all optional for Triton because the handler, not Triton, decides what is missing or wrong (so both engines
refuse a request with the same message), plus ``body`` (a raw upload or a JSON object of fields, as
TorchServe's request body); other request fields travel as request parameters. Outputs are the entry's typed
``outputs`` (per item, batched), plus ``output`` (BYTES): the handler's readable JSON answer, what a client
gets when it asks for ``output`` alone (the gateway's task routes). See ``handlers.triton_model``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo._registry import ModelEntry
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE, TRITON_ZOO_META_PARAMETER
from zoo.mar import archive_meta, stage_model_files
from zoo.tensors import TensorSpec
from zoo.weights import WeightsLabel, resolve_weights, save_zoo_weights

ADAPTER_MODULE = "handlers.triton_model"
MODEL_PY = '''"""Triton Python-backend model: the zoo handler of this entry (see handlers/triton_model.py)."""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this version's own copy of zoo/ and handlers/

from handlers.triton_model import TritonPythonModel  # noqa: E402,F401
'''
BODY_INPUT = "body"
OUTPUT = "output"
CONFIG_FILE = "config.pbtxt"


def triton_version(entry: ModelEntry) -> str:
    """Triton versions are positive integers: the entry's version when it is one, else 1."""
    return entry.version if entry.version.isdigit() and int(entry.version) > 0 else "1"


def instance_kind(entry: ModelEntry, gpu: bool | None = None) -> str:
    """KIND_GPU or KIND_CPU: the entry's device type; ``auto`` follows `gpu` (default: whether torch sees one)."""
    if entry.serving.device_type in ("cpu", "gpu"):
        return f"KIND_{entry.serving.device_type.upper()}"
    if gpu is None:
        import torch  # only for the default: the build host's GPU

        gpu = torch.cuda.is_available()
    return "KIND_GPU" if gpu else "KIND_CPU"


def input_specs(entry: ModelEntry) -> list[TensorSpec]:
    return [*entry.input_specs, TensorSpec(BODY_INPUT, "BYTES", (1,), "a raw upload, or a JSON object of fields")]


def output_specs(entry: ModelEntry) -> list[TensorSpec]:
    return [*entry.outputs, TensorSpec(OUTPUT, "BYTES", (1,), "the readable JSON answer (ask for it alone)")]


def _tensor(spec: TensorSpec, optional: bool = False) -> str:
    """One config.pbtxt input/output entry (a scalar becomes dims [1] reshaped to [])."""
    datatype = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    dims = " ".join(f"{d}," for d in spec.shape).rstrip(",") or "1"
    extra = " reshape: { shape: [ ] }" if not spec.shape else ""
    return (f"  {{ name: {_string(spec.name)} data_type: {datatype} dims: [ {dims} ]{extra}"
            f"{' optional: true' if optional else ''} }}")


def _string(value: str) -> str:
    return json.dumps(value)  # a protobuf text-format string literal: JSON's escaping is a subset that parses


def config_pbtxt(entry: ModelEntry, label: WeightsLabel, kind: str,
                 config_overrides: dict[str, Any] | None = None) -> str:
    """The model's ``config.pbtxt`` (protobuf text format of Triton's ModelConfig). On GPU instances an entry's
    tuned ``serving.gpu`` batching and workers replace the CPU ones, as in the ``.mar``'s model-config.yaml."""
    cfg = entry.serving
    tuned = cfg.gpu if kind == "KIND_GPU" else None
    batch_size = tuned.batch_size if tuned else cfg.batch_size
    delay_ms = tuned.max_batch_delay_ms if tuned else cfg.max_batch_delay_ms
    instances = tuned.workers if tuned else cfg.max_workers
    preferred_sizes = (tuned.batch_size,) if tuned else cfg.preferred_sizes
    lines = [
        f"name: {_string(entry.serve_name)}",
        'backend: "python"',
        f"max_batch_size: {batch_size}",
        "input [",
        ",\n".join(_tensor(spec, optional=True) for spec in input_specs(entry)),
        "]",
        "output [",
        ",\n".join(_tensor(spec) for spec in output_specs(entry)),
        "]",
    ]
    if batch_size > 1:
        preferred = " ".join(f"{size}," for size in preferred_sizes).rstrip(",")
        lines += ["dynamic_batching {",
                  f"  preferred_batch_size: [ {preferred} ]" if preferred else "",
                  f"  max_queue_delay_microseconds: {delay_ms * 1000}",
                  "}"]
    lines += [f"instance_group [ {{ count: {instances} kind: {kind} }} ]"]
    parameters = {
        "zoo_model": entry.name,
        "zoo_handler": entry.handler,
        TRITON_ZOO_META_PARAMETER: json.dumps(archive_meta(entry, label, config_overrides), separators=(",", ":")),
    }
    lines += ["parameters ["]
    lines += [",\n".join(f"  {{ key: {_string(k)} value: {{ string_value: {_string(v)} }} }}"
                         for k, v in parameters.items())]
    lines += ["]"]
    return "\n".join(line for line in lines if line) + "\n"


def read_model_meta(repository: str | Path, entry: ModelEntry) -> dict | None:
    """The ``zoo_model.json`` of the entry's built model (None when it is not built), as `read_archive_meta`."""
    path = Path(repository) / entry.serve_name / triton_version(entry) / ARCHIVE_META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_triton_model(
    entry: ModelEntry,
    repository: str | Path,
    weights_path: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    gpu: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Path, WeightsLabel]:
    """Write ``<repository>/<entry.serve_name>/`` (replacing an older one whole) and return it and its label.

    ``config_overrides``: as for ``zoo.mar.build_mar`` (e.g. a smaller test size), recorded in the model's
    ``zoo_model.json`` where the same handler base reads them on either engine."""
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    state, label = resolve_weights(entry, weights_path, random_weights, seed)
    with tempfile.TemporaryDirectory(prefix=f".{entry.serve_name}-", dir=repository) as tmp:
        staged = Path(tmp) / entry.serve_name
        version_dir = staged / triton_version(entry)
        version_dir.mkdir(parents=True)
        save_zoo_weights(state, version_dir / ARCHIVE_WEIGHTS_FILE, label)
        del state
        stage_model_files(entry, version_dir, label, extra_modules=(ADAPTER_MODULE,),
                          config_overrides=config_overrides)
        (version_dir / "model.py").write_text(MODEL_PY)
        (staged / CONFIG_FILE).write_text(config_pbtxt(entry, label, instance_kind(entry, gpu),
                                                              config_overrides))
        # publish whole: a running Triton or a concurrent build never sees a half-written model folder
        target = repository / entry.serve_name
        if target.exists():
            os.replace(target, Path(tmp) / "previous")
        os.replace(staged, target)
        shutil.rmtree(Path(tmp) / "previous", ignore_errors=True)
    return target, label
