"""Malformed files raise a documented error, never anything else (issue 11).

Property-based tests (hypothesis) over every reader of untrusted bytes: the manifest
parser, the level payload decoder, the key-file parser, the protobuf wire reader,
external-data locations, and whole encrypted models with bytes flipped, inserted,
deleted or cut off. Each either succeeds (a mutated model then gives exactly the
outputs the right key gives) or raises a ``SelencError`` subclass. Then one
regression test per exception the fuzzer once found escaping.

Examples are random per run (a failure prints the example that reproduces it) and
nothing is written into the repository (``database=None``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from onnx_selenc._cli.commands import main
from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import digest as _digest
from onnx_selenc._crypto import keys as _keys
from onnx_selenc._crypto.keys import LevelKey, key_from_env, new_owner_key, parse_key_file
from onnx_selenc._deploy.inspect import format_report, inspect_model
from onnx_selenc._encrypt.files import encrypt_model
from onnx_selenc._load.loader import load_session, restore_model
from onnx_selenc._onnx import modelio as _modelio
from onnx_selenc._onnx import stripped as _stripped
from onnx_selenc._onnx import tensors as _tensors
from onnx_selenc.exceptions import (
    FormatError,
    InvalidBundle,
    KeyFileError,
    NotEncrypted,
    SelencError,
    UnsupportedModel,
)
from tests import tiny_models as tm

CPU = ["CPUExecutionProvider"]
# Hypothesis keeps caches in ./.hypothesis (even with database=None): not in the checkout.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "onnx-selenc-hypothesis"))


def fuzz(examples: int) -> settings:
    """Settings of one fuzz test: bounded, no deadline (a shared 2-core machine), no
    example database written into the checkout."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- JSON values and the raw tokens json.dumps never writes ----------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
RAW_TOKENS = [
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 30,
    "[" * 3000 + "]" * 3000, '"\\ud800"', "1.0", "true", '"3"', "-0", "1E2", "{}",
    '{"a":1,"a":2}',
]  # fmt: skip
_HOLE = "\x00hole"


def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document a value can be put (the root excluded)."""
    out = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _put(doc: object, path: tuple, value: object) -> object:
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


@st.composite
def mutated_json(draw, doc: dict) -> tuple[object, bytes]:
    """A document with one value replaced: by any JSON value, or by a raw token.

    Returns the document as Python sees it (with ``_HOLE`` where a raw token went) and
    its bytes.
    """
    path = draw(st.sampled_from(_paths(doc)))
    if draw(st.booleans()):
        new = _put(doc, path, draw(json_values))
        return new, json.dumps(new, separators=(",", ":")).encode()
    new = _put(doc, path, _HOLE)
    text = json.dumps(new, separators=(",", ":"))
    return new, text.replace(json.dumps(_HOLE), draw(st.sampled_from(RAW_TOKENS))).encode()


# --- one small encrypted model, shared by the tests of this module ---------------------
@dataclass(frozen=True, repr=False)
class Sample:
    folder: Path
    data: bytes
    key: LevelKey
    feeds: dict[str, np.ndarray]
    reference: list[np.ndarray]
    plain: dict[str, np.ndarray]
    manifest: bytes
    spans: list[tuple[int, int]]  # where mutations matter most: manifest, sealed, header

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Sample({self.folder})"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    folder = tmp_path_factory.mktemp("fuzz")
    plain = tm.cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = encrypt_model(tm.cnn(), levels=2, budget=0.2, seed=0)
    data = result.model.SerializeToString()
    (folder / "enc.onnx").write_bytes(data)
    feeds = tm.feeds(plain)
    reference = load_session(folder / "enc.onnx", key=result.owner_key, providers=CPU).run(
        None, feeds
    )
    manifest = next(
        p.value for p in result.model.metadata_props if p.key == _bundle.MANIFEST_KEY
    ).encode()
    sealed = next(
        p.value for p in result.model.metadata_props if p.key == _bundle.SEALED_KEY
    ).encode()
    spans = [(0, len(data)), (0, 64)]
    for text in (manifest, manifest, sealed):  # the manifest twice: its parser is the target
        start = data.index(text)
        spans.append((start, start + len(text)))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    return Sample(folder, data, result.owner_key, feeds, reference, weights, manifest, spans)


@st.composite
def mutated_bytes(draw, data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``data`` with 1-3 edits (flip, set, insert, delete, cut), each in one of ``spans``.

    Edits in place are drawn twice as often: they keep the protobuf framing, so they
    reach the manifest parser, the key checks and the tag check, not only the parser.
    """
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        lo, hi = draw(st.sampled_from(spans))
        hi = min(hi, len(buf))
        if hi <= lo:
            continue
        pos = draw(st.integers(lo, hi - 1))
        kind = draw(st.sampled_from(["flip", "set", "flip", "set", "insert", "delete", "cut"]))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        else:
            del buf[pos:]
    return bytes(buf)


# --- whole encrypted models ------------------------------------------------------------
@fuzz(120)
@given(st.data())
def test_mutated_model_loads_exactly_or_fails_cleanly(sample: Sample, data) -> None:
    blob = data.draw(mutated_bytes(sample.data, sample.spans))
    path = sample.folder / "mutated.onnx"
    path.write_bytes(blob)
    try:
        session = load_session(path, key=sample.key, providers=CPU)
    except SelencError:
        return
    outputs = session.run(None, sample.feeds)
    assert [o.tobytes() for o in outputs] == [r.tobytes() for r in sample.reference]


@fuzz(60)
@given(st.data())
def test_mutated_model_restores_exactly_or_fails_cleanly(sample: Sample, data) -> None:
    blob = data.draw(mutated_bytes(sample.data, sample.spans))
    path = sample.folder / "mutated_restore.onnx"
    path.write_bytes(blob)
    try:
        restored = restore_model(path, key=sample.key)
    except SelencError:
        return
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in restored.model.graph.initializer}
    assert weights.keys() == sample.plain.keys()
    for name, value in sample.plain.items():
        assert weights[name].tobytes() == value.tobytes(), name


@pytest.fixture(scope="module")
def external_sample(sample: Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample model saved with external data: ``ext.onnx`` and ``ext.onnx.data``."""
    folder = tmp_path_factory.mktemp("fuzz_external")
    model = onnx.load_model_from_string(sample.data)
    _modelio.save_model(model, folder / "ext.onnx", external_data=True)
    assert (folder / "ext.onnx.data").is_file()
    return folder


@fuzz(60)
@given(st.data(), st.sampled_from(["ext.onnx", "ext.onnx.data"]))
def test_mutated_external_model_loads_exactly_or_fails_cleanly(
    sample: Sample, external_sample: Path, data, which: str
) -> None:
    folder = sample.folder / "external_mutated"
    folder.mkdir(exist_ok=True)
    for name in ("ext.onnx", "ext.onnx.data"):
        original = (external_sample / name).read_bytes()
        if name == which:
            original = data.draw(mutated_bytes(original, [(0, len(original))]))
        (folder / name).write_bytes(original)
    try:
        session = load_session(folder / "ext.onnx", key=sample.key, providers=CPU)
    except SelencError:
        return
    outputs = session.run(None, sample.feeds)
    assert [o.tobytes() for o in outputs] == [r.tobytes() for r in sample.reference]


# --- the manifest ----------------------------------------------------------------------
@fuzz(300)
@given(st.data())
def test_manifest_parser_refuses_what_the_schema_does_not_allow(sample: Sample, data) -> None:
    _, raw = data.draw(mutated_json(json.loads(sample.manifest)))
    try:
        manifest = _bundle.parse_manifest(raw)
    except FormatError:
        return
    # Accepted: then every number is a true integer in range, nothing coerced.
    assert type(manifest.levels) is int and 1 <= manifest.levels <= 255
    for offset, length in manifest.blobs:
        assert type(offset) is int and type(length) is int and offset >= 0 and length >= 0
    assert all(type(w) is int and w >= 0 for w in manifest.level_weights)
    assert manifest.as_dict() == json.loads(raw)


@fuzz(150)
@given(
    st.binary(max_size=300)
    | st.builds(lambda s: s.encode("utf-8", "surrogatepass"), st.text(max_size=100))
)
def test_manifest_parser_on_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(FormatError):
        _bundle.parse_manifest(raw)


@fuzz(100)
@given(st.data())
def test_read_bundle_on_mutated_metadata(sample: Sample, data) -> None:
    original = onnx.load_model_from_string(sample.data)
    sealed = next(p.value for p in original.metadata_props if p.key == _bundle.SEALED_KEY)
    manifest = data.draw(mutated_bytes(sample.manifest, [(0, len(sample.manifest))]))
    sealed_raw = data.draw(mutated_bytes(sealed.encode(), [(0, len(sealed))]))
    with contextlib.suppress(FormatError):
        _bundle.read_bundle(onnx.ModelProto.FromString(_rebuild_metadata(manifest, sealed_raw)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def _entry(key: bytes, value: bytes) -> bytes:
    """One StringStringEntryProto on the wire, any bytes for key and value."""
    body = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value
    return _varint(len(body)) + body


def _rebuild_metadata(manifest: bytes, sealed: bytes) -> bytes:
    """A ModelProto holding only the two bundle entries (metadata_props is field 14)."""
    return b"".join(
        b"\x72" + _entry(k.encode(), v)
        for k, v in ((_bundle.MANIFEST_KEY, manifest), (_bundle.SEALED_KEY, sealed))
    )


# --- the level payload -----------------------------------------------------------------
MAGICS = sorted({_bundle.encode_payload([])[:8], b"SELENCP1"})
dtype_names = st.sampled_from(
    [
        "float32",
        "float16",
        "int8",
        "uint8",
        "float64",
        "object",
        "V8",
        "f4,f4",
        "<f4",
        "S3",
        "bool",
        "complex64",
        "",
    ]
)
dims = st.integers(-3, 6) | st.integers(2**31, 2**63) | st.just(True) | st.just(2.0)
entries = (
    st.fixed_dictionaries(
        {
            "key": st.text(max_size=8) | st.integers(),
            "dtype": dtype_names | json_values,
            "shape": st.lists(dims, max_size=5) | json_values,
            "count": st.integers(-2, 6) | st.integers(2**40, 2**63) | json_values,
            "offset": st.integers(-9, 200) | json_values,
        },
        optional={"extra": json_values},
    )
    | st.fixed_dictionaries(  # a mask entry: one bit per kernel instead of int64 indices
        {
            "key": st.text(max_size=8) | st.integers(),
            "dtype": dtype_names | json_values,
            "shape": st.lists(dims, max_size=5) | json_values,
            "mask": st.integers(-2, 6) | st.integers(2**40, 2**63) | json_values,
            "offset": st.integers(-9, 200) | json_values,
        },
        optional={"extra": json_values},
    )
    | json_values
)


@fuzz(300)
@given(
    st.sampled_from(MAGICS),
    st.lists(entries, max_size=4),
    st.binary(max_size=200),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_payload_decoder_raises_only_format_errors(
    magic: bytes, table: list, body: bytes, length: int | None
) -> None:
    head = json.dumps(table).encode()
    n = len(head) if length is None else length
    data = magic + struct.pack("<Q", n) + head + body
    try:
        patches = _bundle.decode_payload(data)
    except (FormatError, InvalidBundle):
        return
    for p in patches:
        assert p.kernels.shape == (len(p.kernels),) and p.values.shape[0] == len(p.kernels)
        assert p.values.dtype.name == p.dtype


@fuzz(150)
@given(st.sampled_from(MAGICS), st.binary(max_size=300))
def test_payload_decoder_on_arbitrary_bytes(magic: bytes, rest: bytes) -> None:
    for data in (rest, magic + rest):
        with contextlib.suppress(FormatError, InvalidBundle):
            _bundle.decode_payload(data)


# --- key files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key_doc() -> dict:
    return json.loads(_keys.key_file_bytes(new_owner_key(3)))


@pytest.fixture(scope="module")
def protected_doc() -> dict:
    return json.loads(_keys.key_file_bytes(new_owner_key(2), passphrase="pw"))


@fuzz(300)
@given(st.data())
def test_key_file_fields_are_type_checked(key_doc: dict, protected_doc: dict, data) -> None:
    doc, raw = data.draw(mutated_json(data.draw(st.sampled_from([key_doc, protected_doc]))))
    if _HOLE not in json.dumps(doc) and isinstance(doc, dict):
        # Re-sign the edit so that the type checks, not the check digest, must catch it.
        doc = {k: v for k, v in doc.items() if k != "check"}
        doc["check"] = _keys._check(doc)
        raw = json.dumps(doc).encode()
    try:
        key = parse_key_file(raw)  # no passphrase: a protected key stops before scrypt
    except KeyFileError:
        return
    assert type(key.level) is int and type(key.levels) is int and 0 <= key.level <= key.levels


@fuzz(150)
@given(st.binary(max_size=400))
def test_key_file_parser_on_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(KeyFileError):
        parse_key_file(raw)


def _env_safe(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@fuzz(100)
@given(
    st.text(max_size=80).filter(_env_safe)
    | st.binary(max_size=80).map(os.fsdecode).filter(_env_safe)
)
def test_key_from_env_content_raises_only_key_file_errors(text: str) -> None:
    env = {"SELENC_FUZZ_KEY": "{" + text}
    with mock.patch.dict(os.environ, env), contextlib.suppress(KeyFileError):
        key_from_env("SELENC_FUZZ_KEY")


# --- the protobuf wire reader ----------------------------------------------------------
@fuzz(200)
@given(st.data())
def test_wire_reader_is_faithful_or_refuses(sample: Sample, data) -> None:
    source = data.draw(st.sampled_from([sample.data, tm.constant_nodes().SerializeToString()]))
    blob = data.draw(mutated_bytes(source, [(0, len(source))]) | st.binary(max_size=200))
    with mock.patch.object(_stripped, "STRIP_THRESHOLD", 64):
        with contextlib.suppress(_stripped._Irregular):
            _stripped._strip(blob)
        path = sample.folder / "wire.onnx"
        path.write_bytes(blob)
        try:
            stripped = _stripped.read_stripped(path)
        except FormatError:
            return
    # What the wire reader kept out is exactly what a plain parse holds.
    for t in stripped.tensors:
        start, stop = stripped.span(t)
        assert 0 <= start <= stop <= len(blob)
    stripped.restore_raw_data()
    assert stripped.model == _modelio.parse_model(blob, path)


@fuzz(120)
@given(st.data())
def test_inspect_reads_a_mutated_model_or_refuses_it(sample: Sample, data) -> None:
    """``inspect`` walks the graph of any model, encrypted or plain, without a key."""
    source = data.draw(st.sampled_from([sample.data, tm.if_subgraph().SerializeToString()]))
    path = sample.folder / "inspect.onnx"
    path.write_bytes(data.draw(mutated_bytes(source, [(0, len(source))])))
    with contextlib.suppress(FormatError, NotEncrypted, UnsupportedModel):
        format_report(inspect_model(path))


@fuzz(60)
@given(st.data())
def test_encrypt_of_a_mutated_plain_model_restores_or_refuses(sample: Sample, data) -> None:
    """``encrypt`` of any bytes: a documented refusal with nothing written, or an output
    its own self-check proved restorable (it found models ONNX Runtime cannot load
    being blamed on onnx-selenc)."""
    from onnx_selenc import encrypt

    source = data.draw(st.sampled_from([tm.cnn().SerializeToString(),
                                        tm.if_subgraph().SerializeToString()]))  # fmt: skip
    folder = Path(tempfile.mkdtemp(dir=sample.folder))
    (folder / "p.onnx").write_bytes(data.draw(mutated_bytes(source, [(0, len(source))])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            encrypt(folder / "p.onnx", folder / "e.onnx", key_file=folder / "k", levels=2,
                    budget=0.2)  # fmt: skip
        except (FormatError, UnsupportedModel, ValueError):  # SelfCheckFailed is a failure
            assert sorted(p.name for p in folder.iterdir()) == ["p.onnx"]
            return
    assert restore_model(folder / "e.onnx", key=folder / "k").level == 2


def test_model_text_that_is_not_utf8_is_a_format_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(tm.cnn().SerializeToString().replace(b"Conv", b"C\xffnv", 1))
    with pytest.raises(FormatError, match="op_type is not UTF-8"):  # was TypeError
        inspect_model(path)
    assert main(["inspect", str(path)]) == 6
    assert capsys.readouterr().err.startswith("error: FormatError: ")


# --- external data locations -----------------------------------------------------------
@pytest.fixture(scope="module")
def external_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("external")
    base = root / "model"
    (base / "sub").mkdir(parents=True)
    (base / "w.bin").write_bytes(bytes(100))
    (root / "outside.bin").write_bytes(bytes(100))
    (base / "link").symlink_to(root / "outside.bin")
    (base / "loop").symlink_to(base / "loop")
    return base


locations = st.sampled_from(
    [
        b"w.bin",
        b"../outside.bin",
        b"link",
        b"loop",
        b"sub",
        b"sub/../w.bin",
        b"/etc/passwd",
        b"missing.bin",
        b"w.bin\x00x",
        b"x" * 5000,
        b"",
        b"w.bin\xff",
        b"\xc3(",
    ]
) | st.binary(max_size=12)
numbers = (
    st.sampled_from(
        [
            b"0",
            b"10",
            b"100",
            b"101",
            b"-1",
            b"+5",
            b" 5",
            b"1_0",
            b"\xd9\xa3",
            b"1e2",
            b"9" * 5000,
            b"\xff",
        ]
    )
    | st.integers(0, 2**65).map(lambda n: str(n).encode())
    | st.binary(max_size=4)
)


@fuzz(250)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"location", b"offset", b"length", b"checksum", b"loc\xffation"]),
            locations | numbers,
        ),
        max_size=4,
    ),
    st.integers(0, 20),
    st.lists(st.integers(-3, 40), max_size=3),
)
def test_external_locations_raise_only_format_errors(
    external_folder: Path, entries: list, data_type: int, shape: list
) -> None:
    # The entries go in on the wire: protobuf refuses bytes that are not UTF-8 through
    # its API, but a file can hold them (it then hands them over as bytes).
    wire = b"".join(b"\x6a" + _entry(k, v) for k, v in entries)  # external_data = 13
    tensor = onnx.TensorProto.FromString(wire)
    tensor.name = "t"
    tensor.data_type = data_type
    tensor.dims.extend(shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    try:
        info = _tensors.external_info(tensor, external_folder)
    except FormatError:
        pass
    else:
        assert info.path.parent == external_folder.resolve()
        size = info.path.stat().st_size
        assert 0 <= info.offset <= size and (
            info.length is None or info.offset + info.length <= size
        )
    for read in (_digest._resolve_external, _modelio.external_files):
        with contextlib.suppress(FormatError):
            read(tensor if read is _digest._resolve_external else _holding(tensor), external_folder)


def _holding(tensor: onnx.TensorProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.graph.initializer.add().CopyFrom(tensor)
    return model


# --- regressions: one per exception that once escaped ----------------------------------
def _with_manifest(sample: Sample, manifest: bytes, folder: Path) -> Path:
    """The sample model with its manifest replaced by any bytes (even invalid UTF-8)."""
    model = onnx.load_model_from_string(sample.data)
    sealed = next(p.value for p in model.metadata_props if p.key == _bundle.SEALED_KEY)
    _bundle.strip(model)
    path = folder / "edited.onnx"
    path.write_bytes(model.SerializeToString() + _rebuild_metadata(manifest, sealed.encode()))
    return path


def _manifest_with(sample: Sample, old: bytes, new: bytes) -> bytes:
    assert sample.manifest.count(old) == 1
    return sample.manifest.replace(old, new)


@pytest.mark.parametrize(
    "old,new,message",
    [
        (b'"levels":2', b'"levels":2\xff', "not ASCII"),  # was AttributeError
        (b'"levels":2', '"levels":2\u00e9'.encode(), "not ASCII"),
        (b'"levels":2', b'"levels":1e999', "out of range"),  # was OverflowError
        (b'"levels":2', b'"levels":' + b"9" * 5000, "too large"),  # was ValueError
        (b'"levels":2', b'"levels":NaN', "not a number"),
        (b'"levels":2', b'"levels":true', "must be an integer"),
        (b'"levels":2', b'"levels":2.0', "must be an integer"),
        (b'"level_weights":[0,', b'"level_weights":[false,', "must be an integer"),
        (b'"blobs":[[0,', b'"blobs":[[0.0,', "must be an integer"),
        (b'"blobs":[[0,28]', b'"blobs":[[0,true]', "must be an integer"),
        (b'"levels":2', b'"levels":2,"levels":2', "repeats a key"),
        (b'"tool":"', b'"tool":"\\ud800', "surrogate"),
    ],
)
def test_malformed_manifest_is_a_format_error(
    sample: Sample, tmp_path: Path, old: bytes, new: bytes, message: str
) -> None:
    path = _with_manifest(sample, _manifest_with(sample, old, new), tmp_path)
    with pytest.raises(FormatError, match=message):
        load_session(path, key=sample.key, providers=CPU)
    with pytest.raises(FormatError, match=message):
        restore_model(path, key=sample.key)


def test_deeply_nested_json_is_a_format_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # was RecursionError
    with pytest.raises(FormatError, match="nested"):
        _bundle.parse_manifest(deep)
    with pytest.raises(KeyFileError, match="nested"):
        parse_key_file(b"[" * 30_000 + b"]" * 30_000)
    table = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(FormatError, match="nested"):
        _bundle.decode_payload(MAGICS[-1] + struct.pack("<Q", len(table)) + table)
    # Within Python's recursion limit, but deeper than any file of ours nests.
    with pytest.raises(FormatError, match="nested more than"):
        _bundle.parse_manifest(b"[" * 100 + b"]" * 100)


def test_malformed_manifest_on_the_command_line(sample: Sample, tmp_path: Path, capsys) -> None:
    """One error line, FormatError's exit code, no traceback."""
    key = tmp_path / "owner.key"
    _keys.write_key_file(key, sample.key)
    np.save(tmp_path / "x.npy", sample.feeds["x"])
    for new in (b'"levels":1e999', b'"levels":' + b"9" * 5000, b'"levels":2\xff'):
        path = _with_manifest(sample, _manifest_with(sample, b'"levels":2', new), tmp_path)
        assert main(["inspect", str(path)]) == 6
        assert main(["run", str(path), "--key", str(key), "--input", str(tmp_path / "x.npy")]) == 6
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and all(line.startswith("error: FormatError: ") for line in err)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("version", 1.0, "version 1.0"),
        ("version", True, "version true"),
        ("level", 1.9, "'level' .* must be an integer"),
        ("level", True, "'level' .* must be an integer"),
        ("levels", "3", "'levels' .* must be an integer"),
        ("levels", 3.0, "'levels' .* must be an integer"),
        ("level", 4, "level 4 of a model with 3 levels"),
        ("key", 7, "'key' .* must be a string"),
        ("key_id", None, "'key_id' .* must be a string"),
        ("chain", "HKDF-SHA512", "key chain"),
    ],
)
def test_key_file_fields_are_not_coerced(key_doc: dict, field: str, value, message: str) -> None:
    doc = {k: v for k, v in key_doc.items() if k != "check"}
    doc[field] = value
    doc["check"] = _keys._check(doc)  # a valid check: the type check must catch it
    with pytest.raises(KeyFileError, match=message):
        parse_key_file(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "text,message",
    [
        ('"version":1e999', "out of range"),  # was OverflowError (in 'level' too)
        ('"level":1e999', "out of range"),
        ('"version":' + "1" * 5000, "too large"),  # was ValueError
        ('"level":-Infinity', "not a number"),
    ],
)
def test_key_file_numbers_json_allows_but_files_never_hold(
    key_doc: dict, text: str, message: str
) -> None:
    field = text.split(":")[0].strip('"')
    raw = json.dumps({**key_doc, field: _HOLE}).replace(json.dumps(_HOLE), text.split(":")[1])
    with pytest.raises(KeyFileError, match=message):
        parse_key_file(raw.encode())


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("n", 2**21, "scrypt n"),
        ("n", 1000, "out of range"),
        ("n", True, "scrypt n"),
        ("r", 0, "scrypt r"),
        ("p", 1.0, "scrypt p"),
        ("nonce", "00", "nonce"),
        ("wrapped", "zz", "wrapped"),
        ("kdf", "argon2", "unknown KDF"),
    ],
)
def test_protected_key_parameters_are_checked_before_scrypt(
    protected_doc: dict, field: str, value, message: str
) -> None:
    doc = {k: v for k, v in protected_doc.items() if k != "check"}
    doc["protected"] = {**doc["protected"], field: value}
    doc["check"] = _keys._check(doc)
    with pytest.raises(KeyFileError, match=message):
        parse_key_file(json.dumps(doc).encode(), passphrase="pw")


def test_key_from_env_with_undecodable_bytes() -> None:
    env = {"SELENC_FUZZ_KEY": os.fsdecode(b'{"format":"\xff"}')}
    with mock.patch.dict(os.environ, env), pytest.raises(KeyFileError, match="UTF-8"):
        key_from_env("SELENC_FUZZ_KEY")  # was UnicodeEncodeError


@pytest.fixture
def external_model(tmp_path: Path) -> tuple[Path, LevelKey]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = encrypt_model(tm.cnn(), levels=2, budget=0.2, seed=0)
    path = tmp_path / "ext.onnx"
    _modelio.save_model(result.model, path, external_data=True)
    return path, result.owner_key


def _set_location(path: Path, location: bytes) -> None:
    """Point every external tensor at ``location``, whatever bytes it is."""
    data = path.read_bytes()
    old = (
        b"\x0a\x08location\x12" + _varint(len(path.name + ".data")) + (path.name + ".data").encode()
    )
    assert old in data
    # Same length keeps every enclosing length prefix valid.
    assert len(location) == len(path.name + ".data")
    path.write_bytes(data.replace(old, old[: -len(location)] + location))


@pytest.mark.parametrize(
    "location,message",
    [
        (b"ext.onnx.dat\xff", "not a file name"),  # was TypeError (bytes from protobuf)
        (b"ext.onnx.dat\x00", "not a file name"),  # was ValueError (embedded NUL)
        (b"ext.onnx.zzzz", "missing"),  # was FileNotFoundError
        (b"../onnx.data", "outside the model folder"),
    ],
)
def test_corrupted_external_data_location_is_a_format_error(
    external_model: tuple[Path, LevelKey], location: bytes, message: str
) -> None:
    path, key = external_model
    _set_location(path, location.ljust(len(path.name + ".data"), b"a")[: len(path.name) + 5])
    with pytest.raises(FormatError, match=message):
        load_session(path, key=key, providers=CPU)
    with pytest.raises(FormatError, match=message):
        restore_model(path, key=key)


@pytest.mark.parametrize("offset", [b"+5", b" 5", b"1_0", "\u0663".encode(), b"9" * 30])
def test_external_offsets_are_plain_decimals(external_folder: Path, offset: bytes) -> None:
    wire = b"\x6a" + _entry(b"location", b"w.bin") + b"\x6a" + _entry(b"offset", offset)
    tensor = onnx.TensorProto.FromString(wire)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    with pytest.raises(FormatError, match="malformed"):
        _tensors.external_info(tensor, external_folder)


def test_external_tensor_without_length_needs_a_known_size(external_folder: Path) -> None:
    tensor = onnx.TensorProto(
        name="t", data_type=999, dims=[4], data_location=onnx.TensorProto.EXTERNAL
    )
    tensor.external_data.add(key="location", value="w.bin")
    with pytest.raises(FormatError, match="no known size"):  # was KeyError
        _digest._resolve_external(tensor, external_folder)
    tensor.data_type = onnx.TensorProto.FLOAT
    del tensor.dims[:]
    tensor.dims.extend([-4])
    with pytest.raises(FormatError, match="negative"):
        _digest._resolve_external(tensor, external_folder)


def test_metadata_that_is_not_utf8_is_a_format_error(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "meta.onnx"
    path.write_bytes(sample.data + b"\x72" + _entry(b"note", b"caf\xe9"))  # was ValueError
    with pytest.raises(FormatError, match="not valid UTF-8"):
        load_session(path, key=sample.key, providers=CPU)
