"""The MTCNN weights (P/R/O-net) as shipped inside the facenet-pytorch 2.6.0 wheel (MIT).

facenet-pytorch itself is never installed: it imports torchvision and pins ``torch<2.3``. Instead its wheel
is downloaded with ``pip download --no-deps`` and only ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (plus
the package's MIT licence, which must travel with the copies) are extracted, each checked against a pinned
sha256. Look-up order: ``$ZOO_MTCNN_DIR``, ``<zoo_home>/assets/mtcnn`` (``ZOO_HOME``, default
``~/.cache/zoo-gateway``), then -- read-only -- the default ``~/.cache/zoo-gateway/assets/mtcnn`` when
``ZOO_HOME`` points elsewhere (so test runs with an isolated ``ZOO_HOME`` reuse what ``make setup`` fetched);
failing all of these, the wheel is downloaded into ``<zoo_home>/assets/mtcnn``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from zoo.paths import zoo_home
from zoo.weights import sha256_of

PACKAGE = "facenet-pytorch"
VERSION = "2.6.0"
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"

# name in the asset folder -> (member of the wheel, sha256 of the extracted file)
MTCNN_FILES: dict[str, tuple[str, str]] = {
    "pnet.pt": ("facenet_pytorch/data/pnet.pt",
                "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet.pt": ("facenet_pytorch/data/rnet.pt",
                "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet.pt": ("facenet_pytorch/data/onet.pt",
                "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
    "LICENSE.facenet-pytorch.md": ("facenet_pytorch-2.6.0.dist-info/LICENSE.md",
                                   "9fac5781e1529f4dd1a045716e1859436038d2def9e108d101b6df20c5a11318"),
}
ENV_DIR = "ZOO_MTCNN_DIR"
ARCHIVE_DIR = "mtcnn"  # folder of the assets inside a .mar (the handler finds them under model_dir/mtcnn)


class AssetError(RuntimeError):
    """The MTCNN weights are missing, corrupt, or cannot be fetched."""


def default_dir() -> Path:
    return zoo_home() / "assets" / "mtcnn"


def _home_default_dir() -> Path:
    return Path.home() / ".cache" / "zoo-gateway" / "assets" / "mtcnn"


def check_dir(folder: str | Path) -> list[str]:
    """Problems with the asset files in ``folder`` (empty list: all present with the pinned hashes)."""
    folder = Path(folder)
    problems = []
    for name, (_, digest) in MTCNN_FILES.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif sha256_of(path) != digest:
            problems.append(f"{name} has sha256 {sha256_of(path)}, expected {digest}")
    return problems


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]).expanduser())
    dirs.append(default_dir())
    if _home_default_dir() != default_dir():
        dirs.append(_home_default_dir())
    return dirs


def find_mtcnn_weights() -> Path | None:
    """The first folder holding all verified files, without any download.

    A folder that holds the files but with wrong hashes is an error, not a miss: corrupt weights are
    never skipped silently.
    """
    for folder in candidate_dirs():
        if not any((folder / name).exists() for name in MTCNN_FILES):
            continue
        problems = check_dir(folder)
        if not problems:
            return folder
        if all(p.endswith("missing") for p in problems):
            continue  # a partial folder (e.g. an interrupted copy): keep looking / re-download
        raise AssetError(f"MTCNN weights in {folder} are corrupt: {'; '.join(problems)}. "
                         f"Delete that folder and run `zoo assets`.")
    return None


def download_wheel(into: Path, timeout_s: float = 300) -> Path:
    """``pip download facenet-pytorch==2.6.0 --no-deps`` into ``into``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
           "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", str(into)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(f"cannot run `{' '.join(cmd)}`: {exc}") from exc
    wheel = into / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise AssetError(
            f"could not download the MTCNN weights: `{' '.join(cmd)}` exited with {proc.returncode}:\n"
            f"{tail}\nWithout network access, copy pnet.pt, rnet.pt and onet.pt (from the {PACKAGE} "
            f"{VERSION} wheel's facenet_pytorch/data/) and its LICENSE.md as LICENSE.facenet-pytorch.md "
            f"into a folder and set {ENV_DIR} to it."
        )
    if sha256_of(wheel) != WHEEL_SHA256:
        raise AssetError(f"{wheel.name} has sha256 {sha256_of(wheel)}, expected {WHEEL_SHA256}")
    return wheel


def extract(wheel: Path, dest: Path) -> Path:
    """Extract and verify the asset files from the wheel into ``dest`` (atomically per file)."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name, (member, digest) in MTCNN_FILES.items():
            tmp = dest / f".{name}.partial"
            with zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            got = sha256_of(tmp)
            if got != digest:
                tmp.unlink()
                raise AssetError(f"{member} in {wheel.name} has sha256 {got}, expected {digest}")
            os.replace(tmp, dest / name)
    return dest


def ensure_mtcnn_weights(dest: str | Path | None = None,
                         progress: Callable[[str], None] | None = None) -> Path:
    """A folder with verified pnet.pt/rnet.pt/onet.pt, downloading the wheel only when none is found.

    With ``dest``: make sure exactly that folder holds them (copied from a found folder, else downloaded).
    """
    say = progress or (lambda _msg: None)
    say("look up")
    found = find_mtcnn_weights()
    target = Path(dest).expanduser() if dest is not None else None
    if target is None and found is not None:
        return found
    if target is not None:
        if not check_dir(target):
            return target
        if found is not None:
            say(f"copy from {found}")
            target.mkdir(parents=True, exist_ok=True)
            for name in MTCNN_FILES:
                shutil.copy2(found / name, target / name)
            problems = check_dir(target)
            if problems:
                raise AssetError(f"copy into {target} failed: {'; '.join(problems)}")
            return target
    target = target or default_dir()
    with tempfile.TemporaryDirectory(prefix="zoo-mtcnn-") as tmp:
        say(f"pip download {PACKAGE}=={VERSION}")
        wheel = download_wheel(Path(tmp))
        say(f"extract into {target}")
        extract(wheel, target)
    problems = check_dir(target)
    if problems:
        raise AssetError(f"MTCNN weights in {target} failed verification: {'; '.join(problems)}")
    return target


def mar_assets() -> dict[str, Path]:
    """Files the ``ftcn_tt`` archive carries: ``mtcnn/<file>`` (see ``ModelEntry.assets``)."""
    folder = ensure_mtcnn_weights()
    return {f"{ARCHIVE_DIR}/{name}": folder / name for name in MTCNN_FILES}
