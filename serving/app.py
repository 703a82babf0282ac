"""Wires the gateway together and runs it: `python -m serving.app` (own process, own event loop).

    python -m serving.app --torchserve-grpc 127.0.0.1:7070 --torchserve-management http://127.0.0.1:8081 \
        --model-store ~/.cache/zoo-gateway/model_store --http-port 8080 --grpc-port 8081 [--config gw.yaml]
    python -m serving.app --triton-grpc 127.0.0.1:8001 --models toy_echo ...   # the same zoo models on Triton

Prints one line ``ZOO_GATEWAY_READY {"http": PORT, "grpc": PORT}`` on stdout once both servers listen
(ports 0 pick free ones); logs go to stderr (one JSON access line per request on the ``zoo.access`` logger).
SIGTERM/SIGINT: stop accepting, let in-flight requests finish within ``server.grace_s``, close the backends,
exit 0. SIGHUP: re-read the API keys (config file, keys file, environment) without a restart.

Connections: a connection must send its first request's headers within ``server.header_timeout_s``
(slowloris), and a body that stalls for ``server.body_timeout_s`` is answered 408. ``server.tls`` serves REST
and gRPC over TLS from certificate files, optionally requiring client certificates.

`cli.gateway.start_gateway(ts, ...)` (used by `zoo serve`, tests and benchmarks) runs that as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from serving.backends.base import Backend
from serving.backends.torchserve import TorchServeBackend
from serving.backends.triton import TritonBackend
from serving.config import BackendConfig, ConfigError, GatewayConfig, TlsConfig, load_config, reload_api_keys
from serving.dataplane import DataPlane, access_logger
from serving.grpc_server import create_server
from serving.metrics import GatewayMetrics
from serving.rest import RestApi, json_response
from serving.stream_grpc import StreamServicer
from serving.stream_ws import StreamWebSocket
from serving.streams import StreamManager, StreamSettings

logger = logging.getLogger("serving")

READY_PREFIX = "ZOO_GATEWAY_READY "
# backend type -> "module:Class"; the class is built as Class(name=<backend name>, **options)
BACKEND_TYPES = {
    "torchserve": "serving.backends.torchserve:TorchServeBackend",
    "triton": "serving.backends.triton:TritonBackend",
}


def make_backend(spec: BackendConfig, config: GatewayConfig) -> Backend:
    options = dict(spec.options)
    if spec.type == "torchserve":
        if not options.get("grpc"):
            raise ConfigError(f"backend {spec.name!r}: torchserve needs 'grpc' (host:port)")
        return TorchServeBackend(
            grpc_target=options["grpc"], management_url=options.get("management"),
            model_store=options.get("model_store"), token_file=options.get("token_file"),
            max_message_bytes=config.largest_request_bytes,
            backend_grace_s=config.backend_grace_s, retry_after_s=config.retry_after_s, name=spec.name)
    if spec.type == "triton":
        return TritonBackend.from_config(spec, config)
    if spec.type not in BACKEND_TYPES:
        raise ConfigError(f"backend {spec.name!r}: unknown type {spec.type!r} "
                          f"(known: {', '.join(BACKEND_TYPES)})")
    module, cls = BACKEND_TYPES[spec.type].split(":")
    return getattr(importlib.import_module(module), cls)(name=spec.name, **options)


class ClientParseErrorsAreInfo(logging.Filter):
    """aiohttp logs every unparseable request (bad request line, header bytes, a body it cannot inflate while
    draining it after the answer) at ERROR with a traceback: that is the client's fault, so it is logged at
    INFO without the traceback (error alerts stay for real errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and isinstance(exc, (http_exceptions.HttpProcessingError,
                                                                RequestPayloadError)):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_parse_errors() -> None:
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientParseErrorsAreInfo) for f in server_logger.filters):
        server_logger.addFilter(ClientParseErrorsAreInfo())


class JsonErrorsRequestHandler(RequestHandler):
    """aiohttp's connection protocol, except that the answers it writes itself, before any route or
    middleware runs (a request line, header or chunked body it cannot parse: 400; an exception that escaped
    a handler: 500), are JSON errors like every other answer of the gateway: ``{"error": ...}`` under
    Content-Type exactly application/json (tritonclient and KServe's SDK parse every error body as JSON)."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # aiohttp's logging, its checks (raises if sent)
        if status >= 500:
            text = "internal error" if status == 500 else f"gateway error {status}"
        else:
            detail = (message or "").strip().splitlines()
            text = f"malformed HTTP request: {detail[0][:200] if detail else type(exc).__name__}"
        response = json_response({"error": text}, status=status)
        response.force_close()
        return response


def _close_if_idle_from_start(protocol: Any) -> None:
    """A connection that has not sent one complete request header yet: close it (slowloris)."""
    if getattr(protocol, "_request_count", 1) == 0 and protocol.transport is not None:
        protocol.force_close()


class GuardedTCPSite(web.TCPSite):
    """aiohttp's TCPSite, except a connection must send its first request's headers within
    `header_timeout_s` (aiohttp alone keeps a connection that trickles header bytes for its keep-alive
    timeout), and what aiohttp answers itself is JSON (`JsonErrorsRequestHandler`). Later requests on a
    connection are covered by aiohttp's keep-alive timeout."""

    __slots__ = ("_header_timeout_s",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, header_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (TCPSite.start minus its server)
        loop = asyncio.get_running_loop()
        make_protocol = self._runner.server
        assert make_protocol is not None

        def guarded() -> Any:
            protocol = make_protocol()
            # same slots, one method more: aiohttp's own error answers become JSON (JsonErrorsRequestHandler).
            # An aiohttp whose handler class no longer matches keeps serving, only with its plain-text 400s.
            if type(protocol) is RequestHandler:
                protocol.__class__ = JsonErrorsRequestHandler
            loop.call_later(self._header_timeout_s, _close_if_idle_from_start, protocol)
            return protocol

        self._server = await loop.create_server(
            guarded, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)


def rest_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class Gateway:
    """REST + gRPC servers over one DataPlane, on the running event loop. `backends` (default: built from the
    config) lets a caller put backends of its own behind the gateway, e.g. an in-process one."""

    def __init__(self, config: GatewayConfig, backends: dict[str, Backend] | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        if backends is None:
            backends = {name: make_backend(spec, config) for name, spec in config.backends.items()}
        self.dataplane = DataPlane(config, backends, self.metrics)
        self.streams = StreamManager(self.dataplane, StreamSettings.from_config(config.streams))
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc = None

    async def start(self, host: str, http_port: int, grpc_port: int) -> tuple[int, int]:
        quiet_client_parse_errors()
        await self.dataplane.start()
        largest = self.config.largest_request_bytes
        app = RestApi(self.dataplane).application()
        StreamWebSocket(self.streams).add_routes(app)  # GET /v1/streams/{model} (WebSocket)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = self.config.tls
        self._site = GuardedTCPSite(self._runner, host, http_port, shutdown_timeout=self.config.grace_s,
                                    header_timeout_s=self.config.header_timeout_s,
                                    ssl_context=rest_ssl_context(tls) if tls else None)
        await self._site.start()
        http_bound = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._grpc = create_server(self.dataplane, largest)
        self._grpc.add_generic_rpc_handlers((StreamServicer(self.streams).handler(),))  # zoo.stream.v1
        address = f"{host}:{grpc_port}"
        grpc_bound = (self._grpc.add_secure_port(address, grpc_credentials(tls)) if tls
                      else self._grpc.add_insecure_port(address))
        if grpc_bound == 0:
            raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
        await self._grpc.start()
        return http_bound, grpc_bound

    def reload_keys(self) -> bool:
        """Re-read the API keys (SIGHUP); on a broken keys file the old keys stay and the error is logged."""
        try:
            config = reload_api_keys(self.dataplane.config)
        except (ConfigError, OSError, yaml.YAMLError) as exc:
            logger.error("API keys not reloaded, the old ones stay: %s", exc)
            self.metrics.key_reloads.labels("failed").inc()
            return False
        self.config = self.dataplane.config = config
        self.metrics.key_reloads.labels("ok").inc()
        logger.info("API keys reloaded: %d keys", len(config.api_keys))
        return True

    async def stop(self) -> None:
        grace = self.config.grace_s
        started = time.monotonic()
        await self.streams.shutdown()  # stream sessions end now (UNAVAILABLE / close 4503), not after grace_s
        # gRPC stops accepting at once, then waits up to `grace` for its in-flight RPCs
        grpc_stopped = asyncio.ensure_future(self._grpc.stop(grace)) if self._grpc is not None else None
        if self._site is not None:
            await self._site.stop()  # no new HTTP connections
        drained = await self.dataplane.in_flight.wait_idle(grace)
        if not drained:
            logger.warning("%d requests still in flight after %.0fs grace; stopping anyway",
                           self.dataplane.in_flight.count, grace)
        if grpc_stopped is not None:
            await grpc_stopped
        if self._runner is not None:
            await self._runner.cleanup()
        await self.dataplane.close()
        logger.info("stopped in %.1fs", time.monotonic() - started)


async def serve(config: GatewayConfig, host: str, http_port: int, grpc_port: int) -> None:
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_keys)
    http_bound, grpc_bound = await gateway.start(host, http_port, grpc_port)
    if not config.auth_enabled:
        logger.warning("no API keys configured (ZOO_API_KEYS, ZOO_API_KEYS_FILE or auth.keys in the config): "
                       "authentication is OFF, every client can use every model")
    logger.info("serving %s on http://%s:%d and grpc %s:%d",
                ", ".join(gateway.dataplane.repository.names()) or "no models", host, http_bound, host, grpc_bound)
    print(READY_PREFIX + json.dumps({"http": http_bound, "grpc": grpc_bound}), flush=True)
    await stop.wait()
    logger.info("stopping: draining in-flight requests (grace %.0fs)", config.grace_s)
    await gateway.stop()


def build_config(args: argparse.Namespace) -> GatewayConfig:
    backends = {}
    if args.torchserve_grpc:
        options = {"grpc": args.torchserve_grpc}
        if args.torchserve_management:
            options["management"] = args.torchserve_management
        if args.model_store:
            options["model_store"] = args.model_store
        if args.torchserve_token_file:
            options["token_file"] = args.torchserve_token_file
        backends["torchserve"] = BackendConfig("torchserve", "torchserve", options)
    if args.triton_grpc:
        backends["triton"] = BackendConfig("triton", "triton", {"url": args.triton_grpc})
    config = load_config(args.config, backends)
    if args.models and config.discover_models:
        config = config.with_routes(config.route(name.strip()) for name in args.models.split(",") if name.strip())
    return config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="gateway YAML (backends, models, auth, limits)")
    p.add_argument("--torchserve-grpc", help="TorchServe gRPC inference address host:port")
    p.add_argument("--torchserve-management", help="TorchServe management URL (readiness, versions)")
    p.add_argument("--model-store", help="TorchServe model store (archives, for model metadata)")
    p.add_argument("--torchserve-token-file", help="TorchServe's key_file.json (when its token auth is on)")
    p.add_argument("--triton-grpc", help="Triton gRPC inference address host:port (e.g. `zoo serve --engine triton`)")
    p.add_argument("--models", help="comma-separated models to serve (default: every model of the backend)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--log-level", default=os.environ.get("ZOO_GATEWAY_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s zoo-gateway: %(message)s")
    access = logging.StreamHandler(sys.stderr)  # access lines are bare JSON, one per request
    access.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(access)
    access_logger.propagate = False
    try:
        config = build_config(args)
        StreamSettings.from_config(config.streams)  # a bad `streams:` section fails here, clearly
    except (ConfigError, OSError) as exc:
        print(f"zoo-gateway: config error: {exc}", file=sys.stderr)
        return 2
    if not config.backends:
        print("zoo-gateway: no backend: pass --torchserve-grpc, --triton-grpc or configure `backends`",
              file=sys.stderr)
        return 2
    run_loop(serve(config, args.host, args.http_port, args.grpc_port))
    return 0


def run_loop(coro: Any) -> None:
    """The standard asyncio loop; ZOO_GATEWAY_LOOP=uvloop uses uvloop when installed (opt-in: measured on the
    2-core benchmark machine it did not lower the gateway's CPU per request, see docs/benchmarks.md)."""
    if os.environ.get("ZOO_GATEWAY_LOOP", "asyncio") == "uvloop":
        try:
            import uvloop
        except ImportError:
            logger.warning("ZOO_GATEWAY_LOOP=uvloop but uvloop is not installed; using asyncio")
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
