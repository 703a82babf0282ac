"""Weights from the authors' URLs and from manual downloads: pinned sha256 and size, trust on first use, `--file`.

A stdlib HTTP server on 127.0.0.1 plays the authors' download site (its files can be changed mid-test, as a
re-uploaded release would be); `zoo pull` downloads from it for real, and `zoo build`'s resolution
(`resolve_weights`) reads what it recorded with no network. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from cli.main import main as zoo_main
from tests.support import tiny_builder, tiny_entries
from zoo import hub, list_models, upstream, weights_lock
from zoo.weights import WeightsError, resolve_weights


class Site:
    """Files served at http://127.0.0.1:PORT/<name>; `files` may be changed while it runs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                site.requests.append(self.path)
                body = site.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Site:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as running:
        yield running


@pytest.fixture
def zoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    for name in ("ZOO_WEIGHTS_LOCK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "zoo"


# --- a tiny model whose "official" checkpoint stores every key under `net.` ---------------------------------
def tiny_converter(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("net."): v for k, v in checkpoint.items()}


def official_checkpoint(seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in tiny_builder().state_dict().items()}
    return save({f"net.{k}": v for k, v in state.items()}), state


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_entry() -> Iterator:
    with tiny_entries(converter=f"{__name__}:tiny_converter") as make:
        yield make


def serve(site: Site, name: str, data: bytes) -> str:
    site.files[name] = data
    return f"{site.url}/{name}"


def stored_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "upstream").rglob("*") if p.is_file()) if (home / "upstream").exists() else []


# --- pinned sha256 and size ---------------------------------------------------------------------------------
def test_pinned_download_verifies_records_and_builds_without_network(
    site: Site, zoo_home: Path, tiny_entry, capsys: pytest.CaptureFixture[str],
) -> None:
    data, state = official_checkpoint(1)
    url = serve(site, "pinned/official.safetensors", data)
    entry = tiny_entry("up_pinned", upstream_url=url, upstream_sha256=sha(data), upstream_size=len(data),
                       sha256_record="test record")
    assert zoo_main(["pull", entry.name]) == 0
    out = capsys.readouterr().out
    assert "verified against the pin (test record)" in out and sha(data) in out
    record = json.loads(hub.record_path(entry.name).read_text())
    assert record["origin"] == "upstream" and record["url"] == url and record["sha256"] == sha(data)
    assert record["size"] == len(data) and record["verification"] == "sha256"
    assert Path(record["path"]) == zoo_home / "upstream" / entry.name / "official.safetensors"

    requests = len(site.requests)  # from here on, what `zoo build` does reads the record and the file only
    loaded, label = resolve_weights(entry)
    assert label.kind == "pretrained" and label.source == url and label.sha256 == sha(data)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert zoo_main(["pull", entry.name]) == 0  # already pulled: verified, not fetched again
    assert "already pulled" in capsys.readouterr().out and len(site.requests) == requests


def test_sha256_mismatch_names_both_hashes_and_keeps_nothing(
    site: Site, zoo_home: Path, tiny_entry, capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = official_checkpoint(2)
    wrong = "ab" * 32
    entry = tiny_entry("up_mismatch", upstream_url=serve(site, "mismatch/w.safetensors", data), upstream_sha256=wrong)
    assert zoo_main(["pull", entry.name]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and sha(data) in err and wrong in err
    assert stored_files(zoo_home) == [] and not hub.record_path(entry.name).exists()
    with pytest.raises(WeightsError):  # and the build has nothing to use
        resolve_weights(entry)


def test_size_mismatch_names_both_sizes(site: Site, zoo_home: Path, tiny_entry) -> None:
    data, _ = official_checkpoint(3)
    entry = tiny_entry("up_size", upstream_url=serve(site, "size/w.safetensors", data), upstream_sha256=sha(data),
                       upstream_size=len(data) + 1)
    with pytest.raises(upstream.SizeMismatch) as err:
        upstream.pull_weights(entry, log=lambda _m: None)
    assert f"{len(data):,} bytes" in str(err.value) and f"{len(data) + 1:,} bytes" in str(err.value)
    assert stored_files(zoo_home) == []


def test_unreachable_file_names_the_url_and_the_manual_route(site: Site, zoo_home: Path, tiny_entry) -> None:
    entry = tiny_entry("up_gone", upstream_url=f"{site.url}/gone/w.pth")
    with pytest.raises(hub.HubError, match=r"answered HTTP 404 .*zoo pull up_gone\.test --file PATH"):
        upstream.pull_weights(entry, log=lambda _m: None)


# --- trust on first use ---------------------------------------------------------------------------------------
def test_trust_on_first_use_locks_the_file_and_refuses_another(
    site: Site, zoo_home: Path, tiny_entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, state = official_checkpoint(4)
    url = serve(site, "tofu/w.safetensors", first)
    entry = tiny_entry("up_tofu", upstream_url=url)
    lock = tmp_path / "fleet.lock.json"  # what a fleet commits and shares
    assert zoo_main(["pull", entry.name, "--lock", str(lock)]) == 0
    out = capsys.readouterr().out
    assert "trust on first use" in out and sha(first) in out and str(lock) in out
    locked = json.loads(lock.read_text())["weights"][entry.name]
    assert locked["sha256"] == sha(first) and locked["size"] == len(first) and locked["source"] == url
    assert locked["how"] == "download" and re.match(r"\d{4}-\d\d-\d\dT", locked["first_seen"])

    # The authors replace the file. A second machine sharing the lock is refused, naming both hashes.
    second, _ = official_checkpoint(5)
    site.files["tofu/w.safetensors"] = second
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "machine2"))
    monkeypatch.setenv("ZOO_WEIGHTS_LOCK", str(lock))  # the environment variable works like --lock
    with pytest.raises(weights_lock.LockMismatch) as err:
        upstream.pull_weights(entry, log=lambda _m: None)
    assert sha(first) in str(err.value) and sha(second) in str(err.value)
    assert stored_files(tmp_path / "machine2") == [] and not hub.record_path(entry.name).exists()
    assert json.loads(lock.read_text())["weights"][entry.name]["sha256"] == sha(first)  # the lock stands

    # The first machine still builds from its locked file; a lock changed under it makes it refuse.
    monkeypatch.setenv("ZOO_HOME", str(zoo_home))
    loaded, label = resolve_weights(entry)
    assert label.sha256 == sha(first) and all(torch.equal(loaded[k], v) for k, v in state.items())
    weights_lock.record(entry.name, url, sha(second), len(second), "w.safetensors", "download", lock)
    with pytest.raises(weights_lock.LockMismatch):
        resolve_weights(entry)


def test_a_known_sha256_prefix_is_checked_before_trusting(
    site: Site, zoo_home: Path, tiny_entry, capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = official_checkpoint(6)
    bad = tiny_entry("up_prefix_bad", upstream_url=serve(site, "prefix/a.pth", data), upstream_sha256_prefix="0000")
    with pytest.raises(hub.ChecksumMismatch) as err:
        upstream.pull_weights(bad, log=lambda _m: None)
    assert sha(data) in str(err.value) and "0000..." in str(err.value)
    assert not weights_lock.lock_path().exists()  # a refused file is never trusted
    good = tiny_entry("up_prefix_good", upstream_url=serve(site, "prefix/b.pth", data),
                      upstream_sha256_prefix=sha(data)[:8])
    assert zoo_main(["pull", good.name]) == 0
    out = capsys.readouterr().out
    assert "trust on first use" in out and f"prefix {sha(data)[:8]} matches" in out


# --- manual downloads: --file ----------------------------------------------------------------------------------
def test_manual_download_is_verified_and_recorded_like_a_download(
    zoo_home: Path, tiny_entry, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    drive = "https://drive.google.com/file/d/tiny/view"
    entry = tiny_entry("up_manual", upstream_url=drive, manual_download=True, upstream_filename="tiny_best.pth")
    assert zoo_main(["pull", entry.name]) == 1  # never fetched by a script: the steps instead
    err = capsys.readouterr().err
    assert drive in err and "'tiny_best.pth'" in err and f"zoo pull {entry.name} --file PATH" in err
    with pytest.raises(WeightsError) as missing:  # what `zoo build` says before the file is there
        resolve_weights(entry)
    assert drive in str(missing.value) and f"zoo pull {entry.name} --file PATH" in str(missing.value)

    data, state = official_checkpoint(7)
    downloaded = tmp_path / "Downloads" / "tiny_best.pth"
    downloaded.parent.mkdir()
    torch.save({f"net.{k}": v for k, v in state.items()}, downloaded)
    data = downloaded.read_bytes()
    assert zoo_main(["pull", entry.name, "--file", str(downloaded)]) == 0
    out = capsys.readouterr().out
    assert "trust on first use" in out and sha(data) in out
    record = json.loads(hub.record_path(entry.name).read_text())
    assert record["origin"] == "file" and record["url"] == drive and record["sha256"] == sha(data)
    kept = zoo_home / "upstream" / entry.name / "tiny_best.pth"
    assert Path(record["path"]) == kept and kept.read_bytes() == data
    downloaded.unlink()  # the copy under $ZOO_HOME is what builds use
    loaded, label = resolve_weights(entry)
    assert label.source == drive and all(torch.equal(loaded[k], v) for k, v in state.items())

    other = tmp_path / "other.pth"
    torch.save({f"net.{k}": v + 1 for k, v in state.items()}, other)
    assert zoo_main(["pull", entry.name, "--file", str(other)]) == 1
    err = capsys.readouterr().err
    assert sha(data) in err and sha(other.read_bytes()) in err
    assert kept.read_bytes() == data  # the refused file replaced nothing
    assert zoo_main(["pull", entry.name, "--file", str(tmp_path / "nope.pth")]) == 1
    assert "nope.pth: no such file" in capsys.readouterr().err


def test_file_for_a_hub_pinned_entry_is_checked_against_the_hub_pin(zoo_home: Path, tiny_entry, tmp_path: Path) -> None:
    data, _ = official_checkpoint(8)
    (tmp_path / "model.safetensors").write_bytes(data)
    entry = tiny_entry("up_hub_file", hf_repo="zoo-test/none", revision="0" * 40, filename="model.safetensors",
                       sha256=sha(data))
    pulled = upstream.pull_weights(entry, file=tmp_path / "model.safetensors", log=lambda _m: None)
    assert pulled.sha256 == sha(data) and hub.find_pulled(entry).path == pulled.path
    (tmp_path / "bad.safetensors").write_bytes(data + b"x")
    with pytest.raises(hub.ChecksumMismatch, match=sha(data)):
        upstream.pull_weights(entry, file=tmp_path / "bad.safetensors", log=lambda _m: None)


# --- the registry: every entry names a pinned, verifiable source -----------------------------------------------
def test_zoo_list_shows_source_and_verification_for_every_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert zoo_main(["list", "--json", "--store", str(tmp_path)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {e.name for e in list_models()}
    for entry in list_models():
        source = rows[entry.name]["weights_source"]
        check = source["verification"]
        assert source["location"] == entry.weights.describe() and check["summary"]
        if entry.weights.random_only:
            assert source["kind"] == "none" and check["method"] == "none", entry.name
            continue
        assert source["kind"] in ("hub", "upstream") and check["method"] in ("sha256", "tofu"), entry.name
        assert check["record"], f"{entry.name}: cite where its hash comes from (or that none is published)"
        if check["method"] == "sha256":
            assert re.fullmatch(r"[0-9a-f]{64}", check["sha256"]), entry.name
        if source["kind"] == "hub":
            assert check["method"] == "sha256" and "@" in source["location"], entry.name
        assert check["fetch"] in ("hub", "http", "manual"), entry.name
    assert zoo_main(["list", "--store", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "VERIFICATION" in table and "trust on first use" in table and "pinned" in table
