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


def test_the_type_declarations_compile_and_describe_the_api() -> None:
    """``tsc`` accepts officerouter-client.d.ts, frames.d.ts and a typed use of the API."""
    tsc = CLIENT / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), (
        "TypeScript is not installed in clients/js; ./scripts/test installs it "
        "(npm install --no-package-lock in clients/js)"
    )
    result = subprocess.run(
        [str(tsc), "-p", "."],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
