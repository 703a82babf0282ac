"""One policy for turning a published checkpoint into a zoo state dict, shared by every converter.

A pure function on mappings, no I/O (timm's ``checkpoint_filter_fn`` is the model): ``filter_checkpoint``

1. unwraps training-script containers (``{"model": state_dict, "optimizer": ..., "epoch": ...}``), several
   levels deep if need be, and requires the state dict it finds to hold only tensors;
2. strips wrapper prefixes (DataParallel's ``module.``, ...) from each key, repeatedly. Two keys that become
   one must hold equal tensors (one module saved under two attribute names); different tensors are an error;
3. applies the model's layout conversion: ``rename`` (key -> key; two keys renamed to one are an error) and/or
   ``convert`` (a whole-state-dict step for what a rename cannot do: splitting packed tensors, ...);
4. drops the keys declared ``TrainingOnly`` (each declaration says why the zoo model has no such tensor);
5. requires the rest to be exactly the model's keys: otherwise ``WeightsError`` names every unknown and every
   missing key, so a checkpoint never loads partially and nothing is dropped without a declared reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zoo.contract import WeightsError

StateDict = dict[str, Tensor]
MAX_UNWRAP_DEPTH = 5  # containers nested deeper than this are not a checkpoint layout anyone writes
NAMES_SHOWN = 8  # keys listed per kind in an error message


@dataclass(frozen=True)
class TrainingOnly:
    """Checkpoint keys the zoo model does not have because only training uses them, and why.

    Keys match by exact ``names`` or by ``pattern`` (a regex that must match the whole converted key). A key
    the model does have is never dropped, whatever the rule says."""

    reason: str
    pattern: str | None = None
    names: frozenset[str] = frozenset()

    def matches(self, key: str) -> bool:
        return key in self.names or (self.pattern is not None and re.fullmatch(self.pattern, key) is not None)


def expected_keys(model_factory: Callable[[], nn.Module]) -> tuple[str, ...]:
    """A model's state-dict keys, built on the meta device (nothing allocated or initialised)."""
    with torch.device("meta"):
        return tuple(model_factory().state_dict())


def _names(keys: Sequence[str]) -> str:
    return ", ".join(keys[:NAMES_SHOWN]) + (" ..." if len(keys) > NAMES_SHOWN else "")


def unwrap_state(checkpoint: Any, what: str, containers: Sequence[str]) -> Mapping[str, Tensor]:
    """The state dict inside ``checkpoint``: descend through the first of ``containers`` holding a mapping, as
    long as one does; the mapping reached must hold tensors only."""
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"{what} checkpoint must be a mapping of tensors (a state dict), "
                           f"got {type(checkpoint).__name__}")
    state: Mapping[Any, Any] = checkpoint
    for _ in range(MAX_UNWRAP_DEPTH):
        inner = next((state[k] for k in containers if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    not_tensors = sorted(str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
    if len(not_tensors) == len(state):  # nothing to load (an empty mapping included)
        raise WeightsError(f"{what} checkpoint holds no tensors (keys: {_names(not_tensors) or 'none'}); expected "
                           f"a state dict, or one under {', '.join(containers) or 'no container key'}")
    if not_tensors:
        raise WeightsError(f"{what} checkpoint: expected a state dict of tensors (or one under {tuple(containers)}); "
                           f"non-tensor entries: {_names(not_tensors)}")
    return state


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Sequence[str], what: str) -> StateDict:
    """Each key without the wrapper ``prefixes`` it starts with (repeatedly: ``module.module.``, ...). Keys that
    become one must hold equal tensors (aliases of one module); different tensors raise ``WeightsError``."""
    out: StateDict = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        while prefix := next((p for p in prefixes if new.startswith(p)), None):
            new = new[len(prefix):]
        if new in out:
            seen = out[new]
            if seen is not value and (seen.dtype != value.dtype or seen.shape != value.shape
                                      or not torch.equal(seen, value)):
                raise WeightsError(f"{what} checkpoint holds two different tensors for {new!r} "
                                   f"({origin[new]!r} and {key!r})")
            continue
        out[new], origin[new] = value, key
    return out


def rename_keys(state: Mapping[str, Tensor], rename: Callable[[str], str], what: str) -> StateDict:
    """``state`` with every key renamed; two keys renamed to one (mixed layouts) raise ``WeightsError``."""
    out: StateDict = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key)
        if new in out:
            raise WeightsError(f"{what} checkpoint: two keys map to {new!r} ({origin[new]!r} and {key!r}; "
                               "mixed layouts?)")
        out[new], origin[new] = value, key
    return out


def filter_checkpoint(
    checkpoint: Mapping[str, Any],
    *,
    what: str,
    expected: Iterable[str],
    unwrap: Sequence[str] = ("model", "state_dict"),
    strip: Sequence[str] = ("module.",),
    rename: Callable[[str], str] | None = None,
    convert: Callable[[StateDict], StateDict] | None = None,
    training_only: Iterable[TrainingOnly] = (),
) -> StateDict:
    """A published checkpoint -> exactly the ``expected`` keys, in that order, or ``WeightsError``.

    ``what`` names the model in messages; ``unwrap`` lists container keys, ``strip`` wrapper prefixes (none of
    which may start a model key); ``rename``/``convert`` map the checkpoint's layout to the zoo's;
    ``training_only`` declares what may be dropped. See the module docstring for the order of the steps.
    """
    expected = tuple(expected)
    clashes = [k for k in expected if k.startswith(tuple(strip))] if strip else []
    if clashes:
        raise ValueError(f"{what}: prefixes {tuple(strip)} would strip model keys such as {clashes[0]!r}")
    state = strip_prefixes(unwrap_state(checkpoint, what, unwrap), strip, what)
    if rename is not None:
        state = rename_keys(state, rename, what)
    if convert is not None:
        state = convert(state)
    wanted = set(expected)
    rules = tuple(training_only)
    unknown = sorted(k for k in state if k not in wanted and not any(rule.matches(k) for rule in rules))
    missing = sorted(wanted - set(state))
    if unknown or missing:
        parts = [f"{len(keys)} {kind}: {_names(keys)}" for kind, keys in (("unknown", unknown), ("missing", missing))
                 if keys]
        raise WeightsError(f"{what} checkpoint does not fit the official layout: " + "; ".join(parts))
    return {k: state[k] for k in expected}
