"""CUT / FastCUT generator (Park, Efros, Zhang, Zhu, "Contrastive Learning for Unpaired Image-to-Image
Translation", ECCV 2020, https://arxiv.org/abs/2007.15651): unpaired image-to-image translation.

Official code: ``taesungp/contrastive-unpaired-translation`` @ b3ac297 (BSD-2-Clause). The served network is
``netG`` of the published pretrained configs, ``networks.define_G(3, 3, 64, 'resnet_9blocks', 'instance',
no_dropout, no_antialias=False, no_antialias_up=False)``: a ``ResnetGenerator`` held in one ``nn.Sequential``
called ``model`` (this module keeps the official indices, so a checkpoint's keys are ``model.<i>.*``).
Facts that decide the numbers (tests/data/golden/zoo3/README_cut.md):

* InstanceNorm2d without affine parameters and without running statistics: always per-instance statistics,
  so train and eval mode are the same, and the checkpoint has no norm keys. Every conv has a bias;
* anti-aliased downsampling: a *stride-1* 3x3 conv (zero padding), IN, ReLU, then ``Downsample``: reflect-pad
  1 and a depthwise stride-2 blur with ``outer([1,2,1],[1,2,1]) / 16``; each halves a side to ``ceil(n/2)``;
* anti-aliased upsampling: ``Upsample``: replicate-pad 1, depthwise ``conv_transpose2d`` (stride 2, padding 2)
  with ``outer([1,3,3,1],[1,3,3,1]) / 64 * 4``, cropped by one pixel on every side (exactly ``2n``), then a
  stride-1 3x3 conv (zero padding), IN, ReLU;
* the fixed blur filters are *persistent buffers* (``model.{7,11,21,25}.filt``): published checkpoints hold
  them and the official loader is strict;
* 9 ResnetBlocks ``x + [reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN](x)``, no ReLU after the add;
* output ``tanh`` in [-1, 1]; the saved image truncates ``(x + 1) / 2 * 255`` to uint8 (``util.tensor2im``).

CUT and FastCUT differ only in training options (identity NCE loss, NCE weight, flip equivariance during
training), so both use this generator; the six published checkpoints differ only in their weights.

Preprocessing (official ``test.py`` with the released options: ``--preprocess resize_and_crop`` with
``load_size = crop_size = 256``): RGB, bicubic resize to 256x256 whatever the aspect ratio, the (identity)
256 crop, ``__make_power_2(base=4)`` (identity at 256), ``ToTensor`` and ``Normalize(0.5, 0.5)``: ``x = (u8 /
255 - 0.5) / 0.5``. ``mode="none"`` is the official ``--preprocess none`` instead: keep the image size,
bicubic-resizing each side to the nearest multiple of 4 (Python ``round``), the only sizes the generator
returns unchanged (it returns ``4 * ceil(side / 4)``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import filter_checkpoint
from zoo.contract import WeightsError
from zoo.layers import NormalizeConfig
from zoo.tensors import TensorSpec

MIN_SIDE = 5  # at 4 px the bottleneck is 1x1 and the ResBlock reflection pad fails (official probe)
POWER_BASE = 4  # official __make_power_2(base=4): two stride-2 stages
LOAD_SIZE = 256  # official test: load_size = crop_size = 256
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)
DOWN_TAPS = (1.0, 2.0, 1.0)  # official get_filter(3)
UP_TAPS = (1.0, 3.0, 3.0, 1.0)  # official get_filter(4), times stride**2 = 4
FEATURE_LAYERS = {"stem": 3, "down1": 7, "down2": 11, "res1": 12, "res9": 20, "up1": 24, "up2": 28,
                  "pre_tanh": 30}


# --- blocks ---------------------------------------------------------------------------------------
def blur_filter(taps: Iterable[float], channels: int, gain: float = 1.0) -> Tensor:
    """The per-channel separable binomial filter ``outer(taps, taps) / sum * gain``, ``[C, 1, k, k]`` float32
    (built in float32 like the official ``get_filter``; every value is exact in binary)."""
    a = torch.tensor(tuple(taps), dtype=torch.float32)
    filt = a[:, None] * a[None, :]
    filt = filt / filt.sum() * gain
    return filt[None, None].repeat(channels, 1, 1, 1)


class Downsample(nn.Module):
    """Anti-aliased stride-2 subsampling (official ``Downsample``, reflect padding, 3-tap blur): ``ceil(n/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", blur_filter(DOWN_TAPS, channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Anti-aliased 2x upsampling (official ``Upsample``): replicate pad 1, blurred transposed conv, then the
    even filter's asymmetric crop (``[1:, 1:]`` then ``[:-1, :-1]``), giving exactly ``2n``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", blur_filter(UP_TAPS, channels, gain=4.0))

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt, stride=2, padding=2,
                               groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """The generator's norm: no affine parameters, no running statistics (so no state-dict keys)."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``, no activation after the add; ``conv_block`` indices as official (convs 1 and 5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), instance_norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), instance_norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


# --- model ----------------------------------------------------------------------------------------
class ResnetGenerator(nn.Module):
    """The CUT generator (``resnet_9blocks``, anti-aliased, instance norm, no dropout); official module names.

    ``forward(x)`` takes ``[B, 3, H, W]`` in [-1, 1] and returns the translated batch in [-1, 1] of size
    ``4 * ceil(H / 4) x 4 * ceil(W / 4)`` (use multiples of 4, as ``preprocess`` gives, to keep the size)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True),
                                   instance_norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # two anti-aliased downsampling stages: stride-1 conv, IN, ReLU, blur-pool
            cin, cout = ngf * mult, ngf * mult * 2
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=True), instance_norm(cout), nn.ReLU(True),
                       Downsample(cout)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):  # two anti-aliased upsampling stages: blur-upsample, stride-1 conv, IN, ReLU
            cin, cout = ngf * mult, ngf * mult // 2
            layers += [Upsample(cin), nn.Conv2d(cin, cout, 3, padding=1, bias=True), instance_norm(cout),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, bias=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @staticmethod
    def check_size(x: Tensor) -> None:
        """Raise ``ValueError`` for inputs the generator cannot take (sides below ``MIN_SIDE``)."""
        if x.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"image sides must be at least {MIN_SIDE} px (the 4x-downsampled bottleneck needs "
                             f"2 px for its reflection padding); got {h}x{w}")

    def forward(self, x: Tensor) -> Tensor:
        self.check_size(x)
        return self.model(x)

    def forward_features(self, x: Tensor, layers: Iterable[int]) -> tuple[Tensor, dict[int, Tensor]]:
        """The output plus the outputs of the given ``model`` indices (the official ``forward(x, layers)``;
        ``FEATURE_LAYERS`` names the ones the golden data stores)."""
        self.check_size(x)
        wanted, feats = set(layers), {}
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                feats[i] = x
        return x, feats


def build_generator(input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                    **serving: Any) -> ResnetGenerator:
    """``ModelEntry.builder``: the architecture from an entry config (serving keys such as ``preprocess`` and
    ``direction`` are the handler's)."""
    return ResnetGenerator(input_nc, output_nc, ngf, n_blocks)


# --- pre/post-processing --------------------------------------------------------------------------
def power_of_base_size(width: int, height: int, base: int = POWER_BASE) -> tuple[int, int]:
    """Official ``__make_power_2``: each side to the nearest multiple of ``base`` (Python ``round``: halves
    go to the even multiple)."""
    return int(round(width / base) * base), int(round(height / base) * base)


@dataclass(frozen=True)
class TranslatePreprocess(NormalizeConfig):
    """The official test transform, as pure functions from a PIL image.

    ``mode="resize"`` (the released test options): bicubic resize to ``load_size x load_size`` ignoring the
    aspect ratio. ``mode="none"`` (official ``--preprocess none``): keep the size, with each side rounded to
    the nearest multiple of 4 by a bicubic resize; sides above ``max_side`` are refused (memory), and so are
    images whose rounded sides fall below 8 px."""

    mode: str = "resize"
    load_size: int = LOAD_SIZE
    max_side: int = 1024
    mean: tuple[float, float, float] = NORM_MEAN
    std: tuple[float, float, float] = NORM_STD

    def __post_init__(self) -> None:
        if self.mode not in ("resize", "none"):
            raise ValueError(f"preprocess mode must be 'resize' or 'none', got {self.mode!r}")
        if self.load_size % POWER_BASE or self.load_size < 2 * POWER_BASE:
            raise ValueError(f"load_size must be a multiple of {POWER_BASE} and at least {2 * POWER_BASE}, "
                             f"got {self.load_size}")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the network sees (and returns) for an input of this size; ``ValueError`` if none."""
        if self.mode == "resize":
            return self.load_size, self.load_size
        if max(width, height) > self.max_side:
            raise ValueError(f"image is {width}x{height}; with preprocess mode 'none' each side must be at most "
                             f"{self.max_side} px")
        size = power_of_base_size(width, height)
        if min(size) < 2 * POWER_BASE:
            raise ValueError(f"image is {width}x{height}; each side must round to at least {2 * POWER_BASE} px "
                             f"(nearest multiple of {POWER_BASE}) for the generator")
        return size

    def image(self, img: Image.Image) -> np.ndarray:
        """One image -> the ``[H, W, 3]`` uint8 array the official test feeds the network (before ToTensor)."""
        img = img.convert("RGB")
        size = self.output_size(img.width, img.height)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, images_u8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` ``(u8 / 255 - 0.5) / 0.5`` in ``dtype`` (ToTensor +
        Normalize, the same operations in the same order)."""
        x = images_u8.permute(0, 3, 1, 2).to(dtype).div(255)
        m = torch.tensor(self.mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s


def to_uint8(fake: Tensor) -> np.ndarray:
    """Generator output ``[B, 3, H, W]`` -> ``[B, H, W, 3]`` uint8 RGB, as official ``util.tensor2im``: clamp to
    [-1, 1], float32, ``(x + 1) / 2 * 255`` and **truncate** (``astype(uint8)``), not round."""
    x = fake.detach().clamp(-1.0, 1.0).cpu().float().numpy()
    x = (np.transpose(x, (0, 2, 3, 1)) + 1) / 2.0 * 255.0
    return x.astype(np.uint8)


IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


def encode_image(image_u8: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """One ``[H, W, 3]`` uint8 image -> PNG (lossless, what ``test.py`` writes) or JPEG bytes."""
    key = fmt.lower()
    if key not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {sorted(IMAGE_FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    kwargs = {"quality": int(quality)} if IMAGE_FORMATS[key] == "JPEG" else {}
    Image.fromarray(image_u8, "RGB").save(buf, format=IMAGE_FORMATS[key], **kwargs)
    return buf.getvalue()


# --- checkpoint conversion ------------------------------------------------------------------------
# Keys an official file may hold that inference does not use. None: ``latest_net_G.pth`` is
# ``netG.state_dict()`` alone (netF, the PatchNCE MLPs, and netD are saved to their own files,
# ``latest_net_F.pth``/``latest_net_D.pth``, and are refused by name if offered as a generator), and the
# official loader is strict (its pre-0.4 InstanceNorm ``running_*`` patch is commented out).
WRAPPER_KEYS = ("state_dict", "model", "netG")  # not used by the official saver; accepted for re-saved files
KEY_PREFIXES = ("module.",)  # DataParallel; the official saver strips it, re-saved files may not


@functools.cache
def zoo_keys(ngf: int = 64, n_blocks: int = 9) -> tuple[str, ...]:
    """The generator's state-dict keys (identical to the official ``netG.state_dict()``'s)."""
    with torch.device("meta"):
        return tuple(ResnetGenerator(ngf=ngf, n_blocks=n_blocks).state_dict())


def _filter_value(key: str, shape: tuple[int, ...]) -> Tensor | None:
    """The constant a ``*.filt`` buffer must hold (None for other keys)."""
    if not key.endswith(".filt"):
        return None
    taps, gain = (DOWN_TAPS, 1.0) if shape[-1] == len(DOWN_TAPS) else (UP_TAPS, 4.0)
    return blur_filter(taps, shape[0], gain)


def convert_official(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official ``latest_net_G.pth`` (a plain ``ResnetGenerator`` state dict, possibly ``module.``-prefixed or
    wrapped) -> zoo layout (the same names), through ``zoo.checkpoint``'s filter: ``WeightsError`` names every
    unknown or missing key; then any anti-aliasing filter that is not the fixed official blur (a different
    generator variant) is refused."""
    flat = filter_checkpoint(state_dict, what="CUT generator", expected=zoo_keys(), unwrap=WRAPPER_KEYS,
                             strip=KEY_PREFIXES)
    for key, value in flat.items():
        want = _filter_value(key, tuple(value.shape))
        if want is not None and (want.shape != value.shape or not torch.equal(value.float(), want)):
            raise WeightsError(f"CUT generator checkpoint: {key} is not the fixed anti-aliasing filter "
                               f"(shape {tuple(value.shape)}); this is not the anti-aliased resnet_9blocks")
    return flat


# --- registry -------------------------------------------------------------------------------------
UPSTREAM_TAR = "http://efrosgans.eecs.berkeley.edu/CUT/pretrained_models.tar"  # plain http (https: 404)
DATASETS = {
    # tag: (domain A -> domain B as served, official direction, what the A images are)
    "horse2zebra": ("horse -> zebra", "AtoB", "photos of horses (CycleGAN horse2zebra trainA)"),
    "cat2dog": ("cat -> dog", "AtoB", "cat faces (AFHQ cat)"),
    "cityscapes": ("Cityscapes semantic label map (colour-coded) -> street photo", "BtoA",
                   "Cityscapes gtFine colour label maps (the dataset's B domain; the model runs BtoA)"),
}
MODES = {"cut": "CUT", "fastcut": "FastCUT"}


def _entry(arch: str, tag: str) -> ModelEntry:
    direction, official_direction, domain = DATASETS[tag]
    member = f"checkpoints/{tag}_{arch}_pretrained/latest_net_G.pth"
    return ModelEntry(
        name=f"{arch}.{tag}",
        task="image-translation",
        builder=build_generator,
        config={
            "input_nc": 3,
            "output_nc": 3,
            "ngf": 64,
            "n_blocks": 9,
            "mode": MODES[arch],
            "direction": direction,
            "official_direction": official_direction,
            "preprocess": TranslatePreprocess().as_config(),
            "output_formats": ["png", "jpeg"],
        },
        handler="handlers.image_translation_handler",
        inputs={
            "image": f"BYTES [1]: image (JPEG/PNG bytes, multipart field 'image', or base64 in JSON "
                     f"{{\"image\": ...}}); input domain: {domain}. Model tensor: FP32 [-1, 3, 256, 256] in "
                     f"[-1, 1] (bicubic resize to 256x256, the official test transform)",
            "format": "BYTES [1], optional: 'png' (default, lossless like the official test.py) or 'jpeg'",
            "quality": "INT32 [1], optional: JPEG quality 1..100 (default 95)",
            "preprocess": "BYTES [1], optional: 'resize' (default: 256x256 whatever the aspect ratio) or 'none' "
                          "(official --preprocess none: the image's own size, each side rounded to a multiple "
                          "of 4, at most 1024 px, else HTTP 400)",
        },
        outputs=(  # handlers.image_translation_handler: tensors()
            TensorSpec("image", "BYTES", (1,),
                       f"the translated image ({direction}), RGB PNG or JPEG bytes as 'format' asks, "
                       f"256x256 (or the rounded input size with preprocess 'none'); uint8 by the official "
                       f"truncating tensor2im"),
        ),
        weights=WeightsSource(
            hf_repo=None,  # no Hub mirror by the authors is known; the official tar is the source
            converter="zoo.cut:convert_official",
            upstream_url=UPSTREAM_TAR,
            # One tar holds all six generators, which zoo pull cannot unpack: the user extracts this entry's
            # member and hands it to `zoo pull MODEL --file`. No sha256 is published for the tar or its members.
            upstream_sha256=None,
            upstream_filename=member,
            manual_download=True,
            sha256_record="none published: trust on first use (zoo/weights_lock.py)",
            description=f"official {MODES[arch]} {tag} generator: member {member} of pretrained_models.tar",
        ),
        license="BSD-2-Clause",
        paper="https://arxiv.org/abs/2007.15651 (Park, Efros, Zhang, Zhu: Contrastive Learning for Unpaired "
              "Image-to-Image Translation, ECCV 2020)",
        serving=ServingConfig(batch_size=4, max_batch_delay_ms=20, response_timeout_s=120),
        default_serve=False,
        description=f"{MODES[arch]} ResNet-9-block generator, {direction} ({tag}; unpaired translation).",
    )


CUT_ENTRIES = tuple(register(_entry(arch, tag)) for arch in MODES for tag in DATASETS)
