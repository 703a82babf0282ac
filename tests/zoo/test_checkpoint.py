"""zoo.checkpoint: the one checkpoint-filter policy, and every converter that goes through it refusing a key it
does not know (naming it) instead of passing it on or dropping it."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

from zoo import addernet, autoformer, bit, ckdn, detr, dgc, ftcn, isqrtcov, mutualnet, patchforensics
from zoo.checkpoint import TrainingOnly, filter_checkpoint, rename_keys
from zoo.contract import WeightsError

KEYS = ("conv.weight", "conv.bias", "fc.weight")


def state(*keys: str) -> dict[str, torch.Tensor]:
    return {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}


def test_unwraps_training_containers_strips_prefixes_and_keeps_the_model_order() -> None:
    flat = state(*KEYS)
    nested = {"epoch": 3, "optimizer": {"lr": 0.1}, "model": {"state_dict": {f"module.module.{k}": v
                                                                            for k, v in reversed(flat.items())}}}
    out = filter_checkpoint(nested, what="toy", expected=KEYS)
    assert list(out) == list(KEYS) and all(out[k] is flat[k] for k in KEYS)


def test_prefix_aliases_must_hold_equal_tensors() -> None:
    flat = state(*KEYS)
    aliased = {**{f"network.{k}": v for k, v in flat.items()}, **{f"copy.{k}": v.clone() for k, v in flat.items()}}
    out = filter_checkpoint(aliased, what="toy", expected=KEYS, strip=("network.", "copy."))
    assert all(torch.equal(out[k], flat[k]) for k in KEYS)
    aliased["copy.fc.weight"] = torch.ones(2)
    with pytest.raises(WeightsError, match=r"toy checkpoint holds two different tensors for 'fc.weight'"):
        filter_checkpoint(aliased, what="toy", expected=KEYS, strip=("network.", "copy."))


def test_rename_collisions_are_errors() -> None:
    renamed = rename_keys(state("a.weight", "b.weight"), lambda k: k.replace("a.", "c."), "toy")
    assert list(renamed) == ["c.weight", "b.weight"]
    with pytest.raises(WeightsError, match=r"toy checkpoint: two keys map to 'x' \('a.weight' and 'b.weight'"):
        filter_checkpoint(state("a.weight", "b.weight"), what="toy", expected=["x"], rename=lambda k: "x")


def test_only_declared_training_keys_are_dropped_and_never_model_keys() -> None:
    checkpoint = state(*KEYS, "aux.weight", "conv.num_batches_tracked", "other.weight")
    rules = [TrainingOnly("auxiliary loss head", names=frozenset({"aux.weight"})),
             TrainingOnly("step counters", pattern=r".*\.num_batches_tracked"),
             TrainingOnly("a careless rule", pattern=r"conv\..*")]  # must not drop conv.weight / conv.bias
    with pytest.raises(WeightsError) as err:
        filter_checkpoint(checkpoint, what="toy", expected=KEYS, training_only=rules)
    assert str(err.value) == "toy checkpoint does not fit the official layout: 1 unknown: other.weight"
    del checkpoint["other.weight"]
    assert list(filter_checkpoint(checkpoint, what="toy", expected=KEYS, training_only=rules)) == list(KEYS)
    with pytest.raises(WeightsError, match="1 missing: conv.bias"):
        filter_checkpoint({k: v for k, v in checkpoint.items() if k != "conv.bias"}, what="toy", expected=KEYS,
                          training_only=rules)


def test_names_every_unknown_and_missing_key_and_what_is_not_a_state_dict() -> None:
    checkpoint = state("conv.weight", *(f"extra.{i}" for i in range(9)))
    with pytest.raises(WeightsError) as err:
        filter_checkpoint(checkpoint, what="toy", expected=KEYS)
    assert str(err.value) == ("toy checkpoint does not fit the official layout: 9 unknown: extra.0, extra.1, "
                              "extra.2, extra.3, extra.4, extra.5, extra.6, extra.7 ...; 2 missing: conv.bias, "
                              "fc.weight")
    with pytest.raises(WeightsError, match="non-tensor entries: epoch"):
        filter_checkpoint({**state(*KEYS), "epoch": 3}, what="toy", expected=KEYS)
    with pytest.raises(WeightsError, match=r"toy checkpoint holds no tensors \(keys: optimizer\)"):
        filter_checkpoint({"optimizer": {"lr": 0.1}}, what="toy", expected=KEYS)
    with pytest.raises(WeightsError, match="mapping of tensors"):
        filter_checkpoint([], what="toy", expected=KEYS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="would strip model keys such as 'module.weight'"):
        filter_checkpoint(state("module.weight"), what="toy", expected=["module.weight"])


# --- every converter refuses an unknown key, naming it ---------------------------------------------------
def _npz_keys() -> tuple[str, ...]:
    return tuple(bit.npz_name(k) for k in bit.zoo_keys())


CONVERTERS: dict[str, tuple[Callable[[dict], dict], Callable[[], tuple[str, ...]], str]] = {
    "ckdn": (ckdn.convert_checkpoint, ckdn.zoo_keys, "qse_3.weight"),
    "detr": (detr.convert_checkpoint, detr.zoo_keys, "backbone.fc.weight"),
    "ftcn": (ftcn.convert_checkpoint, ftcn.zoo_keys, "resnet.s5.pathway0_res0.branch1.weight"),
    "autoformer": (autoformer.convert_checkpoint, autoformer.zoo_keys, "blocks.3.attn.qkv_super.weight"),
    "mutualnet": (mutualnet.convert_checkpoint, mutualnet.zoo_keys, "classifier.1.weight"),
    "dgc": (dgc.convert_checkpoint, dgc.zoo_keys, "layer1.0.conv1.headconv_4.conv.weight"),
    "isqrtcov": (isqrtcov.convert_checkpoint, isqrtcov.zoo_keys, "representation.conv_dr_block.0.bias"),
    "addernet": (addernet.convert_checkpoint, addernet.zoo_keys, "layer2.0.downsample.0.weight"),
    "bit": (bit.convert_checkpoint, bit.zoo_keys, "head.pre_logits.weight"),
    "bit_npz": (bit.convert_checkpoint, _npz_keys, "resnet/pre_logits/kernel"),
    "patchforensics_block2": (patchforensics.convert_block2, lambda: patchforensics.zoo_keys("block2"),
                              "block3.rep.1.conv1.weight"),
    "patchforensics_block3": (patchforensics.convert_block3, lambda: patchforensics.zoo_keys("block3"),
                              "block4.rep.1.conv1.weight"),
}


@pytest.mark.parametrize("name", CONVERTERS)
def test_every_converter_names_an_unknown_key(name: str) -> None:
    convert, keys, unknown = CONVERTERS[name]
    checkpoint = {k: torch.zeros(1) for k in keys()}  # names only: shapes are load_strict's job
    assert len(convert(dict(checkpoint))) == len(checkpoint)
    with pytest.raises(WeightsError, match=f"1 unknown: {re.escape(unknown)}$"):
        convert({**checkpoint, unknown: torch.zeros(1)})
