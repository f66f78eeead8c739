"""The product's contract on the conformance corpus (issue 11), one test per model.

Each model of ``samples/conformance.json`` (PyPI wheels, the onnx wheel's test data,
exports by ``samples/exporters``) goes through the contract of
``benchmarks/conformance.py``: inspect, a plain run, encrypt (3 levels, budget 0.01),
the encrypted file runs and differs, the owner key restores weights and outputs bit
for bit, tier keys 1 and 2 load and differ from the next tier, every conv node is a
candidate or reported unsupported, and ``decrypt`` (also after ``rekey``) writes files
with the original's SHA-256 unless encrypt said it could not. The outcome must be the
entry's ``expect`` (``pass`` unless stated; ``refused``: encrypt refuses before writing
anything).

A model whose source cannot be had (download, hash check or export fails) fails its
test. First run on a fresh machine: the wheels are downloaded (about 140 MB) and the
tf2onnx exporter builds its own TensorFlow venv under the cache dir (a few minutes,
about 1.6 GB); after that everything is cached and the whole file runs in about a
minute on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.conformance import check
from samples import conformance

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", conformance.names())
def test_contract(name: str, tmp_path: Path) -> None:
    expect = conformance.entry(name).get("expect", "pass")
    outcome = check(name, tmp_path)
    failures = "\n".join(f"  {step}: {detail}" for step, detail in outcome.failures)
    assert outcome.status == expect, (
        f"{name} ({outcome.made_by}; {outcome.producer}, {outcome.opset}): expected {expect}, "
        f"got {outcome.summary}\n{failures}"
    )
    if outcome.status == "refused":
        assert not any(tmp_path.rglob("*.*")), "a refusal left files behind"


def test_corpus_is_broad() -> None:
    """At least 30 models from at least 8 producers, each with a source that says what made it."""
    entries = conformance.entries()
    assert len(entries) >= 30
    assert len({e["name"] for e in entries}) == len(entries)
    assert all(e.get("made_by") for e in entries)
    producers = {e["made_by"].split(" ")[0].lower() for e in entries}
    assert len(producers) >= 8, producers
