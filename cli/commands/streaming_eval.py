"""`zoo streaming-eval`: streaming AP of timestamped detector outputs, as the official sAP toolkit."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Streaming AP (Li, Wang, Ramanan, "Towards Streaming Perception", ECCV 2020; same numbers as the official
mtli/sAP det/streaming_eval.py). Frame i of each sequence is shown at (i - eta)/fps and judged on the latest
output whose timestamp is <= that time (frames with no output yet are "missed"); all pairs are scored with
COCO AP[.5:.95] (pycocotools). --forecast first runs the official Kalman-filter forecasting post-processing
(forecast/pps_forecast_kf.py --forecast-before-assoc) on the stream.

GT: Argoverse-HD-style COCO json (images with sid/fid, a 'sequences' list). OUTPUTS: the zoo's
streaming-outputs json: {"fps", "eta", "sequences": {name: [{"timestamp", "input_fidx", "bboxes_ltrb",
"scores", "labels"}, ...]}} (docs/streaming.md).
"""

ROWS = [
    ("sAP  (AP @[.5:.95])", "AP"), ("sAP50", "AP50"), ("sAP75", "AP75"),
    ("sAP small", "APs"), ("sAP medium", "APm"), ("sAP large", "APl"),
    ("sAR @1", "AR1"), ("sAR @10", "AR10"), ("sAR @100", "AR100"),
    ("sAR small", "ARs"), ("sAR medium", "ARm"), ("sAR large", "ARl"),
]


def run(args: argparse.Namespace) -> int:
    from zoo.streaming.evaluate import streaming_eval

    result = streaming_eval(args.gt, args.outputs, fps=args.fps, eta=args.eta, forecast=args.forecast,
                            match_iou_th=args.match_iou_th)
    if args.json:
        print(json.dumps(result.to_json() if args.full else result.summary(), indent=2))
        return 0
    lag = result.mean_lag
    rows = [(label, f"{result.stats[key]:.4f}") for label, key in ROWS] + [
        ("frames", str(result.n_frames)),
        ("missed frames", str(result.miss)),
        ("in-time frames", str(result.in_time)),
        ("mismatch (sum of frame lags)", str(result.mismatch)),
        ("mean frame lag", "n/a" if lag != lag else f"{lag:.3f}"),
        ("detections scored", str(len(result.results_ccf))),
    ]
    mode = "with KF forecasting" if result.forecast else "no forecasting"
    print(f"streaming evaluation (fps {result.fps:g}, eta {result.eta:g}, {mode})")
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "streaming-eval", help="streaming AP (sAP) of timestamped detector outputs",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", required=True, metavar="COCO_JSON", help="Argoverse-HD-style COCO ground truth")
    p.add_argument("--outputs", required=True, metavar="JSON", help="streaming-outputs json")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the stream (default: the outputs file's 'fps', else 30)")
    p.add_argument("--eta", type=float, default=None,
                   help="query offset in frames, >= -1 (default: the outputs file's 'eta', else 0)")
    p.add_argument("--forecast", action="store_true",
                   help="apply the official Kalman-filter forecasting before scoring")
    p.add_argument("--match-iou-th", type=float, default=0.3,
                   help="IoU threshold of the forecasting's track association (default 0.3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--full", action="store_true",
                   help="with --json: include the per-frame pairing and every scored detection")
    p.set_defaults(func=run)
