"""The record of the plain file (issue 24.1): what it says, and a malformed one refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from onnx_selenc._onnx.original import (
    ORIGINAL_KEY,
    attach_record,
    parse_record,
    record_original,
    take_record,
)
from onnx_selenc.exceptions import FormatError
from tests import tiny_models as tm


def _external(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def test_record_of_a_model_with_external_data(tmp_path: Path) -> None:
    path = _external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    record = record_original(model, path)
    assert record.byte_identical and record.problem is None
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    (data,) = record.files
    assert (data.location, data.size) == ("w.bin", (tmp_path / "w.bin").stat().st_size)
    assert data.sha256 == hashlib.sha256((tmp_path / "w.bin").read_bytes()).hexdigest()
    assert len(record.tensors) == len(model.graph.initializer)
    assert all(t.external and dict(t.entries)["location"] == "w.bin" for t in record.tensors)
    assert parse_record(record.to_json()) == record


def test_the_record_travels_in_the_metadata_and_leaves_it(tmp_path: Path) -> None:
    path = _external(tmp_path)
    model = onnx.load(path, load_external_data=False)
    record = record_original(model, path)
    before = [(p.key, p.value) for p in model.metadata_props]
    attach_record(model, record)
    assert model.metadata_props[-1].key == ORIGINAL_KEY
    assert take_record(model) == record
    assert [(p.key, p.value) for p in model.metadata_props] == before
    assert take_record(model) is None


def test_two_records_are_refused(tmp_path: Path) -> None:
    model = tm.cnn()
    for _ in range(2):
        model.metadata_props.add(key=ORIGINAL_KEY, value="{}")
    with pytest.raises(FormatError, match=r"2 onnx_selenc\.original entries"):
        take_record(model)


def _doc(**changes: object) -> str:
    doc: dict[str, object] = {
        "format": "onnx-selenc-original", "version": 1, "sha256": "00", "tensor_count": 3,
        "tensors": [[0, 1, [["location", "w.bin"], ["offset", "0"]]]],
        "files": [["w.bin", 4, "00"]], "problem": None,
    }  # fmt: skip
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        _doc(format="other"),
        _doc(version=2),
        _doc(version=True),
        _doc(tensor_count=-1),
        _doc(tensor_count=1.5),
        _doc(tensors=[[0, 1, [["location", 3]]]]),
        _doc(tensors=[[0, 1, [["offset", "x"]]]]),
        _doc(tensors=[[0, 1]]),
        _doc(files=[["w.bin", "4", "00"]]),
        _doc(problem=7),
        _doc(extra=1),
    ],
)
def test_a_malformed_record_is_a_format_error(text: str) -> None:
    with pytest.raises(FormatError):
        parse_record(text)
    assert parse_record(_doc()).files[0].location == "w.bin"  # the well-formed one parses


def test_a_text_format_model_is_said_not_to_come_back(tmp_path: Path) -> None:
    path = tmp_path / "m.textproto"
    onnx.save(tm.cnn(), path, format="textproto")
    record = record_original(onnx.load(path), path)
    assert not record.byte_identical and "textproto text form" in (record.problem or "")
