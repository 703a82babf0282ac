"""COCO run-length encoded masks, decoded in numpy (the SDK needs no pycocotools to read instance masks).

COCO RLE: a binary ``[H, W]`` mask read in column-major order as alternating runs of 0s and 1s (starting with
0s); ``counts`` is either the list of run lengths or pycocotools' compressed string: each run as 5-bit groups
(least significant first) in characters offset by 48, bit 0x20 meaning "more groups follow" and bit 0x10 of the
last group the sign; from the third run on, each value is a difference to the run two before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def rle_counts(counts: str | bytes) -> list[int]:
    """pycocotools' compressed ``counts`` string -> run lengths."""
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("RLE counts string ends inside a run")
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """``{"size": [H, W], "counts": str | bytes | [int]}`` -> ``[H, W]`` uint8 mask of 0/1."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs: Sequence[int] = rle_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {height}x{width} = {height * width}")
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()  # column-major
