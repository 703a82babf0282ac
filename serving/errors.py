"""Gateway errors and the ONE table that maps them to HTTP statuses and gRPC codes.

Every layer raises these (protocol parsing, routing, backends); only the front-ends translate them, with
`http_status()` / `grpc_code()` below, so REST and gRPC always agree. REST error bodies are
``{"error": "<message>"}`` (what tritonclient reads); gRPC errors carry the message as status details.

Choices worth knowing:
- PayloadTooLarge is 413 / RESOURCE_EXHAUSTED: gRPC itself answers an over-size message with
  RESOURCE_EXHAUSTED, so a client sees the same code whichever limit (gateway or transport) fired.
- BackendUnavailable (TorchServe down, model has no ready worker) is 503 / UNAVAILABLE with a Retry-After
  (REST header; gRPC trailing metadata ``retry-after``), so clients and load balancers back off and retry.
- Overloaded (the model's queue in the gateway is full: load shedding) is 503 + Retry-After too: the
  server, not this client, is over its budget. RequestTimeout (408) is a client that did not send its
  request in time; ClientGone (499) a client that went away mid-request (counted, never logged as an error).
- A handler's own status (``context.set_response_status(400, msg)``) is mapped back with
  `error_for_status`, keeping the handler's message: 400 from a handler is 400 / INVALID_ARGUMENT here.
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """Base of every error the gateway answers with. `message` is what the client sees."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return http_status(self)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return grpc_code(self)

    @property
    def kind(self) -> str:
        """Short label for metrics and logs, e.g. ``invalid_input``."""
        row = _row(self)
        return row[2] if row else "handler_status"


class InvalidInput(GatewayError):
    """The request is malformed: wrong shape, datatype, size, JSON, missing input ..."""


class Unauthenticated(GatewayError):
    """No API key, or one the gateway does not know."""


class Forbidden(GatewayError):
    """A known API key that is not allowed to use this model."""


class ModelNotFound(GatewayError):
    """No such model (or version) behind the gateway."""


class PayloadTooLarge(GatewayError):
    """The request body is over the configured limit."""


class DeadlineExceeded(GatewayError):
    """The per-request deadline passed before the backend answered."""


class BackendUnavailable(GatewayError):
    """The backend cannot take the request now (down, restarting, model not ready): retry later."""

    def __init__(self, message: str, *, retry_after_s: int | None = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class RequestTimeout(GatewayError):
    """The client did not send its request (headers or body) within the read timeout."""


class ClientGone(GatewayError):
    """The client went away before its request was read (a disconnect mid-upload): nobody reads the answer."""


class Overloaded(BackendUnavailable):
    """The model's queue in the gateway is full (load shedding): retry later."""


class BackendError(GatewayError):
    """The backend failed on a valid request (a bug or crash behind the gateway)."""


class HandlerStatusError(GatewayError):
    """A handler answered with an HTTP status that no class above stands for (e.g. 409, 422, 429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# The table: exception class -> (HTTP status, gRPC code, metrics label). Nothing else decides these.
ERROR_TABLE: dict[type[GatewayError], tuple[int, grpc.StatusCode, str]] = {
    InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
    Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    Forbidden: (403, grpc.StatusCode.PERMISSION_DENIED, "forbidden"),
    ModelNotFound: (404, grpc.StatusCode.NOT_FOUND, "model_not_found"),
    RequestTimeout: (408, grpc.StatusCode.DEADLINE_EXCEEDED, "request_timeout"),
    PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large"),
    BackendError: (500, grpc.StatusCode.INTERNAL, "backend_error"),
    ClientGone: (499, grpc.StatusCode.CANCELLED, "client_gone"),
    BackendUnavailable: (503, grpc.StatusCode.UNAVAILABLE, "backend_unavailable"),
    Overloaded: (503, grpc.StatusCode.UNAVAILABLE, "overloaded"),
    DeadlineExceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded"),
}
_BY_STATUS: dict[int, type[GatewayError]] = {}
for _cls, (_status, _, _) in ERROR_TABLE.items():
    _BY_STATUS.setdefault(_status, _cls)  # the first class of a status stands for it (503: BackendUnavailable)

# gRPC codes for handler statuses outside the table (same choices as TorchServe's own HTTP->gRPC map).
_EXTRA_GRPC = {
    409: grpc.StatusCode.ABORTED,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
}


def _row(exc: GatewayError) -> tuple[int, grpc.StatusCode, str] | None:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def http_status(exc: BaseException) -> int:
    if isinstance(exc, HandlerStatusError):
        return exc.status
    row = _row(exc) if isinstance(exc, GatewayError) else None
    return row[0] if row else 500


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, HandlerStatusError):
        if exc.status in _EXTRA_GRPC:
            return _EXTRA_GRPC[exc.status]
        return grpc.StatusCode.FAILED_PRECONDITION if exc.status < 500 else grpc.StatusCode.INTERNAL
    row = _row(exc) if isinstance(exc, GatewayError) else None
    return row[1] if row else grpc.StatusCode.INTERNAL


def error_for_status(status: int, message: str) -> GatewayError:
    """The gateway error for an HTTP status a handler (or TorchServe) answered with."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(message)
    if 400 <= status < 600:
        return HandlerStatusError(status, message)
    return BackendError(f"unexpected status {status}: {message}")


def as_gateway_error(exc: BaseException) -> GatewayError:
    """Any exception as a GatewayError (unexpected ones become BackendError, message kept short)."""
    if isinstance(exc, GatewayError):
        return exc
    return BackendError(f"internal error: {type(exc).__name__}: {exc}")
