"""Large models: the >2 GB round trip, and the machinery that keeps loading cheap.

The fast tests pin the performance work to the old behaviour: the external-data writer
writes what ``onnx.save_model`` writes, and the in-memory load gives the plain model's
outputs (the digest's and the stripped parse's own tests are test_digest.py and
test_stripped.py). The slow test builds a model over 2 GB and runs it through encrypt,
inspect and load, and checks there that the loader reads the 2.4 GB of external data
once: the data file is moved away right after that read and garbage put in its place
before the session runs (one model serves both: building and encrypting it is most of
the test's minutes).
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc as se
from onnx_selenc._crypto import digest as _digest
from onnx_selenc._load import opened as _opened
from onnx_selenc._load import session as _session
from onnx_selenc._onnx import modelio as _modelio
from onnx_selenc._onnx import stripped as _stripped
from onnx_selenc.exceptions import InvalidBundle
from tests import tiny_models as tm
from tests._load.test_external_data_race import _Watched
from tests.conftest import ort_run
from tests.digest_reference import DIGEST_CASES as _DIGEST_CASES


@pytest.mark.parametrize("name", ["cnn", "constant_nodes", "if_subgraph", "wide"])
def test_save_external_writes_what_onnx_writes(name: str, tmp_path: Path, monkeypatch) -> None:
    model = _DIGEST_CASES[name]()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    _modelio.save_model(
        onnx.ModelProto.FromString(model.SerializeToString()), ours / "m.onnx", external_data=True
    )
    monkeypatch.chdir(theirs)  # onnx checks the location against the working folder
    onnx.save_model(
        onnx.ModelProto.FromString(model.SerializeToString()),
        str(theirs / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=1024,
    )
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for p in theirs.iterdir():
        assert (ours / p.name).read_bytes() == p.read_bytes()


@pytest.mark.parametrize(
    "name",
    ["cnn", "constant_nodes", "if_subgraph", "fp16_cast", "quantized", "shared_weight", "wide"],
)
@pytest.mark.parametrize("threshold", [0, 1 << 16])
def test_in_memory_load_equals_plain_and_ordinary_load(
    name: str, threshold: int, make_encrypted, monkeypatch
) -> None:
    """Everything handed over in memory (threshold 0) or inline: same outputs."""
    monkeypatch.setattr(_stripped, "STRIP_THRESHOLD", threshold)
    monkeypatch.setattr(_session, "_MEMORY_THRESHOLD", threshold)
    model = _DIGEST_CASES[name]()
    enc, key = make_encrypted(model, levels=3, budget=0.3)
    for feeds in [tm.feeds(model)]:
        plain = ort_run(model, feeds)
        fast = se.load_session(enc, key=key, providers=["CPUExecutionProvider"])
        ordinary = se.load_session(
            enc, key=key, providers=["CPUExecutionProvider"], sess_options=ort.SessionOptions()
        )
        assert all(np.array_equal(a, b) for a, b in zip(plain, fast.run(None, feeds), strict=True))
        assert all(
            np.array_equal(a, b) for a, b in zip(plain, ordinary.run(None, feeds), strict=True)
        )
        level0 = se.load_session(enc, key=key, level=0).run(None, feeds)
        assert np.array_equal(level0[0], ort_run(enc, feeds)[0])


def _graph_with(extra_inits, nodes, inputs) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32) / 10
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), *extra_inits],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=tm.IR_VERSION
    )


def test_unused_and_input_initializers_are_not_handed_over(make_encrypted) -> None:
    """ONNX Runtime drops unused initializers before replacing any: an error if handed."""
    unused = numpy_helper.from_array(np.ones((256, 64), np.float32), "unused")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 6, 6])
    model = _graph_with([unused], [helper.make_node("Conv", ["x", "w"], ["y"])], [x])
    also_input = _graph_with(
        [],
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 32, 3, 3])],
    )
    feeds = {"x": np.ones((1, 32, 6, 6), np.float32)}
    for m in (model, also_input):
        enc, key = make_encrypted(m, levels=2, budget=0.3)
        out = se.load_session(enc, key=key, providers=["CPUExecutionProvider"])
        assert np.array_equal(out.run(None, feeds)[0], ort_run(m, feeds)[0])


def test_tampered_model_is_refused_whichever_way_the_digest_runs(
    make_encrypted, monkeypatch
) -> None:
    enc, key = make_encrypted(tm.wide_cnn(width=48), levels=2, budget=0.3)
    model = onnx.load(enc)
    b1 = next(i for i in model.graph.initializer if i.name == "w1")
    b1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b1) * 1.01, "w1"))
    enc.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidBundle, match="modified after encryption"):
        se.load_session(enc, key=key)
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")  # the digest is checked first
    with pytest.raises(InvalidBundle, match="modified after encryption"):
        se.load_session(enc, key=key)


def test_session_options_of_the_caller_stay_untouched(make_encrypted) -> None:
    model = tm.wide_cnn(width=48)
    enc, key = make_encrypted(model, levels=2, budget=0.3)
    so = ort.SessionOptions()
    se.load_session(enc, key=key, sess_options=so, providers=["CPUExecutionProvider"])
    # The same options build the plain model: nothing of the restored model rides along.
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, tm.feeds(model))[0], ort_run(model, tm.feeds(model))[0])


# --- the >2 GB round trip ---------------------------------------------------------------
def _available_memory() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_model_over_2gb_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encrypt, inspect and load at every level a model whose weights exceed 2 GB.

    The model is a chain of four 3x3 convs at width 4096 (2.4 GB of external data);
    only the first two layers are encrypted, which keeps the run to a few minutes and
    still exercises every >2 GB path (external data in and out, restored tensors handed
    to ONNX Runtime in memory, unchanged ones read by it from the encrypted file).
    """
    from benchmarks.models import build_huge, huge_model_bytes

    size = huge_model_bytes()
    free = shutil.disk_usage(tmp_path).free
    if free < 8 * 2**30:
        pytest.skip(
            f"needs 8 GB of free disk for a 2.4 GB model and its encrypted copy, "
            f"{free / 2**30:.1f} GB free"
        )
    # The test run peaked at 14.6 GB with this test (6x the model): encrypting holds
    # the model, its masked copy and the self-check's restored one, beside the suite.
    if _available_memory() < 7 * size:
        pytest.skip(f"needs about {7 * size / 2**30:.0f} GiB of available memory")
    plain = build_huge(tmp_path / "plain")
    assert sum(p.stat().st_size for p in plain.parent.iterdir()) > 2**31
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = se.encrypt(
            plain,
            tmp_path / "enc" / "huge.enc.onnx",
            key_file=tmp_path / "owner.key",
            levels=2,
            budget=0.01,
            layers=["conv0.weight", "conv1.weight"],
            seed=0,
        )
    enc = result.model_files[0]
    assert [p.name for p in result.model_files] == ["huge.enc.onnx", "huge.enc.onnx.data"]
    # The graph and the sealed originals (1% of the weights, base64) only.
    assert enc.stat().st_size < size / 20
    report = se.inspect_model(enc)
    assert report.manifest is not None and report.manifest["levels"] == 2
    assert sum(layer.encrypted_kernels for layer in result.layers) > 0

    x = np.random.default_rng(0).standard_normal((1, 4096, 2, 2), dtype=np.float32)
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(str(plain), providers=cpu).run(None, {"input": x})[0]
    masked = ort.InferenceSession(str(enc), providers=cpu).run(None, {"input": x})[0]
    assert not np.allclose(masked, ref, atol=1e-3)
    for level in (0, 1, 2):
        out = se.load_session(enc, key=result.key_file, level=level, providers=cpu).run(
            None, {"input": x}
        )[0]
        if level == 2:
            assert np.array_equal(out, ref)  # bit for bit
        elif level == 0:
            assert np.array_equal(out, masked)
        else:
            assert not np.array_equal(out, ref)
    restored = se.restore_model(enc, key=result.key_file)
    assert restored.base_dir == enc.parent
    assert set(restored.external_initializers) == {"conv0.weight", "conv1.weight"}
    assert restored.model.ByteSize() < 2**20  # bundle removed, weights still external
    # Nothing new on disk: the encrypted files are all there is.
    assert sorted(p.name for p in enc.parent.iterdir()) == ["huge.enc.onnx", "huge.enc.onnx.data"]
    _data_file_is_read_once(monkeypatch, result.key_file, enc, {"input": x}, ref, masked)


def _data_file_is_read_once(
    monkeypatch: pytest.MonkeyPatch,
    key: Path,
    enc: Path,
    feeds: dict[str, np.ndarray],
    ref: np.ndarray,
    masked: np.ndarray,
) -> None:
    """Past protobuf's 2 GB every weight must reach ONNX Runtime in memory, at every level
    (at level 0 nothing is restored, and ONNX Runtime used to map the file then)."""
    data = enc.with_name(enc.name + ".data")
    aside = data.with_name(data.name + ".aside")
    moved: list[bool] = []

    def move_aside() -> None:
        if not moved[-1]:
            moved[-1] = True
            os.replace(data, aside)

    real_open = builtins.open

    def watched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if isinstance(file, str | os.PathLike) and Path(file).resolve() == data.resolve():
            return _Watched(fh, move_aside)
        return fh

    cpu = ["CPUExecutionProvider"]
    loads = {
        0: lambda: se.load_session(enc, key=key, level=0, providers=cpu),
        2: lambda: se.build_session(se.restore_model(enc, key=key), providers=cpu),
    }
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", watched_open)
        m.setattr(io, "open", watched_open)
        for level, load in loads.items():
            moved.append(False)
            session = load()
            assert moved[-1] and not data.exists()  # read once, then gone
            data.write_bytes(b"\0" * 4096)  # garbage where the weights were
            out = session.run(None, feeds)[0]
            del session
            os.replace(aside, data)
            assert np.array_equal(out, ref if level == 2 else masked)


# --- restoring in place while the digest is being computed -----------------------------
def _slow_hash(monkeypatch, delay: float) -> None:
    """Make the loader's background hashing start late (after the tensors are patched)."""
    import time

    real = _opened.hash_model

    def late(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(_opened, "hash_model", late)


@pytest.mark.parametrize("mode", ["hash_late", "hash_first", "inline"])
def test_in_place_restore_keeps_the_digest_right(mode: str, make_encrypted, monkeypatch) -> None:
    """Tensors restored in the file buffer before or after hashing: same tag, outputs."""
    monkeypatch.setattr(_stripped, "STRIP_THRESHOLD", 0)
    monkeypatch.setattr(_session, "_MEMORY_THRESHOLD", 0)
    monkeypatch.setattr(_digest, "_CHUNK", 64)  # several chunks per tensor, rows across them
    if mode == "hash_late":
        monkeypatch.setattr(_opened, "_INLINE_TAG_BYTES", 0)  # on a thread, as for big models
        _slow_hash(monkeypatch, 0.3)
    elif mode == "hash_first":
        monkeypatch.setattr(_opened, "_INLINE_TAG_BYTES", 0)
        monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")  # digest first, then patch
    for model in (tm.wide_cnn(width=48), tm.constant_nodes(), tm.cnn()):
        enc, key = make_encrypted(model, levels=3, budget=0.3)
        feeds = tm.feeds(model)
        out = se.load_session(enc, key=key, providers=["CPUExecutionProvider"])
        assert all(
            np.array_equal(a, b)
            for a, b in zip(ort_run(model, feeds), out.run(None, feeds), strict=True)
        )
