"""Smoke test of the block-wise sample pipeline with tiny settings (train, export, encrypt)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_sample_pipeline_tiny(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tqdm")
    from samples._report import update_section
    from samples.blockwise.run import measure, render

    begin, end = "<!-- blockwise:begin -->", "<!-- blockwise:end -->"
    from samples.blockwise.train import TrainConfig, train_or_load
    from samples.mnist import mnist_cifar_like

    try:
        x_train, y_train = mnist_cifar_like("train", limit=500)
        x_test, y_test = mnist_cifar_like("test", limit=200, uint8=True)
    except RuntimeError as exc:  # no npm / offline and nothing cached
        pytest.skip(f"MNIST not available: {exc}")
    torch.set_num_threads(1)
    rows = []
    for arch, variants in (
        ("convmixer", [("permutation + flip", {"flip": True})]),
        ("vit", [("orthogonal + scramble", {"orthogonal": True, "scramble": True})]),
    ):
        config = TrainConfig(arch, {"dim": 16, "depth": 1}, epochs=1)
        trained = train_or_load(arch, config, x_train, y_train, cache=tmp_path)
        assert not trained.cached
        assert train_or_load(arch, config, x_train, y_train, cache=tmp_path).cached
        got, keys = measure(trained, x_test, y_test, tmp_path, variants=variants, keys=2)
        rows.extend(got)
        row = got[0]
        assert row.same_predictions == row.n == 200
        assert row.encrypted == row.plain
        assert row.max_diff < 1e-3
        assert keys[variants[0][0]].exists()
    table = render(rows)
    assert table.count("\n") == 3
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text(f"# Benchmarks\n\nother\n\n{begin}\nold\n{end}\n\ntail\n")
    update_section(bench, "blockwise", table)
    text = bench.read_text()
    assert "old" not in text and "other" in text and "tail" in text and table in text


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "multihead", "encoder_cls"])
def test_scrambling_on_torch_exports(tmp_path: Path, attention: str) -> None:
    """Scrambling is proven (and exact) on what torch's dynamo exporter emits for attention."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from torch import nn

    from onnx_selenc.blockwise import BlockKey, apply_key, encrypt_images, find_patch_stem
    from onnx_selenc.blockwise import plan_scramble as plan
    from tests.blockwise.test_models import run

    class Net(nn.Module):
        def __init__(self, d: int = 16) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, d, 4, 4)
            tokens = 17 if attention == "encoder_cls" else 16
            self.cls = nn.Parameter(torch.randn(1, 1, d))
            self.pos = nn.Parameter(torch.randn(1, tokens, d))
            self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
            layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 1)
            self.head = nn.Linear(d, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.conv(x).flatten(2).transpose(1, 2)
            if attention == "encoder_cls":
                t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
                return self.head(self.enc(t)[:, 0])
            t = t + self.pos
            if attention == "sdpa":
                t = nn.functional.scaled_dot_product_attention(t[:, None], t[:, None], t[:, None])
                return self.head(t[:, 0].mean(1))
            return self.head(self.mha(t, t, t, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Net().eval(),
            (torch.rand(2, 3, 16, 16),),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        )
    model = onnx.load(str(path))
    stem = find_patch_stem(model)
    grid = plan(model, stem).grid
    key = BlockKey.generate(patch=4, channels=3, scramble=True, grid=grid, flip=True)
    x = np.random.default_rng(0).random((3, 3, 16, 16)).astype(np.float32)
    y = run(model, x)
    y_enc = run(apply_key(model, key), encrypt_images(x, key))
    assert np.abs(y_enc - y).max() <= 1e-4 * np.abs(y).max()
