"""Schema revisions of the coordinator database (Alembic): where a database stands, and upgrades.

The revisions live in ``migrations/versions/``, one per schema change. Databases made before
Alembic carry their version in the one-row table ``schema_info`` (1, 2 or 3); each of those
versions is exactly one revision here, so such a database is stamped with its revision and then
upgraded like any other. ``Store`` calls :func:`ensure_current` when it opens a database: an empty
database is created at the newest revision, one at an older revision is refused until
``fedsilo coordinator migrate`` (:func:`upgrade`) has run, and one at a revision this code does
not know (a newer release migrated it) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from coordinator.errors import StorageUnavailable
from coordinator.persistence.engine import failure_reason, make_engine

__all__ = [
    "LEGACY_REVISIONS",
    "MIGRATIONS_DIR",
    "SchemaMismatch",
    "SchemaState",
    "check_schema",
    "current_revision",
    "ensure_current",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# The schema_info versions written before Alembic, and the revision that reproduces each.
LEGACY_REVISIONS: Mapping[int, str] = {1: "0001", 2: "0002", 3: "0003"}

_VERSION_TABLE = "alembic_version"
_LEGACY_TABLE = "schema_info"


class SchemaMismatch(StorageUnavailable):
    """The database's schema is not this code's: older (migrate it), newer or unknown."""


@dataclass(frozen=True)
class SchemaState:
    """Where one database's schema stands against the revisions this code ships."""

    revision: str | None  # None: an empty database
    head: str
    legacy_version: int | None = None  # schema_info's version, until Alembic has stamped it

    @property
    def is_empty(self) -> bool:
        return self.revision is None

    @property
    def is_current(self) -> bool:
        return self.revision == self.head and self.legacy_version is None

    def describe(self) -> str:
        if self.revision is None:
            return "empty"
        if self.legacy_version is not None:
            return f"schema version {self.legacy_version} (revision {self.revision})"
        return f"revision {self.revision}"


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(None))


def _config(conn: Connection | None) -> Config:
    config = Config()
    # The option goes through configparser, where % starts an interpolation.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    # env.py runs the revisions on this connection, inside the caller's transaction.
    config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    """The newest revision this code ships."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError(f"no Alembic revisions under {MIGRATIONS_DIR}")
    return head


def read_state(conn: Connection) -> SchemaState:
    """The schema state of the database behind ``conn``; a database nobody can serve raises."""
    head = head_revision()
    tables = set(inspect(conn).get_table_names())
    if _VERSION_TABLE in tables:
        # Read directly: Alembic's MigrationContext would log two lines at every start.
        query = text(f"SELECT version_num FROM {_VERSION_TABLE}")  # noqa: S608 - a constant
        rows = conn.execute(query).scalars().all()
        if len(rows) > 1:
            raise SchemaMismatch(f"database schema is at several revisions at once: {rows}")
        state = SchemaState(rows[0] if rows else None, head)
    elif _LEGACY_TABLE in tables:
        legacy = text(f"SELECT version FROM {_LEGACY_TABLE}")  # noqa: S608 - a constant
        version = conn.execute(legacy).scalar()
        if not isinstance(version, int) or version not in LEGACY_REVISIONS:
            raise SchemaMismatch(
                f"database schema version {version} is not known to this fedsilo (it knows "
                f"versions 1 to 3 from before Alembic and revisions up to {head})"
            )
        state = SchemaState(LEGACY_REVISIONS[version], head, legacy_version=version)
    else:
        state = SchemaState(None, head)
    if state.revision is not None and not _is_known(state.revision):
        raise SchemaMismatch(
            f"database schema revision {state.revision} is newer than this fedsilo, whose "
            f"newest is {head}: run the fedsilo release that migrated it, or restore a backup"
        )
    return state


def _is_known(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())


def _refuse_older(state: SchemaState) -> SchemaMismatch:
    return SchemaMismatch(
        f"database {state.describe()} is older than this fedsilo's {state.head}: back up the "
        "database, then run `fedsilo coordinator migrate --config COORDINATOR.yaml` (or set "
        "database.auto_migrate: true)"
    )


def ensure_current(conn: Connection) -> SchemaState:
    """Check the database at the start of serving; create an empty one at the newest revision.

    A database from before Alembic whose version is the newest revision's is only stamped (its
    tables are already the newest). Returns the state found before any change.
    """
    state = read_state(conn)
    if state.is_empty or (state.revision == state.head and not state.is_current):
        _upgrade(conn, state)
    elif not state.is_current:
        raise _refuse_older(state)
    return state


def _upgrade(conn: Connection, state: SchemaState) -> None:
    config = _config(conn)
    if state.legacy_version is not None and state.revision is not None:
        command.stamp(config, state.revision)
    command.upgrade(config, "head")


def upgrade(url: str) -> SchemaState:
    """Bring the database at ``url`` to the newest revision in one transaction.

    Returns the state it had before. A database at a revision this code does not know raises
    :class:`SchemaMismatch` and is left untouched.
    """
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            state = read_state(conn)
            if not state.is_current:
                _upgrade(conn, state)
            return state
    except DBAPIError as exc:
        raise StorageUnavailable(f"cannot migrate the database: {failure_reason(exc)}") from exc
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision of the database at ``url`` (a pre-Alembic one's equivalent); None if empty."""
    return _read_only(url).revision


def check_schema(url: str) -> SchemaState:
    """What the coordinator checks at start, without changing anything.

    An empty database passes (serving creates it); an older or unknown one raises
    :class:`SchemaMismatch` with a one-line reason naming both revisions.
    """
    state = _read_only(url)
    if not state.is_empty and state.revision != state.head:
        raise _refuse_older(state)
    return state


def _read_only(url: str) -> SchemaState:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return read_state(conn)
    except DBAPIError as exc:
        raise StorageUnavailable(f"cannot open the database: {failure_reason(exc)}") from exc
    finally:
        engine.dispose()
