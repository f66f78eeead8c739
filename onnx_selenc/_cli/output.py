"""What every command prints: one JSON document with ``--json``, one ``error:`` line on failure.

A command handler builds its result once, as a JSON-ready dict and the lines a person
reads, and hands both to :func:`emit`. :func:`run_command` parses the arguments, runs
the handler and turns the errors a user can cause into an exit code and one line on
stderr (and, with ``--json``, ``{"error", "code", "kind"}`` on stdout), so that no
user error ends in a traceback. With ``--json`` anything else written to stdout while
the command runs (ONNX Runtime's provider fallback notice, for one) goes to stderr:
stdout then holds exactly one document.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from onnx_selenc import exceptions

_PACKAGE = Path(exceptions.__file__).resolve().parent

STRICT_EXIT = 11  # encrypt --strict: a level missed its target; nothing was written

# Exit codes, one per kind of failure, so scripts can tell them apart (README lists them).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (exceptions.KeyMismatch, 3),
    (exceptions.LevelNotGranted, 4),
    (exceptions.InvalidBundle, 5),
    (exceptions.FormatError, 6),  # includes KeyFileError
    (exceptions.UnsupportedModel, 7),
    (exceptions.NotEncrypted, 8),
    (exceptions.UnsafeSessionOptions, 9),
    (exceptions.SelfCheckFailed, 10),  # a bug in onnx-selenc: nothing was written
    (exceptions.LevelTargetWarning, STRICT_EXIT),  # raised as an error only by --strict
    (exceptions.SelencError, 1),
    (OSError, 1),  # FileExistsError, FileNotFoundError, PermissionError...
    (ValueError, 1),
    (KeyError, 1),
    (TypeError, 1),
]
USAGE_EXIT = 2  # argparse's code for a bad command line, kept
INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by Ctrl-C

# The documents emitted by the running command; None outside run_command (handlers
# called directly, as the tests do, then print their document at once).
_SINK: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "onnx_selenc_cli_sink", default=None
)


class UsageError(Exception):
    """A command line argparse refuses (unknown option, bad value, missing argument)."""

    def __init__(self, prog: str, message: str, usage: str) -> None:
        super().__init__(message)
        self.prog, self.usage = prog, usage


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of exiting.

    Sub-parsers inherit the class, so a bad value anywhere can still be reported as
    JSON; the message and exit code (2) stay argparse's.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message, self.format_usage())


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """The ``--json`` option every command takes."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout, errors included "
        '({"error": ..., "code": ..., "kind": ...})',
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: ``\\r``-bars would litter logs; ``-q`` silences them."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def emit(args: argparse.Namespace, doc: dict[str, Any], text: str | Sequence[str]) -> int:
    """Report a command's result: ``doc`` as JSON with ``--json``, else ``text``.

    Returns:
        0, the exit code of a command that got this far.
    """
    if getattr(args, "json", False):
        sink = _SINK.get()
        if sink is None:
            _print_json(doc)
        else:
            sink.append(doc)
    else:
        print(text if isinstance(text, str) else "\n".join(text))
    return 0


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def own_warnings() -> Iterator[list[str]]:
    """Collect the warnings onnx-selenc raises while the block runs, for the command to print.

    Yields the list their one-line messages are appended to as the block ends: user
    warnings raised by onnx-selenc's code (``LevelCountWarning``, a level that changes
    nothing...); other packages' warnings and deprecations stay silent, as before.
    """
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            messages += [" ".join(str(w.message).split()) for w in caught if _ours(w)]


def _ours(w: warnings.WarningMessage) -> bool:
    if not issubclass(w.category, UserWarning) or issubclass(w.category, DeprecationWarning):
        return False
    # Called from the CLI, a warning of this package points into it whatever its stacklevel.
    return w.category.__module__ == exceptions.__name__ or Path(
        w.filename
    ).resolve().is_relative_to(_PACKAGE)


# The API's messages name Python arguments; on the command line they read as its flags.
_CLI_WORDS = (
    ("overwrite=True", "--overwrite"),
    ("calibration=Calibration(...)", "--calib INPUTS.npz or --calib-images DIR"),
)


def cli_words(message: str) -> str:
    """``message`` with the Python arguments it names replaced by the CLI's flags."""
    for python, flag in _CLI_WORDS:
        message = message.replace(python, flag)
    return message


def describe(exc: BaseException, *, kind: bool = True) -> str:
    """The error's message on one line (ONNX Runtime's and numpy's may span several).

    Args:
        exc: the error.
        kind: prefix onnx-selenc's own errors with their class (``KeyMismatch: ...``).
    """
    if kind and isinstance(exc, exceptions.SelencError):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])  # str() of a KeyError adds quotes
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"  # not "[Errno 2] ... 'x'"
    else:
        text = str(exc) or type(exc).__name__
    return cli_words(" ".join(text.split()))


def from_onnxruntime(exc: BaseException) -> bool:
    """ONNX Runtime's errors are plain Exception subclasses from its own module."""
    return type(exc).__module__.split(".")[0] == "onnxruntime"


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    codes: Sequence[tuple[type[BaseException], int]] = EXIT_CODES,
    kind_in_message: bool = True,
) -> int:
    """Parse ``argv``, run the command it names and report its result or error.

    Args:
        parser: built with :class:`Parser`; each command sets ``func`` (returning 0).
        argv: the arguments, without the program name.
        codes: exit code per exception type, first match wins.
        kind_in_message: prefix onnx-selenc's errors with their class on stderr.

    Returns:
        The exit code. Exceptions no entry of ``codes`` covers (bugs) propagate, after
        their JSON error document where ``--json`` was given.
    """
    try:
        return _run_command(parser, argv, codes, kind_in_message)
    except BrokenPipeError:
        # The reader stopped reading (`| head`): a normal end for a command, not an error.
        _stdout_closed()
        return 0


def _run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    codes: Sequence[tuple[type[BaseException], int]],
    kind_in_message: bool,
) -> int:
    json_mode = "--json" in argv  # known before parsing, for argparse's own errors
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        return _fail(json_mode, f"{exc.prog}: error: {exc}", str(exc), USAGE_EXIT, exc)
    json_mode = bool(getattr(args, "json", False))
    sink: list[dict[str, Any]] = []
    token = _SINK.set(sink)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the commands print onnx-selenc's own
            out: contextlib.AbstractContextManager[Any] = (
                contextlib.redirect_stdout(sys.stderr) if json_mode else contextlib.nullcontext()
            )
            with out:
                code = int(args.func(args))
    except KeyboardInterrupt as exc:
        return _fail(json_mode, "error: interrupted", "interrupted", INTERRUPTED_EXIT, exc)
    except BrokenPipeError:
        raise  # stdout closed: run_command ends quietly
    except Exception as exc:
        failed = _code(exc, codes)
        if failed is None:
            if json_mode:  # a bug: still one document, then the traceback
                _print_json(_error_doc(describe(exc), 1, exc))
            raise
        message = describe(exc, kind=kind_in_message)
        if from_onnxruntime(exc):  # it refused the model or its options: not our bug
            message = f"ONNX Runtime: {message}"
        return _fail(json_mode, f"error: {message}", message, failed, exc)
    finally:
        _SINK.reset(token)
    if json_mode:
        if len(sink) != 1:
            raise AssertionError(f"{args.func.__name__} emitted {len(sink)} JSON documents")
        _print_json(sink[0])
    return code


def _code(exc: Exception, codes: Sequence[tuple[type[BaseException], int]]) -> int | None:
    for kind, code in codes:
        if isinstance(exc, kind):
            return code
    return 1 if from_onnxruntime(exc) else None


def _fail(json_mode: bool, line: str, message: str, code: int, exc: BaseException) -> int:
    print(line, file=sys.stderr)
    if json_mode:
        try:
            _print_json(_error_doc(message, code, exc))
        except BrokenPipeError:
            _stdout_closed()  # the error's code still tells the caller
    return code


def _stdout_closed() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured stdout)
        pass


def _error_doc(message: str, code: int, exc: BaseException) -> dict[str, Any]:
    return {"error": message, "code": code, "kind": type(exc).__name__}


def _print_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, default=str))
    sys.stdout.flush()
