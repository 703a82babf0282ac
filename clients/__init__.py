"""Python SDK of zoo-gateway: `ZooClient` / `AsyncZooClient`, typed results and errors.

See docs/quickstart.md for a tour and `clients.client` for the design (task routes over HTTP, raw OIP
through tritonclient's codec, retries only on 503 / connection refused).
"""

from clients.client import AsyncZooClient, ZooClient
from clients.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServerError,
    UnavailableError,
    ZooConnectionError,
    ZooError,
    ZooTimeoutError,
)
from clients.streams import Detection as StreamDetection
from clients.streams import FrameResult, TooManyStreamsError
from clients.transport import RetryPolicy
from clients.types import (
    BoxSample,
    DeepfakeResult,
    Detection,
    DetectionResult,
    InferResult,
    ModelInfo,
    ModelMetadata,
    ModelStatus,
    QualityResult,
    Track,
)

__all__ = [
    "AsyncZooClient", "ZooClient", "RetryPolicy",
    "AuthenticationError", "DeadlineExceededError", "InvalidInputError", "NotFoundError", "PayloadTooLargeError",
    "PermissionDeniedError", "ServerError", "UnavailableError", "ZooConnectionError", "ZooError",
    "ZooTimeoutError", "TooManyStreamsError",
    "BoxSample", "DeepfakeResult", "Detection", "DetectionResult", "FrameResult", "InferResult", "ModelInfo",
    "ModelMetadata", "ModelStatus", "QualityResult", "StreamDetection", "Track",
]
