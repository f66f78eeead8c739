"""The metadata entries an encrypted model carries, and removing them.

Below both the sealing stage (which writes them) and the probes (which must run the
model without them), so that neither has to import the other.
"""

from __future__ import annotations

import onnx

MANIFEST_KEY = "onnx_selenc.manifest"
SEALED_KEY = "onnx_selenc.sealed"
SIGNATURE_KEY = "onnx_selenc.signature"
BUNDLE_KEYS = frozenset({MANIFEST_KEY, SEALED_KEY, SIGNATURE_KEY})


def strip_bundle(model: onnx.ModelProto) -> None:
    """Remove the bundle entries from the model's metadata (in place)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in BUNDLE_KEYS]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
