"""The zoo's torch-free contract: file names inside archives and exports, weights labels and weights errors.

Archives (``zoo.mar``), exports (``zoo.publish``), pulled Hub files (``zoo.hub``), the handlers that load
archives and the gateway that reports what it serves all agree on these names. Keeping them here, with no
torch and no project imports, lets every layer import them without pulling in models or forming cycles.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# --- inside a .mar archive ------------------------------------------------------------------------------
ARCHIVE_META_FILE = "zoo_model.json"  # registry entry summary + weights label
ARCHIVE_WEIGHTS_FILE = "weights.safetensors"  # zoo-layout weights with the label in their metadata
BATCH_SIZE_HEADER = "X-Zoo-Batch-Size"  # how many requests the worker batched with this one

# --- a Triton model repository (`zoo build --engine triton`) ------------------------------------------------
TRITON_ZOO_META_PARAMETER = "zoo_meta"  # config.pbtxt parameter: the archive's zoo_model.json, compact JSON

# --- an exported Hub repository (`zoo export`) ------------------------------------------------------------
EXPORT_WEIGHTS_FILE = "model.safetensors"
EXPORT_CONFIG_FILE = "config.json"
EXPORT_CARD_FILE = "README.md"

# --- weights labels -------------------------------------------------------------------------------------
RANDOM_WEIGHTS_KIND = "random-seeded"
ZOO_LAYOUT = "zoo"  # safetensors metadata `layout: zoo`: already the zoo layout, no converter
ZOO_LAYOUT_KEY = "layout"
UPSTREAM_LAYOUT = "upstream"  # a file in the official layout, converted when loaded


class WeightsError(RuntimeError):
    """Weights are missing, corrupt, or do not fit the architecture."""


@dataclass(frozen=True)
class WeightsLabel:
    """What the served weights are; shown to users so random weights can never pass for real ones."""

    kind: str  # "pretrained" | "local-file" | "random-seeded"
    source: str
    sha256: str | None = None
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == RANDOM_WEIGHTS_KIND

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        if self.is_random:
            return f"RANDOM (seed {self.seed}, not trained)"
        return f"{self.kind}: {self.source}"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
