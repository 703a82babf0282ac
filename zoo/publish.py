"""`zoo convert` and `zoo export`: official checkpoints -> zoo-layout safetensors -> a Hub-ready folder.

No network here (hub I/O, including ``zoo export --to-hub``'s upload, lives in zoo/hub.py). An exported folder
is what ``zoo export --to-hub ORG`` (or ``huggingface-cli upload``, or a ``git push``) publishes as is, and what
``zoo pull MODEL --repo ORG/NAME`` pulls back:

- ``model.safetensors``: zoo layout (metadata ``layout: zoo``, the weights label, the source's sha256);
- ``config.json``: the entry's config plus zoo metadata (``"layout": "zoo"``, name, task, version, zoo-gateway
  version, and ``weights`` with the file's sha256, kind and source), which `zoo pull` reads to skip the
  converter and verify the file;
- ``README.md``: a model card with YAML front matter (license, tags, pipeline_tag, library_name) and the
  provenance: source checkpoint and its sha256, the conversion command, the parity test, and a loud warning
  when the weights are random.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from zoo import hub
from zoo._registry import ModelEntry
from zoo.contract import (
    EXPORT_CARD_FILE,
    EXPORT_CONFIG_FILE,
    EXPORT_WEIGHTS_FILE,
    RANDOM_WEIGHTS_KIND,
    ZOO_LAYOUT,
    WeightsError,
    WeightsLabel,
    sha256_of,
)
from zoo.weights import (
    convert_to_zoo,
    load_strict,
    random_state_dict,
    read_checkpoint,
    save_zoo_weights,
    zoo_layout_metadata,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# zoo task -> Hub pipeline_tag (https://huggingface.co/docs/hub/model-cards#specifying-a-task--pipelinetag-)
PIPELINE_TAGS = {
    "detection": "object-detection",
    "object-detection": "object-detection",
    "classification": "image-classification",
    "image-classification": "image-classification",
    "image-quality": "image-classification",  # a score per image; the Hub has no IQA task
    "image-translation": "image-to-image",
    "deepfake-detection": "video-classification",
    "video-classification": "video-classification",
}

# registry license text -> Hub license id (anything else: "other", with the text kept in license_name)
HUB_LICENSES = {
    "apache-2.0": "apache-2.0",
    "mit": "mit",
    "bsd-3-clause": "bsd-3-clause",
    "bsd-2-clause": "bsd-2-clause",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0",
    "gpl-3.0": "gpl-3.0",
}


def zoo_version() -> str:
    try:
        return importlib.metadata.version("zoo-gateway")
    except Exception:  # noqa: BLE001 - running from a source tree that is not installed
        return "0+unknown"


def load_as_zoo(entry: ModelEntry, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """A checkpoint in any layout the entry's converter knows, or already zoo layout, as zoo tensors."""
    meta = zoo_layout_metadata(path)
    checkpoint = read_checkpoint(path)
    state = dict(checkpoint) if meta is not None else convert_to_zoo(entry, checkpoint)
    return state, meta


def check_fits(entry: ModelEntry, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` strictly into a freshly built model: proof the converted weights fit the architecture."""
    with torch.random.fork_rng():
        model = entry.build()
    load_strict(model, state, what)


# --- zoo convert --------------------------------------------------------------------------------------------
def convert_checkpoint_file(entry: ModelEntry, checkpoint: str | Path, out: str | Path) -> tuple[Path, str]:
    """Official checkpoint -> zoo-layout safetensors at `out`; returns (path, source sha256)."""
    checkpoint = Path(checkpoint)
    source_sha = sha256_of(checkpoint)
    state, meta = load_as_zoo(entry, checkpoint)
    check_fits(entry, state, f"{checkpoint.name} converted for {entry.name}")
    label = WeightsLabel("converted", checkpoint.name, source_sha)
    if meta is not None and meta.get("kind") == RANDOM_WEIGHTS_KIND:
        label = WeightsLabel(RANDOM_WEIGHTS_KIND, meta.get("source", checkpoint.name), source_sha,
                             int(meta["seed"]) if str(meta.get("seed", "")).isdigit() else None)
    path = save_zoo_weights(state, out, label, {
        "model": entry.name,
        "source_sha256": source_sha,
        "converter": entry.weights.converter or "none",
        "zoo_gateway_version": zoo_version(),
    })
    return Path(path), source_sha


# --- parity evidence ----------------------------------------------------------------------------------------
_PARITY_WORDS = ("convert", "golden", "official", "parity", "matches", "upstream")


def parity_tests(entry: ModelEntry, root: Path = REPO_ROOT) -> list[str]:
    """The tests that prove the entry's converter and numerics (tests/zoo/test_<module>.py, by name)."""
    module = (entry.weights.converter or entry.builder.__module__ or "").split(":")[0].rsplit(".", 1)[-1]
    test_file = root / "tests" / "zoo" / f"test_{module}.py"
    if not module or not test_file.is_file():
        return []
    try:
        tree = ast.parse(test_file.read_text())
    except (OSError, SyntaxError):
        return []
    rel = test_file.relative_to(root).as_posix()
    return [
        f"{rel}::{node.name}" for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        and any(word in node.name for word in _PARITY_WORDS)
    ]


# --- zoo export ---------------------------------------------------------------------------------------------
def _hub_license(text: str) -> dict[str, str]:
    key = text.strip().lower()
    if key in HUB_LICENSES:
        return {"license": HUB_LICENSES[key]}
    slug = re.sub(r"[^a-z0-9]+", "-", key).strip("-") or "unknown"
    return {"license": "other", "license_name": slug}


def _arxiv_id(url: str) -> str | None:
    m = re.search(r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})", url)
    return m.group(1) if m else None


def export_config(entry: ModelEntry, weights: dict[str, Any]) -> dict[str, Any]:
    return {
        "layout": ZOO_LAYOUT,
        "library_name": "zoo-gateway",
        "zoo_gateway_version": zoo_version(),
        "name": entry.name,
        "task": entry.task,
        "version": entry.version,
        "config": entry.config,
        "inputs": entry.inputs,
        "outputs": [spec.as_dict() for spec in entry.outputs],
        "license": entry.license,
        "paper": entry.paper,
        "weights": weights,
        "upstream_weights": asdict(entry.weights),
    }


def model_card(entry: ModelEntry, weights: dict[str, Any], tests: list[str], how: list[str]) -> str:
    """README.md with Hub front matter and the provenance a reviewer needs."""
    is_random = weights.get("kind") == RANDOM_WEIGHTS_KIND
    arxiv = _arxiv_id(entry.paper)
    tags = ["zoo-gateway", "pytorch", "safetensors", entry.task] + ([f"arxiv:{arxiv}"] if arxiv else [])
    if is_random:
        tags.append("random-weights")
    front: dict[str, Any] = {**_hub_license(entry.license), "library_name": "zoo-gateway", "tags": tags}
    if entry.task in PIPELINE_TAGS:
        front["pipeline_tag"] = PIPELINE_TAGS[entry.task]
    src = entry.weights
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {entry.name}", ""]
    if is_random:
        lines += [
            f"> **WARNING: RANDOM WEIGHTS.** `model.safetensors` holds seeded random parameters (seed "
            f"{weights.get('seed')}), not trained ones. Its predictions are meaningless: it exists to "
            f"smoke-test publishing, pulling and serving. Do not use it for anything else.", "",
        ]
    about = src.description or entry.description or f"{entry.task} model"
    lines += [
        f"Task: {entry.task}. Architecture of: {about}" + (" (this repo does not hold those weights)."
                                                          if is_random else "."), "",
        f"- Paper: {entry.paper}",
        f"- License: {entry.license}",
        f"- Library: zoo-gateway {zoo_version()}. Use: `zoo pull {entry.name} --repo <this repo> --revision "
        f"<commit>`, then `zoo build {entry.name}` or `zoo serve {entry.name}`.",
        "",
        "## Weights",
        "",
        f"- File: `{EXPORT_WEIGHTS_FILE}` (zoo layout, sha256 `{weights['sha256']}`)",
        f"- Kind: {weights.get('kind')}",
        f"- Source: {weights.get('source')}" + (f" (sha256 `{weights['source_sha256']}`)"
                                                 if weights.get("source_sha256") else ""),
    ]
    official = src.describe() if src.hf_repo else None
    if official:
        pin = f" (sha256 `{src.sha256}`)" if src.sha256 else ""
        lines.append(f"- Official checkpoint on the Hub: {official}{pin}")
    if src.upstream_url and not src.random_only:
        lines.append(f"- Originally published at: {src.upstream_url}")
    if not src.random_only:
        record = f" (record: {src.sha256_record})" if src.sha256_record else ""
        lines.append(f"- The registry's source ({src.describe()}) is verified by: {src.verification_summary()}"
                     f"{record}")
    lines += [
        "",
        "## How it was made",
        "",
        "```bash",
        *how,
        "```",
        "",
        "## Parity evidence",
        "",
    ]
    if tests:
        lines.append("The converter and the numerics are checked against the official implementation by:")
        lines += ["", *[f"- `{t}`" for t in tests]]
    else:
        lines.append("No parity test was found for this model's converter: treat its outputs as unverified.")
    if is_random:
        lines += ["", "These tests prove the architecture and the converter, not these random weights."]
    return "\n".join(lines) + "\n"


def export_model(
    entry: ModelEntry,
    out_dir: str | Path,
    weights_path: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write model.safetensors + config.json + README.md to `out_dir`; returns the weights description.

    Weights: `weights_path` (any layout the converter knows, or zoo layout), else `random_weights` (seeded,
    labelled random everywhere), else the pulled weights (`zoo pull`).
    """
    if weights_path is not None and random_weights:
        raise WeightsError("--weights and --random-weights exclude each other")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if weights_path is not None:
        state, meta = load_as_zoo(entry, weights_path)
        source_sha = (meta or {}).get("source_sha256") or sha256_of(weights_path)
        if meta is not None and meta.get("kind") == RANDOM_WEIGHTS_KIND:
            label = WeightsLabel(RANDOM_WEIGHTS_KIND, meta.get("source", Path(weights_path).name), None,
                                 int(meta["seed"]) if str(meta.get("seed", "")).isdigit() else None)
        else:
            label = WeightsLabel("pretrained" if meta is None else meta.get("kind", "pretrained"),
                                 (meta or {}).get("source") or Path(weights_path).name, source_sha)
        extra["source_sha256"] = source_sha
        converter = f"   # converter {entry.weights.converter}" if entry.weights.converter else ""
        how = ([] if meta is not None else [f"zoo convert {entry.name} {Path(weights_path).name} -o "
                                             f"{entry.name}.safetensors{converter}"])
        how.append(f"zoo export {entry.name} <dir> --weights "
                   f"{Path(weights_path).name if meta is not None else entry.name + '.safetensors'}")
    elif random_weights:
        state = random_state_dict(entry, seed)  # built by entry.build(): fits by construction
        label = WeightsLabel(RANDOM_WEIGHTS_KIND, "torch.manual_seed", None, seed)
        how = [f"zoo export {entry.name} <dir> --random-weights --seed {seed}"]
    else:
        pulled = hub.find_pulled(entry)
        if pulled is None:
            raise WeightsError(
                f"no pulled weights for {entry.name}: run `zoo pull {entry.name}`, or pass --weights PATH "
                f"(an official checkpoint) or --random-weights"
            )
        checkpoint = read_checkpoint(pulled.path)
        state = dict(checkpoint) if pulled.layout == ZOO_LAYOUT else convert_to_zoo(entry, checkpoint)
        label = pulled.label
        extra["source_sha256"] = pulled.sha256
        how = [f"zoo pull {entry.name}   # {pulled.source}", f"zoo export {entry.name} <dir>"]
    if label.kind != RANDOM_WEIGHTS_KIND or weights_path is not None:
        check_fits(entry, state, f"weights exported for {entry.name}")
    weights_file = out / EXPORT_WEIGHTS_FILE
    save_zoo_weights(state, weights_file, label, {
        "model": entry.name, "zoo_gateway_version": zoo_version(), **extra,
    })
    weights = {
        "filename": EXPORT_WEIGHTS_FILE,
        "sha256": sha256_of(weights_file),
        "kind": label.kind,
        "source": label.source,
        **({"seed": label.seed} if label.seed is not None else {}),
        **extra,
    }
    config = json.dumps(export_config(entry, weights), indent=2, default=str)
    (out / EXPORT_CONFIG_FILE).write_text(config + "\n")
    (out / EXPORT_CARD_FILE).write_text(model_card(entry, weights, parity_tests(entry), how))
    return weights
