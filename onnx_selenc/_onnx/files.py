"""Atomic file output, output sets that appear together, and path-safety checks.

Every file this package writes goes through :func:`atomic_write` (one file: a
temporary file in the destination folder, fsync, then ``os.replace``) or
:func:`staged_outputs` (several files that belong together, such as a model, its
external data and its owner key: each is written under a temporary name in a hidden
folder beside its destination, and all are moved into place as the last step).
Either way an error, Ctrl-C or SIGTERM leaves the old files or the complete new
ones, never half of one and no temporary file: while files are being written,
SIGTERM is turned into an exception in the main thread so the same clean-up runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with signals_as_exceptions():
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


def refuse_overwrite_of_input(
    output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]
) -> None:
    """Raise ``ValueError`` if ``output`` is one of ``inputs`` (an input is never overwritten)."""
    out = Path(output).resolve()
    for item in inputs:
        src = Path(item)
        if out == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
            raise ValueError(
                f"refusing to overwrite the input file {src}: choose another output path"
            )


def refuse_existing(path: str | os.PathLike[str], what: str) -> None:
    """Raise ``FileExistsError`` if ``path`` exists (key files: losing one loses access)."""
    if Path(path).exists():
        raise FileExistsError(
            f"{what} {path} already exists; refusing to replace it (move it away first)"
        )


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (the same path once resolved, or two links to it)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.samefile(pb)
    except OSError:  # one of them does not exist
        return False


def refuse_existing_outputs(
    paths: Iterable[str | os.PathLike[str]], *, overwrite: bool, how: str
) -> None:
    """Refuse output paths that hold something, unless ``overwrite``; never a folder.

    ``how`` says how to ask for replacement (e.g. ``"pass overwrite=True"``; the CLI
    words it as its flag).

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false, or is a folder.
    """
    for item in paths:
        path = Path(item)
        if path.is_dir():
            raise FileExistsError(f"{path} is a folder; refusing to replace it with a file")
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{path} already exists; refusing to replace it ({how})")


def write_new_file(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist) holding ``data``, with permissions ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)


# --- signals while writing --------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM arrived while files were being written (raised in the main thread).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not
    swallow it; once the clean-up has run, :func:`signals_as_exceptions` hands the
    signal to the handler that was there before (by default: the process ends).
    """


class _SignalState:
    active = False  # our handlers are installed
    fired = False  # one exception was raised: later signals wait (the clean-up runs)
    deferring = 0  # inside deferred_signals(): signals wait
    pending: list[int] = []  # noqa: RUF012 - one process-wide instance


_STATE = _SignalState()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _STATE.fired or _STATE.deferring:
        if signum not in _STATE.pending:
            _STATE.pending.append(signum)
        return
    _STATE.fired = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _SignalGuard:
    def __init__(self) -> None:
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _SignalGuard:
        if _STATE.active or not _in_main_thread():
            return self  # an outer guard is in charge; other threads get no signals
        try:
            term = signal.getsignal(signal.SIGTERM)
            if term is not signal.SIG_IGN and term is not None:
                self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_signal)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_signal)
        except (ValueError, OSError):  # not the main interpreter
            self._restore()
        if self.previous:
            _STATE.active, _STATE.fired, _STATE.pending = True, False, []
        return self

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self.previous = {}

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not self.previous:
            return
        self._restore()
        pending, _STATE.pending = _STATE.pending, []
        _STATE.active = _STATE.fired = False
        if isinstance(exc, Terminated) and signal.SIGTERM not in pending:
            pending.append(signal.SIGTERM)
        if isinstance(exc, KeyboardInterrupt) and signal.SIGINT in pending:
            pending.remove(signal.SIGINT)  # one KeyboardInterrupt is on its way already
        for sig in sorted(pending, key=lambda s: s != signal.SIGTERM):  # SIGTERM first
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            signal.raise_signal(sig)  # by default SIGTERM ends the process here
        if isinstance(exc, Terminated):  # the previous SIGTERM handler returned
            raise InterruptedError("interrupted by SIGTERM while writing files") from None


def signals_as_exceptions() -> contextlib.AbstractContextManager[object]:
    """While the block runs, SIGTERM raises :class:`Terminated` and SIGINT raises
    ``KeyboardInterrupt`` in the main thread, so ``except``/``finally`` clean-up runs
    before the process goes.

    Installed only in the main thread, only over Python's default SIGINT handler and a
    SIGTERM that is not ignored; the previous handlers are restored on exit, then any
    signal that arrived is handed to them. After the first signal, further ones (and
    all during :func:`deferred_signals`) wait until the block exits. Re-entrant: an
    inner guard does nothing.
    """
    return _SignalGuard()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Signals that arrive in this block wait until the enclosing guard exits."""
    if not _in_main_thread():
        yield
        return
    _STATE.deferring += 1
    try:
        yield
    finally:
        _STATE.deferring -= 1


# --- output sets ------------------------------------------------------------------------
_LINK_UNSUPPORTED = {
    errno.EPERM,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.EXDEV,
    errno.EMLINK,
    errno.ENOSYS,
}


class Staging:
    """Output files written under temporary names, then moved into place together.

    :meth:`path` says where to write a destination's content: the same name in a
    hidden folder ``.<name>.<pid>.XXXXXXXX.tmp`` created in the destination's folder, so
    that moving it into place is a rename within one file system. :meth:`place` and
    :meth:`drop` list, in order, what :meth:`commit` does; :meth:`rollback` undoes a
    commit that failed part way (a replaced file comes back from a hard link kept of
    it). Use it through :func:`staged_outputs`.
    """

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}  # destination folder -> hidden staging folder
        self._made: list[Path] = []  # folders created for the outputs, outermost first
        self._steps: list[tuple[str, Path]] = []  # ("new" | "replace" | "drop", destination)
        self._done: list[tuple[Path, Path | None]] = []  # placed: (destination, old copy)
        self._keep: set[Path] = set()  # staging folders holding an old file not restored

    def path(self, dest: str | os.PathLike[str]) -> Path:
        """Where to write the content of ``dest`` (its folder is created if need be)."""
        dest = Path(os.path.abspath(dest))
        folder = self._folders.get(dest.parent)
        if folder is None:
            missing = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._made.extend(reversed(missing))
            # The pid in the name lets a later run tell a folder left by a killed
            # process (SIGKILL) from one in use (_encrypt/stale.py).
            prefix = f".{dest.name}.{os.getpid()}."
            folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dest.parent))
            self._folders[dest.parent] = folder
        return folder / dest.name

    def place(self, dest: str | os.PathLike[str], *, replace: bool) -> None:
        """Move the staged ``dest`` into place at commit; ``replace``: over an existing file
        (else the commit fails if one has appeared)."""
        self._steps.append(("replace" if replace else "new", Path(os.path.abspath(dest))))

    def drop(self, dest: str | os.PathLike[str]) -> None:
        """Remove ``dest``, if it exists, at commit (a stale output of an earlier run)."""
        self._steps.append(("drop", Path(os.path.abspath(dest))))

    def commit(self) -> None:
        """Do the listed moves, in order; on an error the caller calls :meth:`rollback`."""
        for kind, dest in self._steps:
            if kind != "drop":
                _fsync(self.path(dest))
        for kind, dest in self._steps:
            if kind == "new":
                self._link_new(self.path(dest), dest)
                self._done.append((dest, None))
            elif kind == "replace":
                old = self._keep_old(dest) if os.path.lexists(dest) else None
                if old is not None:
                    self._done.append((dest, old))  # restoring `old` is right either way
                os.replace(self.path(dest), dest)
                if old is None:
                    self._done.append((dest, None))
            elif os.path.lexists(dest):
                old = self._old_copy(dest)
                os.rename(dest, old)
                self._done.append((dest, old))
        for folder in {dest.parent for _, dest in self._steps}:
            with contextlib.suppress(OSError):
                _fsync(folder)

    def rollback(self) -> None:
        """Put back what was there before the commit, remove what it created."""
        for dest, old in reversed(self._done):
            try:
                if old is None:
                    os.unlink(dest)
                else:
                    os.replace(old, dest)
            except FileNotFoundError:
                pass
            except OSError:
                if old is not None:
                    self._keep.add(old.parent.parent)
        self._done.clear()
        self.cleanup()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing else is ever removed
        self._made.clear()

    def cleanup(self) -> None:
        """Remove the hidden staging folders (with the old copies of replaced files)."""
        for folder in self._folders.values():
            if folder not in self._keep:
                shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()

    def _old_copy(self, dest: Path) -> Path:
        old = self.path(dest).parent / "old"
        old.mkdir(exist_ok=True)
        return old / dest.name

    def _keep_old(self, dest: Path) -> Path:
        old = self._old_copy(dest)
        try:
            os.link(dest, old, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            os.rename(dest, old)  # no hard links here: the path is empty for a moment
        return old

    @staticmethod
    def _link_new(staged: Path, dest: Path) -> None:
        appeared = FileExistsError(
            f"{dest} appeared while the outputs were being written; refusing to replace it"
        )
        try:
            os.link(staged, dest)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise appeared from None
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            if os.path.lexists(dest):
                raise appeared from None
            os.replace(staged, dest)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_outputs() -> Iterator[Staging]:
    """Write a set of files that appear together, or not at all.

    The block writes each file at ``stage.path(dest)`` and lists it with
    ``stage.place(dest, replace=...)``; when the block ends, the files are moved into
    place in the listed order (signals wait meanwhile). An exception, Ctrl-C or
    SIGTERM (see :func:`signals_as_exceptions`) before that point, or an error during
    it, leaves the destination folders as they were: no new file, no temporary one,
    replaced files back. Only an uncatchable end (SIGKILL, power loss) can leave a
    hidden ``.<name>.*.tmp`` folder, which is safe to delete.
    """
    with signals_as_exceptions():
        stage = Staging()
        try:
            yield stage
            with deferred_signals():
                stage.commit()
        except BaseException:
            with deferred_signals():
                stage.rollback()
            raise
        with deferred_signals():
            stage.cleanup()
