#!/usr/bin/env python3
"""Run officerouter's benchmark scenarios, a fresh server per run.

    python bench/run.py [--out DIR] [--scenarios s1,s2,s2b,s3,s4,s5,s6] [--reps N] ...
    python bench/run.py --smoke --out /tmp/smoke
    python bench/run.py --name node-ws --cwd /tmp/sharedbench \\
        --cmd "bash peers/node-ws/start.sh" --out DIR
    python bench/run.py --scenarios c1,c2,c3,c4 --out DIR    # cluster (Redis)

Each run starts the server (pinned with ``taskset -c 0``, its own process group),
waits for its port, runs the load generator ``gen/wsgen`` pinned to CPU 1, records
the generator's JSON plus what this driver reads from /proc (server RSS summed over
the process group, peak RSS), then stops the whole group (SIGTERM, SIGKILL after
5 s). Results are appended to ``DIR/results.jsonl`` (one object per run, retries
included) and ``DIR/results.md`` is rewritten from every kept record in it, so
several servers run into one DIR come out side by side.

By default the server is the installed officerouter: ``twistd -n --pidfile=
officerouter --port tcp:PORT:interface=127.0.0.1:backlog=1024 --env-file FILE`` (plus
``--ping-interval 0`` when the daemon has that option), started in a scratch
directory so the checkout's plugin cannot shadow the installed one. With ``--cmd``
any server that reads PORT, CONN_JWT_PUBLIC_KEY, CF_ACCESS_CLIENT_ID and
CF_ACCESS_CLIENT_SECRET from its environment is run the same way, under
``bash -c "exec CMD"`` in ``--cwd``.

The cluster scenarios (c1-c4) and ``--backplane redis`` also start a private
``redis-server`` per run (``--port FREE --save "" --appendonly no``, pinned with
``--redis-cpu``) and give each officerouter ``--redis URL --node-id bench-a``
(``bench-b`` for the second process); with two processes both are pinned to the
server core.  Every process is stopped after the run.

Only 127.0.0.1 is contacted. Standard library only, besides what bench/tokens.py
needs to sign tokens (PyJWT, cryptography).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GEN_DIR = HERE / "gen"
WSGEN = GEN_DIR / "wsgen"
WSBLAST = GEN_DIR / "wsblast"
CONFIG_VARS = (
    "PORT",
    "CONN_JWT_PUBLIC_KEY",
    "CONN_JWT_PUBLIC_KEY_FILE",
    "CF_ACCESS_CLIENT_ID",
    "CF_ACCESS_CLIENT_SECRET",
    "JWT_PRIVATE_KEY",
)
SCENARIOS = ("s1", "s2", "s2b", "s3", "s4", "s5", "s6")
# Several officerouter processes sharing one Redis (the backplane), each beside the
# same load on one process without Redis ("single"): see plans() and bench/README.md.
CLUSTER_SCENARIOS = ("c1", "c2", "c3", "c4")
# single: one process, no Redis; redis1: one process with --redis; redis2: two
# processes with --redis, both on the server core.
TOPOLOGIES = ("single", "redis1", "redis2")
NODE_IDS = ("bench-a", "bench-b")
# Scenarios that use officerouter extensions the peers in ../shared/bench lack
# (s2b: ?positions=batched; s6: presence, and ?presence=diff; the cluster). They
# run only for servers started without --cmd.
OFFICEROUTER_ONLY = frozenset({"s2b", "s6", *CLUSTER_SCENARIOS})


def log(*parts: Any) -> None:
    """A progress line on stderr."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- /proc


def group_pids(pgid: int) -> list[int]:
    """The processes whose process group is ``pgid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def group_memory_kb(pgid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) summed over a process group, in KiB."""
    total = {"rss_kb": 0, "hwm_kb": 0, "procs": 0}
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total["procs"] += 1
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total["rss_kb"] += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                total["hwm_kb"] += int(line.split()[1])
    return total


def task_seconds() -> float:
    """CPU seconds the whole machine spent in processes (user, nice, system):
    /proc/stat without irq and softirq time, which no process is charged with."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:4]]
    return sum(values) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = values
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this driver and its reaped children."""
    usage = [resource.getrusage(resource.RUSAGE_SELF)]
    usage.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usage)


def wait_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other work uses < ``limit_pct`` of a core.

    :returns: the last measured share of a core used by other processes, in %.
    """
    deadline = time.monotonic() + max_wait
    while True:
        b0, o0, t0 = busy_seconds(), own_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        dt = time.monotonic() - t0
        pct = 100 * max(0.0, busy_seconds() - b0 - (own_cpu_seconds() - o0)) / dt
        if pct < limit_pct or time.monotonic() >= deadline:
            return round(pct, 1)
        log(f"machine busy with other work ({pct:.0f}% of a core); waiting")


def listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops from /proc/net/netstat."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table.get(k, 0)) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), 0.2),
    ):
        return True
    return False


def free_port() -> int:
    """A currently free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_times(pgid: int) -> tuple[float, float]:
    """CPU seconds (utime+stime) and run_delay seconds (runnable, waiting for a
    core) summed over a process group's processes and threads."""
    cpu = delay = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/schedstat") as f:
                    delay += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return cpu, delay


def redis_command(port: int, *args: str) -> str:
    """One command through ``redis-cli`` (beside the redis-server found); "" on failure."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return ""
    try:
        done = subprocess.run(
            [cli, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def redis_calls(port: int) -> dict[str, int]:
    """Calls per command since Redis started (``INFO commandstats``); commands run
    by scripts count under their own names too."""
    calls = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            fields = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
            with contextlib.suppress(KeyError, ValueError):
                calls[name] = int(fields["calls"])
    return calls


def redis_subscribers(port: int) -> dict[str, int]:
    """Subscribers per channel (``PUBSUB CHANNELS``, ``PUBSUB NUMSUB``)."""
    channels = redis_command(port, "PUBSUB", "CHANNELS").split()
    if not channels:
        return {}
    flat = redis_command(port, "PUBSUB", "NUMSUB", *channels).split()
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class WindowSampler:
    """CPU of each named process group over the generator's window.

    The generator announces the window's edges on stderr; :meth:`line` is given
    every stderr line and samples ``/proc`` at those two (and, given Redis's
    port, the commands Redis ran in between and who subscribes to what).
    """

    def __init__(self, groups: dict[str, int], redis_port: int | None = None) -> None:
        self.groups = groups
        self.redis_port = redis_port
        self._calls0: dict[str, int] = {}
        #: Redis commands per second over the window.
        self.redis_calls_per_s: dict[str, float] = {}
        #: Subscribers per channel at the window's end.
        self.subscribers: dict[str, int] = {}
        self._start: dict[str, tuple[float, float]] = {}
        self._t0 = 0.0
        self._tasks0 = 0.0
        self.result: dict[str, dict[str, float]] = {}
        #: CPU of every process on the machine over the window, % of a core.
        self.tasks_pct: float | None = None

    def line(self, text: str) -> None:
        if text.startswith("wsgen: WINDOW start"):
            self._t0 = time.monotonic()
            self._tasks0 = task_seconds()
            self._start = {k: process_times(g) for k, g in self.groups.items()}
            if self.redis_port is not None:
                self._calls0 = redis_calls(self.redis_port)
        elif text.startswith("wsgen: WINDOW end") and self._start:
            window = time.monotonic() - self._t0
            tasks = task_seconds() - self._tasks0
            self.tasks_pct = round(100 * tasks / window, 1)
            if self.redis_port is not None:
                calls = redis_calls(self.redis_port)
                self.redis_calls_per_s = {
                    name: round((n - self._calls0.get(name, 0)) / window, 1)
                    for name, n in sorted(calls.items())
                    if n > self._calls0.get(name, 0)
                }
                self.subscribers = redis_subscribers(self.redis_port)
            for name, pgid in self.groups.items():
                cpu, delay = process_times(pgid)
                cpu0, delay0 = self._start[name]
                self.result[name] = {
                    "cpu_pct": round(100 * (cpu - cpu0) / window, 1),
                    "wait_pct": round(100 * (delay - delay0) / window, 2),
                }


def cpu_prefix(cpu: str) -> list[str]:
    """``taskset -c CPU`` when taskset exists and the CPU is ours, else nothing."""
    if not cpu or shutil.which("taskset") is None:
        return []
    if int(cpu) not in os.sched_getaffinity(0):
        log(f"warning: CPU {cpu} not available; not pinning")
        return []
    return ["taskset", "-c", cpu]


def stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_pids(pgid):
                return
            time.sleep(0.05)
    proc.poll()


# --------------------------------------------------------------------- server


@dataclass
class ServerSpec:
    """How to start the server under test."""

    name: str
    cmd: str | None
    cwd: Path
    twistd: Path | None
    cf_id: str
    cf_secret: str
    public_pem: str
    scratch: Path
    ping_off: bool = False
    #: Start twistd through bench/gcpauses.py (``--gc-pauses``).
    gc_pauses: bool = False
    start_timeout: float = 30.0
    settle: float = 0.5

    def describe(self) -> str:
        """The start command, as recorded with every result."""
        if self.cmd is not None:
            return self.cmd
        extra = " --ping-interval 0" if self.ping_off else ""
        return (
            f"{self.twistd} -n --pidfile= officerouter "
            f"--port tcp:$PORT:interface=127.0.0.1:backlog=1024 --env-file ENV{extra}"
        )


def officerouter_env_file(spec: ServerSpec) -> Path:
    """The env file officerouter reads: PEM on one line with literal ``\\n``."""
    path = spec.scratch / "officerouter.env"
    pem = spec.public_pem.strip().replace("\n", "\\n")
    path.write_text(
        f'CONN_JWT_PUBLIC_KEY="{pem}"\n'
        f'CF_ACCESS_CLIENT_ID="{spec.cf_id}"\n'
        f'CF_ACCESS_CLIENT_SECRET="{spec.cf_secret}"\n'
    )
    path.chmod(0o600)
    return path


def twistd_has_option(twistd: Path, option: str) -> bool:
    """Whether ``twistd officerouter --help`` lists ``option``."""
    try:
        out = subprocess.run(
            [str(twistd), "officerouter", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out.stdout


class Server:
    """One server process group, started fresh for one run."""

    def __init__(
        self,
        spec: ServerSpec,
        port: int,
        cpu: str,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.spec = spec
        self.port = port
        self.cpu = cpu
        self.log_path = log_path
        self.extra_args = extra_args
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Server:
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the process (its own session and process group)."""
        spec = self.spec
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is in use: not benchmarking that")
        env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        if spec.cmd is None:
            assert spec.twistd is not None
            argv = [
                str(spec.twistd),
                "-n",
                "--pidfile=",
                "officerouter",
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
                "--env-file",
                str(officerouter_env_file(spec)),
            ]
            if spec.ping_off:
                argv += ["--ping-interval", "0"]
            argv += self.extra_args
            if spec.gc_pauses:
                self.gc_file.unlink(missing_ok=True)
                argv = [
                    str(spec.twistd.parent / "python"),
                    str(HERE / "gcpauses.py"),
                    "--out",
                    str(self.gc_file),
                    "--",
                    *argv,
                ]
            cwd = spec.scratch
        else:
            env.update(
                PORT=str(self.port),
                CONN_JWT_PUBLIC_KEY=spec.public_pem,
                CF_ACCESS_CLIENT_ID=spec.cf_id,
                CF_ACCESS_CLIENT_SECRET=spec.cf_secret,
            )
            argv = ["bash", "-c", "exec " + spec.cmd]
            cwd = spec.cwd
        with self.log_path.open("ab") as logf:
            logf.write(f"==== {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                cpu_prefix(self.cpu) + argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def gc_file(self) -> Path:
        """Where bench/gcpauses.py writes this server's pauses."""
        return self.spec.scratch / f"gc-{self.port}.json"

    def wait_ready(self) -> Server:
        """Wait until the server accepts connections (then ``settle`` seconds)."""
        assert self.proc is not None
        spec = self.spec
        deadline = time.monotonic() + spec.start_timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with status {self.proc.returncode}; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not open its port in time")
            time.sleep(0.05)
        time.sleep(spec.settle)
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


class RedisProcess:
    """A private redis-server for one run: loopback, nothing on disk."""

    def __init__(self, executable: str, port: int, cpu: str, directory: Path) -> None:
        self.executable = executable
        self.port = port
        self.cpu = cpu
        self.directory = directory
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]

    def start(self) -> RedisProcess:
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is in use: not starting redis there")
        with (self.directory / "redis.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                cpu_prefix(self.cpu) + self.argv(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.directory}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Start ``server`` and stop its whole process group afterwards, whatever happens."""
    try:
        yield server.start()
    finally:
        server.stop()


# --------------------------------------------------------------------- generator


class Generator:
    """One wsgen process; stderr is read on a thread so READY can be waited for.

    stdout has a thread of its own: ``communicate`` would also read stderr and
    take lines (READY, the window's edges) from under the stderr reader.
    """

    def __init__(
        self,
        argv: list[str],
        timeout: float,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.on_line = on_line
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self._out.append(self.proc.stdout.read())

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if self.on_line is not None:
                self.on_line(line)
            if line.startswith("wsgen: READY"):
                self.ready.set()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def result(self) -> dict[str, Any]:
        """Wait for the JSON object on stdout (bounded); kill on timeout."""
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, grace=2)
            raise RuntimeError("generator timed out") from None
        finally:
            self._out_reader.join(timeout=5)
            self._reader.join(timeout=5)
        out = "".join(self._out)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            tail = " | ".join(self.stderr[-5:])
            raise RuntimeError(
                f"generator gave no result (exit {self.proc.returncode}): {tail}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        return result


# --------------------------------------------------------------------- tokens


def token_file(keys: Path, users: int, orgs: int, ttl: int) -> Path:
    """A token file with at least ``users`` tokens over ``orgs`` orgs, cached in ``keys``."""
    import tokens  # bench/tokens.py: PyJWT and cryptography only when signing

    path = keys / f"tokens-k{orgs}.txt"
    if path.exists():
        fresh = time.time() - path.stat().st_mtime < ttl / 2
        with path.open() as f:
            count = sum(1 for _ in f)
        if fresh and count >= users:
            return path
    t0 = time.monotonic()
    tokens.write_tokens(keys, path, users, orgs, ttl)
    log(
        f"signed {users} RS256 tokens over {orgs} org(s) ({time.monotonic() - t0:.1f} s)"
    )
    return path


def public_key(keys: Path) -> str:
    import tokens

    return tokens.ensure_keys(keys)[1]


# --------------------------------------------------------------------- runs


@dataclass
class Plan:
    """One scenario run: the generator's arguments and the labels it is filed under."""

    scenario: str
    n: int
    load: str = ""
    rate: float = 0.0
    orgs: int = 1
    args: list[str] = field(default_factory=list)
    #: single, redis1 or redis2 (TOPOLOGIES)
    topology: str = "single"
    publishers: int = 0

    @property
    def label(self) -> str:
        parts = [self.scenario, f"n={self.n}"]
        if self.orgs > 1:
            parts.append(f"orgs={self.orgs}")
        if self.load:
            parts.append(self.load)
        if self.topology != "single":
            parts.append(self.topology)
        return " ".join(parts)

    @property
    def generator_scenario(self) -> str:
        """What the generator runs: c1-c3 are S1, c4 is S2 (plain) or S2b (batched)."""
        if self.scenario in ("c1", "c2", "c3"):
            return "s1"
        if self.scenario == "c4":
            return "s2b" if self.load == "batched" else "s2"
        return self.scenario

    @property
    def processes(self) -> int:
        return 2 if self.topology == "redis2" else 1

    @property
    def redis(self) -> bool:
        return self.topology != "single"


def plans(a: argparse.Namespace) -> list[Plan]:
    """Every run of one repetition, in order."""

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    loads = [x for x in a.s1_loads.split(",") if x]
    out: list[Plan] = []
    for scenario in a.scenarios:
        if scenario == "s1":
            for n in ints(a.s1_n):
                for load in loads:
                    rate = 0.0 if load == "max" else a.s1_rate
                    out.append(Plan("s1", n, load, rate))
        elif scenario == "s2":
            out.extend(Plan("s2", n) for n in ints(a.s2_n))
        elif scenario == "s2b":
            out.extend(Plan("s2b", n) for n in ints(a.s2b_n))
        elif scenario == "s3":
            out.extend(Plan("s3", n) for n in ints(a.s3_n))
        elif scenario == "s4":
            for spec in a.s4.split(","):
                orgs, per_org = (int(x) for x in spec.lower().split("x"))
                for load in [x for x in a.s4_loads.split(",") if x]:
                    rate = 0.0 if load == "max" else a.s4_rate
                    out.append(Plan("s4", orgs * per_org, load, rate, orgs))
        elif scenario == "s5":
            out.extend(Plan("s5", n) for n in ints(a.s5_n))
        elif scenario == "s6":
            for n in ints(a.s6_n):
                out.extend(Plan("s6", n, mode) for mode in a.s6_presence)
        elif scenario == "c1":
            for n in ints(a.c1_n):
                for topology in a.c1_topologies:
                    out.append(Plan("c1", n, "fixed", a.c1_rate * n, topology=topology))
        elif scenario == "c2":
            for topology in a.c2_topologies:
                out.append(
                    Plan(
                        "c2",
                        a.c2_n,
                        "max",
                        topology=topology,
                        publishers=a.c2_publishers,
                    )
                )
        elif scenario == "c3":
            for n in ints(a.c3_n):
                for topology in a.c3_topologies:
                    out.append(Plan("c3", n, "max", topology=topology))
        elif scenario == "c4":
            for mode in a.c4_modes:
                n = a.c4_n if mode == "plain" else a.c4b_n
                for topology in a.c4_topologies:
                    out.append(Plan("c4", n, mode, topology=topology))
    if a.backplane == "redis":
        for plan in out:
            if plan.scenario in SCENARIOS:
                plan.topology = "redis1"
    return out


@dataclass
class Deployment:
    """The processes of one run and where the generator's connections go."""

    servers: list[Server]
    redis: RedisProcess | None
    client_ports: list[int]
    notify_ports: list[int]

    @property
    def shared_core(self) -> bool:
        """Whether several server-side processes share the server core."""
        on_core = len(self.servers)
        if self.redis is not None and self.redis.cpu == self.servers[0].cpu:
            on_core += 1
        return on_core > 1

    def groups(self) -> dict[str, int]:
        """Process groups by name: each server's node id (or "server"), "redis"."""
        named = {
            (NODE_IDS[i] if self.redis is not None else "server"): server.pgid
            for i, server in enumerate(self.servers)
        }
        if self.redis is not None:
            named["redis"] = self.redis.pgid
        return named


def deployment(a: argparse.Namespace, spec: ServerSpec, plan: Plan) -> Deployment:
    """The servers (and Redis) a plan needs, not started yet."""
    taken: set[int] = set()

    def port(i: int) -> int:
        while True:
            candidate = a.port + i if a.port else free_port()
            if candidate not in taken:
                taken.add(candidate)
                return candidate

    redis = None
    if plan.redis:
        directory = spec.scratch / "redis"
        directory.mkdir(exist_ok=True)
        redis = RedisProcess(a.redis_server, port(100), a.redis_cpu, directory)
    servers = []
    for i in range(plan.processes):
        extra: tuple[str, ...] = ()
        if redis is not None:
            extra = ("--redis", redis.url, "--node-id", NODE_IDS[i])
        log_path = a.out / f"{spec.name}.server.log"
        servers.append(Server(spec, port(i), a.server_cpu, log_path, extra))
    ports = [server.port for server in servers]
    if plan.scenario == "c1" and len(servers) > 1:
        # Notifies posted to the first process, every client on the second.
        return Deployment(servers, redis, ports[1:], ports[:1])
    return Deployment(servers, redis, ports, ports)


def generator_argv(
    a: argparse.Namespace, plan: Plan, dep: Deployment, tokens_path: Path
) -> list[str]:
    scenario = plan.generator_scenario
    server = dep.servers[0]
    argv = [
        *cpu_prefix(a.gen_cpu),
        str(WSGEN),
        "--scenario",
        scenario,
        "--port",
        str(dep.client_ports[0]),
        "--tokens",
        str(tokens_path),
        "-n",
        str(plan.n),
        "--server-pgid",
        str(server.pgid),
        "--cf-id",
        server.spec.cf_id,
        "--cf-secret",
        server.spec.cf_secret,
        "--ready-timeout",
        str(a.ready_timeout),
        "--inflight",
        str(a.s5_inflight if scenario in ("s5", "s6") else a.inflight),
    ]
    if scenario == "s6":
        argv += ["--presence", plan.load]
    if len(dep.client_ports) > 1 or dep.notify_ports != dep.client_ports:
        argv += [
            "--ports",
            ",".join(map(str, dep.client_ports)),
            "--notify-ports",
            ",".join(map(str, dep.notify_ports)),
        ]
    if scenario in ("s1", "s2", "s2b", "s4"):
        argv += [
            "--duration",
            str(a.duration),
            "--warmup",
            str(a.warmup),
            "--drain",
            str(a.drain),
        ]
    if scenario in ("s1", "s4"):
        publishers = plan.publishers or a.publishers
        argv += ["--publishers", str(publishers), "--rate", str(plan.rate)]
        if a.batch > 1:
            argv += ["--batch", str(a.batch)]
    if plan.scenario == "c4":
        argv += ["--hz", str(a.c4_hz)]
    elif scenario == "s2":
        argv += ["--hz", str(a.s2_hz)]
    elif scenario == "s2b":
        argv += ["--hz", str(a.s2b_hz)]
    if scenario == "s3":
        argv += ["--settle", str(a.s3_settle), "--hold", "60"]
    return argv


def one_attempt(
    a: argparse.Namespace, spec: ServerSpec, plan: Plan, tokens_path: Path
) -> dict[str, Any]:
    quiet = wait_quiet(a.quiet_pct, a.quiet_wait) if a.quiet_wait > 0 else None
    dep = deployment(a, spec, plan)
    server = dep.servers[0]
    record: dict[str, Any] = {}
    sampler: WindowSampler | None = None
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        # Stopped in reverse order: the servers, then Redis.
        if dep.redis is not None:
            stack.callback(dep.redis.stop)
            dep.redis.start()
        for each in dep.servers:
            stack.callback(each.stop)
            each.launch()
        for each in dep.servers:
            each.wait_ready()
        record["server_start_s"] = round(time.monotonic() - t0, 2)
        mem0 = group_memory_kb(server.pgid)
        tcp0 = listen_counters()
        timeout = a.ready_timeout + a.warmup + a.duration + a.drain + 90
        if plan.redis or plan.processes > 1:
            sampler = WindowSampler(
                dep.groups(), dep.redis.port if dep.redis is not None else None
            )
        gen = Generator(
            generator_argv(a, plan, dep, tokens_path),
            timeout,
            on_line=sampler.line if sampler is not None else None,
        )
        try:
            if plan.scenario == "s3":
                if gen.ready.wait(timeout=a.ready_timeout + a.s3_settle + 30):
                    mem_n = group_memory_kb(server.pgid)
                    record["rss_n_kb"] = mem_n["rss_kb"]
                gen.signal(signal.SIGUSR1)
            result = gen.result()
        finally:
            if gen.proc.poll() is None:
                stop_group(gen.proc, grace=2)
        tcp1 = listen_counters()
        mem1 = group_memory_kb(server.pgid)
        record["server_alive"] = all(each.alive() for each in dep.servers)
    record.update(result)
    if spec.gc_pauses and server.gc_file.exists():
        record["gc_pauses"] = json.loads(server.gc_file.read_text())
    # SYNs or handshakes dropped because the server's accept queue was full
    # (machine-wide counters; nothing else listens on loopback at this rate).
    record["listen_overflows"] = {k: tcp1.get(k, 0) - tcp0.get(k, 0) for k in tcp1}
    record.update(
        rss0_kb=mem0["rss_kb"],
        rss_end_kb=mem1["rss_kb"],
        hwm_kb=mem1["hwm_kb"],
        server_procs=mem1["procs"],
        generator_stderr=gen.stderr[-12:],
        run_wall_s=round(time.monotonic() - t0, 2),
        quiet_before_pct=quiet,
    )
    if plan.redis or plan.processes > 1:
        record["processes"] = [
            " ".join([*cpu_prefix(each.cpu), each.spec.describe(), *each.extra_args])
            for each in dep.servers
        ]
        if dep.redis is not None:
            record["processes"].append(
                " ".join(cpu_prefix(dep.redis.cpu) + dep.redis.argv())
            )
        record["shared_core"] = dep.shared_core
    if sampler is not None and sampler.result and "cpu" in record:
        procs = sampler.result
        record["procs_cpu"] = procs
        if sampler.redis_port is not None:
            record["redis_calls_per_s"] = sampler.redis_calls_per_s
            record["redis_subscribers"] = sampler.subscribers
        # Every process's CPU but ours and the generator's (irq and softirq
        # time, loopback's receive path, is nobody's and not counted).
        server_side = sum(v["cpu_pct"] for v in procs.values())
        tasks = sampler.tasks_pct or 0.0
        record["cluster_cpu"] = {
            "server_side_pct": round(server_side, 1),
            "other_pct": round(
                max(0.0, tasks - server_side - record["cpu"]["gen_pct"]), 1
            ),
        }
    if plan.scenario == "s3":
        ready = record.get("ready") or 0
        rss_n = record.get("rss_n_kb")
        record["kb_per_conn"] = (
            round((rss_n - mem0["rss_kb"]) / ready, 2) if rss_n and ready else None
        )
    return record


#: Other CPU (% of a core) a run with a shared server core tolerates: this
#: driver, kernel threads.
OTHER_ALLOWANCE = 3.0


def disturbed(record: dict[str, Any]) -> float:
    """How long the server or the generator waited for its core, % of the window.

    When several server-side processes share the server core (two routers, or a
    router and Redis) they wait for each other, which is not noise: then the
    generator's wait and the CPU other processes used (beyond
    :data:`OTHER_ALLOWANCE`) count instead.
    """
    cpu = record.get("cpu") or record.get("connect", {}).get("cpu") or {}
    if record.get("shared_core") and "cluster_cpu" in record:
        other = record["cluster_cpu"]["other_pct"] - OTHER_ALLOWANCE
        return max(cpu.get("gen_wait_pct", 0.0), other)
    return max(cpu.get("server_wait_pct", 0.0), cpu.get("gen_wait_pct", 0.0))


def run_plan(
    a: argparse.Namespace, spec: ServerSpec, plan: Plan, rep: int, tokens_path: Path
) -> None:
    records = []
    for attempt in range(1, a.max_attempts + 1):
        base = {
            "server": spec.name,
            "scenario": plan.scenario,
            "n": plan.n,
            "load": plan.load,
            "orgs_planned": plan.orgs,
            "rate_target": plan.rate,
            "topology": plan.topology,
            "rep": rep,
            "attempt": attempt,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cmd": spec.describe(),
            "duration": a.duration,
            "warmup": a.warmup,
        }
        try:
            attempt_record = one_attempt(a, spec, plan, tokens_path)
            # c1-c4 run the generator's s1/s2/s2b: the record keeps the plan's name.
            attempt_record["generator_scenario"] = attempt_record.pop("scenario", None)
            record = {**base, **attempt_record}
        except Exception as e:  # recorded and shown; the session goes on
            record = {**base, "failed": str(e)}
        records.append(record)
        wait = disturbed(record)
        log(f"{spec.name} {plan.label} rep {rep} try {attempt}: {summary(record)}")
        if "failed" in record or plan.scenario == "s3" or wait <= a.retry_wait_pct:
            break
        if attempt < a.max_attempts:
            log(f"  disturbed (waited {wait:.1f}% of the window for a core): again")
    kept = min(records, key=lambda r: ("failed" in r, disturbed(r)))
    with (a.out / "results.jsonl").open("a") as f:
        for record in records:
            record["kept"] = record is kept
            f.write(json.dumps(record) + "\n")


def summary(r: dict[str, Any]) -> str:
    """One line per run for the progress log."""
    if "failed" in r:
        return f"FAILED: {r['failed']}"
    errors = r.get("errors", {}).get("total")
    cpu = r.get("cpu") or r.get("connect", {}).get("cpu", {})
    parts = [f"errors {errors}"]
    if "deliveries_per_s" in r:
        lat = r["latency_ms"]
        parts.append(
            f"{r['deliveries_per_s']:.0f} deliveries/s, p50 {lat['p50']:.2f} "
            f"p99 {lat['p99']:.2f} ms"
        )
    if "totals" in r:
        parts.append(
            f"claimed {r['totals']['delivered_claimed']} received {r['totals']['received']}"
        )
    if "s2" in r:
        parts.append(f"share {r['s2']['achieved']:.2f}")
    if "batched" in r:
        b = r["batched"]
        parts.append(
            f"{b['frames_per_s']:.0f} positions frames/s, "
            f"heard min {b['heard_min']}/{b['heard_expected']}"
        )
    if "notify" in r and r.get("scenario") in CLUSTER_SCENARIOS:
        parts.append(f"{r['notify']['replies_per_s']:.0f} notifies/s")
    if "latency_cross_ms" in r:
        cross = r["latency_cross_ms"]
        parts.append(f"cross p50 {cross['p50']:.2f} p99 {cross['p99']:.2f} ms")
    if "procs_cpu" in r:
        procs = ", ".join(f"{k} {v['cpu_pct']:.0f}%" for k, v in r["procs_cpu"].items())
        parts.append(f"({procs})")
    if r.get("kb_per_conn") is not None:
        parts.append(f"{r['kb_per_conn']} KB/conn")
    if r.get("gc_pauses"):
        g = r["gc_pauses"]
        full = g["by_generation"]["2"]
        parts.append(
            f"gc pauses max {g['max_ms']} ms, p99 {g['p99_ms']} ms; "
            f"{full['collections']} full, max {full['max_ms']} ms"
        )
    if r.get("scenario") == "s5":
        parts.append(
            f"{r['connect']['seconds']:.2f} s, handshake p99 "
            f"{r['connect']['handshake_ms']['p99']:.1f} ms"
        )
    if "view" in r:
        v = r["view"]
        parts.append(
            f"all connected {r['connect']['seconds']:.2f} s, every view right "
            f"{v['seconds']:.2f} s ({v['complete']}/{r['n']}), "
            f"{v['bytes'] / 1e6:.1f} MB of presence"
        )
    parts.append(
        f"server {cpu.get('server_pct', -1):.0f}% gen {cpu.get('gen_pct', -1):.0f}% "
        f"(wait {cpu.get('server_wait_pct', 0):.1f}/{cpu.get('gen_wait_pct', 0):.1f}%, "
        f"other {cpu.get('other_pct', 0):.0f}%)"
    )
    return "; ".join(parts)


# --------------------------------------------------------------------- report


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        if path.exists():
            with path.open() as f:
                out.extend(json.loads(line) for line in f if line.strip())
    return out


def _k(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _cell(records: list[dict[str, Any]], fmt: Any, *, noisy_pct: float = 3.0) -> str:
    if not records:
        return "–"
    parts = []
    for r in sorted(records, key=lambda r: r["rep"]):
        if "failed" in r:
            parts.append("failed")
            continue
        try:
            text = fmt(r)
        except (KeyError, TypeError, ZeroDivisionError):
            text = "?"
        if r.get("errors", {}).get("total"):
            text += " ⚠"
        if r["scenario"] != "s3" and disturbed(r) > noisy_pct:
            text += "†"
        parts.append(text)
    return " / ".join(parts)


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _table(
    title: str,
    note: str,
    records: list[dict[str, Any]],
    servers: list[str],
    scenario: str,
    fmt: Any,
    value: Any = None,
    load: str | None = None,
    higher_is_better: bool = True,
) -> list[str]:
    rows = sorted(
        {
            (r["n"], r.get("orgs_planned", 1), r.get("load", ""))
            for r in records
            if r["scenario"] == scenario and (load is None or r.get("load") == load)
        }
    )
    if not rows:
        return []
    ratio = value is not None and len(servers) >= 2
    head = ["", *servers]
    if ratio:
        head.append(f"{servers[0]} / {servers[1]}")
    lines = [f"### {title}", ""] + ([note, ""] if note else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for n, orgs, row_load in rows:
        label = f"N={n}" if orgs <= 1 else f"{orgs} orgs × {n // orgs}"
        if load is None and row_load:
            label += f" {row_load}"
        cells = [label]
        medians = []
        for server in servers:
            mine = [
                r
                for r in records
                if r["server"] == server
                and r["scenario"] == scenario
                and r["n"] == n
                and r.get("orgs_planned", 1) == orgs
                and r.get("load", "") == row_load
            ]
            cells.append(_cell(mine, fmt))
            if ratio:
                good = [r for r in mine if "failed" not in r]
                with contextlib.suppress(KeyError, TypeError):
                    medians.append(_median([value(r) for r in good]))
        if ratio:
            a, b = medians[0], medians[1]
            if a and b:
                cells.append(f"{a / b:.2f}" if higher_is_better else f"{b / a:.2f}")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cluster_table(
    title: str,
    note: str,
    records: list[dict[str, Any]],
    scenario: str,
    fmt: Any,
    value: Any,
    compare: str = "ratio",
    higher_is_better: bool = True,
) -> list[str]:
    """One row per (server, size, load, topology) of a cluster scenario.

    ``value(r)`` gives a tuple of numbers; the last column compares the medians
    of each with those of the "single" row of the same server, size and load:
    ``compare="ratio"`` (``> 1`` is better) or ``"diff"`` (what was added).
    """
    mine = [r for r in records if r["scenario"] == scenario]
    if not mine:
        return []
    order = {t: i for i, t in enumerate(TOPOLOGIES)}
    keys = sorted(
        {
            (r["server"], r["n"], r.get("load", ""), r.get("topology", "single"))
            for r in mine
        },
        key=lambda k: (k[0], k[1], k[2], order.get(k[3], 9)),
    )
    several = len({k[0] for k in keys}) > 1
    lines = [f"### {title}", ""] + ([note, ""] if note else [])
    head = "ratio to single" if compare == "ratio" else "added to single"
    lines.append(
        "| run | topology | rep 1 / rep 2 / … | median | "
        f"{head} | noise: gen wait %, other CPU % |"
    )
    lines.append("|---|---|---|---|---|---|")

    def runs(key: tuple[str, int, str, str]) -> list[dict[str, Any]]:
        return [
            r
            for r in mine
            if (r["server"], r["n"], r.get("load", ""), r.get("topology", "single"))
            == key
        ]

    def medians(rs: list[dict[str, Any]]) -> list[float | None]:
        values = []
        for r in rs:
            if "failed" in r:
                continue
            with contextlib.suppress(KeyError, TypeError):
                values.append(value(r))
        if not values:
            return []
        return [_median([v[i] for v in values]) for i in range(len(values[0]))]

    def noise(r: dict[str, Any]) -> str:
        if "failed" in r or "cpu" not in r:
            return "–"
        other = r.get("cluster_cpu", {}).get("other_pct", r["cpu"]["other_pct"])
        return f"{r['cpu']['gen_wait_pct']:.1f}, {other:.0f}"

    for key in keys:
        server, n, load, topology = key
        label = f"N={n}" + (f" {load}" if load else "")
        if several:
            label = f"{server} {label}"
        rs = runs(key)
        med = medians(rs)
        base = medians(runs((server, n, load, "single")))
        cmp_text = "–"
        if topology != "single" and med and base and len(med) == len(base):
            parts = []
            for m, b in zip(med, base, strict=True):
                if m is None or b is None:
                    parts.append("?")
                elif compare == "diff":
                    parts.append(f"{m - b:+.2f}")
                elif m and b:
                    parts.append(f"{m / b:.2f}" if higher_is_better else f"{b / m:.2f}")
            cmp_text = ", ".join(parts)
        med_text = (
            ", ".join("?" if m is None else _k(m) if m >= 1000 else _ms(m) for m in med)
            or "–"
        )
        noises = " / ".join(noise(r) for r in sorted(rs, key=lambda r: r["rep"]))
        lines.append(
            f"| {label} | {topology} | {_cell(rs, fmt)} | {med_text} | {cmp_text} | {noises} |"
        )
    return [*lines, ""]


def _procs(r: dict[str, Any]) -> str:
    """Server-side CPU per process over the window, % of a core."""
    procs = r.get("procs_cpu")
    if not procs:
        return f"{r['cpu']['server_pct']:.0f}"
    return "+".join(f"{v['cpu_pct']:.0f}" for v in procs.values())


def render_cluster(records: list[dict[str, Any]]) -> list[str]:
    """The cluster scenarios (c1-c4), if any were run."""
    if not any(r["scenario"] in CLUSTER_SCENARIOS for r in records):
        return []
    lat = "latency_ms"
    lines = [
        "## Cluster scenarios (Redis backplane)",
        "",
        "Topologies: **single** = one process, no Redis; **redis1** = one process "
        "with `--redis` (a private redis-server); **redis2** = two processes "
        "(`bench-a`, `bench-b`) on one Redis. Every router is on the server core; "
        "where Redis runs is in each record (`processes`). Medians over the "
        "repetitions; server CPU is per process (`bench-a+bench-b+redis`, % of a "
        "core). Noise for runs whose server core is shared (two routers, or a "
        "router and Redis): the generator's wait and the CPU of every other process.",
        "",
    ]
    lines += _cluster_table(
        "C1 notify on one process, clients on another, fixed rate: latency p50, p99 (ms)",
        "redis2: notifies POSTed to bench-a, every client on bench-b. Open loop; "
        "latency from the scheduled send time. Target: under 2 ms (p50) and 10 ms "
        "(p99) added to single.",
        records,
        "c1",
        lambda r: (
            f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])} "
            f"({_k(r['notify']['replies_per_s'])}/s; cpu {_procs(r)})"
        ),
        lambda r: (r[lat]["p50"], r[lat]["p99"]),
        compare="diff",
    )
    lines += _cluster_table(
        "C2 numbered notifications into one org, max rate: notifies/s answered 200",
        "Closed loop (`--c2-publishers` connections); redis2: publishers and "
        "clients split between bench-a and bench-b. Target: at least 10 000/s.",
        records,
        "c2",
        lambda r: f"{_k(r['notify']['replies_per_s'])} (cpu {_procs(r)})",
        lambda r: (r["notify"]["replies_per_s"],),
    )
    lines += _cluster_table(
        "C3 S1 broadcast, max rate, backplane on vs off: deliveries/s",
        "Target: redis1 at least 0.8× single.",
        records,
        "c3",
        lambda r: (
            f"{_k(r['deliveries_per_s'])}; p99 {_ms(r[lat]['p99'])} (cpu {_procs(r)})"
        ),
        lambda r: (r["deliveries_per_s"],),
    )

    def c4(r: dict[str, Any]) -> str:
        text = f"{r['s2']['achieved']:.2f}; {_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}"
        cross = r.get("latency_cross_ms")
        if cross and cross.get("n"):
            text += f"; cross {_ms(cross['p50'])}, {_ms(cross['p99'])}"
        if "batched" in r:
            b = r["batched"]
            text += f"; heard {b['heard_min']}/{b['heard_expected']}"
        return text + f" (cpu {_procs(r)})"

    lines += _cluster_table(
        "C4 position chatter, half the clients on each process: share delivered; "
        "latency p50, p99 (ms); cross-process p50, p99",
        "plain = S2 (`position_update` frames), batched = S2b (`?positions=batched`). "
        "Share of N·(N−1)·R delivered in the window; cross = sender and receiver on "
        "different processes. The last column compares the share and the p99.",
        records,
        "c4",
        c4,
        lambda r: (r["s2"]["achieved"], r[lat]["p99"]),
        compare="diff",
    )
    lines += _redis_work(records)
    return lines


def _redis_work(records: list[dict[str, Any]]) -> list[str]:
    """What Redis did per second of the window, per cluster run (last repetition)."""
    rows = {}
    for r in records:
        if r["scenario"] in CLUSTER_SCENARIOS and r.get("redis_calls_per_s"):
            rows[(r["scenario"], r["n"], r.get("load", ""), r["topology"])] = r
    if not rows:
        return []
    lines = [
        "### Redis's work over the window: commands/s; subscribers per org channel",
        "",
        "From `INFO commandstats` at the window's edges (commands run by scripts "
        "count under their own names) and `PUBSUB NUMSUB` at its end; the last "
        "repetition of each run. One subscriber per process serving the org, one "
        "`publish` per notify, and for positions one `publish` per process per tick.",
        "",
        "| run | topology | evalsha/s | publish/s | other commands/s | subscribers |",
        "|---|---|---|---|---|---|",
    ]
    for (scenario, n, load, topology), r in sorted(rows.items()):
        calls = dict(r["redis_calls_per_s"])
        evalsha = calls.pop("evalsha", 0.0)
        publish = calls.pop("publish", 0.0)
        others = ", ".join(f"{k} {_k(v)}" for k, v in calls.items() if v >= 1)
        subs = ", ".join(str(v) for v in r.get("redis_subscribers", {}).values())
        lines.append(
            f"| {scenario} N={n} {load} | {topology} | {_k(evalsha)} | {_k(publish)} "
            f"| {others or '–'} | {subs or '–'} |"
        )
    return [*lines, ""]


def s2b_target_met(r: dict[str, Any]) -> bool:
    """The batching target: p99 < 100 ms, and every user's position reached everyone."""
    b = r["batched"]
    return bool(
        r["latency_ms"]["p99"] < 100
        and b["receivers"] > 0
        and b["heard_min"] == b["heard_expected"]
        and not r["errors"]["total"]
    )


def _join_storm_targets(records: list[dict[str, Any]], servers: list[str]) -> list[str]:
    """S6 (every view right) of each presence contract beside the S5 (all
    connected) of the servers that send no presence, same N: the join-storm
    target is S6 with ``?presence=diff`` within 2x of such a server's S5."""
    good = [r for r in records if "failed" not in r]
    storms = sorted(
        {(r["server"], r["n"], r["load"]) for r in good if r["scenario"] == "s6"}
    )
    rows = []
    for server, n, mode in storms:
        mine = _median(
            [
                r["view"]["seconds"]
                for r in good
                if (r["server"], r["scenario"], r["n"], r["load"])
                == (server, "s6", n, mode)
            ]
        )
        for other in servers:
            if other == server:
                continue
            theirs = _median(
                [
                    r["connect"]["seconds"]
                    for r in good
                    if (r["server"], r["scenario"], r["n"]) == (other, "s5", n)
                ]
            )
            if mine and theirs:
                ratio = mine / theirs
                verdict = "met" if ratio <= 2 else "NOT met"
                rows.append(
                    f"| N={n} | {server} {mode} | {mine:.2f} s | {other} | "
                    f"{theirs:.2f} s | {ratio:.2f} | {verdict if mode == 'diff' else '–'} |"
                )
    if not rows:
        return []
    return [
        "### Join storm against a server without presence: S6 (every view right) / "
        "its S5 (all connected), medians",
        "",
        "Target: `?presence=diff` within 2x (ratio ≤ 2).",
        "",
        "| size | S6 | median | beside | S5 median | ratio | target |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def render_report(out: Path) -> str:
    records = [r for r in load_records([out / "results.jsonl"]) if r.get("kept", True)]
    servers: list[str] = []
    for r in records:
        if r["server"] not in servers:
            servers.append(r["server"])
    lat = "latency_ms"
    cpu = "cpu"
    lines = [
        "# Benchmark results",
        "",
        f"From `{out / 'results.jsonl'}` ({len(records)} kept runs). Each cell lists "
        "the repetitions in order (`rep 1 / rep 2 / …`). † = the server or the "
        "generator waited more than 3 % of the window for its core (noise); "
        "⚠ = the generator counted errors in that run (see the JSONL). Ratio "
        "columns compare medians of the first two servers, > 1 meaning the first "
        "is better.",
        "",
    ]
    t = _table
    lines += t(
        "S1 broadcast, max rate: deliveries/s",
        "Closed loop: each publisher connection sends its next notify when the reply arrives.",
        records,
        servers,
        "s1",
        lambda r: _k(r["deliveries_per_s"]),
        lambda r: r["deliveries_per_s"],
        load="max",
    )
    lines += t(
        "S1 broadcast, max rate: latency p50, p99 (ms)",
        "From the publisher's send time to a client's receipt.",
        records,
        servers,
        "s1",
        lambda r: f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}",
        load="max",
    )
    lines += t(
        "S1 broadcast, max rate: notify replies/s; server CPU %, generator CPU %, frames per client read",
        "",
        records,
        servers,
        "s1",
        lambda r: (
            f"{_k(r['notify']['replies_per_s'])}; {r[cpu]['server_pct']:.0f}, "
            f"{r[cpu]['gen_pct']:.0f}, {r['frames_per_read']:.1f}"
        ),
        load="max",
    )
    lines += t(
        "S1 broadcast, fixed rate: latency p50, p99 (ms)",
        "Open loop; latency counts from the scheduled send time.",
        records,
        servers,
        "s1",
        lambda r: f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}",
        lambda r: r[lat]["p99"],
        load="fixed",
        higher_is_better=False,
    )
    lines += t(
        "S1 broadcast, fixed rate: deliveries/s achieved; server CPU %",
        "",
        records,
        servers,
        "s1",
        lambda r: f"{_k(r['deliveries_per_s'])}; {r[cpu]['server_pct']:.0f}",
        load="fixed",
    )
    lines += t(
        "S1: frames counted at the clients vs the server's `delivered` sums (whole run)",
        "After a drain; any difference is a lost or extra frame.",
        records,
        servers,
        "s1",
        lambda r: f"{r['totals']['received']} of {r['totals']['delivered_claimed']}",
    )
    lines += t(
        "S2 position chatter: achieved share of N·(N−1)·R deliveries/s",
        "",
        records,
        servers,
        "s2",
        lambda r: f"{r['s2']['achieved']:.2f} ({_k(r['deliveries_per_s'])}/s)",
        lambda r: r["s2"]["achieved"],
    )
    lines += t(
        "S2 position chatter: latency p50, p99 (ms)",
        "",
        records,
        servers,
        "s2",
        lambda r: f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}",
    )
    batched_note = (
        "officerouter only: clients open `/websocket?positions=batched`; the peers "
        "do not implement position batching, so they are not run (–)."
    )
    lines += t(
        "S2b batched positions: achieved share of N·(N−1)·R entries/s; entries/s; positions frames/s",
        batched_note
        + " An entry about the receiver's own user is not counted (the server "
        "sends it back; `batched.own_entries`).",
        records,
        servers,
        "s2b",
        lambda r: (
            f"{r['s2']['achieved']:.2f} ({_k(r['deliveries_per_s'])}/s); "
            f"{_k(r['batched']['frames_per_s'])}"
        ),
    )
    lines += t(
        "S2b batched positions: latency p50, p99 (ms); target: p99 < 100 ms and every user heard by everyone",
        "From the send time to the receipt of the `positions` frame carrying it, "
        "so it includes the wait for the server's tick (50 ms by default). "
        "`met` = p99 < 100 ms and every receiver heard all N−1 other users in the window.",
        records,
        servers,
        "s2b",
        lambda r: (
            f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}; "
            f"{'met' if s2b_target_met(r) else 'NOT met'}"
        ),
    )
    lines += t(
        "S2b batched positions: distinct other users heard in the window, min over receivers / N−1",
        "Every user's latest position reached everyone when min = N−1.",
        records,
        servers,
        "s2b",
        lambda r: f"{r['batched']['heard_min']} / {r['batched']['heard_expected']}",
    )
    lines += t(
        "S3 idle memory: KB of server RSS per connection",
        "(RSS with N idle connections − RSS of the same fresh process) / N, summed over the process group.",
        records,
        servers,
        "s3",
        lambda r: f"{r['kb_per_conn']:.1f}",
        lambda r: r["kb_per_conn"],
        higher_is_better=False,
    )
    lines += t(
        "S3 idle memory: RSS MB, fresh → N connections",
        "",
        records,
        servers,
        "s3",
        lambda r: f"{r['rss0_kb'] / 1024:.0f} → {r['rss_n_kb'] / 1024:.0f}",
    )
    lines += t(
        "S4 many orgs: deliveries/s; notify replies/s",
        "Each notify goes to an org picked at random.",
        records,
        servers,
        "s4",
        lambda r: f"{_k(r['deliveries_per_s'])}; {_k(r['notify']['replies_per_s'])}",
    )
    lines += t(
        "S4 many orgs: latency p50, p99 (ms)",
        "",
        records,
        servers,
        "s4",
        lambda r: f"{_ms(r[lat]['p50'])}, {_ms(r[lat]['p99'])}",
    )
    lines += t(
        "S5 connection storm: seconds until all N have `connected`; handshake p50, p99 (ms); listen-queue overflows",
        "Overflows: SYNs dropped because the server's accept queue was full (TcpExt ListenOverflows); each costs the client a 1 s+ retransmit.",
        records,
        servers,
        "s5",
        lambda r: (
            f"{r['connect']['seconds']:.2f} s; {_ms(r['connect']['handshake_ms']['p50'])}, "
            f"{_ms(r['connect']['handshake_ms']['p99'])}; "
            f"{r.get('listen_overflows', {}).get('ListenOverflows', '?')}"
        ),
        lambda r: r["connect"]["seconds"],
        higher_is_better=False,
    )

    lines += t(
        "S6 join storm: seconds until every client's view of who is online is right "
        "(all connected); MB of presence frames; views right",
        "officerouter only. S5's storm (same N, same handshakes in flight), then until "
        "each client's view, folded from its presence frames, is the whole org. "
        "plain: `presence` + `user_joined`/`user_left`; diff: `?presence=diff`. "
        "Compare with S5 of a server without presence (Node `ws`).",
        records,
        servers,
        "s6",
        lambda r: (
            f"{r['view']['seconds']:.2f} s ({r['connect']['seconds']:.2f} s); "
            f"{r['view']['bytes'] / 1e6:.0f} MB; {r['view']['complete']}/{r['n']}"
        ),
    )

    lines += _join_storm_targets(records, servers)

    def noise(r: dict[str, Any]) -> str:
        c = r.get("cpu") or r["connect"]["cpu"]
        return (
            f"{c['server_wait_pct']:.1f}, {c['gen_wait_pct']:.1f}, "
            f"{c['other_pct']:.0f}, {c['steal_pct']:.0f}"
        )

    lines += render_cluster(records)
    for scenario in SCENARIOS:
        lines += t(
            f"Noise, {scenario}: server wait %, generator wait %, other CPU %, steal %",
            "Wait = runnable but not running (/proc/*/schedstat run_delay), % of the window; "
            "other = CPU used by processes that are neither server nor generator, % of a core.",
            records,
            servers,
            scenario,
            noise,
        )
    ceiling = load_records([out / "ceiling.jsonl"])
    if ceiling:
        lines += [
            "### Generator ceiling (wsblast on the server core, wsgen on its own)",
            "",
            "| N | frames per write | frames/s received | generator CPU % | frames per read "
            "| noise: generator wait %, other CPU % |",
            "|---|---|---|---|---|---|",
        ]
        for r in ceiling:
            c = r["cpu"]
            lines.append(
                f"| {r['n']} | {r['batch']} | {_k(r['deliveries_per_s'])} | "
                f"{c['gen_pct']:.0f} | {r['frames_per_read']:.1f} | "
                f"{c['gen_wait_pct']:.1f}, {c['other_pct']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(out: Path) -> Path:
    path = out / "results.md"
    path.write_text(render_report(out))
    return path


# --------------------------------------------------------------------- main


def build_generator() -> None:
    """``make -C bench/gen``; fails loudly without a C compiler."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise SystemExit("bench: building gen/wsgen needs make and gcc")
    subprocess.run(["make", "-s", "-C", str(GEN_DIR)], check=True, timeout=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/README.md.",
    )
    p.add_argument(
        "--out", type=Path, default=HERE / "results" / time.strftime("%Y%m%dT%H%M%S")
    )
    p.add_argument(
        "--name",
        default=None,
        help="label of the server (default: officerouter, or from --cmd)",
    )
    p.add_argument(
        "--cmd",
        default=None,
        help="shell command starting another server in the foreground",
    )
    p.add_argument(
        "--cwd",
        type=Path,
        default=Path.cwd(),
        help="working directory for --cmd and --peer commands",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="another server, run right after the first one for every run "
        "(repeatable; runs alternate between servers)",
    )
    p.add_argument(
        "--twistd", type=Path, default=None, help="twistd to run officerouter with"
    )
    p.add_argument(
        "--gc-pauses",
        action="store_true",
        help="start twistd through bench/gcpauses.py and record its garbage "
        "collections' pauses (gc_pauses in each record)",
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument(
        "--reps", type=int, default=1, help="repetitions (all scenarios, then again)"
    )
    p.add_argument(
        "--rep-start", type=int, default=1, help="label of the first repetition"
    )
    p.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="load before the window, s"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=5.0,
        help="max wait for in-flight frames after the window, s",
    )
    p.add_argument("--s1-n", default="100,1000,5000")
    p.add_argument("--s1-loads", default="max,fixed")
    p.add_argument(
        "--s1-rate", type=float, default=50000, help="S1 fixed load, deliveries/s"
    )
    p.add_argument(
        "--publishers",
        type=int,
        default=4,
        help="keep-alive notify connections (S1, S4)",
    )
    p.add_argument("--s2-n", default="50,100,200")
    p.add_argument("--s2-hz", type=float, default=10)
    p.add_argument(
        "--s2b-n",
        default="500",
        help="S2b sizes (batched positions, officerouter only)",
    )
    p.add_argument("--s2b-hz", type=float, default=10, help="S2b rate per client")
    p.add_argument("--s3-n", default="1000,10000")
    p.add_argument("--s3-settle", type=float, default=3.0)
    p.add_argument("--s4", default="1000x10", help="ORGSxCLIENTS[,…]")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="S1, S4: notifications per POST /internal/notify (1 to 100; more "
        "than 1 posts a JSON array, a batch); replies_per_s counts notifications",
    )
    p.add_argument("--s4-loads", default="max,fixed")
    p.add_argument(
        "--s4-rate", type=float, default=5000, help="S4 fixed load, deliveries/s"
    )
    p.add_argument("--s5-n", default="1000,5000")
    p.add_argument("--s6-n", default="1000,5000", help="S6 (join storm) sizes")
    p.add_argument(
        "--s6-presence",
        default="plain,diff",
        help="S6 presence contracts: plain and/or diff (?presence=diff)",
    )
    p.add_argument(
        "--s5-inflight", type=int, default=128, help="S5 handshakes in flight"
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=128,
        help="handshakes in flight while setting up S1-S4",
    )
    p.add_argument(
        "--backplane",
        choices=("none", "redis"),
        default="none",
        help="s1-s5 with a private redis-server and --redis (default name: "
        "officerouter-redis)",
    )
    p.add_argument(
        "--redis-server", default="redis-server", help="redis-server to start"
    )
    p.add_argument(
        "--redis-cpu", default=None, help="core of redis-server (default: --server-cpu)"
    )
    p.add_argument("--c1-n", default="10", help="C1 clients (all on process B)")
    p.add_argument(
        "--c1-rate", type=float, default=1000, help="C1 notifies/s posted to process A"
    )
    p.add_argument("--c1-topologies", default="single,redis1,redis2")
    p.add_argument("--c2-n", type=int, default=10, help="C2 clients")
    p.add_argument(
        "--c2-publishers", type=int, default=16, help="C2 keep-alive notify connections"
    )
    p.add_argument("--c2-topologies", default="single,redis1,redis2")
    p.add_argument("--c3-n", default="1000", help="C3 sizes (S1 max)")
    p.add_argument("--c3-topologies", default="single,redis1")
    p.add_argument("--c4-modes", default="plain,batched", help="C4: S2 and/or S2b")
    p.add_argument("--c4-n", type=int, default=200, help="C4 plain size (S2)")
    p.add_argument("--c4b-n", type=int, default=500, help="C4 batched size (S2b)")
    p.add_argument("--c4-hz", type=float, default=10, help="C4 rate per client")
    p.add_argument("--c4-topologies", default="single,redis2")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="fixed server port (default: a free one per run)",
    )
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--gen-cpu", default="1")
    p.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="key pair and token cache (default: OUT/../keys)",
    )
    p.add_argument("--token-ttl", type=int, default=6 * 3600)
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=5.0,
        help="before a run wait until other work uses < this %% of a core",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="…but at most this long, s (0: do not wait)",
    )
    p.add_argument(
        "--retry-wait-pct",
        type=float,
        default=3.0,
        help="re-run when server or generator waited more than this %% of the window for a core",
    )
    p.add_argument("--max-attempts", type=int, default=2)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny N and ~1 s windows: checks the set-up, measures nothing",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite OUT/results.md and exit"
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.s1_n, a.s2_n, a.s3_n, a.s4, a.s5_n = "20", "10", "50", "3x4", "50"
        a.s6_n = "50"
        a.s2b_n = "10"
        a.c1_n, a.c2_n, a.c3_n, a.c4_n, a.c4b_n = "4", 4, "20", 10, 10
        a.c1_rate, a.c2_publishers = 200.0, 4
        a.s1_rate, a.s4_rate = 2000.0, 600.0
        a.s4_loads = "max"
        a.duration, a.warmup, a.drain, a.s3_settle = 0.6, 0.2, 3.0, 0.2
        a.quiet_wait, a.max_attempts, a.ready_timeout = 0.0, 1, 20.0
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    unknown = set(a.scenarios) - set(SCENARIOS) - set(CLUSTER_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for name in ("c1", "c2", "c3", "c4"):
        key = f"{name}_topologies"
        value = [t for t in getattr(a, key).split(",") if t]
        if set(value) - set(TOPOLOGIES):
            p.error(f"--{name}-topologies: choose among {', '.join(TOPOLOGIES)}")
        setattr(a, key, value)
    a.s6_presence = [m for m in a.s6_presence.split(",") if m]
    if not a.s6_presence or set(a.s6_presence) - {"plain", "diff"}:
        p.error("--s6-presence: plain and/or diff")
    a.c4_modes = [m for m in a.c4_modes.split(",") if m]
    if set(a.c4_modes) - {"plain", "batched"}:
        p.error("--c4-modes: plain and/or batched")
    if a.redis_cpu is None:
        a.redis_cpu = a.server_cpu
    if a.backplane == "redis" and (a.cmd is not None or a.peer):
        p.error("--backplane redis is for officerouter only (no --cmd, no --peer)")
    if a.name is None:
        if a.cmd is not None:
            a.name = a.cmd.split()[-1].split("/")[-2:][0]
        else:
            a.name = "officerouter-redis" if a.backplane == "redis" else "officerouter"
    a.peers = []
    for item in a.peer:
        name, sep, cmd = item.partition("=")
        if not sep or not name or not cmd:
            p.error(f"--peer wants NAME=CMD, not {item!r}")
        a.peers.append((name, cmd))
    names = [a.name] + [name for name, _ in a.peers]
    if len(set(names)) != len(names):
        p.error(f"server names must differ: {names}")
    if a.keys is None:
        a.keys = (HERE / "results" / "keys") if not a.smoke else a.out / "keys"
    if a.duration <= 0 or a.duration > 600 or a.reps < 1 or a.reps > 20:
        p.error("--duration must be in (0, 600] and --reps in [1, 20]")
    return a


def _terminate(signum: int, frame: Any) -> None:
    # Unwind through the finally blocks, which stop every process group we started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        print(write_report(a.out))
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    twistd = a.twistd
    if a.cmd is None:
        if twistd is None:
            local = Path(sys.executable).parent / "twistd"
            found = shutil.which("twistd")
            twistd = local if local.exists() else Path(found) if found else None
        if twistd is None or not twistd.exists():
            raise SystemExit("bench: no twistd found; pass --twistd or --cmd")
    # Ask twistd about --ping-interval while the generator builds and tokens sign.
    ping_off: list[bool] = []
    probe = threading.Thread(
        target=lambda: ping_off.append(
            twistd is not None and twistd_has_option(twistd, "--ping-interval")
        ),
        daemon=True,
    )
    if a.cmd is None:
        probe.start()
    build_generator()
    run_plans = plans(a)
    if any(plan.redis for plan in run_plans) and a.cmd is None:
        found = shutil.which(a.redis_server)
        if found is None:
            raise SystemExit(
                f"bench: {a.redis_server} not found (apt-get install redis-server); "
                "the cluster scenarios and --backplane redis start their own"
            )
        a.redis_server = found
    largest = max((p.n for p in run_plans), default=0)
    if largest + 200 > hard:
        log(f"warning: open-files limit {hard} is low for N={largest}")
    public_pem = public_key(a.keys)
    need: dict[int, int] = {}
    for plan in run_plans:
        need[plan.orgs] = max(need.get(plan.orgs, 0), plan.n)
    token_paths = {
        orgs: token_file(a.keys, users, orgs, a.token_ttl)
        for orgs, users in need.items()
    }
    specs = []
    for name, cmd in [(a.name, a.cmd), *a.peers]:
        scratch = a.out / f"{name}.scratch"
        scratch.mkdir(exist_ok=True)
        spec = ServerSpec(
            name=name,
            cmd=cmd,
            cwd=a.cwd.resolve(),
            twistd=twistd,
            cf_id="bench-client",
            cf_secret=secrets.token_hex(16),
            public_pem=public_pem,
            scratch=scratch.resolve(),
            settle=0.1 if a.smoke else 1.0,
        )
        if cmd is None:
            probe.join(timeout=90)
            spec.ping_off = bool(ping_off and ping_off[0])
            spec.gc_pauses = a.gc_pauses
        log(f"server {name}: {spec.describe()}")
        specs.append(spec)
    log(f"{len(run_plans)} runs x {len(specs)} server(s) x {a.reps} rep(s) -> {a.out}")
    for rep in range(a.rep_start, a.rep_start + a.reps):
        for plan in run_plans:
            for spec in specs:
                if plan.scenario in OFFICEROUTER_ONLY and spec.cmd is not None:
                    log(f"{spec.name} {plan.label}: skipped (officerouter only)")
                    continue
                run_plan(a, spec, plan, rep, token_paths[plan.orgs])
    path = write_report(a.out)
    log(f"wrote {a.out / 'results.jsonl'} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
