"""iSQRT-COV (Li et al., CVPR 2018, https://arxiv.org/abs/1712.01034): ResNet-50 with iterative matrix square
root normalised covariance pooling ("fast MPN-COV").

Instead of global average pooling, the last feature map is summarised by its channel covariance, whose matrix
square root is approximated by a few coupled Newton-Schulz iterations (matrix products only, GPU friendly).
Official code: ``jiangtaoxie/fast-MPN-COV`` (``src/network/mpncovresnet.py``, ``src/representation/MPNCOV.py``;
MIT), ImageNet model ``mpncovresnet50`` (top-1 error 21.71% single 224 crop, as reproduced by the authors).

Network (``model_init.get_model('mpncovresnet50', MPNCOV(iterNum=5, dimension_reduction=256))``):

* ``features``: a torchvision-style ResNet-50 trunk (stride on the 3x3 conv) whose ``layer4`` keeps
  stride 1, so a 224 crop leaves a 14x14 map (M = 196 positions);
* ``representation.conv_dr_block``: 1x1 conv 2048 -> 256 (no bias), BatchNorm, ReLU;
* covariance pooling ``C = X I_hat X^T`` with ``X`` the ``[256, M]`` features and
  ``I_hat = (1/M)(I - 1/M 11^T)``, built in float32 and only then cast (as the official ``Covpool`` does, which
  makes a float64 run use float32-rounded centering weights);
* ``iter_n = 5`` Newton-Schulz steps on the trace-normalised ``A = C / tr(C)``: ``Y0 = A Z0``,
  ``Z0 = (3I - A)/2``, then ``Y_i = Y_{i-1} T_i``, ``Z_i = T_i Z_{i-1}`` with ``T_i = (3I - Z_{i-1} Y_{i-1})/2``
  for ``i < iter_n - 1`` and a last half step ``Y (3I - Z Y)/2``; post-compensation multiplies by
  ``sqrt(tr(C))``. This is the *iteration*, not an exact square root: after 5 steps ``S^2`` still differs from
  ``C`` by about 1.4% (relative Frobenius norm) on typical features, and the classifier was trained on it;
* the upper triangle of the result (diagonal included, row major: 256 * 257 / 2 = 32896 values) -> ``classifier``
  (Linear 32896 -> 1000).

Half-precision runs (bf16/fp16) keep the covariance and the iteration in float32: a covariance with entries
around 1e-3 squared through five matrix-product chains is not representable in bf16.

Preprocessing (official ``imagepreprocess.py``, ImageNet ``val_transforms``): resize the shorter side to 256
(bilinear), centre-crop 224, ImageNet mean/std.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zoo._registry import WeightsSource, register
from zoo.checkpoint import expected_keys, filter_checkpoint
from zoo.classify import Preprocess, classification_entry
from zoo.layers import Bottleneck, resnet_stage

ITER_N = 5  # official MPNCOV(iterNum=5) for ImageNet
REDUCED_DIM = 256  # official dimension_reduction


# --- the meta-layer: covariance pooling, Newton-Schulz square root, upper-triangle vectorisation -----------
def covariance_pool(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, C]`` covariance ``X I_hat X^T`` with the official float32 ``I_hat``."""
    b, c, h, w = x.shape
    m = h * w
    flat = x.reshape(b, c, m)
    # official arithmetic: float32 ones/eye, Python-float scales, cast to the run dtype afterwards
    i_hat = (-1.0 / m / m) * torch.ones(m, m, device=x.device) + (1.0 / m) * torch.eye(m, m, device=x.device)
    i_hat = i_hat.to(x.dtype).expand(b, m, m)
    return flat.bmm(i_hat).bmm(flat.transpose(1, 2))


def newton_schulz_sqrtm(cov: Tensor, iter_n: int = ITER_N) -> Tensor:
    """The iSQRT-COV approximate matrix square root of ``[B, C, C]`` SPD matrices (``iter_n`` >= 2 steps)."""
    if iter_n < 2:
        raise ValueError(f"iter_n must be at least 2, got {iter_n}")
    b, dim, _ = cov.shape
    i3 = (3.0 * torch.eye(dim, dim, device=cov.device)).to(cov.dtype).expand(b, dim, dim)
    norm = (1.0 / 3.0) * cov.mul(i3).sum(dim=1).sum(dim=1)  # the trace, computed as the official code does
    a = cov.div(norm.view(b, 1, 1))
    zy = 0.5 * (i3 - a)
    y = a.bmm(zy)
    z = zy
    for _ in range(1, iter_n - 1):
        zy = 0.5 * (i3 - z.bmm(y))
        y, z = y.bmm(zy), zy.bmm(z)
    out = 0.5 * y.bmm(i3 - z.bmm(y))
    return out * torch.sqrt(norm).view(b, 1, 1)


@functools.cache
def _triu_index(dim: int) -> Tensor:
    rows, cols = torch.triu_indices(dim, dim)  # row major, diagonal included
    return rows * dim + cols


def triu_vector(mat: Tensor) -> Tensor:
    """``[B, C, C]`` -> ``[B, C (C + 1) / 2]``: the upper triangle with the diagonal, row by row."""
    b, dim, _ = mat.shape
    return mat.reshape(b, dim * dim)[:, _triu_index(dim).to(mat.device)]


# --- network ------------------------------------------------------------------------------------------
class CovRepresentation(nn.Module):
    """The official ``MPNCOV`` representation: 1x1 reduction + covariance + Newton-Schulz + triu vector."""

    def __init__(self, input_dim: int = 2048, reduced_dim: int = REDUCED_DIM, iter_n: int = ITER_N) -> None:
        super().__init__()
        self.iter_n = iter_n
        self.conv_dr_block = nn.Sequential(nn.Conv2d(input_dim, reduced_dim, 1, bias=False),
                                           nn.BatchNorm2d(reduced_dim), nn.ReLU(inplace=True))
        self.output_dim = reduced_dim * (reduced_dim + 1) // 2

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every intermediate: ``reduced`` (input of the pooling), ``cov``, ``sqrtm``, ``vector``."""
        reduced = self.conv_dr_block(x)
        work = reduced.float() if reduced.dtype in (torch.float16, torch.bfloat16) else reduced
        cov = covariance_pool(work)
        sqrt = newton_schulz_sqrtm(cov, self.iter_n)
        return {"reduced": reduced, "cov": cov, "sqrtm": sqrt, "vector": triu_vector(sqrt).to(reduced.dtype)}

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)["vector"]


class ISqrtCovResNet(nn.Module):
    """iSQRT-COV ResNet-50; module names follow the official ``get_model`` layout
    (``features.{0,1,4..7}``, ``representation.conv_dr_block``, ``classifier``)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000,
                 reduced_dim: int = REDUCED_DIM, iter_n: int = ITER_N) -> None:
        super().__init__()
        trunk: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1)]
        inplanes = 64
        for planes, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 1), strict=True):
            trunk.append(resnet_stage(inplanes, planes, blocks, stride))  # torchvision names, stride on the 3x3
            inplanes = planes * Bottleneck.expansion
        self.features = nn.Sequential(*trunk)
        self.representation = CovRepresentation(inplanes, reduced_dim, iter_n)
        self.classifier = nn.Linear(self.representation.output_dim, num_classes)
        for m in self.modules():  # the official initialisation; only seen with random weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        """Intermediates for parity checks (``reduced``, ``cov``, ``sqrtm``, ``vector``) and ``logits``."""
        out = self.representation.stages(self.features(x))
        out["logits"] = self.classifier(out["vector"])
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for a normalised ``[B, 3, H, W]`` batch (224x224 as evaluated)."""
        return self.classifier(self.representation(self.features(x)))


# --- checkpoint conversion ------------------------------------------------------------------------------
@functools.cache
def zoo_keys() -> tuple[str, ...]:
    """The model's state-dict keys (identical to the official ``get_model('mpncovresnet50', MPNCOV...)``'s)."""
    return expected_keys(ISqrtCovResNet)


# The released ``mpncovresnet50-15991845.pth`` is an ``MPNCOVResNet`` state dict (conv1 ... layer4,
# layer_reduce, layer_reduce_bn, fc); ``Basemodel`` re-indexes its children as ``features.N``. A model
# fine-tuned from it (``--pretrained``) keeps the reduction inside ``features`` as ``features.8``/``features.9``.
_RELEASED = (
    (r"^conv1\.", "features.0."),
    (r"^bn1\.", "features.1."),
    (r"^layer([1-4])\.", lambda m: f"features.{int(m.group(1)) + 3}."),
    (r"^layer_reduce\.", "representation.conv_dr_block.0."),
    (r"^layer_reduce_bn\.", "representation.conv_dr_block.1."),
    (r"^fc\.", "classifier."),
    (r"^features\.8\.", "representation.conv_dr_block.0."),
    (r"^features\.9\.", "representation.conv_dr_block.1."),
)


def _rename(key: str) -> str:
    key = key.replace("features.module.", "features.", 1)  # main.py wraps `features` in DataParallel
    for pattern, repl in _RELEASED:
        new, hits = re.subn(pattern, repl, key)
        if hits:
            return new
    return key


def convert_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official iSQRT-COV ResNet-50 weights -> zoo layout. Accepts the released ``MPNCOVResNet`` state dict,
    a ``main.py`` training checkpoint (``{"state_dict": ..., "epoch", "arch", "optimizer", ...}`` with
    ``features.module.`` / ``module.`` prefixes), a model fine-tuned from the released one, and the zoo layout
    itself. Raises ``WeightsError`` naming every unknown or missing key."""
    return filter_checkpoint(checkpoint, what="iSQRT-COV ResNet-50", expected=zoo_keys(), unwrap=("state_dict",),
                             rename=_rename)


# --- registry -------------------------------------------------------------------------------------------
ISQRTCOV_RESNET50 = register(classification_entry(
    name="isqrtcov_resnet50.in1k",
    architecture=ISqrtCovResNet,
    config={"num_classes": 1000, "reduced_dim": REDUCED_DIM, "iter_n": ITER_N},
    preprocess=Preprocess(resize=256, crop=224, interpolation="bilinear"),
    classes="ImageNet-1k classes",  # class indices; the checkpoint carries no names
    weights=WeightsSource(
        hf_repo=None,  # no Hugging Face mirror of the official weights is known
        converter="zoo.isqrtcov:convert_checkpoint",
        # model_urls['mpncovresnet50'] of src/network/mpncovresnet.py (also on the README's Google Drive,
        # 217.3 MB). The file name carries the torch.hub-style prefix 15991845 of its sha256, a partial
        # record: `zoo pull` checks the prefix, trusts the first download and locks its full hash.
        upstream_url="http://jtxie.com/models/mpncovresnet50-15991845.pth",
        upstream_sha256=None,
        upstream_sha256_prefix="15991845",
        sha256_record="partial: the sha256 prefix 15991845 in the official file name (torch.hub convention); "
                      "the full hash is trusted on first use",
        description="official fast MPN-COV (iSQRT-COV) ResNet-50, ImageNet-1k top-1 error 21.71% (224 crop)",
    ),
    license="MIT",
    paper="https://arxiv.org/abs/1712.01034",
    description="ResNet-50 with iterative matrix-square-root covariance pooling (5 Newton-Schulz steps).",
))
