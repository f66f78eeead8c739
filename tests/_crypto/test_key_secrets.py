"""Issue 25.4: no error message repeats key material, whatever is wrong with the key.

A key file whose ``key`` is upper-case hex used to print its first 40 characters (160
bits of the key); ``--key-env`` content and ``signing_key`` went the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx_selenc._cli.commands import main
from onnx_selenc._crypto.keys import (
    _check,
    key_file_bytes,
    key_from_env,
    new_owner_key,
    parse_key_file,
    read_key_file,
)
from onnx_selenc._deploy.serving_key import serving_key
from onnx_selenc.exceptions import KeyFileError, KeyNotConfigured
from tests import tiny_models as tm

OWNER = new_owner_key(3)
SECRETS = [OWNER.material.hex(), (OWNER.signing_key or b"").hex()]


def _leaks(text: str) -> list[str]:
    """Any 12-character piece of a secret, in either case, found in ``text``."""
    low = text.lower()
    return [s[i : i + 12] for s in SECRETS for i in range(0, 64 - 12) if s[i : i + 12] in low]


def _edited(field: str, change) -> bytes:
    """The owner key file with ``field`` changed and its check digest made to match, so
    that parsing reaches the field itself."""
    doc = json.loads(key_file_bytes(OWNER))
    doc[field] = change(doc[field])
    doc["check"] = _check(doc)
    return json.dumps(doc).encode()


EDITS = {
    "key upper-case": ("key", str.upper),
    "signing_key upper-case": ("signing_key", str.upper),
    "key one non-hex digit": ("key", lambda v: v[:-1] + "g"),
    "key truncated": ("key", lambda v: v[:40]),
    "key with a suffix": ("key", lambda v: v + "00"),
    "signing_key as a list": ("signing_key", lambda v: [v]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_bad_key_field_is_named_not_shown(edit: str, tmp_path: Path) -> None:
    field, change = EDITS[edit]
    data = _edited(field, change)
    with pytest.raises(KeyFileError, match=field) as info:
        parse_key_file(data)
    assert not _leaks(str(info.value))
    path = tmp_path / "bad.key"
    path.write_bytes(data)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert not _leaks(str(info.value))


def test_a_bad_wrapped_key_is_not_shown() -> None:
    doc = json.loads(key_file_bytes(OWNER, passphrase="pw"))
    doc["protected"]["wrapped"] = doc["protected"]["wrapped"].upper()
    doc["check"] = _check(doc)
    with pytest.raises(KeyFileError, match="wrapped key") as info:
        parse_key_file(json.dumps(doc).encode(), passphrase="pw")
    wrapped = doc["protected"]["wrapped"].lower()
    assert not any(wrapped[i : i + 12] in str(info.value).lower() for i in range(0, 148))


def test_key_env_content_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELENC_TEST_KEY", _edited("key", str.upper).decode())
    with pytest.raises(KeyFileError) as info:
        key_from_env("SELENC_TEST_KEY")
    assert not _leaks(str(info.value))
    with pytest.raises(KeyFileError) as info:
        serving_key(key_env="SELENC_TEST_KEY")
    assert not _leaks(str(info.value))
    # A raw key pasted where a key file's path belongs: "no such file" must not repeat it.
    for raw in (OWNER.material.hex(), OWNER.material.hex().upper()):
        monkeypatch.setenv("SELENC_TEST_KEY", raw)
        with pytest.raises(FileNotFoundError) as missing:
            key_from_env("SELENC_TEST_KEY")
        assert not _leaks(str(missing.value)) and not _leaks(str(missing.value.filename))
        with pytest.raises(KeyNotConfigured) as unset:
            serving_key(key_env="SELENC_TEST_KEY")
        assert not _leaks(str(unset.value))
    # A real path is still named, so the user can see which file is missing.
    monkeypatch.setenv("SELENC_TEST_KEY", "/no/such/dir/tier1.key")
    with pytest.raises(FileNotFoundError, match=r"/no/such/dir/tier1\.key"):
        key_from_env("SELENC_TEST_KEY")


@pytest.mark.parametrize("how", ["file", "env content", "env raw key"])
def test_the_command_line_never_prints_the_key(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(tm.cnn().SerializeToString())
    np.save(tmp_path / "x.npy", tm.feeds(tm.cnn())["x"])
    argv = ["run", str(model), "--input", str(tmp_path / "x.npy")]
    if how == "file":
        (tmp_path / "bad.key").write_bytes(_edited("key", str.upper))
        argv += ["--key", str(tmp_path / "bad.key")]
    else:
        value = _edited("key", str.upper).decode() if how == "env content" else SECRETS[0]
        monkeypatch.setenv("SELENC_TEST_KEY", value)
        argv += ["--key-env", "SELENC_TEST_KEY"]
    capsys.readouterr()
    assert main(argv) != 0
    out, err = capsys.readouterr()
    assert "error:" in err and not _leaks(out + err)


def test_a_key_written_as_a_number_is_not_shown() -> None:
    number = int.from_bytes(OWNER.material, "big")
    data = _edited("key", lambda v: 0).replace(b'"key": 0', f'"key": {number}'.encode())
    with pytest.raises(KeyFileError) as info:
        parse_key_file(data)
    assert str(number)[:12] not in str(info.value)
