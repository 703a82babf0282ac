"""AutoFormer (Chen et al., ICCV 2021, https://arxiv.org/abs/2107.00651): one ViT supernet, many subnets.

AutoFormer trains a vision-transformer *supernet* whose layers share ("entangle") their weights: a subnet
with a smaller embedding, fewer heads, a narrower MLP or fewer layers uses the leading rows and columns
of the supernet's tensors. The official code (``microsoft/Cream``, folder ``AutoFormer/``,
``model/supernet_transformer.py::Vision_TransformerSuper``, MIT) switches subnets with
``set_sample_config``; here ``forward(x, subnet="base")`` slices per call, so one model object (one
archive) serves every subnet and concurrent requests never race on module state.

The architecture is the one the official test command builds (``--gp --change_qk --relative_position``):

* patch embedding: 16x16/16 conv, output channels sliced to the subnet's ``embed_dim``; a class token and
  absolute position embedding (197 tokens at 224x224) sliced the same way;
* ``layer_num`` pre-norm blocks (the rest are skipped, as the official identity layers):
  ``x + attn(LN(x))`` then ``x + fc2(gelu(fc1(LN(x))))`` with ``fc1`` width ``int(embed * mlp_ratio)``;
* attention with ``heads`` heads of 64 channels each (q/k/v width ``64 * heads``, not ``embed``; scale
  ``64 ** -0.5``). The super ``qkv`` weight interleaves q/k/v rows with stride 3: the sampled weight is
  ``W[:, :embed]`` then rows ``i::3`` of the first ``3 * 64 * heads`` for i = 0, 1, 2, while the bias is
  sliced contiguously (``b[:3 * 64 * heads]``);
* 2-D relative position embeddings on keys and values (tables of ``2 * 14 + 2 = 30`` rows, row 0 for the
  class token), clipped at distance 14 on the 14x14 patch grid;
* final LayerNorm, mean over the patch tokens (class token excluded; ``gp=True``), linear head.

GELU runs in float32 whatever the model dtype, exactly as the official ``gelu`` (``F.gelu(x.float())``).

Weights: the published checkpoints are whole supernets (``supernet-tiny/small/base.pth``). This entry
holds **supernet-B** (embed 640, depth 16, 10 heads, MLP ratio 4) and serves the published AutoFormer-B
subnet as ``base``. ``tiny`` and ``small`` use the published AutoFormer-T/-S architectures *sliced from
supernet-B*; the paper's T/S accuracies were measured on their own supernets (supernet-T/-S), so those
two settings trade accuracy for speed along supernet-B's weights, not the published T/S checkpoints.

Preprocessing (the official ``lib/datasets.build_transform`` for evaluation): resize the shorter side to
``int(256 / 224 * 224) = 256`` with bicubic interpolation, centre-crop 224, ImageNet mean/std.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Knob, Preprocess, classification_entry

HEAD_DIM = 64  # per-head width in every AutoFormer supernet (q/k/v width = 64 * heads)
NUM_PATCHES_SIDE = 14  # 224 / 16


@dataclass(frozen=True)
class SubnetConfig:
    """A sampled architecture: one embedding width, and per layer (``len(num_heads)`` layers) the head
    count and MLP ratio; the official config dict's ``embed_dim`` list repeats one value."""

    embed_dim: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.num_heads) != len(self.mlp_ratio):
            raise ValueError("num_heads and mlp_ratio must list one value per layer")

    @property
    def layer_num(self) -> int:
        return len(self.num_heads)


# The published subnets (experiments/subnet/AutoFormer-{T,S,B}.yaml) and the largest supernet-B path.
SUBNETS: dict[str, SubnetConfig] = {
    "tiny": SubnetConfig(192, (3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3),
                         (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5)),
    "small": SubnetConfig(384, (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7),
                          (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0)),
    "base": SubnetConfig(576, (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10),
                         (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5)),
    "max": SubnetConfig(640, (10,) * 16, (4.0,) * 16),
}
SERVED_SUBNETS = ("tiny", "small", "base")


# --- sliced layers --------------------------------------------------------------------------------------
def _linear(layer: nn.Linear, x: Tensor, in_dim: int, out_dim: int) -> Tensor:
    """``layer`` restricted to its first ``out_dim`` outputs and ``in_dim`` inputs (official LinearSuper)."""
    bias = None if layer.bias is None else layer.bias[:out_dim]
    return F.linear(x, layer.weight[:out_dim, :in_dim], bias)


def _layer_norm(layer: nn.LayerNorm, x: Tensor, dim: int) -> Tensor:
    return F.layer_norm(x, (dim,), layer.weight[:dim], layer.bias[:dim], layer.eps)


def _gelu(x: Tensor) -> Tensor:
    """The official activation: exact GELU evaluated in float32, cast back to the input dtype."""
    return F.gelu(x.float()).type_as(x)


@functools.lru_cache(maxsize=16)
def relative_position_index(num_tokens: int, max_distance: int,
                            device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(vertical, horizontal) table rows for every (query, key) pair of ``num_tokens`` = 1 + grid**2 tokens.

    Patch distances along each axis are clipped to ``[-max_distance, max_distance]`` and shifted to
    ``[1, 2 * max_distance + 1]``; row 0 is reserved for pairs involving the class token.
    """
    patches = num_tokens - 1
    side = int(patches ** 0.5)
    pos = torch.arange(patches, device=device)
    rows, cols = pos // side, pos % side
    dist_v = (rows[None, :] - rows[:, None]).clamp(-max_distance, max_distance) + max_distance + 1
    dist_h = (cols[None, :] - cols[:, None]).clamp(-max_distance, max_distance) + max_distance + 1
    return F.pad(dist_v, (1, 0, 1, 0)), F.pad(dist_h, (1, 0, 1, 0))


@functools.lru_cache(maxsize=16)
def relative_position_onehot(num_tokens: int, max_distance: int, device: torch.device,
                             dtype: torch.dtype) -> Tensor:
    """``[N, N, 2 * rows]``: for each (query, key) pair, a 1 at its vertical row and at ``rows`` + its
    horizontal row, so ``attn @ onehot`` sums the attention falling on each table row."""
    idx_v, idx_h = relative_position_index(num_tokens, max_distance, device)
    rows = 2 * max_distance + 2
    onehot = torch.zeros(num_tokens, num_tokens, 2 * rows, device=device, dtype=dtype)
    onehot.scatter_(2, idx_v[..., None], 1.0)
    onehot.scatter_(2, idx_h[..., None] + rows, 1.0)
    return onehot


class RelativePosition2D(nn.Module):
    """Learned 2-D relative position embeddings (vertical + horizontal tables, ``2 * max + 2`` rows).

    The official code materialises the ``[N, N, dim]`` embedding of every (query, key) pair on each forward.
    The same sums are computed here through the ``2 * max + 2`` table rows instead (``q . (t_v + t_h) =
    (q @ T_v^T)[row_v] + (q @ T_h^T)[row_h]``, and the value term as attention mass per row times the
    table), which gives the official results up to float rounding at a fraction of the memory traffic.
    """

    def __init__(self, dim: int, max_distance: int = 14) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.embeddings_table_v = nn.Parameter(torch.zeros(2 * max_distance + 2, dim))
        self.embeddings_table_h = nn.Parameter(torch.zeros(2 * max_distance + 2, dim))

    def table(self, dim: int) -> Tensor:
        """``[2 * rows, dim]``: the vertical then the horizontal table, sliced to ``dim`` columns."""
        return torch.cat((self.embeddings_table_v[:, :dim], self.embeddings_table_h[:, :dim]))

    def query_term(self, q: Tensor) -> Tensor:
        """``[B, h, N, N]``: ``q[n] . (t_v[row_v(n, m)] + t_h[row_h(n, m)])`` for queries ``q`` ``[B, h, N, d]``."""
        batch, heads, tokens, dim = q.shape
        idx_v, idx_h = relative_position_index(tokens, self.max_distance, q.device)
        rows = self.embeddings_table_v.shape[0]
        scores = q @ self.table(dim).transpose(0, 1)  # [B, h, N, 2 * rows]
        shape = (batch, heads, tokens, tokens)
        return scores.gather(3, idx_v.expand(shape)) + scores.gather(3, (idx_h + rows).expand(shape))

    def value_term(self, attn: Tensor, dim: int) -> Tensor:
        """``[B, h, N, dim]``: ``sum_m attn[n, m] (t_v[row_v(n, m)] + t_h[row_h(n, m)])``."""
        tokens = attn.shape[-1]
        onehot = relative_position_onehot(tokens, self.max_distance, attn.device, attn.dtype)
        mass = torch.einsum("bhnm,nmr->bhnr", attn, onehot)  # attention falling on each table row
        return mass @ self.table(dim)


class SuperAttention(nn.Module):
    """Multi-head self-attention whose heads, q/k/v width and input width are chosen per call."""

    def __init__(self, embed_dim: int, num_heads: int, qkv_bias: bool = True, max_relative_position: int = 14,
                 head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.rel_pos_embed_k = RelativePosition2D(embed_dim // num_heads, max_relative_position)
        self.rel_pos_embed_v = RelativePosition2D(embed_dim // num_heads, max_relative_position)

    def _qkv(self, x: Tensor, embed: int, width: int) -> Tensor:
        weight = self.qkv.weight[:, :embed]
        weight = torch.cat([weight[i:3 * width:3] for i in range(3)], dim=0)  # stride-3 interleaved rows
        bias = None if self.qkv.bias is None else self.qkv.bias[:3 * width]  # contiguous, not interleaved
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor, heads: int) -> Tensor:
        batch, tokens, embed = x.shape
        dim = self.head_dim
        scale = dim ** -0.5
        qkv = self._qkv(x, embed, heads * dim).reshape(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, N, d]
        attn = (q @ k.transpose(-2, -1)) * scale
        attn = attn + self.rel_pos_embed_k.query_term(q) * scale
        attn = attn.softmax(dim=-1)
        out = attn @ v + self.rel_pos_embed_v.value_term(attn, dim)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * dim)
        return _linear(self.proj, out, heads * dim, embed)


class SuperBlock(nn.Module):
    """Pre-norm transformer encoder layer of the supernet (official ``TransformerEncoderLayer``)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True,
                 max_relative_position: int = 14) -> None:
        super().__init__()
        hidden = int(mlp_ratio * embed_dim)
        self.attn = SuperAttention(embed_dim, num_heads, qkv_bias, max_relative_position)
        self.attn_layer_norm = nn.LayerNorm(embed_dim)
        self.ffn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, x: Tensor, heads: int, mlp_ratio: float) -> Tensor:
        embed = x.shape[-1]
        hidden = int(embed * mlp_ratio)
        x = x + self.attn(_layer_norm(self.attn_layer_norm, x, embed), heads)
        y = _gelu(_linear(self.fc1, _layer_norm(self.ffn_layer_norm, x, embed), embed, hidden))
        return x + _linear(self.fc2, y, hidden, embed)


class PatchEmbed(nn.Module):
    """16x16 patches -> tokens, output channels sliced to the subnet's embedding width."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor, embed: int) -> Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"AutoFormer takes {self.img_size}x{self.img_size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        bias = None if self.proj.bias is None else self.proj.bias[:embed]
        y = F.conv2d(x, self.proj.weight[:embed], bias, stride=self.proj.stride)
        return y.flatten(2).transpose(1, 2)


class AutoFormerSupernet(nn.Module):
    """The AutoFormer ViT supernet; ``forward(x, subnet)`` runs any subnet sliced from its weights.

    ``subnet`` is a name from ``SUBNETS`` ("tiny", "small", "base", "max") or a ``SubnetConfig``.
    Module names follow the official ``Vision_TransformerSuper`` keys.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 640, depth: int = 16,
                 num_heads: int = 10, mlp_ratio: float = 4.0, qkv_bias: bool = True, num_classes: int = 1000,
                 max_relative_position: int = 14) -> None:
        super().__init__()
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.num_classes = num_classes
        self.patch_embed_super = PatchEmbed(img_size, patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            SuperBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, max_relative_position) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation; only seen with random weights. The official truncated normal (std
        0.02, cut at +-2 absolute, i.e. 100 std) is drawn as a plain normal: the cut never applies."""
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif "norm" in name:
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, std=0.02)

    def resolve(self, subnet: str | SubnetConfig) -> SubnetConfig:
        """A subnet name or config -> a config that fits this supernet (ValueError otherwise)."""
        if isinstance(subnet, str):
            if subnet not in SUBNETS:
                raise ValueError(f"unknown AutoFormer subnet {subnet!r}; known: {', '.join(SUBNETS)}")
            subnet = SUBNETS[subnet]
        if not (0 < subnet.embed_dim <= self.embed_dim and 0 < subnet.layer_num <= self.depth
                and all(0 < h <= self.num_heads for h in subnet.num_heads)
                and all(0 < r <= self.mlp_ratio for r in subnet.mlp_ratio)):
            raise ValueError(f"subnet {subnet} does not fit the supernet (embed {self.embed_dim}, depth "
                             f"{self.depth}, heads {self.num_heads}, mlp ratio {self.mlp_ratio})")
        return subnet

    def features(self, x: Tensor, subnet: str | SubnetConfig = "base") -> Tensor:
        """The pooled features fed to the head, ``[B, embed_dim]`` (mean of the patch tokens)."""
        cfg = self.resolve(subnet)
        embed = cfg.embed_dim
        tokens = self.patch_embed_super(x, embed)
        cls = self.cls_token[..., :embed].expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed[..., :embed]
        for block, heads, ratio in zip(self.blocks, cfg.num_heads, cfg.mlp_ratio, strict=False):  # layer_num
            tokens = block(tokens, heads, ratio)
        tokens = _layer_norm(self.norm, tokens, embed)
        return tokens[:, 1:].mean(dim=1)

    def forward(self, x: Tensor, subnet: str | SubnetConfig = "base") -> Tensor:
        """Logits ``[B, num_classes]`` of ``subnet`` for a normalised ``[B, 3, 224, 224]`` batch."""
        feat = self.features(x, subnet)
        return _linear(self.head, feat, feat.shape[-1], self.num_classes)

    def sampled_params(self, subnet: str | SubnetConfig) -> int:
        """Parameters a subnet uses (the official ``get_sampled_params_numel``: 5.8M / 22.9M / 53.7M)."""
        cfg = self.resolve(subnet)
        embed = cfg.embed_dim
        patch = self.patch_embed_super.proj
        count = embed * patch.weight[0].numel() + embed  # patch embedding
        count += embed * (1 + self.pos_embed.shape[1])  # class token + position embedding
        for heads, ratio in zip(cfg.num_heads, cfg.mlp_ratio, strict=True):
            width, hidden = heads * HEAD_DIM, int(embed * ratio)
            rows = self.blocks[0].attn.rel_pos_embed_k.embeddings_table_v.shape[0]
            count += 3 * width * embed + 3 * width  # qkv
            count += embed * width + embed  # proj
            count += 2 * 2 * rows * HEAD_DIM  # relative position tables (k and v, vertical + horizontal)
            count += 2 * 2 * embed  # two LayerNorms
            count += hidden * embed + hidden + embed * hidden + embed  # fc1, fc2
        count += 2 * embed + self.num_classes * embed + self.num_classes  # final norm + head
        return count


# --- checkpoint conversion ------------------------------------------------------------------------------
SUPERNET_B = {"embed_dim": 640, "depth": 16, "num_heads": 10, "mlp_ratio": 4.0, "num_classes": 1000}


@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The supernet-B state-dict keys (identical to the official ``Vision_TransformerSuper``'s)."""
    return expected_keys(lambda: AutoFormerSupernet(**SUPERNET_B))


def convert_checkpoint(checkpoint: dict) -> dict[str, Tensor]:
    """Official ``supernet-base.pth`` (``{"model": state_dict, ...}``, possibly ``module.``-prefixed) or a flat
    state dict -> zoo layout (the same names). Raises ``WeightsError`` on any unknown or missing key."""
    return filter_checkpoint(checkpoint, what="AutoFormer supernet-B", expected=zoo_keys())


# --- registry -------------------------------------------------------------------------------------------
PREPROCESS = Preprocess(resize=256, crop=224, interpolation="bicubic")

AUTOFORMER_SUPERNET_B = register(classification_entry(
    name="autoformer_supernet_b.in1k",
    architecture=AutoFormerSupernet,
    config=SUPERNET_B,
    preprocess=PREPROCESS,
    classes="ImageNet-1k classes",  # class indices; the checkpoint carries no names
    knobs=[Knob("subnet", SERVED_SUBNETS, "base", meaning="the subnet sliced from the supernet")],
    knob_output="the subnet that answered",
    weights=WeightsSource(
        hf_repo=None,  # no Hugging Face mirror of the official weights is known
        converter="zoo.autoformer:convert_checkpoint",
        # Linked from the official README (AutoFormer-B row); Google Drive mirror:
        # https://drive.google.com/file/d/1KPjUshk0SbqkaTzlirjPHM9pu19N5w0e/view
        upstream_url="https://github.com/silent-chen/AutoFormer-model-zoo/releases/download/v1.0/supernet-base.pth",
        # No public record of its sha256 was found (GitHub shows no digest for this 2021 release asset):
        # `zoo pull` trusts the first download and locks it.
        upstream_sha256=None,
        sha256_record="none published: trust on first use (zoo/weights_lock.py)",
        description="official AutoFormer supernet-B (ImageNet-1k); AutoFormer-B top-1 82.4%",
    ),
    license="MIT",
    paper="https://arxiv.org/abs/2107.00651",
    description="AutoFormer ViT supernet-B; subnet (tiny/small/base) chosen per request by weight slicing.",
))
