"""The package as users get it: sdist -> wheel -> a fresh venv, with no checkout anywhere on the path.

One test, end to end: the tracked sources are copied to a scratch folder, an sdist is built there and the
wheel is built from the *unpacked sdist* (so the sdist is proved complete too). A fresh venv (not
``--system-site-packages``) gets torch==2.13.0 (the CPU wheel this machine's pip finds locally, like
``make setup``) and then the wheel with its dependencies. From a working directory outside the repository,
with no PYTHONPATH, it runs ``zoo --version`` and ``zoo serve toy_echo toy_detect --random-weights``, answers
a REST request through the SDK, a gRPC ModelInfer through ``proto``, and a video stream through the stream
client, then stops with Ctrl-C. Every file under site-packages (path, size, mtime) is the same before and
after: nothing is generated into the install (the descriptor set ships compiled; caches go to $ZOO_HOME).

Speed: ``uv`` (a test dependency) makes the venv and installs with bytecode compiled in parallel, from its
cache after the first run; without it, plain ``python -m venv`` + pip (slower: docs/deploy.md has figures).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from cli import __version__
from cli.torchserve import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TORCH_PIN = "torch==2.13.0"  # the version the suite is tested with (Makefile, Dockerfile)
SERVE_READY_LINE = "press Ctrl-C to stop"
# setup.py copies these into the wheel (cli/deploy/prometheus); deploy/prometheus stays the source of truth
PACKAGED_DEPLOY_FILES = ["prometheus.yml", "rules/recording.yml", "rules/alerts.yml"]

CLIENT_SCRIPT = r"""
import io, json, sys
import grpc, numpy as np
from PIL import Image
import clients, proto, serving, cli
from clients import ZooClient
from proto import oip

http_url, grpc_target = sys.argv[1], sys.argv[2]
buf = io.BytesIO(); Image.new("RGB", (32, 24), (200, 100, 50)).save(buf, "PNG"); png = buf.getvalue()
client = ZooClient(http_url)
rest = client.predict("toy_echo", {"image": png})

request = oip.ModelInferRequest(model_name="toy_echo", id="wheel-grpc")
request.inputs.add(name="image", datatype="BYTES", shape=[1])
request.raw_input_contents.append(len(png).to_bytes(4, "little") + png)
with grpc.insecure_channel(grpc_target) as channel:
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=oip.ModelInferResponse.FromString)
    answer = infer(request, timeout=60)

frames = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(3)]
streamed = [r.index for r in client.stream(frames, model="toy_detect", fps=30)]
print(json.dumps({
    "modules": {m.__name__: m.__file__ for m in (clients, proto, serving, cli)},
    "rest": rest,
    "grpc": {"model": answer.model_name, "id": answer.id, "outputs": [o.name for o in answer.outputs]},
    "stream": streamed,
}))
"""


def tracked_sources(dest: Path) -> Path:
    """The files a release is made from (git's tracked and untracked-but-not-ignored files), without tests."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name.startswith("tests/") or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest


def pep517(source: Path, hook: str, out: Path, env: dict[str, str]) -> Path:
    """Run a setuptools PEP 517 build hook in `source` (no build isolation: this venv's setuptools)."""
    code = f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=source, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / proc.stdout.strip().splitlines()[-1]


def pip_find_links() -> list[str]:
    """This machine's pip find-links (PIP_FIND_LINKS, pip config): where the local CPU torch wheel lives."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            links += value.strip("'\"").split()
    return list(dict.fromkeys(links))


def uv_binary() -> str | None:
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def make_venv(venv: Path, wheel: Path, env: dict[str, str]) -> tuple[Path, str]:
    """A fresh venv with torch==2.13.0 and then the wheel; returns (its python, the installer used)."""
    links = pip_find_links()
    local_torch = [p for d in links for p in Path(d).glob("torch-2.13.0+cpu-*.whl")] if links else []
    uv = uv_binary()
    run = dict(env=env, capture_output=True, text=True, timeout=900)
    if uv and local_torch:
        python = venv / "bin" / "python"
        find_links = [arg for d in links for arg in ("--find-links", d)]
        steps = [[uv, "venv", "-q", "-p", sys.executable, str(venv)],
                 # torch from the local CPU wheel file itself: never a CUDA build from an index
                 [uv, "pip", "install", "-q", "-p", str(python), "--compile-bytecode", str(local_torch[0])],
                 [uv, "pip", "install", "-q", "-p", str(python), "--compile-bytecode", *find_links, str(wheel)]]
        installer = "uv"
    else:  # pip honours this machine's pip configuration, as `make setup` does
        python = venv / "bin" / "python"
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
                 [str(python), "-m", "pip", "install", "-q", str(wheel)]]
        installer = "pip"
    for step in steps:
        proc = subprocess.run(step, **run)
        assert proc.returncode == 0, f"{' '.join(step)}\n{proc.stdout}{proc.stderr}"
    return python, installer


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: relative path -> (size, mtime in ns)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            stat = path.lstat()
            out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return out


def wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"`zoo serve` not ready (exit {proc.poll()}):\n{log.read_text(errors='replace')[-4000:]}")


def test_wheel_in_a_fresh_venv_serves_rest_grpc_and_streams(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the release's files")
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ZOO_URL", "ZOO_API_KEY")}

    # sdist from the tracked files, then the wheel from the unpacked sdist
    source = tracked_sources(tmp_path / "src")
    sdist = pep517(source, "build_sdist", tmp_path / "dist", env)
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    root = sdist.name.removesuffix(".tar.gz")
    for needed in ("proto/grpc_predict_v2.proto", "proto/descriptors.binpb", "setup.py",
                   *(f"deploy/prometheus/{f}" for f in PACKAGED_DEPLOY_FILES)):
        assert f"{root}/{needed}" in names, f"the sdist lacks {needed}"
    wheel = pep517(tmp_path / "unpacked" / root, "build_wheel", tmp_path / "dist", env)
    with zipfile.ZipFile(wheel) as whl:
        members = set(whl.namelist())
        for name in ("grpc_predict_v2.proto", "torchserve_inference.proto", "zoo_stream.proto",
                     "descriptors.binpb", "descriptors.sha256"):
            assert f"proto/{name}" in members
            assert whl.read(f"proto/{name}") == (REPO / "proto" / name).read_bytes()
        for name in PACKAGED_DEPLOY_FILES:  # the packaged copy is deploy/'s file, byte for byte
            assert whl.read(f"cli/deploy/prometheus/{name}") == (REPO / "deploy" / "prometheus" / name).read_bytes()
        assert not [m for m in members if m.startswith("tests/")]
    built = time.monotonic()

    python, installer = make_venv(tmp_path / "venv", wheel, env)
    installed = time.monotonic()
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    assert not list(site.glob("*.pth")) or not any(str(REPO) in p.read_text() for p in site.glob("*.pth"))
    before = snapshot(site)

    work = tmp_path / "work"  # the working directory: outside the repository
    work.mkdir()
    home = tmp_path / "zoo-home"
    run_env = {**env, "ZOO_HOME": str(home), "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}"}
    zoo = str(python.parent / "zoo")
    version = subprocess.run([zoo, "--version"], cwd=work, env=run_env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"zoo-gateway {__version__}", version

    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [zoo, "serve", "toy_echo", "toy_detect", "--random-weights", "--http-port", str(http_port),
             "--grpc-port", str(grpc_port), "--torchserve-metrics-port", str(metrics_port), "--ready-timeout", "300"],
            cwd=work, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(serve, log, SERVE_READY_LINE, 400)
        served = time.monotonic()
        # -I: isolated mode (no PYTHONPATH, no user site, not even the script's folder on sys.path)
        calls = subprocess.run([str(python), "-I", "-c", CLIENT_SCRIPT, f"http://127.0.0.1:{http_port}",
                                f"127.0.0.1:{grpc_port}"], cwd=work, env=run_env, capture_output=True, text=True,
                               timeout=180)
        assert calls.returncode == 0, calls.stdout + calls.stderr
        answers = json.loads(calls.stdout.strip().splitlines()[-1])
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
        try:
            code = serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            code = serve.wait()
    assert code == 0, log.read_text(errors="replace")[-4000:]

    for module, path in answers["modules"].items():
        assert Path(path).is_relative_to(site), f"{module} imported from {path}, not from the installed wheel"
    assert (answers["rest"]["width"], answers["rest"]["height"]) == (32, 24)
    assert answers["grpc"]["model"] == "toy_echo" and answers["grpc"]["id"] == "wheel-grpc"
    assert answers["grpc"]["outputs"]
    assert answers["stream"] == [0, 1, 2]
    assert not (home / "proto").exists(), "the shipped descriptor set was recompiled at run time"

    after = snapshot(site)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"written under site-packages at run time: {changed[:20]}"
    finished = time.monotonic()
    print(f"\nwheel test ({installer}): build {built - started:.0f}s, fresh venv + install {installed - built:.0f}s, "
          f"zoo serve ready {served - installed:.0f}s, total {finished - started:.0f}s")
