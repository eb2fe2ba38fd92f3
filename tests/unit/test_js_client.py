"""The browser client's own unit tests (Node's test runner), run with the rest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"


def test_node_unit_tests_of_the_browser_client_pass() -> None:
    """``node --test`` passes every unit test of clients/js (fake WebSocket, fake clock)."""
    node = shutil.which("node")
    assert node is not None, "node is not installed; ./scripts/test installs it"
    result = subprocess.run(
        [node, "--test", "test/"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout, result.stdout
