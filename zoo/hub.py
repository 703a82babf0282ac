"""Hugging Face Hub access for pinned weights (all hub I/O lives here)."""

from __future__ import annotations

from pathlib import Path

from zoo._registry import ModelEntry


def find_cached(entry: ModelEntry) -> Path | None:
    """The pinned weights file if it is already in the local HF cache (no network)."""
    src = entry.weights
    if not (src.hf_repo and src.filename):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(src.hf_repo, src.filename, revision=src.revision)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    return None
