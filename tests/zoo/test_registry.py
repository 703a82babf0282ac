"""Registry contract: every entry is complete, buildable, archivable; weights resolution fails loudly."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from cli.main import main as zoo_main
from handlers.base import ZooHandler
from zoo import get_entry, list_models
from zoo._registry import _DEFAULT_TAGS, _REGISTRY, NAME_RE, ModelEntry, WeightsSource, register
from zoo.mar import model_config_yaml
from zoo.tensors import TensorSpec, specs_from
from zoo.weights import WeightsError, load_strict, missing_weights_message, resolve_weights

REPO = Path(__file__).resolve().parents[2]


def test_registry_has_the_flagship_models() -> None:
    names = {e.name for e in list_models()}
    assert {"detr_resnet50.coco", "ckdn_r50.pipal", "ftcn_tt.ffpp_c23"} <= names


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_names_are_arch_dot_tag_and_the_bare_arch_names_the_default_tag(entry: ModelEntry) -> None:
    assert NAME_RE.match(entry.name) and entry.name == f"{entry.arch}.{entry.tag}"
    assert get_entry(entry.name) is entry
    default = get_entry(entry.arch)
    assert default.arch == entry.arch and default.is_default_tag
    if entry.is_default_tag:  # served under the short name it had before tags, reachable by the full one too
        assert default is entry and entry.serve_name == entry.arch and entry.aliases == (entry.name,)
    else:
        assert entry.serve_name == entry.name and entry.aliases == ()
    summary = entry.summary()
    assert (summary["name"], summary["serve_name"], summary["aliases"]) == (
        entry.name, entry.serve_name, list(entry.aliases))


def test_old_names_are_aliases_of_the_default_tags() -> None:
    for old, new in [("detr_resnet50", "detr_resnet50.coco"), ("ckdn_r50", "ckdn_r50.pipal"),
                     ("ftcn_tt", "ftcn_tt.ffpp_c23"), ("toy_echo", "toy_echo.seeded"),
                     ("patchforensics_block2", "patchforensics_block2.celebahq_pgan")]:
        assert get_entry(old) is get_entry(new) and get_entry(new).serve_name == old


def test_a_second_tag_of_an_architecture_is_served_under_its_full_name() -> None:
    first = dataclasses.replace(_tiny_entry(), name="tiny_arch_for_test.a")
    second = dataclasses.replace(_tiny_entry(), name="tiny_arch_for_test.b")
    try:
        register(first)
        register(second)
        assert get_entry("tiny_arch_for_test") is first and first.serve_name == "tiny_arch_for_test"
        assert second.serve_name == "tiny_arch_for_test.b" and get_entry("tiny_arch_for_test.b") is second
        with pytest.raises(ValueError, match="registered twice"):
            register(dataclasses.replace(first))
    finally:
        _REGISTRY.pop(first.name, None)
        _REGISTRY.pop(second.name, None)
        _DEFAULT_TAGS.pop("tiny_arch_for_test", None)


@pytest.mark.parametrize("bad", ["detr_resnet50", "Detr.coco", "detr.", ".coco", "detr.coco.x", "detr-r50.coco"])
def test_names_that_are_not_arch_dot_tag_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not 'arch.tag'"):
        register(dataclasses.replace(_tiny_entry(), name=bad))


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_entry_is_complete(entry: ModelEntry) -> None:
    summary = entry.summary()
    json.dumps(summary)  # serialisable: it goes into archives and metadata
    assert entry.task and entry.license and entry.paper.startswith("http")
    assert (REPO / (entry.handler.replace(".", "/") + ".py")).is_file()
    src = entry.weights
    assert src.hf_repo or src.upstream_url, "every entry names where its real weights come from"
    if src.hf_repo:
        assert src.filename
    cfg = model_config_yaml(entry)
    assert cfg["batchSize"] >= 1 and cfg["maxWorkers"] >= cfg["minWorkers"] >= 1


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="detr_resnet50"):
        get_entry("no_such_model")


@pytest.mark.parametrize("outputs", [{}, (), {"score": "a float"}, (TensorSpec("y", "FP32", (1,)),) * 2])
def test_outputs_must_be_distinct_typed_tensors(outputs: object) -> None:
    with pytest.raises(ValueError, match="outputs must be TensorSpecs with distinct names"):
        register(dataclasses.replace(_tiny_entry(), name="tiny_arch_for_test.outputs", outputs=outputs))


def _tiny_entry() -> ModelEntry:
    return ModelEntry(
        name="tiny_test", task="test", builder=lambda width=3: torch.nn.Linear(width, 2), config={"width": 3},
        handler="handlers.detr_handler", inputs={}, outputs=(TensorSpec("logits", "FP32", (2,)),),
        weights=WeightsSource(hf_repo="example/tiny", revision="0" * 40, filename="model.safetensors"),
        license="MIT", paper="https://example.org",
    )


def test_missing_weights_error_names_hub_repo_and_remedies() -> None:
    entry = _tiny_entry()
    with pytest.raises(WeightsError) as err:
        resolve_weights(entry)
    message = str(err.value)
    assert message == missing_weights_message(entry)
    for needle in ("example/tiny", "zoo pull tiny_test", "--weights", "--random-weights"):
        assert needle in message


def test_random_weights_are_seeded_and_labelled() -> None:
    entry = _tiny_entry()
    a, label = resolve_weights(entry, random_weights=True, seed=3)
    b, _ = resolve_weights(entry, random_weights=True, seed=3)
    c, _ = resolve_weights(entry, random_weights=True, seed=4)
    assert label.is_random and label.seed == 3 and "RANDOM" in label.short()
    assert torch.equal(a["weight"], b["weight"]) and not torch.equal(a["weight"], c["weight"])


def test_load_strict_reports_every_kind_of_mismatch() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    state = dict(model.state_dict())
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 5)
    with pytest.raises(WeightsError) as err:
        load_strict(model, state)
    message = str(err.value)
    assert "1 missing: 1.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "0.weight (5, 5)!=(2, 3)" in message


def test_local_file_weights_round_trip(tmp_path: Path) -> None:
    from zoo.weights import WeightsLabel, read_checkpoint, save_zoo_weights

    entry = _tiny_entry()
    state, _ = resolve_weights(entry, random_weights=True, seed=1)
    path = save_zoo_weights(state, tmp_path / "w.safetensors", WeightsLabel("local-file", "test"))
    loaded, label = resolve_weights(entry, weights_path=path)
    assert label.kind == "local-file" and len(label.sha256) == 64
    assert torch.equal(loaded["weight"], state["weight"])
    torch.save({"weight": state["weight"], "bias": state["bias"]}, tmp_path / "w.pth")
    assert torch.equal(read_checkpoint(tmp_path / "w.pth")["bias"], state["bias"])
    with pytest.raises(WeightsError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_zoo_list_prints_every_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert zoo_main(["list", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for entry in list_models():
        assert entry.name in out
    assert "not built" in out
    assert zoo_main(["list", "--json", "--store", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {e.name for e in list_models()}


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"list", "build", "serve"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            zoo_main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: zoo" in capsys.readouterr().out


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_typed_io_round_trips_through_the_archive_and_the_handler_answers_it(entry: ModelEntry) -> None:
    """What the gateway reads from an archive (zoo_model.json) is the entry's declaration, and the entry's
    handler maps its answers to typed outputs (the base checks each against the declaration)."""
    summary = json.loads(json.dumps(entry.summary()))
    assert specs_from(summary["outputs"]) == entry.outputs
    assert specs_from(summary["input_specs"]) == entry.input_specs
    assert [s.name for s in entry.input_specs] == list(entry.inputs)
    handler_module = importlib.import_module(entry.handler)
    (handler,) = [c for c in vars(handler_module).values() if isinstance(c, type) and issubclass(c, ZooHandler)
                  and c.__module__ == handler_module.__name__]
    assert handler.tensors is not ZooHandler.tensors, f"{handler.__name__} has no typed outputs"
