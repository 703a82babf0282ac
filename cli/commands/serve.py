"""`zoo serve`: build what is missing, start the engine (TorchServe, or Triton with `--engine triton`) on
loopback, wait for every model, put the gateway in front, serve until Ctrl-C.

Supervision: if the engine or the gateway dies, `zoo serve` stops the rest and exits 1 within a second (no
restart loop of its own), so whatever runs it (systemd `Restart=on-failure`, a Kubernetes pod) restarts it."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from cli.commands.build import add_engine_option, add_weights_options, engine_store, parse_weights_args, weights_for
from cli.process import watch
from zoo._registry import ModelEntry, get_entry, list_models
from zoo.paths import default_run_dir

METRICS_KEY_FILE_ENV = "ZOO_METRICS_KEY_FILE"


def ensure_archives(
    entries: list[ModelEntry], store: Path, weights: dict[str, str], random_weights: bool, seed: int,
    rebuild: bool = False,
) -> list[str]:
    """Archive file names for the entries, building the missing ones (and random ones unless allowed)."""
    from zoo.mar import build_mar, read_archive_meta
    from zoo.weights import WeightsLabel

    archives = []
    for entry in entries:
        mar = store / f"{entry.serve_name}.mar"
        explicit = weights_for(entry, weights, len(entries) == 1)
        needs_build = rebuild or explicit is not None or not mar.exists()
        if not needs_build and not random_weights:
            # never keep serving a random-weights archive once the user stops asking for random weights
            needs_build = WeightsLabel(**read_archive_meta(mar)["weights"]).is_random
        if needs_build:
            build_mar(entry, store, explicit, random_weights, seed)
        archives.append(mar.name)
    return archives


def ensure_triton_models(
    entries: list[ModelEntry], repository: Path, weights: dict[str, str], random_weights: bool, seed: int,
    rebuild: bool = False,
) -> list[str]:
    """Triton model names for the entries, building the missing ones, as `ensure_archives` does for TorchServe."""
    from zoo.triton_repo import build_triton_model, read_model_meta
    from zoo.weights import WeightsLabel

    names = []
    for entry in entries:
        explicit = weights_for(entry, weights, len(entries) == 1)
        meta = read_model_meta(repository, entry)
        needs_build = rebuild or explicit is not None or meta is None
        if not needs_build and not random_weights:
            needs_build = WeightsLabel(**meta["weights"]).is_random
        if needs_build:
            build_triton_model(entry, repository, explicit, random_weights, seed)
        names.append(entry.serve_name)
    return names


def start_engine(args: argparse.Namespace, entries: list[ModelEntry]) -> Any:
    """The engine's server object for the entries (built where missing), not started yet."""
    weights = parse_weights_args(args.weights)
    store = engine_store(args)
    run_dir = Path(args.run_dir)
    if args.engine == "triton":
        from cli.triton import TritonPorts, TritonServer

        names = ensure_triton_models(entries, store, weights, args.random_weights, args.seed, args.rebuild)
        ports = TritonPorts(metrics_host=args.torchserve_metrics_host)
        if args.torchserve_metrics_port:
            ports.metrics = args.torchserve_metrics_port
        return TritonServer(store, names, run_dir / "triton", ports=ports)
    from cli.torchserve import TorchServe, TorchServePorts

    archives = ensure_archives(entries, store, weights, args.random_weights, args.seed, args.rebuild)
    ports = TorchServePorts(metrics_host=args.torchserve_metrics_host)
    if args.torchserve_metrics_port:
        ports.metrics = args.torchserve_metrics_port
    # token auth: only `zoo serve` and its gateway (which reads the token file) may call TorchServe's APIs
    return TorchServe(store, archives, run_dir / "torchserve", ports=ports, token_auth=True)


def anonymous_scrapes_redacted(config_path: str | None) -> bool:
    """Whether the gateway will hide per-model series from a scrape without a key: API keys on (its config's
    auth section, ZOO_API_KEYS, ZOO_API_KEYS_FILE) and `server.metrics_anonymous` not `full`. False for a
    config that does not load: the gateway itself reports that."""
    import yaml

    from serving.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except (ConfigError, OSError, ValueError, yaml.YAMLError):
        return False
    return config.auth_enabled and config.metrics_anonymous != "full"


def run(args: argparse.Namespace) -> int:
    metrics_key_file = None
    if args.with_prometheus:
        from cli.prometheus import INSTALL_HINT, PrometheusError, check_key_file, find_binary, parse_duration

        if find_binary("prometheus") is None:
            print(f"--with-prometheus: Prometheus is not installed: {INSTALL_HINT}")
            return 2
        parse_duration(args.prometheus_scrape_interval)  # a bad interval fails before anything starts
        key_file = args.metrics_key_file or os.environ.get(METRICS_KEY_FILE_ENV)
        if key_file:
            try:
                metrics_key_file = check_key_file(key_file)
            except PrometheusError as exc:
                print(f"--metrics-key-file: {exc}")
                return 2
        elif not args.no_gateway and anonymous_scrapes_redacted(args.gateway_config):
            print("note: API keys are on and no --metrics-key-file was given: Prometheus scrapes the gateway "
                  "without a key and gets no per-model series (server.metrics_anonymous)", flush=True)
    entries = [get_entry(n) for n in args.models] if args.models else list_models(default_only=True)
    ts = start_engine(args, entries)
    engine = "Triton" if args.engine == "triton" else "TorchServe"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ts:
        print(f"starting {engine} with {', '.join(ts.model_names)} ...", flush=True)
        ts.wait_ready(timeout_s=args.ready_timeout)
        gateway = None
        if not args.no_gateway:
            from cli.gateway import start_gateway

            gateway = start_gateway(ts, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                                    config_path=args.gateway_config)
        prometheus = None
        if args.with_prometheus:
            from cli.prometheus import PrometheusError, start_local

            print(f"starting Prometheus (ready after its first scrape of each target: up to "
                  f"{args.prometheus_scrape_interval} + 5 s) ...", flush=True)
            try:
                engine_target = f"127.0.0.1:{ts.ports.metrics}"
                triton = args.engine == "triton"
                prometheus = start_local(Path(args.run_dir) / "prometheus",
                                         f"{gateway.host}:{gateway.http_port}" if gateway else None,
                                         None if triton else engine_target, args.prometheus_port,
                                         args.prometheus_scrape_interval,
                                         triton_target=engine_target if triton else None,
                                         gateway_key_file=metrics_key_file)
            except PrometheusError as exc:
                print(f"--with-prometheus: {exc}")
                if gateway is not None:
                    gateway.stop()
                return 2
        print("ready:")
        if gateway is not None:
            print(f"  gateway REST (OIP v2 + task routes): {gateway.http_url}")
            print(f"  gateway gRPC (inference.GRPCInferenceService): {gateway.grpc_target}")
            print(f"  gateway metrics: {gateway.http_url}/metrics")
        if args.engine == "triton":
            print(f"  Triton (loopback only): HTTP {ts.http_url}, gRPC {ts.grpc_target}, metrics {ts.metrics_url}")
        else:
            print(f"  TorchServe (loopback only): inference {ts.inference_url}, gRPC {ts.grpc_target}, "
                  f"metrics {ts.metrics_url}")
        if prometheus is not None:
            print(f"  Prometheus (loopback only, rules and alerts from deploy/prometheus): {prometheus.url}")
        for entry in entries:
            print(f"  model {entry.serve_name} ({entry.name}, {entry.task})")
        print("press Ctrl-C to stop", flush=True)
        children = {engine: ts.proc}
        if gateway is not None:
            children["gateway"] = gateway.proc
        died = watch(children, stop)
        if died is not None:  # no restart here: exit non-zero at once, the outer supervisor restarts the stack
            code = children[died].returncode
            print(f"{died} exited unexpectedly (exit code {code}); stopping and exiting 1", flush=True)
            if died == engine:
                print(ts.log_tail(), flush=True)
            if prometheus is not None:
                prometheus.stop()
            if gateway is not None:
                gateway.stop(timeout_s=5)
            return 1
        print("stopping ...", flush=True)
        if prometheus is not None:
            prometheus.stop()
        if gateway is not None:
            gateway.stop()
    print("stopped")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="start TorchServe (or Triton) and the gateway", description=__doc__)
    p.add_argument("models", nargs="*", help="models to serve (default: the registry's default set)")
    add_engine_option(p)
    p.add_argument("--run-dir", default=str(default_run_dir()), help="config and logs go here")
    p.add_argument("--rebuild", action="store_true", help="rebuild archives even if present")
    p.add_argument("--host", default="127.0.0.1", help="gateway bind address")
    p.add_argument("--http-port", type=int, default=8080, help="gateway REST port")
    p.add_argument("--grpc-port", type=int, default=8081, help="gateway gRPC port")
    p.add_argument("--gateway-config", default=None, help="gateway YAML (routes, API keys, limits)")
    p.add_argument("--no-gateway", action="store_true", help="start the engine only")
    p.add_argument("--torchserve-metrics-port", "--engine-metrics-port", type=int, default=None,
                   help="the engine's (TorchServe's or Triton's) Prometheus metrics port (default: a free one); a "
                        "pod pins it to be scraped")
    p.add_argument("--torchserve-metrics-host", "--engine-metrics-host", default="127.0.0.1",
                   help="the engine's metrics bind address (its inference and management APIs stay on loopback)")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for models")
    p.add_argument("--with-prometheus", action="store_true",
                   help="also run Prometheus (Debian's /usr/bin/prometheus) on loopback over the gateway and "
                        "the engine, with deploy/prometheus's rules and alerts")
    p.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus web/API port (loopback)")
    p.add_argument("--prometheus-scrape-interval", default="15s", help="scrape and rule-evaluation interval")
    p.add_argument("--metrics-key-file", default=None,
                   help="with --with-prometheus and API keys on: a file holding one gateway API key (e.g. one with "
                        "`models: []`, which may scrape but not infer) that Prometheus sends when it scrapes the "
                        "gateway, so per-model series reach it; the rendered config names the file, not the key "
                        f"(default: ${METRICS_KEY_FILE_ENV})")
    add_weights_options(p)
    p.set_defaults(func=run)
