"""Pictures of results (Pillow): people would rather look than read.

- `draw_detections(image, result)`: the image with one box per detection in its label's colour
  (`label_color`), ``label score`` on a tag above the box, and a caption strip UNDER the image (model,
  weights; a RANDOM-weights warning), so image pixels keep their coordinates.
- `draw_quality(restored, degraded, result)`: restored | degraded side by side under a banner with the
  score, a red-to-green bar, and the weights warning.
- `draw_deepfake(video, result)`: a contact sheet of video frames (evenly spaced over the frames where faces
  were tracked, else over the video) with each face track's box (interpolated between the sampled boxes; red when
  its score is at or above the verdict threshold, green below, grey when unscored) and ``track k: score``,
  under a verdict banner.
- `draw_instances(image, result)`: each instance's mask blended over the image in its label's colour
  (`blend`), then its box and ``label score`` tag as for detections, and the caption strip below.
- `draw_label_map(image, result)`: the label map's palette colours blended over the image, the classes with the
  most pixels (colour swatch, name, share) in the caption strip below.
- `draw_translation(image, result)`: input | translated side by side at one height, the direction above.
- `draw_disparity(left, result)`: left view | colourised disparity (`disparity_colors`, near = warm) side by
  side, with a colour bar from 0 to the largest disparity.

Images are EXIF-rotated before drawing, as the server rotates them before detecting.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from clients.inputs import ImageLike, VideoLike, image_bytes, video_bytes
from clients.types import (
    DeepfakeResult,
    DetectionResult,
    DisparityResult,
    InstanceSegmentationResult,
    ModelInfo,
    QualityResult,
    SemanticSegmentationResult,
    TranslationResult,
)

# distinct, saturated colours (none of them close to the caption's greys)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)
FAKE_COLOR = (230, 25, 25)
REAL_COLOR = (30, 190, 60)
UNSCORED_COLOR = (160, 160, 160)
WARN_COLOR = (255, 170, 0)
CAPTION_BG = (24, 24, 24)
TEXT_COLOR = (255, 255, 255)
MASK_ALPHA = 0.5  # share of a mask's / label's colour in the blended pixel
# Disparity colours, small (far) to large (near): (position in [0, 1], RGB), piecewise linear ("turbo"-like).
DISPARITY_STOPS = ((0.0, (48, 18, 59)), (0.2, (40, 120, 230)), (0.4, (30, 210, 170)), (0.6, (160, 250, 60)),
                   (0.8, (250, 160, 30)), (1.0, (170, 20, 5)))


def label_color(label_id: int) -> tuple[int, int, int]:
    """The colour of a detection box (by COCO label id, so one class keeps one colour)."""
    return PALETTE[label_id % len(PALETTE)]


def line_width(width: int, height: int) -> int:
    return max(2, round(min(width, height) / 150))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def open_image(image: ImageLike | Image.Image) -> Image.Image:
    """An RGB PIL image, EXIF-rotated like the server does."""
    if not isinstance(image, Image.Image):
        image = Image.open(io.BytesIO(image_bytes(image)))
    return ImageOps.exif_transpose(image).convert("RGB")


def _weights_note(model: ModelInfo) -> tuple[str, tuple[int, int, int]]:
    if model.random_weights:
        return "RANDOM WEIGHTS: not trained, results are meaningless", WARN_COLOR
    return f"weights {model.weights_label}", TEXT_COLOR


def _caption_strip(width: int, lines: list[tuple[str, tuple[int, int, int]]], size: int) -> Image.Image:
    font = _font(size)
    pad = max(4, size // 3)
    strip = Image.new("RGB", (width, pad + len(lines) * (size + pad)), CAPTION_BG)
    draw = ImageDraw.Draw(strip)
    for i, (text, color) in enumerate(lines):
        draw.text((pad, pad + i * (size + pad)), text, fill=color, font=font)
    return strip


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), CAPTION_BG)
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def _tagged_box(draw: ImageDraw.ImageDraw, box: Any, color: tuple[int, int, int], text: str, width: int,
                font: Any, bounds: tuple[int, int]) -> None:
    x0, y0, x1, y1 = (round(float(v)) for v in box)  # whole pixels: the outline's first `width` px inward
    draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
    tw, th = _text_size(draw, text, font)
    pad = 2
    ty = y0 - th - 2 * pad if y0 - th - 2 * pad >= 0 else y0 + width  # above the box, else just inside it
    tx = min(max(0.0, x0), max(0.0, bounds[0] - tw - 2 * pad))
    draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=color)
    dark = sum(color) > 450
    draw.text((tx + pad, ty + pad), text, fill=(0, 0, 0) if dark else TEXT_COLOR, font=font)


def draw_detections(image: ImageLike | Image.Image, result: DetectionResult) -> Image.Image:
    """The image with the detections drawn on it, and a caption strip below it."""
    img = open_image(image).copy()
    width = line_width(img.width, img.height)
    size = max(11, min(img.width, img.height) // 40)
    font = _font(size)
    draw = ImageDraw.Draw(img)
    # worst first, so the best detection's box is drawn last (on top)
    for det in sorted(result.detections, key=lambda d: d.score):
        _tagged_box(draw, det.box, label_color(det.label_id), f"{det.label} {det.score:.2f}", width, font,
                    (img.width, img.height))
    lines = [(f"{result.model.name}: {len(result.detections)} detection(s)", TEXT_COLOR),
             _weights_note(result.model)]
    return _stack(img, _caption_strip(img.width, lines, size))


def _score_color(score: float) -> tuple[int, int, int]:
    s = min(1.0, max(0.0, score))
    return (round(230 * (1 - s)), round(190 * s + 25 * (1 - s)), 40)


def draw_quality(restored: ImageLike | Image.Image, degraded: ImageLike | Image.Image,
                 result: QualityResult, height: int = 384) -> Image.Image:
    """Restored | degraded side by side (same height) under a banner with the quality score."""
    a, b = open_image(restored), open_image(degraded)
    height = min(height, max(a.height, b.height))
    panel = _pair_panel(a, b, ("restored", "degraded (reference)"), height)
    size = max(12, height // 22)
    font = _font(size)

    big = _font(size * 2)
    note, note_color = _weights_note(result.model)
    banner = Image.new("RGB", (panel.width, size * 2 + size + 36), CAPTION_BG)
    bd = ImageDraw.Draw(banner)
    title = f"quality {result.score:.3f}"
    bd.text((10, 6), title, fill=TEXT_COLOR, font=big)
    tw, _ = _text_size(bd, title, big)
    bar_x0, bar_x1 = 10 + tw + 16, panel.width - 10
    if bar_x1 - bar_x0 > 20:
        bar_y0, bar_y1 = 10, 6 + size * 2
        bd.rectangle((bar_x0, bar_y0, bar_x1, bar_y1), outline=TEXT_COLOR, width=1)
        filled = bar_x0 + (bar_x1 - bar_x0) * min(1.0, max(0.0, result.score))
        if filled > bar_x0 + 1:
            bd.rectangle((bar_x0 + 1, bar_y0 + 1, filled - 1, bar_y1 - 1), fill=_score_color(result.score))
    bd.text((10, size * 2 + 18), f"{result.model.name} (higher is better) - {note}", fill=note_color, font=font)
    return _stack(banner, panel)


def read_frames(video: VideoLike, wanted: set[int] | None = None, max_frames: int = 8) -> dict[int, Image.Image]:
    """Frames of the first video stream by frame number (decode order, as the server counts them):
    the `wanted` ones, or `max_frames` evenly spaced ones when `wanted` is None."""
    import av

    data = video_bytes(video)
    if wanted is None:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            total = int(stream.frames or 0) or sum(1 for _ in container.decode(stream))  # count if unknown
        step = max(1.0, total / max_frames)
        wanted = {min(total - 1, round(i * step)) for i in range(min(max_frames, total))}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        out: dict[int, Image.Image] = {}
        last = max(wanted) if wanted else -1
        for number, frame in enumerate(container.decode(stream)):
            if number in wanted:
                out[number] = frame.to_image().convert("RGB")
            if number >= last:
                break
    return out


def draw_deepfake(video: VideoLike, result: DeepfakeResult, max_frames: int = 8, thumb_width: int = 320,
                  columns: int = 4) -> Image.Image:
    """A contact sheet of the video's frames with the face tracks and their fake probabilities."""
    threshold = float((result.raw.get("analysis") or {}).get("threshold", 0.5))
    wanted: set[int] | None = None
    if result.tracks:  # evenly over the frames where faces were tracked
        first, last = min(t.frames[0] for t in result.tracks), max(t.frames[1] for t in result.tracks)
        count = min(max_frames, last - first + 1)
        wanted = {first + round(i * (last - first) / max(1, count - 1)) for i in range(count)}
    frames = read_frames(video, wanted, max_frames)
    if not frames:
        raise ValueError("the video has no decodable frame to draw")
    numbers = sorted(frames)
    fps = float(result.video.get("fps") or 0.0)
    first = frames[numbers[0]]
    scale = thumb_width / first.width
    thumb_h = max(1, round(first.height * scale))
    size = max(11, thumb_width // 26)
    font = _font(size)
    cell_h = thumb_h + size + 10
    cols = min(columns, len(numbers))
    rows = (len(numbers) + cols - 1) // cols
    gap = 6
    sheet = Image.new("RGB", (cols * thumb_width + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap), CAPTION_BG)
    for i, number in enumerate(numbers):
        thumb = frames[number].resize((thumb_width, thumb_h), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(thumb)
        for track in result.tracks:
            box = track.box_at(number)
            if box is None:
                continue
            if track.score is None:
                color, text = UNSCORED_COLOR, f"track {track.track_id}: unscored"
            else:
                color = FAKE_COLOR if track.score >= threshold else REAL_COLOR
                text = f"track {track.track_id}: {track.score:.2f}"
            _tagged_box(draw, [v * scale for v in box], color, text, 3, font, (thumb_width, thumb_h))
        x, y = (i % cols) * (thumb_width + gap), (i // cols) * (cell_h + gap)
        sheet.paste(thumb, (x, y))
        when = f" - {number / fps:.2f} s" if fps else ""
        ImageDraw.Draw(sheet).text((x + 4, y + thumb_h + 4), f"frame {number}{when}", fill=TEXT_COLOR, font=font)

    big = _font(size * 2)
    if result.verdict == "no_face":
        title, color = "NO FACE found", UNSCORED_COLOR
    else:
        prob = result.fake_probability if result.fake_probability is not None else float("nan")
        title = f"{result.verdict.upper()}  (fake probability {prob:.2f})"
        color = FAKE_COLOR if result.verdict == "fake" else REAL_COLOR
    note, note_color = _weights_note(result.model)
    detail = (f"{result.model.name}: {len(result.tracks)} face track(s), {result.clips_analyzed} clip(s), "
              f"{result.frames_analyzed} frames, threshold {threshold:g}")
    banner = Image.new("RGB", (sheet.width, 2 * size + 2 * (size + 8) + 16), CAPTION_BG)
    bd = ImageDraw.Draw(banner)
    bd.text((10, 6), title, fill=color, font=big)
    bd.text((10, 2 * size + 14), detail, fill=TEXT_COLOR, font=font)
    bd.text((10, 3 * size + 22), note, fill=note_color, font=font)
    return _stack(banner, sheet)


def blend(pixels: np.ndarray, color: Any, where: np.ndarray, alpha: float = MASK_ALPHA) -> np.ndarray:
    """``pixels`` (``[H, W, 3]`` uint8) with ``color`` (one RGB or ``[H, W, 3]``) mixed in at ``alpha`` where
    ``where`` is true: ``round((1 - alpha) * pixel + alpha * color)``."""
    mixed = np.round((1 - alpha) * pixels.astype(np.float64) + alpha * np.asarray(color, dtype=np.float64))
    return np.where(where[..., None], mixed.astype(np.uint8), pixels)


def draw_instances(image: ImageLike | Image.Image, result: InstanceSegmentationResult,
                   alpha: float = MASK_ALPHA) -> Image.Image:
    """The image with each instance's mask blended in its label's colour, its box and tag, and a caption strip."""
    img = open_image(image)
    pixels = np.asarray(img).copy()
    ordered = sorted(result.instances, key=lambda i: i.score)  # worst first: the best is drawn on top
    for inst in ordered:
        mask = inst.mask().astype(bool)
        if mask.shape != pixels.shape[:2]:
            raise ValueError(f"instance mask is {mask.shape[1]}x{mask.shape[0]}, the image {img.width}x{img.height}")
        pixels = blend(pixels, label_color(inst.label_id), mask, alpha)
    out = Image.fromarray(pixels)
    width = line_width(out.width, out.height)
    size = max(11, min(out.width, out.height) // 40)
    font = _font(size)
    draw = ImageDraw.Draw(out)
    for inst in ordered:
        _tagged_box(draw, inst.box, label_color(inst.label_id), f"{inst.label} {inst.score:.2f}", width, font,
                    (out.width, out.height))
    lines = [(f"{result.model.name}: {len(result.instances)} instance(s)", TEXT_COLOR), _weights_note(result.model)]
    return _stack(out, _caption_strip(out.width, lines, size))


def draw_label_map(image: ImageLike | Image.Image, result: SemanticSegmentationResult, alpha: float = MASK_ALPHA,
                   legend: int = 6) -> Image.Image:
    """The image with every pixel's class colour blended in, and the `legend` largest classes below it."""
    img = open_image(image)
    labels = result.label_map()
    if labels.shape != (img.height, img.width):
        raise ValueError(f"label map is {labels.shape[1]}x{labels.shape[0]}, the image {img.width}x{img.height}")
    colors = result.palette()[labels]
    out = Image.fromarray(blend(np.asarray(img), colors, np.ones(labels.shape, dtype=bool), alpha))
    size = max(11, min(out.width, out.height) // 40)
    lines = [(f"{result.model.name}: {result.dataset} label map, {len(result.class_fractions)} class(es)",
              TEXT_COLOR)]
    strip = _caption_strip(out.width, [*lines, *[("", TEXT_COLOR)] * min(legend, len(result.class_fractions)),
                                       _weights_note(result.model)], size)
    draw = ImageDraw.Draw(strip)
    pad = max(4, size // 3)
    palette = result.palette()
    font = _font(size)
    for row, cls in enumerate(result.class_fractions[:legend], start=1):
        y = pad + row * (size + pad)
        draw.rectangle((pad, y, pad + size, y + size), fill=tuple(int(v) for v in palette[cls.index]))
        draw.text((2 * pad + size, y), f"{cls.label} {100 * cls.fraction:.1f}%", fill=TEXT_COLOR, font=font)
    return _stack(out, strip)


def _pair_panel(left: Image.Image, right: Image.Image, titles: tuple[str, str], height: int) -> Image.Image:
    """left | right scaled to one height with a gap between, each one's title under it."""
    def fit(img: Image.Image) -> Image.Image:
        return img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.BICUBIC)

    a, b = fit(left), fit(right)
    gap = 8
    size = max(12, height // 22)
    font = _font(size)
    panel = Image.new("RGB", (a.width + gap + b.width, height + size + 12), CAPTION_BG)
    panel.paste(a, (0, 0))
    panel.paste(b, (a.width + gap, 0))
    draw = ImageDraw.Draw(panel)
    draw.text((6, height + 6), titles[0], fill=TEXT_COLOR, font=font)
    draw.text((a.width + gap + 6, height + 6), titles[1], fill=TEXT_COLOR, font=font)
    return panel


def _side_by_side(left: Image.Image, right: Image.Image, titles: tuple[str, str], banner: list[tuple[str, Any]],
                  height: int) -> Image.Image:
    """`_pair_panel` under a caption banner."""
    panel = _pair_panel(left, right, titles, height)
    return _stack(_caption_strip(panel.width, banner, max(12, height // 22)), panel)


def draw_translation(image: ImageLike | Image.Image, result: TranslationResult,
                     height: int | None = None) -> Image.Image:
    """Input | translated side by side (at the translated image's height unless `height` is given)."""
    translated = result.image()
    height = height or translated.height
    banner = [(f"{result.model.name}: {result.direction or 'translation'}", TEXT_COLOR), _weights_note(result.model)]
    return _side_by_side(open_image(image), translated, ("input", f"translated ({result.format})"), banner, height)


def disparity_colors(disparity: np.ndarray, top: float | None = None) -> np.ndarray:
    """``[H, W]`` disparity -> ``[H, W, 3]`` uint8 RGB with `DISPARITY_STOPS`, scaled from 0 to `top` (default:
    the map's maximum); NaN is 0."""
    values = np.nan_to_num(np.asarray(disparity, dtype=np.float64), nan=0.0)
    top = float(values.max()) if top is None else float(top)
    t = np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    stops = np.array([p for p, _ in DISPARITY_STOPS])
    colors = np.array([c for _, c in DISPARITY_STOPS], dtype=np.float64)
    return np.round(np.stack([np.interp(t, stops, colors[:, k]) for k in range(3)], axis=-1)).astype(np.uint8)


def draw_disparity(left: ImageLike | Image.Image, result: DisparityResult) -> Image.Image:
    """Left view | colourised disparity side by side at the view's size, with a colour bar in the banner."""
    view = open_image(left)
    disparity = np.asarray(result.disparity, dtype=np.float32)
    if disparity.shape != (view.height, view.width):
        raise ValueError(f"disparity is {disparity.shape[1]}x{disparity.shape[0]}, the view {view.width}x{view.height}")
    top = float(disparity.max()) if disparity.size else 0.0
    colored = Image.fromarray(disparity_colors(disparity, top))
    banner = [(f"{result.model.name}: disparity 0 .. {top:.1f} px (near = warm)", TEXT_COLOR), ("", TEXT_COLOR),
              _weights_note(result.model)]
    picture = _side_by_side(view, colored, ("left view", "disparity"), banner, view.height)
    size = max(12, view.height // 22)
    pad = max(4, size // 3)
    bar_x0, bar_x1, bar_y = pad, min(picture.width - pad, pad + 256), pad + (size + pad)
    if bar_x1 - bar_x0 > 2:
        ramp = np.linspace(0.0, 1.0, bar_x1 - bar_x0)[None].repeat(size, axis=0)
        picture.paste(Image.fromarray(disparity_colors(ramp, 1.0)), (bar_x0, bar_y))
    return picture
