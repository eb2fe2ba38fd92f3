"""The catalog of message types, its entry-point extensions, and the built-in effects."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest

from officerouter import catalog as catalog_module
from officerouter import codes
from officerouter.catalog import (
    ALLOWED_CLIENT_MESSAGE_TYPES,
    BUILTIN,
    EFFECTS_GROUP,
    TYPES_GROUP,
    MessageSpec,
    build_catalog,
)
from officerouter.codec import ContractError, decode_client, decode_notify
from officerouter.config import ConfigError
from officerouter.effects import (
    CloseUser,
    SetRole,
    user_banned,
    user_disconnected,
    user_updated,
)
from officerouter.messages import (
    MAX_TOKEN_BYTES,
    AdminTest,
    GuestKnock,
    Notification,
    PositionUpdate,
    RefreshToken,
    RoomUpdated,
    SpaceDeleted,
    UserBanned,
    UserDisconnected,
    UserUpdated,
)

from . import plugin_sample
from .fakes import FakeConnection, identity, make_registry

SAMPLE = plugin_sample.__name__


def type_entry(name: str, attr: str, module: str = SAMPLE) -> EntryPoint:
    """An entry point in the message-types group."""
    return EntryPoint(name, f"{module}:{attr}", TYPES_GROUP)


def effect_entry(name: str, attr: str, module: str = SAMPLE) -> EntryPoint:
    """An entry point in the effects group."""
    return EntryPoint(name, f"{module}:{attr}", EFFECTS_GROUP)


# ---------------------------------------------------------------- built-ins


def test_builtin_types_and_payloads():
    """The catalog holds the nine types of the contract with their payload classes."""
    assert {name: spec.payload for name, spec in BUILTIN.items()} == {
        "room_updated": RoomUpdated,
        "space_deleted": SpaceDeleted,
        "user_updated": UserUpdated,
        "user_banned": UserBanned,
        "user_disconnected": UserDisconnected,
        "admin_test": AdminTest,
        "guest_knock": GuestKnock,
        "position_update": PositionUpdate,
        "refresh_token": RefreshToken,
    }


def test_builtin_routings():
    """Backend types allow the routings of the contract; client types none."""
    assert {name: spec.routings for name, spec in BUILTIN.items()} == {
        "room_updated": {"broadcast", "direct"},
        "space_deleted": {"broadcast", "direct"},
        "user_updated": {"broadcast", "direct"},
        "user_banned": {"direct"},
        "user_disconnected": {"direct"},
        "admin_test": {"broadcast", "direct"},
        "guest_knock": {"direct"},
        "position_update": set(),
        "refresh_token": set(),
    }


def test_builtin_effects():
    """Only user_updated, user_banned and user_disconnected have side-effects."""
    effects = {name: spec.effect for name, spec in BUILTIN.items() if spec.effect}
    assert effects == {
        "user_updated": user_updated,
        "user_banned": user_banned,
        "user_disconnected": user_disconnected,
    }


def test_only_positions_are_ephemeral():
    """position_update is the only ephemeral type."""
    assert [name for name, spec in BUILTIN.items() if spec.ephemeral] == [
        "position_update"
    ]


def test_only_refresh_token_is_local():
    """refresh_token is the only type the adapter answers instead of relaying."""
    assert [name for name, spec in BUILTIN.items() if spec.local] == ["refresh_token"]


def test_refresh_token_payload_is_capped():
    """A refresh_token frame needs a non-empty token no longer than a handshake's."""
    frame = {"type": "refresh_token", "payload": {"token": "a.b.c"}}
    message = decode_client(json.dumps(frame).encode(), BUILTIN)
    assert message.payload == RefreshToken(token="a.b.c")
    for token in ("", "x" * (MAX_TOKEN_BYTES + 1)):
        frame = {"type": "refresh_token", "payload": {"token": token}}
        with pytest.raises(ContractError) as caught:
            decode_client(json.dumps(frame).encode(), BUILTIN)
        assert caught.value.code == codes.ERR_INVALID_MESSAGE
        assert caught.value.errors[0][0] == "$.payload.token"


def test_allowed_client_types_are_derived():
    """ALLOWED_CLIENT_MESSAGE_TYPES is exactly the client-allowed catalog entries."""
    derived = {name for name, spec in BUILTIN.items() if spec.client_allowed}
    assert derived == {"position_update", "refresh_token"}
    assert frozenset(derived) == ALLOWED_CLIENT_MESSAGE_TYPES


def test_builtin_catalog_is_read_only():
    """Nobody can add to or change the built-in catalog at run time."""
    with pytest.raises(TypeError):
        BUILTIN["wave"] = BUILTIN["room_updated"]  # type: ignore[index]


# ---------------------------------------------------------------- build_catalog


def test_no_entry_points_gives_the_builtins():
    """With no extensions the catalog equals the built-in one."""
    assert dict(build_catalog([], [])) == dict(BUILTIN)


def test_default_reads_both_groups(monkeypatch):
    """Without arguments, build_catalog reads the two documented groups."""
    asked: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        if group == TYPES_GROUP:
            return [type_entry("wave", "WAVE")]
        return []

    monkeypatch.setattr(catalog_module, "entry_points", fake_entry_points)
    catalog = build_catalog()
    assert sorted(asked) == sorted(
        ["officerouter.message_types", "officerouter.effects"]
    )
    assert catalog["wave"] is plugin_sample.WAVE


def test_entry_point_adds_a_type():
    """A MessageSpec entry point adds a type the codec and the rooms then handle."""
    catalog = build_catalog([type_entry("wave", "WAVE")], [])
    assert catalog["wave"] is plugin_sample.WAVE
    assert set(catalog) == set(BUILTIN) | {"wave"}
    # The built-in catalog itself is untouched.
    assert "wave" not in BUILTIN

    body = {
        "orgId": "org-a",
        "routing": "broadcast",
        "type": "wave",
        "payload": {"userId": "user-1", "emoji": "hi"},
    }
    notification = decode_notify(json.dumps(body).encode(), catalog)
    assert notification.payload == plugin_sample.Wave(userId="user-1", emoji="hi")
    with pytest.raises(ContractError) as info:
        decode_notify(json.dumps(body).encode(), BUILTIN)
    assert info.value.code == codes.ERR_UNKNOWN_TYPE

    registry = make_registry(catalog=catalog)
    connection = FakeConnection()
    registry.connect(identity("user-2"), connection)
    assert registry.notify(notification) == 1
    assert connection.routed() == [
        {"type": "wave", "payload": {"userId": "user-1", "emoji": "hi"}}
    ]


def test_added_type_is_not_client_allowed_by_default():
    """An added backend type is refused from clients like the built-in ones."""
    catalog = build_catalog([type_entry("wave", "WAVE")], [])
    frame = json.dumps({"type": "wave", "payload": {"userId": "u"}}).encode()
    with pytest.raises(ContractError) as info:
        decode_client(frame, catalog)
    assert info.value.code == codes.ERR_TYPE_NOT_ALLOWED


def test_entry_point_adds_an_effect():
    """An effect entry point attaches to a type that has none, and the room runs it."""
    plugin_sample.SEEN.clear()
    catalog = build_catalog([], [effect_entry("room_updated", "kick_on_room_update")])
    assert catalog["room_updated"].effect is plugin_sample.kick_on_room_update
    assert BUILTIN["room_updated"].effect is None

    registry = make_registry(catalog=catalog)
    kicked, other = FakeConnection(), FakeConnection()
    registry.connect(identity("kicked"), kicked)
    registry.connect(identity("other"), other)
    notification = Notification(
        org_id="org-a",
        routing="broadcast",
        type="room_updated",
        payload=RoomUpdated(roomId="r", name="n"),
    )
    assert registry.notify(notification) == 2
    # The effect saw the room before routing; its action ran after delivery.
    seen = plugin_sample.SEEN
    assert seen == [(frozenset({"kicked", "other"}), notification)]
    assert kicked.routed_types() == ["room_updated"]
    assert kicked.events[-1] == (
        "close",
        (codes.CLOSE_POLICY_VIOLATION, "room changed"),
    )
    assert kicked.closes == [(codes.CLOSE_POLICY_VIOLATION, "room changed")]
    assert other.closes == []


def test_effect_for_an_added_type():
    """An effect may attach to a type added by another entry point."""
    catalog = build_catalog(
        [type_entry("wave", "WAVE")], [effect_entry("wave", "kick_on_room_update")]
    )
    assert catalog["wave"].effect is plugin_sample.kick_on_room_update
    assert catalog["wave"].payload is plugin_sample.Wave


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_type_clashing_with_a_builtin(name):
    """A type entry point named like a built-in type is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        build_catalog([type_entry(name, "WAVE")], [])
    assert info.value.variable == f"entry point {name} in {TYPES_GROUP}"
    assert "clashes" in info.value.fix


def test_two_entry_points_for_one_new_type():
    """Two packages adding the same type clash as well."""
    entries = [type_entry("wave", "WAVE"), type_entry("wave", "WAVE")]
    with pytest.raises(ConfigError) as info:
        build_catalog(entries, [])
    assert info.value.variable == f"entry point wave in {TYPES_GROUP}"


@pytest.mark.parametrize("name", ["user_updated", "user_banned"])
def test_effect_clashing_with_a_builtin_effect(name):
    """An effect for a type that already has one is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        build_catalog([], [effect_entry(name, "kick_on_room_update")])
    assert info.value.variable == f"entry point {name} in {EFFECTS_GROUP}"
    assert "clashes" in info.value.fix


def test_two_effects_for_one_type():
    """A second external effect for the same type clashes with the first."""
    entries = [
        effect_entry("room_updated", "kick_on_room_update"),
        effect_entry("room_updated", "kick_on_room_update"),
    ]
    with pytest.raises(ConfigError) as info:
        build_catalog([], entries)
    assert info.value.variable == f"entry point room_updated in {EFFECTS_GROUP}"


def test_effect_for_an_unknown_type():
    """An effect naming no known type is a ConfigError naming the entry point."""
    with pytest.raises(ConfigError) as info:
        build_catalog([], [effect_entry("teleport", "kick_on_room_update")])
    assert info.value.variable == f"entry point teleport in {EFFECTS_GROUP}"


def test_type_entry_point_must_be_a_message_spec():
    """A type entry point naming something else is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        build_catalog([type_entry("wave", "NOT_A_SPEC")], [])
    assert info.value.variable == f"entry point wave in {TYPES_GROUP}"
    assert "MessageSpec" in info.value.fix


def test_effect_entry_point_must_be_callable():
    """An effect entry point naming a non-callable is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        build_catalog([], [effect_entry("room_updated", "NOT_CALLABLE")])
    assert info.value.variable == f"entry point room_updated in {EFFECTS_GROUP}"
    assert "callable" in info.value.fix


@pytest.mark.parametrize(
    ("module", "attr", "error"),
    [
        ("officerouter_no_such_plugin", "WAVE", "ModuleNotFoundError"),
        (SAMPLE, "NO_SUCH_NAME", "AttributeError"),
        (SAMPLE, "EXPLODES", "RuntimeError"),
    ],
    ids=["no-module", "no-attribute", "raises"],
)
def test_failed_type_import(module, attr, error):
    """A type entry point that cannot be loaded is a ConfigError naming it and why."""
    entry = type_entry("wave", attr, module)
    with pytest.raises(ConfigError) as info:
        build_catalog([entry], [])
    assert info.value.variable == f"entry point wave in {TYPES_GROUP}"
    assert error in info.value.fix
    assert entry.value in info.value.fix


def test_failed_effect_import():
    """An effect entry point that cannot be loaded is a ConfigError naming it."""
    entry = effect_entry("room_updated", "x", "officerouter_no_such_plugin")
    with pytest.raises(ConfigError) as info:
        build_catalog([], [entry])
    assert info.value.variable == f"entry point room_updated in {EFFECTS_GROUP}"
    assert "officerouter_no_such_plugin" in info.value.fix


def test_built_catalog_is_read_only():
    """The catalog build_catalog returns cannot be changed afterwards."""
    catalog = build_catalog([type_entry("wave", "WAVE")], [])
    with pytest.raises(TypeError):
        catalog["other"] = MessageSpec(payload=RoomUpdated)  # type: ignore[index]


# ---------------------------------------------------------------- built-in effects


class _View:
    org_id = "org-a"

    def user_ids(self) -> frozenset[str]:
        return frozenset({"u"})

    def role_of(self, user_id: str) -> str | None:
        return "member" if user_id == "u" else None


def test_user_updated_effect_sets_the_role():
    """user_updated asks the room to give the user the new role."""
    message = Notification(
        org_id="org-a",
        routing="broadcast",
        type="user_updated",
        payload=UserUpdated(userId="u", role="guest"),
    )
    assert list(user_updated(_View(), message)) == [SetRole("u", "guest")]


def test_user_banned_effect_closes_with_4003_and_bans():
    """user_banned asks the room to close the user's connections with 4003 and ban."""
    message = Notification(
        org_id="org-a",
        routing="direct",
        type="user_banned",
        payload=UserBanned(userId="u", reason="spam"),
        targets=("u",),
    )
    assert list(user_banned(_View(), message)) == [
        CloseUser("u", 4003, codes.REASON_BANNED, ban=True)
    ]


def test_user_disconnected_effect_closes_with_4004_without_ban():
    """user_disconnected asks the room to close the user's connections with 4004,
    and bans nobody: the next connection is admitted."""
    message = Notification(
        org_id="org-a",
        routing="direct",
        type="user_disconnected",
        payload=UserDisconnected(userId="u", reason=""),
        targets=("u",),
    )
    assert list(user_disconnected(_View(), message)) == [
        CloseUser("u", 4004, codes.REASON_DISCONNECTED)
    ]


def test_user_disconnected_lets_the_user_back():
    """After user_disconnected the user's connections are closed, and a new one
    is admitted (unlike a ban)."""
    registry = make_registry()
    first = FakeConnection()
    registry.connect(identity("u"), first)
    registry.notify(
        decode_notify(
            json.dumps(
                {
                    "orgId": "org-a",
                    "routing": "direct",
                    "type": "user_disconnected",
                    "targets": ["u"],
                    "payload": {"userId": "u", "reason": "stuck client"},
                }
            ).encode(),
            BUILTIN,
        )
    )
    assert first.closes == [(4004, codes.REASON_DISCONNECTED)]
    assert first.routed_types() == ["user_disconnected"]
    registry.connect(identity("u", issued_at=0.0), FakeConnection())
