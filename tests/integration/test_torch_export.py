"""A model exported by torch.onnx.export (external data, the exporter's default) round-trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_selenc as se
from tests.conftest import ort_run

torch = pytest.importorskip("torch")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=4),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(16, 8, 2, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


@pytest.mark.slow
def test_dynamo_export_with_external_data(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_net(), (x,), str(path), external_data=True, dynamo=True)
    assert (tmp_path / "net.onnx.data").exists()  # what the exporter writes by default
    result = se.encrypt(
        path,
        tmp_path / "net.enc.onnx",
        key_file=tmp_path / "owner.key",
        levels=3,
        budget=0.1,
        seed=0,
    )
    assert len(result.model_files) == 2
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    feeds = {name: x.numpy()}
    ref = ort_run(path, feeds)[0]
    np.testing.assert_allclose(ref, _net()(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(ort_run(result.model_files[0], feeds)[0], ref, atol=1e-3)
    top = se.load_session(result.model_files[0], key=result.key_file).run(None, feeds)[0]
    assert np.array_equal(top, ref)
