"""The fine-tuning study's ONNX -> torch interpreter runs a graph like ONNX Runtime.

Every arm of ``samples.finetune`` trains the interpreted graph, so a wrong operator
mapping would make every number of that study meaningless. A tiny hand-built CNN
(covering symmetric and asymmetric pads, max pooling, Flatten and Gemm with
``transB=1``) is compared with ONNX Runtime; keyed wiring's undo restores the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from samples.finetune import harness, wiring  # noqa: E402
from samples.finetune.graph import OnnxModule  # noqa: E402


def _tiny_cnn(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [
        init("w1", 4, 3, 3, 3),
        init("b1", 4),
        init("w2", 6, 4, 3, 3),
        init("b2", 6),
        init("fc", 5, 6 * 4 * 4),
        init("fcb", 5),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        # Asymmetric pads (0 before, 2 after) keep the 8x8 size: exercises F.pad.
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[0, 0, 2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _torch(path: Path, x: np.ndarray, mutate: object = None) -> np.ndarray:
    module = OnnxModule(path)
    if mutate is not None:
        mutate(module, 0)  # type: ignore[operator]
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_interpreter_matches_onnx_runtime(tmp_path: Path) -> None:
    """Same logits as ONNX Runtime; every Conv/Gemm weight and bias is trainable."""
    path = _tiny_cnn(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).random((7, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(_torch(path, x), _ort(path, x), atol=1e-5, rtol=1e-5)
    module = OnnxModule(path)
    assert len(module.params) == 6
    assert len(module.conv_weight_names()) == 2


def test_wiring_undo_restores_outputs(tmp_path: Path) -> None:
    """The wired file differs; undoing every permutation gives the plain outputs back."""
    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    wired, perms = wiring.wired_file(plain, tmp_path, seed=3)
    x = np.random.default_rng(2).random((5, 3, 16, 16), dtype=np.float32)
    ref = _ort(plain, x)
    assert np.abs(_ort(wired, x) - ref).max() > 1e-3
    np.testing.assert_allclose(_torch(wired, x, wiring.apply(perms)), ref, atol=1e-5)
    assert wiring.agreement(perms, perms) == 1.0


def test_masked_fraction_and_reinit(tmp_path: Path) -> None:
    """The study's 'knows the masked positions' arm changes exactly the masked kernels."""
    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    model = onnx.load(str(plain))
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    arr = numpy_helper.to_array(w2).copy()
    arr[0, 1] += 1.0  # one masked kernel of 24 + 12 kernels
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    public = tmp_path / "public.onnx"
    onnx.save(model, str(public))
    total = 4 * 3 * 9 + 6 * 4 * 9
    assert harness.masked_fraction(plain, public) == pytest.approx(9 / total)
    mod = OnnxModule(public)
    before = {k: v.detach().clone() for k, v in mod.params.items()}
    harness.reinit_masked(plain, public)(mod, 0)
    changed = {k for k, v in mod.params.items() if not torch.equal(v, before[k])}
    assert len(changed) == 1
    key = changed.pop()
    diff = (mod.params[key] != before[key]).flatten(2).any(dim=2)
    assert diff.sum() == 1 and bool(diff[0, 1])


def test_placement_masks_whole_filters_and_layers(tmp_path: Path) -> None:
    """Hypothesis 2's files: whole filters / whole layers change, nothing else does."""
    from samples.finetune import placement

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    total = 4 * 3 * 9 + 6 * 4 * 9
    filters = placement.masked_file(plain, tmp_path / "f.onnx", "filters", 0.0)
    # One filter per layer: 3*9 weights of conv 1 and 4*9 of conv 2.
    assert harness.masked_fraction(plain, filters) == pytest.approx((27 + 36) / total)
    early = placement.masked_file(plain, tmp_path / "e.onnx", "early", 1)
    assert harness.masked_fraction(plain, early) == pytest.approx(4 * 27 / total)
    ends = placement.masked_file(plain, tmp_path / "fl.onnx", "first-last", 0)
    assert harness.masked_fraction(plain, ends) == pytest.approx(1.0)


def test_attack_command_on_a_users_model_and_data(tmp_path: Path, capsys) -> None:
    """``python -m samples.finetune.attack``: every arm trained, one table per share, on a
    model and labelled data given as files (labels from the plain model: it is the
    teacher, so fine-tuning the plain file must be the best start)."""
    import warnings

    import onnx_selenc as se
    from samples.finetune import attack

    plain = _tiny_cnn(tmp_path / "plain.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        se.encrypt(
            plain,
            tmp_path / "pub.onnx",
            key_file=tmp_path / "owner.key",
            options=se.EncryptOptions(levels=1, budget=0.3, seed=0),
        )
    x = np.random.default_rng(1).normal(size=(300, 3, 16, 16)).astype(np.float32)
    y = ort.InferenceSession(str(plain)).run(None, {"x": x})[0].argmax(1)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    argv = ["--public", tmp_path / "pub.onnx", "--data", tmp_path / "data.npz", "--plain",
            plain, "--share", "0.5", "--seeds", "0", "1", "--lrs", "0.003", "--max-steps",
            "50", "--json", tmp_path / "out.json"]  # fmt: skip
    assert attack.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    for arm in ("scratch", "fine-tune public", "knows masked, re-inits", "fine-tune plain"):
        assert f"| {arm} |" in out
    got = json.loads((tmp_path / "out.json").read_text())["shares"][0]
    assert got["examples"] == 120 and got["arms"]["fine-tune plain"]["before"] == 1.0
    assert got["arms"]["fine-tune public"]["before"] < 1.0  # the masked file is worse

    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    bad = ["--public", str(tmp_path / "pub.onnx"), "--data", str(tmp_path / "bad.npz")]
    assert attack.main(bad) == 1
    np.savez(tmp_path / "float_labels.npz", x=x, y=y.astype(np.float32))
    assert attack.main([*bad[:3], str(tmp_path / "float_labels.npz")]) == 1
    assert "integer class labels" in capsys.readouterr().err


def _noisy_copy(plain: Path, out: Path, scale: float, seed: int = 5) -> Path:
    """``plain`` with Gaussian noise of ``scale`` times each weight's std added."""
    model = onnx.load(str(plain))
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        noisy = arr + scale * arr.std() * rng.normal(size=arr.shape).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), t.name))
    onnx.save(model, str(out))
    return out


def test_reference_match_recovers_wiring_from_a_descendant(tmp_path: Path) -> None:
    """Matching against weights the victim descends from (here: the victim plus noise, as
    after fine-tuning) recovers every permutation exactly, with no data."""
    from samples.finetune import reference_match

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    wired, perms = wiring.wired_file(plain, tmp_path, seed=3)
    reference = _noisy_copy(plain, tmp_path / "ref.onnx", scale=0.2)
    got = reference_match.match(wired, reference)
    assert got.perms == perms
    assert wiring.agreement(got.perms, perms) == 1.0
    x = np.random.default_rng(2).random((5, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(_torch(wired, x, wiring.apply(got.perms)), _ort(plain, x), atol=1e-5)
    assert got.mean_similarity > 0.9


def test_reference_match_needs_the_true_reference(tmp_path: Path) -> None:
    """An unrelated reference (another random draw) fits far worse: the similarity an
    attacker ranks guesses by separates it from a descendant."""
    from samples.finetune import reference_match

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    wired, perms = wiring.wired_file(plain, tmp_path, seed=3)
    unrelated = _noisy_copy(plain, tmp_path / "other.onnx", scale=50.0)
    got = reference_match.match(wired, unrelated)
    assert got.mean_similarity < 0.5
    assert wiring.agreement(got.perms, perms) < 1.0
    with pytest.raises(ValueError, match="convs"):
        bad = onnx.load(str(plain))
        del bad.graph.node[3:5]  # drop the second conv (and its relu)
        bad.graph.node[3].input[0] = "p1"
        onnx.save(bad, str(tmp_path / "bad.onnx"))
        reference_match.match(wired, tmp_path / "bad.onnx")


def _reordered_reference(plain: Path, out: Path, seed: int = 7) -> Path:
    """The tiny CNN with its hidden channels reordered consistently (the same function in
    another order, like a model trained separately) and noise on every weight."""
    model = onnx.load(str(plain))
    w = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    r1, r2 = rng.permutation(4), rng.permutation(6)
    w["w1"], w["b1"] = w["w1"][r1], w["b1"][r1]
    w["w2"], w["b2"] = w["w2"][:, r1][r2], w["b2"][r2]
    w["fc"] = w["fc"].reshape(5, 6, 16)[:, r2].reshape(5, 96)
    for t in model.graph.initializer:
        arr = w[t.name] + 0.1 * w[t.name].std() * rng.normal(size=w[t.name].shape)
        t.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
    onnx.save(model, str(out))
    return out


def test_weight_match_recovers_wiring_from_a_reordered_reference(tmp_path: Path) -> None:
    """Git Re-Basin weight matching solves both unknown orders (the reference's own and
    the wiring): the exact permutations, where per-layer cosine matching cannot."""
    from samples.finetune import learned, reference_match

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    wired, perms = wiring.wired_file(plain, tmp_path, seed=3)
    reference = _reordered_reference(plain, tmp_path / "ref.onnx")
    assert learned.weight_match(wired, reference) == perms
    assert reference_match.match(wired, reference).perms != perms


def test_sinkhorn_learns_the_wiring_on_an_easy_case(tmp_path: Path) -> None:
    """Learned soft permutations, weights frozen, labels from the plain model: the rounded
    permutations are the wiring."""
    from samples.finetune import learned

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    wired, perms = wiring.wired_file(plain, tmp_path, seed=3)
    x = np.random.default_rng(1).normal(size=(400, 3, 16, 16)).astype(np.float32)
    y = _ort(plain, x).argmax(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend
    try:
        got, history = learned.sinkhorn(wired, x, y, steps=300)
    finally:
        torch.set_num_threads(threads)
    assert got == perms
    assert history[-1] < history[0]


def test_restore_from_reference_finds_the_masked_kernels(tmp_path: Path) -> None:
    """Masked values drawn from the layer's distribution are unlike the reference's
    kernels, real ones stay close: exactly the masked kernel is replaced."""
    from samples.finetune import reference_match

    plain = _tiny_cnn(tmp_path / "tiny.onnx")
    model = onnx.load(str(plain))
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    arr = numpy_helper.to_array(w2).copy()
    arr[2, 1] = np.random.default_rng(9).permutation(arr.flatten())[:9].reshape(3, 3)
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    public = tmp_path / "public.onnx"
    onnx.save(model, str(public))
    reference = _noisy_copy(plain, tmp_path / "ref.onnx", scale=0.1)
    masked = np.zeros(4 * 3 + 6 * 4, dtype=bool)
    masked[4 * 3 + 2 * 4 + 1] = True
    mod = OnnxModule(public)
    flags = reference_match.flagged_kernels(mod, reference, masked)
    assert flags == {"replaced_kernels": 1 / 36, "replaced_truly_masked": 1.0, "masked_found": 1.0}
    reference_match.restore_from_reference(reference)(mod, 0)
    ref = OnnxModule(reference)
    key = mod.conv_weight_names()[1]
    assert torch.equal(mod.params[key][2, 1], ref.params[key][2, 1])
    assert torch.equal(mod.params[key][2, 0], torch.from_numpy(arr[2, 0]))


def test_attack_command_runs_the_recovery_attacks(tmp_path: Path, capsys) -> None:
    """``--reference`` and ``--recover`` add their arms; matching against a descendant of
    the plain weights undoes the wiring (its start scores what the plain model does)."""
    from samples.finetune import attack

    plain = _tiny_cnn(tmp_path / "plain.onnx")
    wired, _ = wiring.wired_file(plain, tmp_path, seed=3)
    reference = _noisy_copy(plain, tmp_path / "ref.onnx", scale=0.1)
    x = np.random.default_rng(1).normal(size=(300, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=_ort(plain, x).argmax(1))
    argv = ["--public", wired, "--data", tmp_path / "data.npz", "--reference", reference,
            "--recover", "sinkhorn", "rebasin", "--share", "0.5", "--seeds", "0", "--lrs",
            "0.003", "--max-steps", "25", "--json", tmp_path / "out.json"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert attack.main([str(a) for a in argv]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    names = ("fine-tune reference", "reference-matched", "matched, kernels from reference",
             "sinkhorn-recovered", "weight-matched")  # fmt: skip
    for arm in names:
        assert f"| {arm} |" in out
    got = json.loads((tmp_path / "out.json").read_text())["shares"][0]["arms"]
    assert got["reference-matched"]["before"] == 1.0
    assert got["fine-tune public"]["before"] < 1.0


def test_an_interrupted_arm_resumes_from_its_runs_file(tmp_path: Path) -> None:
    """Each (seed, lr) run is appended as it ends; a rerun trains only what is missing
    and gives the same result as the uninterrupted arm."""
    plain = _tiny_cnn(tmp_path / "plain.onnx")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 3, 16, 16)).astype(np.float32)
    y = ort.InferenceSession(str(plain)).run(None, {"x": x})[0].argmax(1)
    cfg = harness.AttackConfig(lrs=(1e-3, 3e-3), seeds=(0, 1), max_steps=20, eval_every=10)
    args = (harness.scratch(plain), x[:80], y[:80], x[80:], y[80:], 60, cfg)
    whole = harness.attack_arm(*args, log=lambda _: None)

    runs = tmp_path / "arm.runs.jsonl"
    lines: list[str] = []
    harness.attack_arm(*args, log=lines.append, runs_file=runs)
    assert len(lines) == 4 and len(runs.read_text().splitlines()) == 4
    # As if stopped during the last run: three lines and a cut-off fourth.
    kept = runs.read_text().splitlines()[:3]
    runs.write_text("\n".join(kept) + '\n{"seed": 1, "l')
    lines.clear()
    resumed = harness.attack_arm(*args, log=lines.append, runs_file=runs)
    assert len(lines) == 1  # only the missing run trained again

    def timeless(runs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]

    assert resumed["mean"] == whole["mean"]
    assert timeless(resumed["runs"]) == timeless(whole["runs"])
