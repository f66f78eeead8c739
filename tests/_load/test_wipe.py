"""Issue 25.5: once ONNX Runtime has its copy, the loader zeroes the plaintext it holds.

Before, the restored kernels stayed in the file buffer the loader read (restored in
place there) and in the decrypted payloads, freed but not cleared. The session must
still give the plain model's outputs bit for bit: ONNX Runtime copies what it is
handed (its own copy lives as long as the session; README says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc as se
from onnx_selenc._crypto import seal as _seal
from onnx_selenc._load import session as _session

CPU = ["CPUExecutionProvider"]


def _model() -> onnx.ModelProto:
    """A conv whose weight (73 KiB) goes to ONNX Runtime in memory, and a small one."""
    rng = np.random.default_rng(0)
    big = (rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32)
    small = (rng.standard_normal((8, 64, 1, 1)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "big"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "small"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wipe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _secrets(plain: onnx.ModelProto, public: onnx.ModelProto) -> list[bytes]:
    """The original bytes of every masked kernel (those the public file changed)."""
    found = []
    for p, q in zip(plain.graph.initializer, public.graph.initializer, strict=True):
        a = numpy_helper.to_array(p).reshape(-1, 9 if p.name == "big" else 1)
        b = numpy_helper.to_array(q).reshape(a.shape)
        found += [a[i].tobytes() for i in np.flatnonzero((a != b).any(axis=1)) if a.shape[1] > 1]
    return found


@pytest.mark.parametrize("external", [False, True])
def test_the_loader_zeroes_what_it_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
) -> None:
    plain = _model()
    onnx.save(plain, tmp_path / "plain.onnx")
    options = se.EncryptOptions(levels=2, budget=0.2, seed=0, external_data=external)
    result = se.encrypt(
        tmp_path / "plain.onnx", tmp_path / "m.enc.onnx", key_file=tmp_path / "owner.key",
        options=options,
    )  # fmt: skip
    public = onnx.load(result.model_files[0])
    secrets = _secrets(plain, public)
    assert secrets  # masked kernels of the big weight

    held: list[object] = []
    real_open, real_unseal = _session._open, _seal.open_sealed_into

    def spy_open(*args, **kwargs):
        opened = real_open(*args, **kwargs)
        held.append(opened)
        return opened

    def spy_unseal(*args, **kwargs):
        buffer = real_unseal(*args, **kwargs)
        held.append(buffer)
        return buffer

    monkeypatch.setattr(_session, "_open", spy_open)
    monkeypatch.setattr(_seal, "open_sealed_into", spy_unseal)
    session = se.load_session(result.model_files[0], key=result.key_file, providers=CPU)

    x = np.random.default_rng(1).standard_normal((1, 32, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(plain.SerializeToString(), providers=CPU).run(None, {"x": x})
    assert np.array_equal(session.run(None, {"x": x})[0], want[0])  # ORT kept its copy

    (opened,) = [h for h in held if not isinstance(h, bytearray)]
    payloads = [h for h in held if isinstance(h, bytearray)]
    assert len(payloads) == 2  # levels 1 and 2
    buffers = [bytes(opened.stripped.data), *map(bytes, payloads)]  # type: ignore[attr-defined]
    leaked = [i for i, s in enumerate(secrets) if any(s in b for b in buffers)]
    assert not leaked, f"{len(leaked)} of {len(secrets)} restored kernels left in memory"
    assert not any(any(p) for p in payloads)
