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
    ClassFraction,
    DeepfakeResult,
    Detection,
    DetectionResult,
    DisparityResult,
    InferResult,
    Instance,
    InstanceSegmentationResult,
    ModelInfo,
    ModelMetadata,
    ModelStatus,
    QualityResult,
    SemanticSegmentationResult,
    Track,
    TranslationResult,
)

__all__ = [
    "AsyncZooClient", "ZooClient", "RetryPolicy",
    "AuthenticationError", "DeadlineExceededError", "InvalidInputError", "NotFoundError", "PayloadTooLargeError",
    "PermissionDeniedError", "ServerError", "UnavailableError", "ZooConnectionError", "ZooError",
    "ZooTimeoutError", "TooManyStreamsError",
    "BoxSample", "ClassFraction", "DeepfakeResult", "Detection", "DetectionResult", "DisparityResult", "FrameResult",
    "InferResult", "Instance", "InstanceSegmentationResult", "ModelInfo", "ModelMetadata", "ModelStatus",
    "QualityResult", "SemanticSegmentationResult", "StreamDetection", "Track", "TranslationResult",
]
