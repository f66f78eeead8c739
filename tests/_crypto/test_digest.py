"""The model digest equals its reference on every kind of model, inline or external,
and the patch gate lets the loader restore in place while the digest is hashing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import digest as _digest
from onnx_selenc.exceptions import FormatError
from tests import tiny_models as tm
from tests.digest_reference import DIGEST_CASES as _DIGEST_CASES
from tests.digest_reference import reference_digest


@pytest.mark.parametrize("name", sorted(_DIGEST_CASES))
def test_digest_equals_the_reference(name: str) -> None:
    model = _DIGEST_CASES[name]()
    twin = onnx.ModelProto.FromString(model.SerializeToString())
    excluded = frozenset({_bundle.MANIFEST_KEY})
    before = model.SerializeToString(deterministic=True)
    ours = _digest.model_digest(model, None, exclude_metadata=excluded)
    assert ours == reference_digest(twin, None, exclude_metadata=excluded)
    # Same side effects on the model as the original (it was re-saved after hashing).
    assert model.SerializeToString(deterministic=True) == twin.SerializeToString(deterministic=True)
    del before


def test_digest_of_external_data_equals_inline(tmp_path: Path) -> None:
    model = tm.wide_cnn(width=48)
    inline = _digest.model_digest(onnx.ModelProto.FromString(model.SerializeToString()), None)
    onnx.save(
        model,
        tmp_path / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    external = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert _digest.model_digest(external, tmp_path) == inline
    assert reference_digest(external, tmp_path) == inline
    (tmp_path / "m.onnx.data").write_bytes((tmp_path / "m.onnx.data").read_bytes()[:-4])
    with pytest.raises(FormatError):
        _digest.model_digest(external, tmp_path)


def test_gate_waits_for_a_region_being_hashed() -> None:
    import threading
    import time

    gate = _digest.PatchGate()
    buf = np.arange(64, dtype=np.float32)
    rows = buf.reshape(16, 4)
    gate._begin(0)  # the hasher is inside the region at offset 0
    done = threading.Event()

    def patch() -> None:
        gate.before_patch(0, rows, np.array([3]))
        rows[3] = -1
        done.set()

    worker = threading.Thread(target=patch)
    worker.start()
    time.sleep(0.1)
    assert not done.is_set() and rows[3, 0] == 12  # still waiting, nothing written
    gate._end(0)
    worker.join(5)
    assert done.is_set() and rows[3, 0] == -1
    # A region already hashed is patched at once; one not reached yet keeps its rows.
    gate.before_patch(0, rows, np.array([1]))
    gate.before_patch(64, rows, np.array([2, 5]))
    assert 0 not in gate._saved and gate._saved[64][0].tolist() == [2, 5]


def test_gated_hash_sees_the_original_rows(monkeypatch) -> None:
    monkeypatch.setattr(_digest, "_CHUNK", 40)  # 2 rows of 16 bytes per chunk
    data = bytearray(np.arange(48, dtype=np.float32).tobytes())  # 12 rows of 4 floats
    region = _digest.Region(memoryview(data), 16, 16 + 10 * 16)  # rows 1..10
    expected = _digest.hash_model(b"s", [region], None)
    gate = _digest.PatchGate()
    view = np.frombuffer(data, np.float32)[4:44].reshape(10, 4)
    changed = np.array([7, 0, 3, 4, 9])
    gate.before_patch(16, view, changed)
    view[changed] = -5.0
    assert _digest.hash_model(b"s", [region], None, gate=gate) == expected
    assert _digest.hash_model(b"s", [region], None) != expected  # the buffer did change
