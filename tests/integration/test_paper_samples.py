"""Smoke tests of the paper's sample models: tiny training into a temporary cache.

The smoke runs use the real architectures (VGG19, DnCNN) with a few steps of training,
check that both ONNX exports run in ONNX Runtime like PyTorch, and exercise the
fine-tuning attack and the kernel detector on the smoke models.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("skimage")

from samples._cache import cache_dir  # noqa: E402
from samples.paper import (  # noqa: E402  # noqa: E402
    _common,
    attack_detection,
    attack_files,
    attack_finetune,
    attacks,
    dncnn,
    train_all,
    vgg19,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run ``train_all --smoke`` once into a temporary cache (``ONNX_SELENC_CACHE``)."""
    from samples import mnist

    root = tmp_path_factory.mktemp("cache")
    digits = cache_dir("data") / mnist.CACHE_NAME
    if digits.exists():  # re-use the digits already fetched instead of `npm pack` again
        (root / "data").mkdir()
        shutil.copy2(digits, root / "data" / mnist.CACHE_NAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNX_SELENC_CACHE", str(root))
        assert train_all.main(["--smoke", "--threads", "2"]) == 0
        res = train_all.train_all(smoke=True, show_progress=False)  # now from the cache
        yield {"root": root, **res}


@pytest.mark.slow
def test_smoke_training_is_cached_in_its_own_folder(smoke: dict[str, Any]) -> None:
    root = smoke["root"]
    vgg = smoke["vgg19"]
    assert vgg.folder.is_relative_to(root / "samples" / "smoke" / "vgg19")
    assert vgg.meta["smoke"] and vgg.meta["n_train"] == 300
    for art in smoke["dncnn"].values():
        assert art.folder.is_relative_to(root / "samples" / "smoke" / "dncnn")
        assert art.meta["config"]["steps"] == 20
    # A second call is a cache hit: nothing is rewritten.
    mtime = vgg.onnx.stat().st_mtime_ns
    again = vgg19.get_model(smoke=True, show_progress=False)
    assert again.onnx == vgg.onnx and again.onnx.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_vgg19_exports_match_torch(smoke: dict[str, Any]) -> None:
    vgg = smoke["vgg19"]
    assert (vgg.onnx_ext.parent / f"{vgg.onnx_ext.name}.data").exists()
    model = vgg19.load_checkpoint(vgg.checkpoint)
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    ref = _common.torch_forward(model, x)
    for path in (vgg.onnx, vgg.onnx_ext):
        out = _common.run_session(_common.ort_session(path), x)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert max(vgg.meta["onnx_vs_torch_max_abs_diff"].values()) < 1e-4


@pytest.mark.slow
def test_dncnn_exports_match_torch_at_any_size(smoke: dict[str, Any]) -> None:
    for sigma, art in smoke["dncnn"].items():
        state = torch.load(art.checkpoint, weights_only=True)
        model = dncnn.build_model(state["config"]["depth"], state["config"]["channels"])
        model.load_state_dict(state["state_dict"])
        x = np.random.default_rng(sigma).random((2, 1, 37, 53), dtype=np.float32)
        out = _common.run_session(_common.ort_session(art.onnx), x, batch=1)
        np.testing.assert_allclose(out, _common.torch_forward(model, x), rtol=1e-4, atol=1e-5)
        assert art.meta["onnx_vs_torch_max_abs_diff"] < 1e-4
        assert {"psnr", "ssim", "noisy_psnr", "noisy_ssim"} <= set(art.meta["heldout_onnx"])


def test_test_images_and_metrics() -> None:
    clean, noisy = dncnn.load_test_images(25, seed=3)
    assert clean.shape == noisy.shape == (len(dncnn.TEST_IMAGES), 1, 256, 256)
    assert clean.dtype == noisy.dtype == np.float32
    np.testing.assert_array_equal(noisy, dncnn.load_test_images(25, seed=3)[1])
    assert not set(dncnn.TEST_IMAGES) & set(dncnn.TRAIN_IMAGES)
    assert 19.5 < dncnn.psnr(clean, noisy) < 20.5  # sigma 25 on [0, 1] is ~20.2 dB
    assert dncnn.psnr(clean, clean) > 100 and dncnn.ssim(clean, clean) == pytest.approx(1.0)


@pytest.mark.slow
def test_finetune_attack_smoke(smoke: dict[str, Any]) -> None:
    vgg = smoke["vgg19"]
    data = vgg19.load_data()
    data = vgg19.Data(data.x_train, data.y_train, data.x_test[:200], data.y_test[:200])
    with attack_files.encrypted_copy(vgg.onnx, budget=0.01) as (enc, _key):
        mapped = attack_finetune.vgg_from_onnx(enc)
        x = data.x_test[:8]
        # The attacker's PyTorch copy computes exactly what the encrypted file computes.
        np.testing.assert_allclose(
            _common.torch_forward(mapped, x),
            _common.run_session(_common.ort_session(enc), x),
            rtol=1e-4,
            atol=1e-5,
        )
        res = attack_finetune.finetune_attack(
            vgg.onnx,
            enc,
            data,
            attack_finetune.FinetuneConfig(fractions=(0.01,), steps=1),
            show_progress=False,
        )
    assert res["mapping_check"]["max_abs_logit_diff"] < 1e-4
    assert [r["arm"] for r in res["rows"]] == [
        "from scratch",
        "fine-tune plain",
        "fine-tune encrypted (level 0)",
    ]
    assert all(r["n_digits"] == 80 and 0 <= r["accuracy_after"] <= 1 for r in res["rows"])


@pytest.mark.slow
@pytest.mark.parametrize("masking", ["gaussian", "empirical"])
def test_detector_smoke(smoke: dict[str, Any], masking: str) -> None:
    plain = smoke["dncnn"][25].onnx
    with attack_files.encrypted_copy(plain, budget=0.01, masking=masking) as (enc, _key):
        res = attack_detection.detection(plain, enc, max_negatives=2_000)
    assert res["positives"] > 0 and res["kernels_used"] <= res["positives"] + 2_000
    for det in res["detectors"].values():
        assert 0.0 <= det["roc_auc"] <= 1.0
    assert res["ks"]["layers_tested"] > 0
    assert all(
        0.0 <= r["ks_pvalue"] <= 1.0 for r in res["ks"]["layers"] if r["ks_pvalue"] is not None
    )


def test_kernel_features_see_smoothness() -> None:
    # Smooth kernels have positive lag-1 autocorrelation, i.i.d. ones about zero.
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.standard_normal((8, 8, 3, 3)), axis=2), axis=3)
    noise = rng.standard_normal((8, 8, 3, 3))
    feats, names = attack_detection.kernel_features(np.concatenate([smooth, noise]))
    ac = feats[:, names.index("spatial_autocorr")]
    assert ac[:64].mean() > ac[64:].mean()


def test_benchmarks_section_replaces_only_its_markers(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    attacks.write_benchmarks("first", path)
    assert attacks.BEGIN in path.read_text() and "first" in path.read_text()
    other = "<!-- other:begin -->\nkeep me\n<!-- other:end -->\n"
    path.write_text("# Benchmarks\n\n" + other + path.read_text().split("\n", 1)[1])
    attacks.write_benchmarks("second", path)
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count(attacks.BEGIN) == 1 and text.count(attacks.END) == 1
