"""External data that changes while a model loads never gives a wrong session (issue 13.1).

The loader must read every byte ONNX Runtime uses exactly once, authenticate that buffer
and hand ONNX Runtime only it. Here the data file is swapped under the loader: a
free-running thread alternates a tampered and the genuine copy (in-place writes and
atomic renames), and a hook on ``open`` tampers the file right after the loader's first
complete read of it in every load attempt, and keeps it so until the load returns.
A loader that reads the file a second time (for the tag check, then for the weights,
or leaves that to ONNX Runtime) then builds a session from bytes it never checked.
Every load must raise :class:`InvalidBundle` (or :class:`FormatError`) or give the
genuine model's outputs at its level: zero wrong sessions.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc as se
from onnx_selenc._load import opened as _opened
from onnx_selenc._load.handover import IN_MEMORY
from onnx_selenc._onnx.tensors import initializer_tensors
from onnx_selenc.exceptions import FormatError, InvalidBundle
from tests import tiny_models as tm

CPU = ["CPUExecutionProvider"]
LOADS = 100  # per load path (the figure)
LEVELS = 2
# Each tensor of the model in one of the places the loader hands over differently.
EXTERNAL = {
    "w_a": "main graph, below the in-memory threshold, restored",
    "w_b": "main graph, above the in-memory threshold, restored",
    "add_map": "main graph, above the in-memory threshold, unchanged",
    "add_small": "main graph, below the in-memory threshold, unchanged",
    "w_then": "subgraph initializer, restored",
    "w_else": "subgraph initializer, restored",
}


def _model() -> onnx.ModelProto:
    """Convs in the main graph and in both branches of an If, plus unchanged constants."""
    rng = np.random.default_rng(13)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    w_a, w_b = weight(32, 8, 3, 3), weight(64, 32, 3, 3)
    w_then, w_else = weight(16, 64, 3, 3), weight(16, 64, 1, 1)
    add_map = rng.standard_normal((1, 64, 16, 16)).astype(np.float32)  # 64 KiB
    add_small = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    y_if = tm.y_info("y_if")
    branch = {
        name: helper.make_graph(
            [helper.make_node("Conv", ["c", name], ["y_if"], pads=pads, name=f"conv_{name}")],
            name,
            [],
            [y_if],
            [numpy_helper.from_array(w, name)],
        )
        for name, w, pads in (("w_then", w_then, [1, 1, 1, 1]), ("w_else", w_else, [0, 0, 0, 0]))
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["a"], ["a2"]),
        helper.make_node("Conv", ["a2", "w_b"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Add", ["b", "add_map"], ["c"]),
        helper.make_node(
            "If", ["cond"], ["y_if"], then_branch=branch["w_then"], else_branch=branch["w_else"]
        ),
        helper.make_node("Add", ["y_if", "add_small"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "race",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [tm.y_info("y")],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w_a, "w_a"), (w_b, "w_b"), (add_map, "add_map"), (add_small, "add_small"))
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", tm.OPSET)], ir_version=tm.IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


FEEDS = [
    {"x": np.random.default_rng(1).standard_normal((1, 8, 16, 16), np.float32), "cond": c}
    for c in (np.array(True), np.array(False))
]


def _outputs(session: ort.InferenceSession) -> list[np.ndarray]:
    return [session.run(None, feeds)[0] for feeds in FEEDS]


@dataclass(frozen=True)
class _Encrypted:
    folder: Path
    model: Path
    data: Path
    key: Path
    references: dict[int, list[np.ndarray]]  # the genuine outputs at each level


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> _Encrypted:
    """The model encrypted with its weights in external data; outputs at every level."""
    root = tmp_path_factory.mktemp("race")
    model = _model()
    plain = root / "plain" / "m.onnx"
    plain.parent.mkdir()
    saved = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save moves its data
    onnx.save(saved, plain, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = se.encrypt(
            plain,
            root / "enc" / "m.enc.onnx",
            key_file=root / "owner.key",
            options=se.EncryptOptions(levels=LEVELS, budget=0.3, seed=0, external_data=True),
        )
    enc, data = result.model_files
    stored = onnx.load(enc, load_external_data=False)
    external = {
        t.name for t in initializer_tensors(stored.graph) if t.data_location == TensorProto.EXTERNAL
    }
    assert external == set(EXTERNAL)  # every case above really is in the data file
    references = {
        level: _outputs(se.load_session(enc, key=result.key_file, level=level, providers=CPU))
        for level in range(LEVELS + 1)
    }
    plain_outputs = _outputs(ort.InferenceSession(model.SerializeToString(), providers=CPU))
    assert all(np.array_equal(a, b) for a, b in zip(references[LEVELS], plain_outputs, strict=True))
    for level in range(LEVELS):
        assert not np.array_equal(references[level][0], references[LEVELS][0])
    return _Encrypted(enc.parent, enc, data, result.key_file, references)


def _copy(encrypted: _Encrypted, tmp_path: Path) -> _Encrypted:
    """The encrypted files in a folder of this test's own (the race changes them)."""
    folder = tmp_path / "enc"
    shutil.copytree(encrypted.folder, folder)
    return _Encrypted(
        folder,
        folder / encrypted.model.name,
        folder / encrypted.data.name,
        encrypted.key,
        encrypted.references,
    )


# --- the file changed under the loader ---------------------------------------------------
def _write(path: Path, content: bytes, *, atomic: bool) -> None:
    """Replace a file's content in place, or atomically by a rename (never through the
    ``open`` the hook watches)."""
    target = path.with_name(path.name + ".swap") if atomic else path
    flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if atomic else 0)
    fd = os.open(target, flags, 0o644)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    if atomic:
        os.replace(target, path)


class _Watched:
    """A file object that reports when it is closed (its read is complete then)."""

    def __init__(self, fh: Any, on_close: Callable[[], None]) -> None:
        self._fh = fh
        self._on_close = on_close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
            self._on_close()


@dataclass
class _Race:
    """The data file of an encrypted model, changed while the loader works on it.

    Once per load attempt (see :meth:`arm`) ``hook`` runs, either right after the
    model's tag is computed (``when="checked"``: between the tag check's read and any
    later one) or right after the first complete read of the data file through
    ``open`` (``when="read"``). From then until :meth:`end_load` the race holds
    :attr:`lock`, which keeps the free-running swapper off the file, and ONNX Runtime
    builds no session before the hook has run (so it cannot read the file first).
    """

    path: Path
    genuine: bytes
    tampered: bytes
    hook: Callable[[_Race], None]
    when: str = "checked"
    lock: threading.Lock = field(default_factory=threading.Lock)
    fired: int = 0  # hooks run
    opens: int = 0  # reads of the data file through open
    _fired: threading.Event = field(default_factory=threading.Event)
    _armed: bool = False
    _held: bool = False
    _turn: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def tamper(self) -> None:
        """Write the tampered copy, in place or by a rename (in turn)."""
        self._turn += 1
        _write(self.path, self.tampered, atomic=self._turn % 2 == 0)

    def arm(self) -> None:
        """The genuine file again (also where a hook removed it); the hook runs once more."""
        with self._guard:
            if not self._held:
                self.lock.acquire()
            _write(self.path, self.genuine, atomic=True)
            if not self._held:
                self.lock.release()
            self._fired.clear()
            self._armed = True

    def end_load(self) -> None:
        with self._guard:
            self._armed = False
            if self._held:
                self._held = False
                self.lock.release()

    def _fire(self) -> None:
        with self._guard:
            if not self._armed:
                return
            self._armed = False
            if not self._held:
                self.lock.acquire()
                self._held = True
            self.fired += 1
            self.hook(self)
            self._fired.set()

    def _closed(self) -> None:
        if self.when == "read":
            self._fire()

    def swap_forever(self, stop: threading.Event) -> None:
        """Alternate tampered and genuine copies, in place and by renames, till ``stop``."""
        rng = np.random.default_rng(0)
        turns = [(self.tampered, False), (self.genuine, False)]
        turns += [(self.tampered, True), (self.genuine, True)]
        i = 0
        while not stop.is_set():
            with self.lock:
                content, atomic = turns[i % len(turns)]
                _write(self.path, content, atomic=atomic)
            i += 1
            time.sleep(float(rng.uniform(0, 0.004)))

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Install the hooks: on ``open`` (and ``io.open``, which pathlib uses), on the
        loader's tag computation, and before ONNX Runtime builds a session."""
        real_open = builtins.open
        target = os.path.realpath(self.path)

        def watched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real_open(file, mode, *args, **kwargs)
            reads = "r" in mode and "+" not in mode
            named = isinstance(file, str | os.PathLike)
            if reads and named and os.path.realpath(os.fspath(file)) == target:
                self.opens += 1
                return _Watched(fh, self._closed)
            return fh

        real_hash = _opened.hash_model

        def hash_then_fire(*args: Any, **kwargs: Any) -> str:
            result = real_hash(*args, **kwargs)
            if self.when == "checked":
                self._fire()
            return result

        real_session = ort.InferenceSession

        def after_the_hook(*args: Any, **kwargs: Any) -> ort.InferenceSession:
            if self._armed:
                self._fired.wait(timeout=2.0)  # the check runs on a worker: let it finish
            return real_session(*args, **kwargs)

        monkeypatch.setattr(builtins, "open", watched_open)
        monkeypatch.setattr(io, "open", watched_open)
        monkeypatch.setattr(_opened, "hash_model", hash_then_fire)
        monkeypatch.setattr(ort, "InferenceSession", after_the_hook)


def _race_for(encrypted: _Encrypted, hook: Callable[[_Race], None], when: str) -> _Race:
    genuine = encrypted.data.read_bytes()
    values = np.frombuffer(genuine, np.float32)
    tampered = (values * np.float32(1.5) + np.float32(0.25)).tobytes()
    return _Race(encrypted.data, genuine, tampered, hook, when)


# --- the load paths ------------------------------------------------------------------------
class _OrtRefused(RuntimeError):
    """Stands for an onnxruntime that refuses in-memory initializers (the fallback)."""


_OrtRefused.__module__ = "onnxruntime.capi.test"

Load = Callable[[_Encrypted, int], ort.InferenceSession]


def _paths(monkeypatch: pytest.MonkeyPatch, path: str, race: _Race) -> Load:
    """How ``path`` loads a model (some paths need loader constants patched)."""
    if path == "load_session_threaded":
        # The tag check on a worker beside the session build, as past 256 MB.
        monkeypatch.setattr(_opened, "_INLINE_TAG_BYTES", 0)
    if path == "restore_model_large":
        # Weights handed to ONNX Runtime apart from the graph, as past 256 MB (and 2 GB).
        monkeypatch.setattr(_opened, "INLINE_EXTERNAL_LIMIT", 0)
    if path == "fallback":
        real = ort.InferenceSession
        first = {"attempt": True}

        def refusing(model: Any, *args: Any, **kwargs: Any) -> ort.InferenceSession:
            # Refuse a build with in-memory initializers, once per load: the loader then
            # builds the model the ordinary way (restore_model), reading the files again.
            if first["attempt"] and isinstance(model, bytes) and IN_MEMORY.encode() in model:
                first["attempt"] = False
                race.arm()  # race that second read too
                raise _OrtRefused("in-memory initializers refused")
            return real(model, *args, **kwargs)

        monkeypatch.setattr(ort, "InferenceSession", refusing)

        def fallback(enc: _Encrypted, level: int) -> ort.InferenceSession:
            first["attempt"] = True
            return se.load_session(enc.model, key=enc.key, level=level, providers=CPU)

        return fallback
    if path in ("restore_model", "restore_model_large"):
        return lambda enc, level: se.build_session(
            se.restore_model(enc.model, key=enc.key, level=level), providers=CPU
        )
    if path == "sess_options":
        return lambda enc, level: se.load_session(
            enc.model, key=enc.key, level=level, providers=CPU, sess_options=ort.SessionOptions()
        )
    return lambda enc, level: se.load_session(enc.model, key=enc.key, level=level, providers=CPU)


PATHS = [
    "load_session",
    "load_session_threaded",
    "sess_options",
    "restore_model",
    "restore_model_large",
    "fallback",
]


@dataclass
class _Tally:
    right: int = 0
    refused: int = 0
    wrong: int = 0
    wrong_levels: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        n = self.right + self.refused + self.wrong
        return f"{self.wrong} wrong, {self.refused} refused, {self.right} right of {n} loads"


@pytest.fixture
def swapping() -> Iterator[Callable[[_Race], None]]:
    """Start the free-running swapper of a race; it stops when the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(race: _Race) -> None:
        thread = threading.Thread(target=race.swap_forever, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


@pytest.mark.parametrize("path", PATHS)
def test_swapped_data_file_never_gives_a_wrong_session(
    path: str, encrypted: _Encrypted, tmp_path: Path, monkeypatch, swapping
) -> None:
    enc = _copy(encrypted, tmp_path)
    race = _race_for(enc, _Race.tamper, "checked")
    race.watch(monkeypatch)
    load = _paths(monkeypatch, path, race)
    swapping(race)
    tally = _Tally()
    for i in range(LOADS):
        level = i % (LEVELS + 1)
        race.arm()
        try:
            try:
                session = load(enc, level)
            except (InvalidBundle, FormatError):
                tally.refused += 1
                continue
            # Run while the file is still tampered: a session that maps it would show it.
            outputs = _outputs(session)
        finally:
            race.end_load()
        same = all(
            np.array_equal(a, b) for a, b in zip(outputs, enc.references[level], strict=True)
        )
        if same:
            tally.right += 1
        else:
            tally.wrong += 1
            tally.wrong_levels.append(level)
    print(f"{path}: {tally}; the data file opened {race.opens} times")
    assert tally.wrong == 0, f"{path}: {tally} (levels of the wrong ones: {tally.wrong_levels})"
    assert race.fired >= LOADS  # every load checked the file, and it was tampered right after
    assert tally.right >= LOADS // 10, f"{path}: {tally}: the race left too few genuine reads"


def _delete(race: _Race) -> None:
    os.remove(race.path)


@pytest.mark.parametrize("path", PATHS)
def test_onnx_runtime_never_reads_the_data_file(
    path: str, encrypted: _Encrypted, tmp_path: Path, monkeypatch
) -> None:
    """The data file is gone right after the loader's one read, and garbage once the
    session is built: the session runs the genuine weights all the same."""
    enc = _copy(encrypted, tmp_path)
    race = _race_for(enc, _delete, "read")
    race.watch(monkeypatch)
    load = _paths(monkeypatch, path, race)
    for level in range(LEVELS + 1):
        race.arm()
        try:
            session = load(enc, level)
            assert not enc.data.exists()
            garbage = np.random.default_rng(level).bytes(len(race.genuine))
            _write(enc.data, garbage, atomic=True)
            outputs = _outputs(session)
        finally:
            race.end_load()
        assert all(
            np.array_equal(a, b) for a, b in zip(outputs, enc.references[level], strict=True)
        )
    attempts = (LEVELS + 1) * (2 if path == "fallback" else 1)
    assert race.fired == race.opens == attempts  # one read of the file per attempt
