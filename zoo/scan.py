"""SCAN clustering models (Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020,
https://arxiv.org/abs/2005.12320): a self-supervised backbone plus linear *cluster* heads trained without labels.

Official code: ``wvangansbeke/Unsupervised-Classification`` @ 952ec31, **CC BY-NC 4.0 (non-commercial)**.
``ClusteringModel(backbone, nclusters, nheads)`` puts ``nheads`` independent ``nn.Linear(dim, nclusters)`` heads
(``cluster_head.<i>``) on the raw pooled backbone features (no normalisation, no MLP). Two backbones are served:

* ImageNet: torchvision ResNet-50 (v1.5: stride on the 3x3 conv; ``fc`` replaced by Identity, 2048 features),
  10 heads of 1000 clusters (``configs/scan/imagenet_eval.yml``). The bottleneck is ``zoo.ckdn.Bottleneck``
  (same torchvision key names and arithmetic);
* CIFAR-10: the repository's own ResNet-18 (``models/resnet_cifar.py``: 3x3 stride-1 stem, no max-pool,
  BasicBlocks [2,2,2,2] with ``shortcut`` projections), 1 head of 10 clusters (``configs/scan/scan_cifar10.yml``).

Head selection: SCAN trains all heads and keeps the index of the one with the lowest SCAN loss; the released
file is ``{'model': state_dict, 'head': best}`` and ``eval.py`` evaluates that head. This module keeps *all*
heads (the official layout, loadable strictly) and stores the index in a ``best_head`` buffer that the converter
fills from the checkpoint, so the served head always comes from the weights file itself (the published
ImageNet index could not be read here; it is not assumed). ``forward`` returns the best head's logits, the
``image-classification`` contract of ``zoo/classify.py``; ``forward_all`` returns features and every head.

Clusters are not classes: cluster ``k`` is an arbitrary id. The paper's accuracies come from a Hungarian
matching against ground truth computed at evaluation time (``hungarian_evaluate``); the release ships no
mapping, so the entries return cluster ids only (``labels: None``).

Preprocessing (``get_val_transformations`` and the datasets): ImageNet ``Resize(256)`` (bilinear, shorter side)
+ ``CenterCrop(224)`` + ``Normalize`` with the ImageNet mean/std; CIFAR-10 ``CenterCrop(32)`` of the 32x32
image + ``Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))`` (the std SCAN's configs use).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo._registry import ModelEntry, ServingConfig, WeightsSource, register
from zoo.checkpoint import filter_checkpoint
from zoo.ckdn import resnet_stage
from zoo.classify import IMAGENET_MEAN, IMAGENET_STD, Preprocess, classifier_builder, classify_io
from zoo.contract import WeightsError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)  # SCAN's configs (not the 0.247/0.243/0.261 seen elsewhere)


# --- blocks -----------------------------------------------------------------------------------------
class CifarBasicBlock(nn.Module):
    """``models/resnet_cifar.BasicBlock``: conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) shortcut, then ReLU.
    The shortcut is an empty ``nn.Sequential`` (identity) unless the stride or width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """``models/resnet_cifar.resnet18()``: 3x3 stride-1 stem with BN and ReLU, **no max-pool**, four stages of
    two BasicBlocks (first strides 1, 2, 2, 2), global average pool -> 512 features."""

    dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(CifarBasicBlock(cin, planes, stride),
                                                     CifarBasicBlock(planes, planes)))
            cin = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Pooled features ``[B, 512]`` and the four stage outputs."""
        x = F.relu(self.bn1(self.conv1(x)))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return torch.flatten(self.avgpool(x), 1), stages

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[0]


class ResNet50Backbone(nn.Module):
    """torchvision ``resnet50()`` with ``fc = Identity`` (``models/resnet.py``): 7x7/2 stem, BN, ReLU, 3x3/2
    max-pool, Bottleneck stages [3, 4, 6, 3] (stride on the 3x3 conv), global average pool -> 2048 features.
    Key names are torchvision's (``downsample.0/1``)."""

    dim = 2048

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_stage(64, 64, 3, stride=1)
        self.layer2 = resnet_stage(256, 128, 4, stride=2)
        self.layer3 = resnet_stage(512, 256, 6, stride=2)
        self.layer4 = resnet_stage(1024, 512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Pooled features ``[B, 2048]`` and the four stage outputs."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return torch.flatten(self.avgpool(x), 1), stages

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[0]


BACKBONES: dict[str, type[nn.Module]] = {"resnet50": ResNet50Backbone, "resnet18_cifar": CifarResNet18}


# --- model ------------------------------------------------------------------------------------------
class ScanOutput(NamedTuple):
    """``forward_all``: the official ``return_all`` pass, heads stacked."""

    features: Tensor  # [B, dim] pooled backbone features
    logits: Tensor  # [B, num_heads, num_classes], every head
    stages: list[Tensor]  # the four backbone stage outputs (empty unless asked for)


class ScanClusteringModel(nn.Module):
    """``ClusteringModel``: backbone + ``num_heads`` linear cluster heads; ``best_head`` says which one is served.

    ``forward(x)`` returns the logits ``[B, num_classes]`` of head ``best_head`` (softmax of them is SCAN's
    served cluster distribution); ``forward_all(x)`` returns features and every head's logits."""

    def __init__(self, backbone: str = "resnet50", num_classes: int = 1000, num_heads: int = 10) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.backbone = BACKBONES[backbone]()
        dim = self.backbone.dim
        self.cluster_head = nn.ModuleList([nn.Linear(dim, num_classes) for _ in range(num_heads)])
        # the checkpoint's 'head' (lowest SCAN loss); zoo-layout only: set by the converter, not an official key
        self.register_buffer("best_head", torch.tensor(0, dtype=torch.long))

    @property
    def head_index(self) -> int:
        index = int(self.best_head)
        if not 0 <= index < len(self.cluster_head):
            raise ValueError(f"best_head {index} is outside the {len(self.cluster_head)} cluster heads")
        return index

    def forward_all(self, x: Tensor, with_stages: bool = False) -> ScanOutput:
        features, stages = self.backbone.forward_stages(x)
        logits = torch.stack([head(features) for head in self.cluster_head], dim=1)
        return ScanOutput(features, logits, stages if with_stages else [])

    def forward(self, x: Tensor) -> Tensor:
        return self.cluster_head[self.head_index](self.backbone(x))


# --- post-processing --------------------------------------------------------------------------------
class ClusterPrediction(NamedTuple):
    cluster: int  # an arbitrary cluster id, not a class label
    probability: float


def cluster_probabilities(logits: Tensor) -> Tensor:
    """Softmax over clusters (``F.softmax(output[head], dim=1)`` of ``get_predictions``), in float32 at least."""
    return torch.softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def top_clusters(logits: Tensor, k: int = 5) -> list[list[ClusterPrediction]]:
    """The ``k`` most probable clusters per row, best first (row 0 of the answer is SCAN's prediction, the
    official ``argmax``). The same numbers ``zoo.classify.top_k`` gives the classification handler."""
    probs = cluster_probabilities(logits)
    scores, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[ClusterPrediction(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True)]
            for row_s, row_i in zip(scores.tolist(), ids.tolist(), strict=True)]


# --- checkpoint conversion --------------------------------------------------------------------------
# Keys an official file may hold that inference does not use. None: the released files hold
# ``model.module.state_dict()`` of the ClusteringModel only (scan.py / selflabel.py). Optimiser state, epoch and
# loss of a training checkpoint sit beside 'model' and are never read.
WRAPPER_KEYS = ("model", "state_dict")
HEAD_KEYS = ("head", "best_loss_head")  # released scan_model file / scan.py training checkpoint
KEY_PREFIXES = ("module.",)  # DataParallel (training checkpoints)
BEST_HEAD_KEY = "best_head"


@functools.cache
def official_keys(backbone: str, num_classes: int, num_heads: int) -> tuple[str, ...]:
    """The official ``ClusteringModel.state_dict()`` keys (the zoo keys minus ``best_head``)."""
    with torch.device("meta"):
        keys = ScanClusteringModel(backbone, num_classes, num_heads).state_dict()
    return tuple(k for k in keys if k != BEST_HEAD_KEY)


def convert_checkpoint(checkpoint: Mapping[str, Any], backbone: str, num_classes: int, num_heads: int,
                       what: str) -> dict[str, Tensor]:
    """A SCAN checkpoint -> zoo layout (official keys plus the ``best_head`` index).

    Layouts: the released SCAN file ``{'model': state_dict, 'head': int}``; the ``scan.py`` training checkpoint
    (``model`` with ``module.`` keys, ``best_loss_head``); the self-label file (a bare state dict, served head 0
    as in ``eval.py``); a zoo-layout dict (keys plus ``best_head``). Raises ``WeightsError`` naming unknown or
    missing keys, a missing head index of a wrapped file, or an index outside the heads."""
    state: Any = checkpoint
    head: Any = None
    wrapped = False
    for key in WRAPPER_KEYS:
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping):
            state, wrapped = inner, True
            head = next((checkpoint[k] for k in HEAD_KEYS if checkpoint.get(k) is not None), None)
            break
    stored_head = None
    if isinstance(state, Mapping) and BEST_HEAD_KEY in state:  # a zoo-layout file
        state = dict(state)
        stored_head = state.pop(BEST_HEAD_KEY)
    # the one checkpoint-filter policy (zoo/checkpoint.py): tensors only, prefixes stripped, exact keys
    flat = filter_checkpoint(state, what=what, expected=official_keys(backbone, num_classes, num_heads), unwrap=(),
                             strip=KEY_PREFIXES)
    if wrapped and head is None:
        raise WeightsError(f"{what} checkpoint: the file wraps its weights under 'model' but has no head index "
                           f"({' or '.join(HEAD_KEYS)}); SCAN serves the head with the lowest loss, so it is needed")
    if head is None:
        head = stored_head if stored_head is not None else 0  # self-label files: eval.py uses head 0
    head = int(head.item() if isinstance(head, Tensor) else head)
    if not 0 <= head < num_heads:
        raise WeightsError(f"{what} checkpoint: head index {head} is outside the {num_heads} cluster heads")
    return {**flat, BEST_HEAD_KEY: torch.tensor(head, dtype=torch.long)}


def convert_imagenet(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """``convert_checkpoint`` for the ImageNet ResNet-50 with 10 heads of 1000 clusters."""
    return convert_checkpoint(checkpoint, "resnet50", 1000, 10, "SCAN ImageNet ResNet-50")


def convert_cifar10(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """``convert_checkpoint`` for the CIFAR-10 ResNet-18 with 1 head of 10 clusters (SCAN-loss or self-label)."""
    return convert_checkpoint(checkpoint, "resnet18_cifar", 10, 1, "SCAN CIFAR-10 ResNet-18")


# --- registry ---------------------------------------------------------------------------------------
LICENSE = ("NON-COMMERCIAL: CC BY-NC 4.0 (code and models for personal and research use only; a commercial "
           "licence must be obtained from the authors)")
PAPER = "https://arxiv.org/abs/2005.12320"
DRIVE = "https://drive.google.com/file/d/{}/view?usp=sharing"


def _io(size: int, clusters: int) -> dict[str, Any]:
    """Typed I/O descriptions, in the classification contract's field names (``handlers.classify_handler``)."""
    resize = "shorter side to 256 (bilinear), centre crop 224" if size == 224 else \
        "shorter side to 32 (bilinear) and centre crop 32 (the identity on CIFAR's 32x32 images)"
    return {
        "inputs": {
            "image": f"BYTES [1]: image (JPEG/PNG bytes, multipart field 'image', or base64 in JSON "
                     f"{{\"image\": ...}}); {resize}; model tensor FP32 [-1, 3, {size}, {size}]",
            "top_k": f"optional INT32 [1]: number of clusters to return (default 5, at most {clusters})",
        },
        # the classification contract's typed outputs; its "classes" here are SCAN's clusters (ids 0..N-1,
        # arbitrary: NOT class labels, so top_k_labels stay empty)
        "outputs": classify_io(f"{clusters} clusters of the best SCAN head (ids, not class labels)",
                               max_top_k=clusters)["outputs"],
    }


def _entry(name: str, backbone: str, clusters: int, heads: int, size: int, preprocess: Preprocess,
           converter: str, drive_id: str, description: str, weights_note: str) -> ModelEntry:
    return ModelEntry(
        name=name,
        task="image-classification",  # the classification contract serves it unchanged; labels = cluster ids
        builder=classifier_builder(ScanClusteringModel),
        config={
            "backbone": backbone,
            "num_classes": clusters,
            "num_heads": heads,
            "knobs": {},
            "preprocess": preprocess.as_config(),
            "labels": None,  # clusters, not classes: the release ships no cluster->class mapping
        },
        handler="handlers.classify_handler",
        **_io(size, clusters),
        weights=WeightsSource(
            hf_repo=None,  # no Hugging Face mirror by the authors is known
            converter=converter,
            upstream_url=DRIVE.format(drive_id),
            # A Google Drive page: the user downloads the file in a browser and runs `zoo pull MODEL --file`.
            # No sha256 is published; Google Drive was not reachable here.
            upstream_sha256=None,
            manual_download=True,
            sha256_record="none published: trust on first use (zoo/weights_lock.py)",
            description=weights_note,
        ),
        license=LICENSE,
        paper=PAPER,
        serving=ServingConfig(batch_size=8 if size == 224 else 32, max_batch_delay_ms=20, response_timeout_s=120),
        default_serve=False,
        description=description,
    )


IMAGENET_PREPROCESS = Preprocess(resize=256, crop=224, interpolation="bilinear", mean=IMAGENET_MEAN,
                                 std=IMAGENET_STD)
CIFAR10_PREPROCESS = Preprocess(resize=32, crop=32, interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD)

# (name, backbone, clusters, heads, input size, preprocess, converter, Google Drive id, description, weights)
RELEASES = (
    ("scan_r50.imagenet", "resnet50", 1000, 10, 224, IMAGENET_PREPROCESS, "zoo.scan:convert_imagenet",
     "1PcF8ydoWoqhxARGuW55KcNarfZyJwcza",
     "SCAN ImageNet: MoCo ResNet-50 + 10 cluster heads of 1000 clusters; serves the lowest-loss head.",
     "official SCAN ImageNet-1000 ResNet-50 ({'model', 'head'}; ACC 39.9, NMI 72.0, AMI 51.2, ARI 27.5 after "
     "Hungarian matching)"),
    ("scan_r18.cifar10", "resnet18_cifar", 10, 1, 32, CIFAR10_PREPROCESS, "zoo.scan:convert_cifar10",
     "1v6b6jJY5M4-duSqWpGFmdf9e9T3dPrx0",
     "SCAN CIFAR-10 (SCAN-loss step): SimCLR ResNet-18 (CIFAR variant) + 1 head of 10 clusters.",
     "official SCAN CIFAR-10 SCAN-loss model ({'model', 'head'}; ACC 81.6, NMI 71.5, ARI 66.5 after Hungarian "
     "matching)"),
    ("scan_r18.cifar10_selflabel", "resnet18_cifar", 10, 1, 32, CIFAR10_PREPROCESS, "zoo.scan:convert_cifar10",
     "18gITFzAbQsGS5vt8hyi5HjbeRDsVLihw",
     "SCAN CIFAR-10 after self-labelling: ResNet-18 (CIFAR variant) + 1 head of 10 clusters.",
     "official SCAN CIFAR-10 self-label model (a bare state dict, head 0; ACC 88.3, NMI 79.7, ARI 77.2 after "
     "Hungarian matching)"),
)
ENTRIES = tuple(register(_entry(*release)) for release in RELEASES)
