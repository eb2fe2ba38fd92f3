"""The parent of --workers: its socket, its workers' lives, their backoff and stop."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from twisted.internet import endpoints
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.systemd import ListenFDs

from officerouter import workers
from officerouter.config import ConfigError
from officerouter.workers import (
    KILL_MARGIN,
    WORKER_FD,
    InheritedListener,
    Supervisor,
    TCPListener,
    Worker,
)

# ---------------------------------------------------------------- worker_count


def test_auto_is_one_worker_per_usable_core():
    """``auto`` counts the cores this process may run on."""
    assert workers.worker_count("auto") == len(os.sched_getaffinity(0))


def test_worker_count_is_a_whole_number_of_at_least_one():
    """A number is taken as it is; zero, negatives and words are refused."""
    assert workers.worker_count("1") == 1
    assert workers.worker_count("12") == 12
    for bad in ("0", "-2", "two", "1.5", "auto2"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            workers.worker_count(bad)


# ---------------------------------------------------------------- parse_listener


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8787", TCPListener(8787, "", 1024, socket.AF_INET)),
        (
            "tcp:0:interface=127.0.0.1:backlog=1024",
            TCPListener(0, "127.0.0.1", 1024, socket.AF_INET),
        ),
        ("tcp:port=8787:backlog=9", TCPListener(8787, "", 9, socket.AF_INET)),
        (r"tcp:8787:interface=\:\:1", TCPListener(8787, "::1", 1024, socket.AF_INET6)),
        ("tcp6:8787", TCPListener(8787, "::", 1024, socket.AF_INET6)),
    ],
)
def test_tcp_endpoints_are_parsed_as_twisted_does(description, expected):
    """tcp: and tcp6: strings give port, interface, backlog (1024 unless given: not
    Twisted's 50) and family."""
    assert workers.parse_listener(description, reactor=None) == expected


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8787", "tcp:8787:backlog=1024"),
        ("tcp6:8787:interface=\\:\\:1", "tcp6:8787:interface=\\:\\:1:backlog=1024"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=1024"),
        ("tcp:8787:backlog=9", "tcp:8787:backlog=9"),
        (
            "tcp:port=8787:backlog=9:interface=127.0.0.1",
            "tcp:port=8787:backlog=9:interface=127.0.0.1",
        ),
        ("unix:/run/officerouter.sock", "unix:/run/officerouter.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("tcp:8787:interface=x\\", "tcp:8787:interface=x\\"),
    ],
)
def test_a_port_without_a_backlog_gets_1024(description, expected):
    """tcp:, tcp6: and ssl: endpoints that name no backlog get 1024; others, and
    those that name one, are left as they are."""
    assert workers.with_default_backlog(description) == expected


@pytest.mark.parametrize(
    "description",
    [
        "ssl:8443:privateKey=key.pem",
        "unix:/run/officerouter.sock",
        "tcp:",
        "tcp:http",
        "tcp:8787:reuse=yes",
        "tcp:8787:backlog=0",
        "systemd:domain=UNIX:index=0",
        "systemd:domain=INET",
        "systemd:domain=INET:index=zero",
    ],
)
def test_other_endpoints_are_refused_for_workers(description):
    """Endpoints the parent cannot hand over are a ConfigError naming --port and the choices."""
    with pytest.raises(ConfigError) as info:
        workers.parse_listener(description, reactor=None)
    assert info.value.variable == "--port"
    assert description in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("description", "fd"),
    [
        ("systemd:domain=INET:index=0", 3),
        ("systemd:domain=INET6:index=1", 4),
        ("systemd:domain=INET:name=officerouter.socket", 3),
    ],
)
def test_systemd_socket_is_the_one_twisted_finds(monkeypatch, description, fd):
    """systemd: strings name the descriptor Twisted's own systemd endpoint would adopt."""
    # Twisted reads systemd's variables once, when endpoints is imported.
    sockets = ListenFDs([3, 4], ("officerouter.socket", "other.socket"))
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", sockets)
    assert workers.parse_listener(description, reactor=None) == InheritedListener(fd)


@pytest.mark.parametrize(
    "description", ["systemd:domain=INET:index=0", "systemd:domain=INET:name=web"]
)
def test_systemd_endpoint_without_systemd_names_the_socket_unit(description):
    """Without socket activation the error says to start through the socket unit."""
    with pytest.raises(ConfigError, match=r"no such socket.*officerouter\.socket"):
        workers.parse_listener(description, reactor=None)


# ---------------------------------------------------------------- adopted_endpoint


def test_a_worker_adopts_a_tcp_socket_with_its_family():
    """--adopt-fd on an IPv6 TCP socket gives an adopted endpoint of that family."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        endpoint = workers.adopted_endpoint(object(), sock.fileno())
        assert isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint)
        assert endpoint.addressFamily == socket.AF_INET6
        assert endpoint.fileno == sock.fileno()


def test_a_worker_refuses_what_is_not_a_tcp_socket():
    """A pipe or a UNIX socket as --adopt-fd is a ConfigError, and stays open."""
    read, write = os.pipe()
    try:
        with pytest.raises(ConfigError, match="not a socket"):
            workers.adopted_endpoint(object(), read)
        os.fstat(read)  # still open
    finally:
        os.close(read)
        os.close(write)
    left, right = socket.socketpair()
    with left, right, pytest.raises(ConfigError, match="not a TCP socket"):
        workers.adopted_endpoint(object(), left.fileno())


# ---------------------------------------------------------------- parent_watch


def test_a_worker_stops_when_its_parent_is_gone():
    """The watch stops the worker gracefully once its parent pid changes."""
    parents = [100]
    stops: list[str] = []
    watch = workers.parent_watch(stops.append, getppid=lambda: parents[0])
    clock = Clock()
    watch.clock = clock
    watch.startService()
    clock.advance(1)
    assert stops == []
    parents[0] = 1  # reparented to init
    clock.advance(1)
    assert stops == ["parent process 100 is gone"]
    watch.stopService()


# ---------------------------------------------------------------- Supervisor


@attrs.define
class FakeProcess:
    """A spawned process: its pid and the signals sent to it."""

    pid: int | None
    signals: list[str] = attrs.Factory(list)
    exited: bool = False

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)


@attrs.define
class Spawned:
    protocol: Any
    executable: str
    args: tuple[str, ...]
    env: dict[str, str]
    child_fds: dict[int, int | str]
    process: FakeProcess


class FakeProcesses:
    """Records spawnProcess calls instead of starting anything."""

    def __init__(self) -> None:
        self.spawned: list[Spawned] = []
        self.fail = False

    def spawnProcess(
        self,
        protocol,
        executable,
        args,
        env=None,
        path=None,
        uid=None,
        gid=None,
        usePTY=False,
        childFDs=None,
    ):
        if self.fail:
            raise OSError(2, "No such file or directory")
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append(
            Spawned(protocol, executable, tuple(args), env, childFDs, process)
        )
        return process

    def end(self, index: int, reason: Exception) -> None:
        """The ``index``-th spawned process ends, as Twisted reports it."""
        spawned = self.spawned[index]
        spawned.process.exited = True
        spawned.process.pid = None  # Twisted forgets it before processEnded
        spawned.protocol.processEnded(Failure(reason))


class FakeListener:
    """One end of a socket pair stands for the listening socket."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def open(self) -> socket.socket:
        left, right = socket.socketpair()
        right.close()
        self.sockets.append(left)
        return left

    def describe(self) -> str:
        return "a test socket"


@pytest.fixture
def listener() -> Iterator[FakeListener]:
    listener = FakeListener()
    yield listener
    for sock in listener.sockets:
        sock.close()


def supervisor(
    listener: FakeListener, processes: FakeProcesses, clock: Clock, count: int = 2
) -> Supervisor:
    return Supervisor(
        listener,
        [
            Worker(f"node-{i}", ("/venv/bin/twistd", "-n", str(i)))
            for i in range(1, count + 1)
        ],
        {"CF_ACCESS_CLIENT_SECRET": "s3cret"},
        processes=processes,
        clock=clock,
        stop_timeout=10.0,
    )


def killed(number: int = 9) -> ProcessTerminated:
    return ProcessTerminated(exitCode=None, signal=number)


def test_workers_start_with_the_socket_as_descriptor_3(listener):
    """Each worker is spawned with its own command line, the environment, and the socket at fd 3."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock)
    sup.privilegedStartService()
    sup.startService()
    (sock,) = listener.sockets
    assert [s.args for s in processes.spawned] == [
        ("/venv/bin/twistd", "-n", "1"),
        ("/venv/bin/twistd", "-n", "2"),
    ]
    for spawned in processes.spawned:
        assert spawned.executable == "/venv/bin/twistd"
        assert spawned.env == {"CF_ACCESS_CLIENT_SECRET": "s3cret"}
        assert spawned.child_fds == {0: 0, 1: 1, 2: 2, WORKER_FD: sock.fileno()}


def test_a_dead_worker_is_restarted_with_doubling_backoff(listener):
    """A worker that keeps dying comes back after 1, 2, 4... seconds, at most 60; each death logged."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock, count=1)
    sup.startService()
    delays = []
    with capturedLogs() as events:
        for n in range(8):
            processes.end(n, killed())
            delays.append(clock.getDelayedCalls()[0].getTime() - clock.seconds())
            clock.advance(delays[-1])
            assert len(processes.spawned) == n + 2
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    deaths = [e for e in events if "restarting" in e["log_format"]]
    assert [e["delay"] for e in deaths] == delays
    assert deaths[0]["how"] == "signal KILL"
    assert deaths[0]["pid"] == 1000
    assert deaths[0]["worker"] == "node-1"


def test_backoff_resets_after_a_worker_ran_for_a_while(listener):
    """A worker that ran 30 s before dying restarts after 1 s again."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock, count=1)
    sup.startService()
    for n in range(3):
        processes.end(n, ProcessTerminated(exitCode=1))
        clock.advance(60)
    clock.advance(workers.STABLE_AFTER)
    with capturedLogs() as events:
        processes.end(3, ProcessDone(0))
    assert events[0]["delay"] == 1
    assert events[0]["how"] == "exit status 0"


def test_a_worker_that_cannot_be_spawned_is_retried(listener):
    """spawnProcess failing is logged and retried with the same backoff."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock, count=1)
    processes.fail = True
    with capturedLogs() as events:
        sup.startService()
    assert any(e.get("log_failure") is not None for e in events)
    processes.fail = False
    clock.advance(1)
    assert len(processes.spawned) == 1


def test_stop_drains_every_worker_then_fires(listener):
    """On stop each worker gets SIGTERM; the Deferred fires once all have exited; none restarts."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock)
    sup.startService()
    (sock,) = listener.sockets
    stopped = sup.stopService()
    assert sock.fileno() == -1  # the parent's copy is closed at once
    assert [s.process.signals for s in processes.spawned] == [["TERM"], ["TERM"]]
    processes.end(0, ProcessDone(0))
    assert not stopped.called
    processes.end(1, ProcessDone(0))
    assert stopped.called
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert len(processes.spawned) == 2


def test_a_worker_that_does_not_stop_is_killed(listener):
    """A worker still running shutdown-timeout + margin after SIGTERM gets SIGKILL."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock)
    sup.startService()
    stopped = sup.stopService()
    processes.end(0, ProcessDone(0))
    clock.advance(10.0 + KILL_MARGIN - 0.1)
    assert processes.spawned[1].process.signals == ["TERM"]
    clock.advance(0.1)
    assert processes.spawned[1].process.signals == ["TERM", "KILL"]
    assert processes.spawned[0].process.signals == ["TERM"]
    processes.end(1, killed())
    assert stopped.called


def test_stop_cancels_a_pending_restart(listener):
    """A worker waiting out its backoff is not started again once stopping."""
    processes, clock = FakeProcesses(), Clock()
    sup = supervisor(listener, processes, clock)
    sup.startService()
    processes.end(0, killed())
    stopped = sup.stopService()
    processes.end(1, ProcessDone(0))
    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert len(processes.spawned) == 2


def test_a_port_in_use_is_one_line_and_exit(monkeypatch):
    """A listener that cannot bind stops start-up with one line naming --port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sup = Supervisor(
            TCPListener(port, "127.0.0.1", 50, socket.AF_INET),
            [],
            {},
            processes=FakeProcesses(),
            clock=Clock(),
            stop_timeout=1.0,
        )
        with pytest.raises(SystemExit) as info:
            sup.privilegedStartService()
    message = str(info.value.code)
    assert message.startswith(
        f"officerouter: --port: cannot listen on tcp 127.0.0.1 port {port}: "
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (ProcessDone(0), "exit status 0"),
        (ProcessTerminated(exitCode=3), "exit status 3"),
        (ProcessTerminated(signal=15), "signal TERM"),
        (ProcessTerminated(signal=250), "signal 250"),
    ],
)
def test_describe_exit(reason, text):
    """An ending reads as an exit status or a signal name."""
    assert workers.describe_exit(Failure(reason)) == text
