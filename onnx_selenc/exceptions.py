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


class InvalidArgument(SelencError, TypeError, ValueError):
    """A public function got an argument of the wrong type or out of range
    (``level=-1``, ``level=1.9``, ``key={...}``, provider options as a list).

    Also a ``TypeError`` and a ``ValueError``, so code that caught the builtin error
    these arguments raised before still catches it.
    """


class UnsafeSessionOptions(SelencError, ValueError):
    """Session options that would write restored (plaintext) weights to disk."""


class BudgetTooSmall(SelencError):
    """Every level changes the outputs only with more kernels than the budget chose,
    and the budget may not grow (``EncryptOptions(allow_budget_growth=True)`` lets it).

    ``kernels`` and ``share`` (of all conv weights) are what the levels need; ``detail``
    is the message without the way out, which each interface words its own way.
    """

    def __init__(
        self,
        detail: str,
        kernels: int,
        share: float,
        remedy: str = "EncryptOptions(allow_budget_growth=True) encrypts that many",
    ) -> None:
        super().__init__(f"{detail}; {remedy}, or raise the budget")
        self.detail, self.kernels, self.share, self.remedy = detail, kernels, share, remedy

    def __reduce__(self) -> tuple[type[BudgetTooSmall], tuple[str, int, float, str]]:
        return type(self), (self.detail, self.kernels, self.share, self.remedy)


class LeftoverWarning(UserWarning):
    """A temporary folder that an earlier, killed run left beside the outputs could not
    be proven dead or harmless to delete, so it was kept (the message names it)."""


class WeakKeyWarning(UserWarning):
    """The transform space of a block-wise key is below 128 bits (e.g. a 2x2 permutation)."""


class LevelCountWarning(UserWarning):
    """The budget chose fewer kernels than there are levels; more are encrypted so that
    every level restores at least one kernel more than the level below it."""


class LevelTargetWarning(UserWarning):
    """A level missed its quality target on held-out inputs by more than the tolerance,
    or the levels are not strictly increasing (a level that gives no more than the one
    below it).

    The model is still written; the level report (``EncryptResult.level_report``)
    says what each level reached.
    """


class ByteIdentityWarning(UserWarning):
    """``decrypt`` cannot give back the plain model file byte for byte (its weights are
    still the original's bit for bit): said by ``encrypt`` when it can tell, and by
    ``decrypt`` when the files it wrote differ from the original's SHA-256."""


__all__ = [
    "BudgetTooSmall",
    "ByteIdentityWarning",
    "FormatError",
    "InvalidArgument",
    "InvalidBundle",
    "KeyFileError",
    "KeyMismatch",
    "KeyNotConfigured",
    "LeftoverWarning",
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
