"""How far a modified model's outputs are from the plain model's, without labels.

Classifiers (one 2-D output, ``[N, classes]``) compare predicted distributions (KL)
and top-1 agreement; every other model compares outputs by normalised squared error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OBJECTIVES = ("auto", "kl", "mse")


def choose_objective(plain: Sequence[np.ndarray], objective: str = "auto") -> str:
    """``kl`` for a classifier-shaped output, else ``mse`` (unless overridden)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    if objective != "auto":
        return objective
    first = plain[0]
    return "kl" if len(plain) == 1 and first.ndim == 2 and first.shape[1] >= 2 else "mse"


def _probabilities(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x  # already a softmax output
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def distance(plain: Sequence[np.ndarray], test: Sequence[np.ndarray], objective: str) -> float:
    """Mean KL(plain || test) per sample, or the mean normalised squared error."""
    if objective == "kl":
        p, q = _probabilities(plain[0]), _probabilities(test[0])
        eps = 1e-12
        return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))
    total = 0.0
    for a, b in zip(plain, test, strict=True):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        total += float(np.mean((a64 - b64) ** 2) / (np.var(a64) + 1e-12))
    return total / len(plain)


def damage(plain: Sequence[np.ndarray], test: Sequence[np.ndarray], objective: str) -> float:
    """A bounded distance in [0, 1): ``1 - exp(-distance)``; saturates where models break."""
    return float(-np.expm1(-distance(plain, test, objective)))


def quality(plain: Sequence[np.ndarray], test: Sequence[np.ndarray], objective: str) -> float:
    """Quality relative to the plain model (1.0 = identical behaviour).

    Classifiers: top-1 agreement with the plain model. Other models: the R^2 of the
    outputs against the plain ones, clipped at 0.
    """
    if objective == "kl":
        return float(np.mean(plain[0].argmax(axis=1) == test[0].argmax(axis=1)))
    return max(0.0, 1.0 - distance(plain, test, "mse"))
