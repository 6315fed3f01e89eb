"""The monitoring store: one SQLAlchemy engine, migrated on open, with batch writes.

Every write is one transaction, and every insert is keyed (prediction id, feedback triple,
ledger pair, quarantine fingerprint) with ON CONFLICT DO NOTHING, so replaying a batch that a
crash interrupted adds nothing twice and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from vitedit_ops.errors import InfrastructureError, InvalidInputError

from .schema import (COMMITTED, PENDING, RELEASED, EditLedger, Feedback, ModelClasses,
                     Prediction, Quarantine, table_of)
from .validation import MAX_STORED_INT, Reason, utcnow

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "monitoring_alembic_version"
_PG_MIGRATION_LOCK = 0x76697465  # arbitrary constant: serialises concurrent migrations
_CHUNK = 5000  # ids per IN (...) list; below SQLite's and PostgreSQL's parameter limits
DEFAULT_SQLITE_TIMEOUT = 60.0  # seconds a writer waits for a lock (``?timeout=`` overrides)


@dataclass(frozen=True)
class QuarantineEntry:
    """A refused record as it will be kept: kind, reason, detail, where from, raw payload."""

    kind: str
    reason: str
    detail: str
    origin: str
    raw: str
    record_id: str | None = None

    def fingerprint(self) -> str:
        """Same record, same place, same reason -> same row, however often it is replayed."""
        key = json.dumps([self.kind, self.origin, self.reason, self.raw])
        return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class StagedRecord:
    """A validated row and its provenance, kept in case the store itself refuses it.

    ``raw`` may be a function giving the text: it is needed only for a refusal, and making
    it for every row cost the logger more than storing the row did."""

    row: dict[str, Any]
    origin: str
    raw: str | Callable[[], str]

    @property
    def raw_text(self) -> str:
        return self.raw if isinstance(self.raw, str) else self.raw()


@dataclass
class BatchOutcome:
    """What one committed batch did."""

    accepted: int = 0
    duplicates: int = 0
    pending: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())


@dataclass(frozen=True)
class LedgerSettlement:
    """What reconciling the edit ledger with the registry changed: rows per version."""

    committed: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.committed or self.released)


@dataclass(frozen=True)
class QuarantinedRecord:
    id: int
    kind: str
    reason: str
    detail: str
    origin: str
    record_id: str | None
    raw: str
    quarantined_at: datetime


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we ship), not psycopg2."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store (server, connection, lock, disk) failed rather than the
    data: such a write may pass later and is retried, never quarantined."""
    return isinstance(exc, InfrastructureError | sa.exc.OperationalError | sa.exc.InterfaceError
                      | sa.exc.DisconnectionError | sa.exc.TimeoutError | OSError)


def _refused_row(exc: BaseException) -> bool:
    """Whether the database (or SQLAlchemy binding a value for it) refused the data itself:
    a value out of a column's range, unserialisable JSON, a constraint. Binding errors come
    wrapped in a ``StatementError`` or bare (PostgreSQL's multi-row insert path)."""
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError
                  | TypeError | ValueError | OverflowError):
        return True
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:500]


def storable(text: str | None) -> str | None:
    """Text a quarantine column can hold whatever was received: NUL (refused by PostgreSQL)
    kept as the four characters ``\\x00``, lone surrogates as backslash escapes."""
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class StoreUnavailableError(InfrastructureError):
    """The store's database did not answer, or failed on its side (exit 4)."""


@contextmanager
def _failures_as_infrastructure(engine: Engine) -> Iterator[None]:
    """A server, connection, lock or disk failure of the database as one
    ``InfrastructureError`` line (password hidden): the caller retries later or exits 4."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise StoreUnavailableError(
            f"monitoring store {engine.url.render_as_string(hide_password=True)} failed: "
            f"{_first_line(exc)}") from exc


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MonitoringStore:
    """Predictions, feedback, edit ledger and quarantine behind one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- connections --------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot for the collector's queries)."""
        with _failures_as_infrastructure(self.engine), self.engine.connect() as conn, \
                conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)
        so read-then-write batches never fail half-way on a lock upgrade."""
        with _failures_as_infrastructure(self.engine), self.engine.connect() as conn:
            conn.execution_options(monitoring_write=True)
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MonitoringStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _insert(self, table: sa.Table) -> Any:
        return (sqlite.insert(table) if self.dialect == "sqlite"
                else postgresql.insert(table))

    # -- model classes ------------------------------------------------------------------
    def register_model(self, name: str, num_classes: int,
                       labels: Sequence[str] | None = None) -> None:
        """Declare (or update) the classes a served model predicts; ingest checks against it."""
        if not 1 <= num_classes <= MAX_STORED_INT or (
                labels is not None and len(labels) != num_classes):
            raise InvalidInputError(f"model {name!r}: need 1 <= num_classes <= "
                                    f"{MAX_STORED_INT} and one label per class")
        table = table_of(ModelClasses)
        values = {"model_name": name, "num_classes": num_classes,
                  "labels": list(labels) if labels is not None else None,
                  "registered_at": utcnow()}
        stmt = self._insert(table).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.model_name],
            set_={k: stmt.excluded[k] for k in ("num_classes", "labels", "registered_at")})
        with self.write() as conn:
            conn.execute(stmt)

    def model_classes(self) -> dict[str, int]:
        """Registered models and their number of classes."""
        with self.read() as conn:
            return dict(conn.execute(sa.select(ModelClasses.model_name,
                                               ModelClasses.num_classes)).tuples().all())

    # -- batch writes ---------------------------------------------------------------------
    def _quarantine(self, conn: Connection, entries: Iterable[QuarantineEntry],
                    outcome: BatchOutcome) -> None:
        now = utcnow()
        rows = [{"kind": e.kind, "reason": e.reason, "detail": storable(e.detail[:2000]),
                 "origin": storable(e.origin), "record_id": storable(e.record_id),
                 "raw": storable(e.raw), "fingerprint": e.fingerprint(), "quarantined_at": now}
                for e in entries]
        for entry in rows:
            outcome.reasons[str(entry["reason"])] += 1
        if rows:
            table = table_of(Quarantine)
            conn.execute(self._insert(table).on_conflict_do_nothing(
                index_elements=[table.c.fingerprint]), rows)

    def write_predictions(self, staged: Sequence[StagedRecord],
                          rejected: Sequence[QuarantineEntry]) -> BatchOutcome:
        """Insert a batch of validated predictions and its rejects in one transaction.

        A known id with identical content is a replay (counted as duplicate, stored once); a
        known id with different content is quarantined as ``duplicate_id``.
        """
        outcome = BatchOutcome()
        quarantine = list(rejected)
        with self.write() as conn:
            ids = list({s.row["id"] for s in staged})
            known: dict[str, str] = {}
            for chunk in _chunks(ids):
                known.update(conn.execute(sa.select(Prediction.id, Prediction.content_hash)
                                          .where(Prediction.id.in_(chunk))).tuples().all())
            fresh: list[StagedRecord] = []
            for record in staged:
                row = record.row
                seen = known.get(row["id"])
                if seen is None:
                    known[row["id"]] = row["content_hash"]
                    fresh.append(record)
                elif seen == row["content_hash"]:
                    outcome.duplicates += 1
                else:
                    quarantine.append(QuarantineEntry(
                        "prediction", Reason.DUPLICATE_ID,
                        f"prediction id {row['id']!r} already stored with different content",
                        record.origin, record.raw_text, row["id"]))
            if fresh:
                table = table_of(Prediction)
                stmt = (self._insert(table).on_conflict_do_nothing(index_elements=[table.c.id])
                        .returning(table.c.id))
                stored, refused = self._insert_rows(
                    conn, stmt, fresh, "prediction", "id",
                    bulk=lambda rows: self._bulk_insert(conn, table, rows, "id"))
                quarantine += refused
                outcome.accepted += len(stored)
                # lost a race to another writer
                outcome.duplicates += len(fresh) - len(refused) - len(stored)
            self._quarantine(conn, quarantine, outcome)
        return outcome

    def write_feedback(self, staged: Sequence[StagedRecord],
                       rejected: Sequence[QuarantineEntry]) -> BatchOutcome:
        """Insert a batch of feedback and its rejects in one transaction.

        Feedback naming a class its prediction's model lacks is quarantined now; feedback
        whose prediction is not stored yet is kept and counted as pending (it may arrive
        before its prediction; ``settle_pending_feedback`` links it when the prediction comes and
        quarantines it if it never does).
        """
        outcome = BatchOutcome()
        quarantine = list(rejected)
        with self.write() as conn:
            ids = list({s.row["prediction_id"] for s in staged})
            known: dict[str, tuple[str, int]] = {}
            for chunk in _chunks(ids):
                for pid, sha, num in conn.execute(
                        sa.select(Prediction.id, Prediction.image_sha256,
                                  ModelClasses.num_classes)
                        .join(ModelClasses, ModelClasses.model_name == Prediction.model_name)
                        .where(Prediction.id.in_(chunk))):
                    known[pid] = (sha, num)
            fresh: list[StagedRecord] = []
            for record in staged:
                row = record.row
                sha, num_classes = known.get(row["prediction_id"], (None, None))
                if num_classes is not None and row["true_class"] >= num_classes:
                    quarantine.append(QuarantineEntry(
                        "feedback", Reason.UNKNOWN_CLASS,
                        f"true_class {row['true_class']} is not one of the model's "
                        f"{num_classes} classes", record.origin, record.raw_text,
                        row["prediction_id"]))
                    continue
                fresh.append(StagedRecord({**row, "image_sha256": sha}, record.origin,
                                          record.raw))
            if fresh:
                table = table_of(Feedback)
                stmt = (self._insert(table).on_conflict_do_nothing(
                    index_elements=[table.c.prediction_id, table.c.true_class,
                                    table.c.source])
                        .returning(table.c.prediction_id))
                inserted, refused = self._insert_rows(conn, stmt, fresh, "feedback",
                                                      "prediction_id")
                quarantine += refused
                outcome.accepted += len(inserted)
                outcome.duplicates += len(fresh) - len(refused) - len(inserted)
                outcome.pending += sum(1 for pid in inserted if pid not in known)
            self._quarantine(conn, quarantine, outcome)
        return outcome

    def _insert_rows(self, conn: Connection, stmt: Any, records: Sequence[StagedRecord],
                     kind: str, key: str,
                     bulk: Callable[[list[dict[str, Any]]], list[Any]] | None = None,
                     ) -> tuple[list[Any], list[QuarantineEntry]]:
        """Insert the rows in one go (``bulk``, else ``stmt`` as one executemany), in a
        savepoint; if the database refuses that, insert each half the same way, down to
        single rows, and return the rows refused alone as quarantine entries: one unstorable
        row costs itself only, and a batch of thousands with one poison row costs about
        2 log2(n) bulk inserts, not n single ones. Returns (the keys stored, the refused)."""
        try:
            with conn.begin_nested():
                rows = [r.row for r in records]
                if bulk is not None:
                    return bulk(rows), []
                return [k for (k,) in conn.execute(stmt, rows)], []
        except Exception as exc:  # noqa: BLE001 - sorted below: data refusals vs. the rest
            if not _refused_row(exc):
                raise
            if len(records) == 1:
                [record] = records
                return [], [QuarantineEntry(
                    kind, Reason.STORE_REFUSED, f"the store refused the row: {_first_line(exc)}",
                    record.origin, record.raw_text, str(record.row[key])[:200])]
        middle = len(records) // 2
        stored, refused = self._insert_rows(conn, stmt, records[:middle], kind, key, bulk)
        more_stored, more_refused = self._insert_rows(conn, stmt, records[middle:], kind, key,
                                                      bulk)
        return stored + more_stored, refused + more_refused

    def _bulk_insert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                     key: str) -> list[Any]:
        """Insert ``rows`` (whose keys are not stored yet) at the database's own bulk speed;
        returns the keys stored.

        PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO
        NOTHING RETURNING (a multi-row INSERT is parsed client-side by psycopg, which cost
        more than the database's work). Values go through the columns' own bind processing
        (UTC check, JSON), as an INSERT's would. SQLite: one plain executemany; the batch holds
        the write lock since it read the known keys (BEGIN IMMEDIATE), so every row lands.
        """
        if self.dialect != "postgresql":
            plain = self._insert(table).on_conflict_do_nothing(index_elements=[table.c[key]])
            inserted = conn.execute(plain, rows).rowcount
            if inserted != len(rows):  # cannot happen under the write lock; say so if it does
                raise InfrastructureError(f"{table.name}: {inserted} of {len(rows)} rows "
                                          "inserted while holding the write lock")
            return [row[key] for row in rows]
        return self._copy_insert(conn, table, rows, key)

    def _copy_insert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                     key: str) -> list[Any]:
        import psycopg

        dialect = self.engine.dialect
        columns = [column.name for column in table.columns if column.name in rows[0]]
        processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in columns]
        names = ", ".join(f'"{name}"' for name in columns)
        stage = f"vitedit_stage_{table.name}"
        statement = f'COPY {stage} ({names}) FROM STDIN'
        try:
            with conn.connection.driver_connection.cursor() as cursor:
                cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS {stage} '
                               f'(LIKE "{table.name}") ON COMMIT DELETE ROWS')
                with cursor.copy(statement) as copy:
                    for row in rows:
                        copy.write_row([value if process is None else process(value)
                                        for value, process in zip(
                                            (row.get(name) for name in columns), processors)])
                statement = (f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM {stage} '
                             f'ON CONFLICT ("{key}") DO NOTHING RETURNING "{key}"')
                cursor.execute(statement)
                stored = [k for (k,) in cursor.fetchall()]
                cursor.execute(f"TRUNCATE {stage}")
                return stored
        except psycopg.Error as exc:  # as SQLAlchemy would have raised it: sorted the same
            raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error,
                                             dialect=dialect) from exc

    def add_quarantine(self, entries: Sequence[QuarantineEntry]) -> BatchOutcome:
        """Quarantine records that are not rows of another table (e.g. feedback conflicts)."""
        outcome = BatchOutcome()
        with self.write() as conn:
            self._quarantine(conn, entries, outcome)
        return outcome

    def quarantine_feedback(self, ids: Sequence[int], reason: Reason, detail: str) -> int:
        """Move stored feedback rows into quarantine, atomically; returns how many moved."""
        outcome = BatchOutcome()
        with self.write() as conn:
            self._move_feedback(conn, ids, reason, detail, outcome)
        return outcome.quarantined

    def _move_feedback(self, conn: Connection, ids: Sequence[int], reason: Reason,
                       detail: str, outcome: BatchOutcome) -> None:
        for chunk in _chunks(list(ids)):
            rows = conn.execute(sa.select(Feedback).where(Feedback.id.in_(chunk))).all()
            self._quarantine(conn, (self._feedback_entry(r, reason, detail) for r in rows),
                             outcome)
            conn.execute(sa.delete(Feedback).where(Feedback.id.in_(chunk)))

    @staticmethod
    def _feedback_entry(row: Any, reason: Reason, detail: str) -> QuarantineEntry:
        raw = json.dumps({"prediction_id": row.prediction_id, "true_class": row.true_class,
                          "source": row.source, "ts": row.ts.isoformat()})
        return QuarantineEntry("feedback", reason, detail, f"feedback#{row.id}", raw,
                               row.prediction_id)

    def settle_pending_feedback(self, grace: timedelta | None,
                                now: datetime | None = None) -> int:
        """Link pending feedback (no image hash yet) to predictions that have since arrived,
        and quarantine what is still pending ``grace`` after its ingest (None: never).

        Cheap when little is pending: pending rows are found through an index. Returns the
        number quarantined.
        """
        with self.read() as conn:
            pending = conn.execute(sa.select(Feedback.id, Feedback.prediction_id,
                                             Feedback.ingested_at)
                                   .where(Feedback.image_sha256.is_(None))).tuples().all()
        if not pending:
            return 0
        cutoff = (now or utcnow()) - grace if grace is not None else None
        outcome = BatchOutcome()
        with self.write() as conn:
            arrived: dict[str, str] = {}
            for chunk in _chunks(list({pid for _, pid, _ in pending})):
                arrived.update(conn.execute(sa.select(Prediction.id, Prediction.image_sha256)
                                            .where(Prediction.id.in_(chunk))).tuples().all())
            links = [{"fid": fid, "sha": arrived[pid]} for fid, pid, _ in pending
                     if pid in arrived]
            if links:
                conn.execute(sa.update(Feedback).where(Feedback.id == sa.bindparam("fid"))
                             .values(image_sha256=sa.bindparam("sha"))
                             .execution_options(synchronize_session=False), links)
            expired = [fid for fid, pid, ingested in pending
                       if pid not in arrived and cutoff is not None and ingested < cutoff]
            self._move_feedback(conn, expired, Reason.UNKNOWN_PREDICTION_ID,
                                f"no prediction with this id arrived within {grace} of the "
                                "feedback", outcome)
        return outcome.quarantined

    # -- edit ledger ----------------------------------------------------------------------
    def record_edit_usage(self, run_id: str, model_version: str,
                          prediction_ids: Iterable[str]) -> int:
        """Record that edit run ``run_id`` (producing ``model_version``) fixed these
        predictions, as ``pending`` until ``settle_edit_usage`` says the version served.

        Their images are excluded from later collections for the same model while the rows
        are pending or committed. Idempotent per (run, prediction), so a retried flow task
        records nothing twice (nor revives a released row). Returns the number of new rows.
        """
        ids = list(dict.fromkeys(prediction_ids))
        with self.write() as conn:
            found: dict[str, tuple[str, str]] = {}
            for chunk in _chunks(ids):
                for pid, model, sha in conn.execute(
                        sa.select(Prediction.id, Prediction.model_name, Prediction.image_sha256)
                        .where(Prediction.id.in_(chunk))):
                    found[pid] = (model, sha)
            missing = [pid for pid in ids if pid not in found]
            if missing:
                raise InvalidInputError(
                    f"record_edit_usage: {len(missing)} unknown prediction id(s), e.g. "
                    f"{missing[0]!r}")
            now = utcnow()
            rows = [{"run_id": run_id, "model_version": model_version, "prediction_id": pid,
                     "model_name": found[pid][0], "image_sha256": found[pid][1],
                     "recorded_at": now, "state": PENDING} for pid in ids]
            if not rows:
                return 0
            table = table_of(EditLedger)
            stmt = (self._insert(table).on_conflict_do_nothing(
                index_elements=[table.c.run_id, table.c.prediction_id]).returning(table.c.id))
            return len(conn.execute(stmt, rows).all())

    def settle_edit_usage(self, model: str, *, committed: Iterable[str],
                          under_review: Iterable[str]) -> LedgerSettlement:
        """Bring the ledger of ``model`` in line with the registry.

        Rows of ``committed`` versions (they are or were champion: their fixes served) become
        committed, released ones included (a superseded version promoted after all). Pending
        rows of any other version not ``under_review`` (the current challenger) are released:
        that version was replaced unpromoted, its fixes are in no served model, and its images
        may be collected again. Committed rows never change.
        """
        served = set(committed)
        keep = served | set(under_review)
        unsettled = (sa.select(EditLedger.model_version, EditLedger.state, sa.func.count())
                     .where(EditLedger.model_name == model, EditLedger.state != COMMITTED)
                     .group_by(EditLedger.model_version, EditLedger.state))

        def changes(states: Sequence[Any]) -> list[tuple[str, str, str, int]]:
            found = []
            for version, state, rows in states:
                if version in served:
                    found.append((version, state, COMMITTED, rows))
                elif version not in keep and state == PENDING:
                    found.append((version, state, RELEASED, rows))
            return found

        out = LedgerSettlement()
        with self.read() as conn:  # most nights change nothing: no write lock for them
            if not changes(conn.execute(unsettled).tuples().all()):
                return out
        now = utcnow()
        with self.write() as conn:
            for version, state, target, rows in changes(conn.execute(unsettled).tuples().all()):
                tally = out.committed if target == COMMITTED else out.released
                conn.execute(sa.update(EditLedger)
                             .where(EditLedger.model_name == model,
                                    EditLedger.model_version == version,
                                    EditLedger.state == state)
                             .values(state=target, settled_at=now))
                tally[version] = tally.get(version, 0) + rows
        return out

    def ledger_states(self, model: str) -> dict[str, dict[str, int]]:
        """Ledger rows of ``model`` per version and state."""
        out: dict[str, dict[str, int]] = {}
        with self.read() as conn:
            for version, state, rows in conn.execute(
                    sa.select(EditLedger.model_version, EditLedger.state, sa.func.count())
                    .where(EditLedger.model_name == model)
                    .group_by(EditLedger.model_version, EditLedger.state)):
                out.setdefault(version, {})[state] = rows
        return out

    # -- inspection -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Rows per table, and feedback still waiting for its prediction."""
        orphans = (sa.select(sa.func.count()).select_from(Feedback)
                   .outerjoin(Prediction, Prediction.id == Feedback.prediction_id)
                   .where(Prediction.id.is_(None)))
        with self.read() as conn:
            out = {name: conn.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
                   for name, model in (("predictions", Prediction), ("feedback", Feedback),
                                       ("edit_ledger", EditLedger),
                                       ("quarantine", Quarantine))}
            out["pending_feedback"] = conn.execute(orphans).scalar_one()
        return out

    def quarantined(self, reason: str | None = None, kind: str | None = None,
                    limit: int = 1000) -> list[QuarantinedRecord]:
        """Quarantined records, oldest first, optionally for one reason or kind."""
        query = sa.select(Quarantine).order_by(Quarantine.id).limit(limit)
        if reason is not None:
            query = query.where(Quarantine.reason == reason)
        if kind is not None:
            query = query.where(Quarantine.kind == kind)
        with self.read() as conn:
            return [QuarantinedRecord(r.id, r.kind, r.reason, r.detail, r.origin, r.record_id,
                                      r.raw, r.quarantined_at)
                    for r in conn.execute(query)]


# -- opening ------------------------------------------------------------------------------
def _sqlite_engine(url: sa.URL) -> Engine:
    """WAL-mode SQLite; ``?timeout=SECONDS`` in the URL sets how long a writer waits for a lock
    (default 60 s; a nightly job may rather fail fast and retry)."""
    if url.database and url.database != ":memory:":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"monitoring store {url.database} cannot be created: "
                                        f"{exc}") from exc
    timeout = float(url.query.get("timeout", DEFAULT_SQLITE_TIMEOUT))
    engine = sa.create_engine(url.difference_update_query(["timeout"]),
                              connect_args={"timeout": timeout})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _on_begin)
        cursor = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL",
                       f"busy_timeout={int(timeout * 1000)}",
                       "cache_size=-262144", "mmap_size=1073741824"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("monitoring_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        conn.rollback()
    if current == head:
        return
    with engine.connect() as conn:
        conn.execution_options(monitoring_write=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


def open_store(url: str | None = None, *, migrate: bool = True) -> MonitoringStore:
    """Open (and by default migrate to head) the store at ``url`` or the configured one.

    ``url`` is any SQLAlchemy URL: ``sqlite:///path.db`` (the default, under VITEDIT_HOME) or
    ``postgresql://user@host:5432/db``.
    """
    if url is None:
        from vitedit_ops.settings import get_settings
        url = get_settings().resolved_store_url()
    try:
        parsed = sa.engine.make_url(normalise_url(url))
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise InvalidInputError(f"monitoring store URL is not usable: {exc}") from None
    store = MonitoringStore(engine)
    try:
        if migrate:
            with _failures_as_infrastructure(engine):
                _migrate(engine)
    except Exception:
        engine.dispose()
        raise
    return store
