"""How to encrypt: one frozen, validated value for :func:`encrypt` and the command line.

The level split is one of two kinds, so a combination that means nothing (targets
together with fixed fractions) cannot be written down: :class:`FixedLevels` (the paper's
split of the encrypted kernels, checked to change the outputs at every level) or
:class:`CalibratedLevels` (cuts searched on calibration inputs to meet quality targets).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.importance import DATA_FREE_SCORERS
from onnx_selenc._select.levels import LevelMetric, check_targets
from onnx_selenc._select.masking import MASKINGS
from onnx_selenc._select.objective import OBJECTIVES
from onnx_selenc._select.selection import ALLOCATIONS, LEVEL_ORDERS, check_fractions

DATA_DRIVEN_SCORERS = ("activation", "pss")
IMPORTANCES = (*sorted(DATA_FREE_SCORERS), *DATA_DRIVEN_SCORERS)


@dataclass(frozen=True)
class FixedLevels:
    """Level m restores a fixed share of the encrypted kernels, most important first.

    Attributes:
        fractions: cumulative share per level 1..M, increasing, last 1.0; None: m/M.
        order: ``"most-important-first"`` or ``"least-important-first"``.
    """

    fractions: tuple[float, ...] | None = None
    order: str = "most-important-first"

    def __post_init__(self) -> None:
        if self.fractions is not None:
            object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if self.order not in LEVEL_ORDERS:
            raise ValueError(
                f"unknown level order {self.order!r} (known: {', '.join(LEVEL_ORDERS)})"
            )


@dataclass(frozen=True)
class CalibratedLevels:
    """Level cuts searched on calibration inputs to meet a quality per level.

    Attributes:
        targets: quality per level 1..M as a fraction of the plain model's (last 1.0).
        metric: the quality the targets are stated in, if not the built-in one:
            ``metric(plain_outputs, level_outputs) -> float``, 1.0 when they agree.
    """

    targets: tuple[float, ...]
    metric: LevelMetric | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(float(t) for t in self.targets))


@dataclass(frozen=True)
class EncryptOptions:
    """Everything :func:`onnx_selenc.encrypt` can be asked to do, validated once.

    Attributes:
        levels: number of service levels M (level M restores the original).
        budget: with ``"balanced"`` or ``"sensitivity"`` allocation, the fraction of
            all conv weights to encrypt; with ``"uniform"``, the kernel ratio per layer.
        allocation: ``"sensitivity"`` (needs calibration; its default), ``"balanced"``
            (data-free default) or ``"uniform"``.
        importance: ``"activation"`` or ``"pss"`` (need calibration; ``activation`` is
            the default with it), ``"magnitude"`` (data-free default), ``"abs-mean"``,
            ``"random"``.
        split: :class:`FixedLevels` (default) or :class:`CalibratedLevels`.
        objective: ``"auto"``, ``"kl"`` (classifiers) or ``"mse"``.
        layers: glob patterns on weight names / conv node names; empty: every conv.
        masking: ``"empirical"`` (default: whole kernels from the public kernels' joint
            distribution) or ``"gaussian"`` (the paper's per-position DPRM, kept to
            reproduce it; a covariance test tells its kernels apart).
        seed: makes selection and masking reproducible (keys and nonces stay random).
        external_data: write weights to ``<output>.data``; None: as the input did.
        verify: the self-check before anything is written (see ``_verify``).
        show_progress: progress bars on stderr.
        allow_budget_growth: where the fixed levels change the outputs only with more
            kernels than the budget chose (kernels that feed unused channels), encrypt
            those; False (default): refuse with ``BudgetTooSmall``, which says how many.
        wiring: also give each wirable conv's output channels a secret order in the
            public file (level 0); level 1 puts them back (see ``_onnx.channels``).
        base: the public model these weights were fine-tuned from (a path): every
            kernel that differs from the base's is encrypted, and level 0 holds the
            base's kernel in its place, so it carries nothing the base lacks in those
            weights (``_select.base``); a conv weight the base lacks is masked whole.

    Raises:
        ValueError: an option out of range, or a split that does not fit ``levels``.
    """

    levels: int = 5
    budget: float = 0.01
    allocation: str | None = None
    importance: str | None = None
    split: FixedLevels | CalibratedLevels = field(default_factory=FixedLevels)
    objective: str = "auto"
    layers: tuple[str, ...] = ()
    masking: str = "empirical"
    seed: int | None = None
    external_data: bool | None = None
    verify: bool = True
    show_progress: bool = False
    allow_budget_growth: bool = False
    wiring: bool = False
    base: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.base is not None and not isinstance(self.base, str | os.PathLike):
            raise TypeError(f"base must be a path to an ONNX model, not {self.base!r}")
        if self.base is not None and self.wiring:
            raise ValueError(
                "wiring adds nothing to a base: level 0's kernels are the base's own, in "
                "the base's order, so matching them to the base undoes any wiring; use one"
            )
        if isinstance(self.split, FixedLevels):
            check_fractions(self.levels, self.split.fractions)  # also checks the level count
        elif isinstance(self.split, CalibratedLevels):
            check_fractions(self.levels, None)
            check_targets(self.levels, self.split.targets)
        else:
            raise TypeError("split must be FixedLevels or CalibratedLevels")
        if not isinstance(self.wiring, bool):
            raise TypeError(f"wiring must be True or False, not {self.wiring!r}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.masking not in MASKINGS:
            raise ValueError(f"unknown masking {self.masking!r} (known: {', '.join(MASKINGS)})")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r} (known: {', '.join(OBJECTIVES)})"
            )

    @property
    def fractions(self) -> tuple[float, ...]:
        """The fixed split's cumulative fractions (defaults filled in); m/M if calibrated."""
        given = self.split.fractions if isinstance(self.split, FixedLevels) else None
        return check_fractions(self.levels, given)

    @classmethod
    def from_keywords(cls, **options: Any) -> EncryptOptions:
        """The options of 0.1's keyword arguments (``level_targets=``, ``levels=``, ...).

        Raises:
            TypeError: an unknown keyword.
            ValueError: level targets together with fixed fractions or order.
        """
        targets = options.pop("level_targets", None)
        metric = options.pop("level_metric", None)
        fractions = options.pop("level_fractions", None)
        order = options.pop("level_order", None)
        if targets is not None:
            if fractions is not None or order not in (None, "most-important-first"):
                raise ValueError("level targets replace level_fractions and level_order")
            split: FixedLevels | CalibratedLevels = CalibratedLevels(tuple(targets), metric)
        elif metric is not None:
            raise ValueError("level_metric states the quality of level_targets: give those too")
        else:
            split = FixedLevels(
                None if fractions is None else tuple(fractions), order or "most-important-first"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "split"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown encrypt option(s): {', '.join(unknown)}")
        if options.get("layers") is None:
            options.pop("layers", None)
        return cls(split=split, **options)


def options_of(
    options: EncryptOptions | None, keywords: dict[str, Any], *, deprecated: bool
) -> EncryptOptions:
    """The options given, or those 0.1's keyword arguments describe (not both)."""
    if not keywords:
        return options if options is not None else EncryptOptions()
    if options is not None:
        raise TypeError(f"give options= or keyword options, not both ({', '.join(keywords)})")
    if deprecated:
        warnings.warn(
            "encrypt(levels=..., budget=..., ...) is deprecated: pass "
            "options=EncryptOptions(...) (keyword options go in 0.3)",
            DeprecationWarning,
            stacklevel=3,
        )
    return EncryptOptions.from_keywords(**keywords)


def check_options(
    importance: str,
    allocation: str,
    calibration: Calibration | None,
    level_targets: Sequence[float] | None,
    scores: object | None,
    counts: object | None,
) -> None:
    """What the options need that only the call can tell: calibration inputs for the
    data-driven steps, and known scorer and allocator names (unless hooks replace them)."""
    if scores is None and importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r} (known: {', '.join(IMPORTANCES)})")
    if counts is None and allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r} (known: {', '.join(ALLOCATIONS)})")
    needs = [
        what
        for what, needed in (
            (f"importance {importance!r}", scores is None and importance in DATA_DRIVEN_SCORERS),
            ("allocation 'sensitivity'", counts is None and allocation == "sensitivity"),
            ("level targets", level_targets is not None),
        )
        if needed
    ]
    if needs and calibration is None:
        raise ValueError(
            f"{' and '.join(needs)} need calibration inputs (calibration=Calibration(...))"
        )
