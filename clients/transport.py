"""HTTP transport of the zoo client: one request description, a sync sender (urllib) and an async sender
(aiohttp), and ONE retry loop policy shared by both.

Why plain HTTP here and not tritonclient's clients: the task routes (``/v1/models/{m}:predict``) are not OIP,
and retries must honour ``Retry-After``, which tritonclient's clients do not expose. OIP requests are
still encoded and decoded by tritonclient (see `clients.client`); only the bytes travel through here.

Retry rules (`RetryPolicy`): a request is tried again ONLY when the answer is 503 (the gateway's
UNAVAILABLE: backend down, restarting, no ready worker) or the connection was refused before anything was
sent. The wait is exponential (``initial_backoff_s * multiplier**(n-1)``, capped at ``max_backoff_s``, plus
up to ``jitter`` of it at random) but never shorter than the server's ``Retry-After``. A 4xx, a 500, a
504, a client timeout or a connection that broke mid-request is never retried: the request was understood
and refused, or the server may already be working on it.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import random
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clients.errors import (
    UnavailableError,
    ZooConnectionError,
    ZooError,
    ZooTimeoutError,
    error_for_status,
)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how patiently, retryable failures are tried again (``max_attempts=1``: never)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_retry_after_s: float = 120.0  # a larger Retry-After gives up instead of sleeping that long

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1 or self.jitter < 0:
            raise ValueError("backoffs must be >= 0, multiplier >= 1 and jitter >= 0")

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        backoff *= 1.0 + self.jitter * random.random()
        return max(backoff, retry_after_s or 0.0)

    def should_retry(self, error: ZooError, attempt: int) -> bool:
        if not error.retryable or attempt >= self.max_attempts:
            return False
        return error.retry_after_s is None or error.retry_after_s <= self.max_retry_after_s


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class HttpRequest:
    method: str
    path: str  # starting with "/", relative to the client's base URL
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ZooError(f"the server answered {self.status} with a body that is not JSON: "
                           f"{self.body[:200]!r} ({exc})", status=self.status) from None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: HttpResponse, url: str) -> ZooError:
    """The ZooError for a non-2xx answer, with the server's ``{"error": ...}`` message verbatim."""
    message = None
    try:
        doc = json.loads(response.body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            message = doc["error"]
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    if message is None:
        text = response.body.decode("utf-8", "replace").strip()
        message = text[:500] or f"HTTP {response.status} with an empty body"
    return error_for_status(response.status, message, url=url,
                            retry_after_s=parse_retry_after(response.headers.get("retry-after")))


def multipart_body(fields: Mapping[str, bytes | str]) -> tuple[bytes, str]:
    """multipart/form-data: bytes values as file parts, str values as text fields. Returns (body, type)."""
    boundary = f"zoo-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        if '"' in name or "\r" in name or "\n" in name:
            raise ValueError(f"field name {name!r} cannot go in a multipart header")
        if isinstance(value, str):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                         + value.encode("utf-8") + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                         "Content-Type: application/octet-stream\r\n\r\n".encode() + bytes(value) + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- sending ---------------------------------------------------------------------------------------------
def send_sync(base_url: str, request: HttpRequest, timeout_s: float) -> HttpResponse:
    """One HTTP exchange with urllib. Any status comes back as a response; transport failures raise."""
    url = base_url + request.path
    req = urllib.request.Request(url, data=request.body, headers=request.headers, method=request.method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            body = err.read()
        return HttpResponse(err.code, {k.lower(): v for k, v in (err.headers or {}).items()}, body)
    except urllib.error.URLError as err:
        raise transport_error(err.reason, url, timeout_s) from None
    except (OSError, TimeoutError) as err:
        raise transport_error(err, url, timeout_s) from None


def transport_error(reason: Any, url: str, timeout_s: float) -> ZooError:
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason):
        return ZooTimeoutError(f"no answer from {url} within {timeout_s:g} s", url=url)
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or "refused" in str(reason).lower():
        return UnavailableError(f"cannot connect to {url}: {reason}", url=url)
    return ZooConnectionError(f"connection to {url} failed: {reason}", url=url)


async def send_async(session: Any, base_url: str, request: HttpRequest, timeout_s: float) -> HttpResponse:
    """One HTTP exchange with an aiohttp session (same contract as `send_sync`)."""
    import aiohttp

    url = base_url + request.path
    try:
        async with session.request(request.method, url, data=request.body, headers=request.headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            body = await resp.read()
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
    except asyncio.TimeoutError:
        raise ZooTimeoutError(f"no answer from {url} within {timeout_s:g} s", url=url) from None
    except aiohttp.ClientConnectorError as err:  # nothing was sent
        raise UnavailableError(f"cannot connect to {url}: {err.os_error or err}", url=url) from None
    except aiohttp.ClientError as err:
        raise ZooConnectionError(f"connection to {url} failed: {type(err).__name__}: {err}", url=url) from None


# --- the retry loop (sync and async) ---------------------------------------------------------------------
@dataclass
class Exchange:
    """A request, the statuses that are answers rather than errors, and how to read the answer."""

    request: HttpRequest
    parse: Callable[[HttpResponse], Any]
    ok_statuses: tuple[int, ...] = (200,)
    retry: bool = True


def _outcome(exchange: Exchange, response: HttpResponse, url: str) -> tuple[bool, Any]:
    if response.status in exchange.ok_statuses:
        return True, exchange.parse(response)
    return False, error_from_response(response, url)


def _settle(exchange: Exchange, policy: RetryPolicy, url: str, attempt: int,
            result: HttpResponse | ZooError) -> tuple[bool, Any]:
    """One attempt's result -> (True, answer) when done, or (False, seconds to wait) to try again; raises
    the error when the policy allows no further attempt. Shared by the sync and async loops."""
    try:
        ok, value = (False, result) if isinstance(result, ZooError) else _outcome(exchange, result, url)
    except ZooError as err:  # an answer that cannot be read
        ok, value = False, err
    if ok:
        return True, value
    value.attempts = attempt
    if not policy.should_retry(value, attempt):
        raise value
    return False, policy.delay_s(attempt, value.retry_after_s)


def run_sync(exchange: Exchange, base_url: str, timeout_s: float, policy: RetryPolicy,
             sleep: Callable[[float], None] = time.sleep) -> Any:
    policy = policy if exchange.retry else NO_RETRY
    for attempt in itertools.count(1):
        try:
            result: HttpResponse | ZooError = send_sync(base_url, exchange.request, timeout_s)
        except ZooError as err:
            result = err
        done, value = _settle(exchange, policy, base_url + exchange.request.path, attempt, result)
        if done:
            return value
        sleep(value)


async def run_async(exchange: Exchange, session: Any, base_url: str, timeout_s: float,
                    policy: RetryPolicy) -> Any:
    policy = policy if exchange.retry else NO_RETRY
    for attempt in itertools.count(1):
        try:
            result: HttpResponse | ZooError = await send_async(session, base_url, exchange.request, timeout_s)
        except ZooError as err:
            result = err
        done, value = _settle(exchange, policy, base_url + exchange.request.path, attempt, result)
        if done:
            return value
        await asyncio.sleep(value)
