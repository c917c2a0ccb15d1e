"""The engine, sessions and migrations. Alembic owns the schema; `upgrade` brings any database
(SQLite file or PostgreSQL) from empty to the current revision."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Executable, create_engine, event, func, select, text
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

from outreach.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers run beside the worker's writes; busy_timeout waits instead of failing.
    synchronous=NORMAL with WAL syncs at checkpoints, not at every commit: a commit is durable
    against a crash of the process (a worker killed in the uncertain window), and only a power
    loss or an OS crash can take back the last commits; the database itself stays consistent."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL and process (a pool of connections, shared by threads)."""
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://") :]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextmanager
def write_turn(session: Session) -> Iterator[None]:
    """The session's writes in the block, committed at its end (rolled back on an error).

    On SQLite, in turn with every other process that writes through a turn: the turn is an
    exclusive flock on a file beside the database, waited for in the kernel's queue rather
    than in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms... between tries (writers that
    take turns many times a second, as the send loop's short transactions do, lost most of
    their time asleep while the lock was free). The turn ends after the commit: a process that
    kept SQLite's write lock past its turn and then waited for its next turn would wait on a
    process waiting for it. Elsewhere only the commit (PostgreSQL locks rows, and wakes its
    waiters when a lock is released; on the send loop's connection, in autocommit, each
    statement has committed itself: `turn_session`)."""
    path = _sqlite_file(session.get_bind().engine)
    fd = _lock_file(os.getpid(), path) if path else None
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
        _commit(session)
    except BaseException:
        session.rollback()
        raise
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite database, beside which its turns' lock files lie; None for any
    other database (PostgreSQL, SQLite in memory)."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    return path if path and path != ":memory:" else None


def transaction_turn(session: Session, key: int, name: str) -> None:
    """Wait until no other session holds this turn, then hold it until this session's
    transaction ends, committed or not: for a step that reads, decides and writes, and must
    not decide on what another such step is about to change. PostgreSQL: an advisory lock of
    the transaction (`key`). SQLite: an exclusive flock on `<database>.<name>-lock`, on a
    descriptor of its own (a thread of the same process must wait too), closed at the end.
    It is not SQLite's write lock: the send loop's writes go on meanwhile."""
    connection = session.connection()  # the transaction the turn lasts for
    if connection.dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(key)))
        return
    path = _sqlite_file(connection.engine)
    held = session.info.setdefault(_TURNS, {})
    if not path or name in held:
        return  # held already: as PostgreSQL's, a turn taken twice does not wait on itself
    fd = os.open(f"{path}.{name}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    held[name] = fd


_TURNS = "outreach_turns"  # Session.info: the SQLite turns it holds, name -> descriptor


@event.listens_for(Session, "after_transaction_end")
def _end_turns(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # not a SAVEPOINT's end
        for fd in session.info.pop(_TURNS, {}).values():
            os.close(fd)  # the flock goes with it


_DRIVER_COMMITS = "outreach_driver_commits"  # the execution option `turn_session` sets


def _commit(session: Session) -> None:
    """Commit what the session wrote. In a `turn_session` the driver commits and the Session's
    transaction is kept for the next turn: it is bookkeeping only there, and its begin and
    commit cost as much as SQLite's commit itself (0.05 to 0.09 ms a turn, in the turn that
    every other process waits for)."""
    if session.in_transaction():
        connection = session.connection()
        if connection.get_execution_options().get(_DRIVER_COMMITS):
            session.flush()
            connection.connection.dbapi_connection.commit()  # type: ignore[union-attr]
            return
    session.commit()


@contextmanager
def turn_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for a loop of `write_turn`s (the send loop's batch), on one connection kept
    for the loop: committing gave a session's connection back to the pool, and taking it again
    cost a ping and giving it back a reset (on PostgreSQL, a SELECT 1 and a ROLLBACK: two round
    trips a message). Each turn commits on the driver (`_commit`).

    On PostgreSQL the connection is in autocommit: every write of the send loop is one
    statement, whole on its own (a claim with its verdict, kept attachments and Events; a
    transition with its Event), so a BEGIN and a COMMIT around it were two more round trips a
    message for nothing. A write that needs two statements to be whole must not be added to
    such a loop without a transaction of its own (`Connection.begin` does not open one here).
    On SQLite the driver opens a transaction at a turn's first write, and the turn's end
    commits it."""
    with sessions.kw["bind"].connect() as connection:
        connection.execution_options(**{_DRIVER_COMMITS: True})
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        with sessions(bind=connection) as session:
            yield session


@lru_cache(maxsize=8)
def _lock_file(pid: int, database: str) -> int:
    """One descriptor per process (a forked worker must not share its parent's: a flock
    belongs to the open file, so processes sharing one would not exclude each other)."""
    return os.open(f"{database}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)


def run_on_driver(
    connection: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Run a Core statement on the driver's own cursor: compiled once for the parameter names
    it is given (one set in `rows`, or many for an INSERT), each value converted by its
    column's type as SQLAlchemy would. For the send loop's statements, where SQLAlchemy's own
    path per execution (the statement's cache key, the parameters, the result) cost more than
    the database took to run them (SQLite: 0.23 of the worker's CPU ms a message for four
    statements; PostgreSQL: 0.24 for its one). Returns the rows of a RETURNING as tuples (of
    one set of parameters; none of many); no SQLAlchemy event fires, and the driver's errors
    come as they are."""
    plan = _plan(statement, connection.dialect, tuple(sorted(rows[0])))
    cursor = connection.connection.cursor()
    try:
        if len(rows) > 1:
            cursor.executemany(plan.sql, [plan.values(row) for row in rows])
            return []
        cursor.execute(plan.sql, plan.values(rows[0]))
        return [tuple(row) for row in cursor.fetchall()] if plan.returns else []
    finally:
        cursor.close()


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect and one set of parameter names."""

    sql: str
    returns: bool  # a RETURNING (psycopg builds `cursor.description` anew each time it is read)
    names: tuple[str, ...]  # positional: in the order of the placeholders; named: all
    keys: tuple[str, ...] | None  # named: each name as the placeholder spells it
    fixed: Mapping[str, Any]  # values the statement carries itself (a literal compared to)
    processors: Mapping[str, Callable[[Any], Any]]

    def values(self, params: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        values = []
        for name in self.names:
            if name in params:
                value = params[name]
            elif name in self.fixed:
                value = self.fixed[name]
            else:  # as SQLAlchemy refuses it: never a silent NULL (`key = NULL` matches nothing)
                raise KeyError(f"a value is required for the statement's parameter {name!r}")
            process = self.processors.get(name)
            values.append(value if process is None else process(value))
        return values if self.keys is None else dict(zip(self.keys, values, strict=True))


@lru_cache(maxsize=64)
def _plan(statement: Executable, dialect: Dialect, names: tuple[str, ...]) -> _Plan:
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    assert isinstance(compiled, SQLCompiler)
    binds = compiled.binds
    processors = {}
    for name, bind in binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    fixed = {name: bind.value for name, bind in binds.items() if not bind.required}
    returns = bool(compiled.effective_returning)
    if compiled.positiontup is not None:
        positions = tuple(compiled.positiontup)
        return _Plan(compiled.string, returns, positions, None, fixed, processors)
    escaped = compiled.escaped_bind_names
    keys = tuple(escaped.get(name, name) for name in binds)
    return _Plan(compiled.string, returns, tuple(binds), keys, fixed, processors)


def analyze(session: Session, *tables: str) -> None:
    """PostgreSQL: statistics for tables just filled in bulk, before anything is planned on
    them. Autovacuum analyses a table only a minute or more after the rows changed (and not at
    all where it is off), so a campaign sent at once was planned on none: the send loop's join
    of a batch's 50 deliveries to their recipients read every recipient (a hash join over a
    sequential scan, 2.4 ms a batch at 6,000 recipients) instead of 50 by key (0.13 ms). In the
    session's transaction: its own new rows count, and the statistics are seen at its commit.
    SQLite plans without statistics and keeps the ones it has; it is left to its own."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ANALYZE {', '.join(tables)}"))


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error: all or nothing."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply the migrations up to `revision` (the schema from an empty database)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = get_engine(url)
    try:
        command.upgrade(cfg, revision)
    except OperationalError as exc:
        raise ConfigError(f"cannot reach the database {redact(url)}: {exc.orig}") from exc


def redact(url: str) -> str:
    """The URL without its password (after the user name, or a `password=` of its query, which
    psycopg reads too), for messages and logs."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)
