"""What the dense-output task handlers decode requests into, and how they group a batch.

Kept out of the handler modules because TorchServe loads a handler module only if it defines exactly one class.
A batch is grouped by a key (the padded or network input size): requests in one group run in one forward,
so a batch of N gives what N single requests give.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from zoo.condinst import PreparedImage
from zoo.dnl import Prepared
from zoo.stereo_mono import StereoInput


class Group(NamedTuple):
    """Requests (by index in the batch) that share a key, stacked into one model input."""

    key: Any
    indices: list[int]
    inputs: Any


def group_by(items: Sequence[Any], key: Callable[[Any], Hashable],
             stack: Callable[[list[Any]], Any]) -> list[Group]:
    """Items grouped by ``key`` (first-seen order), each group's items stacked by ``stack``."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return [Group(k, indices, stack([items[i] for i in indices])) for k, indices in groups.items()]


def b64(data: bytes) -> str:
    """Bytes for a JSON answer (PNGs, raw tensors)."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class InstanceRequest(NamedTuple):
    prepared: PreparedImage
    threshold: float


class SemanticRequest(NamedTuple):
    prepared: Prepared


class TranslationRequest(NamedTuple):
    pixels: np.ndarray  # [h, w, 3] uint8: what the generator sees
    fmt: str
    quality: int
    input_size: tuple[int, int]  # (width, height) of the request's image


class StereoRequest(NamedTuple):
    pair: StereoInput
    dtype: str  # "float32" | "float16": how the disparity travels


def tensor_bytes(array: np.ndarray) -> dict[str, Any]:
    """A numeric array for a JSON answer: ``{dtype, shape, data: base64 of its little-endian bytes}``."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": b64(np.ascontiguousarray(little).tobytes())}


def tensor_from_bytes(doc: dict[str, Any]) -> np.ndarray:
    """The inverse of ``tensor_bytes``."""
    dtype = np.dtype(doc["dtype"]).newbyteorder("<")
    return np.frombuffer(unb64(doc["data"]), dtype=dtype).reshape(doc["shape"]).astype(doc["dtype"])


def stack_u8(images: list[np.ndarray]) -> torch.Tensor:
    """Equal-size ``[h, w, 3]`` uint8 images -> ``[n, h, w, 3]``."""
    return torch.from_numpy(np.stack(images))
