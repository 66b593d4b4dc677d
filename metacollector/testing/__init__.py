"""Stand-ins and helpers shared by tests/ and bench/ (bench must not import tests). The
collector never imports them: `metacollector run` loads none (tests/test_lazy_imports.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child process to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
