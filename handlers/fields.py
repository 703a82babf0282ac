"""The request fields a handler accepts, declared once and checked by the handler base before ``decode_fields``.

A handler lists its fields (payloads and parameters: kind, default, limits); ``RequestSpec`` picks them out
of whatever shape the request arrived in (raw body, multipart parts, JSON body, named gRPC inputs), refuses
missing and unknown fields, and checks every value, so a handler only ever sees checked values. Every client
mistake is a ``RequestError`` naming the field (400; 413 for an oversized image). A declaration that cannot
work (a default outside its bounds, two fields claiming one name, ...) raises ``ValueError`` when it is made,
so a broken handler fails while its worker loads, not on its first request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from handlers.codec import RequestError, as_bytes, decode_image, probe_image, request_fields

# image: bytes or base64 decoded to an RGB image (handlers.codec limits); encoded_image: the same header checks,
# pixels left for the handler to decode on its device (a zoo.device_image.EncodedImage); bytes: raw or base64;
# number / integer: within bounds; bool: true/false/1/0/yes/no; choice: one of the (lower-case) choices,
# matched without case or surrounding spaces; custom: the field's own ``parse`` (a ValueError is the 400).
Kind = Literal["image", "encoded_image", "bytes", "number", "integer", "bool", "choice", "custom"]
PAYLOAD_KINDS = ("image", "encoded_image", "bytes")
KINDS = (*PAYLOAD_KINDS, "number", "integer", "bool", "choice", "custom")
# The other names an uploaded file may arrive under: TorchServe's raw body ("body"/"data"), common form names.
UPLOAD_ALIASES = ("body", "data", "file", "input")
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
ExtraFields = Literal["reject", "ignore"]


@dataclass(frozen=True)
class Field:
    """One field a handler accepts: the names it may arrive under, what it holds and its limits."""

    name: str
    kind: Kind
    required: bool = False
    default: Any = None
    bounds: tuple[float, float] | None = None  # number / integer: inclusive
    choices: tuple[str, ...] = ()  # choice
    aliases: tuple[str, ...] = ()  # payloads: other names it may arrive under, tried after ``name``
    any_name: bool = False  # a payload: failing its names, the request's one unclaimed binary field
    parse: Callable[[Any], Any] | None = None  # custom: client value (text or JSON) -> value, ValueError if bad

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"request field {self.name!r}: {problem}")
        if self.kind in ("number", "integer"):  # the default is returned as checked values are: typed
            object.__setattr__(self, "default", int(self.default) if self.kind == "integer" else float(self.default))

    def _problem(self) -> str | None:
        if self.kind not in KINDS:
            return f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}"
        payload = self.kind in PAYLOAD_KINDS
        if (self.aliases or self.any_name) and not payload:
            return "only image/bytes fields take aliases or any_name"
        if payload:
            return "a payload has no default" if self.default is not None else None
        if self.required:
            return "only image/bytes fields are required; a parameter has a default"
        if (self.bounds is not None) != (self.kind in ("number", "integer")):
            return "number/integer fields need bounds (lo, hi), other kinds take none"
        if bool(self.choices) != (self.kind == "choice"):
            return "choice fields need choices, other kinds take none"
        if (self.parse is not None) != (self.kind == "custom"):
            return "custom fields need parse, other kinds take none"
        if self.kind in ("number", "integer"):
            lo, hi = self.bounds  # type: ignore[misc]
            if not (isinstance(self.default, (int, float)) and lo <= self.default <= hi):
                return f"default {self.default!r} is not a number between {lo} and {hi}"
        if self.kind == "bool" and not isinstance(self.default, bool):
            return f"default {self.default!r} is not a bool"
        if self.kind == "choice" and (self.default not in self.choices or any(c != c.strip().lower()
                                                                              for c in self.choices)):
            return f"choices {self.choices} must be lower-case words including the default {self.default!r}"
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def what(self) -> str:
        """What a payload holds, for messages: 'image', else its name ('video')."""
        return "image" if self.kind in ("image", "encoded_image") else self.name

    def check(self, raw: Any, arrived_as: str) -> Any:
        """The client's value (present in the request) -> the checked value, or RequestError naming it."""
        if self.kind == "image":
            return decode_image(as_bytes(raw, arrived_as, self.what), arrived_as)
        if self.kind == "encoded_image":
            return probe_image(as_bytes(raw, arrived_as, self.what), arrived_as)
        if self.kind == "bytes":
            return as_bytes(raw, arrived_as, self.what)
        if self.kind in ("number", "integer"):
            return self._number(raw)
        if self.kind == "bool":
            return self._bool(raw)
        if self.kind == "choice":
            value = str(raw if raw else self.default).strip().lower()
            if value not in self.choices:
                raise RequestError(f"'{self.name}' must be one of {list(self.choices)}, got {value!r}")
            return value
        try:
            return self.parse(raw)  # type: ignore[misc]
        except ValueError as exc:  # the parser's message names the field and the accepted values
            raise RequestError(str(exc)) from None

    def _number(self, raw: Any) -> float | int:
        integer = self.kind == "integer"
        try:
            value = int(raw) if integer else float(raw)
            if integer and float(raw) != int(raw):
                raise ValueError
        except (TypeError, ValueError):
            expected = "an integer" if integer else "a number"
            raise RequestError(f"'{self.name}' must be {expected}, got {raw!r}") from None
        lo, hi = self.bounds  # type: ignore[misc]
        if not lo <= value <= hi:
            raise RequestError(f"'{self.name}' must be between {lo} and {hi}, got {value}")
        return value

    def _bool(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return raw.strip().lower() in TRUE_WORDS
        raise RequestError(f"'{self.name}' must be true or false; got {raw!r}")


IMAGE = Field("image", "image", required=True, aliases=UPLOAD_ALIASES)


@dataclass(frozen=True)
class PickedFields:
    """The declared fields found in one request, as sent (parameters as text or JSON values), unchecked."""

    raw: dict[str, Any]  # field name -> value as sent
    arrived_as: dict[str, str]  # field name -> the name it arrived under (an alias, or a file's own name)
    received: tuple[str, ...]  # every field name of the request, sorted (unknown ones included)


@dataclass(frozen=True)
class CheckedFields:
    """Checked values of every declared field (defaults filled in; an absent optional payload is None)."""

    by_name: dict[str, Any]
    arrived_as: dict[str, str]  # as in PickedFields
    received: tuple[str, ...]

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]


class RequestSpec:
    """A handler's fields and its policy for fields it does not declare; picks and checks requests."""

    def __init__(self, fields: tuple[Field, ...], extra: ExtraFields = "reject", model: str | None = None) -> None:
        names = [name for f in fields for name in f.names]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"request fields claim the same name twice: {duplicates}")
        if sum(f.any_name for f in fields) > 1:
            raise ValueError("only one request field may take any_name (the one unclaimed binary field)")
        if extra not in ("reject", "ignore"):
            raise ValueError(f"extra fields must be 'reject' or 'ignore', not {extra!r}")
        self.fields, self.extra, self.model = fields, extra, model

    def pick(self, request: dict[str, Any]) -> PickedFields:
        """Find each declared field in one raw TorchServe request; refuse missing and (if so declared) unknown ones."""
        fields = request_fields(request)
        arrived_as: dict[str, str] = {}
        for f in self.fields:
            name = next((n for n in f.names if n in fields), None) or self._unclaimed_binary(f, fields)
            if name is not None:
                arrived_as[f.name] = name
        missing = [f for f in self.fields if f.required and f.name not in arrived_as]
        if missing:
            raise RequestError(self._missing_message(missing))
        unknown = sorted(set(fields) - set(arrived_as.values()))
        if unknown and self.extra == "reject":
            raise RequestError(self._unknown_message(unknown))
        raw = {}
        for f in self.fields:
            if f.name in arrived_as:
                value = fields[arrived_as[f.name]]
                if f.kind not in PAYLOAD_KINDS and isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", errors="replace")  # a multipart part or gRPC input
                raw[f.name] = value
        return PickedFields(raw, arrived_as, tuple(sorted(fields)))

    def check(self, picked: PickedFields) -> CheckedFields:
        """Check every picked value; parameters first, so a bad parameter is refused before decoding a payload."""
        values: dict[str, Any] = {}
        for f in sorted(self.fields, key=lambda f: f.kind in PAYLOAD_KINDS):
            present = f.name in picked.raw
            values[f.name] = f.check(picked.raw[f.name], picked.arrived_as[f.name]) if present else f.default
        return CheckedFields({f.name: values[f.name] for f in self.fields}, picked.arrived_as, picked.received)

    def _unclaimed_binary(self, f: Field, fields: dict[str, Any]) -> str | None:
        if not f.any_name:
            return None
        declared = {name for other in self.fields for name in other.names}
        binary = [k for k, v in fields.items() if isinstance(v, (bytes, bytearray)) and k not in declared]
        return binary[0] if len(binary) == 1 else None

    def _missing_message(self, missing: list[Field]) -> str:
        payloads = [f for f in self.fields if f.kind in PAYLOAD_KINDS and f.required]
        if len(payloads) == 1 and missing == payloads:
            only = payloads[0]
            as_body = " as the body," if "body" in only.aliases else ""
            return (f"no {only.what} in the request: send the {only.what} bytes{as_body} a multipart field or input "
                    f"'{only.name}', or JSON {{\"{only.name}\": \"<base64>\"}}")
        names = " and ".join(repr(f.name) for f in missing)
        as_json = ", ".join(f"\"{f.name}\": \"<base64>\"" for f in payloads)
        return (f"missing {missing[0].what} {names}: send {' and '.join(repr(f.name) for f in payloads)} as "
                f"multipart fields or inputs with those names, or as JSON {{{as_json}}}")

    def _unknown_message(self, unknown: list[str]) -> str:
        for_model = f" for {self.model}" if self.model else ""
        return (f"unknown field(s) {', '.join(repr(u) for u in unknown)}{for_model}; allowed: "
                f"{', '.join(f.name for f in self.fields)} (unknown fields are refused, not ignored, so that a "
                "misspelt parameter never falls back to its default unnoticed)")
