"""Migrate the ticket database: ``python -m migrations upgrade``.

The database is DATABASE_URL from the settings (the environment or ``.env``).
Commands: ``upgrade [REVISION]``, ``downgrade REVISION``, ``current`` and
``check``, which exits with 1 unless the database is at the latest revision.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from migrations import (
    INITIAL_REVISION,
    DatabaseNotReady,
    MigrationError,
    MigrationResult,
    check_revision,
    current_revision,
    downgrade,
    error_reason,
    head_revision,
    masked_url,
    upgrade,
)
from settings import SettingsError, load_settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m migrations",
        description=(
            "Migrate the ticket database of DATABASE_URL (from the environment "
            "or .env) with its Alembic revisions."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)

    upgrading = commands.add_parser(
        "upgrade",
        help="Migrate up to a revision, by default the latest.",
        description=(
            "Migrate up to REVISION. Tables made before the project had "
            "migrations are stamped with the first revision, then upgraded."
        ),
    )
    upgrading.add_argument(
        "revision",
        nargs="?",
        default="head",
        help="Revision id to reach. Default: %(default)s (the latest).",
    )

    downgrading = commands.add_parser(
        "downgrade",
        help="Migrate down to a revision. 'base' drops every table.",
    )
    downgrading.add_argument(
        "revision", help="Revision id to reach, or 'base' for an empty database."
    )

    commands.add_parser("current", help="Print the database's revision.")
    commands.add_parser(
        "check", help="Exit with 1 unless the database is at the latest revision."
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        database_url = load_settings().database_url
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    database = masked_url(database_url)
    try:
        if args.command == "upgrade":
            report(database, args.command, upgrade(database_url, args.revision))
        elif args.command == "downgrade":
            report(database, args.command, downgrade(database_url, args.revision))
        elif args.command == "current":
            current = current_revision(database_url)
            latest = " (latest)" if current == head_revision() else ""
            print(f"{database}: revision {current or 'none'}{latest}")
        else:
            check_revision(database_url)
            print(f"{database}: at the latest revision, {head_revision()}")
    except DatabaseNotReady as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MigrationError as error:
        print(f"error: {database}: {error}", file=sys.stderr)
        return 1
    except SQLAlchemyError as error:
        print(
            f"error: {args.command} failed on {database}: {error_reason(error)}",
            file=sys.stderr,
        )
        return 1
    return 0


def report(database: str, command: str, result: MigrationResult) -> None:
    """Print what a migration did, one revision a line."""
    if result.adopted:
        print(
            f"{database}: its tables were made before the project had migrations; "
            f"stamped them as revision {INITIAL_REVISION}"
        )
    after = result.after or "none"
    if not result.steps:
        print(f"{database}: at revision {after}, nothing to run")
        return

    verb = "running" if command == "upgrade" else "undoing"
    print(
        f"{database}: migrated from revision {result.before or 'none'} to "
        f"{after} by {verb}:"
    )
    for revision, description in result.steps:
        print(f"  {revision}  {description}")


if __name__ == "__main__":
    sys.exit(main())
