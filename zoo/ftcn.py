"""FTCN+TT: fully temporal convolution network + temporal transformer for video face-forgery detection.

Zheng, Bao, Chen, Zeng, Wen, "Exploring Temporal Coherence for More General Video Face Forgery Detection",
ICCV 2021 (https://arxiv.org/abs/2108.06693). Written from the official ``ftcn_tt`` configuration
(yinglinzheng/FTCN: ``i3d_temporal_var_fix_dropout_tt_cfg.py`` + ``time_transformer.py`` on top of the
SlowFast I3D ResNet-50, with ``root_setting.yaml`` + ``setting/ftcn_tt.yaml``):

* an I3D ResNet-50 in which **every** convolution has spatial kernel 1 (temporal kernels kept: stem 5,
  res2 ``[3]``, res3/res4 ``[3, 1]`` cycled over the blocks);
* every spatial stride 2 is removed from its convolution and replaced by ``MaxPool3d((1, 2, 2))`` placed
  right **after** that convolution's BatchNorm (stem conv, and ``branch1``/``branch2.b`` of the first block
  of res3 and res4). That is why the official state dict has ``bn.0``/``b_bn.0``/``branch1_bn.0`` keys: the
  BN became element 0 of ``Sequential(BN, MaxPool)``. The stem's own ``MaxPool3d((1,3,3), s=(1,2,2))`` stays;
* the I3D temporal pool ``pathway0_pool`` (``MaxPool3d((2,1,1))``) after res2 halves 32 frames to 16;
* res5 is removed (``stop_point=5``), so res4's (B, 1024, 16, 14, 14) map feeds the head;
* head: ``AvgPool3d((1, 14, 14))`` -> 16 time tokens of 1024, a learnable cls token + positional embedding
  (17 positions), one pre-norm transformer layer (16 heads x 64, bias-free qkv, MLP 2048 with GELU), then
  ``LayerNorm -> Linear(1024, 1)`` on the cls token. The official model ends in a sigmoid (fake probability);
  here ``forward`` returns the logit and the caller applies the sigmoid.

Module and parameter names follow the official ``I3D8x8`` module exactly (``resnet.s1.pathway0_stem.conv``,
``resnet.head.time_T.transformer.layers.0.0.fn.fn.to_qkv``, ...), so the official ``ftcn_tt.pth`` maps 1:1
onto this model (:func:`convert_checkpoint` only unwraps containers, strips wrapper prefixes and fills absent
BatchNorm step counters).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo._registry import GpuServing, ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.layers import IMAGENET_MEAN, IMAGENET_STD
from zoo.runtime import GPU_NOT_MEASURED
from zoo.tensors import TensorSpec

CLIP_LEN = 32  # frames per clip (``clip_size`` in ftcn_tt.yaml)
CLIP_SIZE = 224  # aligned face crop, pixels (``imsize`` in ftcn_tt.yaml)
# test_on_raw_video.py normalises 0..255 RGB frames with these (computed as value * 255 there, too).
MEAN_255 = tuple(m * 255 for m in IMAGENET_MEAN)
STD_255 = tuple(s * 255 for s in IMAGENET_STD)

# Architecture knobs of the official ftcn_tt configuration (the registry entry's config).
DEFAULT_CONFIG: dict[str, Any] = {
    "clip_len": CLIP_LEN,
    "image_size": CLIP_SIZE,
    "width": 64,  # RESNET.WIDTH_PER_GROUP (NUM_GROUPS 1); channels 64 -> 256 -> 512 -> 1024
    "stage_blocks": [3, 4, 6],  # ResNet-50 res2..res4 (res5 removed: stop_point=5)
    "stem_temporal_kernel": 5,  # slowfast _TEMPORAL_KERNEL_BASIS["i3d"] conv1
    "stage_temporal_kernels": [[3], [3, 1], [3, 1]],  # ... res2, res3, res4 (cycled over each stage's blocks)
    "depth": 1,  # transformer layers
    "heads": 16,
    "dim_head": 64,
    "mlp_dim": 2048,
    "dropout": 0.1,  # inactive in eval
    "emb_dropout": 0.1,  # inactive in eval
}

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------------------------------
# input helpers (shared with the handler)
# --------------------------------------------------------------------------------------------------
def normalize_clips(clips: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """0..255 RGB clips, (B, T, H, W, 3) or (B, 3, T, H, W), any real dtype -> normalised (B, 3, T, H, W).

    ``(x - 255 * mean) / (255 * std)`` with the ImageNet mean/std, computed in ``dtype`` on the input's
    device, exactly as ``test_on_raw_video.py`` does (subtract, then divide).
    """
    if not isinstance(clips, Tensor) or clips.ndim != 5:
        shape = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
        raise ValueError(f"clips must be a 5-D tensor (B, T, H, W, 3) or (B, 3, T, H, W); got {shape}")
    last, second = clips.shape[-1] == 3, clips.shape[1] == 3
    if last and not second:
        clips = clips.permute(0, 4, 1, 2, 3)
    elif not second:
        raise ValueError(f"clips need 3 RGB channels in dim 1 or dim -1; got shape {tuple(clips.shape)}")
    elif last:
        raise ValueError(f"ambiguous clip layout {tuple(clips.shape)}: both dim 1 and dim -1 have size 3")
    x = clips.to(dtype)
    mean = torch.tensor(MEAN_255, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD_255, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub(mean).div(std).contiguous()


# --------------------------------------------------------------------------------------------------
# backbone: I3D ResNet-50 with spatial kernel 1 everywhere
# --------------------------------------------------------------------------------------------------
def _temporal_conv(c_in: int, c_out: int, kt: int) -> nn.Conv3d:
    """A (kt, 1, 1) convolution, 'same' padding in time, no bias (every FTCN backbone conv)."""
    return nn.Conv3d(c_in, c_out, kernel_size=(kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)


def _norm(channels: int, downsample: bool) -> nn.Module:
    """BatchNorm, followed by the (1, 2, 2) max-pool that replaced the conv's spatial stride 2."""
    bn = nn.BatchNorm3d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    return nn.Sequential(bn, nn.MaxPool3d((1, 2, 2))) if downsample else bn


class _Stem(nn.Module):
    """conv (kt,1,1) -> BN -> max-pool (1,2,2) [was the conv's stride] -> ReLU -> max-pool (1,3,3)/(1,2,2)."""

    def __init__(self, c_in: int, c_out: int, kt: int) -> None:
        super().__init__()
        self.conv = _temporal_conv(c_in, c_out, kt)
        self.bn = _norm(c_out, downsample=True)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class _StemStage(nn.Module):
    """``s1``: the single-pathway stem container (keeps the official ``pathway0_stem`` name)."""

    def __init__(self, c_in: int, c_out: int, kt: int) -> None:
        super().__init__()
        self.pathway0_stem = _Stem(c_in, c_out, kt)

    def forward(self, x: Tensor) -> Tensor:
        return self.pathway0_stem(x)


class _Bottleneck(nn.Module):
    """``branch2``: (kt,1,1) reduce -> (1,1,1) [pooled when downsampling] -> (1,1,1) expand; BN after each."""

    def __init__(self, c_in: int, c_out: int, c_inner: int, kt: int, downsample: bool) -> None:
        super().__init__()
        self.a = _temporal_conv(c_in, c_inner, kt)
        self.a_bn = _norm(c_inner, downsample=False)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = _temporal_conv(c_inner, c_inner, 1)  # was the 1x3x3 (strided) conv
        self.b_bn = _norm(c_inner, downsample)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = _temporal_conv(c_inner, c_out, 1)
        self.c_bn = _norm(c_out, downsample=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class _ResBlock(nn.Module):
    """Residual block; a projection shortcut (``branch1``) where channels or resolution change."""

    def __init__(self, c_in: int, c_out: int, c_inner: int, kt: int, downsample: bool) -> None:
        super().__init__()
        if c_in != c_out or downsample:
            self.branch1 = _temporal_conv(c_in, c_out, 1)
            self.branch1_bn = _norm(c_out, downsample)
        else:
            self.branch1 = None
        self.branch2 = _Bottleneck(c_in, c_out, c_inner, kt, downsample)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        return self.relu(shortcut + self.branch2(x))


class _ResStage(nn.Module):
    """``s2``..``s4``: blocks named ``pathway0_res{i}``; block i uses temporal kernel ``basis[i % len]``."""

    def __init__(
        self, c_in: int, c_out: int, c_inner: int, blocks: int, basis: Sequence[int], downsample: bool
    ) -> None:
        super().__init__()
        for i in range(blocks):
            first = i == 0
            kt = basis[i % len(basis)]
            block = _ResBlock(c_in if first else c_out, c_out, c_inner, kt, downsample and first)
            self.add_module(f"pathway0_res{i}", block)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.children():
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------------
# head: temporal transformer over the 16 time tokens
# --------------------------------------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(x).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, heads, n, dim_head)
        attn = (torch.matmul(q, k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _Residual(_PreNorm(dim, _Attention(dim, heads, dim_head, dropout))),
                    _Residual(_PreNorm(dim, _FeedForward(dim, mlp_dim, dropout))),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:
            x = ff(attn(x))
        return x


class _TimeTransformer(nn.Module):
    """cls token + positional embedding, transformer, LayerNorm + Linear on the cls token -> one logit."""

    def __init__(self, num_tokens: int, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float, emb_dropout: float) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = _Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, _ = tokens.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1) + self.pos_embedding[:, : n + 1]
        x = self.transformer(self.dropout(x))
        return self.mlp_head(x[:, 0])


class _TransformerHead(nn.Module):
    """Spatial average of the res4 map -> (B, T', C) time tokens -> :class:`_TimeTransformer`."""

    def __init__(self, spatial_size: int, num_tokens: int, channels: int, **transformer: Any) -> None:
        super().__init__()
        self.pool = nn.AvgPool3d((1, spatial_size, spatial_size))
        self.time_T = _TimeTransformer(num_tokens, channels, **transformer)

    def tokens(self, feat: Tensor) -> Tensor:
        return self.pool(feat).flatten(2).transpose(1, 2)

    def forward(self, feat: Tensor) -> Tensor:
        return self.time_T(self.tokens(feat))


class _Backbone(nn.Module):
    """The official ``I3D8x8.resnet``: s1, s2, pathway0_pool, s3, s4 (s5 removed) and the transformer head."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        w = cfg["width"]
        b2, b3, b4 = cfg["stage_blocks"]
        k2, k3, k4 = cfg["stage_temporal_kernels"]
        self.s1 = _StemStage(3, w, cfg["stem_temporal_kernel"])
        self.s2 = _ResStage(w, 4 * w, w, b2, k2, downsample=False)
        self.pathway0_pool = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        self.s3 = _ResStage(4 * w, 8 * w, 2 * w, b3, k3, downsample=True)
        self.s4 = _ResStage(8 * w, 16 * w, 4 * w, b4, k4, downsample=True)
        self.head = _TransformerHead(
            spatial_size=cfg["image_size"] // 16,  # stem /4, res3 /2, res4 /2
            num_tokens=cfg["clip_len"] // 2,  # pathway0_pool halves time
            channels=16 * w,
            depth=cfg["depth"], heads=cfg["heads"], dim_head=cfg["dim_head"], mlp_dim=cfg["mlp_dim"],
            dropout=cfg["dropout"], emb_dropout=cfg["emb_dropout"],
        )

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> the res4 map (B, 16w, T/2, H/16, W/16)."""
        x = self.s2(self.s1(x))
        x = self.pathway0_pool(x)
        return self.s4(self.s3(x))


class FTCN(nn.Module):
    """FTCN+TT. ``forward(clips)`` takes normalised (B, 3, 32, 224, 224) clips and returns (B,) logits."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        unknown = sorted(set(config) - set(DEFAULT_CONFIG))
        if unknown:
            raise TypeError(f"unknown FTCN config keys: {', '.join(unknown)}")
        self.config = {**DEFAULT_CONFIG, **config}
        self.clip_len = int(self.config["clip_len"])
        self.image_size = int(self.config["image_size"])
        if self.clip_len % 2 or self.image_size % 16:
            raise ValueError(f"clip_len must be even and image_size a multiple of 16; got {self.config}")
        if len(self.config["stage_blocks"]) != 3 or len(self.config["stage_temporal_kernels"]) != 3:
            raise ValueError("FTCN (stop_point=5) has exactly three residual stages (res2..res4)")
        self.resnet = _Backbone(self.config)

    def check_clips(self, clips: Tensor) -> None:
        """Raise a ValueError explaining why ``clips`` cannot go through the model."""
        want = (3, self.clip_len, self.image_size, self.image_size)
        if not isinstance(clips, Tensor) or clips.ndim != 5 or tuple(clips.shape[1:]) != want:
            got = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
            reasons = []
            if isinstance(clips, Tensor) and clips.ndim == 5:
                if clips.shape[1] != 3:
                    reasons.append("dim 1 must hold the 3 RGB channels (use normalize_clips for (B,T,H,W,3))")
                if clips.shape[2] != self.clip_len:
                    reasons.append(
                        f"T must be {self.clip_len}: the temporal pool halves it to the "
                        f"{self.clip_len // 2} time tokens the positional embedding was trained for"
                    )
                if tuple(clips.shape[3:]) != want[2:]:
                    reasons.append(
                        f"frames must be {self.image_size}x{self.image_size} aligned face crops: the head "
                        f"averages a fixed {self.image_size // 16}x{self.image_size // 16} window of the "
                        "1/16 map"
                    )
            detail = "; ".join(reasons) or "expected a 5-D tensor"
            expected = f"(B, {', '.join(map(str, want))})"
            raise ValueError(f"FTCN expects clips of shape {expected}; got {got}: {detail}")
        if clips.shape[0] == 0:
            raise ValueError("FTCN got an empty batch (B=0)")

    def head_tokens(self, clips: Tensor) -> Tensor:
        """The (B, T/2, 16w) = (B, 16, 1024) time tokens fed to the temporal transformer."""
        self.check_clips(clips)
        return self.resnet.head.tokens(self.resnet.features(clips))

    def forward(self, clips: Tensor, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B,) fake-vs-real logits (sigmoid -> fake probability); with ``return_tokens`` also the tokens."""
        tokens = self.head_tokens(clips)
        logits = self.resnet.head.time_T(tokens).squeeze(-1)
        return (logits, tokens) if return_tokens else logits


# --------------------------------------------------------------------------------------------------
# official checkpoint -> zoo layout
# --------------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("state_dict", "model", "network", "model_state_dict", "net")
# Leading components the official training code adds: DataParallel/DDP ("module."), and ModelBase's
# attributes when a whole Classifier was saved ("network." and its alias "_warped_network.").
_STRIP_PREFIXES = ("module.", "network.", "_warped_network.")


@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (the official ``I3D8x8`` keys, ``num_batches_tracked`` counters included)."""
    return expected_keys(FTCN)


def _fill_bn_counters(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BatchNorm ``num_batches_tracked`` counters, which do nothing in eval, set to 0 where a file lacks them."""
    out = dict(state)
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def convert_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map the official ``ftcn_tt.pth`` (or a wrapped / prefixed copy of it) onto :class:`FTCN`'s keys.

    The official code saves ``self.network.state_dict()``, i.e. ``I3D8x8`` keys ``resnet.*`` (the published
    file's ~59 MB matches these 275 tensors), and ``ModelBase.load`` reads it after stripping a ``module``
    prefix. This accepts that layout plus wrapper dicts (``{"model": ...}``, ``{"state_dict": ...}``) and the
    ``module.`` / ``network.`` / ``_warped_network.`` prefixes (a saved ``Classifier`` lists each tensor under
    both of the last two; the copies must agree). BatchNorm ``num_batches_tracked`` counters are filled with 0
    where a file lacks them; any other missing or unknown key raises ``WeightsError`` naming it (shapes are
    :func:`zoo.weights.load_strict`'s job).
    """
    return filter_checkpoint(checkpoint, what="FTCN", expected=zoo_keys(), unwrap=_WRAPPER_KEYS,
                             strip=_STRIP_PREFIXES, convert=_fill_bn_counters)


def parameter_count(config: dict[str, Any] | None = None) -> int:
    """Trainable parameters of the architecture (14,765,889 for the official configuration)."""
    with torch.device("meta"):
        model = FTCN(**(config or {}))
    return sum(math.prod(p.shape) for p in model.parameters())


register(
    ModelEntry(
        name="ftcn_tt.ffpp_c23",
        task="deepfake-detection",
        builder=FTCN,
        config=DEFAULT_CONFIG,
        handler="handlers.ftcn_handler",
        inputs={
            "video": "a video file with a face; the handler detects, tracks and aligns faces and cuts "
            f"{CLIP_LEN}-frame {CLIP_SIZE}x{CLIP_SIZE} clips (model input: normalised (B, 3, {CLIP_LEN}, "
            f"{CLIP_SIZE}, {CLIP_SIZE}) clips)",
        },
        outputs=(
            TensorSpec("fake_probability", "FP32", (1,),
                       "sigmoid of the FTCN+TT logit (1 = forged), aggregated per video; NaN when no face"),
            TensorSpec("verdict", "BYTES", (1,), "fake | real | no_face"),
            TensorSpec("track_ids", "INT32", (-1,), "id per face track"),
            TensorSpec("track_scores", "FP32", (-1,), "fake probability per face track (NaN: no clip scored)"),
            TensorSpec("track_frames", "INT32", (-1, 2), "[first, last] frame number per face track"),
            TensorSpec("track_clips", "INT32", (-1,), "clips scored per face track"),
            TensorSpec("frames_analyzed", "INT32", (1,), "frames decoded"),
            TensorSpec("clips_analyzed", "INT32", (1,), "clips scored"),
        ),
        weights=WeightsSource(
            hf_repo=None,  # no Hugging Face mirror of the official weights is known
            converter="zoo.ftcn:convert_checkpoint",
            # Linked from the official README ("FTCN+TT model trained on FF++"); about 59 MB, a flat
            # I3D8x8 state dict of exactly the 275 tensors of this model (14.80 M floats).
            upstream_url="https://github.com/yinglinzheng/FTCN/releases/download/weights/ftcn_tt.pth",
            # The authors publish no hash; a third-party setup script that downloads this URL pins one. The size
            # is in no record, so only the sha256 is checked.
            upstream_sha256="3d08fc78174bbfdb3fbede317b95dcac9095202ed7113649eecf6e2ef5ee77d8",
            sha256_record="third-party record: https://github.com/wjdgolfs/Graduation-project/blob/"
                          "8ec6661bf68cf9d1a8439260cf0ab559f6198d85/scripts/setup_ftcn.py (WEIGHTS, ftcn_tt.pth)",
            description="official FTCN+TT (ftcn_tt.pth) trained on FaceForensics++ c23",
        ),
        # Checked against the official repository (yinglinzheng/FTCN @ 07f0c03): no LICENSE file, and the
        # README names no licence, so none is granted; the weights are the authors' to license.
        license="none granted (yinglinzheng/FTCN has no licence file; ask the authors before redistributing)",
        paper="https://arxiv.org/abs/2108.06693",
        serving=ServingConfig(
            batch_size=4, max_batch_delay_ms=50, response_timeout_s=600, precision="bf16",
            accuracy="bf16 autocast vs fp32: clip fake probability within 6e-4 on random clips, 1.5e-4 on real "
                     "aligned face clips (CPU, bench/ftcn.py, seeded random weights; docs/benchmarks.md)",
            gpu=GpuServing(batch_size=4, max_batch_delay_ms=50, workers=1, measured_by=GPU_NOT_MEASURED),
        ),
        default_serve=True,
        assets=("zoo.faces.weights:mar_assets",),  # MTCNN face detector travels inside the archive
        description="FTCN+TT video face-forgery detector (Zheng et al., ICCV 2021): temporal-only 3D ResNet "
        "+ temporal transformer over 32-frame aligned face clips",
    )
)
