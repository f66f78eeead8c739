"""Staging folders left by a run that was killed (SIGKILL, power loss) before its commit.

``staged_outputs`` writes an output set into ``.<name>.<pid>.XXXXXXXX.tmp`` beside the
destinations; only an uncatchable end leaves one behind, holding perhaps a complete
owner key and a partial model. The next run for the same outputs removes such a folder
when it can prove it is a dead run's: the name is one of this run's outputs, the pid in
it is no live process, and it holds only staged outputs (no ``old`` copy of a replaced
file, which may be the only copy left). Any other leftover is named in a warning and
left for the user.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

from onnx_selenc.exceptions import LeftoverWarning

# What Staging.path names its folders (onnx_selenc/_onnx/files.py) after ".<name>";
# before 0.3 there was no pid. The 8 characters are tempfile's.
_SUFFIX = re.compile(r"\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")


def clear_stale_staging(outputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Remove dead runs' staging folders for ``outputs``; warn about the rest.

    Returns:
        The folders removed.

    Warns:
        LeftoverWarning: per folder of these outputs that is left in place (a live
            pid, no pid, or a replaced file's old copy inside).
    """
    by_folder: dict[Path, set[str]] = {}
    for out in map(Path, outputs):
        by_folder.setdefault(Path(os.path.abspath(out)).parent, set()).add(out.name)
    removed: list[Path] = []
    for folder, names in by_folder.items():
        for entry in _candidates(folder, names):
            why = _why_kept(entry, names)
            if why is None:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            else:
                warnings.warn(
                    f"{entry} is a temporary folder an earlier run left ({why}); it was "
                    "kept: look inside, then delete it",
                    LeftoverWarning,
                    stacklevel=3,
                )
    return removed


def _candidates(folder: Path, names: set[str]) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = [
        entry
        for entry in entries
        if _suffix(entry.name, names) is not None and entry.is_dir() and not entry.is_symlink()
    ]
    return sorted(found)


def _suffix(folder_name: str, names: set[str]) -> re.Match[str] | None:
    """The pid part of a staging folder's name for one of ``names``, else None."""
    for name in names:
        if folder_name.startswith(f".{name}."):
            match = _SUFFIX.fullmatch(folder_name, len(name) + 1)
            if match is not None:
                return match
    return None


def _why_kept(entry: Path, names: set[str]) -> str | None:
    """Why ``entry`` may not be removed, or None when it is provably a dead run's."""
    match = _suffix(entry.name, names)
    assert match is not None
    if match["pid"] is None:
        return "written by an onnx-selenc before 0.3, whose process cannot be told"
    pid = int(match["pid"])
    if _alive(pid):
        return f"process {pid} is running: perhaps it is still writing"
    try:
        contents = list(entry.iterdir())
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    for item in contents:
        if item.name == "old":
            return "it holds the old copy of a file being replaced, perhaps the only one"
        if item.name not in names or not item.is_file() or item.is_symlink():
            return f"it holds {item.name}, which this run does not write"
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process: another thread may be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no pid can be): not provably dead
    return True
