"""The zoo's streaming-outputs format and the Argoverse-HD-style ground truth it is scored against.

Streaming outputs (JSON; the layout of the sAP toolkit's per-sequence pickles, one file for all sequences)::

    {
      "fps": 30, "eta": 0,
      "sequences": {
        "<sequence name>": [
          {"timestamp": 0.0436,          # seconds since the sequence started when the output was produced
           "input_fidx": 0,              # index (within the sequence) of the frame the output was computed on
           "bboxes_ltrb": [[l, t, r, b], ...],   # pixels
           "scores": [s, ...],
           "labels": [category_id, ...]},
          ...                              # list position = output index; timestamps non-decreasing
        ]
      }
    }

Boxes and scores are cast to float32 on load, as the official code holds them (its KF and its ltrb->ltwh
conversion run on float32 arrays); labels to int64.

Ground truth: a COCO json whose ``images`` carry ``sid`` (sequence index into ``sequences``) and ``fid``,
plus a ``sequences`` list of names (Argoverse-HD layout). The frames of a sequence are its images in json
order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class StreamOutput:
    """One detector output: what it saw (``input_fidx``), when it was ready (``timestamp``), what it found."""

    timestamp: float
    input_fidx: int
    bboxes_ltrb: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64

    def __post_init__(self) -> None:
        self.timestamp = float(self.timestamp)
        self.input_fidx = int(self.input_fidx)
        self.bboxes_ltrb = np.asarray(self.bboxes_ltrb, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.bboxes_ltrb)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"output at t={self.timestamp}: {n} boxes but {len(self.scores)} scores and "
                f"{len(self.labels)} labels"
            )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StreamOutput:
        try:
            return cls(obj["timestamp"], obj["input_fidx"], obj.get("bboxes_ltrb", []),
                       obj.get("scores", []), obj.get("labels", []))
        except KeyError as exc:
            raise ValueError(f"streaming output lacks {exc.args[0]!r}: {dict(obj)!r:.200}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "input_fidx": self.input_fidx,
            "bboxes_ltrb": self.bboxes_ltrb.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
        }


@dataclass
class StreamingOutputs:
    """Timestamped outputs of every sequence (see the module docstring for the JSON layout)."""

    fps: float = 30.0
    eta: float = 0.0
    sequences: dict[str, list[StreamOutput]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, outs in self.sequences.items():
            ts = [o.timestamp for o in outs]
            if any(b < a for a, b in zip(ts, ts[1:], strict=False)):
                raise ValueError(f"sequence {name!r}: output timestamps must be non-decreasing")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StreamingOutputs:
        if "sequences" not in obj or not isinstance(obj["sequences"], Mapping):
            raise ValueError("streaming outputs need a 'sequences' object mapping sequence name -> list")
        seqs = {str(k): [StreamOutput.from_json(o) for o in v] for k, v in obj["sequences"].items()}
        return cls(float(obj.get("fps", 30.0)), float(obj.get("eta", 0.0)), seqs)

    @classmethod
    def load(cls, path: str | Path) -> StreamingOutputs:
        with open(path) as f:
            return cls.from_json(json.load(f))

    def to_json(self) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "eta": self.eta,
            "sequences": {k: [o.to_json() for o in v] for k, v in self.sequences.items()},
        }

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))


def as_outputs(outputs: StreamingOutputs | Mapping[str, Any] | str | Path) -> StreamingOutputs:
    if isinstance(outputs, StreamingOutputs):
        return outputs
    if isinstance(outputs, Mapping):
        return StreamingOutputs.from_json(outputs)
    return StreamingOutputs.load(outputs)


def load_gt(gt: Any) -> Any:
    """A pycocotools ``COCO`` for a path, a dict or an existing ``COCO`` (returned as is), built quietly."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if not isinstance(gt, Mapping):
        with open(gt) as f:
            gt = json.load(f)
    for key in ("images", "annotations", "categories", "sequences"):
        if key not in gt:
            raise ValueError(f"ground truth lacks {key!r} (an Argoverse-HD-style COCO json is expected)")
    db = COCO()
    db.dataset = dict(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        db.createIndex()
    return db


def sequence_frames(db: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, frames) per sequence, frames being its images in json order, as the official tools read them."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for img in db.imgs.values():
        groups.setdefault(img["sid"], []).append(img)
    return [(name, groups.get(sid, [])) for sid, name in enumerate(db.dataset["sequences"])]
