"""``--workers``: one listening socket, several supervised worker processes.

The parent opens the socket once and starts each worker as its own
``twistd officerouter`` with the socket as file descriptor :data:`WORKER_FD`;
the workers adopt it and accept on it side by side.  The parent serves nobody: it
restarts a worker that dies, with backoff, and on stop asks every worker to
drain and waits for them.  docs/operations.md, "Several workers", tells the story.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol as TypingProtocol

import attrs

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import abstract, defer, endpoints, error
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from officerouter.config import ConfigError

log = Logger()

#: The descriptor number of the listening socket in every worker.
WORKER_FD = 3
#: Backoff between restarts of a worker that keeps dying: 1 s, doubling to 60 s.
MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A worker that ran this long before dying is restarted after the shortest delay.
STABLE_AFTER = 30.0
#: On stop, a worker gets the shutdown timeout plus this long before SIGKILL.
KILL_MARGIN = 5.0
#: The listen backlog of a ``tcp:``, ``tcp6:`` or ``ssl:`` ``--port`` that gives
#: none. Twisted's own is 50: the reconnect storm after a restart (or a benchmark's
#: connection burst) overflows it, and each client dropped there waits for a SYN
#: retransmit, 1 s or more. Node's is 511; the kernel caps it at somaxconn.
DEFAULT_BACKLOG = 1024
#: The endpoint kinds whose Twisted parser takes ``backlog=``.
_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl"})
#: What systemd's socket activation tells its child; a worker is not that child.
SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_SUPPORTED = (
    "--workers listens itself and hands the socket to its workers, so --port must "
    "be tcp:PORT[:interface=ADDRESS][:backlog=N], tcp6:... or "
    "systemd:domain=INET|INET6:index=N"
)


def worker_count(value: str) -> int:
    """How many workers ``--workers VALUE`` asks for: a number, or ``auto``.

    ``auto`` is one per core this process may run on (its CPU affinity, which
    systemd's ``CPUAffinity=`` and ``taskset`` narrow), else per core.

    :raises ValueError: for anything but ``auto`` or a whole number of at least 1.
    """
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on every platform, or filtered
            return os.cpu_count() or 1
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Listener(TypingProtocol):
    """Where the workers' listening socket comes from."""

    def open(self) -> socket.socket:
        """The listening socket, non-blocking.

        :raises OSError: when it cannot be had.
        """

    def describe(self) -> str:
        """The socket as the logs name it."""


@attrs.frozen
class TCPListener:
    """A socket the parent binds itself: ``tcp:`` and ``tcp6:`` endpoints."""

    port: int
    interface: str
    backlog: int
    family: socket.AddressFamily

    def open(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            # As Twisted's own listening ports do on POSIX: a restart may bind
            # while connections of the last run are in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def describe(self) -> str:
        return f"tcp {self.interface or '*'} port {self.port}"


@attrs.frozen
class InheritedListener:
    """A socket systemd passed in (socket activation): ``systemd:`` endpoints."""

    fd: int

    def open(self) -> socket.socket:
        sock = socket.socket(fileno=self.fd)
        sock.setblocking(False)
        return sock

    def describe(self) -> str:
        return f"the socket systemd passed as descriptor {self.fd}"


def _split(description: str) -> list[str]:
    """An endpoint string's fields: ``:`` separates, ``\\`` escapes (as Twisted's)."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def with_default_backlog(description: str) -> str:
    """``description`` with ``:backlog=DEFAULT_BACKLOG`` added, when it is a
    ``tcp:``, ``tcp6:`` or ``ssl:`` endpoint that names no backlog of its own."""
    kind, *fields = _split(description)
    if kind not in _BACKLOG_KINDS or any(f.startswith("backlog=") for f in fields):
        return description
    trailing = len(description) - len(description.rstrip("\\"))
    if trailing % 2:  # a dangling escape: Twisted's parser will say what is wrong
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


def _number(description: str, text: str, what: str, low: int) -> int:
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if number < low:
        raise ConfigError("--port", f"{description!r}: {what} must be a number")
    return number


def parse_listener(description: str, reactor: object) -> Listener:
    """The listener ``--port`` names, for ``--workers``.

    :param reactor: for Twisted's ``systemd:`` parser, which finds the sockets
        systemd passed (it reads, and removes, ``LISTEN_PID`` and ``LISTEN_FDS``
        when ``twisted.internet.endpoints`` is imported).
    :raises ConfigError: for another kind of endpoint, or a malformed one.
    """
    kind, *fields = _split(description)
    args = [f for f in fields if "=" not in f]
    kwargs = dict(f.split("=", 1) for f in fields if "=" in f)
    if kind in ("tcp", "tcp6"):
        port = kwargs.pop("port", None) or (args.pop(0) if args else "")
        interface = kwargs.pop("interface", "" if kind == "tcp" else "::")
        backlog = kwargs.pop("backlog", str(DEFAULT_BACKLOG))
        if args or kwargs:
            raise ConfigError("--port", f"{description!r}: {_SUPPORTED}")
        ipv6 = kind == "tcp6" or abstract.isIPv6Address(interface)
        return TCPListener(
            port=_number(description, port, "the port", 0),
            interface=interface,
            backlog=_number(description, backlog, "backlog", 1),
            family=socket.AF_INET6 if ipv6 else socket.AF_INET,
        )
    if kind == "systemd" and kwargs.get("domain") in ("INET", "INET6"):
        try:
            endpoint = endpoints.serverFromString(reactor, description)
        except (IndexError, KeyError):
            raise ConfigError(
                "--port",
                f"{description!r}: systemd passed no such socket; start the "
                "service through its socket unit (contrib/officerouter.socket)",
            ) from None
        except Exception:  # any parser's error: the string is malformed
            endpoint = None
        if isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint):
            return InheritedListener(endpoint.fileno)
    raise ConfigError("--port", f"{description!r}: {_SUPPORTED}")


def adopted_endpoint(reactor: object, fd: int) -> endpoints.AdoptedStreamServerEndpoint:
    """The endpoint of a worker: the listening socket its parent handed it.

    :raises ConfigError: when ``fd`` is not a TCP listening socket.
    """
    try:
        # A duplicate, so that looking does not close the original.
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise ConfigError(
            "--adopt-fd", f"descriptor {fd} is not a socket ({e.strerror})"
        ) from None
    with probe:
        family, kind = probe.family, probe.type
    if family not in (socket.AF_INET, socket.AF_INET6) or kind != socket.SOCK_STREAM:
        raise ConfigError("--adopt-fd", f"descriptor {fd} is not a TCP socket")
    return endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)


def parent_watch(
    stop: Callable[[str], object],
    getppid: Callable[[], int] = os.getppid,
    interval: float = 1.0,
) -> TimerService:
    """A worker's check that its parent is alive: if not, it stops gracefully.

    Outside systemd nothing else would stop a worker whose parent was killed
    (SIGKILL cannot be forwarded): it would serve on, unsupervised.
    """
    parent = getppid()

    def check() -> None:
        if getppid() != parent:
            stop(f"parent process {parent} is gone")

    return TimerService(interval, check)


def describe_exit(reason: Failure) -> str:
    """How a process ended, for the logs: ``exit status 1``, ``signal KILL``."""
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number is not None:
        try:
            return f"signal {signal.Signals(signal_number).name.removeprefix('SIG')}"
        except ValueError:
            return f"signal {signal_number}"
    return f"exit status {getattr(value, 'exitCode', None)}"


@attrs.define(eq=False)
class Worker:
    """One supervised worker: its command line, its process and its backoff."""

    name: str
    args: tuple[str, ...]
    process: IProcessTransport | None = None
    #: Kept apart: Twisted forgets the process's pid before it reports its end.
    pid: int | None = None
    started_at: float = 0.0
    delay: float = MIN_RESTART_DELAY
    restart: IDelayedCall | None = None
    #: Times it ended unasked and was restarted (metrics).
    restarts: int = 0
    waiters: list[defer.Deferred[None]] = attrs.Factory(list)


class _WorkerProtocol(ProcessProtocol):
    """Tells the supervisor when its worker ends; the output goes elsewhere."""

    def __init__(self, supervisor: Supervisor, worker: Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker

    def processEnded(self, reason: Failure) -> None:
        self._supervisor.worker_ended(self._worker, reason)


class Supervisor(service.Service):
    """The parent of ``--workers``: listens, starts the workers, keeps them up.

    Modelled on twisted.runner.procmon's ``ProcessMonitor``, with a backoff that
    does not restart a crash-looping worker more than once a minute, and a stop
    that waits for every worker to drain.

    :param listener: the socket to open (bound in ``privilegedStartService``).
    :param workers: one per process to run; ``args`` start with the executable.
    :param env: the workers' environment (secrets reach them only this way).
    :param stop_timeout: seconds a worker may take to stop before SIGKILL.
    """

    def __init__(
        self,
        listener: Listener,
        workers: Sequence[Worker],
        env: Mapping[str, str],
        processes: IReactorProcess,
        clock: IReactorTime,
        stop_timeout: float,
    ) -> None:
        self._listener = listener
        self.workers = list(workers)
        self.env = dict(env)
        self._processes = processes
        self._clock = clock
        self._stop_timeout = stop_timeout
        self._socket: socket.socket | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def _listen(self) -> None:
        if self._socket is not None:
            return
        try:
            self._socket = self._listener.open()
        except OSError as e:
            raise SystemExit(
                f"officerouter: --port: cannot listen on "
                f"{self._listener.describe()}: {e.strerror}"
            ) from None

    def startService(self) -> None:
        super().startService()
        self._listen()
        assert self._socket is not None
        log.info(
            "listening on {address}; starting {count} workers",
            address=self._listener.describe(),
            count=len(self.workers),
        )
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        assert self._socket is not None
        worker.started_at = self._clock.seconds()
        try:
            worker.process = self._processes.spawnProcess(
                _WorkerProtocol(self, worker),
                worker.args[0],
                worker.args,
                env=self.env,
                # Output goes straight to the parent's (the journal, a terminal).
                childFDs={0: 0, 1: 1, 2: 2, WORKER_FD: self._socket.fileno()},
            )
        except OSError:
            log.failure("cannot start worker {worker}", worker=worker.name)
            self._restart_later(worker)
            return
        worker.pid = worker.process.pid
        log.info(
            "worker {worker} started, pid {pid}", worker=worker.name, pid=worker.pid
        )

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        """A worker's process is gone: restart it unless stopping."""
        pid, worker.pid, worker.process = worker.pid, None, None
        how = describe_exit(reason)
        if not self.running:
            log.info(
                "worker {worker} (pid {pid}) stopped: {how}",
                worker=worker.name,
                pid=pid,
                how=how,
            )
            waiters, worker.waiters = worker.waiters, []
            for waiter in waiters:
                waiter.callback(None)
            return
        ran = self._clock.seconds() - worker.started_at
        if ran >= STABLE_AFTER:
            worker.delay = MIN_RESTART_DELAY
        log.warn(
            "worker {worker} (pid {pid}) ended after {ran:.1f} s: {how}; "
            "restarting in {delay:g} s",
            worker=worker.name,
            pid=pid,
            ran=ran,
            how=how,
            delay=worker.delay,
        )
        worker.restarts += 1
        self._restart_later(worker)

    def _restart_later(self, worker: Worker) -> None:
        worker.restart = self._clock.callLater(worker.delay, self._spawn, worker)
        worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY)

    def stopService(self) -> defer.Deferred[None]:
        """Ask every worker to drain (SIGTERM), wait for them all, then fire.

        A worker still running ``stop_timeout`` + :data:`KILL_MARGIN` seconds
        later is killed.  The parent's copy of the socket closes at once; the
        workers close theirs as they stop listening.
        """
        super().stopService()
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        live = [w for w in self.workers if w.process is not None]
        log.info("stopping {count} workers", count=len(live))
        waits: list[defer.Deferred[None]] = []
        for worker in live:
            waiter: defer.Deferred[None] = defer.Deferred()
            worker.waiters.append(waiter)
            waits.append(waiter)
            self._signal(worker, "TERM")
        deadline = self._clock.callLater(
            self._stop_timeout + KILL_MARGIN, self._kill, live
        )

        def stopped(_: object) -> None:
            if deadline.active():
                deadline.cancel()
            log.info("all workers stopped")

        return defer.gatherResults(waits).addCallback(stopped)

    def _kill(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            if worker.process is not None:
                log.warn(
                    "worker {worker} did not stop within {timeout:g} s; killing it",
                    worker=worker.name,
                    timeout=self._stop_timeout + KILL_MARGIN,
                )
                self._signal(worker, "KILL")

    @staticmethod
    def _signal(worker: Worker, name: str) -> None:
        assert worker.process is not None
        with contextlib.suppress(error.ProcessExitedAlready):
            worker.process.signalProcess(name)
