"""The gateway when its backend dies and comes back, and when it is itself stopped with requests in flight."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from cli.torchserve import TorchServe
from proto import oip
from tests.serving.gateway_support import png_bytes, running_gateway
from tests.support import build_archives, http_request, json_body, running_torchserve

pytestmark = pytest.mark.integration

PNG = png_bytes()


def predict(url: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
    return http_request(f"{url}/v1/models/toy_echo:predict{query}", PNG, {"Content-Type": "image/png"}, "POST")


def test_backend_down_is_503_with_retry_after_then_recovers(tmp_path) -> None:
    with running_torchserve(tmp_path / "ts1", ["toy_echo"]) as ts, running_gateway(ts, tmp_path / "gw") as gw:
        assert predict(gw.http_url)[0] == 200
        os.killpg(ts.proc.pid, signal.SIGKILL)  # TorchServe killed while the gateway runs
        ts.stop()

        status, headers, body = predict(gw.http_url)
        assert status == 503 and headers["Retry-After"] == "1", body
        assert "TorchServe unavailable" in json_body(body)["error"]
        assert http_request(f"{gw.http_url}/v2/health/ready")[0] == 503
        assert http_request(f"{gw.http_url}/v2/health/live")[0] == 200

        msg = oip.ModelInferRequest(model_name="toy_echo")
        msg.inputs.add(name="image", datatype="BYTES", shape=[1])
        msg.raw_input_contents.append(len(PNG).to_bytes(4, "little") + PNG)
        with grpc.insecure_channel(gw.grpc_target) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=oip.ModelInferResponse.FromString)
            with pytest.raises(grpc.RpcError) as err:
                infer(msg, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("retry-after", "1") in tuple(err.value.trailing_metadata())

        # a new TorchServe on the same ports: the gateway's channel reconnects by itself
        again = TorchServe(ts.model_store, build_archives(ts.model_store, ["toy_echo"]), tmp_path / "ts2",
                           ports=ts.ports)
        with again:
            again.wait_ready(timeout_s=120)
            deadline = time.monotonic() + 20
            while (status := predict(gw.http_url)[0]) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200
            client = tgrpc.InferenceServerClient(gw.grpc_target)
            assert client.is_server_ready()
            image = tgrpc.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([PNG], dtype=object))
            assert client.infer("toy_echo", [image]).as_numpy("width").tolist() == [[16]]


def test_sigterm_drains_in_flight_requests(tmp_path) -> None:
    with running_torchserve(tmp_path / "ts", ["toy_echo"]) as ts:
        gw_cm = running_gateway(ts, tmp_path / "gw", {"server": {"grace_s": 10}})
        gw = gw_cm.__enter__()
        try:
            result: dict = {}
            slow = threading.Thread(target=lambda: result.update(answer=predict(gw.http_url, "?sleep_ms=1500")))
            slow.start()
            time.sleep(0.5)  # the request is in flight
            started = time.monotonic()
            code = gw.stop()  # SIGTERM, waits for the process
            slow.join(10)
            assert code == 0 and result["answer"][0] == 200, result
            assert time.monotonic() - started < 8
            with pytest.raises(InferenceServerException):
                tgrpc.InferenceServerClient(gw.grpc_target).is_server_live(client_timeout=2)
        finally:
            gw_cm.__exit__(None, None, None)
