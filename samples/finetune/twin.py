"""Arms whose start is the same model, weight for weight, as an arm already measured
(and the cached tool files the base arms start from, and their tiers).

Training is seeded and single-threaded, so two bit-identical starts give the same runs
under the same attack: the second arm is the first's runs, marked as such (never
trained again, never assumed without the check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from samples.finetune import harness
from samples.paper import _common


def same_start(a: harness.Start, b: harness.Start) -> bool:
    """Whether two starts give bit-identical weights and buffers."""
    sa, sb = a(0).state_dict(), b(0).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def write_twin(path: Path, of: Path, name: str, extra: dict[str, Any] | None = None) -> bool:
    """Write arm ``name`` at ``path`` as the measured arm at ``of`` (False: none there)."""
    measured = _common.read_json(of)
    if measured is None:
        return False
    measured.update(extra or {}, arm=name, identical_start_to=measured["arm"])
    _common.write_json(path, measured)
    return True


def encrypted(plain: Path, out: Path, **options: Any) -> Path:
    """The tool's public file of ``plain`` at ``out`` (cached; its owner key beside it as
    ``out.key``), from ``EncryptOptions(seed=0, **options)``."""
    import warnings

    from onnx_selenc import EncryptOptions, encrypt

    if not out.exists():
        key = out.with_suffix(".key")
        key.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encrypt(plain, out, key_file=key, options=EncryptOptions(seed=0, **options))
    return out


def tier_file(public: Path, level: int) -> Path:
    """``public`` restored to ``level`` with the owner's key beside it (``public.key``):
    a tier holder's model, cached beside it."""
    from onnx_selenc import restore_model

    out = public.with_name(f"{public.stem}-level{level}.onnx")
    if not out.exists():
        restored = restore_model(public, key=public.with_suffix(".key"), level=level)
        tmp = out.with_suffix(".tmp")
        onnx.save(restored.model, str(tmp))
        tmp.replace(out)
    return out
