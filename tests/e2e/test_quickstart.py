"""docs/quickstart.md runs as written: every command of its ```bash blocks and every ```python block, in
order, in a scratch directory, against a real gateway + TorchServe (random weights).

Only the server URL is substituted: the doc's ``export ZOO_URL=...`` line gets the test gateway's URL (every
later command reads ``$ZOO_URL``). Set-up lines the reader runs in a shell of their own (``make serve``, the
venv activation) are not run; they must be exactly commands of the README, and the venv's ``bin`` is put on
PATH instead. ``zoo stream`` lines run in their own test, which skips while the gateway or the CLI has no
served streams.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import build_parser

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "quickstart.md"
README = REPO / "README.md"
SETUP_COMMANDS = {"make serve", ". .venv/bin/activate"}  # the reader's own shell set-up
URL_EXPORT = re.compile(r"^export ZOO_URL=(\S+)$")
COMMAND_TIMEOUT_S = 900


@dataclass
class Step:
    kind: str  # "bash" or "python"
    code: str


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def command_lines(code: str) -> list[str]:
    """Commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(re.sub(r"\s+#\s.*$", "", line))  # a trailing comment
    return lines


def quickstart_steps(url: str) -> tuple[list[Step], list[str], list[str]]:
    """(steps to run, set-up commands skipped, zoo stream commands) of the doc."""
    steps, setup, streams = [], [], []
    exported = False
    for kind, code in fenced_blocks(DOC.read_text()):
        if kind == "python":
            steps.append(Step("python", code))
        elif kind == "bash":
            for line in command_lines(code):
                if line in SETUP_COMMANDS:
                    setup.append(line)
                elif URL_EXPORT.match(line):
                    assert URL_EXPORT.match(line).group(1) == "http://127.0.0.1:8080", line  # make serve's URL
                    steps.append(Step("bash", f"export ZOO_URL={url}"))
                    exported = True
                elif line.startswith("zoo stream "):
                    streams.append(line)
                else:
                    assert exported or not line.startswith(("zoo ", "curl ")), f"{line!r} runs before ZOO_URL is set"
                    steps.append(Step("bash", line))
    return steps, setup, streams


def readme_commands() -> set[str]:
    return {line for kind, code in fenced_blocks(README.read_text()) if kind == "bash"
            for line in command_lines(code)}


def run_step(step: Step, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if step.kind == "python":
        argv = [sys.executable, "-c", step.code]
    else:
        argv = ["bash", "-c", f"set -euo pipefail\n{step.code}"]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def environment(url: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # what `. .venv/bin/activate` gives the reader
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_API_KEY", "ZOO_STREAM_URL")}
    env.update(PATH=os.pathsep.join([venv_bin, env.get("PATH", "")]), ZOO_URL=url,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


@pytest.fixture(scope="module")
def quickstart(flagship, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the doc's commands once; returns {command: completed process} and the scratch directory."""
    workdir = tmp_path_factory.mktemp("quickstart")
    steps, setup, streams = quickstart_steps(flagship.url)
    env = environment(flagship.url)
    done: dict[str, subprocess.CompletedProcess] = {}
    for step in steps:
        if step.kind == "bash" and step.code.startswith("export "):
            continue  # the variable itself is in `env`
        proc = run_step(step, workdir, env)
        assert proc.returncode == 0, f"{step.code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        done[step.code] = proc
    return {"workdir": workdir, "runs": done, "setup": setup, "streams": streams, "env": env}


def output_of(runs: dict[str, subprocess.CompletedProcess], prefix: str) -> subprocess.CompletedProcess:
    (match,) = [proc for code, proc in runs.items() if code.startswith(prefix)]
    return match


def test_setup_lines_are_the_readmes_commands(quickstart) -> None:
    assert set(quickstart["setup"]) == SETUP_COMMANDS
    assert SETUP_COMMANDS <= readme_commands(), "the quickstart's set-up must be the README's commands"


def test_quickstart_commands_run_as_written(quickstart) -> None:
    runs, workdir = quickstart["runs"], quickstart["workdir"]
    assert len(runs) >= 8, list(runs)

    models = output_of(runs, "zoo models").stdout
    assert all(name in models for name in ("detr_resnet50", "ckdn_r50", "ftcn_tt")) and "RANDOM" in models
    for name in ("astronaut.jpg", "cat.jpg", "degraded.png", "restored.png", "face.mp4"):
        assert (workdir / "samples" / name).stat().st_size > 1000

    # every --draw target exists as a PNG (one per input when several inputs were given)
    parser = build_parser()
    for code in runs:
        if not code.startswith("zoo predict ") or "--draw" not in code:
            continue
        args = parser.parse_args(shlex.split(code)[1:])
        target = Path(args.draw)
        requests = len(args.files) // (2 if args.model == "ckdn_r50" else 1)
        names = [target] if requests == 1 else [target.with_name(f"{target.stem}_{i}{target.suffix}")
                                                 for i in range(1, requests + 1)]
        for name in names:
            with Image.open(workdir / name) as img:
                assert img.format == "PNG", name

    forced = output_of(runs, "zoo predict detr_resnet50 samples/cat.jpg --threshold 0").stdout
    assert "3 detection(s)" in forced
    assert re.search(r"quality 0\.\d{4} \(higher is better\)", output_of(runs, "zoo predict ckdn_r50").stdout)
    assert '"score"' in output_of(runs, "curl ").stdout

    deepfake = output_of(runs, "zoo predict ftcn_tt").stdout
    assert re.search(r"(FAKE|REAL) \(fake probability 0\.\d+; 1 face track\(s\), 1 clip\(s\), 32 frames\)", deepfake)
    assert re.search(r"^0\s+0-31\s", deepfake, re.M), deepfake
    sheet = np.asarray(Image.open(workdir / "deepfake.png").convert("RGB"))
    red = np.all(sheet == (230, 25, 25), axis=-1).sum()
    green = np.all(sheet == (30, 190, 60), axis=-1).sum()
    assert max(red, green) > 500, (red, green)  # the face track's boxes, in the verdict's colour

    (sync_py, async_py) = [proc.stdout for code, proc in runs.items() if "ZooClient" in code]
    assert "random weights: True" in sync_py and re.search(r"^quality 0\.\d+$", sync_py, re.M)
    assert "refused: 400 'image' is not a recognised image" in sync_py
    assert "['ckdn_r50', 'detr_resnet50', 'ftcn_tt']" in async_py


def test_quickstart_stream_command(quickstart, flagship) -> None:
    streams = quickstart["streams"]
    assert streams, "the quickstart shows a stream"
    if importlib.util.find_spec("cli.commands.stream") is None:
        pytest.skip("`zoo stream` (the served-streams client) is not in this checkout yet")
    for command in streams:
        proc = run_step(Step("bash", command), quickstart["workdir"], quickstart["env"])
        if proc.returncode != 0 and "404" in proc.stderr and "/v1/streams" in proc.stderr:
            pytest.skip(f"this gateway has no served streams yet: {proc.stderr[-300:]}")
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        out = quickstart["workdir"] / shlex.split(command)[shlex.split(command).index("--out") + 1]
        assert out.stat().st_size > 1000
