"""Issue 23's study parts for hypotheses 4 and 5, run by :func:`study.run_part`.

``--part adversarial``: today's public files with adversarially placed masked values;
``--part combined``: keyed wiring over today's masks, and its tiers through the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samples.finetune import harness, study, wiring
from samples.paper import _common, vgg19

Arm = Any  # arm(name, start, extra) of run_part


def adversarial_part(arm: Arm, plain: Path, data: vgg19.Data) -> None:
    """Hypothesis 4: today's public files with adversarially placed masked values."""
    from samples.finetune import adversarial

    for f in study.ADVERSARIAL_FRACTIONS:
        pub = study.public_file(plain, f)
        out = plain.parent / f"adversarial-{f:g}.onnx"
        stats = adversarial.adversarial_file(plain, pub, out, data.x_train, data.y_train)
        extra = {
            "fraction": f,
            "masked_fraction": harness.masked_fraction(plain, out),
            "values": stats,
        }
        arm(f"adv-{f:g}", harness.from_onnx(out), extra)


def combined_part(
    arm: Arm,
    plain: Path,
    attacker: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    results: Path,
) -> None:
    """Hypothesis 5: today's masks (graded tiers) on top of keyed wiring (level 0)."""
    f = study.COMBINED_FRACTION
    pub = study.public_file(plain, f)
    wired, perms = wiring.wired_file(pub, plain.parent, seed=0, name=f"combined-{f:g}.onnx")
    extra = {"fraction": f, "masked_fraction": harness.masked_fraction(plain, pub)}
    arm(f"combined-{f:g}", harness.from_onnx(wired), extra)
    rec_g, history = wiring.recover_gradient(wired, *attacker)
    extra = {**extra, "recovered_channels": wiring.agreement(rec_g, perms), "loss_history": history}
    arm(f"combined-{f:g}-recovered-grad", harness.from_onnx(wired, wiring.apply(rec_g)), extra)
    tiers = results / f"combined-{f:g}-tiers.json"
    if not tiers.exists():
        rows = combined_tiers(plain, pub, wired, f, *test)
        _common.write_json(tiers, {"fraction": f, "rows": rows})


def combined_tiers(
    plain: Path, public: Path, wired: Path, fraction: float, x: np.ndarray, y: np.ndarray
) -> list[dict[str, Any]]:
    """Accuracy per level of the combined scheme, through the real loader.

    Level 0 is the wired file; a key of level k >= 1 undoes every permutation (exact)
    and restores the tool's level k, so its model is the tool's level-k model; the top
    level is checked bit for bit against the plain weights.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from onnx_selenc import restore_model

    rows = [{"level": 0, "accuracy": vgg19.accuracy_onnx(wired, x, y)}]
    key = study.owner_key(plain, fraction)
    restored = restore_model(public, key=key, level=0)
    plain_w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(plain)).graph.initializer}
    for level in range(1, restored.levels + 1):  # levels 1..M, M the top
        model = restore_model(public, key=key, level=level).model
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        row: dict[str, Any] = {"level": level, "accuracy": vgg19.accuracy_onnx(session, x, y)}
        if level == restored.levels:
            row["bit_exact"] = all(
                np.array_equal(numpy_helper.to_array(t), plain_w[t.name])
                for t in model.graph.initializer
                if t.name in plain_w
            )
        rows.append(row)
    return rows
