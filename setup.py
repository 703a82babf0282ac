"""Build hook (the metadata is in pyproject.toml): the wheel carries deploy/prometheus's config and rules.

`zoo serve --with-prometheus` renders deploy/prometheus/prometheus.yml and loads its rules (cli/prometheus.py).
Those files stay in deploy/, where operators look for them, and are copied into the built `cli` package at
build time, so an installed wheel has them without a checkout and there is still one source of truth.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# source (relative to the project root) -> destination inside the built packages
PACKAGED_DEPLOY_FILES = {
    "deploy/prometheus/prometheus.yml": "cli/deploy/prometheus/prometheus.yml",
    "deploy/prometheus/rules/recording.yml": "cli/deploy/prometheus/rules/recording.yml",
    "deploy/prometheus/rules/alerts.yml": "cli/deploy/prometheus/rules/alerts.yml",
}


class BuildPyWithDeployFiles(build_py):
    """build_py, then the deploy/ files the CLI reads at run time (skipped for editable installs, which read
    deploy/ in place)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source, target in PACKAGED_DEPLOY_FILES.items():
            out = Path(self.build_lib) / target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / source, out)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if self.editable_mode else [str(Path(self.build_lib) / t) for t in PACKAGED_DEPLOY_FILES.values()]
        return [*super().get_outputs(include_bytecode), *extra]


setup(cmdclass={"build_py": BuildPyWithDeployFiles})
