"""The soak harness (bench/soak.py): churn leaves the installed daemon empty and lean.

CI runs the short version below (about 15 s); docs/soak.md has the full minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import soak

SOAK = Path(soak.__file__)


def _passing_end() -> dict[str, Any]:
    return {
        "health_after": {"ok": True, "connections": 0, "rooms": 0},
        "rss_before_kib": 60_000,
        "rss_after_kib": 70_000,
    }


def _busy_stats() -> soak.Stats:
    return soak.Stats(opened=10, peak_connections=10, notifies_ok=10)


def test_checks_fail_on_what_a_leak_leaves_behind() -> None:
    """Each end-state check fails when a connection, a live room, memory or an error is left."""
    config = soak.Config(concurrency=50)
    assert all(soak.checks(config, _busy_stats(), _passing_end(), 0, []).values())

    leaks: dict[str, Any] = {
        "zero_connections": {"health_after": {"connections": 1, "rooms": 0}},
        "zero_live_rooms": {"health_after": {"connections": 0, "rooms": 1}},
        "rss_within_margin": {"rss_after_kib": 60_000 + 14 * 1024},
    }
    for check, change in leaks.items():
        end = {**_passing_end(), **change}
        results = soak.checks(config, _busy_stats(), end, 0, [])
        assert [name for name, ok in results.items() if not ok] == [check]

    stats = _busy_stats()
    stats.error_frames["rate_limited"] += 1
    stats.error("error_frame", "rate_limited")
    failed = soak.checks(config, stats, _passing_end(), 0, [])
    assert [name for name, ok in failed.items() if not ok] == [
        "no_error_frames",
        "no_errors",
    ]
    failed = soak.checks(config, _busy_stats(), _passing_end(), 1, ["Traceback"])
    assert [name for name, ok in failed.items() if not ok] == [
        "clean_daemon_log",
        "daemon_exit_0",
    ]
    idle = soak.checks(config, soak.Stats(), _passing_end(), 0, [])
    assert not idle["traffic_flowed"]


@pytest.mark.e2e
@pytest.mark.slow
def test_short_soak_leaves_daemon_empty_and_lean(tmp_path: Path) -> None:
    """200 users churning over 5 orgs for 8 s leave no connection, live room or error, and RSS near its start."""
    summary_path = tmp_path / "summary.json"
    argv = [
        sys.executable,
        "-W",
        "error",
        str(SOAK),
        "--duration=8",
        "--clients=200",
        "--orgs=5",
        "--concurrency=50",
        "--notify-rate=50",
        "--settle=2",
        f"--summary={summary_path}",
        f"--daemon-log={tmp_path / 'daemon.log'}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert summary_path.exists(), result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())

    assert summary["opened"] > 0
    assert summary["peak_connections"] > 0
    assert summary["positions_sent"] > 0
    assert summary["notifies_ok"] > 0
    assert summary["health_after"]["connections"] == 0
    # Rooms kept only for their history (historyOnlyRooms) may stay until they expire.
    assert summary["health_after"]["rooms"] == 0
    margin_kib = summary["config"]["rss_margin_mib"] * 1024
    assert summary["rss_after_kib"] <= summary["rss_before_kib"] + margin_kib
    assert summary["unexpected_closes"] == {}, summary["error_samples"]
    assert summary["error_frames"] == {}, summary["error_samples"]
    assert summary["errors"] == {}, summary["error_samples"]
    assert summary["daemon_bad_log_lines"] == []
    assert summary["daemon_exit_code"] == 0
    assert result.returncode == 0, result.stderr[-3000:]
