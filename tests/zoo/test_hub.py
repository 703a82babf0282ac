"""Weights through a real, self-hosted Hugging Face hub: pull, pin, verify, convert, export, round trip.

The hub is olah (a Hugging Face mirror) on a free loopback port in offline mode, serving local git
repositories (`mirrors-path`); huggingface_hub talks to it through HF_ENDPOINT with the real Hub protocol.
Weights files are stored the way a Hub repo stores them: git-lfs pointer files in the tree, the objects under
`.git/lfs/objects/` (written here by hand: the pointer format is git-lfs's spec, so no `git lfs` binary is
needed). No network beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from cli.main import main as zoo_main
from cli.process import stop_process
from cli.torchserve import free_port
from tests.support import tiny_builder, tiny_entries
from zoo import hub
from zoo._registry import get_entry
from zoo.weights import WeightsError, random_state_dict, resolve_weights

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port: any network use fails


# --- a hub repo on disk -------------------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "zoo test", "GIT_AUTHOR_EMAIL": "zoo@test.invalid",
           "GIT_COMMITTER_NAME": "zoo test", "GIT_COMMITTER_EMAIL": "zoo@test.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def publish(files: dict[str, Path | bytes], mirrors: Path, repo_id: str, message: str = "upload",
            lfs_suffixes: tuple[str, ...] = (".safetensors", ".pth", ".bin")) -> str:
    """Commit `files` to the hub repo `repo_id` under `mirrors`, as an upload leaves them; returns the commit.

    Weights become git-lfs pointers with the object in .git/lfs/objects (moved there, not copied, when given
    as a path: the export folder gives its big file up).
    """
    repo = mirrors / "models" / repo_id
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / ".gitattributes").write_text("".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n"
                                                     for s in lfs_suffixes))
    for name, content in files.items():
        dest = repo / name
        if name.endswith(lfs_suffixes):
            data_path = content if isinstance(content, Path) else None
            digest = hashlib.sha256()
            if data_path is not None:
                with open(data_path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        digest.update(block)
                size = data_path.stat().st_size
            else:
                digest.update(content)
                size = len(content)
            oid = digest.hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            if data_path is not None:
                shutil.move(str(data_path), obj)
            else:
                obj.write_bytes(content)
            dest.write_text(LFS_POINTER.format(oid=oid, size=size))
        else:
            dest.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


# --- olah ---------------------------------------------------------------------------------------------------
@dataclass
class Olah:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc, 10, process_group=True)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


@contextlib.contextmanager
def running_olah(mirrors: Path, workdir: Path, ready_timeout_s: float = 60) -> Iterator[Olah]:
    """olah in offline mode on a free loopback port, serving the git repos under `mirrors`; always stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{workdir / "cache"}"\n'
        f'mirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    log = workdir / "olah.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(workdir / "logs")],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Olah(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"olah exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                urllib.request.urlopen(f"{server.url}/api/models/none/none/revision/main", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (a 4xx for the unknown repo): ready
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"olah not ready after {ready_timeout_s:.0f}s:\n{server.log_tail()}") from None
                time.sleep(0.2)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub_mirrors")


@pytest.fixture(scope="module")
def olah(mirrors: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Olah]:
    with running_olah(mirrors, tmp_path_factory.mktemp("olah")) as server:
        yield server


@pytest.fixture
def hub_env(olah: Olah, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own HF cache and zoo home, talking to olah."""
    monkeypatch.setenv("HF_ENDPOINT", olah.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# --- a tiny throwaway model (registered for one test only, never in the product registry) ------------------
def tiny_file(seed: int, tmp: Path) -> tuple[bytes, str, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in tiny_builder().state_dict().items()}
    path = tmp / f"tiny-{seed}.safetensors"
    save_file(state, str(path))
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest(), state


@pytest.fixture
def tiny_entry() -> Iterator:
    with tiny_entries() as make:
        yield make


@pytest.fixture(scope="module")
def tiny_repo(mirrors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """zoo-test/tiny: two weights files in one commit."""
    tmp = tmp_path_factory.mktemp("tiny_src")
    data1, sha1, state1 = tiny_file(1, tmp)
    data2, sha2, _ = tiny_file(2, tmp)
    commit = publish({"model.safetensors": data1, "other.safetensors": data2, "README.md": b"# tiny\n"},
                     mirrors, "zoo-test/tiny")
    return {"repo": "zoo-test/tiny", "commit": commit, "sha": sha1, "other_sha": sha2, "state": state1}


# --- pull by pinned revision, verify, offline ---------------------------------------------------------------
def test_pull_by_commit_verifies_records_and_works_offline(
    hub_env: Path, tiny_repo: dict, tiny_entry, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = tiny_entry("hub_tiny_commit", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                       filename="model.safetensors", sha256=tiny_repo["sha"])
    assert hub.find_pulled(entry) is None
    assert zoo_main(["pull", entry.name]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and tiny_repo["sha"] in out
    snapshot = hub_env / "hf" / "hub" / "models--zoo-test--tiny" / "snapshots" / tiny_repo["commit"]
    path = snapshot / "model.safetensors"
    assert path.is_file()
    record = json.loads(hub.record_path(entry.name).read_text())
    assert record["commit"] == tiny_repo["commit"] and record["sha256"] == tiny_repo["sha"]
    assert record["endpoint"] == os.environ["HF_ENDPOINT"]

    state, label = resolve_weights(entry)  # what `zoo build` does
    assert label.kind == "pretrained" and label.sha256 == tiny_repo["sha"]
    assert label.source == f"hf://zoo-test/tiny@{tiny_repo['commit'][:12]}/model.safetensors"
    assert all(torch.equal(state[k], v) for k, v in tiny_repo["state"].items())

    # Offline, with no hub reachable at all: the cache answers, nothing is hashed again (verification marker).
    monkeypatch.setenv("HF_ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "sha256_of", lambda _p: pytest.fail("re-hashed a verified file"))
    assert zoo_main(["pull", entry.name]) == 0
    assert "already in the cache" in capsys.readouterr().out
    assert hub.find_cached(entry) == path


def test_branch_pin_is_found_by_revision(hub_env: Path, tiny_repo: dict, tiny_entry) -> None:
    entry = tiny_entry("hub_tiny_branch", hf_repo=tiny_repo["repo"], revision="main",
                       filename="model.safetensors", sha256=tiny_repo["sha"])
    pulled = hub.pull(entry, log=lambda _m: None)
    assert pulled.path.parent.name == tiny_repo["commit"]  # the branch resolved to its commit
    hub.record_path(entry.name).unlink()  # no record: found through the cache's refs/main
    found = hub.find_pulled(entry)
    assert found is not None and found.path == pulled.path
    assert found.source == f"hf://zoo-test/tiny@{tiny_repo['commit'][:12]}/model.safetensors"


def upstream_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """How a made-up upstream stores the tiny model: every key under `net.`."""
    return {f"net.{k}": v for k, v in state.items()}


def tiny_converter(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("net."): v for k, v in checkpoint.items()}


def test_registry_pin_in_upstream_layout_is_converted_at_build(
    hub_env: Path, mirrors: Path, tiny_entry, tmp_path: Path,
) -> None:
    from zoo.mar import build_mar, read_archive_meta

    _, _, state = tiny_file(3, tmp_path)
    save_file(upstream_layout(state), str(tmp_path / "upstream.safetensors"))
    sha = hashlib.sha256((tmp_path / "upstream.safetensors").read_bytes()).hexdigest()
    commit = publish({"upstream.safetensors": tmp_path / "upstream.safetensors"}, mirrors, "zoo-test/upstream")
    entry = tiny_entry("hub_tiny_upstream", hf_repo="zoo-test/upstream", revision=commit,
                       filename="upstream.safetensors", sha256=sha, converter=f"{__name__}:tiny_converter")
    pulled = hub.pull(entry, log=lambda _m: None)
    assert pulled.layout == "upstream" and pulled.converter == entry.weights.converter
    mar, label = build_mar(entry, tmp_path / "store", progress=False)
    assert label.kind == "pretrained" and label.sha256 == sha
    assert read_archive_meta(mar)["weights"]["source"] == f"hf://zoo-test/upstream@{commit[:12]}/upstream.safetensors"
    with zipfile.ZipFile(mar) as zf:
        archived = load_safetensors_bytes(zf.read("weights.safetensors"))
    assert archived.keys() == state.keys() and all(torch.equal(archived[k], v) for k, v in state.items())


def test_override_pull_takes_precedence_until_a_plain_pull(hub_env: Path, tiny_repo: dict, tiny_entry) -> None:
    entry = tiny_entry("hub_tiny_precedence", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                       filename="model.safetensors", sha256=tiny_repo["sha"])
    quiet = {"log": lambda _m: None}
    assert hub.pull(entry, **quiet).sha256 == tiny_repo["sha"]
    override = hub.pull(entry, repo=tiny_repo["repo"], revision=tiny_repo["commit"], filename="other.safetensors",
                        sha256=tiny_repo["other_sha"], **quiet)
    assert hub.find_pulled(entry).path == override.path  # what `zoo build` now uses
    assert hub.pull(entry, **quiet).sha256 == tiny_repo["sha"]  # a plain pull returns to the registry pin
    assert hub.find_pulled(entry).sha256 == tiny_repo["sha"]
    with pytest.raises(hub.HubError, match="need --repo"):
        hub.pull(entry, revision="main", **quiet)
    shutil.rmtree(hub_env / "hf")  # the cache is cleaned: the record alone is not weights
    assert hub.find_pulled(entry) is None
    with pytest.raises(WeightsError, match="zoo pull hub_tiny_precedence"):
        resolve_weights(entry)
    assert resolve_weights(entry, random_weights=True)[1].is_random


def test_exported_repo_is_zoo_layout_and_only_for_its_model(
    hub_env: Path, mirrors: Path, tiny_entry, tmp_path: Path,
) -> None:
    from zoo.publish import export_model

    a = tiny_entry("hub_tiny_export_a", upstream_url="https://example.org/a.pth", converter="no.such:converter")
    b = tiny_entry("hub_tiny_export_b", upstream_url="https://example.org/b.pth")
    weights = export_model(a, tmp_path / "export", random_weights=True, seed=11)
    assert weights["kind"] == "random-seeded"
    commit = publish({n: tmp_path / "export" / n for n in ("model.safetensors", "config.json", "README.md")},
                     mirrors, "zoo-test/tiny-export")
    with pytest.raises(hub.HubError,
                       match="holds zoo weights of 'hub_tiny_export_a.test', not of 'hub_tiny_export_b.test'"):
        hub.pull(b, repo="zoo-test/tiny-export", revision=commit, log=lambda _m: None)
    pulled = hub.pull(a, repo="zoo-test/tiny-export", revision=commit, log=lambda _m: None)
    assert pulled.layout == "zoo" and pulled.converter is None and pulled.sha256 == weights["sha256"]
    state, label = resolve_weights(a)  # zoo layout: the (unimportable) converter is never called
    assert label.is_random and label.seed == 11 and label.source.startswith("hf://zoo-test/tiny-export@")
    original = random_state_dict(a, seed=11)
    assert all(torch.equal(state[k], v) for k, v in original.items())


def test_sha256_mismatch_names_both_hashes_and_removes_only_the_bad_file(
    hub_env: Path, tiny_repo: dict, tiny_entry, capsys: pytest.CaptureFixture[str],
) -> None:
    good = tiny_entry("hub_tiny_good", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                      filename="model.safetensors", sha256=tiny_repo["sha"])
    wrong = "0" * 64
    bad = tiny_entry("hub_tiny_bad", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                     filename="other.safetensors", sha256=wrong)
    assert zoo_main(["pull", good.name]) == 0
    cache = hub_env / "hf" / "hub"
    before = {p for p in cache.rglob("*") if p.is_file()}

    assert zoo_main(["pull", bad.name]) == 1
    err = capsys.readouterr().err
    assert tiny_repo["other_sha"] in err and wrong in err and "mismatch" in err
    snapshot = cache / "models--zoo-test--tiny" / "snapshots" / tiny_repo["commit"]
    assert not (snapshot / "other.safetensors").exists()
    assert not (cache / "models--zoo-test--tiny" / "blobs" / tiny_repo["other_sha"]).exists()
    after = {p for p in cache.rglob("*") if p.is_file()}
    assert before <= after  # nothing else removed
    assert hub.find_pulled(bad) is None and hub.find_pulled(good) is not None

    # A pulled file corrupted on disk later is caught at build time (the marker no longer matches).
    blob = Path(os.path.realpath(snapshot / "model.safetensors"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    with pytest.raises(hub.ChecksumMismatch) as mismatch:
        resolve_weights(good)
    assert tiny_repo["sha"] in str(mismatch.value) and mismatch.value.actual in str(mismatch.value)
    # ... and the next pull downloads it again
    assert zoo_main(["pull", good.name]) == 0
    assert hub.find_pulled(good).sha256 == tiny_repo["sha"]


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"revision": "no-such-branch"}, ["revision 'no-such-branch' not found", "branches: main"]),
        ({"revision": "f" * 40}, ["f" * 40, "branches: main"]),
        ({"filename": "nope.safetensors"}, ["nope.safetensors", "not found", "model.safetensors"]),
        ({"repo": "zoo-test/no-such-repo"}, ["repository zoo-test/no-such-repo not found", "HF_TOKEN"]),
    ],
    ids=["missing-branch", "missing-commit", "missing-file", "missing-repo"],
)
def test_missing_revision_file_or_repo_is_a_clear_error(
    hub_env: Path, tiny_repo: dict, tiny_entry, override: dict, needles: list[str],
) -> None:
    entry = tiny_entry("hub_tiny_missing", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                       filename="model.safetensors", sha256=tiny_repo["sha"])
    args = {"repo": tiny_repo["repo"], "revision": tiny_repo["commit"], **override}
    started = time.monotonic()
    with pytest.raises(hub.HubError) as err:
        hub.pull(entry, log=lambda _m: None, **args)
    assert time.monotonic() - started < 15, "no retry loops on a missing revision"
    for needle in needles:
        assert needle in str(err.value)
    assert not hub.record_path(entry.name).exists()


@contextlib.contextmanager
def gated_hub() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A loopback stand-in for a hub whose repos are all gated: answers 401 GatedRepo, records Authorization."""
    import http.server
    import threading

    seen: list[tuple[str, str]] = []

    class Gated(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(401)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to this model is restricted")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gated)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_hf_token_is_sent_and_a_gated_repo_is_explained(
    tmp_path: Path, tiny_entry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = tiny_entry("hub_tiny_gated", hf_repo="zoo-test/gated", revision="main", filename="model.safetensors",
                       sha256="1" * 64)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    monkeypatch.setenv("HF_TOKEN", "hf_zoo_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with gated_hub() as (url, seen):
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(hub.HubError, match="zoo-test/gated .* is gated: accept its terms .* set HF_TOKEN"):
            hub.pull(entry, log=lambda _m: None)
    repo_requests = [auth for path, auth in seen if "zoo-test/gated" in path]
    assert repo_requests and all(auth == "Bearer hf_zoo_test_token" for auth in repo_requests), seen


def test_offline_cache_miss_and_no_hub_source_are_clear_errors(
    hub_env: Path, tiny_repo: dict, tiny_entry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = tiny_entry("hub_tiny_offline", hf_repo=tiny_repo["repo"], revision=tiny_repo["commit"],
                       filename="model.safetensors", sha256=tiny_repo["sha"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set .* not in the HF cache"):
        hub.pull(entry, log=lambda _m: None)
    nowhere = tiny_entry("hub_tiny_nowhere", upstream_url="https://example.org/tiny.pth")
    with pytest.raises(hub.HubError, match="pins no hub file; its official weights are at https://example.org"):
        hub.pull(nowhere, log=lambda _m: None)


def test_convert_proves_the_fit_and_records_the_source(
    hub_env: Path, tiny_entry, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from safetensors import safe_open

    from zoo.publish import convert_checkpoint_file

    entry = tiny_entry("hub_tiny_convert", upstream_url="https://example.org/tiny.pth")
    state = random_state_dict(entry, seed=5)
    official = tmp_path / "official.pth"
    torch.save(state, official)
    out = tmp_path / "zoo.safetensors"
    assert zoo_main(["convert", entry.name, str(official), "-o", str(out)]) == 0
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        assert all(torch.equal(fh.get_tensor(k), v) for k, v in state.items())
    assert meta["layout"] == "zoo" and meta["model"] == entry.name
    assert meta["source_sha256"] == hashlib.sha256(official.read_bytes()).hexdigest()
    # zoo layout in, zoo layout out; `zoo build --weights` takes it as is
    loaded, label = resolve_weights(entry, weights_path=out)
    assert label.kind == "local-file" and all(torch.equal(loaded[k], v) for k, v in state.items())

    broken = dict(state)
    broken.pop("2.bias")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="1 missing: 2.bias"):
        convert_checkpoint_file(entry, tmp_path / "broken.pth", tmp_path / "x.safetensors")
    assert zoo_main(["convert", entry.name, str(tmp_path / "broken.pth"), "-o", str(tmp_path / "x.pt")]) == 1
    assert "2.bias" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.pt").exists()


# --- DETR: export -> hub -> pull -> build -> TorchServe, identical predictions ------------------------------
DETR = "detr_resnet50"
DETR_SEED = 7


def zoo_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `zoo` command in a subprocess: HF_* variables are read exactly as from a user's shell."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def photo() -> bytes:
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((160, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def detections(model: torch.nn.Module, image_bytes: bytes, top_k: int = 5) -> list[dict]:
    from PIL import Image

    from zoo.detr import postprocess, preprocess

    pixel_values, mask, sizes = preprocess([Image.open(io.BytesIO(image_bytes))])
    with torch.inference_mode():
        out = model(pixel_values, mask)
    return postprocess(out["logits"], out["boxes"], sizes, threshold=0.0, top_k=top_k)[0]


def test_detr_round_trip_export_hub_pull_build_serve(mirrors: Path, tmp_path: Path) -> None:
    entry = get_entry(DETR)
    home, hf_home = tmp_path / "zoo", tmp_path / "hf"

    # 1. Export seeded random weights as a Hub-ready folder.
    export = tmp_path / "export"
    done = zoo_cli(["export", DETR, str(export), "--random-weights", "--seed", str(DETR_SEED)],
                   {"ZOO_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "RANDOM" in done.stdout
    config = json.loads((export / "config.json").read_text())
    assert config["layout"] == "zoo" and config["name"] == entry.name and config["task"] == entry.task
    assert config["weights"]["kind"] == "random-seeded" and config["weights"]["seed"] == DETR_SEED
    assert config["weights"]["sha256"] == hub.sha256_of(export / "model.safetensors")
    card = (export / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["pipeline_tag"] == "object-detection" and front["library_name"] == "zoo-gateway"
    assert front["license"] == "apache-2.0" and "arxiv:2005.12872" in front["tags"]
    assert "WARNING: RANDOM WEIGHTS" in card and "--random-weights --seed 7" in card
    assert entry.weights.sha256 in card  # the official checkpoint and its sha256 are named
    assert "tests/zoo/test_detr.py::test_" in card  # the parity evidence

    # 2. Publish it to the hub (git + lfs layout), serve it.
    commit = publish({name: export / name for name in ("model.safetensors", "config.json", "README.md")},
                     mirrors, "zoo-test/detr-zoo")
    pull = ["pull", DETR, "--repo", "zoo-test/detr-zoo", "--revision", commit]
    with running_olah(mirrors, tmp_path / "olah") as server:
        env = {"HF_ENDPOINT": server.url, "HF_HOME": str(hf_home), "ZOO_HOME": str(home)}
        done = zoo_cli(pull, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verified" in done.stdout and "RANDOM" in done.stdout
    assert server.proc.poll() is not None  # the hub is gone from here on

    # 3. Offline: pull again from the cache, then build.
    offline = {"HF_ENDPOINT": DEAD_ENDPOINT, "HF_HOME": str(hf_home), "ZOO_HOME": str(home),
               "HF_HUB_OFFLINE": "1"}
    done = zoo_cli(pull, offline)
    assert done.returncode == 0, done.stderr
    assert "already in the cache" in done.stdout
    store = tmp_path / "store"
    done = zoo_cli(["build", DETR, "--store", str(store)], offline)
    assert done.returncode == 0, done.stderr
    assert "RANDOM" in done.stdout  # exported random weights stay labelled random
    mar = store / f"{DETR}.mar"

    # 4. The archive holds exactly the original weights: same tensors, same outputs.
    with zipfile.ZipFile(mar) as zf:
        meta = json.loads(zf.read("zoo_model.json"))
        archived = load_safetensors_bytes(zf.read("weights.safetensors"))
    assert meta["weights"]["kind"] == "random-seeded" and meta["weights"]["seed"] == DETR_SEED
    assert meta["weights"]["source"].startswith(f"hf://zoo-test/detr-zoo@{commit[:12]}/model.safetensors")
    original = random_state_dict(entry, DETR_SEED)
    assert archived.keys() == original.keys()
    assert all(torch.equal(archived[k], original[k]) for k in original)
    model = entry.build().eval()
    model.load_state_dict(original)
    image = photo()
    expected = detections(model, image)

    # 5. Served by a real TorchServe: the same answer.
    from cli.torchserve import TorchServe
    from tests.support import http_request, json_body

    with TorchServe(store, [mar.name], tmp_path / "ts") as ts:
        ts.wait_ready(timeout_s=180)
        body = json.dumps({"image": base64.b64encode(image).decode(), "threshold": 0.0, "top_k": 5}).encode()
        status, _, raw = http_request(f"{ts.inference_url}/predictions/{DETR}", body,
                                      {"Content-Type": "application/json"}, method="POST")
    assert status == 200, raw
    answer = json_body(raw)
    assert answer["model"]["weights"]["kind"] == "random-seeded"
    served = answer["detections"]
    assert [d["label_id"] for d in served] == [d["label_id"] for d in expected]
    for got, want in zip(served, expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["box"] == pytest.approx(want["box"], abs=1e-2)


# --- zoo export --to-hub: publish to your own org, then a fleet pulls only from the Hub ---------------------
@contextlib.contextmanager
def upload_front(mirrors: Path, token: str) -> Iterator[tuple[str, list[str]]]:
    """The write half of the Hub API in front of olah's mirrors (olah itself only serves, it takes no uploads).

    It answers what `huggingface_hub`'s ``create_repo`` and ``upload_folder`` send -- create, validate-yaml,
    preupload, the git-lfs batch API with basic PUT transfers, and the ndjson commit -- refusing requests
    without the token, and turns each commit into a git commit of the mirror repo (weights as git-lfs
    objects), which olah then serves like any other repo.
    """
    import http.server
    import threading

    objects: dict[str, bytes] = {}
    calls: list[str] = []

    class Front(http.server.BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: object | None = None) -> None:
            body = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {token}":
                return True
            self._body()
            self._reply(401, {"error": "Invalid credentials"})
            return False

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            calls.append(f"POST {self.path}")
            if not self._authorised():
                return
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = self._body()
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                req = json.loads(body)
                return self._reply(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path):
                files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                          "shouldIgnore": False, "oid": None} for f in json.loads(body)["files"]]
                return self._reply(200, {"files": files, "commitOid": None})
            if re.fullmatch(r"/[^/]+/[^/]+\.git/info/lfs/objects/batch", path):
                objs = [{"oid": o["oid"], "size": o["size"],
                         "actions": {"upload": {"href": f"{base}/lfs-upload/{o['oid']}"}}}
                        for o in json.loads(body)["objects"]]
                return self._reply(200, {"transfer": "basic", "objects": objs})
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/main", path):
                files: dict[str, Path | bytes] = {}
                message = "upload"
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        message = item["value"]["summary"]
                    elif item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "lfsFile":
                        files[item["value"]["path"]] = objects[item["value"]["oid"]]
                commit = publish(files, mirrors, match.group(1), message=message)
                return self._reply(200, {"commitOid": commit, "commitUrl": f"{base}/{match.group(1)}/commit/{commit}"})
            self._reply(404, {"error": f"no route {path}"})

        def do_PUT(self) -> None:  # noqa: N802 - http.server API
            calls.append(f"PUT {self.path}")
            data = self._body()
            oid = self.path.rsplit("/", 1)[-1]
            if hashlib.sha256(data).hexdigest() != oid:
                return self._reply(400, {"error": "oid mismatch"})
            objects[oid] = data
            self._reply(200)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def test_export_to_hub_publishes_and_a_fleet_pulls_it_back_verified(
    hub_env: Path, olah: Olah, mirrors: Path, tiny_entry, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from huggingface_hub import constants

    entry = tiny_entry("hub_tiny_to_hub", upstream_url="https://example.org/tiny.pth")
    # This front has no Xet storage (as many self-hosted hubs): plain git-lfs uploads, as HF_HUB_DISABLE_XET=1.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with upload_front(mirrors, token="hf_zoo_write_token") as (front, calls):
        monkeypatch.setenv("HF_ENDPOINT", front)
        assert zoo_main(["export", entry.name, "--random-weights", "--seed", "3", "--to-hub", "zoo-test-org"]) == 1
        assert "cannot create zoo-test-org/hub_tiny_to_hub" in capsys.readouterr().err  # no token: clear error
        monkeypatch.setenv("HF_TOKEN", "hf_zoo_write_token")
        assert zoo_main(["export", entry.name, "--random-weights", "--seed", "3", "--to-hub", "zoo-test-org"]) == 0
    out = capsys.readouterr().out
    commit = re.search(rf"zoo pull {entry.name} --repo zoo-test-org/{entry.name} --revision ([0-9a-f]{{40}})",
                       out).group(1)
    assert any(c.startswith("PUT /lfs-upload/") for c in calls)  # the weights went as an LFS object
    repo = mirrors / "models" / "zoo-test-org" / entry.name
    assert git(repo, "rev-parse", "HEAD") == commit
    assert git(repo, "show", "HEAD:model.safetensors").startswith("version https://git-lfs.github.com/spec/v1")

    # The fleet: only the Hub (olah serving the mirror), the pull command as printed.
    monkeypatch.setenv("HF_ENDPOINT", olah.url)
    monkeypatch.delenv("HF_TOKEN")
    assert zoo_main(["pull", entry.name, "--repo", f"zoo-test-org/{entry.name}", "--revision", commit]) == 0
    assert "verified" in capsys.readouterr().out
    state, label = resolve_weights(entry)
    assert label.is_random and label.seed == 3 and label.source.startswith(f"hf://zoo-test-org/{entry.name}@")
    assert all(torch.equal(state[k], v) for k, v in random_state_dict(entry, seed=3).items())
