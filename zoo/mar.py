"""Build TorchServe ``.mar`` archives from registry entries.

An archive is self-contained: labelled zoo-layout weights (safetensors), the ``zoo``/``handlers`` source
(model classes travel as extra files, never inside the handler module), ``zoo_model.json`` (entry summary
plus weights label) and ``model-config.yaml`` with the entry's batching and worker settings.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import yaml
from tqdm import tqdm

from zoo._registry import MODEL_MODULES, ModelEntry
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE
from zoo.weights import WeightsLabel, resolve_weights, save_zoo_weights

# The folder holding the `zoo` and `handlers` packages: a checkout or site-packages.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("zoo", "handlers")


def model_config_yaml(entry: ModelEntry, gpu: bool | None = None) -> dict[str, Any]:
    """TorchServe per-model config (batching, workers, timeouts, device).

    On a GPU host (``gpu`` None: this host has CUDA) an entry's tuned ``serving.gpu`` batching and workers
    replace the CPU ones.
    """
    cfg = entry.serving
    on_gpu = torch.cuda.is_available() if gpu is None else gpu
    tuned = cfg.gpu if on_gpu and cfg.device_type != "cpu" else None
    workers = (tuned.workers, tuned.workers) if tuned else (cfg.min_workers, cfg.max_workers)
    out: dict[str, Any] = {
        "minWorkers": workers[0],
        "maxWorkers": workers[1],
        "batchSize": tuned.batch_size if tuned else cfg.batch_size,
        "maxBatchDelay": tuned.max_batch_delay_ms if tuned else cfg.max_batch_delay_ms,
        "responseTimeout": cfg.response_timeout_s,
    }
    if cfg.device_type in ("gpu", "cpu"):
        out["deviceType"] = cfg.device_type
    out.update(cfg.extra)
    return out


def _module_file(module: str) -> Path | None:
    base = SOURCE_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every absolute name ``path`` (module ``module``) imports anywhere in its body, module level or inside
    functions: ``from a.b import c`` gives ``a.b`` and ``a.b.c``; relative imports are resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                prefix = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def archive_sources(entry: ModelEntry, extra_modules: tuple[str, ...] = ()) -> list[Path]:
    """The source files an archive needs: the import closure of its handler (and of ``extra_modules``, e.g.
    the Triton adapter) and of the registry's model modules (the handler looks its entry up in the registry,
    which imports them all), with their packages' ``__init__.py``. The CLI, hub client, exporter and archive
    builder stay out of archives."""
    todo = [entry.handler, *extra_modules, "zoo._registry", *MODEL_MODULES]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:  # `from zoo import name` where name is not a module
            continue
        files.add(path)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__
        todo += sorted(n for n in imported_names(path, module) - seen if n.split(".")[0] in SOURCE_PACKAGES)
    return sorted(files)


def stage_model_files(entry: ModelEntry, dest: Path, label: WeightsLabel, extra_modules: tuple[str, ...] = (),
                      config_overrides: dict[str, Any] | None = None) -> None:
    """Everything a serving engine's model folder carries besides the weights: the source closure, the
    entry's assets and ``zoo_model.json`` (shared by the ``.mar`` and the Triton model repository)."""
    for path in archive_sources(entry, extra_modules):
        target = dest / path.relative_to(SOURCE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name, path in collect_assets(entry).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / name)
    (dest / ARCHIVE_META_FILE).write_text(json.dumps(archive_meta(entry, label, config_overrides), indent=2))


def collect_assets(entry: ModelEntry) -> dict[str, Path]:
    """{archive name: local file} from the entry's ``assets`` callables (see ``ModelEntry.assets``)."""

    files: dict[str, Path] = {}
    for ref in entry.assets:
        module_name, _, func_name = ref.partition(":")
        for name, path in getattr(importlib.import_module(module_name), func_name)().items():
            parts = PurePosixPath(name).parts
            bad_name = PurePosixPath(name).is_absolute() or ".." in parts or not parts
            if bad_name or parts[0] in SOURCE_PACKAGES or name == ARCHIVE_META_FILE \
                    or not Path(path).is_file():
                raise ValueError(f"{ref} gave an unusable asset {name!r} -> {path}")
            files[name] = Path(path)
    return files


def archive_meta(entry: ModelEntry, label: WeightsLabel,
                 config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {**entry.summary(), "weights": label.as_dict()}
    if config_overrides:
        meta["config_overrides"] = dict(config_overrides)
    return meta


def build_mar(
    entry: ModelEntry,
    store: str | Path,
    weights_path: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    progress: bool = True,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Path, WeightsLabel]:
    """Write ``<store>/<entry.serve_name>.mar`` and return its path and weights label.

    ``config_overrides``: entry config keys the served model uses instead of the entry's (e.g. a smaller test
    size for a CPU test); recorded in the archive's metadata, read by the handler base (``ZooHandler.config``).
    They must not change the weights' shapes."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    steps = ["resolve weights", "write safetensors", "stage sources", "archive"]
    with tempfile.TemporaryDirectory(prefix=f"zoo-mar-{entry.serve_name}-") as tmp, tqdm(
        total=len(steps), desc=f"build {entry.serve_name}", unit="step", disable=not progress
    ) as bar:
        tmp_path = Path(tmp)
        bar.set_postfix_str(steps[0])
        state, label = resolve_weights(entry, weights_path, random_weights, seed)
        bar.update()

        bar.set_postfix_str(steps[1])
        weights_file = save_zoo_weights(state, tmp_path / ARCHIVE_WEIGHTS_FILE, label)
        del state
        bar.update()

        bar.set_postfix_str(steps[2])
        extra = tmp_path / "extra"
        stage_model_files(entry, extra, label, config_overrides=config_overrides)
        config_file = tmp_path / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(model_config_yaml(entry), sort_keys=False))
        handler_file = SOURCE_ROOT / (entry.handler.replace(".", "/") + ".py")
        bar.update()

        bar.set_postfix_str(steps[3])
        logging.getLogger().setLevel(logging.WARNING)
        # torch-model-archiver stages files in <tempdir>/<model name>: give it a private tempdir so two
        # builds of the same model (parallel tests, two users) cannot delete each other's staging folder.
        previous_tempdir = tempfile.tempdir
        tempfile.tempdir = str(tmp_path)
        try:
            generate_model_archive(
                ModelArchiverConfig(
                    model_name=entry.serve_name,
                    handler=str(handler_file),
                    version=entry.version,
                    serialized_file=str(weights_file),
                    extra_files=str(extra),
                    export_path=str(tmp_path),
                    config_file=str(config_file),
                    force=True,
                    # weights are float tensors that deflate by a few per cent at best: stored, a large model's
                    # archive builds (and TorchServe unpacks it) several times faster
                    archive_format="zip-store",
                )
            )
        finally:
            tempfile.tempdir = previous_tempdir
        # atomic publish: a running TorchServe or a concurrent build never sees a half-written archive
        os.replace(tmp_path / f"{entry.serve_name}.mar", store / f"{entry.serve_name}.mar")
        bar.update()
    return store / f"{entry.serve_name}.mar", label


def read_archive_meta(mar_path: str | Path) -> dict[str, Any]:
    """The zoo metadata stored in a built archive (used by `zoo list` and `zoo serve`)."""
    with zipfile.ZipFile(mar_path) as zf:
        return json.loads(zf.read(ARCHIVE_META_FILE))
