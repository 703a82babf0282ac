"""How a serving worker runs its model: precision, memory format, compilation, shape buckets, warm-up.

The entry's ``ServingConfig`` declares the GPU settings (bf16 + channels_last for the models where the measured
difference from fp32 is stated in the entry's ``accuracy``); a CPU worker keeps fp32, eager and PIL
preprocessing, the settings its golden tests pin. Environment variables override either, for a deployment or a
test: ``ZOO_PRECISION`` (fp32/bf16/fp16), ``ZOO_CHANNELS_LAST``, ``ZOO_COMPILE``, ``ZOO_DEVICE_PREPROCESS`` and
``ZOO_WARMUP`` (1/0; warm-up defaults to on for CUDA, off for CPU, where one pass of a large model costs seconds
and nothing is compiled).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo._registry import PRECISIONS, ServingConfig

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile mode on CUDA: CUDA graphs per (bucket, batch bucket) shape, replayed without launch overhead.
COMPILE_MODE = "max-autotune"
TRUE_WORDS = ("1", "true", "yes", "on")
# The ``measured_by`` of GPU serving settings no H100 run has chosen yet.
GPU_NOT_MEASURED = (
    "chosen before any GPU run (none was lent to the task that set it) from the issue's H100 reference figures; "
    "bench/gpu_suite.py prints the batch size its sweep measures best: replace this with that run"
)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    return default if not value else value in TRUE_WORDS


@dataclass(frozen=True)
class Runtime:
    """The effective run settings of one worker (from the entry's serving config, the device and the env)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device_preprocess: bool = False
    warmup: bool = False
    buckets: tuple[tuple[int, int], ...] = ()
    batch_buckets: tuple[int, ...] = ()
    max_batch: int = 1  # TorchServe's batch size for this worker

    @classmethod
    def for_serving(cls, serving: ServingConfig, device: torch.device,
                    env: Mapping[str, str] | None = None) -> Runtime:
        env = os.environ if env is None else env
        cuda = device.type == "cuda"
        precision = env.get("ZOO_PRECISION", "").strip().lower() or (serving.precision if cuda else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"ZOO_PRECISION must be one of {PRECISIONS}, not {precision!r}")
        return cls(
            device=device,
            precision=precision,
            channels_last=_flag(env, "ZOO_CHANNELS_LAST", serving.channels_last and cuda),
            compile=_flag(env, "ZOO_COMPILE", serving.compile and cuda),
            device_preprocess=_flag(env, "ZOO_DEVICE_PREPROCESS", serving.device_preprocess and cuda),
            warmup=_flag(env, "ZOO_WARMUP", cuda),
            buckets=tuple(tuple(b) for b in serving.buckets),  # type: ignore[misc]
            batch_buckets=tuple(serving.batch_buckets),
            max_batch=serving.gpu.batch_size if cuda and serving.gpu else serving.batch_size,
        )

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]

    @property
    def is_default(self) -> bool:
        """fp32, eager, contiguous: the model is served exactly as built."""
        return self.precision == "fp32" and not self.channels_last and not self.compile

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module a worker calls: the model itself when fp32/eager/contiguous, else a ``ServedModel``."""
        if self.is_default:
            return model
        return ServedModel(model, self)

    def batch_bucket(self, size: int) -> int:
        """The batch size a batch of ``size`` is padded to (itself when no bucket holds it)."""
        return next((b for b in self.batch_buckets if b >= size), size)


class ServedModel(nn.Module):
    """A model run under its worker's precision and memory format, compiled where asked.

    Attributes not found here are looked up on the wrapped model, so handlers keep reading its fields.
    """

    def __init__(self, model: nn.Module, runtime: Runtime) -> None:
        super().__init__()
        if runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.inner = model
        self.runtime = runtime
        self._call = torch.compile(model, mode=COMPILE_MODE) if runtime.compile else model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.runtime.channels_last:
            args = tuple(_channels_last(a) for a in args)
            kwargs = {k: _channels_last(v) for k, v in kwargs.items()}
        with self.runtime.autocast():
            return self._call(*args, **kwargs)


def _channels_last(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


# --- shape buckets ---------------------------------------------------------------------------------------
def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pick_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]], multiple: int = 32) -> tuple[int, int]:
    """The smallest-area bucket holding ``height x width``; with none, the size rounded up to ``multiple``."""
    fitting = [b for b in buckets if b[0] >= height and b[1] >= width]
    if fitting:
        return min(fitting, key=lambda b: (b[0] * b[1], b))
    return round_up(height, multiple), round_up(width, multiple)


def group_by_bucket(sizes: Sequence[tuple[int, int]], buckets: Sequence[tuple[int, int]],
                    multiple: int = 32) -> dict[tuple[int, int], list[int]]:
    """Item indices grouped by the bucket each ``(height, width)`` falls in, in first-seen order.

    With no buckets declared, every item goes into one group padded to the batch's largest size (the official
    batching), so a worker without buckets pads as before.
    """
    if not buckets:
        return {(max(h for h, _ in sizes), max(w for _, w in sizes)): list(range(len(sizes)))}
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (h, w) in enumerate(sizes):
        groups.setdefault(pick_bucket(h, w, buckets, multiple), []).append(index)
    return groups


def warmup_batches(runtime: Runtime) -> list[int]:
    """Every batch size a worker can run: its batch buckets up to the first holding its largest batch."""
    sizes = [b for b in runtime.batch_buckets if b < runtime.max_batch]
    return [*sizes, runtime.batch_bucket(runtime.max_batch)]


def warmup_shapes(runtime: Runtime) -> Iterator[tuple[int, tuple[int, int]]]:
    """Every (batch size, bucket) a worker can meet: what warm-up runs so no user request compiles a graph."""
    for bucket in runtime.buckets:
        for batch in warmup_batches(runtime):
            yield batch, bucket
