"""Small synthetic test videos: a real face (scikit-image's ``astronaut``) under a known pan/zoom, and noise.

Frame ``t`` shows the photo through a known similarity: source point ``p`` lands at
``z_t * (p - c_t) + (W/2, H/2)``, so a landmark found in frame 0 can be predicted in every other frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

WIDTH, HEIGHT = 320, 256


def view(t: int) -> tuple[float, np.ndarray]:
    """(zoom, source centre) of frame ``t``: a slow zoom-in while panning (a few px per 32 frames)."""
    return 1.0 + 0.002 * t, np.array([226.0 - 0.3 * t, 146.0 + 0.15 * t])


def to_frame(t: int, points: np.ndarray) -> np.ndarray:
    """Photo coordinates -> frame ``t`` coordinates."""
    zoom, centre = view(t)
    return zoom * (np.asarray(points) - centre) + np.array([WIDTH / 2, HEIGHT / 2])


def to_photo(t: int, points: np.ndarray) -> np.ndarray:
    zoom, centre = view(t)
    return (np.asarray(points) - np.array([WIDTH / 2, HEIGHT / 2])) / zoom + centre


@lru_cache(maxsize=4)
def astronaut_frames(n: int) -> np.ndarray:
    """(n, HEIGHT, WIDTH, 3) uint8 frames, bilinear resampling of the photo (pixel centres at integers)."""
    from scipy.ndimage import map_coordinates
    from skimage import data

    photo = data.astronaut().astype(np.float64)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    frames = []
    for t in range(n):
        zoom, centre = view(t)
        x = centre[0] + (u - WIDTH / 2) / zoom
        y = centre[1] + (v - HEIGHT / 2) / zoom
        channels = [map_coordinates(photo[..., k], [y, x], order=1, mode="nearest") for k in range(3)]
        frames.append(np.clip(np.stack(channels, -1).round(), 0, 255).astype(np.uint8))
    return np.stack(frames)


@lru_cache(maxsize=8)
def astronaut_video(n: int = 44, codec: str = "libx264", container: str = "mp4", fps: float = 25.0) -> bytes:
    from zoo.video import encode_video

    options = {"crf": "18"} if codec == "libx264" else None
    return encode_video(astronaut_frames(n), fps, codec, container, options=options)


@lru_cache(maxsize=2)
def noise_video(n: int = 24, seed: int = 0) -> bytes:
    """Smooth coloured noise: no face anywhere."""
    from zoo.video import encode_video

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    frames = small.repeat(8, axis=1).repeat(8, axis=2)
    return encode_video(frames, 25.0)


@lru_cache(maxsize=2)
def long_tiny_video(seconds: int = 61) -> bytes:
    """A 32x32 video at 1 fps lasting ``seconds`` s: long, but a few kilobytes."""
    from zoo.video import encode_video

    frames = np.zeros((seconds, 32, 32, 3), dtype=np.uint8)
    frames[:, :, :, 1] = np.linspace(0, 255, seconds, dtype=np.uint8)[:, None, None]
    return encode_video(frames, 1.0)
