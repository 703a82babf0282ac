"""Face alignment for FTCN: one similarity transform per clip, a 5-point template, bilinear warps to 224x224.

What the official ``test_on_raw_video.py`` does (yinglinzheng/FTCN, ``FasterCropAlignXRay`` and
``warp_for_xray.py``), and how this module reproduces it:

* **Template.** Five points (left eye, right eye, nose tip, left and right mouth corner, image-left first)
  defined for a 256x256 crop, scaled by ``size / 256`` (224 for ``ftcn_tt``): :data:`TEMPLATE_256`.
* **Crop region.** Each frame's face box is grown by half its width/height on every side
  (``get_crop_box(scale=0.5)``: ``rint``, clipped to the frame) and everything outside that box is black:
  the official code pastes each frame's crop into a zero canvas spanning the union of the clip's boxes and
  warps that canvas. :func:`warp_clip` builds the same canvases.
* **One transform per clip.** The official code stacks the 5 landmarks of all 32 frames (160 points) and
  solves the MATLAB-``cp2tform`` least-squares similarity that maps the *template onto the image points*,
  then inverts it for ``cv2.warpAffine``. Because the template is the same for every frame, that fit is
  exactly the fit of the template to the clip's **mean** landmarks, which is what
  :func:`clip_transform` computes (closed-form Umeyama, rotation restricted to proper rotations -- for 2-D
  similarities identical to cp2tform's linear least squares). cp2tform also tries a reflected solution;
  with correctly ordered landmarks the non-reflective one always wins, so reflections are not offered.
* **Warp.** ``cv2.warpAffine`` defaults: bilinear, constant-zero border, pixel centres at integer
  coordinates, uint8 output. :func:`warp_clip` uses ``grid_sample`` (bilinear, zero padding,
  ``align_corners=False`` with the matching half-pixel shift) and rounds to uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# warp_for_xray.py: std_points_317 + 30 padding, shifted by (-30, -60) -> the 256x256 template
TEMPLATE_256 = np.array(
    [
        [85.82991, 85.7792],  # left eye (image left)
        [169.0532, 84.3381],  # right eye
        [127.574, 137.0006],  # nose tip
        [90.6964, 174.7014],  # left mouth corner
        [167.3069, 173.3733],  # right mouth corner
    ],
    dtype=np.float64,
)
CROP_SCALE = 0.5  # get_crop_box(shape, box, scale=0.5)


def template(size: int = 224) -> np.ndarray:
    """The 5-point template for a ``size`` x ``size`` crop."""
    return TEMPLATE_256 * (size / 256.0)


def umeyama(src: np.ndarray, dst: np.ndarray, allow_reflection: bool = False) -> np.ndarray:
    """Least-squares similarity (scale, rotation, translation) mapping ``src`` points onto ``dst``.

    Umeyama (1991): minimises ``sum |dst_i - (c R src_i + t)|^2``. Returns the 2x3 matrix ``[cR | t]``.
    Without ``allow_reflection`` the rotation is proper (det +1).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are degenerate (all equal)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    trans = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, trans[:, None]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def clip_transform(landmarks: np.ndarray, size: int = 224) -> np.ndarray:
    """Image -> crop 2x3 matrix for one clip from its (T, 5, 2) landmarks (see the module docstring)."""
    mean = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2).mean(0)
    return invert_affine(umeyama(template(size), mean))


def crop_box(box: Sequence[float], frame_hw: tuple[int, int], scale: float = CROP_SCALE) -> np.ndarray:
    """The official ``get_crop_box``: the box grown by ``scale`` x its size per side, integer, clipped."""
    height, width = frame_hw
    b = np.rint(np.asarray(box, dtype=np.float64)).reshape(2, 2)
    grow = scale * (b[1] - b[0])
    b = b + np.array([-1.0, 1.0])[:, None] * grow[None, :]
    b[:, 0] = np.clip(b[:, 0], 0, width - 1)
    b[:, 1] = np.clip(b[:, 1], 0, height - 1)
    return np.rint(b).astype(np.int64).reshape(-1)


def warp_clip(
    frames: Sequence[np.ndarray],
    boxes: np.ndarray,
    matrix: np.ndarray,
    size: int = 224,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Warp T frames with one image->crop ``matrix`` to (T, size, size, 3) uint8 on ``device``.

    ``frames`` are full (H, W, 3) uint8 RGB frames; ``boxes`` (T, 4) the integer crop boxes from
    :func:`crop_box`. Pixels outside a frame's own crop box are black, as in the official canvas.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} frames but {len(boxes)} crop boxes")
    left, top = boxes[:, 0].min(), boxes[:, 1].min()
    right, bottom = boxes[:, 2].max(), boxes[:, 3].max()
    canvas_w, canvas_h = max(int(right - left), 1), max(int(bottom - top), 1)
    canvas = np.zeros((len(frames), canvas_h, canvas_w, 3), dtype=np.uint8)
    for i, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, boxes, strict=True)):
        canvas[i, y1 - top:y2 - top, x1 - left:x2 - left] = frame[y1:y2, x1:x2]
    src = torch.from_numpy(canvas).to(device).permute(0, 3, 1, 2).float()

    inv = invert_affine(np.asarray(matrix, dtype=np.float64))  # crop -> image
    inv[:, 2] -= (left, top)  # -> canvas coordinates
    # normalised coordinates for align_corners=False: pixel index i <-> (2 i + 1) / n - 1
    to_norm = np.array([[2.0 / canvas_w, 0.0, 1.0 / canvas_w - 1.0],
                        [0.0, 2.0 / canvas_h, 1.0 / canvas_h - 1.0]])
    theta = to_norm[:, :2] @ inv
    theta[:, 2] += to_norm[:, 2]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (size, size, 3)
    grid = (pix @ torch.from_numpy(theta).T).float().to(device)  # (size, size, 2)
    grid = grid.unsqueeze(0).expand(len(frames), -1, -1, -1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
