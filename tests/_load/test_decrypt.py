"""decrypt (issue 24.1-24.2): the owner key gives back the plain file byte for byte.

Each way a tensor can be stored (raw_data, float_data, fp16 bits in int32_data,
doc_string and explicit data_location, external data in one file, one file per tensor,
aligned, with entries in an unusual order), after encrypt and after rekey; tier keys
refused; outputs never over an existing file and all or nothing.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_selenc as se
from onnx_selenc._load import decrypt as _decrypt
from onnx_selenc._onnx.tensors import every_tensor
from onnx_selenc.exceptions import ByteIdentityWarning, FormatError, KeyFileError, KeyMismatch
from tests import tiny_models as tm

LEVELS = 3
OPTIONS = se.EncryptOptions(levels=LEVELS, budget=0.2, seed=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor (initializers, Constant values, in subgraphs too) in its typed field,
    with a doc_string and an explicit location."""
    for t in every_tensor(model):
        a = numpy_helper.to_array(t)
        typed = helper.make_tensor(t.name, t.data_type, a.shape, a.ravel().tolist())
        typed.doc_string = f"weights of {t.name}"
        typed.data_location = TensorProto.DEFAULT
        t.CopyFrom(typed)
    return model


def _save_raw(model: onnx.ModelProto, folder: Path) -> list[Path]:
    onnx.save(model, folder / "model.onnx")
    return [folder / "model.onnx"]


def _save_typed(model: onnx.ModelProto, folder: Path) -> list[Path]:
    return _save_raw(_typed(model), folder)


def _save_one_file(model: onnx.ModelProto, folder: Path) -> list[Path]:
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    return [folder / "model.onnx", folder / "weights.bin"]


def _save_per_tensor(model: onnx.ModelProto, folder: Path) -> list[Path]:
    onnx.save(model, folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=256)  # fmt: skip
    return sorted(folder.iterdir())


def _save_open_ended(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """External data whose last tensor has no length entry (it runs to the file's end)
    and whose entries carry a checksum key."""
    files = _save_one_file(model, folder)
    saved = onnx.load(files[0], load_external_data=False)
    last = max(saved.graph.initializer, key=lambda t: int(dict(
        (e.key, e.value) for e in t.external_data)["offset"]))  # fmt: skip
    kept = [(e.key, e.value) for e in last.external_data if e.key != "length"]
    del last.external_data[:]
    for k, v in [*kept, ("checksum", "0" * 40)]:
        last.external_data.add(key=k, value=v)
    onnx.save(saved, files[0])
    return files


def _save_aligned(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """External data at 4 KiB boundaries (zeros between), entries as length, offset,
    location, and small tensors inline with an explicit DEFAULT location."""
    blob = bytearray()
    for t in model.graph.initializer:
        raw = numpy_helper.to_array(t).tobytes()
        if len(raw) < 256:
            t.data_location = TensorProto.DEFAULT
            continue
        offset = -(-len(blob) // 4096) * 4096
        blob += bytes(offset - len(blob)) + raw
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("length", str(len(raw))), ("offset", str(offset)), ("location", "w.bin")):
            t.external_data.add(key=k, value=v)
    (folder / "w.bin").write_bytes(bytes(blob))
    onnx.save(model, folder / "model.onnx")
    return [folder / "model.onnx", folder / "w.bin"]


def _fp16(seed: int = 3) -> onnx.ModelProto:
    """fp16 conv weights stored as bits in int32_data (what make_tensor writes)."""
    return _typed(tm.fp16_cast(seed))


STORAGES: dict[str, tuple[Callable[[], onnx.ModelProto], Callable[..., list[Path]]]] = {
    "raw_data": (tm.cnn, _save_raw),
    "float_data, doc_string, data_location": (tm.cnn, _save_typed),
    "fp16 in int32_data": (_fp16, _save_raw),
    "constant nodes": (tm.constant_nodes, _save_raw),
    "constant nodes, float_data": (tm.constant_nodes, _save_typed),
    "if branches": (tm.if_subgraph, _save_typed),
    "external data, one file": (tm.cnn, _save_one_file),
    "external data, one file per tensor": (tm.cnn, _save_per_tensor),
    "external data, aligned": (tm.cnn, _save_aligned),
    "external data, open-ended, checksum": (tm.cnn, _save_open_ended),
}


def _plain(tmp_path: Path, storage: str) -> list[Path]:
    make, save = STORAGES[storage]
    folder = tmp_path / "plain"
    folder.mkdir()
    return save(make(), folder)


def _encrypt(plain: Path, tmp_path: Path) -> tuple[Path, Path]:
    enc = tmp_path / "enc"
    enc.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ByteIdentityWarning)
        result = se.encrypt(plain, enc / "model.enc.onnx", key_file=enc / "owner.key",
                            options=OPTIONS)  # fmt: skip
    assert result.byte_identical and result.byte_identity_problem is None
    return result.model_files[0], result.key_file


def _assert_same_files(originals: list[Path], folder: Path) -> None:
    for original in originals:
        copy = folder / original.name
        assert copy.is_file(), f"{original.name} was not written"
        assert _sha(copy) == _sha(original), f"{original.name} differs from the original"


@pytest.mark.parametrize("storage", list(STORAGES))
def test_decrypt_gives_back_the_original_bytes(tmp_path: Path, storage: str) -> None:
    files = _plain(tmp_path, storage)
    enc, owner = _encrypt(files[0], tmp_path)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ByteIdentityWarning)
        result = se.decrypt(enc, out / "model.onnx", key=owner)
    assert result.byte_identical and result.problem is None
    assert result.sha256 == _sha(files[0])
    assert sorted(p.name for p in result.model_files) == sorted(p.name for p in files)
    _assert_same_files(files, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)


def test_the_encrypted_file_keeps_the_typed_fields(tmp_path: Path) -> None:
    (plain,) = _plain(tmp_path, "float_data, doc_string, data_location")
    enc, _ = _encrypt(plain, tmp_path)
    for t in onnx.load(enc).graph.initializer:
        assert t.float_data and not t.HasField("raw_data") and t.doc_string


def test_rekey_then_decrypt(tmp_path: Path) -> None:
    files = _plain(tmp_path, "external data, aligned")
    enc, owner = _encrypt(files[0], tmp_path)
    rekeyed = se.rekey(enc, tmp_path / "enc" / "new.onnx", key_file=owner,
                       new_key_file=tmp_path / "enc" / "new.key")  # fmt: skip
    out = tmp_path / "out"
    result = se.decrypt(rekeyed.model_files[0], out / "model.onnx", key=rekeyed.key_file)
    assert result.byte_identical
    _assert_same_files(files, out)
    with pytest.raises(KeyMismatch):
        se.decrypt(rekeyed.model_files[0], tmp_path / "x.onnx", key=owner)  # the old key


@pytest.mark.parametrize("level", [1, LEVELS])
def test_a_tier_key_is_refused(tmp_path: Path, level: int) -> None:
    (plain,) = _plain(tmp_path, "raw_data")
    enc, owner = _encrypt(plain, tmp_path)
    tier = tmp_path / f"tier{level}.key"
    se.export_key(owner, level, tier)
    with pytest.raises(ValueError, match=r"owner key.*tier keys, the top tier.s too, never"):
        se.decrypt(enc, tmp_path / "out.onnx", key=tier)
    assert not (tmp_path / "out.onnx").exists()


def test_an_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    (plain,) = _plain(tmp_path, "raw_data")
    enc, owner = _encrypt(plain, tmp_path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        se.decrypt(enc, out, key=owner)
    assert out.read_bytes() == b"mine"
    assert se.decrypt(enc, out, key=owner, overwrite=True).byte_identical
    assert _sha(out) == _sha(plain)


def test_an_existing_data_file_is_refused(tmp_path: Path) -> None:
    files = _plain(tmp_path, "external data, one file")
    enc, owner = _encrypt(files[0], tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"weights\.bin"):
        se.decrypt(enc, out / "model.onnx", key=owner)
    assert sorted(p.name for p in out.iterdir()) == ["weights.bin"]


def test_inputs_and_key_files_are_never_outputs(tmp_path: Path) -> None:
    (plain,) = _plain(tmp_path, "raw_data")
    enc, owner = _encrypt(plain, tmp_path)
    with pytest.raises(ValueError, match="input"):
        se.decrypt(enc, enc, key=owner, overwrite=True)
    with pytest.raises((ValueError, FileExistsError)):
        se.decrypt(enc, owner, key=owner, overwrite=True)
    assert se.read_key_file(owner).is_owner


def test_an_interrupted_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _plain(tmp_path, "external data, one file")
    enc, owner = _encrypt(files[0], tmp_path)
    out = tmp_path / "out"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # after the data file is written, before the model

    monkeypatch.setattr(_decrypt, "write_new_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        se.decrypt(enc, out / "model.onnx", key=owner)
    assert not out.exists() or not any(out.iterdir())


def test_a_file_that_does_not_reserialise_is_said_at_encrypt_and_decrypt(tmp_path: Path) -> None:
    model = tm.cnn()
    # A second doc_string record after the graph: parsed, but written back elsewhere.
    data = model.SerializeToString() + onnx.ModelProto(doc_string="late").SerializeToString()
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(data)
    with pytest.warns(ByteIdentityWarning, match="re-serialise"):
        result = se.encrypt(plain, tmp_path / "enc.onnx", key_file=tmp_path / "o.key",
                            options=OPTIONS)  # fmt: skip
    assert not result.byte_identical and "re-serialise" in (result.byte_identity_problem or "")
    with pytest.warns(ByteIdentityWarning, match="re-serialise"):
        out = se.decrypt(tmp_path / "enc.onnx", tmp_path / "out.onnx", key=tmp_path / "o.key")
    assert not out.byte_identical
    restored = onnx.load(tmp_path / "out.onnx")
    original = onnx.load(plain)
    for a, b in zip(original.graph.initializer, restored.graph.initializer, strict=True):
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


def test_stray_bytes_in_a_data_file_are_said_at_encrypt(tmp_path: Path) -> None:
    files = _plain(tmp_path, "external data, aligned")
    files[1].write_bytes(files[1].read_bytes() + b"trailing")  # no tensor refers to these
    with pytest.warns(ByteIdentityWarning, match="w.bin holds bytes that no tensor refers to"):
        result = se.encrypt(files[0], tmp_path / "enc.onnx", key_file=tmp_path / "o.key",
                            options=OPTIONS)  # fmt: skip
    assert not result.byte_identical
    with pytest.warns(ByteIdentityWarning, match="no tensor refers to"):
        out = se.decrypt(tmp_path / "enc.onnx", tmp_path / "out" / "m.onnx", key=tmp_path / "o.key")
    assert not out.byte_identical
    assert _sha(tmp_path / "out" / "m.onnx") == _sha(files[0])  # the model file itself is


def test_inlined_functions_are_said_at_encrypt(tmp_path: Path) -> None:
    (w,) = tm._weights(5, (8, 3, 3, 3))
    body = helper.make_function(
        "pkg", "Block", ["inp", "weight"], ["out"],
        [helper.make_node("Conv", ["inp", "weight"], ["out"], pads=[1, 1, 1, 1])],
        [helper.make_opsetid("", tm.OPSET)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Block", ["x", "w"], ["y"], domain="pkg")], "f", [tm.x_info()],
        [tm.y_info()], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(
        graph, functions=[body], ir_version=tm.IR_VERSION,
        opset_imports=[helper.make_opsetid("", tm.OPSET), helper.make_opsetid("pkg", 1)],
    )  # fmt: skip
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.warns(ByteIdentityWarning, match="inlined"):
        result = se.encrypt(tmp_path / "plain.onnx", tmp_path / "enc.onnx",
                            key_file=tmp_path / "o.key", options=OPTIONS)  # fmt: skip
    assert not result.byte_identical
    with pytest.warns(ByteIdentityWarning, match="inlined"):
        out = se.decrypt(tmp_path / "enc.onnx", tmp_path / "out.onnx", key=tmp_path / "o.key")
    assert not out.byte_identical and out.model_files == (tmp_path / "out.onnx",)


def test_a_model_encrypted_without_a_record(
    tmp_path: Path, make_encrypted: Callable[..., tuple[Path, Path]]
) -> None:
    """encrypt_model (the in-memory API) keeps no record of a file: the weights come back."""
    enc, owner = make_encrypted(tm.cnn(), levels=LEVELS, budget=0.2)
    with pytest.warns(ByteIdentityWarning, match="kept no record"):
        result = se.decrypt(enc, tmp_path / "out.onnx", key=owner)
    assert not result.byte_identical
    restored = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(result.model_files[0]).graph.initializer
    }
    for t in tm.cnn().graph.initializer:
        assert np.array_equal(restored[t.name], numpy_helper.to_array(t))


@pytest.mark.parametrize("name", ["", "../w.bin", "/tmp/w.bin", "a/../w.bin", "a\0b", "out/w.bin"])
def test_data_file_names_stay_in_the_output_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "dest"
    folder.mkdir()
    (folder / "out").symlink_to(tmp_path)  # a folder inside that leads outside
    with pytest.raises(FormatError):
        _decrypt._data_path(folder, name, folder / "model.onnx")


def test_a_data_file_named_as_the_output_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name of the output model"):
        _decrypt._data_path(tmp_path, "model.onnx", tmp_path / "model.onnx")


def test_restore_model_gives_the_original_model_in_memory(tmp_path: Path) -> None:
    """The owner's restore in memory is the plain model itself: the record of the file
    stays out of it, and it serialises to the plain file's bytes."""
    (plain,) = _plain(tmp_path, "float_data, doc_string, data_location")
    enc, owner = _encrypt(plain, tmp_path)
    assert "onnx_selenc.original" in {p.key for p in onnx.load(enc).metadata_props}
    restored = se.restore_model(enc, key=owner).model
    assert restored.SerializeToString() == plain.read_bytes()


def test_a_protected_owner_key(tmp_path: Path) -> None:
    (plain,) = _plain(tmp_path, "raw_data")
    enc, key = tmp_path / "enc.onnx", tmp_path / "owner.key"
    se.encrypt(plain, enc, key_file=key, options=OPTIONS, passphrase="pw")
    with pytest.raises(KeyFileError):
        se.decrypt(enc, tmp_path / "out.onnx", key=key)
    assert se.decrypt(enc, tmp_path / "out.onnx", key=key, passphrase="pw").byte_identical
    assert _sha(tmp_path / "out.onnx") == _sha(plain)
