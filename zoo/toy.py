"""`toy_echo`: a tiny TEST/DEMO-ONLY model for exercising the serving path, not a research model.

It reports an image's size and per-channel mean (times a learnable 3-vector, random by design), so the
gateway's protocol, auth, limit, metrics and overhead tests and benchmarks run in milliseconds instead of
waiting on a real network. Never part of `zoo serve`'s default set (``default_serve=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.outputs import DETECTION_OUTPUTS
from zoo.tensors import TensorSpec


class ToyEcho(nn.Module):
    """(N, 3) channel means -> (N, 3) means scaled per channel."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, means: torch.Tensor) -> torch.Tensor:
        return means * self.scale


TOY_ECHO = register(
    ModelEntry(
        name="toy_echo.seeded",
        task="test-echo",
        builder=ToyEcho,
        config={"channels": 3},
        handler="handlers.toy_handler",
        inputs={"image": "image bytes (raw, multipart, or JSON base64); optional sleep_ms for tests"},
        outputs=(
            TensorSpec("width", "INT32", (1,), "image width in pixels"),
            TensorSpec("height", "INT32", (1,), "image height in pixels"),
            TensorSpec("mean", "FP32", (3,), "per-channel mean in [0, 1], times the model's (random) scale"),
            TensorSpec("bytes", "INT64", (1,), "size of the uploaded image in bytes"),
            TensorSpec("fields", "BYTES", (-1,), "every request field name that reached the handler (tests)"),
        ),
        weights=WeightsSource(
            upstream_url="none: test-only model, always built with random weights",
            description="test/demo-only toy; its weights mean nothing",
            random_only=True,
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


class ToyDetect(nn.Module):
    """(N, 4) boxes in [0, 1] (x1, y1, x2, y2) -> the boxes clamped to the image, and one score per box."""

    def __init__(self) -> None:
        super().__init__()
        self.score_logit = nn.Parameter(torch.full((1,), 2.0))  # fixed init: "random" weights keep it

    def forward(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return boxes.clamp(0.0, 1.0), torch.sigmoid(self.score_logit).expand(boxes.shape[0])


TOY_DETECT = register(
    ModelEntry(
        name="toy_detect.seeded",
        task="test-detection",
        builder=ToyDetect,
        config={},
        handler="handlers.toy_detect_handler",
        inputs={"image": "image bytes (raw, multipart, or JSON base64); optional threshold, top_k like DETR"},
        outputs=DETECTION_OUTPUTS,
        weights=WeightsSource(
            upstream_url="none: test-only model, always built with random weights",
            description="test/demo-only toy; its weights mean nothing",
            random_only=True,
        ),
        license="Apache-2.0",
        paper="https://arxiv.org/abs/2005.10420",  # Towards Streaming Perception: what streams are for
        serving=ServingConfig(batch_size=1, max_batch_delay_ms=0, min_workers=1, max_workers=1,
                              response_timeout_s=60, device_type="cpu"),
        default_serve=False,
        description="TEST/DEMO ONLY: a detector in DETR's answer format that runs in milliseconds, for stream "
                    "sessions and observability tests",
    )
)
