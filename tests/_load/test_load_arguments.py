"""Issue 25.5: the loader's public arguments are checked, and refused with one error.

Before: ``level=-1`` raised a bare ValueError, ``level=1.9`` (and ``level=True``)
loaded level 1, a dict as the key a TypeError from deep inside, provider options given
as a list an AttributeError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_selenc as se
from onnx_selenc.exceptions import InvalidArgument, SelencError
from tests import tiny_models as tm

CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("args")
    onnx.save(tm.cnn(), tmp / "plain.onnx")
    options = se.EncryptOptions(levels=3, budget=0.2, seed=0)
    result = se.encrypt(
        tmp / "plain.onnx", tmp / "m.enc.onnx", key_file=tmp / "owner.key", options=options
    )
    return result.model_files[0], result.key_file


BAD = {
    "level -1": {"level": -1},
    "level 1.9": {"level": 1.9},
    "level True": {"level": True},
    "level '1'": {"level": "1"},
    "key as a dict": {"key": {"key": "00" * 32}},
    "key as bytes": {"key": b"owner.key"},
    "passphrase as bytes": {"passphrase": b"pw"},
    "provider options as a list": {"providers": [(CPU, [("arena_extend_strategy", "x")])]},
    "providers as one string": {"providers": CPU},
    "a provider pair of three": {"providers": [(CPU, {}, {})]},
    "option names not strings": {"providers": [(CPU, {1: "x"})]},
    "allow_options as one string": {"allow_options": "trt_engine_cache_path"},
    "sess_options as a dict": {"sess_options": {"optimized_model_filepath": ""}},
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_load_session_refuses_bad_arguments(encrypted, name: str) -> None:
    enc, owner = encrypted
    kwargs = {"key": owner, "providers": [CPU], **BAD[name]}
    with pytest.raises(InvalidArgument) as info:
        se.load_session(enc, **kwargs)
    # One library error that is still the builtin a caller may catch.
    assert isinstance(info.value, SelencError | TypeError | ValueError)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    argument = next(iter(BAD[name]))
    assert argument in str(info.value)


@pytest.mark.parametrize("level", [-1, 1.9, True])
def test_restore_model_refuses_bad_levels(encrypted, level: object) -> None:
    enc, owner = encrypted
    with pytest.raises(InvalidArgument, match="level"):
        se.restore_model(enc, key=owner, level=level)  # type: ignore[arg-type]


def test_good_arguments_still_load(encrypted) -> None:
    enc, owner = encrypted
    assert se.restore_model(enc, key=owner, level=np.int64(1)).level == 1  # type: ignore[arg-type]
    session = se.load_session(
        enc, key=owner, level=2, providers=((CPU, {}),), allow_options=frozenset()
    )
    assert session.get_providers() == [CPU]
    restored = se.restore_model(enc, key=owner, level=0)
    with pytest.raises(InvalidArgument, match="providers"):
        se.build_session(restored, providers=[(CPU, ["x"])])  # type: ignore[list-item]
    assert se.build_session(restored, providers=[CPU], sess_options=ort.SessionOptions())
