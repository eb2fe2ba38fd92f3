"""A real ``redis-server`` of the tests' own, on a free loopback port.

Each test that needs Redis starts one, so that it can stop, kill and restart it
without touching anybody else's (never the machine's shared server).  It keeps
nothing on disk unless asked (``appendonly``), as a cache node often runs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.daemon import free_port


class RedisServer:
    """One redis-server process; :meth:`start` again after :meth:`stop` or :meth:`kill`.

    :param directory: its working directory (an ``appendonly`` file lives there).
    :param password: ``requirepass``, if any.
    """

    def __init__(
        self, directory: Path, *, password: str | None = None, appendonly: bool = False
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed; ./scripts/test installs it "
                "(apt-get install redis-server)"
            )
        self.executable = executable
        self.directory = directory
        self.password = password
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        command = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("redis-server exited at start") from None
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """Kill it (SIGKILL): nothing is written on the way out."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def cli(self, *args: str) -> str:
        """Run one command with redis-cli and return its output."""
        cli = shutil.which("redis-cli")
        assert cli is not None
        command = [cli, "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            command += ["-a", self.password]
        return subprocess.run(
            [*command, *args], capture_output=True, check=True, text=True, timeout=10
        ).stdout
