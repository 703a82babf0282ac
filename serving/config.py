"""Gateway configuration: public model routes, backends, API keys and limits, from YAML (all optional).

```yaml
backends:
  torchserve:                      # a backend name, referenced by routes
    type: torchserve
    grpc: 127.0.0.1:7070           # TorchServe gRPC inference address
    management: http://127.0.0.1:8081   # optional: model readiness and versions
    model_store: /path/to/store    # optional: archives, for model metadata (weights label)
models:                            # public name -> route; omitted: every model of the first backend
  detr:
    backend: torchserve
    model: detr_resnet50           # backend model name (default: the public name)
    aliases: [detr_r50]            # more public names for the same route (answers echo the name used)
    deadline_s: 30                 # per-model overrides of `limits`
    max_request_bytes: 20000000
limits:
  max_request_bytes: 536870912     # 512 MiB: a 30 s 1080p clip fits
  deadline_s: 60
  max_concurrency: 64              # per model: requests sent to the backend at once (more wait in the gateway)
  max_queue: 256                   # per model: requests waiting in the gateway; beyond it 503 + Retry-After
  max_decompressed_bytes: 67108864 # a Content-Encoding (gzip ...) body may inflate to at most this (64 MiB)
  max_json_bytes: 16777216         # the JSON part of an infer request (16 MiB): larger tensors go binary
auth:
  keys_file: /etc/zoo/keys.yaml    # or env ZOO_API_KEYS_FILE
  keys:                            # or env ZOO_API_KEYS="key1=*;key2=detr,ckdn_r50"
    - {key: "s3cret", name: alice, models: ["*"]}
streams:                           # video stream sessions (serving/streams.py, docs/streaming.md)
  max_sessions: 64
  idle_timeout_s: 30
server:
  grace_s: 10                      # SIGTERM: finish in-flight requests for at most this long
  retry_after_s: 1                 # Retry-After on 503
  backend_grace_s: 30              # a backend call may outlive its client's deadline by this much
  header_timeout_s: 15             # a connection must send its first request's headers within this
  body_timeout_s: 30               # a request body that sends nothing for this long is answered 408
  access_log: true                 # one JSON line per request on the `zoo.access` logger
  metrics_cache_s: 2               # /metrics is rendered at most this often
  metrics_anonymous: redacted      # /metrics without a valid key, when keys are on: redacted (no series that
                                   # name a model), full, or refused (401)
  tls:                             # optional, REST and gRPC alike
    cert_file: /etc/zoo/tls.crt
    key_file: /etc/zoo/tls.key
    client_ca_file: /etc/zoo/ca.crt  # optional: clients must present a certificate signed by it
```

No API keys configured at all means auth is OFF (the gateway warns at start). Keys are held as SHA-256
digests; a key's model allow-list may contain "*". `reload_api_keys` re-reads them (the gateway does on SIGHUP).
With keys on, an anonymous `/metrics` scrape gets no series that name a model (keys cannot probe names).

The config is an immutable description of what the operator configured; the routes actually served (these,
or the models a backend reports when `models` is omitted) live in `serving.repository.ModelRepository`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MAX_REQUEST_BYTES = 512 * 1024 * 1024
DEFAULT_DEADLINE_S = 60.0
METRICS_ANONYMOUS = ("full", "redacted", "refused")
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# Parsing JSON holds the GIL whatever thread runs it: this bounds how long one request can stall the loop.
DEFAULT_MAX_JSON_BYTES = 16 * 1024 * 1024
ENV_KEYS = "ZOO_API_KEYS"
ENV_KEYS_FILE = "ZOO_API_KEYS_FILE"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BackendConfig:
    name: str
    type: str = "torchserve"
    options: dict[str, Any] = field(default_factory=dict)  # type-specific: grpc, management, model_store ...


@dataclass(frozen=True)
class ModelRoute:
    public_name: str
    backend: str
    model: str
    deadline_s: float
    max_request_bytes: int
    aliases: tuple[str, ...] = ()  # more public names that reach this route (metrics use `public_name`)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # backend calls at once; more wait in the gateway's queue
    max_queue: int = DEFAULT_MAX_QUEUE  # calls waiting in the gateway; one more is shed (503 Overloaded)

    @property
    def names(self) -> tuple[str, ...]:
        """Every public name of this route, its own first."""
        return (self.public_name, *self.aliases)


@dataclass(frozen=True)
class ApiKey:
    name: str
    models: frozenset[str]

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(frozen=True)
class TlsConfig:
    """Certificate files for REST and gRPC; `client_ca_file` set: clients must present a certificate."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class GatewayConfig:
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    models: dict[str, ModelRoute] = field(default_factory=dict)  # the configured routes (never changed)
    # True: `models` was not given, every model of the default backend is served under its own name
    discover_models: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    deadline_s: float = DEFAULT_DEADLINE_S
    api_keys: dict[str, ApiKey] = field(default_factory=dict)  # sha256 hex digest -> key
    grace_s: float = 10.0
    retry_after_s: int = 1
    backend_grace_s: float = 30.0
    streams: dict[str, Any] = field(default_factory=dict)  # the `streams:` section, read by serving.streams
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    access_log: bool = True
    metrics_cache_s: float = 2.0
    metrics_anonymous: str = "redacted"  # full | redacted | refused
    tls: TlsConfig | None = None
    source: Path | None = None  # the YAML this was read from (API keys are re-read from it on reload)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def largest_request_bytes(self) -> int:
        """The largest request any route accepts (transport-level caps are set to this)."""
        return max([self.max_request_bytes, *(r.max_request_bytes for r in self.models.values())])

    @property
    def default_backend(self) -> str:
        if not self.backends:
            raise ConfigError("no backend configured")
        return next(iter(self.backends))

    def lookup_key(self, key: str) -> ApiKey | None:
        return self.api_keys.get(digest(key))

    def route(self, public_name: str, backend: str | None = None, model: str | None = None,
              deadline_s: float | None = None, max_request_bytes: int | None = None,
              aliases: Iterable[str] = (), max_concurrency: int | None = None,
              max_queue: int | None = None) -> ModelRoute:
        """The route this config gives `public_name` (limits default to `limits`); nothing is registered."""
        backend = backend or self.default_backend
        if backend not in self.backends:
            raise ConfigError(f"model {public_name!r}: unknown backend {backend!r}")
        if isinstance(aliases, str):
            aliases = [aliases]
        route = ModelRoute(
            public_name=public_name,
            backend=backend,
            model=model or public_name,
            deadline_s=float(deadline_s if deadline_s is not None else self.deadline_s),
            max_request_bytes=int(self.max_request_bytes if max_request_bytes is None else max_request_bytes),
            aliases=tuple(dict.fromkeys(str(a) for a in aliases if str(a) != public_name)),
            max_concurrency=int(self.max_concurrency if max_concurrency is None else max_concurrency),
            max_queue=int(self.max_queue if max_queue is None else max_queue),
        )
        if route.deadline_s <= 0 or route.max_request_bytes <= 0 or route.max_concurrency <= 0:
            raise ConfigError(f"model {public_name!r}: deadline_s, max_request_bytes and max_concurrency "
                              "must be positive")
        if route.max_queue < 0:
            raise ConfigError(f"model {public_name!r}: max_queue must be 0 or more")
        return route

    def with_routes(self, routes: Iterable[ModelRoute]) -> GatewayConfig:
        """A copy that serves exactly `routes` (no discovery)."""
        return dataclasses.replace(self, models={r.public_name: r for r in routes}, discover_models=False)


def digest(key: str) -> str:
    """SHA-256 of a key. Never raises: a header of invalid UTF-8 (surrogates once decoded) is just a key no
    one holds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_keys_env(value: str) -> list[dict[str, Any]]:
    """``key1=*;key2=model_a,model_b`` (a bare key allows every model)."""
    out = []
    for i, item in enumerate(filter(None, (s.strip() for s in value.replace("\n", ";").split(";")))):
        key, sep, models = item.partition("=")
        out.append({"key": key.strip(), "name": f"env-{i}",
                    "models": [m.strip() for m in models.split(",") if m.strip()] if sep else ["*"]})
    return out


def _keys_from_doc(doc: Any, where: str) -> list[dict[str, Any]]:
    if doc is None:
        return []
    if isinstance(doc, dict) and "keys" in doc:
        doc = doc["keys"]
    if isinstance(doc, dict):  # {key: [models]} shorthand
        return [{"key": k, "name": f"{where}-{i}", "models": v if isinstance(v, list) else [v]}
                for i, (k, v) in enumerate(doc.items())]
    if not isinstance(doc, list):
        raise ConfigError(f"{where}: API keys must be a list of {{key, name, models}}")
    return doc


def _load_keys(auth: dict[str, Any], base: Path | None) -> dict[str, ApiKey]:
    entries: list[dict[str, Any]] = list(_keys_from_doc(auth.get("keys"), "config"))
    keys_file = os.environ.get(ENV_KEYS_FILE) or auth.get("keys_file")
    if keys_file:
        path = Path(keys_file)
        if base is not None and not path.is_absolute():
            path = base / path
        if not path.is_file():
            raise ConfigError(f"API keys file not found: {path}")
        entries += _keys_from_doc(yaml.safe_load(path.read_text()), str(path))
    if os.environ.get(ENV_KEYS):
        entries += parse_keys_env(os.environ[ENV_KEYS])
    keys: dict[str, ApiKey] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("key"):
            raise ConfigError(f"API key #{i} has no 'key'")
        models = entry.get("models", ["*"])
        if isinstance(models, str):
            models = [models]
        keys[digest(str(entry["key"]))] = ApiKey(str(entry.get("name") or f"key-{i}"), frozenset(models))
    return keys


def _choice(section: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = str(section.get(key, default))
    if value not in allowed:
        raise ConfigError(f"server.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def load_config(path: str | Path | None = None,
                backends: dict[str, BackendConfig] | None = None) -> GatewayConfig:
    """Read the YAML (if any); `backends` (e.g. from the command line) fill in missing backends."""
    doc: dict[str, Any] = {}
    base = None
    if path:
        path = Path(path)
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the gateway config must be a mapping")
        base = path.parent
    limits = doc.get("limits") or {}
    server = doc.get("server") or {}
    defaults = GatewayConfig()
    backend_specs: dict[str, BackendConfig] = {}
    for name, spec in (doc.get("backends") or {}).items():
        spec = dict(spec or {})
        backend_specs[name] = BackendConfig(name, str(spec.pop("type", "torchserve")), spec)
    for name, backend in (backends or {}).items():
        if name in backend_specs:  # command-line values fill gaps, the file wins
            backend_specs[name] = BackendConfig(name, backend_specs[name].type,
                                                {**backend.options, **backend_specs[name].options})
        else:
            backend_specs[name] = backend
    streams = doc.get("streams") or {}
    if not isinstance(streams, dict):
        raise ConfigError("'streams' must be a mapping")
    tls = server.get("tls")
    if tls is not None:
        if not isinstance(tls, dict) or not tls.get("cert_file") or not tls.get("key_file"):
            raise ConfigError("server.tls needs cert_file and key_file")
        files = {k: str(base / v if base is not None and not Path(v).is_absolute() else v)
                 for k, v in tls.items() if k in ("cert_file", "key_file", "client_ca_file") and v}
        tls = TlsConfig(**files)
    cfg = GatewayConfig(
        backends=backend_specs,
        max_request_bytes=int(limits.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)),
        deadline_s=float(limits.get("deadline_s", DEFAULT_DEADLINE_S)),
        api_keys=_load_keys(doc.get("auth") or {}, base),
        grace_s=float(server.get("grace_s", defaults.grace_s)),
        retry_after_s=int(server.get("retry_after_s", defaults.retry_after_s)),
        backend_grace_s=float(server.get("backend_grace_s", defaults.backend_grace_s)),
        streams=dict(streams),
        max_concurrency=int(limits.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)),
        max_queue=int(limits.get("max_queue", DEFAULT_MAX_QUEUE)),
        max_decompressed_bytes=int(limits.get("max_decompressed_bytes", DEFAULT_MAX_DECOMPRESSED_BYTES)),
        max_json_bytes=int(limits.get("max_json_bytes", DEFAULT_MAX_JSON_BYTES)),
        header_timeout_s=float(server.get("header_timeout_s", defaults.header_timeout_s)),
        body_timeout_s=float(server.get("body_timeout_s", defaults.body_timeout_s)),
        access_log=bool(server.get("access_log", defaults.access_log)),
        metrics_cache_s=float(server.get("metrics_cache_s", defaults.metrics_cache_s)),
        metrics_anonymous=_choice(server, "metrics_anonymous", METRICS_ANONYMOUS, defaults.metrics_anonymous),
        tls=tls,
        source=Path(path) if path else None,
    )
    models = doc.get("models")
    if models:
        routes = []
        for public, spec in models.items():
            spec = spec or {}
            routes.append(cfg.route(str(public), spec.get("backend"), spec.get("model"), spec.get("deadline_s"),
                                    spec.get("max_request_bytes"), spec.get("aliases") or (),
                                    spec.get("max_concurrency"), spec.get("max_queue")))
        cfg = cfg.with_routes(routes)
    return cfg


def reload_api_keys(config: GatewayConfig) -> GatewayConfig:
    """`config` with its API keys read again (the YAML's auth section, the keys file, the environment), so keys
    can be added or revoked without a restart. Raises ConfigError (the old keys stay) when they do not load."""
    auth: dict[str, Any] = {}
    if config.source is not None:
        doc = yaml.safe_load(Path(config.source).read_text()) or {}
        auth = (doc.get("auth") or {}) if isinstance(doc, dict) else {}
    return dataclasses.replace(config, api_keys=_load_keys(auth, config.source.parent if config.source else None))
