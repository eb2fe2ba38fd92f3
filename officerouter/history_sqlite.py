"""The SQLite history store: epochs and windows that survive a restart of the daemon.

The windows in memory stay the read path.  This store is read once, when the
daemon starts (:meth:`SQLiteStore.open`), and written behind: the reactor only
appends each change to a list, and one dedicated thread writes that list in a
single transaction every ``interval`` seconds, or as soon as ``batch`` changes
wait.  Durability (docs/presence-and-recovery.md): a clean stop writes
everything and marks the file clean; after a crash the last batch may be
missing, and because nobody can tell which messages went missing, every org
starts a new epoch (clients are told ``recovered: false``) rather than replaying
a window with a hole in it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from officerouter.codec import Encoded, dumps, parse_json
from officerouter.history import Entry, HistoryBounds, StoredStream

log = Logger()

T = TypeVar("T")

SCHEMA_VERSION: Final = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    org_id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    active_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    org_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    targets TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (org_id, seq)
) WITHOUT ROWID;
"""

# Queued changes, applied in order by the writer thread.
_BEGIN: Final = 0
_APPEND: Final = 1
_TOUCH: Final = 2
_FORGET: Final = 3


class StoreError(Exception):
    """The store cannot be opened; the message names the file and the cause."""


class ThreadRunner(TypingProtocol):
    """Runs blocking work off the reactor thread, in submission order."""

    def start(self) -> None:
        """Start the thread."""

    def run(self, work: Callable[[], T]) -> defer.Deferred[T]:
        """Run ``work`` on the thread; fire with its result on the reactor thread."""
        ...

    def stop(self) -> None:
        """Stop the thread once its work is done."""


class PoolRunner:
    """One dedicated thread (a ``ThreadPool`` of exactly one), so writes stay ordered.

    :param reactor: the reactor results are delivered to.
    """

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="officerouter-history")

    def start(self) -> None:
        self._pool.start()

    def run(self, work: Callable[[], T]) -> defer.Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, work)

    def stop(self) -> None:
        self._pool.stop()


class SQLiteStore:
    """History kept in one SQLite file, written behind in batches by one thread.

    :param path: the database file (created if missing).
    :param clock: schedules the batches.
    :param runner: the writer thread.
    :param interval: seconds a change may wait before its batch is written.
    :param batch: a batch is written at once when this many changes wait.
    :param max_pending: more changes waiting than this (the disk cannot keep up)
        stop persistence for this run; the next start begins new epochs.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: IReactorTime,
        runner: ThreadRunner,
        interval: float = 0.05,
        batch: int = 500,
        max_pending: int = 200_000,
    ) -> None:
        self.path = path
        self._clock = clock
        self._runner = runner
        self._interval = interval
        self._batch = batch
        self._max_pending = max_pending
        self._bounds = HistoryBounds()
        self._db: sqlite3.Connection | None = None
        self._queue: list[tuple[Any, ...]] = []
        self._timer: IDelayedCall | None = None
        self._writing = False
        self._written: list[defer.Deferred[None]] = []
        #: Something was not written: the file must not be marked clean.
        self._lost = False
        self._closed = False

    # ------------------------------------------------------------ start-up

    def open(self, bounds: HistoryBounds, now: float) -> Sequence[StoredStream]:
        """Open (or create) the file and return the streams still within bounds.

        Runs on the reactor thread, once, before the daemon listens.

        :raises StoreError: when the file cannot be opened or is in use.
        """
        self._bounds = bounds
        try:
            db = sqlite3.connect(
                str(self.path),
                # Used by the writer thread only once open() has returned.
                check_same_thread=False,
                isolation_level=None,
                timeout=1.0,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from None
        try:
            streams = self._prepare(db, bounds, now)
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"cannot use {self.path}: {e}") from None
        except StoreError:
            db.close()
            raise
        self._db = db
        self._runner.start()
        return streams

    def _prepare(
        self, db: sqlite3.Connection, bounds: HistoryBounds, now: float
    ) -> list[StoredStream]:
        # Held for the life of the process: a second daemon on the same file
        # fails here instead of interleaving its numbers with ours.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} holds history format {meta['version']}, this "
                    f"version reads {SCHEMA_VERSION}; move the file away"
                )
            if meta.get("clean", "1") != "1":
                lost = db.execute("SELECT count(*) FROM streams").fetchone()[0]
                log.warn(
                    "history in {path} was not closed cleanly; starting new epochs "
                    "for {count} orgs (their clients will refetch)",
                    path=str(self.path),
                    count=lost,
                )
                db.execute("DELETE FROM streams")
                db.execute("DELETE FROM messages")
            db.execute(
                "DELETE FROM streams WHERE active_at + ? <= ?", (bounds.seconds, now)
            )
            db.execute(
                "DELETE FROM messages WHERE org_id NOT IN (SELECT org_id FROM streams)"
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("version", SCHEMA_VERSION), ("clean", "0")],
            )
            streams = [
                self._restore(db, row, bounds, now)
                for row in db.execute(
                    "SELECT org_id, epoch, seq, active_at FROM streams"
                ).fetchall()
            ]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # Batches need not reach the platter one by one: a crash loses the
        # file's clean mark, and the next start discards the epochs anyway.
        db.execute("PRAGMA synchronous=NORMAL")
        return streams

    def _restore(
        self,
        db: sqlite3.Connection,
        row: tuple[str, str, int, float],
        bounds: HistoryBounds,
        now: float,
    ) -> StoredStream:
        org_id, epoch, seq, active_at = row
        oldest_seq, oldest_at = seq - bounds.size, now - bounds.seconds
        db.execute(
            "DELETE FROM messages WHERE org_id = ? AND (seq <= ? OR at <= ?)",
            (org_id, oldest_seq, oldest_at),
        )
        rows = db.execute(
            "SELECT seq, at, type, targets, data FROM messages"
            " WHERE org_id = ? AND seq <= ? ORDER BY seq DESC",
            (org_id, seq),
        ).fetchall()
        entries: list[Entry] = []
        expected = seq
        # Only a run of numbers ending at the stream's last one is a window.
        for number, at, type_, targets, data in rows:
            if number != expected:
                break
            message = Encoded(type=type_, data=bytes(data), seq=number)
            entries.append(Entry(number, at, message, _targets(targets)))
            expected -= 1
        entries.reverse()
        return StoredStream(
            org_id=org_id, epoch=epoch, seq=seq, active_at=active_at, entries=entries
        )

    # ------------------------------------------------------------ HistoryStore

    def begin(self, org_id: str, epoch: str, at: float) -> None:
        self._enqueue((_BEGIN, org_id, epoch, at))

    def append(self, org_id: str, epoch: str, entry: Entry) -> None:
        targets = None if entry.targets is None else dumps(list(entry.targets)).decode()
        self._enqueue(
            (
                _APPEND,
                org_id,
                epoch,
                entry.seq,
                entry.at,
                entry.message.type,
                targets,
                entry.message.data,
            )
        )

    def touch(self, org_id: str, at: float) -> None:
        self._enqueue((_TOUCH, org_id, at))

    def forget(self, org_id: str) -> None:
        self._enqueue((_FORGET, org_id))

    def close(self) -> defer.Deferred[None]:
        """Write what is queued, mark the file clean, close it, stop the thread."""
        return defer.ensureDeferred(self._close())

    # ------------------------------------------------------------ write-behind

    @property
    def pending(self) -> int:
        """Changes queued and not yet handed to the writer thread."""
        return len(self._queue)

    def _enqueue(self, change: tuple[Any, ...]) -> None:
        if self._lost or self._closed or self._db is None:
            return
        if len(self._queue) >= self._max_pending:
            log.error(
                "history writes to {path} are {count} changes behind; persistence "
                "is off until restart, and the next start begins new epochs",
                path=str(self.path),
                count=len(self._queue),
            )
            self._lost = True
            self._queue.clear()
            return
        self._queue.append(change)
        if len(self._queue) >= self._batch:
            self._flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._interval, self._flush)

    def _flush(self) -> None:
        """Hand the queue to the writer thread, unless a batch is being written."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._writing or not self._queue or self._db is None:
            return
        changes, self._queue = self._queue, []
        self._writing = True
        now = self._clock.seconds()
        bounds = self._bounds
        d = self._runner.run(lambda: self._write(changes, bounds, now))
        d.addCallbacks(self._wrote, self._write_failed)

    def _wrote(self, _: object) -> None:
        self._writing = False
        waiters, self._written = self._written, []
        for waiter in waiters:
            waiter.callback(None)
        if self._queue and not self._closed:
            if len(self._queue) >= self._batch:
                self._flush()
            elif self._timer is None:
                self._timer = self._clock.callLater(self._interval, self._flush)

    def _write_failed(self, failure: Failure) -> None:
        log.failure(
            "writing history to {path} failed; persistence is off until restart",
            failure,
            path=str(self.path),
        )
        self._lost = True
        self._queue.clear()
        self._wrote(None)

    def _write(
        self, changes: list[tuple[Any, ...]], bounds: HistoryBounds, now: float
    ) -> None:
        """Apply one batch in one transaction (on the writer thread)."""
        db = self._db
        assert db is not None
        appended: dict[str, tuple[str, int, float]] = {}
        rows: list[tuple[Any, ...]] = []

        def insert() -> None:
            db.executemany(
                "INSERT OR REPLACE INTO messages (org_id, seq, at, type, targets, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            rows.clear()

        db.execute("BEGIN")
        try:
            for change in changes:
                kind, org_id = change[0], change[1]
                if kind == _APPEND:
                    _, _, epoch, seq, at, type_, targets, data = change
                    rows.append((org_id, seq, at, type_, targets, data))
                    appended[org_id] = (epoch, seq, at)
                    continue
                if rows:
                    insert()
                if kind == _BEGIN:
                    _, _, epoch, at = change
                    db.execute("DELETE FROM messages WHERE org_id = ?", (org_id,))
                    db.execute(
                        "INSERT OR REPLACE INTO streams (org_id, epoch, seq, active_at)"
                        " VALUES (?, ?, 0, ?)",
                        (org_id, epoch, at),
                    )
                elif kind == _TOUCH:
                    db.execute(
                        "UPDATE streams SET active_at = max(active_at, ?)"
                        " WHERE org_id = ?",
                        (change[2], org_id),
                    )
                else:
                    db.execute("DELETE FROM streams WHERE org_id = ?", (org_id,))
                    db.execute("DELETE FROM messages WHERE org_id = ?", (org_id,))
            if rows:
                insert()
            for org_id, (epoch, seq, at) in appended.items():
                # The epoch guard skips orgs that began anew or were forgotten
                # later in the same batch.
                db.execute(
                    "UPDATE streams SET seq = ?, active_at = max(active_at, ?)"
                    " WHERE org_id = ? AND epoch = ?",
                    (seq, at, org_id, epoch),
                )
                db.execute(
                    "DELETE FROM messages WHERE org_id = ? AND (seq <= ? OR at <= ?)",
                    (org_id, seq - bounds.size, now - bounds.seconds),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _close(self) -> None:
        if self._closed or self._db is None:
            return
        while self._writing or (self._queue and not self._lost):
            if self._writing:
                waiter: defer.Deferred[None] = defer.Deferred()
                self._written.append(waiter)
                await waiter
            else:
                self._flush()
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        clean = not self._lost
        try:
            await self._runner.run(lambda: self._finish(clean))
        finally:
            self._runner.stop()

    def _finish(self, clean: bool) -> None:
        """Mark the file clean when nothing was lost, and close it (writer thread)."""
        db = self._db
        assert db is not None
        try:
            if clean:
                db.execute("PRAGMA synchronous=FULL")
                db.execute("UPDATE meta SET value = '1' WHERE key = 'clean'")
        finally:
            db.close()
            self._db = None


def _targets(stored: str | None) -> tuple[str, ...] | None:
    if stored is None:
        return None
    return tuple(parse_json(stored.encode("utf-8")))
