"""Vendors the schemas that tests/e2e/test_deploy_manifests.py validates deploy/ against, offline.

    python deploy/schemas/vendor.py --mirror kserve/kserve=/path/to/kserve.git ...   # rewrite crds/*.json

Each CRD schema is the upstream CRD's ``openAPIV3Schema`` for one served version, read with ``git show
TAG:PATH`` from a clone of the upstream repository at a release tag, with only the ``description`` texts
removed (they are most of the bytes: KServe's InferenceService CRD is 1.9 MB of YAML). Nothing is added or
renamed; ``sources.json`` records repository, tag, commit, path and the sha256 of the upstream file, so the
result can be reproduced and checked. The compose schema (compose-spec.json) is vendored verbatim (see
sources.json) and is not touched by this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCES_FILE = HERE / "sources.json"


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def crd_schema(crd_text: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_text)
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return strip_descriptions(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", action="append", default=[], metavar="OWNER/REPO=GIT_DIR",
                        help="a local clone of an upstream repository (with its tags)")
    args = parser.parse_args(argv)
    mirrors = dict(m.split("=", 1) for m in args.mirror)
    sources = json.loads(SOURCES_FILE.read_text())
    for name, src in sources["crds"].items():
        if src["repo"] not in mirrors:
            print(f"skipped {name}: no --mirror for {src['repo']}", file=sys.stderr)
            continue
        git = ["git", "-C", mirrors[src["repo"]]]
        commit = subprocess.run([*git, "rev-parse", f"{src['tag']}^{{commit}}"], capture_output=True, text=True,
                                check=True).stdout.strip()
        if commit != src["commit"]:
            raise SystemExit(f"{src['repo']} tag {src['tag']} is {commit}, sources.json says {src['commit']}")
        text = subprocess.run([*git, "show", f"{src['tag']}:{src['path']}"], capture_output=True, check=True).stdout
        if hashlib.sha256(text).hexdigest() != src["sha256"]:
            raise SystemExit(f"{src['repo']}@{src['tag']}:{src['path']} differs from the sha256 in sources.json")
        schema = crd_schema(text.decode(), src["version"])
        (HERE / "crds" / name).write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"wrote crds/{name} from {src['repo']}@{src['tag']}:{src['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
