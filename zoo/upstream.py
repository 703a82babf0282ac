"""Weights that are not on the Hub: the authors' own URLs, or a file the user downloaded by hand.

`zoo pull MODEL` for an entry without a Hub pin downloads ``entry.weights.upstream_url`` (http or https,
with a progress bar) into ``$ZOO_HOME/upstream/<model>/``; a URL that only a browser can open (Google
Drive) is refused with the steps to follow instead: download the file, then ``zoo pull MODEL --file PATH``,
which verifies and records it exactly like a download. Either way the file is checked before it is kept:

- size and full sha256 from a public record (``upstream_size``/``upstream_sha256``, cited in
  ``sha256_record``) when there is one: a mismatch names both values and nothing is kept;
- otherwise trust on first use: a known prefix of the hash (``upstream_sha256_prefix``) is checked, the
  observed sha256 and size are locked (``zoo/weights_lock.py``), and a different file is refused afterwards.

The pull record (``zoo/hub.py``'s ``PullRecord``, origin ``upstream`` or ``file``) is what lets `zoo build`
find the file with no network, and it is verified again there.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from zoo import hub, weights_lock
from zoo._registry import ModelEntry
from zoo.contract import UPSTREAM_LAYOUT, ZOO_LAYOUT, WeightsError, sha256_of
from zoo.paths import zoo_home

DOWNLOAD_TIMEOUT_S = 60  # per socket operation, not for the whole file
CHUNK = 1 << 20


class SizeMismatch(hub.HubError):
    """A file's size differs from the size a public record gives."""

    def __init__(self, what: str, actual: int, expected: int) -> None:
        self.actual, self.expected = actual, expected
        super().__init__(f"size mismatch for {what}: the file has {actual:,} bytes but the record says "
                         f"{expected:,} bytes; nothing was kept")


def store_dir(entry: ModelEntry) -> Path:
    return zoo_home() / "upstream" / entry.name


def stored_name(entry: ModelEntry, given: Path | None = None) -> str:
    """The file name to keep: the registry's, else the URL's last path part, else the given file's."""
    src = entry.weights
    if src.source_kind == "hub":
        return src.filename or (given.name if given else "weights")
    if src.upstream_filename:
        return src.upstream_filename
    if given is not None:
        return given.name
    name = Path(urllib.parse.urlparse(src.upstream_url or "").path).name
    return name or "weights"


def manual_steps(entry: ModelEntry) -> str:
    src = entry.weights
    what = f"the file {src.upstream_filename!r}" if src.upstream_filename else "the checkpoint"
    return (f"{entry.name}'s weights are at {src.upstream_url}, which only a browser can open: download {what} "
            f"there, then run `zoo pull {entry.name} --file PATH` to verify and record it")


def pull_weights(
    entry: ModelEntry,
    repo: str | None = None,
    revision: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    file: str | Path | None = None,
    lock: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> hub.PulledWeights:
    """`zoo pull`: a local `file`, else the Hub (an override `repo`, or the registry's Hub pin), else the URL."""
    if file is not None:
        if repo or revision or filename or sha256:
            raise hub.HubError("--file excludes --repo/--revision/--filename/--sha256")
        return take_file(entry, Path(file), lock, log)
    src = entry.weights
    if repo is not None or revision or filename or sha256 or src.source_kind == "hub":
        return hub.pull(entry, repo=repo, revision=revision, filename=filename, sha256=sha256, log=log)
    if src.source_kind == "none":
        raise hub.HubError(f"{entry.name} is a random-only test model: it has no weights to pull "
                           f"(build it with --random-weights)")
    if src.manual_download:
        raise hub.HubError(manual_steps(entry))
    return download(entry, lock, log)


def take_file(entry: ModelEntry, path: Path, lock: str | Path | None = None,
              log: Callable[[str], None] = print) -> hub.PulledWeights:
    """Verify a file the user fetched by hand against the entry's source, keep a copy and record it."""
    if entry.weights.source_kind == "none":
        raise hub.HubError(f"{entry.name} is a random-only test model: there is no source to check {path} against")
    if not path.is_file():
        raise WeightsError(f"--file {path}: no such file" +
                           (f" ({manual_steps(entry)})" if entry.weights.manual_download else ""))
    sha, size = sha256_of(path), path.stat().st_size
    dest = store_dir(entry) / stored_name(entry, path)
    verification = _verify(entry, path, sha, size, "file", lock, log)  # before anything is copied
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(path, part)
    part.replace(dest)
    log(f"{entry.name}: kept a copy of {path} at {dest}")
    return _record(entry, dest, sha, size, "file", verification, log)


def download(entry: ModelEntry, lock: str | Path | None = None,
             log: Callable[[str], None] = print) -> hub.PulledWeights:
    """Download the entry's upstream URL (once), verify it, record it."""
    src = entry.weights
    url = src.upstream_url or ""
    try:
        record = hub.read_record(entry.name)
        existing = hub.find_local_file(entry, record) if record is not None and record.is_local_file else None
    except WeightsError as exc:
        log(f"{entry.name}: the stored file fails verification ({exc}); downloading again")
        existing = None
    if existing is not None:
        log(f"{entry.name}: {url} already pulled ({existing.path}), sha256 {existing.sha256[:16]}... verified")
        return existing
    if hub.hub_offline():
        raise hub.HubError(f"HF_HUB_OFFLINE is set and {entry.name}'s weights ({url}) were never pulled here: "
                           f"pull them online first, or use `zoo pull {entry.name} --file PATH`")
    dest = store_dir(entry) / stored_name(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log(f"{entry.name}: downloading {url}")
    try:
        sha, size = _fetch(url, part, src.pinned_size, entry.name)
        verification = _verify(entry, part, sha, size, "download", lock, log)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return _record(entry, dest, sha, size, "upstream", verification, log)


def _fetch(url: str, part: Path, expected_size: int | None, model: str) -> tuple[str, int]:
    """Stream `url` into `part`, hashing as it goes; returns (sha256, size)."""
    from tqdm import tqdm

    fallback = f"download it another way and use `zoo pull {model} --file PATH`"
    request = urllib.request.Request(url, headers={"User-Agent": "zoo-gateway (zoo pull)"})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)  # noqa: S310 - http(s) by design
    except urllib.error.HTTPError as exc:
        raise hub.HubError(f"{url} answered HTTP {exc.code} ({exc.reason}): the file may have moved; "
                           f"{fallback}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise hub.HubError(f"cannot reach {url}: {reason}; {fallback}") from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            raise SizeMismatch(url, total, expected_size)
        digest, size = hashlib.sha256(), 0
        with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=part.name.removesuffix(".part"), disable=None) as bar:
            while block := response.read(CHUNK):
                out.write(block)
                digest.update(block)
                size += len(block)
                bar.update(len(block))
    if total is not None and size != total:
        raise hub.HubError(f"{url}: the download stopped after {size:,} of {total:,} bytes; run `zoo pull` again")
    return digest.hexdigest(), size


def _verify(entry: ModelEntry, path: Path, sha: str, size: int, how: str, lock: str | Path | None,
            log: Callable[[str], None]) -> str:
    """Check a fetched file against the pin, or the lock; returns the verification method."""
    src = entry.weights
    where = src.describe()
    advice = ("Nothing was kept. If the source really changed, the pin is out of date: check the new file "
              "before trusting it.")
    if src.pinned_size is not None and size != src.pinned_size:
        raise SizeMismatch(where, size, src.pinned_size)
    pinned = src.pinned_sha256
    if pinned:
        if sha != pinned.lower():
            raise hub.ChecksumMismatch(where, path, sha, pinned.lower(), [], advice)
        log(f"{entry.name}: sha256 {sha[:16]}... verified against the pin"
            + (f" ({src.sha256_record})" if src.sha256_record else ""))
        return "sha256"
    prefix = (src.upstream_sha256_prefix or "").lower() if src.source_kind == "upstream" else ""
    if prefix and not sha.startswith(prefix):
        raise hub.ChecksumMismatch(where, path, sha, f"{prefix}... (a prefix)", [], advice)
    locked = weights_lock.check(entry.name, where, sha, lock)
    lock_file = weights_lock.lock_path(lock)
    if locked is not None:
        log(f"{entry.name}: sha256 {sha[:16]}... matches the lock {lock_file} (first seen {locked.first_seen})")
        return "tofu"
    weights_lock.record(entry.name, where, sha, size, path.name.removesuffix(".part"), how, lock)
    checked = f" (its prefix {prefix} matches the file name's)" if prefix else ""
    log(f"{entry.name}: trust on first use: no public record gives this file's full sha256{checked}, so its "
        f"sha256 {sha} and size {size:,} bytes are now locked in {lock_file}; any other file will be refused. "
        f"Share that lock across a fleet (--lock / {weights_lock.LOCK_ENV}).")
    return "tofu"


def _record(entry: ModelEntry, path: Path, sha: str, size: int, origin: str, verification: str,
            log: Callable[[str], None]) -> hub.PulledWeights:
    src = entry.weights
    layout = UPSTREAM_LAYOUT if src.converter else ZOO_LAYOUT
    record = hub.PullRecord(
        model=entry.name, origin=origin, repo="", revision="", commit="", filename=path.name, sha256=sha,
        layout=layout, converter=src.converter, endpoint=src.describe() if origin == "upstream" else "local file",
        pulled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), url=src.describe(), path=str(path),
        size=size, verification=verification,
    )
    hub.write_record(record)
    log(f"{entry.name}: {path}")
    return hub.PulledWeights(path, layout, src.converter, record.describe(), sha)
