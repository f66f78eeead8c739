"""Issue 25.5: a package's JSON files and MLflow metadata share one key-material check.

``package --preprocess`` used to refuse only a key file's format marker: a raw 64-hex
key value passed (the MLflow metadata check refused it), and base64 passed both.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from onnx_selenc._crypto.secret_text import holds_key_text
from onnx_selenc._deploy.package import package
from onnx_selenc._deploy.registry import refuse_key_text
from tests import tiny_models

KEY = secrets.token_bytes(32)
SIGNING = secrets.token_bytes(32)
HIDDEN = {
    "hex": KEY.hex(),
    "upper-case hex": KEY.hex().upper(),
    "hex in a sentence": f"key={KEY.hex()};",
    "base64": base64.b64encode(KEY).decode(),
    "base64 unpadded": base64.b64encode(KEY).decode().rstrip("="),
    "base64url": base64.urlsafe_b64encode(KEY).decode(),
    "base64 key and signing key": base64.b64encode(KEY + SIGNING).decode(),
    "key file marker": 'format: "onnx-selenc-key"',
}
PUBLIC = {
    "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "a long identifier": "ResNet50PreprocessingWithCenterCropAndResizeToTwoTwentyFour",
    "a sentence": "Resize the shorter side to 256 pixels, then crop the centre 224x224.",
    "short base64": base64.b64encode(b"hello world").decode(),
}


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_preprocess_and_mlflow_refuse_key_material(
    make_encrypted, tmp_path: Path, name: str
) -> None:
    value = HIDDEN[name]
    assert holds_key_text(value)
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    for i, text in enumerate(
        [
            json.dumps({"note": value}),
            json.dumps({"note": value}, ensure_ascii=True).replace("a", "\\u0061"),
        ]
    ):
        pre = tmp_path / f"pre{i}.json"
        pre.write_text(text)
        with pytest.raises(ValueError, match="key material"):
            package(enc, tmp_path / "pkg", preprocess=pre)
        assert not (tmp_path / "pkg").exists()
    with pytest.raises(ValueError, match="key material"):
        refuse_key_text({"note": value})


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_ordinary_values_pass_both(make_encrypted, tmp_path: Path, name: str) -> None:
    value = PUBLIC[name]
    assert not holds_key_text(json.dumps(value))
    enc, _ = make_encrypted(tiny_models.cnn(), levels=2, budget=0.3)
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"value": value}))
    assert package(enc, tmp_path / "pkg", preprocess=pre).preprocessor_file is not None
    refuse_key_text({"value": value})
