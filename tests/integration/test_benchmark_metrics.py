"""The task metrics of benchmarks/selection.py measure what their tables say."""

from __future__ import annotations

import itertools

import numpy as np

from benchmarks import selection


def _yolo_output(boxes: list[list[tuple[float, float, float, float, int]]]) -> np.ndarray:
    """A fake YOLOv8 output [N, 4 + 2 classes, 8 anchors] holding the given boxes."""
    out = np.zeros((len(boxes), 6, 8), np.float32)
    for n, image in enumerate(boxes):
        for a, (cx, cy, w, h, cls) in enumerate(image):
            out[n, :4, a] = (cx, cy, w, h)
            out[n, 4 + cls, a] = 0.9
    return out


def test_detection_agreement_is_pooled_over_boxes() -> None:
    box = (50.0, 50.0, 20.0, 20.0, 0)
    plain = _yolo_output([[box], [], [], []])
    # Three empty images agree trivially; the one box is lost: agreement must be 0.
    lost = _yolo_output([[], [], [], []])
    assert selection.detection_agreement([plain], [lost], None) == 0.0
    assert selection.detection_agreement([plain], [plain], None) == 1.0
    moved = _yolo_output([[(80.0, 80.0, 20.0, 20.0, 0)], [], [], []])
    other_class = _yolo_output([[(50.0, 50.0, 20.0, 20.0, 1)], [], [], []])
    assert selection.detection_agreement([plain], [moved], None) == 0.0
    assert selection.detection_agreement([plain], [other_class], None) == 0.0
    extra = _yolo_output([[box, (10.0, 10.0, 5.0, 5.0, 1)], [], [], []])
    assert selection.detection_agreement([plain], [extra], None) == 2 / 3  # F1 of 1 in 1+2


def test_edit_distance() -> None:
    cases = {
        ("kitten", "sitting"): 3,
        ("", ""): 0,
        ("abc", ""): 3,
        ("", "ab"): 2,
        ("flaw", "lawn"): 2,
        ("same", "same"): 0,
        ("ab", "ba"): 2,
    }
    for (a, b), d in cases.items():
        assert selection._edit_distance(a, b) == d, (a, b)


def test_build_order_gives_every_variant_several_predecessors(monkeypatch) -> None:
    from benchmarks.perf import timing

    monkeypatch.setattr(timing, "timed", lambda fn: (0.0, fn()))  # no gc.collect per call

    def predecessors(repeats: int) -> dict[str, set[str]]:
        sequence: list[tuple[str, float]] = []
        variants = {name: (lambda: None) for name in ("plain", "L0", "L2", "L5")}
        timing.interleaved(variants, repeats, {}, sequence=sequence)
        assert [n for n, _ in sequence].count("L2") == repeats
        before: dict[str, set[str]] = {}
        for (prev, _), (name, _) in itertools.pairwise(sequence):
            before.setdefault(name, set()).add(prev)
        return before

    assert all(len(prevs) >= 2 for prevs in predecessors(7).values())
    few = predecessors(3)  # the model over 2 GB: its in-memory levels still vary
    assert len(few["L2"]) >= 2 and len(few["L5"]) >= 2


def test_in_memory_builds_of_the_huge_model_follow_mapping_builds() -> None:
    from benchmarks.perf import timing

    sequence = [
        n
        for rep in range(3)
        for n in timing.mapped_then_in_memory(["plain", "L0"], ["L2", "L5"], rep)
    ]
    assert sorted(sequence) == sorted(["plain", "L0", "L2", "L5"] * 3)
    for prev, name in itertools.pairwise(sequence):
        assert (name in ("L2", "L5")) != (prev in ("L2", "L5"))
