"""The trust-on-first-use lock: the sha256 and size first seen for weights no public record pins.

Some official checkpoints have no published hash. The first `zoo pull` of one records what it got here (JSON,
``$ZOO_HOME/weights.lock.json`` by default, ``ZOO_WEIGHTS_LOCK`` or ``zoo pull --lock FILE`` to choose), says
"trust on first use" on the terminal, and from then on refuses any other file for that source, naming both
hashes. A fleet commits the file and points every machine at it, so all of them get the same bytes.

Entries are keyed by model name and remember the source they were recorded for: when the registry moves a
model to another source, the old entry no longer applies and the new source is trusted on its first use.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from zoo.contract import WeightsError
from zoo.paths import zoo_home

LOCK_ENV = "ZOO_WEIGHTS_LOCK"
LOCK_VERSION = 1


class LockMismatch(WeightsError):
    """A file differs from the one the lock recorded on first use."""

    def __init__(self, model: str, source: str, actual: str, locked: LockedFile, lock: Path) -> None:
        self.actual, self.locked, self.lock = actual, locked, lock
        super().__init__(
            f"sha256 mismatch for {model} ({source}): the file has sha256 {actual} but the lock {lock} "
            f"recorded {locked.sha256} ({locked.size} bytes) on first use, {locked.first_seen}. Refusing a "
            f"different file. If the authors really replaced it, check the new file and delete the "
            f"{model!r} entry from the lock"
        )


@dataclass(frozen=True)
class LockedFile:
    source: str
    sha256: str
    size: int
    filename: str
    first_seen: str
    how: str  # "download" or "file" (handed to `zoo pull --file`)


def lock_path(explicit: str | Path | None = None) -> Path:
    """`explicit` (``--lock``), else ``ZOO_WEIGHTS_LOCK``, else ``$ZOO_HOME/weights.lock.json``."""
    chosen = explicit or os.environ.get(LOCK_ENV)
    return Path(chosen).expanduser() if chosen else zoo_home() / "weights.lock.json"


def _read(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        weights = data["weights"]
        if not isinstance(weights, dict):
            raise TypeError("'weights' is not an object")
        return weights
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"unreadable weights lock {path}: {exc}; fix or delete it") from exc


def locked_file(model: str, source: str, lock: str | Path | None = None) -> LockedFile | None:
    """What the lock recorded for `model` at `source`, or None (never seen, or recorded for another source)."""
    raw = _read(lock_path(lock)).get(model)
    if not raw or raw.get("source") != source:
        return None
    return LockedFile(**{k: raw[k] for k in LockedFile.__dataclass_fields__})


def check(model: str, source: str, sha256: str, lock: str | Path | None = None) -> LockedFile | None:
    """The locked file if `sha256` matches it; None if nothing is locked; LockMismatch otherwise."""
    locked = locked_file(model, source, lock)
    if locked is not None and locked.sha256 != sha256:
        raise LockMismatch(model, source, sha256, locked, lock_path(lock))
    return locked


def record(model: str, source: str, sha256: str, size: int, filename: str, how: str,
           lock: str | Path | None = None) -> LockedFile:
    """Lock a first-seen file (atomically, keeping every other entry)."""
    path = lock_path(lock)
    entries = _read(path)
    entry = LockedFile(source, sha256, size, filename, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), how)
    entries[model] = asdict(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": LOCK_VERSION, "weights": dict(sorted(entries.items()))}, indent=2) + "\n")
    os.replace(tmp, path)
    return entry
