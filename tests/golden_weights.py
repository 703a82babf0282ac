"""Rebuild the official-layout weights behind a golden set (tests/data/golden/README.md, section 3).

The golden outputs were produced by the official code with seeded weights; the key tables
(``<model>_state_dict_keys.json``) list every key with its shape, fill kind and seed, plus checksums. This
rebuilds the float32 tensors bit for bit and checks each against its ``check_sum``/``check_first``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

_FILLS: dict[str, Callable[[tuple[int, ...]], torch.Tensor]] = {
    "normal_0.02": lambda s: torch.randn(s) * 0.02,
    "embedding_0.02": lambda s: torch.randn(s) * 0.02,
    "bn_weight": lambda s: 1 + 0.1 * torch.randn(s),
    "ln_weight": lambda s: 1 + 0.1 * torch.randn(s),
    "bn_bias": lambda s: 0.1 * torch.randn(s),
    "ln_bias": lambda s: 0.1 * torch.randn(s),
    "bn_running_mean": lambda s: 0.1 * torch.randn(s),
    "bn_running_var": lambda s: 1 + 0.5 * torch.rand(s),
    # zoo2 (README_autoformer_mutualnet_dgc.md section 3)
    "relpos_0.02": lambda s: torch.randn(s) * 0.02,
    "gate_bias": lambda s: 1 + 0.1 * torch.randn(s),
    # zoo2 (README_isqrtcov.md "Environment and weights": GroupNorm, AdderNet filters)
    "gn_weight": lambda s: 1 + 0.1 * torch.randn(s),
    "gn_bias": lambda s: 0.1 * torch.randn(s),
    "adder_normal_1": lambda s: torch.randn(s),
    # drawn like bn_running_mean, then shifted by the feeding adder filter's L1 norm (see below)
    "adder_bn_running_mean": lambda s: 0.1 * torch.randn(s),
    # zoo3 (README_condinst.md section 3): FCOS scales, the focal-loss prior on the class bias (the Python
    # float is added in float32), and a positive box-regression bias
    "fcos_scale": lambda s: 1 + 0.1 * torch.randn(s),
    "fcos_cls_prior_bias": lambda s: 0.1 * torch.randn(s) + (-math.log((1 - 0.01) / 0.01)),
    "fcos_bbox_bias": lambda s: 0.5 * torch.randn(s) + 4.0,
}


def golden_state_dict(table: str | Path) -> dict[str, torch.Tensor]:
    """The official-layout float32 state dict described by a ``*_state_dict_keys.json`` table."""
    meta = json.loads(Path(table).read_text())
    entries = meta["keys"]
    state: dict[str, torch.Tensor] = {}
    deferred: list[dict] = []
    with torch.random.fork_rng():
        for entry in entries:
            shape = tuple(entry["shape"])
            if "value" in entry:  # kept buffers (num_batches_tracked, int_keep/buffer_keep lists) keep their value
                dtype = getattr(torch, entry["dtype"])
                value = entry["value"]
                state[entry["key"]] = (torch.tensor(value, dtype=dtype).reshape(shape) if isinstance(value, list)
                                       else torch.full(shape, value, dtype=dtype))
                continue
            assert entry["seed"] == meta["seed"] + entry["index"], f"seed of {entry['key']}"
            torch.manual_seed(entry["seed"])
            if entry["kind"] == "gate_kaiming":  # kaiming normal: the Python-float scale multiplies in float32
                tensor = torch.randn(shape) * math.sqrt(2.0 / entry["fan_in"])
            elif entry["kind"] == "adder_bn_running_var":  # Python float times the float32 draw
                tensor = (0.25 * entry["fan_in"]) * (1 + 0.5 * torch.rand(shape))
            elif entry["kind"] == "buffer_keep":  # a fixed constructor value (CUT blur filters): nothing drawn
                tensor = torch.tensor(entry["value_2d"], dtype=torch.float32).expand(shape).clone()
            else:
                tensor = _FILLS[entry["kind"]](shape)
            assert tensor.dtype == torch.float32
            state[entry["key"]] = tensor
            if entry["kind"] == "adder_bn_running_mean":  # needs its adder filter, which may come later
                deferred.append(entry)
                continue
            # check_sum is math.fsum (exactly rounded); a float64 tensor sum of millions of values can differ
            # from it in the last bits, far below what any wrong value would change
            total = tensor.double().sum().item()
            assert math.isclose(total, entry["check_sum"], rel_tol=1e-12, abs_tol=1e-12), f"checksum of {entry['key']}"
            assert tensor.flatten()[:3].tolist() == entry["check_first"], f"first values of {entry['key']}"
    for entry in deferred:  # running_mean[c] = float32(float64(v[c]) - fsum|W[c]|) (README_addernet.md)
        filters = state[entry["adder_key"]].double().abs().flatten(1).tolist()
        l1 = torch.tensor([math.fsum(row) for row in filters], dtype=torch.float64)
        tensor = (state[entry["key"]].double() - l1).float()
        assert math.isclose(tensor.double().sum().item(), entry["check_sum"], rel_tol=1e-12, abs_tol=1e-12), \
            f"checksum of {entry['key']}"
        assert tensor.flatten()[:3].tolist() == entry["check_first"], f"first values of {entry['key']}"
        state[entry["key"]] = tensor
    return state
