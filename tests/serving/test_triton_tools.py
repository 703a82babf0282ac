"""Triton's own clients, unmodified (tritonclient HTTP + gRPC, sync + aio), on what Triton's tools ask before and
after inference: model config, statistics, the repository index, metadata that matches the outputs inference
returns, and errors they can parse with the right status. The gateway is the in-process one of
test_dataplane.py (the real tiny `toy_echo` network, no TorchServe)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from tests.serving.gateway_support import Running, in_process_gateway
from tests.serving.test_dataplane import AUTH, BACKEND, GRPC_AUTH, TOY_KEY, backend, config, image_input
from tests.support import http_request, json_body
from zoo.toy import TOY_ECHO

TYPED = "toy_typed"  # pass copies of AUTH to tritonclient: it adds headers to the dict it is given


@pytest.fixture(scope="module")
def gw() -> Iterator[Running]:
    with in_process_gateway(config(), {BACKEND: backend()}) as running:
        yield running


def http_client(gw: Running) -> thttp.InferenceServerClient:
    return thttp.InferenceServerClient(gw.http_url.removeprefix("http://"))


def grpc_client(gw: Running) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(gw.grpc_target)


def grpc_json(message: Any) -> dict[str, Any]:
    """A tritonclient gRPC message (tritonclient's own classes) as Triton's REST JSON, int64 as numbers."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)

    def numbers(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        return value

    return numbers(doc)


# --- model config -------------------------------------------------------------------------------------------
def test_model_config_derives_from_the_declared_tensors_over_both_protocols(gw: Running) -> None:
    config = http_client(gw).get_model_config(TYPED, headers=dict(AUTH))
    assert config["name"] == TYPED and config["max_batch_size"] >= 1  # every tensor has the batch dimension
    # one image per batch item: Triton's dims [1] with reshape [] (metadata: [-1])
    assert [(i["name"], i["data_type"], i["dims"], i["reshape"]) for i in config["input"]] == [
        ("image", "TYPE_STRING", [1], {"shape": []})]
    expected = [(s.name, "TYPE_STRING" if s.datatype == "BYTES" else f"TYPE_{s.datatype}", list(s.shape))
                for s in TOY_ECHO.outputs]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == expected
    assert config["instance_group"][0]["count"] == 1 and config["instance_group"][0]["kind"] == "KIND_CPU"

    grpc_config = grpc_json(grpc_client(gw).get_model_config(TYPED, headers=dict(GRPC_AUTH)).config)
    assert grpc_config["name"] == TYPED and grpc_config["max_batch_size"] == config["max_batch_size"]
    assert [(o["name"], o["data_type"], o.get("dims", [])) for o in grpc_config["output"]] == expected
    # a version and an alias answer too, under the name asked for
    assert http_client(gw).get_model_config("toy_echo_v0", "1", headers=dict(AUTH))["name"] == "toy_echo_v0"


def test_model_config_metadata_and_outputs_agree_for_every_typed_model(gw: Running) -> None:
    """Every model in the repository index whose metadata is typed: metadata == what inference returns, and the
    model config lists the same tensors without the batch dimension."""
    client = http_client(gw)
    checked = 0
    for entry in client.get_model_repository_index(headers=dict(AUTH)):
        name = entry["name"]
        meta = client.get_model_metadata(name, headers=dict(AUTH))
        if [o["name"] for o in meta["outputs"]] == ["output"]:
            continue  # an untyped test model: its JSON answer travels as one BYTES output
        result = client.infer(name, [image_input(thttp)], headers=dict(AUTH)).get_response()
        got = [(o["name"], o["datatype"], len(o["shape"])) for o in result["outputs"]]
        assert got == [(o["name"], o["datatype"], len(o["shape"])) for o in meta["outputs"]], name
        for out, declared in zip(result["outputs"], meta["outputs"], strict=True):
            assert all(d == -1 or d == g for d, g in zip(declared["shape"], out["shape"], strict=True)), name
        config = client.get_model_config(name, headers=dict(AUTH))
        assert [(o["name"], o["dims"]) for o in config["output"]] == [
            (o["name"], o["shape"][1:]) for o in meta["outputs"]], name
        checked += 1
    assert checked >= 1


# --- statistics ---------------------------------------------------------------------------------------------
def _success(stats: dict[str, Any], model: str) -> int:
    found = [s for s in stats["model_stats"] if s["name"] == model]
    assert found, stats
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in found)


def test_statistics_count_successes_and_failures_over_both_protocols(gw: Running) -> None:
    client, gclient = http_client(gw), grpc_client(gw)
    before = _success(client.get_inference_statistics(TYPED, headers=dict(AUTH)), TYPED)
    client.infer(TYPED, [image_input(thttp)], headers=dict(AUTH))
    gclient.infer(TYPED, [image_input(tgrpc)], headers=dict(GRPC_AUTH))
    stats = client.get_inference_statistics(TYPED, headers=dict(AUTH))
    assert _success(stats, TYPED) == before + 2
    one = stats["model_stats"][0]
    assert one["version"] == "1"  # no version named: the default, as a number (perf_analyzer parses it)
    assert one["inference_count"] >= 2 and one["execution_count"] >= 2 and one["last_inference"] > 0
    infer_stats = one["inference_stats"]
    assert infer_stats["compute_infer"]["count"] >= 2 and infer_stats["compute_infer"]["ns"] > 0
    assert one["batch_stats"][0]["batch_size"] == 1
    assert _success(grpc_json(gclient.get_inference_statistics(TYPED, headers=dict(GRPC_AUTH))), TYPED) == before + 2

    with pytest.raises(InferenceServerException):
        client.infer("broken", [image_input(thttp)], headers=dict(AUTH))
    broken = client.get_inference_statistics("broken", headers=dict(AUTH))["model_stats"][0]["inference_stats"]
    assert broken["fail"]["count"] >= 1

    every = client.get_inference_statistics(headers=dict(AUTH))  # no model: every model this key may use
    assert {s["name"] for s in every["model_stats"]} >= {TYPED, "broken", "toy_echo"}
    toy_only = client.get_inference_statistics(headers={"Authorization": f"Bearer {TOY_KEY}"})
    assert {s["name"] for s in toy_only["model_stats"]} == {"toy_echo"}


# --- repository index ------------------------------------------------------------------------------------------
def test_repository_index_over_grpc_equals_rest(gw: Running) -> None:
    rest_index = http_client(gw).get_model_repository_index(headers=dict(AUTH))
    grpc_index = grpc_json(grpc_client(gw).get_model_repository_index(headers=dict(GRPC_AUTH)))["models"]
    assert [(m["name"], m["state"]) for m in grpc_index] == [(m["name"], m["state"]) for m in rest_index]
    assert {m["name"] for m in rest_index} >= {"toy_echo", TYPED}


# --- errors -------------------------------------------------------------------------------------------------------
def test_errors_are_parsed_with_their_status(gw: Running) -> None:
    cases = [
        (lambda: http_client(gw).get_model_config("nope", headers=dict(AUTH)), "404", "unknown model 'nope'"),
        (lambda: http_client(gw).get_inference_statistics("nope", headers=dict(AUTH)), "404", "unknown model 'nope'"),
        (lambda: http_client(gw).get_model_config(TYPED), "401", "missing API key"),
        (lambda: grpc_client(gw).get_model_config("nope", headers=dict(GRPC_AUTH)), "StatusCode.NOT_FOUND",
         "unknown model 'nope'"),
        (lambda: grpc_client(gw).get_inference_statistics("nope", headers=dict(GRPC_AUTH)), "StatusCode.NOT_FOUND",
         "unknown model 'nope'"),
        (lambda: grpc_client(gw).get_model_repository_index(), "StatusCode.UNAUTHENTICATED", "missing API key"),
    ]
    for call, status, needle in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status and needle in info.value.message(), (status, info.value)


# --- the aio clients ------------------------------------------------------------------------------------------
def test_aio_clients_read_config_statistics_and_index(gw: Running) -> None:
    async def main() -> None:
        http = thttp_aio.InferenceServerClient(gw.http_url.removeprefix("http://"))
        grpc = tgrpc_aio.InferenceServerClient(gw.grpc_target)
        try:
            config = await http.get_model_config(TYPED, headers=dict(AUTH))
            gconfig = await grpc.get_model_config(TYPED, headers=dict(GRPC_AUTH), as_json=True)
            assert [o["name"] for o in config["output"]] == [o["name"] for o in gconfig["config"]["output"]]
            assert (await http.get_inference_statistics(TYPED, headers=dict(AUTH)))["model_stats"][0]["name"] == TYPED
            gstats = await grpc.get_inference_statistics(TYPED, headers=dict(GRPC_AUTH), as_json=True)
            assert gstats["model_stats"][0]["name"] == TYPED
            index = await grpc.get_model_repository_index(headers=dict(GRPC_AUTH), as_json=True)
            assert TYPED in {m["name"] for m in index["models"]}
            assert TYPED in {m["name"] for m in await http.get_model_repository_index(headers=dict(AUTH))}
            with pytest.raises(InferenceServerException) as info:
                await http.get_model_config("nope", headers=dict(AUTH))
            assert info.value.status() == "404" and "unknown model 'nope'" in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                await grpc.get_model_config("nope", headers=dict(GRPC_AUTH))
            assert info.value.status() == "StatusCode.NOT_FOUND"
        finally:
            await http.close()
            await grpc.close()

    asyncio.run(main())


# --- OpenAPI from the declared tensors -----------------------------------------------------------------------
def test_openapi_has_a_typed_inference_path_per_model_the_key_may_use(gw: Running) -> None:
    status, _, raw = http_request(f"{gw.http_url}/openapi.json", None, dict(AUTH), "GET")
    doc = json_body(raw)
    typed = doc["paths"][f"/v2/models/{TYPED}/infer"]["post"]
    outputs = typed["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["outputs"]
    described = [(o["properties"]["name"]["enum"][0], o["properties"]["datatype"]["enum"][0],
                  o["properties"]["shape"]["maxItems"]) for o in outputs["items"]["oneOf"]]
    assert status == 200 and described == [(s.name, s.datatype, len(s.shape) + 1) for s in TOY_ECHO.outputs]
    inputs = typed["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert [i["properties"]["name"]["enum"] for i in inputs["items"]["oneOf"]] == [["image"]]
    toy_only = json_body(http_request(f"{gw.http_url}/openapi.json", None,
                                      {"Authorization": f"Bearer {TOY_KEY}"}, "GET")[2])
    assert [p for p in toy_only["paths"] if not p.count("{") and p.endswith("/infer")] == ["/v2/models/toy_echo/infer"]
    anonymous = json_body(http_request(f"{gw.http_url}/openapi.json", None, {}, "GET")[2])
    assert "/v2/models/{model}/infer" in anonymous["paths"]  # the routes, but no model without a key
    assert not [p for p in anonymous["paths"] if not p.count("{") and p.endswith("/infer")]


def test_server_metadata_lists_the_extensions_that_work(gw: Running) -> None:
    extensions = http_client(gw).get_server_metadata(headers=dict(AUTH))["extensions"]
    assert {"model_configuration", "statistics", "binary_tensor_data", "classification"} <= set(extensions)
    assert "model_repository" not in extensions  # the index only: no load/unload
    assert list(grpc_client(gw).get_server_metadata(headers=dict(GRPC_AUTH)).extensions) == extensions
