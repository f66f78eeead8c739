"""The stripped parse (the wire-format reader) gives back the exact model, its digest
straight from the file buffer equals the reference, and malformed bytes are errors."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnx_selenc._crypto import bundle as _bundle
from onnx_selenc._crypto import digest as _digest
from onnx_selenc._onnx import stripped as _stripped
from onnx_selenc.exceptions import FormatError
from tests import tiny_models as tm
from tests.digest_reference import DIGEST_CASES as _DIGEST_CASES
from tests.digest_reference import reference_digest


@pytest.mark.parametrize("name", sorted(_DIGEST_CASES))
@pytest.mark.parametrize("threshold", [0, 1 << 16])
def test_stripped_parse_gives_the_model_back(
    name: str, threshold: int, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(_stripped, "STRIP_THRESHOLD", threshold)
    model = _DIGEST_CASES[name]()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    stripped = _stripped.read_stripped(path)
    assert all(not t.HasField("raw_data") for t in stripped.tensors)
    if threshold == 0 and name == "wide":
        assert stripped.tensors  # the cut really happens
    # The digest straight from the buffer equals the reference.
    skeleton, sources = _digest.prepare_digest(
        stripped.model, tmp_path, exclude_metadata=_bundle.BUNDLE_KEYS, raw_of=stripped.raw
    )
    twin = onnx.load(path)
    assert _digest.hash_model(skeleton, sources, tmp_path) == reference_digest(
        twin, tmp_path, exclude_metadata=_bundle.BUNDLE_KEYS
    )
    stripped.restore_raw_data()
    assert stripped.model.SerializeToString(deterministic=True) == twin.SerializeToString(
        deterministic=True
    )


def test_malformed_bytes_are_format_errors(tmp_path: Path) -> None:
    data = tm.wide_cnn(width=48).SerializeToString()
    for cut in (len(data) // 2, len(data) - 3, 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            _stripped.read_stripped(path)
