"""Restored weights never touch disk, and options that would write them are refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_selenc as se
from onnx_selenc._crypto.keys import write_key_file
from onnx_selenc._encrypt.files import encrypt_model
from onnx_selenc.exceptions import UnsafeSessionOptions
from tests import tiny_models as tm


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_no_plaintext_written_anywhere(tmp_path: Path, monkeypatch) -> None:
    model = tm.wide_cnn()
    enc = encrypt_model(
        onnx.load_from_string(model.SerializeToString()), levels=2, budget=0.2, seed=0
    )
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    enc_path = work / "m.enc.onnx"
    enc_path.write_bytes(enc.model.SerializeToString())
    key = write_key_file(work / "owner.key", enc.owner_key)
    # Secret needles: the original bytes of every encrypted kernel.
    needles = [
        layer.originals[i].tobytes() for layer in enc.masked for i in range(len(layer.kernels))
    ]
    assert needles and all(n not in enc_path.read_bytes() for n in needles)

    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp))
    before = set(_files(work, tmp))
    sess = se.load_session(enc_path, key=key)
    sess.run(None, tm.feeds(model))
    after = _files(work, tmp)
    assert set(after) == before  # nothing new was written
    for path in after:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"plaintext kernel found in {path}"


def test_optimized_model_filepath_is_refused(make_encrypted, tmp_path: Path) -> None:
    enc, key = make_encrypted(tm.cnn())
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "dump.onnx")
    with pytest.raises(UnsafeSessionOptions, match="optimized_model_filepath"):
        se.load_session(enc, key=key, sess_options=so)
    assert not (tmp_path / "dump.onnx").exists()


def test_ep_context_dump_is_refused(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    so = ort.SessionOptions()
    so.add_session_config_entry("ep.context_enable", "1")
    with pytest.raises(UnsafeSessionOptions, match=r"ep\.context_enable"):
        se.load_session(enc, key=key, sess_options=so)


def test_engine_cache_provider_option_is_refused(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    providers = [
        ("TensorrtExecutionProvider", {"trt_engine_cache_enable": True}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(UnsafeSessionOptions, match="trt_engine_cache_enable"):
        se.load_session(enc, key=key, providers=providers)


def test_user_session_options_are_honoured(make_encrypted) -> None:
    model = tm.cnn()
    enc, key = make_encrypted(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    out = se.load_session(enc, key=key, sess_options=so, providers=["CPUExecutionProvider"])
    feeds = tm.feeds(model)
    from tests.conftest import ort_run

    assert np.array_equal(out.run(None, feeds)[0], ort_run(model, feeds)[0])


def test_default_providers_are_available_ones(make_encrypted) -> None:
    enc, key = make_encrypted(tm.cnn())
    sess = se.load_session(enc, key=key)
    assert set(sess.get_providers()) <= set(ort.get_available_providers())
    assert "CPUExecutionProvider" in sess.get_providers()


def test_key_file_permissions_after_cli_export(tmp_path: Path) -> None:
    from onnx_selenc._cli.commands import main

    plain = tmp_path / "m.onnx"
    onnx.save(tm.cnn(), plain)
    assert (
        main(
            [
                "encrypt",
                str(plain),
                "-o",
                str(tmp_path / "e.onnx"),
                "--keys",
                str(tmp_path / "o.key"),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(["export-key", str(tmp_path / "o.key"), "--level", "1", "-o", str(tmp_path / "t.key")])
        == 0
    )
    assert os.stat(tmp_path / "t.key").st_mode & 0o777 == 0o600
