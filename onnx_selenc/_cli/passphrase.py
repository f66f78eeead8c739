"""Where a command's passphrases come from: an environment variable or a prompt."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from onnx_selenc import exceptions
from onnx_selenc._crypto.keys import (
    is_protected,
)

# Exit codes, one per kind of failure, so scripts can tell them apart.


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
