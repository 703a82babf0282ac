"""One real TorchServe (random weights) serving the three flagship models behind one real gateway, shared
by the e2e client and quickstart tests of a session (building the DETR archive alone takes tens of seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.gateway import GatewayProcess
from cli.torchserve import TorchServe
from tests.serving.gateway_support import running_gateway
from tests.support import running_torchserve

FLAGSHIP_MODELS = ["detr_resnet50", "ckdn_r50", "ftcn_tt"]
# generous: CPU DETR / FTCN on a machine shared with other work
DEADLINE_S = 600


@dataclass
class Flagship:
    ts: TorchServe
    gateway: GatewayProcess

    @property
    def url(self) -> str:
        return self.gateway.http_url


@pytest.fixture(scope="session")
def flagship(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flagship]:
    workdir: Path = tmp_path_factory.mktemp("flagship")
    with running_torchserve(workdir / "ts", FLAGSHIP_MODELS, ready_timeout_s=DEADLINE_S) as ts, \
            running_gateway(ts, workdir / "gw", {"limits": {"deadline_s": DEADLINE_S}}) as gateway:
        yield Flagship(ts, gateway)
