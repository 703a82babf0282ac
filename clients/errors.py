"""Errors raised by the zoo client: one class per kind of failure, each carrying the server's own message.

The gateway answers errors as ``{"error": "<message>"}`` with an HTTP status (see serving/errors.py); the
client raises the matching `ZooError` subclass with ``status`` (the HTTP status, None when no answer came
back), ``code`` (the gRPC-style name, e.g. ``UNAVAILABLE``), ``message`` (the server's text, verbatim),
``retry_after_s`` (from ``Retry-After``) and ``attempts`` (how many tries were made before giving up).
Only `UnavailableError` is retryable (503, or a connection refused before the request was sent).
"""

from __future__ import annotations


class ZooError(Exception):
    """Base of every client error."""

    code = "UNKNOWN"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 attempts: int = 1, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.attempts = attempts
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.status} {self.code})" if self.status is not None else f" ({self.code})"
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self.message}{where}{tries}"


class InvalidInputError(ZooError):
    """400: the request was refused as malformed (bad image, bad parameter ...). Never retried."""

    code = "INVALID_ARGUMENT"


class AuthenticationError(ZooError):
    """401: no API key, or one the gateway does not know."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(ZooError):
    """403: the API key may not use this model."""

    code = "PERMISSION_DENIED"


class NotFoundError(ZooError):
    """404: no such model (or version) behind the gateway."""

    code = "NOT_FOUND"


class PayloadTooLargeError(ZooError):
    """413: the input is over a size or duration limit."""

    code = "RESOURCE_EXHAUSTED"


class ServerError(ZooError):
    """500 (or another 5xx that is not retryable): the server failed on a valid request."""

    code = "INTERNAL"


class UnavailableError(ZooError):
    """503, or the gateway refused the connection: retry later (the client does, with backoff)."""

    code = "UNAVAILABLE"
    retryable = True


class DeadlineExceededError(ZooError):
    """504: the server's deadline passed before the model answered."""

    code = "DEADLINE_EXCEEDED"


class ZooTimeoutError(ZooError):
    """The client's own timeout passed. Not retried: the server may still be working on it."""

    code = "DEADLINE_EXCEEDED"


class ZooConnectionError(ZooError):
    """The connection broke after the request was sent. Not retried (the server may have acted on it)."""

    code = "UNKNOWN"


_BY_STATUS: dict[int, type[ZooError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    500: ServerError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


def error_for_status(status: int, message: str, *, retry_after_s: float | None = None,
                     url: str | None = None) -> ZooError:
    """The error for an HTTP status the server answered with (other 4xx -> ZooError, other 5xx -> ServerError)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ZooError
    return cls(message, status=status, retry_after_s=retry_after_s, url=url)
