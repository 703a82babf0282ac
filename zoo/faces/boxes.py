"""Box utilities in plain torch: pairwise IoU and greedy non-maximum suppression (no torchvision).

Boxes are ``(x1, y1, x2, y2)`` float tensors; areas are continuous (``(x2 - x1) * (y2 - y1)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_ROW_CHUNK = 2048  # rows of the overlap matrix computed at a time (bounds the float temporaries)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_overlap(a: Tensor, b: Tensor, mode: str = "union") -> Tensor:
    """(len(a), len(b)) overlap: intersection over union (``"union"``) or over the smaller area ("min")."""
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a, area_b = box_area(a)[:, None], box_area(b)[None, :]
    denom = torch.minimum(area_a, area_b) if mode == "min" else area_a + area_b - inter
    return inter / denom.clamp(min=1e-12)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    return box_overlap(a, b, "union")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, mode: str = "union") -> Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first.

    A box is dropped when its overlap with an already kept, higher-scoring box is *above* the threshold
    (ties in score keep the lower index first). The overlap matrix is built on the boxes' device; the
    sequential greedy pass then runs over a boolean matrix on the CPU.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order].float()
    rows = []
    for start in range(0, n, _ROW_CHUNK):
        rows.append((box_overlap(ordered[start:start + _ROW_CHUNK], ordered, mode) > iou_threshold).cpu())
    over = torch.cat(rows).numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                mode: str = "union") -> Tensor:
    """NMS within each group (e.g. image index): kept indices, grouped by ascending group id."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    keep = []
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        keep.append(idx[nms(boxes[idx], scores[idx], iou_threshold, mode)])
    return torch.cat(keep)
