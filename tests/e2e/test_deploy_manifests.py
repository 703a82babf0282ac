"""The shipped deployment files stay consistent with the code that reads them, and valid, checked offline.

- Kubernetes (deploy/k8s): every overlay is rendered with `kubectl kustomize`; every object is validated, core
  kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) and
  ServiceMonitor, PrometheusRule, ScaledObject, ServingRuntime and InferenceService against their upstream CRD
  schemas vendored in deploy/schemas (made strict the same way); then the models (what each pod serves, what
  its init container pulls, its gateway config, its autoscaling query) are checked against the registry and
  against each other, and the monitoring objects against deploy/prometheus and deploy/grafana.
- Compose (deploy/compose): against the vendored compose-spec JSON schema, and its copies of the Prometheus and
  Grafana config against the originals.
- Dockerfile: parsed; its COPY sources exist in the tree and are not excluded by .dockerignore, and its pins
  match the suite's.

Nothing here needs a cluster, a container engine or a network. kubectl (for kustomize) and the Python packages
kubernetes-validate / jsonschema come from `make test` (the `k8s-tools` target and the test extras); tests that
need a missing one skip saying which.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from cli.main import build_parser
from serving.config import BackendConfig, load_config
from serving.streams import StreamSettings
from zoo._registry import get_entry
from zoo.contract import sha256_of
from zoo.hub import registry_source

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
OVERLAYS = {"gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu", "kserve": K8S / "kserve"}
K8S_VERSIONS = ("1.30.0", "1.33.0")  # the oldest and a recent minor this is meant for
IN_FLIGHT_GAUGE = "zoo_gateway_model_in_flight"
GATEWAY_PORTS = {"http": 8080, "grpc": 8081}
TS_METRICS_PORT = 8082
WRITABLE_PATHS = ("/var/lib/zoo-gateway", "/tmp")  # ZOO_HOME (weights, archives, run state), temp files
# Trigger metadata keys of KEDA's prometheus scaler, v2.20.2 (pkg/scalers/prometheus_scaler.go, `keda:"name=..."`)
KEDA_PROMETHEUS_KEYS = {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
                        "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner"}

SERVE = build_parser().parse_args(["serve"])  # `zoo serve` defaults


# --- helpers -----------------------------------------------------------------------------------------------
def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubectl() -> str:
    """kubectl with a kustomize new enough for components and `labels` (v4+), or skip saying why."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl not installed (`make k8s-tools`: Debian's kubectl / kubernetes-client)")
    out = subprocess.run([binary, "version", "--client"], capture_output=True, text=True).stdout
    found = re.search(r"Kustomize Version: v(\d+)", out)
    if not found or int(found.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is older than v4 ({out.strip()!r}): install a newer kubectl")
    return binary


def render(folder: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kubectl kustomize {folder}:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@functools.cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(OVERLAYS[name]))


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, copy.deepcopy(list(_rendered(request.param)))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def serve_models(args: list[str]) -> list[str]:
    """The models of a `zoo serve` command line (never empty: a pod serves exactly what it names)."""
    assert args[0] == "serve", args
    parsed = build_parser().parse_args(args)
    assert parsed.models, f"`zoo {' '.join(args)}` names no model: it would serve the registry's default set"
    return parsed.models


def pulled_models(args: list[str]) -> dict[str, list[str]]:
    """model -> the `zoo pull` arguments that fetch it."""
    assert args[0] == "pull", args
    parsed = build_parser().parse_args(args)
    return {model: args for model in parsed.models}


def check_models(served: list[str], pulls: dict[str, list[str]], where: str) -> None:
    """Every model is registered, and pulled with a pin a script can fetch: the registry's sha256-pinned source
    (Hub file or the authors' URL), or `--repo` + `--revision` of a mirror."""
    for model in [*served, *pulls]:
        try:
            get_entry(model)
        except KeyError as exc:
            raise AssertionError(f"{where}: {exc.args[0]}") from None
    missing = sorted(set(served) - set(pulls))
    assert not missing, f"{where}: serves {missing} but no init container pulls them (the pod would crash-loop)"
    for model, args in pulls.items():
        source = get_entry(model).weights
        if source.verification_method != "sha256" or source.fetch_method not in ("hub", "http"):
            parsed = build_parser().parse_args(args)
            assert parsed.repo and parsed.revision, (
                f"{where}: the registry pins no sha256-verified file a pod can fetch for {model}: pull it with "
                f"--repo and --revision")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str = "zoo-gateway") -> dict[str, Any]:
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def deployment_models(deployment: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    spec = pod_spec(deployment)
    pulls: dict[str, list[str]] = {}
    for init in spec.get("initContainers", []):
        pulls.update(pulled_models(init["args"]))
    return serve_models(container(spec)["args"]), pulls


def gateway_config_of(objects: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    (name,) = [v["configMap"]["name"] for v in volumes if v["name"] == "config"]
    return yaml.safe_load(by_name(objects, "ConfigMap", name)["data"]["gateway.yaml"])


def strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields rejected, as the API server prunes/refuses them (fields
    marked x-kubernetes-preserve-unknown-fields stay open)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], Any]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra (`make test` installs it)")
    sources = json.loads((SCHEMAS / "sources.json").read_text())["crds"]
    out = {}
    for file, src in sources.items():
        schema = strict(json.loads((SCHEMAS / "crds" / file).read_text()))
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is validated by the API server itself
        out[(src["apiVersion"], src["kind"])] = jsonschema.Draft7Validator(schema)
    return out


# --- Kubernetes: every object is valid ---------------------------------------------------------------------
def test_every_object_validates_against_its_schema(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    assert_valid(name, objects)


def assert_valid(name: str, objects: list[dict[str, Any]]) -> None:
    """Every object validates against its Kubernetes (both versions) or vendored CRD schema."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is a test extra (`make test` installs it)")
    assert objects
    for obj in objects:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        validator = crd_validators().get((obj["apiVersion"], obj["kind"]))
        if validator is not None:
            errors = sorted(validator.iter_errors(obj), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: {obj['apiVersion']} {obj['kind']} is neither a Kubernetes {version} kind "
                            f"nor one of the vendored CRDs")
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{where} (Kubernetes {version}): {err.message} at {list(err.absolute_path)}")


def test_vendored_schemas_record_their_source() -> None:
    sources = json.loads((SCHEMAS / "sources.json").read_text())
    compose = sources["compose-spec.json"]
    assert sha256_of(SCHEMAS / "compose-spec.json") == compose["sha256"]
    assert re.fullmatch(r"[0-9a-f]{40}", compose["commit"])
    assert {p.name for p in (SCHEMAS / "crds").iterdir()} == set(sources["crds"])
    for src in sources["crds"].values():
        assert src["tag"] and re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and re.fullmatch(r"[0-9a-f]{64}",
                                                                                           src["sha256"])


# --- Kubernetes: models, pods, services ----------------------------------------------------------------------
def test_every_pod_pulls_every_model_it_serves_and_routes_exactly_them(overlay) -> None:
    name, objects = overlay
    deployments = of_kind(objects, "Deployment")
    if name == "kserve":
        assert not deployments
        return
    assert {d["metadata"]["name"] for d in deployments} == {"zoo-gateway-image", "zoo-gateway-video"}
    served_anywhere = set()
    for deployment in deployments:
        where = f"{name}: Deployment/{deployment['metadata']['name']}"
        served, pulls = deployment_models(deployment)
        check_models(served, pulls, where)
        config = gateway_config_of(objects, pod_spec(deployment)["volumes"])
        assert set(config["models"]) == set(served), f"{where}: gateway config routes {sorted(config['models'])}"
        served_anywhere |= set(served)
    assert served_anywhere == {"detr_resnet50", "ckdn_r50", "ftcn_tt"}  # the registry's default set, all served


def test_an_unknown_model_fails_naming_it(tmp_path: Path) -> None:
    kubectl()
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "groups" / "image", tmp_path)],  # kustomize wants it relative
        "patches": [{"target": {"kind": "Deployment"}, "patch": yaml.safe_dump([
            {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "detr_resnet_50"}])}]}))
    (deployment,) = of_kind(render(tmp_path), "Deployment")
    with pytest.raises(AssertionError, match="unknown model 'detr_resnet_50'"):
        check_models(*deployment_models(deployment), "test overlay")


def test_gateway_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (secret,) = yaml_docs(K8S / "base" / "keys" / "api-keys.yaml")
    keys = tmp_path / "api-keys.yaml"
    keys.write_text(secret["stringData"]["api-keys.yaml"])
    monkeypatch.setenv("ZOO_API_KEYS_FILE", str(keys))
    monkeypatch.delenv("ZOO_API_KEYS", raising=False)
    backends = {"torchserve": BackendConfig("torchserve", "torchserve", {})}  # what `zoo serve` supplies
    configs = {}
    for group in ("image", "video"):
        configs[group] = load_config(K8S / "groups" / group / "config" / "gateway.yaml", backends)
        StreamSettings.from_config(configs[group].streams)
    cfg = configs["image"]
    assert cfg.auth_enabled and cfg.lookup_key("CHANGE-ME").allows("detr_resnet50")
    assert not cfg.lookup_key("CHANGE-ME").allows("ftcn_tt")
    assert cfg.max_request_bytes == 512 * 1024 * 1024
    assert configs["video"].max_request_bytes == 512 * 1024 * 1024


def test_deployment_probes_and_ports_match_the_gateway() -> None:
    (deployment,) = yaml_docs(K8S / "model-group" / "deployment.yaml")
    services = {s["metadata"]["name"]: s for s in yaml_docs(K8S / "model-group" / "services.yaml")}
    spec = pod_spec(deployment)
    gateway = container(spec)
    assert gateway["args"][0] == "serve"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"  # ready = every model loaded
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert {k: v for k, v in ports.items() if k != "ts-metrics"} == GATEWAY_PORTS
    assert (SERVE.http_port, SERVE.grpc_port) == (GATEWAY_PORTS["http"], GATEWAY_PORTS["grpc"])  # `zoo serve`
    parsed = build_parser().parse_args([*gateway["args"], "toy_echo"])
    assert parsed.torchserve_metrics_port == ports["ts-metrics"] == TS_METRICS_PORT
    assert parsed.host == parsed.torchserve_metrics_host == "0.0.0.0"
    assert {p["targetPort"] for p in services["zoo-gateway"]["spec"]["ports"]} == {"http", "grpc"}
    assert services["zoo-gateway-grpc"]["spec"]["clusterIP"] == "None"  # client-side gRPC balancing
    assert spec["terminationGracePeriodSeconds"] > max(
        yaml.safe_load((K8S / "groups" / g / "config" / "gateway.yaml").read_text())["server"]["grace_s"]
        for g in ("image", "video"))


def test_pods_run_as_non_root_on_a_read_only_root_filesystem(overlay) -> None:
    name, objects = overlay
    pods = [(f"Deployment/{d['metadata']['name']}", pod_spec(d)) for d in of_kind(objects, "Deployment")]
    pods += [(f"InferenceService/{i['metadata']['name']}", i["spec"]["predictor"])
             for i in of_kind(objects, "InferenceService")]
    assert pods
    for where, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, where
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
        if "model" in spec:  # KServe: the runtime's container, with the predictor's mounts merged in
            containers.append(spec["model"])
        for c in containers:
            if "securityContext" in c:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False, (where, c["name"])
                assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for path in WRITABLE_PATHS:
                assert mounts.get(path) in empty_dirs, f"{where}/{c['name']}: {path} must be a writable emptyDir"


def test_gpu_resources_only_in_the_gpu_overlays(overlay) -> None:
    name, objects = overlay
    for deployment in of_kind(objects, "Deployment"):
        spec = pod_spec(deployment)
        limits = container(spec)["resources"]["limits"]
        if name == "gpu":
            assert str(limits["nvidia.com/gpu"]) == "1"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in spec
        assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} == {
            "kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_services_budgets_and_policies_select_the_pods(overlay) -> None:
    name, objects = overlay
    deployments = of_kind(objects, "Deployment")
    if not deployments:
        return
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]

    def selects(selector: dict[str, str]) -> list[int]:
        return [i for i, labels in enumerate(pod_labels) if selector.items() <= labels.items()]

    for service in of_kind(objects, "Service"):
        assert len(selects(service["spec"]["selector"])) == 1, service["metadata"]["name"]
        port_names = {p["name"] for p in container(pod_spec(deployments[selects(service["spec"]["selector"])[0]]))
                      ["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert sorted(i for b in budgets for i in selects(b["spec"]["selector"]["matchLabels"])) == list(
        range(len(deployments)))
    (policy,) = of_kind(objects, "NetworkPolicy")
    assert len(selects(policy["spec"]["podSelector"]["matchLabels"])) == len(deployments)
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert open_ports == set(GATEWAY_PORTS.values()), "only the gateway's ports may be reachable by anyone"
    (metrics_rule,) = [rule for rule in policy["spec"]["ingress"] if "from" in rule]
    assert [p["port"] for p in metrics_rule["ports"]] == [TS_METRICS_PORT]  # TorchServe metrics: Prometheus only


# --- Kubernetes: monitoring and autoscaling -------------------------------------------------------------------
def test_generated_rule_and_dashboard_objects_are_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_prometheus_rule_and_dashboards_match_deploy(overlay) -> None:
    name, objects = overlay
    if name == "kserve":
        return
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    groups = [g for f in config["rule_files"] for g in yaml.safe_load((DEPLOY / "prometheus" / f).read_text())
              ["groups"]]
    (rule,) = of_kind(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == groups
    dashboards = {m["metadata"]["name"]: m for m in of_kind(objects, "ConfigMap") if "grafana_dashboard" in
                  m["metadata"].get("labels", {})}
    files = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files)
    for path in files:
        cm = dashboards[f"zoo-gateway-dashboard-{path.stem}"]
        assert cm["data"] == {path.name: path.read_text()}
        json.loads(cm["data"][path.name])


def test_service_monitor_scrapes_both_jobs_of_every_group(overlay) -> None:
    name, objects = overlay
    if name == "kserve":
        return
    (monitor,) = of_kind(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in of_kind(objects, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert len(scraped) == len(of_kind(objects, "Deployment"))
    jobs = {job["job_name"] for job in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
            ["scrape_configs"]}
    by_port = {e["port"]: [r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job"]
               for e in monitor["spec"]["endpoints"]}
    assert by_port == {"http": ["zoo-gateway"], "ts-metrics": ["torchserve"]} and jobs == {"zoo-gateway", "torchserve"}
    for service in scraped:
        assert {p["name"] for p in service["spec"]["ports"]} == set(by_port)


def test_autoscalers_target_a_group_on_the_in_flight_gauge_of_its_models(overlay) -> None:
    name, objects = overlay
    scaled, hpas = of_kind(objects, "ScaledObject"), of_kind(objects, "HorizontalPodAutoscaler")
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    if name == "kserve":
        assert not scaled and not hpas
        return
    assert bool(scaled) == (name == "gpu") and bool(hpas) == (name == "cpu")  # KEDA, or the HPA alternative
    for obj in scaled:
        served, _ = deployment_models(deployments[obj["spec"]["scaleTargetRef"]["name"]])
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and set(trigger["metadata"]) <= KEDA_PROMETHEUS_KEYS
        query = trigger["metadata"]["query"]
        found = re.fullmatch(rf'sum\({IN_FLIGHT_GAUGE}\{{job="zoo-gateway", model=~"([\w|]+)"\}}\)', query)
        assert found and sorted(found.group(1).split("|")) == sorted(served), query
        float(trigger["metadata"]["threshold"])
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == IN_FLIGHT_GAUGE
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in scaled + hpas]
    assert sorted(targets) == sorted(deployments)


# --- KServe --------------------------------------------------------------------------------------------------
def test_kserve_runtime_and_inference_service_run_zoo_serve() -> None:
    objects = copy.deepcopy(list(_rendered("kserve")))
    (runtime,) = of_kind(objects, "ServingRuntime")
    (isvc,) = of_kind(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert predictor["model"]["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    (server,) = runtime["spec"]["containers"]
    served = serve_models(server["args"] + predictor["model"]["args"])  # KServe concatenates the two
    pulls: dict[str, list[str]] = {}
    for init in predictor["initContainers"]:
        pulls.update(pulled_models(init["args"]))
    check_models(served, pulls, "kserve: InferenceService")
    assert {p["containerPort"] for p in server["ports"]} == {GATEWAY_PORTS["http"]}
    assert set(gateway_config_of(objects, predictor["volumes"])["models"]) == set(served)


# --- the Triton engine ----------------------------------------------------------------------------------------
def test_triton_component_switches_every_group_to_triton_and_nothing_else() -> None:
    """overlays/gpu-triton = the gpu overlay + components/triton: the same objects, except that every group's
    `zoo serve` runs `--engine triton` and the ServiceMonitor labels the engine's metrics port job `triton`."""
    objects = render(K8S / "overlays" / "gpu-triton")
    assert_valid("gpu-triton", objects)
    gpu = copy.deepcopy(list(_rendered("gpu")))
    for deployment in of_kind(objects, "Deployment"):
        args = container(pod_spec(deployment))["args"]
        parsed = build_parser().parse_args(args)
        assert parsed.engine == "triton", args
        reference = by_name(gpu, "Deployment", deployment["metadata"]["name"])
        assert [a for a in args if a not in ("--engine", "triton")] == container(pod_spec(reference))["args"]
        assert deployment_models(deployment) == deployment_models(reference)
    (monitor,) = of_kind(objects, "ServiceMonitor")
    jobs = {e["port"]: [r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job"]
            for e in monitor["spec"]["endpoints"]}
    assert jobs == {"http": ["zoo-gateway"], "ts-metrics": ["triton"]}
    unchanged = [o for o in objects if o["kind"] not in ("Deployment", "ServiceMonitor")]
    assert unchanged == [o for o in gpu if o["kind"] not in ("Deployment", "ServiceMonitor")]


def test_kserve_triton_runtime_serves_the_repository_its_init_containers_build() -> None:
    objects = render(K8S / "kserve-triton")
    assert_valid("kserve-triton", objects)
    (isvc,) = of_kind(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    # KServe's own Triton runtime (modelFormat triton), speaking OIP v2, started through `zoo tritonserver`
    assert model["runtime"] == "kserve-tritonserver" and model["modelFormat"]["name"] == "triton"
    assert model["protocolVersion"] == "v2"
    assert model["command"] == ["zoo", "tritonserver"] and build_parser().parse_args(["tritonserver"]).func
    (store,) = [m["mountPath"] for m in model["volumeMounts"] if m["name"] == "models"]
    assert store == "/mnt/models"  # where the runtime's `--model-store=/mnt/models` looks
    pulls: dict[str, list[str]] = {}
    built: list[str] = []
    for init in predictor["initContainers"]:
        if init["args"][0] == "pull":
            pulls.update(pulled_models(init["args"]))
            continue
        parsed = build_parser().parse_args(init["args"])
        assert init["args"][0] == "build" and parsed.engine == "triton" and parsed.store == store, init["args"]
        assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["models"] == store
        built += parsed.models
    check_models(built, pulls, "kserve-triton: InferenceService")
    assert set(built) == {"detr_resnet50", "ckdn_r50"}


# --- Compose ------------------------------------------------------------------------------------------------
def test_compose_files_match_the_compose_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra (`make test` installs it)")
    validator = jsonschema.Draft7Validator(json.loads((SCHEMAS / "compose-spec.json").read_text()))
    for path in sorted((DEPLOY / "compose").glob("compose*.yaml")):
        errors = sorted(validator.iter_errors(yaml.safe_load(path.read_text())), key=str)
        assert not errors, f"{path.name}: {errors[0].message} at {list(errors[0].absolute_path)}"


def test_compose_project_serves_what_it_pulls_and_mounts_what_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    served = serve_models(services["gateway"]["command"])
    check_models(served, pulled_models(services["pull-weights"]["command"]), "compose")
    assert services["gateway"]["depends_on"]["pull-weights"]["condition"] == "service_completed_successfully"
    command = build_parser().parse_args(services["gateway"]["command"])
    assert command.torchserve_metrics_port == TS_METRICS_PORT and command.torchserve_metrics_host == "0.0.0.0"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / "compose" / source).exists(), f"compose mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "zoo-gateway.yml").read_text())
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["../grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_compose_copies_of_prometheus_and_grafana_config_differ_only_in_addresses() -> None:
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job.pop("static_configs") for job in compose["scrape_configs"]}
    for job in shipped["scrape_configs"]:
        job.pop("static_configs")
    assert compose == shipped
    assert targets == {"zoo-gateway": [{"targets": [f"gateway:{GATEWAY_PORTS['http']}"]}],
                       "torchserve": [{"targets": [f"gateway:{TS_METRICS_PORT}"]}]}
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "zoo-prometheus.yml")
                                .read_text())
    compose_ds = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())
    assert compose_ds["datasources"][0].pop("url") == "http://prometheus:9090"
    datasource["datasources"][0].pop("url")
    assert compose_ds == datasource


# --- Dockerfile ---------------------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\") and pending.strip():
            keyword, _, rest = pending.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) or path.startswith(p + "/")
               for p in patterns)


def test_dockerfile_copies_existing_sources_and_pins_what_the_suite_runs() -> None:
    instructions = dockerfile_instructions((REPO / "Dockerfile").read_text())
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copied = []
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from="):
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the tree"
                assert not dockerignored(source, ignore), f"COPY {source}: excluded by .dockerignore"
                copied.append(source)
    # the wheel stage gets every package and every file setup.py packages
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= set(copied)
    assert {"pyproject.toml", "setup.py", "deploy/prometheus"} <= set(copied)
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    make_pin = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert args["TORCH_VERSION"] == make_pin == "2.13.0"
    assert args["TORCH_VARIANT"] == "cu130" and args["TORCH_INDEX_URL"].endswith("/${TORCH_VARIANT}")
    (user,) = [a for k, a in instructions if k == "USER"]
    assert user.split(":")[0] in ("${ZOO_UID}", args.get("ZOO_UID")) and args["ZOO_UID"] != "0"
    assert [k for k, _ in instructions].count("HEALTHCHECK") == 1
    assert "/v2/health/ready" in next(a for k, a in instructions if k == "HEALTHCHECK")
    (entrypoint,) = [json.loads(a) for k, a in instructions if k == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for k, a in instructions if k == "CMD"]
    assert entrypoint == ["zoo"]
    for model in serve_models(cmd):  # the default set starts: every model has a Hub pin `zoo pull` can fetch
        assert registry_source(get_entry(model)) is not None, f"the image's default model {model} has no Hub pin"
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert "ZOO_HOME=/var/lib/zoo-gateway" in env and "ZOO_MTCNN_DIR=/opt/" in env  # assets outside the volume
