"""Hugging Face Hub access for pinned weights (all hub I/O lives here), and the pull records of all weights.

`zoo pull` downloads a pinned file with ``huggingface_hub`` into the standard HF cache (``HF_HOME`` /
``HF_HUB_CACHE``) from ``HF_ENDPOINT`` (the Hub or a company mirror), with ``HF_TOKEN`` for private or gated
repos, verifies its sha256, and writes a small pull record under ``$ZOO_HOME/pulled/<model>.json``.
`zoo build` then finds the file through :func:`find_pulled` without any network (``HF_HUB_OFFLINE`` is
honoured: offline, only the cache is consulted).

Which file a model's weights come from, highest precedence first (see docs/weights.md):

1. ``zoo pull MODEL --repo ORG/NAME [--revision REV] [--filename F] [--sha256 H]`` -- an override, e.g. a
   repo made by ``zoo export``. Its ``config.json`` (``"layout": "zoo"``) says the file already is the zoo
   layout (no converter) and carries the file's sha256; ``--sha256`` beats it.
2. The registry pin, ``entry.weights`` (``hf_repo``/``revision``/``filename``/``sha256``, converted with
   ``entry.weights.converter``).

The last ``zoo pull`` of a model decides what ``zoo build`` uses: the pull record names it. A record of a
registry pull that no longer matches the registry (the pin changed) is ignored; without a usable record the
registry pin is looked up in the cache directly (files placed there by other tools count too).

Weights that are not on the Hub (the authors' URL, or a file handed to ``zoo pull --file``) are fetched by
``zoo/upstream.py`` into ``$ZOO_HOME/upstream/`` and recorded here too (origin ``upstream`` / ``file``), so
:func:`find_pulled` finds and re-verifies every pulled file the same way, against its sha256 pin or the
trust-on-first-use lock (``zoo/weights_lock.py``). ``zoo export --to-hub`` uploads through
:func:`publish_folder`.

Verification: a file is hashed once; the result is kept in ``$ZOO_HOME/hub-verified/`` keyed by the blob's
real path, size, mtime and inode, so later builds do not re-hash a 160 MB file, while any change to the
blob forces a new hash. A mismatch is an error naming both hashes; the only things removed are the bad
file's snapshot link and the blob it points to (never the rest of the cache), so the next pull downloads
it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zoo import weights_lock
from zoo._registry import ModelEntry
from zoo.contract import (
    EXPORT_CONFIG_FILE,
    EXPORT_WEIGHTS_FILE,
    RANDOM_WEIGHTS_KIND,
    UPSTREAM_LAYOUT,
    ZOO_LAYOUT,
    WeightsError,
    WeightsLabel,
    sha256_of,
)
from zoo.paths import zoo_home

logger = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://huggingface.co"
LOCAL_ORIGINS = ("upstream", "file")  # pull records of files kept under $ZOO_HOME, not in the HF cache
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(WeightsError):
    """A pull failed: unreachable hub, unknown repo / revision / file, missing token, offline cache miss."""


class ChecksumMismatch(HubError):
    """A file's sha256 differs from its pin."""

    def __init__(self, what: str, path: Path, actual: str, expected: str, removed: list[Path],
                 advice: str | None = None) -> None:
        self.path, self.actual, self.expected, self.removed = path, actual, expected, removed
        gone = ", ".join(str(p) for p in removed) if removed else "nothing"
        advice = advice or (f"Removed only the bad file ({gone}); the rest of the cache is untouched. Run "
                            f"`zoo pull` again; if it fails the same way, the repo content or the pin is wrong.")
        super().__init__(f"sha256 mismatch for {what}: the file has sha256 {actual} but {expected} is pinned. "
                         f"{advice}")


# --- environment (read at call time, so in-process callers and tests can change it) ----------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` (a mirror) or the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The HF hub cache, resolved like ``huggingface_hub`` does: HF_HUB_CACHE, else HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def is_commit_hash(revision: str | None) -> bool:
    return bool(revision and _COMMIT_RE.match(revision))


# --- what to pull -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSource:
    """One pinned file on a hub: the registry pin of a model, or an override given to `zoo pull`."""

    model: str
    repo: str
    revision: str  # as pinned: branch, tag or commit hash
    filename: str
    sha256: str | None
    converter: str | None
    origin: str  # "registry" | "override"

    def describe(self, revision: str | None = None) -> str:
        rev = revision or self.revision
        return f"hf://{self.repo}@{rev[:12] if is_commit_hash(rev) else rev}/{self.filename}"


def registry_source(entry: ModelEntry) -> HubSource | None:
    src = entry.weights
    if not (src.hf_repo and src.filename):
        return None
    return HubSource(entry.name, src.hf_repo, src.revision or "main", src.filename, src.sha256, src.converter,
                     "registry")


def override_source(
    entry: ModelEntry, repo: str, revision: str | None = None, filename: str | None = None,
    sha256: str | None = None,
) -> HubSource:
    """`--repo` given: by default the zoo-export file name; the layout is read from the repo's config.json."""
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise HubError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    return HubSource(entry.name, repo, revision or "main", filename or EXPORT_WEIGHTS_FILE,
                     sha256.lower() if sha256 else None, entry.weights.converter, "override")


# --- verification (hash once, remember it) ------------------------------------------------------------------
def _verified_dir() -> Path:
    return zoo_home() / "hub-verified"


def _marker_path(real: Path) -> Path:
    return _verified_dir() / (hashlib.sha1(str(real).encode()).hexdigest() + ".json")


def file_sha256(path: Path) -> str:
    """sha256 of a (cached) file, hashed only when the blob changed since the last hash."""
    real = Path(os.path.realpath(path))
    st = real.stat()
    stamp = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    marker = _marker_path(real)
    try:
        known = json.loads(marker.read_text())
        if {k: known.get(k) for k in stamp} == stamp and len(known.get("sha256", "")) == 64:
            return known["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_of(real)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": digest}))
        os.replace(tmp, marker)
    except OSError:  # a read-only ZOO_HOME only costs a re-hash next time
        pass
    return digest


def remove_bad_file(path: Path) -> list[Path]:
    """Remove a cached file that failed verification: its snapshot link and the blob it points to, only."""
    removed: list[Path] = []
    path = Path(path)
    blob = Path(os.path.realpath(path)) if path.is_symlink() else None
    repo_blob = None
    if path.is_symlink():
        # snapshots/<rev>/<file> -> ../../blobs/<etag> (which may itself link into a shared store: unlink
        # only the per-repo entry, never the shared store)
        link = Path(os.readlink(path))
        repo_blob = (path.parent / link) if not link.is_absolute() else link
        repo_blob = Path(os.path.normpath(repo_blob))
    for victim in (path, repo_blob):
        if victim is not None and (victim.is_symlink() or victim.exists()):
            victim.unlink()
            removed.append(victim)
    if blob is not None:
        _marker_path(blob).unlink(missing_ok=True)
    return removed


def verify_file(path: Path, expected: str | None, what: str) -> str:
    """The file's sha256; a mismatch with `expected` removes only the bad file and raises ChecksumMismatch."""
    actual = file_sha256(path)
    if expected and actual != expected.lower():
        removed = remove_bad_file(path) if _in_hub_cache(path) else []
        raise ChecksumMismatch(what, path, actual, expected.lower(), removed)
    return actual


def _in_hub_cache(path: Path) -> bool:
    try:
        Path(path).absolute().relative_to(hub_cache_dir().absolute())
        return True
    except ValueError:
        return False


# --- pull records -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PullRecord:
    """What `zoo pull` fetched for a model: written at pull, read by `zoo build` (no network)."""

    model: str
    origin: str
    repo: str
    revision: str
    commit: str
    filename: str
    sha256: str
    layout: str  # "zoo": ready to load; "upstream": goes through `converter`
    converter: str | None
    kind: str = "pretrained"  # or RANDOM_WEIGHTS_KIND for an exported random-weights repo
    seed: int | None = None
    endpoint: str = DEFAULT_ENDPOINT
    pulled_at: str = ""
    # Files outside the HF cache (origin "upstream": downloaded from `url`; "file": handed to `--file`):
    url: str = ""  # the registry source the file stands for
    path: str = ""  # where it is stored, under $ZOO_HOME/upstream/
    size: int | None = None
    verification: str = ""  # "sha256" (pinned) or "tofu" (locked on first use)

    @property
    def is_local_file(self) -> bool:
        return self.origin in LOCAL_ORIGINS

    def describe(self) -> str:
        if self.is_local_file:
            return self.url
        return f"hf://{self.repo}@{self.commit[:12]}/{self.filename}"


def record_path(model: str) -> Path:
    return zoo_home() / "pulled" / f"{model}.json"


def read_record(model: str) -> PullRecord | None:
    path = record_path(model)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return PullRecord(**{k: v for k, v in data.items() if k in PullRecord.__dataclass_fields__})
    except (OSError, ValueError, TypeError) as exc:
        raise HubError(f"unreadable pull record {path}: {exc}; run `zoo pull {model}` again") from exc


def write_record(record: PullRecord) -> Path:
    path = record_path(record.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)
    return path


# --- finding pulled weights (no network) --------------------------------------------------------------------
@dataclass(frozen=True)
class PulledWeights:
    """A verified weights file in the HF cache and how to load it."""

    path: Path
    layout: str
    converter: str | None
    source: str
    sha256: str
    kind: str = "pretrained"
    seed: int | None = None

    @property
    def label(self) -> WeightsLabel:
        if self.kind == RANDOM_WEIGHTS_KIND:
            return WeightsLabel(RANDOM_WEIGHTS_KIND, f"{self.source} (exported random weights)", self.sha256,
                                self.seed)
        return WeightsLabel("pretrained", self.source, self.sha256)


def _cache_lookup(repo: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(hub_cache_dir()), revision=revision)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    return None


def _record_matches_registry(record: PullRecord, src: HubSource | None) -> bool:
    return src is not None and (record.repo, record.revision, record.filename) == (
        src.repo, src.revision, src.filename)


def find_pulled(entry: ModelEntry) -> PulledWeights | None:
    """The verified pulled weights of `entry` (pull record first, then the registry pin), or None.

    Raises ChecksumMismatch when the file no longer matches its pin (or LockMismatch when it differs from
    the trust-on-first-use lock): a corrupt file must never be served, nor silently replaced by random weights.
    """
    src = registry_source(entry)
    try:
        record = read_record(entry.name)
    except HubError as exc:
        logger.warning("%s (ignored)", exc)
        record = None
    if record is not None and record.is_local_file:
        found = find_local_file(entry, record)
        if found is not None:
            return found
    elif record is not None and (record.origin == "override" or _record_matches_registry(record, src)):
        path = _cache_lookup(record.repo, record.filename, record.commit)
        if path is not None:
            sha = verify_file(path, record.sha256, record.describe())
            return PulledWeights(path, record.layout, record.converter if record.layout != ZOO_LAYOUT else None,
                                 record.describe(), sha, record.kind, record.seed)
        # Not an error: without the file this model simply has no pulled weights (the caller says what to do).
        logger.warning(
            "%s: `zoo pull` recorded %s but the file is not in the HF cache at %s (HF_HOME changed or the "
            "cache was cleaned); run `zoo pull %s` again", entry.name, record.describe(), hub_cache_dir(),
            entry.name,
        )
    if src is None:
        return None
    path = _cache_lookup(src.repo, src.filename, src.revision)
    if path is None:
        return None
    sha = verify_file(path, src.sha256, src.describe())
    commit = path.parent.name
    return PulledWeights(path, ZOO_LAYOUT if not src.converter else UPSTREAM_LAYOUT, src.converter,
                         src.describe(commit if is_commit_hash(commit) else None), sha)


def find_local_file(entry: ModelEntry, record: PullRecord) -> PulledWeights | None:
    """The file of a local-file `record` (downloaded from the upstream URL or taken with `--file`), verified
    again, or None when the record no longer stands for the registry's source or the file is gone."""
    pinned = entry.weights.pinned_sha256
    if record.url != entry.weights.describe() or (pinned and record.sha256 != pinned):
        logger.warning("%s: the pulled file (%s) is not the registry's source any more; run `zoo pull %s` again",
                       entry.name, record.url, entry.name)
        return None
    path = Path(record.path)
    if not path.is_file():
        logger.warning("%s: `zoo pull` recorded %s but %s is gone; run `zoo pull %s` again",
                       entry.name, record.url, path, entry.name)
        return None
    sha = verify_file(path, record.sha256, record.describe())
    if record.verification == "tofu":
        weights_lock.check(entry.name, record.url, sha)  # a fleet's shared lock may have been updated since
    return PulledWeights(path, record.layout, record.converter if record.layout != ZOO_LAYOUT else None,
                         record.describe(), sha)


def find_cached(entry: ModelEntry) -> Path | None:
    """The pinned, verified weights file if it is already in the local HF cache (no network)."""
    found = find_pulled(entry)
    return found.path if found is not None else None


# --- pulling ------------------------------------------------------------------------------------------------
def _errors() -> Any:
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.25
        from huggingface_hub import utils as errors
    return errors


def _repo_refs(api: Any, repo: str) -> Any | None:
    """The repo's branches and tags, or None when the repo cannot be seen (missing, private without token)."""
    err = _errors()
    for _attempt in range(2):  # once more on a dropped connection (servers close it after a 5xx)
        try:
            return api.list_repo_refs(repo)
        except err.HfHubHTTPError:
            return None
        except Exception:  # noqa: BLE001 - a probe
            continue
    return None


def _refs_hint(api: Any, repo: str, refs: Any | None = None) -> str:
    refs = refs if refs is not None else _repo_refs(api, repo)
    if refs is None:
        return ""
    branches = ", ".join(r.name for r in refs.branches) or "none"
    tags = ", ".join(r.name for r in refs.tags) or "none"
    return f" (branches: {branches}; tags: {tags})"


def _token_hint() -> str:
    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN may lack access to it"
    return "if it is private or gated, set HF_TOKEN to a token with access"


def _explain(exc: Exception, src: HubSource, api: Any, endpoint: str) -> HubError:
    """Turn a huggingface_hub failure into one clear sentence about what is missing and what to do."""
    err = _errors()
    where = f"{src.repo}@{src.revision}"
    at = f"at {endpoint}"
    if isinstance(exc, err.GatedRepoError):
        return HubError(f"{src.repo} {at} is gated: accept its terms on the hub and set HF_TOKEN ({exc})")
    if isinstance(exc, err.RevisionNotFoundError):
        return HubError(f"revision {src.revision!r} not found in {src.repo} {at}{_refs_hint(api, src.repo)}; "
                        f"check the pin or --revision")
    if isinstance(exc, err.EntryNotFoundError):
        if _repo_refs(api, src.repo) is None:  # some mirrors answer "entry not found" for a missing repo
            return HubError(f"repository {src.repo} not found {at} ({_token_hint()}; "
                            f"set HF_ENDPOINT for a mirror)")
        return HubError(f"file {src.filename!r} not found in {where} {at}")
    if isinstance(exc, err.RepositoryNotFoundError):
        # Some servers answer an unknown revision as an unknown repo: ask about the repo itself.
        refs = _repo_refs(api, src.repo)
        if refs is None:
            return HubError(f"repository {src.repo} not found {at} ({_token_hint()}; "
                            f"set HF_ENDPOINT for a mirror)")
        return HubError(f"revision {src.revision!r} not found in {src.repo} {at}"
                        f"{_refs_hint(api, src.repo, refs)}; check the pin or --revision")
    if isinstance(exc, err.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        hint = ""
        if is_commit_hash(src.revision):
            hint = f"; is {src.revision} a commit of {src.repo}?{_refs_hint(api, src.repo)}"
        return HubError(f"the hub {at} answered HTTP {status} for {where}{hint}: {str(exc).splitlines()[0]}")
    return HubError(
        f"cannot reach the hub {at} for {where}: {type(exc).__name__}: {exc}. Set HF_ENDPOINT for a mirror; "
        f"for weights already pulled, set HF_HUB_OFFLINE=1"
    )


def _read_zoo_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("layout") == ZOO_LAYOUT else None


def _check_zoo_config(entry: ModelEntry, cfg: dict[str, Any], src: HubSource) -> None:
    if cfg.get("name") not in (entry.name, entry.serve_name):  # exports made before `arch.tag` names
        raise HubError(
            f"{src.repo}@{src.revision} holds zoo weights of {cfg.get('name')!r}, not of {entry.name!r}")


def pull(
    entry: ModelEntry,
    repo: str | None = None,
    revision: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    log: Callable[[str], None] = print,
) -> PulledWeights:
    """Download (or find in the cache) and verify the weights of `entry`; record them for `zoo build`."""
    if repo is None and (revision or filename or sha256):
        raise HubError("--revision/--filename/--sha256 need --repo (the registry pins its own)")
    src = override_source(entry, repo, revision, filename, sha256) if repo else registry_source(entry)
    if src is None:
        up = entry.weights.upstream_url
        raise HubError(
            f"{entry.name} pins no hub file" + (f"; its official weights are at {up}" if up else "") +
            f". Download them and use `zoo convert {entry.name} CHECKPOINT` or `zoo build --weights`, or "
            f"pull a zoo export with `zoo pull {entry.name} --repo ORG/NAME`"
        )
    endpoint = hub_endpoint()
    cache_dir = hub_cache_dir()

    # 1. Already in the cache? (No network; the only option when offline.)
    zoo_cfg = None
    if src.origin == "override":
        zoo_cfg = _read_zoo_config(_cache_lookup(src.repo, EXPORT_CONFIG_FILE, src.revision))
    cached = _cache_lookup(src.repo, src.filename, src.revision)
    if cached is not None:
        expected = src.sha256 or (zoo_cfg or {}).get("weights", {}).get("sha256")
        try:
            actual = verify_file(cached, expected, src.describe())
            # Settled without the hub: a pinned sha256, or an immutable commit whose config gave it. A branch
            # without its own pin is asked again (it may have moved); offline, the cache is all there is.
            if src.sha256 or (expected and is_commit_hash(src.revision)) or hub_offline():
                log(f"{entry.name}: {src.describe()} already in the cache, sha256 {actual[:16]}... verified")
                return _finish(entry, src, cached, actual, zoo_cfg, None, log)
        except ChecksumMismatch as exc:
            if hub_offline():
                raise
            log(f"{entry.name}: cached copy is corrupt ({exc.actual[:16]}... != {exc.expected[:16]}...), "
                f"removed it; downloading again")
    if hub_offline():
        raise HubError(
            f"HF_HUB_OFFLINE is set and {src.describe()} is not in the HF cache at {cache_dir}: pull it "
            f"online first (or point HF_HOME / HF_HUB_CACHE at a cache that has it)"
        )

    # 2. Resolve the revision and check the file exists (one API call; clear errors before any download).
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(src.repo, revision=src.revision)
    except Exception as exc:  # noqa: BLE001 - mapped to a clear HubError
        raise _explain(exc, src, api, endpoint) from exc
    files = [s.rfilename for s in (info.siblings or [])]
    if files and src.filename not in files:
        raise HubError(f"file {src.filename!r} not found in {src.repo}@{src.revision} at {endpoint}; "
                       f"files there: {', '.join(files[:20])}")
    commit = info.sha or src.revision

    def download(name: str) -> Path:
        try:
            return Path(hf_hub_download(src.repo, name, revision=src.revision, cache_dir=str(cache_dir),
                                        endpoint=endpoint))
        except Exception as exc:  # noqa: BLE001 - mapped to a clear HubError
            raise _explain(exc, src, api, endpoint) from exc

    # 3. An override repo made by `zoo export` describes itself in config.json (layout, sha256, random?).
    if src.origin == "override" and EXPORT_CONFIG_FILE in files:
        zoo_cfg = _read_zoo_config(download(EXPORT_CONFIG_FILE))
        if zoo_cfg is not None:
            _check_zoo_config(entry, zoo_cfg, src)  # before downloading the weights
    log(f"{entry.name}: downloading {src.describe(commit)} from {endpoint}")
    path = download(src.filename)
    expected = src.sha256 or (zoo_cfg or {}).get("weights", {}).get("sha256")
    actual = verify_file(path, expected, src.describe(commit))
    if expected:
        log(f"{entry.name}: sha256 {actual[:16]}... verified")
    else:
        log(f"{entry.name}: WARNING no sha256 is pinned for {src.describe(commit)}; recorded {actual} "
            f"(trust on first use) -- pin it in the registry")
    return _finish(entry, src, path, actual, zoo_cfg, endpoint, log)


def _finish(entry: ModelEntry, src: HubSource, path: Path, sha: str, zoo_cfg: dict[str, Any] | None,
            endpoint: str | None, log: Callable[[str], None]) -> PulledWeights:
    """Record the verified file for `zoo build` (`endpoint` None: served from the cache)."""
    if zoo_cfg is not None:
        _check_zoo_config(entry, zoo_cfg, src)
    layout = ZOO_LAYOUT if zoo_cfg is not None or not src.converter else UPSTREAM_LAYOUT
    weights_meta = (zoo_cfg or {}).get("weights", {})
    kind = weights_meta.get("kind", "pretrained") if zoo_cfg is not None else "pretrained"
    seed = weights_meta.get("seed") if kind == RANDOM_WEIGHTS_KIND else None
    commit = path.parent.name if is_commit_hash(path.parent.name) else src.revision
    if endpoint is None:
        try:
            previous = read_record(entry.name)
        except HubError:
            previous = None
        same = previous is not None and (previous.repo, previous.commit) == (src.repo, commit)
        endpoint = previous.endpoint if same else "(found in the HF cache)"
    record = PullRecord(
        model=entry.name, origin=src.origin, repo=src.repo, revision=src.revision, commit=commit,
        filename=src.filename, sha256=sha, layout=layout,
        converter=src.converter if layout != ZOO_LAYOUT else None, kind=kind, seed=seed, endpoint=endpoint,
        pulled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_record(record)
    if kind == RANDOM_WEIGHTS_KIND:
        log(f"{entry.name}: WARNING {record.describe()} holds RANDOM weights (seed {seed}), exported for "
            f"smoke tests; builds from it stay labelled random")
    log(f"{entry.name}: {path}")
    return PulledWeights(path, layout, record.converter, record.describe(), sha, kind, seed)


# --- publishing (`zoo export --to-hub`) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    """Where an exported folder landed: pull it back with `zoo pull MODEL --repo REPO --revision COMMIT`."""

    repo: str
    commit: str
    endpoint: str
    url: str


def publish_folder(folder: Path, repo: str, private: bool = False, message: str | None = None) -> Published:
    """Upload an exported folder to `repo` on HF_ENDPOINT (created if missing) as one commit on `main`.

    Uses the Hub's own API (``create_repo`` + ``upload_folder``), so it works for huggingface.co and for any
    mirror that accepts uploads; HF_TOKEN must be allowed to write to the organisation.
    """
    from huggingface_hub import HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    where = f"{repo} at {endpoint}"
    try:
        api.create_repo(repo, private=private, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - mapped to a clear HubError
        raise HubError(f"cannot create {where}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                       "(HF_TOKEN must hold a token with write access to the organisation)") from exc
    try:
        info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                                 commit_message=message or f"zoo export of {Path(folder).name}")
    except Exception as exc:  # noqa: BLE001 - mapped to a clear HubError
        raise HubError(f"cannot upload {folder} to {where}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0]}") from exc
    return Published(repo, info.oid, endpoint, str(info.commit_url))
