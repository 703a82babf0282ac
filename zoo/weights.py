"""Resolve, convert and strictly load model weights.

Real weights come from a local file (``--weights``), else what ``zoo pull`` fetched and verified: the
registry's pinned Hub file, the authors' URL, a file handed to ``zoo pull --file``, or a ``--repo`` override
(``zoo.hub.find_pulled`` checks each again, against its sha256 pin or the trust-on-first-use lock).
Seeded random weights exist only for smoke runs on machines that cannot download, and are always labelled
so: the label travels into the ``.mar``, ``zoo list`` and every response's model metadata.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from zoo import hub
from zoo._registry import ModelEntry
from zoo.contract import (  # re-exported: callers have long imported these from zoo.weights
    RANDOM_WEIGHTS_KIND,
    ZOO_LAYOUT,
    ZOO_LAYOUT_KEY,
    WeightsError,
    WeightsLabel,
    sha256_of,
)

# Plain-data classes that training checkpoints pickle beside their tensors and that are safe to rebuild:
# timm's CheckpointSaver stores the training script's `argparse.Namespace` under "args".
CHECKPOINT_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file as a plain mapping (safetensors, or a torch pickle loaded safely)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    if path.suffix == ".npz":  # TF-exported weights (e.g. BiT): arrays by variable name, never pickles
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name: torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in arrays.files}
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise WeightsError(f"cannot read npz checkpoint {path}: {exc}") from exc
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allow = safe_globals(list(CHECKPOINT_SAFE_GLOBALS)) if safe_globals else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc


def convert_to_zoo(entry: ModelEntry, checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map an upstream checkpoint (official or Hub layout) to the zoo layout with the entry's converter."""
    if not entry.weights.converter:
        return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    module_name, func_name = entry.weights.converter.split(":")
    converter = getattr(importlib.import_module(module_name), func_name)
    return converter(checkpoint)


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load every tensor or fail, naming the keys that did not fit (never a silent partial load)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        def _fmt(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_fmt(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(state_dict[k].shape)}!={tuple(expected[k].shape)}" for k in mismatched]
            parts.append(f"{len(mismatched)} shape mismatches: {_fmt(shapes)}")
        raise WeightsError(f"{what} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def random_state_dict(entry: ModelEntry, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random parameters for smoke runs: deterministic, and labelled by the caller."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = entry.build()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def missing_weights_message(entry: ModelEntry) -> str:
    """Why there are no weights, naming the source, how it is verified and the command that fetches it."""
    src = entry.weights
    if src.source_kind == "hub":
        where = f"the Hugging Face Hub repo {src.hf_repo!r} (file {src.filename!r})"
        fetch = f"Run `zoo pull {entry.name}` (set HF_ENDPOINT for a mirror)"
    elif src.manual_download:
        where = f"{src.upstream_url}, which only a browser can open"
        fetch = (f"Download {src.upstream_filename or 'the checkpoint'} there and run "
                 f"`zoo pull {entry.name} --file PATH`")
    elif src.source_kind == "upstream":
        where = src.upstream_url
        fetch = f"Run `zoo pull {entry.name}` (it downloads and verifies the file)"
    else:
        where, fetch = "nowhere: it is a random-only test model", "Build it with `--random-weights`"
    return (
        f"no weights for {entry.name!r}: they come from {where} (verified by "
        f"{src.verification_summary()}). {fetch}, or `zoo pull {entry.name} --repo ORG/NAME` for a zoo "
        f"export on your Hub, or pass a local checkpoint with "
        f"`--weights {entry.name}=/path/to/checkpoint` (official or hub layout; see `zoo convert --help`), "
        f"or `--random-weights` for an explicitly labelled untrained smoke run."
    )


def resolve_weights(
    entry: ModelEntry,
    weights_path: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], WeightsLabel]:
    """Return zoo-layout weights and their label, in order: local file, pulled file, random (if asked)."""
    if weights_path is not None:
        path = Path(weights_path)
        meta = zoo_layout_metadata(path)
        checkpoint = read_checkpoint(path)
        state = dict(checkpoint) if meta is not None else convert_to_zoo(entry, checkpoint)
        sha = sha256_of(path)
        if meta is not None and meta.get("kind") == RANDOM_WEIGHTS_KIND:  # random stays labelled random
            seed = int(meta["seed"]) if str(meta.get("seed", "")).isdigit() else None
            return state, WeightsLabel(RANDOM_WEIGHTS_KIND, f"{path} (random weights file)", sha, seed)
        return state, WeightsLabel("local-file", str(path), sha)
    pulled = hub.find_pulled(entry)  # verified against its sha256 pin or lock; see zoo/hub.py
    if pulled is not None:
        checkpoint = read_checkpoint(pulled.path)
        state = dict(checkpoint) if pulled.layout == hub.ZOO_LAYOUT else convert_to_zoo(entry, checkpoint)
        return state, pulled.label
    if random_weights:
        return random_state_dict(entry, seed), WeightsLabel(RANDOM_WEIGHTS_KIND, "torch.manual_seed", None, seed)
    raise WeightsError(missing_weights_message(entry))


def save_zoo_weights(
    state: dict[str, torch.Tensor], path: str | Path, label: WeightsLabel,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write weights as safetensors, with the label and ``layout: zoo`` in the file's metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: str(v) for k, v in label.as_dict().items() if v is not None}
    meta.update({ZOO_LAYOUT_KEY: ZOO_LAYOUT, **{k: str(v) for k, v in (extra_metadata or {}).items()}})
    save_safetensors(tensors, str(path), metadata=meta)
    return path


def zoo_layout_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a safetensors file written in the zoo layout (by the zoo), else None."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file: read_checkpoint will say so
        return None
    return meta if meta.get(ZOO_LAYOUT_KEY) == ZOO_LAYOUT else None
