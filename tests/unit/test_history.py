"""History and recovery, sans IO: numbering, epochs, bounds, replay, the SQLite store."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage

from officerouter.catalog import BUILTIN, MessageSpec
from officerouter.history import HistoryBounds, MemoryStore, Stream, StreamPosition
from officerouter.history_sqlite import SQLiteStore, StoreError
from officerouter.messages import (
    ClientMessage,
    GuestKnock,
    Notification,
    PositionUpdate,
    RoomUpdated,
    UserUpdated,
)
from officerouter.registry import OrgRegistry
from officerouter.rooms import RefusedError, Session
from officerouter.tap import Options

from .fakes import PRESENCE_TYPES, FakeConnection, identity, make_registry

T = TypeVar("T")


class Recorder(FakeConnection):
    """A fake connection with the frames that matter to history at hand."""

    def numbered(self) -> list[tuple[int, str]]:
        """``(seq, roomId or type)`` of every numbered frame, in order."""
        return [
            (f["seq"], f["payload"].get("roomId", f["type"]))
            for f in self.frames
            if "seq" in f
        ]

    def after_presence(self) -> list[dict[str, Any]]:
        """The frames after ``connected`` and ``presence``, presence events left out."""
        return [f for f in self.frames[1:] if f["type"] not in PRESENCE_TYPES]


def result_of(d: defer.Deferred[T]) -> T:
    """The result of a Deferred that has already fired (trial's ``successResultOf``)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], BaseException | defer.Failure):
        raise AssertionError(f"the Deferred failed: {results[0]}")
    return results[0]  # type: ignore[no-any-return]


epochs = itertools.count(1)


def registry_on(clock: Clock, **kwargs: Any) -> OrgRegistry:
    """A registry with predictable epochs (e1, e2, ...)."""
    kwargs.setdefault("new_epoch", lambda: f"e{next(epochs)}")
    return make_registry(clock, **kwargs)


@pytest.fixture
def registry(clock: Clock) -> OrgRegistry:
    """A registry with default history bounds, on the test clock."""
    return registry_on(clock)


def join(
    registry: OrgRegistry,
    user: str,
    role: str = "member",
    since: str | None = None,
    org: str = "org-a",
) -> tuple[Recorder, Session]:
    """Connect a fake connection for ``user``."""
    connection = Recorder()
    session = registry.connect(identity(user, org, role), connection, since=since)
    return connection, session


def room_updated(name: str, org: str = "org-a", to: tuple[str, ...] = ()):
    """A room_updated notification whose roomId is ``name``: broadcast, or direct ``to``."""
    return Notification(
        org_id=org,
        routing="direct" if to else "broadcast",
        type="room_updated",
        payload=RoomUpdated(roomId=name, name="-"),
        targets=to,
    )


def role_change(user: str, role: str) -> Notification:
    """A user_updated broadcast."""
    return Notification(
        org_id="org-a",
        routing="broadcast",
        type="user_updated",
        payload=UserUpdated(userId=user, role=role),
    )


def position_of(connection: Recorder) -> str:
    """The ``since`` value for everything a connection has seen."""
    welcome = connection.frames[0]["payload"]
    seqs = [f["seq"] for f in connection.frames if "seq" in f]
    return f"{welcome['epoch']}.{max([welcome['seq'], *seqs])}"


# ---------------------------------------------------------------- numbering


def test_delivered_messages_get_strictly_increasing_seq(clock):
    """Broadcasts, direct messages and knocks share one per-org sequence; positions have none."""
    registry = registry_on(clock, auto_knock=True)
    alice, alice_session = join(registry, "alice", "admin")
    registry.notify(room_updated("r1"))
    registry.notify(room_updated("r2", to=("alice",)))
    registry.notify(room_updated("r3", to=("nobody",)))
    join(registry, "gus", "pending_guest")
    _, bob = join(registry, "bob")
    registry.receive(
        bob, ClientMessage(type="position_update", payload=PositionUpdate(x=1, y=2))
    )
    registry.notify(room_updated("r4", org="org-b"))
    registry.notify(room_updated("r5"))
    assert alice.numbered() == [(1, "r1"), (2, "r2"), (4, "guest_knock"), (5, "r5")]
    position = [f for f in alice.frames if f["type"] == "position_update"]
    assert position == [
        {"type": "position_update", "from": "bob", "payload": {"x": 1, "y": 2}}
    ]
    assert alice_session.org_id == "org-a"


def test_connected_carries_epoch_and_current_seq(registry):
    """``connected`` says the epoch and the seq the live stream continues from."""
    first, _ = join(registry, "alice")
    registry.notify(room_updated("r1"))
    registry.notify(room_updated("r2"))
    second, _ = join(registry, "bob")
    epoch = first.frames[0]["payload"]["epoch"]
    assert first.frames[0]["payload"]["seq"] == 0
    assert second.frames[0]["payload"] == {
        "connectionId": "c2",
        "userId": "bob",
        "orgId": "org-a",
        "role": "member",
        "epoch": epoch,
        "seq": 2,
    }


def test_same_bytes_with_seq_go_to_every_target(registry):
    """A numbered message is still encoded once: every target gets the same object."""
    alice, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    registry.notify(room_updated("r1"))
    assert alice.encoded[-1] is bob.encoded[-1]
    assert alice.encoded[-1].seq == 1


def test_custom_client_types_are_numbered_unless_ephemeral(clock):
    """A relayed client type that is not ephemeral is numbered and kept like any message."""
    catalog: dict[str, MessageSpec] = dict(BUILTIN)
    catalog["wave"] = MessageSpec(payload=GuestKnock, client_allowed=True)
    registry = registry_on(clock, catalog=catalog)
    alice, _ = join(registry, "alice")
    _, bob = join(registry, "bob")
    registry.receive(bob, ClientMessage(type="wave", payload=GuestKnock(guestId="x")))
    assert alice.frames[-1] == {
        "type": "wave",
        "from": "bob",
        "seq": 1,
        "payload": {"guestId": "x"},
    }


class AppendRecorder(MemoryStore):
    """A store that remembers the numbers it was asked to keep."""

    def __init__(self) -> None:
        self.appended: list[int] = []

    def append(self, org_id: str, epoch: str, entry: Any) -> None:
        self.appended.append(entry.seq)


def test_a_message_that_cannot_be_encoded_burns_no_number(clock):
    """When encoding fails nothing is numbered, kept or stored: the next message takes the next number."""
    store = AppendRecorder()
    stream = Stream("org-a", "e1", HistoryBounds(), store, clock.seconds)
    stream.record("room_updated", RoomUpdated(roomId="r1", name="a"))
    clock.advance(10)
    with pytest.raises(TypeError):  # orjson refuses the lone surrogate
        stream.record("room_updated", RoomUpdated(roomId="r2", name="\ud800"))
    assert (stream.seq, len(stream), store.appended, stream.active_at) == (1, 1, [1], 0)
    assert stream.record("room_updated", RoomUpdated(roomId="r3", name="c")).seq == 2
    assert store.appended == [1, 2]


# ---------------------------------------------------------------- epochs and rooms


def test_idle_room_keeps_history_and_records_notifications(registry, clock):
    """A room without connections keeps numbering and keeping what arrives for it."""
    alice, session = join(registry, "alice")
    registry.disconnect(session)
    assert (registry.room_count, registry.history_room_count) == (0, 1)
    clock.advance(100)
    assert registry.notify(room_updated("r1")) == 0
    back, _ = join(registry, "alice", since=position_of(alice))
    assert back.frames[0]["payload"]["recovered"] is True
    assert back.numbered() == [(1, "r1")]
    assert (registry.room_count, registry.history_room_count) == (1, 0)


def test_idle_room_expires_after_its_last_activity(registry, clock):
    """An idle room is dropped once history-seconds passed since its last message or connection."""
    _, session = join(registry, "alice")
    registry.disconnect(session)
    clock.advance(200)
    registry.notify(room_updated("r1"))
    clock.advance(299)
    assert registry.history_room_count == 1
    clock.advance(1)
    assert registry.room("org-a") is None
    assert registry.history_room_count == 0
    assert clock.getDelayedCalls() == []


def test_new_room_state_means_a_new_epoch(registry, clock):
    """After an idle room expired, the org starts again with another epoch at seq 0."""
    first, session = join(registry, "alice")
    registry.notify(room_updated("r1"))
    registry.disconnect(session)
    clock.advance(300)
    second, _ = join(registry, "alice", since=position_of(first))
    old, new = first.frames[0]["payload"], second.frames[0]["payload"]
    assert new["epoch"] != old["epoch"]
    assert (new["seq"], new["recovered"]) == (0, False)


def test_history_off_drops_rooms_at_once(clock):
    """With history-seconds 0 a room goes with its last connection, and nothing is replayed."""
    registry = registry_on(clock, history=HistoryBounds(seconds=0))
    first, session = join(registry, "alice")
    registry.notify(room_updated("r1"))
    registry.disconnect(session)
    assert registry.room("org-a") is None
    second, _ = join(registry, "alice", since=position_of(first))
    assert second.frames[0]["payload"]["recovered"] is False


def test_notify_to_an_org_without_a_room_creates_none(registry):
    """An org never connected gets no room, so no stream, from a notification."""
    assert registry.notify(room_updated("r1", org="org-z")) == 0
    assert registry.room("org-z") is None
    assert registry.history_room_count == 0


def test_nothing_is_numbered_after_stop(registry):
    """Once stopped (the store's last write is under way), connections are refused and notifications go nowhere."""
    alice, _ = join(registry, "alice")
    registry.notify(room_updated("r1"))
    result_of(registry.stop())
    assert registry.notify(room_updated("r2")) == 0
    with pytest.raises(RefusedError) as refused:
        join(registry, "bob")
    assert refused.value.status == 503
    assert alice.numbered() == [(1, "r1")]


# ---------------------------------------------------------------- bounds


def test_window_keeps_at_most_size_messages(clock):
    """The window holds the newest ``size`` messages and no more, whatever arrives."""
    registry = registry_on(clock, history=HistoryBounds(size=10))
    join(registry, "alice")
    for i in range(250):
        registry.notify(room_updated(f"r{i}"))
    room = registry.room("org-a")
    assert room is not None
    assert [e.seq for e in room.stream.entries()] == list(range(241, 251))


def test_window_drops_messages_older_than_seconds(clock):
    """Messages older than ``seconds`` leave the window."""
    registry = registry_on(clock, history=HistoryBounds(seconds=60))
    join(registry, "alice")
    for i in range(10):
        registry.notify(room_updated(f"r{i}"))
        clock.advance(10)
    room = registry.room("org-a")
    assert room is not None
    room.stream.trim(clock.seconds())
    assert [e.seq for e in room.stream.entries()] == [6, 7, 8, 9, 10]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=30), st.integers(1, 40)),
        max_size=40,
    ),
    size=st.integers(0, 50),
    seconds=st.floats(min_value=0.5, max_value=100),
)
def test_memory_never_grows_past_the_bounds(steps, size, seconds):
    """After every message the window is within both bounds and a contiguous run ending at seq."""
    clock = Clock()
    stream = Stream(
        "org-a",
        "e",
        HistoryBounds(size=size, seconds=seconds),
        MemoryStore(),
        clock.seconds,
    )
    for pause, count in steps:
        clock.advance(pause)
        for _ in range(count):
            stream.record("room_updated", RoomUpdated(roomId="r", name="-"))
            seqs = [e.seq for e in stream.entries()]
            assert len(seqs) <= size
            assert all(e.at > clock.seconds() - seconds for e in stream.entries())
            assert seqs == list(range(stream.seq - len(seqs) + 1, stream.seq + 1))


# ---------------------------------------------------------------- recovery


def test_recovery_replays_what_was_missed_in_order_then_live(registry):
    """After ``connected`` and ``presence`` come the missed messages in order, then the live stream."""
    alice, session = join(registry, "alice")
    join(registry, "bob")
    registry.notify(room_updated("r1"))
    since = position_of(alice)
    registry.disconnect(session)
    for name in ("r2", "r3", "r4"):
        registry.notify(room_updated(name))
    back, _ = join(registry, "alice", since=since)
    registry.notify(room_updated("r5"))
    assert back.frames[0]["payload"]["recovered"] is True
    assert back.frames[0]["payload"]["seq"] == 4
    assert back.frames[1]["type"] == "presence"
    assert back.numbered() == [(2, "r2"), (3, "r3"), (4, "r4"), (5, "r5")]


def test_direct_messages_are_replayed_only_to_their_target(registry):
    """A direct message is replayed to the user it was addressed to, and to nobody else."""
    alice, a = join(registry, "alice")
    bob, b = join(registry, "bob")
    since_a, since_b = position_of(alice), position_of(bob)
    registry.disconnect(a)
    registry.disconnect(b)
    registry.notify(room_updated("for-alice", to=("alice",)))
    registry.notify(room_updated("for-bob", to=("bob", "carol")))
    registry.notify(room_updated("all"))
    alice_back, _ = join(registry, "alice", since=since_a)
    bob_back, _ = join(registry, "bob", since=since_b)
    carol, _ = join(registry, "carol", since=since_a)
    assert alice_back.numbered() == [(1, "for-alice"), (3, "all")]
    assert bob_back.numbered() == [(2, "for-bob"), (3, "all")]
    assert carol.numbered() == [(2, "for-bob"), (3, "all")]


def test_pending_guest_recovers_only_messages_addressed_to_them(registry):
    """A pending guest's replay holds its direct messages and no broadcast."""
    guest, session = join(registry, "gus", "pending_guest")
    since = position_of(guest)
    registry.disconnect(session)
    registry.notify(room_updated("all"))
    registry.notify(room_updated("for-gus", to=("gus",)))
    back, _ = join(registry, "gus", "pending_guest", since=since)
    assert back.frames[0]["payload"]["recovered"] is True
    assert [f["type"] for f in back.frames] == ["connected", "room_updated"]
    assert back.numbered() == [(2, "for-gus")]


def test_replay_follows_what_the_user_may_see_now(registry):
    """A member demoted while away gets no broadcast in their replay; one admitted gets them."""
    alice, a = join(registry, "alice")
    join(registry, "bob")
    gus, g = join(registry, "gus", "pending_guest")
    since_a, since_g = position_of(alice), position_of(gus)
    registry.disconnect(a)
    registry.disconnect(g)
    registry.notify(room_updated("r1"))
    registry.notify(role_change("alice", "pending_guest"))
    demoted, _ = join(registry, "alice", "pending_guest", since=since_a)
    admitted, _ = join(registry, "gus", "member", since=since_g)
    assert demoted.frames[0]["payload"]["recovered"] is True
    assert demoted.numbered() == []
    assert admitted.numbered() == [(1, "r1"), (2, "user_updated")]


def test_stale_epoch_is_not_recovered(registry):
    """A position from another epoch gets ``recovered: false`` and no replay."""
    join(registry, "bob")
    registry.notify(room_updated("r1"))
    back, _ = join(registry, "alice", since="other-epoch.0")
    assert back.frames[0]["payload"]["recovered"] is False
    assert back.after_presence() == []


def test_too_old_seq_is_not_recovered(clock):
    """A position older than the window gets ``recovered: false`` and no replay."""
    registry = registry_on(clock, history=HistoryBounds(size=3))
    alice, session = join(registry, "alice")
    join(registry, "bob")
    since = position_of(alice)
    registry.disconnect(session)
    for i in range(4):
        registry.notify(room_updated(f"r{i}"))
    back, _ = join(registry, "alice", since=since)
    assert back.frames[0]["payload"]["recovered"] is False
    assert back.after_presence() == []
    epoch = since.split(".")[0]
    exact, _ = join(registry, "alice", since=f"{epoch}.1")
    assert exact.frames[0]["payload"]["recovered"] is True
    assert [seq for seq, _ in exact.numbered()] == [2, 3, 4]


def test_expired_messages_are_not_recovered(registry, clock):
    """A position whose next message is older than history-seconds gets ``recovered: false``."""
    alice, session = join(registry, "alice")
    join(registry, "bob")
    since = position_of(alice)
    registry.disconnect(session)
    registry.notify(room_updated("r1"))
    clock.advance(301)
    registry.notify(room_updated("r2"))
    back, _ = join(registry, "alice", since=since)
    assert back.frames[0]["payload"]["recovered"] is False


@pytest.mark.parametrize(
    "since", ["e1.9", "e1", ".3", "e1.-1", "e1.x", "e1.1.5x", "", "e1.１"]
)
def test_impossible_positions_are_not_recovered(registry, since):
    """A position ahead of the stream, or not ``<epoch>.<seq>``, gets ``recovered: false``."""
    join(registry, "bob")
    registry.notify(room_updated("r1"))
    back, _ = join(registry, "alice", since=since)
    assert back.frames[0]["payload"]["recovered"] is False


def test_up_to_date_position_is_recovered_with_nothing_to_replay(registry):
    """A client that missed nothing is told ``recovered: true`` and gets only the live stream."""
    join(registry, "bob")
    registry.notify(room_updated("r1"))
    back, _ = join(registry, "alice", since=position_of(join(registry, "x")[0]))
    assert back.frames[0]["payload"]["recovered"] is True
    assert back.after_presence() == []


def test_no_since_means_no_recovered_field(registry):
    """``connected`` has ``recovered`` only when the client asked with ``since``."""
    alice, _ = join(registry, "alice")
    assert "recovered" not in alice.frames[0]["payload"]


def test_replay_larger_than_its_budget_is_not_recovered(clock):
    """When what was missed exceeds the replay budget, the client refetches instead."""
    registry = registry_on(clock, history=HistoryBounds(replay_bytes=500))
    alice, session = join(registry, "alice")
    join(registry, "bob")
    since = position_of(alice)
    registry.disconnect(session)
    for i in range(20):
        registry.notify(room_updated(f"r{i}"))
    back, _ = join(registry, "alice", since=since)
    assert back.frames[0]["payload"]["recovered"] is False
    epoch = since.split(".")[0]
    recent, _ = join(registry, "alice", since=f"{epoch}.18")
    assert recent.numbered() == [(19, "r18"), (20, "r19")]


def test_replayed_frames_are_the_bytes_sent_live(registry):
    """A replayed frame is the very bytes that went out live, seq included, not a copy."""
    bob, _ = join(registry, "bob")
    registry.notify(room_updated("r1"))
    live = bob.encoded[-1]
    live.framings["ws"] = b"cached by a transport"
    back, _ = join(registry, "alice", since=f"{bob.frames[0]['payload']['epoch']}.0")
    assert back.encoded[-1].data is live.data
    assert back.encoded[-1].framings == {}


def test_stream_position_parses_epoch_and_seq():
    """``<epoch>.<seq>`` splits at the last dot."""
    assert StreamPosition.parse("abc.12") == StreamPosition("abc", 12)
    with pytest.raises(ValueError, match="since"):
        StreamPosition.parse("abc.")


# ---------------------------------------------------------------- the SQLite store


class InlineRunner:
    """Runs the writer's work at once on this thread (tests only)."""

    def __init__(self) -> None:
        self.running = False
        self.jobs = 0

    def start(self) -> None:
        self.running = True

    def run(self, work: Callable[[], T]) -> defer.Deferred[T]:
        self.jobs += 1
        return defer.execute(work)

    def stop(self) -> None:
        self.running = False


def sqlite_registry(
    path: Path, clock: Clock, **kwargs: Any
) -> tuple[OrgRegistry, SQLiteStore]:
    """A started registry whose history lives in an SQLite file."""
    store = SQLiteStore(path, clock=clock, runner=InlineRunner())
    registry = registry_on(clock, store=store, **kwargs)
    registry.start()
    return registry, store


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query a closed store's file."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_sqlite_keeps_epoch_and_window_across_a_restart(tmp_path, clock):
    """A cleanly stopped store brings its rooms back: same epoch, same window, recovery works."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock)
    alice, session = join(registry, "alice")
    join(registry, "gus", "pending_guest")
    registry.notify(room_updated("r1"))
    since = position_of(alice)
    registry.disconnect(session)
    registry.notify(room_updated("r2"))
    registry.notify(room_updated("for-gus", to=("gus",)))
    result_of(registry.stop())
    clock.advance(60)

    again, _ = sqlite_registry(path, clock)
    assert (again.room_count, again.history_room_count) == (0, 1)
    assert again.notify(room_updated("r3")) == 0
    back, _ = join(again, "alice", since=since)
    assert back.frames[0]["payload"]["epoch"] == since.split(".")[0]
    assert back.frames[0]["payload"]["recovered"] is True
    assert back.numbered() == [(2, "r2"), (4, "r3")]
    assert back.encoded[-1].data.startswith(b'{"type":"room_updated","seq":4')


def test_sqlite_restart_after_expiry_starts_afresh(tmp_path, clock):
    """Streams idle for longer than history-seconds are not brought back."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock)
    alice, _ = join(registry, "alice")
    registry.notify(room_updated("r1"))
    result_of(registry.stop())
    clock.advance(301)
    again, _ = sqlite_registry(path, clock)
    assert again.history_room_count == 0
    back, _ = join(again, "alice", since=position_of(alice))
    assert back.frames[0]["payload"]["recovered"] is False


def test_sqlite_unclean_stop_starts_new_epochs(tmp_path, clock):
    """After a crash the last batch may be missing, so every org gets a new epoch."""
    path = tmp_path / "history.sqlite"
    registry, store = sqlite_registry(path, clock)
    alice, _ = join(registry, "alice")
    registry.notify(room_updated("r1"))
    clock.advance(1)
    # A crash: the file is left without its clean mark.
    assert store._db is not None
    store._db.close()
    again, _ = sqlite_registry(path, clock)
    assert again.history_room_count == 0
    back, _ = join(again, "alice", since=position_of(alice))
    assert back.frames[0]["payload"]["recovered"] is False
    assert back.frames[0]["payload"]["epoch"] != alice.frames[0]["payload"]["epoch"]


def test_sqlite_writes_in_batches_behind_the_reactor(tmp_path, clock):
    """Changes wait in memory for the batch interval, or until a batch is full."""
    path = tmp_path / "history.sqlite"
    store = SQLiteStore(path, clock=clock, runner=(runner := InlineRunner()), batch=10)
    registry = registry_on(clock, store=store)
    registry.start()
    join(registry, "alice")
    for i in range(5):
        registry.notify(room_updated(f"r{i}"))
    assert (store.pending, runner.jobs) == (6, 0)
    clock.advance(0.05)
    assert (store.pending, runner.jobs) == (0, 1)
    for i in range(25):
        registry.notify(room_updated(f"s{i}"))
    assert (store.pending, runner.jobs) == (5, 3)
    result_of(registry.stop())
    assert runner.jobs == 5
    assert not runner.running
    assert rows(path, "SELECT max(seq), count(*) FROM messages") == [(30, 30)]


def test_sqlite_prunes_what_falls_out_of_the_window(tmp_path, clock):
    """Rows beyond the size or age bound are deleted as new ones are written."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock, history=HistoryBounds(size=5))
    join(registry, "alice")
    for i in range(40):
        registry.notify(room_updated(f"r{i}"))
        clock.advance(0.05)
    result_of(registry.stop())
    assert rows(path, "SELECT seq FROM messages ORDER BY seq") == [
        (36,),
        (37,),
        (38,),
        (39,),
        (40,),
    ]


def test_sqlite_forgets_expired_rooms(tmp_path, clock):
    """When an idle room expires its stream and messages leave the file too."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock)
    _, session = join(registry, "alice")
    join(registry, "bob", org="org-b")
    registry.notify(room_updated("r1"))
    registry.disconnect(session)
    clock.advance(300)
    result_of(registry.stop())
    assert rows(path, "SELECT org_id FROM streams") == [("org-b",)]
    assert rows(path, "SELECT count(*) FROM messages") == [(0,)]


def test_sqlite_batch_keeps_the_order_of_changes(tmp_path, clock):
    """A room dropped and started anew within one batch is written as its new stream only."""
    path = tmp_path / "history.sqlite"
    store = SQLiteStore(path, clock=clock, runner=InlineRunner(), interval=3600)
    registry = registry_on(clock, store=store, history=HistoryBounds(seconds=10))
    registry.start()
    _, session = join(registry, "alice")
    registry.notify(room_updated("old"))
    registry.disconnect(session)
    clock.advance(10)
    assert registry.room("org-a") is None
    fresh, _ = join(registry, "alice")
    registry.notify(room_updated("new"))
    assert store.pending == 6
    result_of(registry.stop())
    again, _ = sqlite_registry(path, clock, history=HistoryBounds(seconds=10))
    room = again.room("org-a")
    assert room is not None
    assert room.stream.epoch == fresh.frames[0]["payload"]["epoch"]
    assert [e.message.data for e in room.stream.entries()] == [
        b'{"type":"room_updated","seq":1,"payload":{"roomId":"new","name":"-"}}'
    ]


def test_sqlite_file_cannot_be_shared_by_two_daemons(tmp_path, clock):
    """A second store on a file in use refuses to open, naming the file."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock)
    second = SQLiteStore(path, clock=clock, runner=InlineRunner())
    with pytest.raises(StoreError, match=r"history\.sqlite"):
        second.open(HistoryBounds(), 0)
    result_of(registry.stop())


def test_sqlite_store_that_is_not_a_database_is_refused(tmp_path, clock):
    """A path that holds something else is a clear error, not a traceback."""
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"not a database, not at all" * 100)
    store = SQLiteStore(path, clock=clock, runner=InlineRunner())
    with pytest.raises(StoreError, match="cannot use"):
        store.open(HistoryBounds(), 0)


def test_sqlite_file_of_another_format_is_refused(tmp_path, clock):
    """A file written by an incompatible version is refused with the way out."""
    path = tmp_path / "history.sqlite"
    registry, _ = sqlite_registry(path, clock)
    result_of(registry.stop())
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    db.close()
    store = SQLiteStore(path, clock=clock, runner=InlineRunner())
    with pytest.raises(StoreError, match="format 99"):
        store.open(HistoryBounds(), 0)
    # The refused store let go of the file.
    assert rows(path, "SELECT value FROM meta WHERE key = 'version'") == [("99",)]


def test_sqlite_write_failure_turns_persistence_off(tmp_path, clock):
    """A failed batch is logged, later changes are dropped, and the file is not marked clean."""
    path = tmp_path / "history.sqlite"
    registry, store = sqlite_registry(path, clock)
    join(registry, "alice")
    registry.notify(room_updated("r1"))
    clock.advance(0.05)
    store._write = lambda *_: 1 / 0  # type: ignore[method-assign]
    registry.notify(room_updated("r2"))
    clock.advance(0.05)
    registry.notify(room_updated("r3"))
    assert store.pending == 0
    result_of(registry.stop())
    assert rows(path, "SELECT value FROM meta WHERE key = 'clean'") == [("0",)]


# ---------------------------------------------------------------- options


def test_history_options_have_the_documented_defaults():
    """Memory history, 1000 messages, 300 seconds, and a five-second grace period."""
    options = Options()
    options.parseOptions([])
    assert (
        options["history"],
        options["history-size"],
        options["history-seconds"],
        options["presence-grace"],
    ) == ("memory", 1000, 300.0, 5.0)


def test_history_options_parse():
    """An SQLite path, sizes and durations are taken as given."""
    options = Options()
    options.parseOptions(
        [
            "--history=sqlite:/var/lib/officerouter/history.sqlite",
            "--history-size=0",
            "--history-seconds=60",
            "--presence-grace=0",
        ]
    )
    assert options["history"] == "sqlite:/var/lib/officerouter/history.sqlite"
    assert (options["history-size"], options["history-seconds"]) == (0, 60.0)
    assert options["presence-grace"] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--history=redis://x"], "--history must be memory or sqlite:PATH"),
        (["--history=sqlite:"], "--history must be memory or sqlite:PATH"),
        (["--history-size=-1"], "--history-size must be at least 0"),
        (["--history-seconds=a"], "--history-seconds must be a number"),
        (["--presence-grace=-5"], "--presence-grace must be between"),
    ],
)
def test_bad_history_options_are_usage_errors(argv, message):
    """Each bad value names its option."""
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(argv)
