"""``officerouter schema``: the contract as documents, and the checked-in copies."""

from __future__ import annotations

import json
import re
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from officerouter import catalog as catalog_module
from officerouter import schema
from officerouter.catalog import BUILTIN, TYPES_GROUP, build_catalog
from officerouter.cli import SCHEMA_FILES, main
from officerouter.codec import dumps_document

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = (
    "officerouter schema --write docs/ && "
    "officerouter schema --typescript > clients/js/frames.d.ts"
)

WAVE = EntryPoint(name="wave", value="tests.unit.plugin_sample:WAVE", group=TYPES_GROUP)


def validator_for(definition: str, document: dict[str, Any]) -> Any:
    """A 2020-12 validator of one definition of the JSON Schema document."""
    return jsonschema.Draft202012Validator(
        {**document, "$ref": f"#/$defs/{definition}"},
        format_checker=jsonschema.FormatChecker(),
    )


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The JSON Schema of the built-in catalog."""
    return schema.json_schema(BUILTIN)


def test_the_schema_is_valid_2020_12(document):
    """The generated document is itself a valid JSON Schema 2020-12."""
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    "name", [*SCHEMA_FILES, "frames.d.ts"], ids=[*SCHEMA_FILES, "frames.d.ts"]
)
def test_the_checked_in_documents_match_the_code(name):
    """docs/*.json and clients/js/frames.d.ts are what the code generates now."""
    if name == "frames.d.ts":
        path = ROOT / "clients" / "js" / name
        expected = schema.typescript(BUILTIN).encode("utf-8")
    else:
        path = ROOT / "docs" / name
        expected = dumps_document(SCHEMA_FILES[name](BUILTIN))
    assert path.exists(), f"{path} is missing; regenerate it: {REGENERATE}"
    assert path.read_bytes() == expected, (
        f"{path.relative_to(ROOT)} is out of date with the code; regenerate it: "
        f"{REGENERATE}"
    )


def _examples(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        found.extend(json.loads(line) for line in block.strip().splitlines())
    return found


PROTOCOL_EXAMPLES = _examples(ROOT / "docs" / "protocol.md")


def _kind(example: Any) -> str:
    """Which definition an example of docs/protocol.md shows."""
    if isinstance(example, list):
        return "NotifyBatch"
    if "orgId" in example and "routing" in example:
        return "NotifyBody"
    if "type" in example and "payload" in example:
        return "ClientFrame" if "token" in example["payload"] else "ServerFrame"
    if "results" in example:
        return "BatchAnswer"
    if "users" in example:
        return "PresenceAnswer"
    if "connections" in example:
        return "Health"
    if example.get("ok") is True:
        return "NotifyAnswer"
    return "ErrorAnswer"


def test_protocol_md_has_examples_of_every_kind():
    """The examples cover frames both ways, notify bodies and every answer."""
    assert {_kind(e) for e in PROTOCOL_EXAMPLES} >= {
        "ServerFrame",
        "ClientFrame",
        "NotifyBody",
        "NotifyBatch",
        "NotifyAnswer",
        "BatchAnswer",
        "ErrorAnswer",
        "PresenceAnswer",
        "Health",
    }


@pytest.mark.parametrize(
    "example", PROTOCOL_EXAMPLES, ids=[json.dumps(e)[:60] for e in PROTOCOL_EXAMPLES]
)
def test_every_json_example_of_protocol_md_validates(document, example):
    """Every JSON example in docs/protocol.md is valid under the schema."""
    validator_for(_kind(example), document).validate(example)


def test_a_type_from_an_entry_point_is_in_every_document():
    """A message type installed through an entry point appears in the JSON
    Schema (with the limits its validators state), the OpenAPI and AsyncAPI
    documents and the TypeScript declarations."""
    catalog = build_catalog(types=[WAVE], effect_entries=[])
    defs = schema.json_schema(catalog)["$defs"]
    assert defs["WavePayload"]["properties"]["userId"] == {
        "type": "string",
        "minLength": 1,
    }
    assert {"$ref": "#/$defs/WaveFrame"} in defs["ServerFrame"]["oneOf"]
    assert {"$ref": "#/$defs/WaveDirectNotification"} in defs["NotifyBody"]["oneOf"]
    jsonschema.Draft202012Validator.check_schema(schema.json_schema(catalog))
    assert (
        "WaveBroadcastNotification" in schema.openapi(catalog)["components"]["schemas"]
    )
    assert "WaveFrame" in schema.asyncapi(catalog)["components"]["messages"]
    assert "export interface WaveFrame {" in schema.typescript(catalog)


def test_the_command_reads_the_installed_entry_points(monkeypatch, capsys):
    """``officerouter schema`` builds the catalog as the daemon does, entry
    points included."""

    def entry_points(group: str) -> list[EntryPoint]:
        return [WAVE] if group == TYPES_GROUP else []

    monkeypatch.setattr(catalog_module, "entry_points", entry_points)
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "WavePayload" in printed["$defs"]
    assert main(["schema", "--typescript"]) == 0
    assert "WaveFrame" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--openapi", "--asyncapi"])
def test_the_command_prints_each_document(capsys, flag):
    """``--openapi`` and ``--asyncapi`` print the documents checked in under docs/."""
    assert main(["schema", flag]) == 0
    name = flag.removeprefix("--") + ".json"
    assert capsys.readouterr().out.encode() == (ROOT / "docs" / name).read_bytes()


def test_write_puts_every_document_in_a_directory(tmp_path):
    """``--write DIR`` writes the three JSON documents into DIR."""
    assert main(["schema", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMA_FILES)
    for name in SCHEMA_FILES:
        assert (tmp_path / name).read_bytes() == (ROOT / "docs" / name).read_bytes()


def test_write_makes_the_directory_or_says_in_one_line_why_it_cannot(tmp_path, capsys):
    """A missing directory is made; one that cannot be (a file is in the way) is
    one line and status 1, not a traceback."""
    assert main(["schema", "--write", str(tmp_path / "new" / "docs")]) == 0
    assert sorted(p.name for p in (tmp_path / "new" / "docs").iterdir()) == sorted(
        SCHEMA_FILES
    )
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main(["schema", "--write", str(tmp_path / "file" / "docs")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("officerouter: --write: ")
    assert err.count("\n") == 1


def test_typescript_names_every_frame_and_the_unions():
    """Every frame is an interface PascalCase(type)+"Frame" with a string-literal
    ``type`` and a ``PascalCase(type)+"Payload"`` payload; the unions name them."""
    contract = schema.contract(BUILTIN)
    ts = schema.typescript(BUILTIN)
    for type_, name in {**contract.client_frames, **contract.server_frames}.items():
        assert name.startswith(schema.pascal(type_))
        body = re.search(rf"export interface {name} \{{\n(.*?)\n\}}", ts, re.S)
        assert body is not None, name
        assert f'  type: "{type_}";' in body.group(1)
        assert f"  payload: {schema.pascal(type_)}Payload;" in body.group(1)
    assert "export interface PositionUpdateFrame {" in ts
    assert "export interface ConnectedFrame {" in ts
    server = re.search(r"export type ServerFrame = (.*);", ts)
    client = re.search(r"export type ClientFrame = (.*);", ts)
    assert server is not None
    assert client is not None
    assert set(server.group(1).split(" | ")) == set(contract.server_frames.values())
    assert set(client.group(1).split(" | ")) == {
        "PositionUpdateClientFrame",
        "RefreshTokenFrame",
    }
    assert "export type NotifyBody = " in ts


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


@pytest.mark.parametrize("name", list(SCHEMA_FILES))
def test_every_reference_resolves(name):
    """Every ``$ref`` of each document points at something in that document, and
    the AsyncAPI operations name messages of their channel."""
    document = SCHEMA_FILES[name](BUILTIN)
    refs = _refs(document)
    assert refs
    for ref in refs:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    if name == "asyncapi.json":
        channel = document["channels"]["websocket"]["messages"]
        for operation in document["operations"].values():
            for message in operation["messages"]:
                assert message["$ref"].rsplit("/", 1)[-1] in channel
