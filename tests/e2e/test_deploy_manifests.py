"""The shipped deployment files stay consistent with the code that reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import BackendConfig, load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_configmap_gateway_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_map, secret = _docs("configmap.yaml")
    (tmp_path / "gateway.yaml").write_text(config_map["data"]["gateway.yaml"])
    keys = tmp_path / "api-keys.yaml"
    keys.write_text(secret["stringData"]["api-keys.yaml"])
    monkeypatch.setenv("ZOO_API_KEYS_FILE", str(keys))
    monkeypatch.delenv("ZOO_API_KEYS", raising=False)
    # `zoo serve` supplies the backend named "torchserve" that the routes refer to
    cfg = load_config(tmp_path / "gateway.yaml", {"torchserve": BackendConfig("torchserve", "torchserve", {})})
    assert cfg.auth_enabled and cfg.lookup_key("CHANGE-ME").allows("detr_resnet50")
    assert not cfg.lookup_key("CHANGE-ME").allows("ftcn_tt")
    assert cfg.max_request_bytes == 512 * 1024 * 1024


def test_deployment_probes_and_ports_match_the_gateway() -> None:
    deployment, service, _pvc = _docs("deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}  # `zoo serve` defaults
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    from cli.main import build_parser

    serve = build_parser().parse_args(["serve"])
    assert (serve.http_port, serve.grpc_port) == (ports["http"], ports["grpc"])
