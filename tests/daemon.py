"""The installed daemon as the end-to-end tests run it, in a subprocess."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

#: The ``twistd`` installed beside the Python running the tests.
TWISTD = Path(sys.executable).parent / "twistd"


def twistd_command(*options: str) -> list[str]:
    """``twistd --nodaemon --pidfile= officerouter`` followed by the daemon's options."""
    return [str(TWISTD), "--nodaemon", "--pidfile=", "officerouter", *options]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
