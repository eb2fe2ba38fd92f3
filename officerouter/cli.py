"""``officerouter token|keygen|admin-hash|schema``: mint a development token,
make fresh keys, hash the admin page's password, or print the contract as JSON
Schema, OpenAPI, AsyncAPI or TypeScript."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from officerouter import schema
from officerouter.admin_login import hash_password
from officerouter.auth import dev_vars, sign_token
from officerouter.catalog import build_catalog
from officerouter.codec import dumps_document
from officerouter.config import ConfigError, read_env_file, unescape_pem
from officerouter.messages import ROLES
from officerouter.tap import resolve_env_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="officerouter")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser(
        "token", help="print a client JWT signed with JWT_PRIVATE_KEY"
    )
    token.add_argument("user_id", nargs="?", default="test-user-1")
    token.add_argument("org_id", nargs="?", default="org-123")
    token.add_argument("role", nargs="?", default="member", choices=ROLES)
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument(
        "--env-file", default=None, help="env file (default: .dev.vars when present)"
    )
    keygen = commands.add_parser(
        "keygen", help="print a fresh key pair and service token in .dev.vars form"
    )
    keygen.add_argument("--type", choices=("rsa", "ec", "ed25519"), default="rsa")
    commands.add_parser(
        "admin-hash",
        help="read the admin page's password (prompt, or one line on stdin) and "
        "print its ADMIN_PASSWORD_HASH",
    )
    schema = commands.add_parser(
        "schema",
        help="print the contract as JSON Schema (2020-12), from the code and the "
        "installed message types",
    )
    form = schema.add_mutually_exclusive_group()
    form.add_argument(
        "--openapi", action="store_true", help="the HTTP endpoints as OpenAPI 3.1"
    )
    form.add_argument(
        "--asyncapi", action="store_true", help="the WebSocket as AsyncAPI 3.0"
    )
    form.add_argument(
        "--typescript", action="store_true", help="TypeScript declarations"
    )
    form.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help=f"write {', '.join(SCHEMA_FILES)} into DIR (docs/)",
    )
    return parser


def _admin_hash() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("admin password: ")
        if getpass.getpass("again: ") != password:
            print("officerouter: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        print("officerouter: use at least 12 characters", file=sys.stderr)
        return 1
    print(f"ADMIN_PASSWORD_HASH={hash_password(password)}")
    return 0


#: What ``officerouter schema --write DIR`` writes, and how.
SCHEMA_FILES: Final = {
    "officerouter.schema.json": schema.json_schema,
    "openapi.json": schema.openapi,
    "asyncapi.json": schema.asyncapi,
}


def _schema(args: argparse.Namespace) -> int:
    catalog = build_catalog()
    if args.write is not None:
        try:
            args.write.mkdir(parents=True, exist_ok=True)
            for name, make in SCHEMA_FILES.items():
                (args.write / name).write_bytes(dumps_document(make(catalog)))
        except OSError as e:
            print(f"officerouter: --write: {e}", file=sys.stderr)
            return 1
        return 0
    if args.typescript:
        sys.stdout.write(schema.typescript(catalog))
        return 0
    make = (
        schema.openapi
        if args.openapi
        else schema.asyncapi
        if args.asyncapi
        else schema.json_schema
    )
    sys.stdout.write(dumps_document(make(catalog)).decode("utf-8"))
    return 0


def _private_key(env_file: Path | None) -> str:
    values = read_env_file(env_file) if env_file is not None else {}
    value = os.environ.get("JWT_PRIVATE_KEY") or values.get("JWT_PRIVATE_KEY")
    if not value:
        raise ConfigError(
            "JWT_PRIVATE_KEY",
            "not set; put the signing key in the environment or .dev.vars "
            "(twistd -n officerouter --dev creates one)",
        )
    return unescape_pem(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "admin-hash":
            return _admin_hash()
        if args.command == "schema":
            return _schema(args)
        if args.command == "keygen":
            sys.stdout.write(dev_vars(args.type))
            return 0
        if not 1 <= args.ttl <= 7 * 86400:
            raise ConfigError("--ttl", "must be between 1 second and 7 days")
        env_file = resolve_env_file(args.env_file, Path.cwd())
        token = sign_token(
            _private_key(env_file),
            user_id=args.user_id,
            org_id=args.org_id,
            role=args.role,
            ttl=args.ttl,
            now=time.time(),
        )
    except ConfigError as e:
        print(f"officerouter: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"officerouter: JWT_PRIVATE_KEY: {e}", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
