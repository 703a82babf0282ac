"""`toy_echo`: a tiny TEST/DEMO-ONLY model for exercising the serving path, not a research model.

It reports an image's size and per-channel mean (times a learnable 3-vector, random by design), so the
gateway's protocol, auth, limit, metrics and overhead tests and benchmarks run in milliseconds instead of
waiting on a real network. Never part of `zoo serve`'s default set (``default_serve=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register


class ToyEcho(nn.Module):
    """(N, 3) channel means -> (N, 3) means scaled per channel."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, means: torch.Tensor) -> torch.Tensor:
        return means * self.scale


TOY_ECHO = register(
    ModelEntry(
        name="toy_echo",
        task="test-echo",
        builder=ToyEcho,
        config={"channels": 3},
        handler="handlers.toy_handler",
        inputs={"image": "image bytes (raw, multipart, or JSON base64); optional sleep_ms for tests"},
        outputs={
            "width": "image width in pixels",
            "height": "image height in pixels",
            "mean": "per-channel mean in [0, 1], times the model's (random) scale",
        },
        weights=WeightsSource(
            upstream_url="none: test-only model, always built with random weights",
            description="test/demo-only toy; its weights mean nothing",
        ),
        license="Apache-2.0",
        paper="https://github.com/kserve/open-inference-protocol",
        # one request per batch: latency benchmarks measure the serving path, not batching delays
        serving=ServingConfig(batch_size=1, max_batch_delay_ms=0, min_workers=1, max_workers=1,
                              response_timeout_s=60, device_type="cpu"),
        default_serve=False,
        description="TEST/DEMO ONLY: image size and channel means, for serving-path tests and benchmarks",
    )
)
