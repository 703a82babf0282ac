"""The handler base's contract, in process (no TorchServe): declared fields are picked and checked before
``decode_fields``, every answer is tagged, and a handler whose declaration does not add up fails at
``initialize`` instead of on its first request."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from handlers.base import ZooHandler
from handlers.codec import RequestError
from handlers.fields import IMAGE, CheckedFields, Field, RequestSpec
from handlers.toy_handler import ToyHandler
from tests.handlers.handler_context import HandlerContext
from zoo import get_entry
from zoo.contract import ARCHIVE_META_FILE, ARCHIVE_WEIGHTS_FILE, BATCH_SIZE_HEADER
from zoo.tensors import ANSWER_FIELD, ANSWER_TENSORS, CONTENT_TYPE, decode_tensors


def png(size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpacked toy_echo archive: its meta and weights, all ZooHandler.initialize reads."""
    folder = tmp_path_factory.mktemp("toy_echo")
    (folder / ARCHIVE_META_FILE).write_text(json.dumps({"name": "toy_echo", "weights": {"kind": "random-seeded"}}))
    save_file(get_entry("toy_echo").build().state_dict(), str(folder / ARCHIVE_WEIGHTS_FILE))
    return folder


class _Echo(ZooHandler):
    """A minimal consistent handler: image + one number in, the number out."""

    FIELDS = (IMAGE, Field("gain", "number", default=1.0, bounds=(0.0, 2.0)))

    def decode_fields(self, fields: CheckedFields) -> float:
        return fields["gain"]

    def batch(self, items: list[float]) -> list[float]:
        return items

    def predict(self, batch: list[float]) -> list[float]:
        return batch

    def encode(self, output: list[float], items: list[float]) -> list[dict[str, Any]]:
        return [{"gain": gain} for gain in output]

    def tensors(self, answer: dict[str, Any]) -> dict[str, Any]:
        return {"gain": np.asarray([answer["gain"]], dtype=np.float32)}  # not what toy_echo declares


def test_base_picks_checks_and_tags(toy_dir: Path) -> None:
    handler, context = _Echo(), HandlerContext(toy_dir)
    handler.initialize(context)
    answers = handler.handle([{"body": png(), "gain": b"0.5"}, {"body": png(), "gain": "3"},
                              {"body": png(), "colour": "red"}, {"gain": "1"}], context)
    assert answers[0] == {"gain": 0.5, "model": {"name": "toy_echo", "entry": "toy_echo.seeded", "version": "1",
                                                 "weights": {"kind": "random-seeded"}}}
    assert context.headers[0][BATCH_SIZE_HEADER] == "1"
    assert context.status == {1: 400, 2: 400, 3: 400}
    assert answers[1]["error"] == "'gain' must be between 0.0 and 2.0, got 3.0"
    assert answers[2]["error"].startswith("unknown field(s) 'colour' for toy_echo; allowed: image, gain")
    assert answers[3]["error"].startswith("no image in the request")


class _OverridesDecode(_Echo):
    def decode(self, request: dict[str, Any], index: int) -> float:  # type: ignore[misc]
        return 1.0


class _NoBatch(ZooHandler):
    FIELDS = (IMAGE,)

    def decode_fields(self, fields: CheckedFields) -> Any:
        return fields["image"]

    def encode(self, output: Any, items: list[Any]) -> list[dict[str, Any]]:
        return [{} for _ in items]


class _NoFields(_Echo):
    FIELDS = ()


class _ClashingFields(_Echo):
    def fields(self) -> tuple[Field, ...]:  # built from the entry: checked at initialize
        return (IMAGE, Field("body", "number", default=0.0, bounds=(0.0, 1.0)))


@pytest.mark.parametrize(
    ("handler_class", "error", "needle"),
    [
        (_OverridesDecode, TypeError, "overrides decode: declare FIELDS and implement decode_fields"),
        (_NoBatch, TypeError, "does not implement batch"),
        (_NoFields, TypeError, "declares no request fields"),
        (_ClashingFields, ValueError, "claim the same name twice: ['body']"),
    ],
    ids=["overrides-decode", "no-batch", "no-fields", "clashing-names"],
)
def test_inconsistent_handler_fails_at_initialize(toy_dir: Path, handler_class: type, error: type,
                                                  needle: str) -> None:
    with pytest.raises(error) as info:
        handler_class().initialize(HandlerContext(toy_dir))
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("declare", "needle"),
    [
        (lambda: Field("gain", "number", default=3.0, bounds=(0.0, 2.0)), "default 3.0 is not a number between"),
        (lambda: Field("gain", "number", default=1.0), "need bounds"),
        (lambda: Field("mode", "choice", default="fast", choices=("slow",)), "including the default 'fast'"),
        (lambda: Field("mode", "enum"), "kind must be one of"),
        (lambda: Field("gain", "number", required=True, default=1.0, bounds=(0.0, 2.0)), "only image/bytes"),
        (lambda: Field("image", "image", required=True, default=b""), "a payload has no default"),
        (lambda: Field("knob", "custom", default=1), "custom fields need parse"),
        (lambda: RequestSpec((IMAGE, Field("clip", "bytes", any_name=True), Field("x", "bytes", any_name=True))),
         "only one request field may take any_name"),
    ],
    ids=["default-out-of-bounds", "no-bounds", "default-not-a-choice", "unknown-kind", "required-parameter",
         "payload-default", "custom-without-parse", "two-any-name"],
)
def test_inconsistent_declarations_fail_when_made(declare, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        declare()
    assert needle in str(info.value)


def test_toy_handler_still_echoes_every_field_it_received(toy_dir: Path) -> None:
    handler, context = ToyHandler(), HandlerContext(toy_dir)
    handler.initialize(context)
    answer = handler.handle([{"image": png(), "sleep_ms": b"0", "note": b"kept"}], context)[0]
    assert answer["fields"] == ["image", "note", "sleep_ms"] and answer["width"] == 16
    assert answer["model"]["name"] == "toy_echo" and "batch_size" not in answer
    with pytest.raises(RequestError, match="'sleep_ms' must be between 0.0 and 10000.0"):
        handler.decode({"body": png(), "sleep_ms": "-1"}, 0)


def test_typed_answer_is_what_the_entry_declares_and_says_what_the_json_says(toy_dir: Path) -> None:
    handler, context = ToyHandler(), HandlerContext(toy_dir)
    handler.initialize(context)
    as_json, typed = handler.handle([{"image": png()}, {"image": png(), ANSWER_FIELD: ANSWER_TENSORS}], context)
    assert context.headers[1]["Content-Type"] == CONTENT_TYPE and context.status == {}
    outputs = {name: (datatype, shape, data) for name, datatype, shape, data in decode_tensors(typed)}
    declared = get_entry("toy_echo").outputs
    assert list(outputs) == [spec.name for spec in declared]
    for spec in declared:
        assert spec.accepts(*outputs[spec.name][:2]), spec
    assert outputs["width"][2].tolist() == [as_json["width"]] and outputs["height"][2].tolist() == [12]
    assert outputs["mean"][2].tolist() == pytest.approx(as_json["mean"])
    assert [f.decode() for f in outputs["fields"][2]] == as_json["fields"] == ["image"]  # the ask is not a field


def test_typed_answer_that_breaks_the_declaration_is_a_500(toy_dir: Path) -> None:
    handler, context = _Echo(), HandlerContext(toy_dir)
    handler.initialize(context)
    answer = handler.handle([{"body": png(), ANSWER_FIELD: "tensors"}], context)[0]
    assert context.status == {0: 500} and "returned ['gain'], the entry declares ['width'" in answer["error"]
