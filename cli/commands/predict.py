"""`zoo predict MODEL FILE...`: send files to a model behind the gateway; print a table or JSON, or draw.

What one request is depends on the model's task (from its metadata):

- detection (detr_resnet50): one image per request;
- image-quality (ckdn_r50): a RESTORED DEGRADED pair of images per request (files taken two by two);
- deepfake-detection (ftcn_tt): one video per request;
- instance-segmentation (condinst_r50), semantic-segmentation (dnl_r50_d8), image-translation (cut.*,
  fastcut.*): one image per request;
- stereo-depth (stereo_from_mono): a LEFT RIGHT pair of images per request (files taken two by two);
- any other model: one file per input the model declares (usually one image).

Several requests are sent concurrently (``--concurrency``), so the server can batch them; a progress bar
shows on a terminal. ``--draw out.png`` renders each result (boxes and labels; the score over restored |
degraded; a contact sheet of the video with face tracks; instance masks or the label map over the image;
input | translation; left view | colourised disparity) - with several requests, ``out_1.png``,
``out_2.png``... A request that fails is reported with the server's message and the others go on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

TASK_DETECTION = "detection"
TASK_QUALITY = "image-quality"
TASK_DEEPFAKE = "deepfake-detection"
TASK_INSTANCES = "instance-segmentation"
TASK_SEMANTIC = "semantic-segmentation"
TASK_TRANSLATION = "image-translation"
TASK_STEREO = "stereo-depth"
DEEPFAKE_PARAMS = ("stride", "aggregate", "detect_every", "max_duration_s")
# The -p parameters each typed task takes, and whether it takes --threshold (--top-k: detection only).
TASK_PARAMS: dict[str, tuple[tuple[str, ...], bool]] = {
    TASK_DEEPFAKE: (DEEPFAKE_PARAMS, True),
    TASK_INSTANCES: ((), True),
    TASK_SEMANTIC: ((), False),
    TASK_TRANSLATION: (("format", "quality", "preprocess"), False),
    TASK_STEREO: (("dtype",), False),
}
PAIRS = {TASK_QUALITY: "RESTORED DEGRADED pairs", TASK_STEREO: "LEFT RIGHT pairs"}
SINGLE_FILE_TASKS = (TASK_DETECTION, TASK_DEEPFAKE, TASK_INSTANCES, TASK_SEMANTIC, TASK_TRANSLATION)


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        params[key] = value
    return params


def group_files(task: str, files: list[str], input_names: list[str]) -> list[list[str]]:
    """The files of each request, in order."""
    per = 2 if task in PAIRS else 1 if task in SINGLE_FILE_TASKS else max(1, len(input_names))
    if len(files) % per:
        what = PAIRS.get(task) or f"groups of {per} ({', '.join(input_names)})"
        raise ValueError(f"this model takes {what}: got {len(files)} file(s)")
    return [files[i:i + per] for i in range(0, len(files), per)]


def draw_path(draw: str, index: int, total: int) -> Path:
    path = Path(draw)
    return path if total == 1 else path.with_name(f"{path.stem}_{index + 1}{path.suffix or '.png'}")


def run(args: argparse.Namespace) -> int:
    from clients.cli_support import client_from_args, error_line
    from clients.errors import ZooError

    params = parse_params(args.param)
    client = client_from_args(args)
    try:
        meta = client.model_metadata(args.model)
    except ZooError as exc:
        print(error_line("predict", exc, args.model), file=sys.stderr)
        return 1
    task = meta.task
    input_names = [t.name for t in meta.inputs]
    groups = group_files(task, args.files, input_names)
    for group in groups:
        for name in group:
            if not Path(name).is_file():
                raise FileNotFoundError(f"no such file: {name}")
    if task == TASK_DETECTION and params:
        raise ValueError(f"{args.model} takes --threshold and --top-k, not --param")
    if task == TASK_QUALITY and (params or args.threshold is not None or args.top_k is not None):
        raise ValueError(f"{args.model} takes no parameters")
    if task in TASK_PARAMS:
        allowed, threshold = TASK_PARAMS[task]
        unknown = sorted(set(params) - set(allowed))
        refused = unknown or (["--top-k"] if args.top_k is not None else []) + \
            (["--threshold"] if args.threshold is not None and not threshold else [])
        if refused:
            takes = [*(["--threshold"] if threshold else []), *([f"-p {', '.join(allowed)}"] if allowed else [])]
            raise ValueError(f"{args.model} takes {' and '.join(takes) or 'no parameters'} "
                             f"(not {', '.join(refused)})")
    if meta.random_weights:
        print(f"warning: {args.model} serves {meta.weights_label} weights: its answers are meaningless "
              f"(`zoo pull {args.model}`, then restart the server, to serve trained weights)", file=sys.stderr)

    def one(group: list[str]) -> Any:
        if task == TASK_DETECTION:
            return client.detect(group[0], model=args.model, threshold=args.threshold, top_k=args.top_k,
                                 version=args.model_version)
        if task == TASK_QUALITY:
            return client.score_quality(group[0], group[1], model=args.model, version=args.model_version)
        if task == TASK_DEEPFAKE:
            return client.detect_deepfake(group[0], model=args.model, version=args.model_version,
                                          threshold=args.threshold, **params)
        if task == TASK_INSTANCES:
            return client.segment_instances(group[0], model=args.model, threshold=args.threshold,
                                            version=args.model_version)
        if task == TASK_SEMANTIC:
            return client.segment(group[0], model=args.model, version=args.model_version)
        if task == TASK_TRANSLATION:
            return client.translate(group[0], model=args.model, version=args.model_version, **params)
        if task == TASK_STEREO:
            return client.estimate_disparity(group[0], group[1], model=args.model, version=args.model_version,
                                             **params)
        names = input_names or ["body"]
        fields: dict[str, bytes | str] = {n: Path(f).read_bytes() for n, f in zip(names, group, strict=False)}
        if args.threshold is not None:
            fields["threshold"] = str(args.threshold)
        if args.top_k is not None:
            fields["top_k"] = str(args.top_k)
        return client.predict(args.model, {**fields, **params}, version=args.model_version)

    results: list[Any] = [None] * len(groups)
    errors: dict[int, Exception] = {}
    from tqdm import tqdm

    # a progress bar on a terminal (its clock ticks while a long request, e.g. a video, is in flight)
    with ThreadPoolExecutor(max_workers=max(1, min(args.concurrency, len(groups)))) as pool, \
            tqdm(total=len(groups), desc=args.model, unit="req", file=sys.stderr,
                 disable=not sys.stderr.isatty()) as bar:
        futures = {pool.submit(one, group): i for i, group in enumerate(groups)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                i = futures[future]
                try:
                    results[i] = future.result()
                except (ZooError, OSError, ValueError, TypeError) as exc:
                    errors[i] = exc
                bar.update(1)
            bar.refresh()

    if args.json:
        doc = [{"files": group, **({"result": r.raw if hasattr(r, "raw") else r} if i not in errors
                                   else {"error": str(errors[i])})}
               for i, (group, r) in enumerate(zip(groups, results, strict=True))]
        print(json.dumps(doc, indent=2))
    else:
        for i, (group, result) in enumerate(zip(groups, results, strict=True)):
            if i not in errors:
                print_result(task, group, result)
    for i, group in enumerate(groups):
        if i in errors:
            exc = errors[i]
            line = error_line("predict", exc, " ".join(group)) if isinstance(exc, ZooError) else \
                f"zoo predict: error ({' '.join(group)}): {exc}"
            print(line, file=sys.stderr)
    if args.draw:
        drawn = [i for i in range(len(groups)) if i not in errors]
        for i in drawn:
            path = draw_path(args.draw, i, len(groups))
            render(task, groups[i], results[i]).save(path)
            print(f"drew {' '.join(groups[i])} -> {path}", file=sys.stderr)
    return 1 if errors else 0


def render(task: str, group: list[str], result: Any) -> Any:
    from clients import draw

    if task == TASK_DETECTION:
        return draw.draw_detections(group[0], result)
    if task == TASK_QUALITY:
        return draw.draw_quality(group[0], group[1], result)
    if task == TASK_DEEPFAKE:
        return draw.draw_deepfake(group[0], result)
    if task == TASK_INSTANCES:
        return draw.draw_instances(group[0], result)
    if task == TASK_SEMANTIC:
        return draw.draw_label_map(group[0], result)
    if task == TASK_TRANSLATION:
        return draw.draw_translation(group[0], result)
    if task == TASK_STEREO:
        return draw.draw_disparity(group[0], result)
    raise ValueError(f"--draw does not know how to draw a {task or 'generic'} answer (use --json)")


def print_result(task: str, group: list[str], result: Any) -> None:
    from clients.cli_support import print_table

    name = " ".join(group)
    if task == TASK_DETECTION:
        w, h = result.image_size
        print(f"{name}: {len(result.detections)} detection(s) on {w}x{h}")
        if result.detections:
            print_table(["label", "score", "box (x0, y0, x1, y1)"],
                        [[d.label, f"{d.score:.3f}", ", ".join(f"{v:.1f}" for v in d.box)]
                         for d in result.detections])
    elif task == TASK_QUALITY:
        print(f"{group[0]} restored from {group[1]}: quality {result.score:.4f} (higher is better)")
    elif task == TASK_DEEPFAKE:
        prob = "-" if result.fake_probability is None else f"{result.fake_probability:.3f}"
        print(f"{name}: {result.verdict.upper()} (fake probability {prob}; {len(result.tracks)} face track(s), "
              f"{result.clips_analyzed} clip(s), {result.frames_analyzed} frames)")
        if result.tracks:
            print_table(["track", "frames", "time (s)", "score", "clips"],
                        [[t.track_id, f"{t.frames[0]}-{t.frames[1]}", f"{t.time_s[0]:.2f}-{t.time_s[1]:.2f}",
                          "-" if t.score is None else f"{t.score:.3f}", t.clips] for t in result.tracks])
    elif task == TASK_INSTANCES:
        w, h = result.image_size
        print(f"{name}: {len(result.instances)} instance(s) on {w}x{h}")
        if result.instances:
            print_table(["label", "score", "box (x0, y0, x1, y1)", "mask px"],
                        [[i.label, f"{i.score:.3f}", ", ".join(f"{v:.1f}" for v in i.box), int(i.mask().sum())]
                         for i in result.instances])
    elif task == TASK_SEMANTIC:
        w, h = result.image_size
        print(f"{name}: {result.dataset} label map {w}x{h}, {len(result.class_fractions)} class(es)")
        print_table(["class", "index", "pixels"],
                    [[c.label, c.index, f"{100 * c.fraction:.2f}%"] for c in result.class_fractions])
    elif task == TASK_TRANSLATION:
        w, h = result.image_size
        print(f"{name}: {result.direction or 'translated'}, {w}x{h} {result.format.upper()} "
              f"({len(result.image_bytes):,} bytes)")
    elif task == TASK_STEREO:
        w, h = result.image_size
        stats = result.stats
        print(f"{group[0]} | {group[1]}: disparity {w}x{h} ({result.disparity.dtype}), "
              f"min {stats.get('min', 0):.2f} / mean {stats.get('mean', 0):.2f} / max {stats.get('max', 0):.2f} px")
    else:
        print(f"{name}: {json.dumps(result)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from clients.cli_support import add_client_options

    p = subparsers.add_parser("predict", help="send files to a served model; print, or --draw, the answers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="served model name (see `zoo models`)")
    p.add_argument("files", nargs="+", help="input files (quality: RESTORED DEGRADED pairs; stereo: LEFT RIGHT pairs)")
    p.add_argument("--json", action="store_true", help="print the answers as JSON")
    p.add_argument("--draw", metavar="OUT.png", help="render the result(s) to this image")
    p.add_argument("--threshold", type=float,
                   help="score threshold (detection, instance segmentation; deepfake verdict)")
    p.add_argument("--top-k", type=int, help="most detections per image")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="extra request parameter, e.g. -p stride=8 for ftcn_tt, -p format=jpeg for cut, -p "
                        "dtype=float16 for stereo_from_mono (repeatable)")
    p.add_argument("--model-version", default=None, help="a specific model version")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    add_client_options(p)
    p.set_defaults(func=run)
