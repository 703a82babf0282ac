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

Images are EXIF-rotated before drawing, as the server rotates them before detecting.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from clients.inputs import ImageLike, VideoLike, image_bytes, video_bytes
from clients.types import DeepfakeResult, DetectionResult, ModelInfo, QualityResult

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

    def fit(img: Image.Image) -> Image.Image:
        return img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.BICUBIC)

    a, b = fit(a), fit(b)
    gap = 8
    size = max(12, height // 22)
    font = _font(size)
    panel = Image.new("RGB", (a.width + gap + b.width, height + size + 12), CAPTION_BG)
    panel.paste(a, (0, 0))
    panel.paste(b, (a.width + gap, 0))
    draw = ImageDraw.Draw(panel)
    draw.text((6, height + 6), "restored", fill=TEXT_COLOR, font=font)
    draw.text((a.width + gap + 6, height + 6), "degraded (reference)", fill=TEXT_COLOR, font=font)

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
