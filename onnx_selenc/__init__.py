"""onnx-selenc: selective, tiered encryption of ONNX models.

The recipe layer: :func:`encrypt` an ONNX model into an encrypted ``.onnx`` plus an
owner key, :func:`export_key` lower tiers for customers, and :func:`load_session`
to get an ONNX Runtime session restored to a key's level, in memory.
"""

from __future__ import annotations

__version__ = "0.3.0.dev0"

from onnx_selenc._crypto.keys import LevelKey, key_from_env, read_key_file
from onnx_selenc._crypto.tiers import export_key, key_file_info
from onnx_selenc._deploy.inspect import ModelReport, inspect_model
from onnx_selenc._deploy.package import PackageResult, package
from onnx_selenc._encrypt.files import EncryptResult, encrypt
from onnx_selenc._encrypt.options import CalibratedLevels, EncryptOptions, FixedLevels
from onnx_selenc._encrypt.rekey import RekeyResult, rekey
from onnx_selenc._load.decrypt import DecryptResult, decrypt
from onnx_selenc._load.loader import RestoredModel, build_session, load_session, restore_model
from onnx_selenc._select.calibration import Calibration
from onnx_selenc._select.levels import LevelMetric, LevelReport

__all__ = [
    "CalibratedLevels",
    "Calibration",
    "DecryptResult",
    "EncryptOptions",
    "EncryptResult",
    "FixedLevels",
    "LevelKey",
    "LevelMetric",
    "LevelReport",
    "ModelReport",
    "PackageResult",
    "RekeyResult",
    "RestoredModel",
    "__version__",
    "build_session",
    "decrypt",
    "encrypt",
    "export_key",
    "inspect_model",
    "key_file_info",
    "key_from_env",
    "load_session",
    "package",
    "read_key_file",
    "rekey",
    "restore_model",
]
