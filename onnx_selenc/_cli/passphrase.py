"""Where a command's key files and passphrases come from: a path, a variable, a prompt."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from onnx_selenc import exceptions
from onnx_selenc._crypto.keys import is_protected


def existing_key_file(path: str) -> str:
    """``path``, checked to be a file: else an error that says the KEY FILE is missing.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder.
    """
    # Without this a missing key reads "[Errno 2] No such file or directory: 'x'", which
    # does not say which of a command's paths it is.
    if Path(path).is_dir():
        raise IsADirectoryError(f"key file {path} is a folder, not a key file")
    if not Path(path).exists():
        raise FileNotFoundError(f"key file {path} does not exist")
    return path


def _passphrase(
    args: argparse.Namespace, env_attr: str, prompt_attr: str, prompt: str
) -> str | None:
    env = getattr(args, env_attr, None)
    if env:
        if env not in os.environ:
            raise ValueError(f"environment variable {env} (passphrase) is not set")
        return os.environ[env]
    if getattr(args, prompt_attr, False):
        return getpass.getpass(prompt)
    return None


def _key_passphrase(args: argparse.Namespace, key_path: str) -> str | None:
    """The passphrase of the key file at ``key_path`` (None: not protected).

    Raises:
        FileNotFoundError: no key file at ``key_path`` (every command reading one checks
            it here first).
        KeyFileError: a protected key, no passphrase given and no terminal to ask on.
    """
    existing_key_file(key_path)
    given = _passphrase(args, "passphrase_env", "ask_passphrase", "key passphrase: ")
    if given is None and is_protected(key_path):
        if not sys.stdin.isatty():
            raise exceptions.KeyFileError(
                f"{key_path} is passphrase-protected: use --passphrase-env VAR or --ask-passphrase"
            )
        given = getpass.getpass(f"passphrase for {key_path}: ")
    return given


def _add_passphrase_args(p: argparse.ArgumentParser, *, new: bool = False) -> None:
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="read the key file's passphrase from this environment variable",
    )
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the passphrase")
    if new:
        p.add_argument(
            "--protect-env",
            metavar="VAR",
            help="protect the new key file with the passphrase in this variable",
        )
        p.add_argument(
            "--protect",
            action="store_true",
            help="protect the new key file with a passphrase (prompted)",
        )
