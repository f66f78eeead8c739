"""Exceptions raised by onnx-selenc.

Flat on purpose. Errors that can be told from public data (a key for another
model, a level the key does not grant, an unsupported model) are precise, because
that is what a user needs to fix the call. Once decryption starts, every failure
is one :class:`InvalidBundle`, whatever the cause.
"""

from __future__ import annotations


class SelencError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedModel(SelencError):
    """The model cannot be processed (no conv weights, weights computed at run time, ...)."""


class NotEncrypted(SelencError):
    """The model carries no onnx-selenc bundle: it was never encrypted by this tool."""


class FormatError(SelencError):
    """A file is malformed, truncated, or of an unknown format version."""


class KeyFileError(FormatError):
    """A key file is malformed, truncated, corrupted, or its passphrase is wrong."""


class KeyMismatch(SelencError):
    """The key belongs to another encrypted model (its key id differs)."""


class LevelNotGranted(SelencError):
    """The key is for a lower level than the one asked for."""


class InvalidBundle(SelencError):
    """Authentication failed: the model, its sealed data or the key was tampered with.

    Deliberately says nothing about which: a flipped byte, a blob moved between
    models or levels, and wrong key material all look the same.
    """


class UnsignedModel(InvalidBundle):
    """The model carries no owner signature (format 1): its integrity cannot be proven."""


class SelfCheckFailed(SelencError):
    """Encrypt's output failed its own check before being written: a bug in onnx-selenc.

    Nothing is left on disk; the message names the model's producer and the tensor.
    """


class KeyNotConfigured(SelencError, LookupError):
    """No key reached the model at load time (no environment variable, no key file).

    Raised by the MLflow flavour (``onnx_selenc.mlflow``), which reads its key from the
    serving environment.
    """


class UnsafeSessionOptions(SelencError, ValueError):
    """Session options that would write restored (plaintext) weights to disk."""


class WeakKeyWarning(UserWarning):
    """The transform space of a block-wise key is below 128 bits (e.g. a 2x2 permutation)."""


class LevelCountWarning(UserWarning):
    """The budget chose fewer kernels than there are levels; more are encrypted so that
    every level restores at least one kernel more than the level below it."""


class LevelTargetWarning(UserWarning):
    """A level missed its quality target on held-out inputs by more than the tolerance.

    The model is still written; the level report (``EncryptResult.level_report``)
    says what each level reached.
    """


__all__ = [
    "FormatError",
    "InvalidBundle",
    "KeyFileError",
    "KeyMismatch",
    "KeyNotConfigured",
    "LevelCountWarning",
    "LevelNotGranted",
    "LevelTargetWarning",
    "NotEncrypted",
    "SelencError",
    "SelfCheckFailed",
    "UnsafeSessionOptions",
    "UnsupportedModel",
    "WeakKeyWarning",
]
