"""Review store: the SQLite database behind correspondence verification (docs/DESIGN.md §6).

Annotators load a sample, move / delete / add points, judge every point and accept or reject
the sample. Several annotators (processes on one machine: WAL needs shared memory, so not a
network file system) work on one store:

- Optimistic locking: a sample carries a `version` that every saved review increments. A save
  names the version it was based on; if someone saved in between, `VersionConflict` is raised
  and nothing is written, so no annotator's work silently overwrites another's.
- Every write is one explicit transaction (BEGIN IMMEDIATE … COMMIT) in WAL mode. A process
  killed mid-save leaves at most an uncommitted WAL tail, which the next opener ignores: the
  store holds the whole save or none of it.
- `audit_log` is append-only, enforced by triggers inside SQLite, not by convention.

The schema lives in `store_schema` (migrations numbered by the `user_version` pragma), the
records and their input checks in `records`; both are re-exported here as the store's API.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from mosaic_studio.annotator.records import (
    Decision,
    EditAction,
    PointEdit,
    PointRecord,
    PointStatus,
    ReferenceRecord,
    SampleRecord,
    SampleStatus,
    SavedReview,
    StoreStats,
    check_edit,
    check_enum,
    check_index,
    check_name,
    check_new_sample,
)
from mosaic_studio.annotator.store_schema import MIGRATIONS
from mosaic_studio.annotator.verify import Stratum, Verdict, VerdictRow, stratum_from_text, stratum_to_text

__all__ = [
    "ANNOTATOR_SOURCE",
    "Decision",
    "EditAction",
    "PointEdit",
    "PointRecord",
    "PointStatus",
    "ReferenceRecord",
    "ReviewStore",
    "SampleRecord",
    "SampleStatus",
    "SavedReview",
    "StoreError",
    "StoreStats",
    "StoreVersionError",
    "resolve_stored",
    "SYSTEM_ACTOR",
    "Verdict",
    "VersionConflict",
    "APPLICATION_ID",
]

BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another writer's transaction to finish
SYSTEM_ACTOR = "system"  # audit-log actor for imports and other non-annotator writes
ANNOTATOR_SOURCE = "annotator"  # `source` of a point an annotator added by hand


class VersionConflict(RuntimeError):
    """The sample changed since the caller loaded it; the save was not applied."""

    def __init__(self, sample_id: str, expected: int, current: int):
        super().__init__(
            f"sample {sample_id!r} was changed by another review: the save expected version "
            f"{expected} but the store has version {current}; nothing was written. Reload the "
            f"sample and review it again."
        )
        self.sample_id, self.expected, self.current = sample_id, expected, current


class StoreError(ValueError):
    """`path` is not a review store this code can open; the message names it and says what it is."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


class StoreVersionError(StoreError, RuntimeError):
    """The store has a newer schema than this code knows. A RuntimeError too, as it was before."""


# PRAGMA application_id of every review store ("MSRV": MOSAIC Studio ReView), so that another
# program's SQLite file passed as --store is recognised and left untouched. Stores written
# before the id was set have 0 there; they are recognised by their tables and stamped.
APPLICATION_ID = 0x4D535256
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_STORE_TABLES = frozenset({"samples", "refs", "points", "reviews", "verdicts", "audit_log"})


def _check_file(path: Path, create: bool) -> None:
    """Refuse, before SQLite touches it, anything at `path` that cannot be a review store."""
    if path.is_dir():
        raise StoreError(path, "is a folder, not a review store (an SQLite file)")
    if not path.exists():
        if create and not path.is_symlink():
            return
        raise FileNotFoundError(f"no review store at {path}")
    if not path.is_file():  # a FIFO or a device: opening it could block forever
        raise StoreError(path, "is not a regular file, so not a review store")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except OSError as error:
        raise StoreError(path, f"cannot be read ({error.strerror or error})") from None
    if not head and not create:
        raise StoreError(path, "is an empty file, not a review store")
    if head and head != _SQLITE_MAGIC:
        raise StoreError(path, f"is not an SQLite database (it starts with {head[:12]!r}), so not a review store")


def _identify(path: Path, conn: sqlite3.Connection, create: bool) -> int:
    """The schema version of the review store on `conn`; StoreError for anything else."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    }
    target = len(MIGRATIONS)
    if app_id not in (0, APPLICATION_ID):
        raise StoreError(
            path, f"is an SQLite database of another program (application_id {app_id:#010x}), not a review store"
        )
    if app_id == 0 and not (tables or version):
        if not create:
            raise StoreError(path, "is an empty SQLite database, not a review store")
        return 0  # a new store
    if app_id == 0 and not (tables == _STORE_TABLES and version >= 1):
        raise StoreError(
            path,
            f"is an SQLite database but not a review store (tables: "
            f"{', '.join(sorted(tables)[:8]) or 'none'}; user_version {version})",
        )
    if version > target:
        raise StoreVersionError(
            path, f"has schema version {version}; this code knows up to {target}. Upgrade mosaic_studio to open it"
        )
    if version == target and not _STORE_TABLES <= tables:
        raise StoreError(
            path, f"is marked as a review store but lacks its tables {', '.join(sorted(_STORE_TABLES - tables))}"
        )
    return version


def _open_error(path: Path, error: sqlite3.Error) -> StoreError:
    name = getattr(error, "sqlite_errorname", None)  # Python 3.11+; 3.10 has only the message
    damaged = (
        name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        if name is not None
        else any(text in str(error) for text in ("malformed", "not a database"))
    )
    return StoreError(path, f"{'is a damaged (e.g. truncated) database' if damaged else 'cannot be opened'} ({error})")


def resolve_stored(store_folder: str | Path, path: str) -> Path:
    """A file path as the store keeps it: a relative one is relative to the store's folder
    (where the studio writes its items: the store then works from any current directory and
    moves with its folder), an absolute one (imports) is used as it is."""
    file = Path(path)
    return file if file.is_absolute() else Path(store_folder) / file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- the store --------------------------------------------------------------------------------


class ReviewStore:
    """Repository over one SQLite file. Use one instance per thread (sqlite3's rule)."""

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False):
        """Open (with `create`, make) the store at `path`. `read_only` is for reading commands:
        nothing is written, not even the WAL files where the folder is read-only.

        Raises FileNotFoundError when there is no file (and `create` is off), StoreError when
        `path` is something else than a review store this code can open; such a file is never
        modified (no tables added, journal mode unchanged).
        """
        self.path = Path(path)
        # Resolved now: relative file paths in the store are relative to its folder (see
        # `resolve_stored`), and a later chdir must not move them.
        self.folder = self.path.resolve().parent
        self.read_only = read_only
        create = create and not read_only
        _check_file(self.path, create)
        try:
            self._conn = self._connect()
        except sqlite3.Error as error:
            raise _open_error(self.path, error) from None
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")  # per connection, off by default
            version = _identify(self.path, self._conn, create)  # before anything is written
            if read_only:
                if version < len(MIGRATIONS):
                    raise StoreError(
                        self.path,
                        f"has schema version {version} and needs an upgrade to "
                        f"{len(MIGRATIONS)}; open it once with a writing command",
                    )
                return
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(self.path, f"could not switch to WAL mode (got {mode!r})")
            # FULL: a committed review survives power loss too, at one fsync per save.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise _open_error(self.path, error) from None
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module opens no implicit transactions; every write
        # below says BEGIN/COMMIT itself. timeout is SQLite's busy timeout.
        options = {"isolation_level": None, "timeout": BUSY_TIMEOUT_S}
        if not self.read_only:
            return sqlite3.connect(self.path, **options)
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, **options)
        try:
            conn.execute("PRAGMA application_id").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        # A WAL store whose folder this user cannot write: SQLite cannot create the -shm file it
        # reads through. Nobody without write access to the folder can change the store either,
        # so it can be read as immutable, unless a -wal file still holds commits not yet copied
        # into the database (immutable reading would skip them).
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                self.path,
                "is read-only here and its -wal file holds changes not yet merged; "
                "open it once with write access to merge them",
            )
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, **options)

    def resolve_path(self, path: str) -> Path:
        """A sample's target or reference path as a file on this machine (`resolve_stored`)."""
        return resolve_stored(self.folder, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at BEGIN, so two savers queue (busy timeout) instead of
        # both reading and then failing to upgrade. A read transaction is one WAL snapshot.
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self._conn
        except BaseException:
            if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        target = len(MIGRATIONS)
        current = (
            self._conn.execute("PRAGMA user_version").fetchone()[0],
            self._conn.execute("PRAGMA application_id").fetchone()[0],
        )
        if current == (target, APPLICATION_ID):
            return  # the common case: no write lock needed to open a current store
        with self._transaction(write=True) as conn:
            # Re-read under the lock: another process may have just created or upgraded it.
            version = _identify(self.path, conn, create=True)
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # stamps stores made before it

    MAX_ACTOR_CHARS = 64  # the audit log is append-only: an over-long name would stay in it for good

    def _audit(self, conn: sqlite3.Connection, actor: str, sample_id: str | None, action: str, payload: dict) -> None:
        # Every write audits inside its transaction, so refusing here rolls the whole write back.
        if len(actor) > self.MAX_ACTOR_CHARS:
            raise ValueError(f"actor name is {len(actor):,} characters; at most {self.MAX_ACTOR_CHARS}")
        conn.execute(
            "INSERT INTO audit_log (at, actor, sample_id, action, payload) VALUES (?, ?, ?, ?, ?)",
            (_now(), actor, sample_id, action, json.dumps(payload, sort_keys=True)),
        )

    # --- samples ---

    def add_sample(self, sample: SampleRecord | Mapping, *, actor: str = SYSTEM_ACTOR) -> None:
        """Insert a new sample with its references and proposed points."""
        record = sample if isinstance(sample, SampleRecord) else SampleRecord.from_dict(sample)
        record = check_new_sample(record)
        check_name(actor, "actor")
        now = _now()
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM samples WHERE id = ?", (record.sample_id,)).fetchone():
                raise ValueError(f"sample {record.sample_id!r} already exists")
            conn.execute(
                "INSERT INTO samples (id, caption, num_refs, categories, stratum, target_path, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sample_id,
                    record.caption,
                    len(record.references),
                    json.dumps(record.categories, ensure_ascii=False),
                    stratum_to_text(record.stratum),
                    record.target_path,
                    now,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO refs (sample_id, ref_index, image_path, category) VALUES (?, ?, ?, ?)",
                [(record.sample_id, r.index, r.image_path, r.category) for r in record.references],
            )
            conn.executemany(
                "INSERT INTO points (sample_id, ref_index, point_index, proposed_ref_x, "
                "proposed_ref_y, proposed_tgt_x, proposed_tgt_y, ref_x, ref_y, tgt_x, tgt_y, "
                "status, source, confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        record.sample_id,
                        p.ref_index,
                        p.point_index,
                        *p.ref_xy,
                        *p.target_xy,
                        *p.ref_xy,
                        *p.target_xy,
                        PointStatus.PROPOSED.value,
                        p.source,
                        p.confidence,
                    )
                    for p in record.points
                ],
            )
            self._audit(
                conn,
                actor,
                record.sample_id,
                "add_sample",
                {"num_refs": len(record.references), "points": len(record.points)},
            )

    def get_sample(self, sample_id: str) -> SampleRecord:
        """The sample as it is now, with its version (the one to pass to `save_review`)."""
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT caption, target_path, status, version, in_sample, created_at, updated_at "
                "FROM samples WHERE id = ?",
                (sample_id,),
            ).fetchone()
            if row is None:
                raise ValueError(f"unknown sample {sample_id!r}")
            references = conn.execute(
                "SELECT ref_index, image_path, category FROM refs WHERE sample_id = ? ORDER BY ref_index", (sample_id,)
            ).fetchall()
            points = conn.execute(
                "SELECT ref_index, point_index, ref_x, ref_y, tgt_x, tgt_y, source, confidence, "
                "status, proposed_ref_x, proposed_ref_y, proposed_tgt_x, proposed_tgt_y "
                "FROM points WHERE sample_id = ? ORDER BY ref_index, point_index",
                (sample_id,),
            ).fetchall()
        caption, target_path, status, version, in_sample, created_at, updated_at = row
        return SampleRecord(
            sample_id=sample_id,
            caption=caption,
            target_path=target_path,
            references=tuple(ReferenceRecord(*reference) for reference in references),
            points=tuple(
                PointRecord(
                    ref_index=p[0],
                    point_index=p[1],
                    ref_xy=(p[2], p[3]),
                    target_xy=(p[4], p[5]),
                    source=p[6],
                    confidence=p[7],
                    status=PointStatus(p[8]),
                    proposed_ref_xy=None if p[9] is None else (p[9], p[10]),
                    proposed_target_xy=None if p[11] is None else (p[11], p[12]),
                )
                for p in points
            ),
            status=SampleStatus(status),
            version=version,
            in_sample=bool(in_sample),
            created_at=created_at,
            updated_at=updated_at,
        )

    def sample_strata(self) -> list[tuple[str, Stratum]]:
        """(sample_id, stratum) of every sample: the input of `verify.stratified_sample`."""
        rows = self._conn.execute("SELECT id, stratum FROM samples ORDER BY id").fetchall()
        return [(sample_id, stratum_from_text(text)) for sample_id, text in rows]

    def mark_sampled(
        self, sample_ids: Sequence[str], *, actor: str = SYSTEM_ACTOR, params: Mapping | None = None
    ) -> None:
        """Make `sample_ids` the stratified verification sample (replacing any earlier one).

        params (e.g. fraction and seed) go into the audit log so the choice can be reproduced.
        """
        check_name(actor, "actor")
        ids = sorted(set(sample_ids))
        with self._transaction(write=True) as conn:
            conn.execute("UPDATE samples SET in_sample = 0 WHERE in_sample = 1")
            marked = sum(
                conn.execute("UPDATE samples SET in_sample = 1 WHERE id = ?", (sample_id,)).rowcount
                for sample_id in ids
            )
            if marked != len(ids):
                known = {row[0] for row in conn.execute("SELECT id FROM samples")}
                raise ValueError(f"unknown sample ids: {sorted(set(ids) - known)[:10]}")
            self._audit(conn, actor, None, "mark_sample", {"params": dict(params or {}), "sample_ids": ids})

    # --- reviews ---

    def save_review(
        self,
        sample_id: str,
        annotator: str,
        expected_version: int,
        *,
        verdicts: Mapping[tuple[int, int], str],
        decision: str,
        edits: Sequence[PointEdit] = (),
        duration_s: float = 0.0,
    ) -> SavedReview:
        """Apply one annotator's review of one sample, all of it or nothing.

        verdicts: a verdict for EVERY point that is not deleted, keyed (ref_index, point_index)
            and judging the point where it was shown, before this review's edits. Requiring all
            of them keeps skipped (hard) points from biasing the error rate.
        edits: moves, deletions and additions; at most one edit per existing point.
        Raises VersionConflict when the sample is no longer at `expected_version`, ValueError on
        bad input; in both cases the store is unchanged.
        """
        # 1. Check what needs no database
        check_name(annotator, "annotator")
        check_index(expected_version, "expected_version")
        decision = check_enum(Decision, decision, "decision")
        judged = {
            _check_point_key(key): check_enum(Verdict, verdict, f"verdict for point {key}")
            for key, verdict in verdicts.items()
        }
        edits = [check_edit(edit) for edit in edits]
        if not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        now = _now()
        with self._transaction(write=True) as conn:
            # 2. Claim the next version: this conditional UPDATE is the optimistic lock
            claimed = conn.execute(
                "UPDATE samples SET version = version + 1, status = ?, updated_at = ? WHERE id = ? AND version = ?",
                (decision.value, now, sample_id, expected_version),
            )
            if claimed.rowcount != 1:
                row = conn.execute("SELECT version FROM samples WHERE id = ?", (sample_id,)).fetchone()
                if row is None:
                    raise ValueError(f"unknown sample {sample_id!r}")
                raise VersionConflict(sample_id, expected_version, row[0])
            # 3. Check the review against the points as they are (rolls back the claim on error)
            shown = {
                (r, i): (rx, ry, tx, ty)
                for r, i, rx, ry, tx, ty in conn.execute(
                    "SELECT ref_index, point_index, ref_x, ref_y, tgt_x, tgt_y FROM points "
                    "WHERE sample_id = ? AND status != ?",
                    (sample_id, PointStatus.DELETED.value),
                )
            }
            num_refs = conn.execute("SELECT num_refs FROM samples WHERE id = ?", (sample_id,)).fetchone()[0]
            _check_against_sample(sample_id, shown, num_refs, judged, edits)
            # 4. The review and its verdicts, each with the coordinates it judged
            review_id = conn.execute(
                "INSERT INTO reviews (sample_id, annotator, decision, sample_version, num_judged,"
                " created_at, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sample_id, annotator, decision.value, expected_version + 1, len(judged), now, float(duration_s)),
            ).lastrowid
            conn.executemany(
                "INSERT INTO verdicts (review_id, sample_id, ref_index, point_index, verdict, "
                "ref_x, ref_y, tgt_x, tgt_y) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(review_id, sample_id, *key, verdict.value, *shown[key]) for key, verdict in sorted(judged.items())],
            )
            # 5. The edits. Every live point was judged, so untouched proposals are now kept.
            conn.execute(
                "UPDATE points SET status = ? WHERE sample_id = ? AND status = ?",
                (PointStatus.KEPT.value, sample_id, PointStatus.PROPOSED.value),
            )
            added = tuple(self._apply_edit(conn, sample_id, edit) for edit in edits)
            # 6. The audit row, last, so the log never describes a save that did not commit
            self._audit(
                conn,
                annotator,
                sample_id,
                "review",
                {
                    "review_id": review_id,
                    "version": expected_version + 1,
                    "decision": decision.value,
                    "verdicts": dict(Counter(verdict.value for verdict in judged.values())),
                    "edits": [_edit_payload(edit, shown, key) for edit, key in zip(edits, added)],
                },
            )
        return SavedReview(review_id, expected_version + 1, tuple(key for key in added if key))

    @staticmethod
    def _apply_edit(conn: sqlite3.Connection, sample_id: str, edit: PointEdit) -> tuple[int, int] | None:
        """Apply one checked edit; return the new point's key for ADD."""
        if edit.action == EditAction.ADD:
            # Indices are never reused (deleted points stay), so a key names one point forever.
            index = conn.execute(
                "SELECT COALESCE(MAX(point_index) + 1, 0) FROM points WHERE sample_id = ? AND ref_index = ?",
                (sample_id, edit.ref_index),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO points (sample_id, ref_index, point_index, ref_x, ref_y, tgt_x, tgt_y,"
                " status, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sample_id,
                    edit.ref_index,
                    index,
                    *edit.ref_xy,
                    *edit.target_xy,
                    PointStatus.ADDED.value,
                    ANNOTATOR_SOURCE,
                ),
            )
            return (edit.ref_index, index)
        key = (sample_id, edit.ref_index, edit.point_index)
        if edit.action == EditAction.MOVE:
            conn.execute(
                "UPDATE points SET ref_x = ?, ref_y = ?, tgt_x = ?, tgt_y = ?, status = ? "
                "WHERE sample_id = ? AND ref_index = ? AND point_index = ?",
                (*edit.ref_xy, *edit.target_xy, PointStatus.MOVED.value, *key),
            )
        else:
            conn.execute(
                "UPDATE points SET status = ? WHERE sample_id = ? AND ref_index = ? AND point_index = ?",
                (PointStatus.DELETED.value, *key),
            )
        return None

    # --- queries for the study ---

    def queue(self, annotator: str, limit: int | None = None) -> list[str]:
        """Sample ids for `mosaic_studio.annotator` to review next.

        Order: the stratified sample first, then the rest; within each, samples with fewer
        reviews first (coverage before second opinions), then by id. Samples this annotator
        already reviewed are skipped.
        """
        rows = self._conn.execute(
            "SELECT s.id FROM samples s LEFT JOIN reviews r ON r.sample_id = s.id "
            "GROUP BY s.id HAVING COALESCE(SUM(r.annotator = ?), 0) = 0 "
            "ORDER BY s.in_sample DESC, COUNT(r.id), s.id LIMIT ?",
            (annotator, -1 if limit is None else limit),
        ).fetchall()
        return [row[0] for row in rows]

    def verdict_rows(self, sampled_only: bool = True) -> list[VerdictRow]:
        """One verdict per automatically proposed point, for `verify.error_report`.

        The first verdict that judged the point at its proposed coordinates: that is the judgement
        of the pipeline's output. Later reviews (second opinions, or a point already moved) are
        left to `verdict_pairs`. sampled_only: only the stratified sample, as the paper measures.
        """
        rows = self._conn.execute(
            "SELECT v.sample_id, s.stratum, v.verdict, v.ref_index, v.point_index "
            "FROM verdicts v JOIN points p USING (sample_id, ref_index, point_index) "
            "JOIN samples s ON s.id = v.sample_id "
            "WHERE (s.in_sample = 1 OR NOT ?) AND v.ref_x = p.proposed_ref_x "
            "AND v.ref_y = p.proposed_ref_y AND v.tgt_x = p.proposed_tgt_x "
            "AND v.tgt_y = p.proposed_tgt_y ORDER BY v.review_id",
            (sampled_only,),
        ).fetchall()
        first: dict[tuple, VerdictRow] = {}
        for sample_id, stratum, verdict, ref_index, point_index in rows:
            first.setdefault(
                (sample_id, ref_index, point_index), VerdictRow(sample_id, stratum_from_text(stratum), verdict)
            )
        return list(first.values())

    def verdict_pairs(self, sampled_only: bool = True) -> list[tuple[str, str]]:
        """(first annotator's verdict, second annotator's verdict) for `verify.cohens_kappa`.

        A pair needs two distinct annotators judging the same point at the same coordinates:
        a point moved by the first reviewer is a different question for the second.
        """
        rows = self._conn.execute(
            "SELECT v.sample_id, v.ref_index, v.point_index, v.ref_x, v.ref_y, v.tgt_x, v.tgt_y,"
            " r.annotator, v.verdict FROM verdicts v JOIN reviews r ON r.id = v.review_id "
            "JOIN samples s ON s.id = v.sample_id WHERE s.in_sample = 1 OR NOT ? "
            "ORDER BY v.review_id",
            (sampled_only,),
        ).fetchall()
        by_point: dict[tuple, dict[str, str]] = {}
        for *point, annotator, verdict in rows:
            by_point.setdefault(tuple(point), {}).setdefault(annotator, verdict)  # first each
        return [tuple(list(judges.values())[:2]) for judges in by_point.values() if len(judges) >= 2]

    def stats(self) -> StoreStats:
        with self._transaction(write=False) as conn:
            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM samples GROUP BY status"))
            samples, in_sample = conn.execute("SELECT COUNT(*), COALESCE(SUM(in_sample), 0) FROM samples").fetchone()
            sampled_reviewed = conn.execute(
                "SELECT COUNT(*) FROM samples WHERE in_sample = 1 AND version > 0"
            ).fetchone()[0]
            reviews = conn.execute("SELECT COUNT(*) FROM reviews").fetchone()[0]
            doubly = conn.execute(
                "SELECT COUNT(*) FROM (SELECT sample_id FROM reviews GROUP BY sample_id "
                "HAVING COUNT(DISTINCT annotator) >= 2)"
            ).fetchone()[0]
            points = dict(conn.execute("SELECT status, COUNT(*) FROM points GROUP BY status"))
        return StoreStats(
            samples=samples,
            by_status=by_status,
            in_sample=in_sample,
            sampled_reviewed=sampled_reviewed,
            reviews=reviews,
            doubly_reviewed=doubly,
            points_by_status=points,
        )


# --- review checks and payloads ---------------------------------------------------------------


def _check_point_key(key: object) -> tuple[int, int]:
    if not isinstance(key, (tuple, list)) or len(key) != 2:
        raise ValueError(f"verdict key {key!r} must be (ref_index, point_index)")
    return (check_index(key[0], "verdict ref_index"), check_index(key[1], "verdict point_index"))


def _check_against_sample(
    sample_id: str, shown: Mapping[tuple[int, int], tuple], num_refs: int, judged: Mapping, edits: Sequence[PointEdit]
) -> None:
    unknown = sorted(set(judged) - set(shown))
    if unknown:
        raise ValueError(f"sample {sample_id!r}: verdicts for points that do not exist or are deleted: {unknown[:10]}")
    missing = sorted(set(shown) - set(judged))
    if missing:
        raise ValueError(
            f"sample {sample_id!r}: every point needs a verdict; missing {len(missing)}, e.g. {missing[:10]}"
        )
    edited = set()
    for edit in edits:
        if edit.ref_index >= num_refs:
            raise ValueError(
                f"sample {sample_id!r}: {edit.action.value} edit names reference "
                f"{edit.ref_index}, but the sample has {num_refs}"
            )
        if edit.action == EditAction.ADD:
            continue
        key = (edit.ref_index, edit.point_index)
        if key not in shown:
            raise ValueError(
                f"sample {sample_id!r}: {edit.action.value} edit names point {key}, which does not exist or is deleted"
            )
        if key in edited:
            raise ValueError(f"sample {sample_id!r}: point {key} is edited twice in one review")
        edited.add(key)


def _edit_payload(edit: PointEdit, shown: Mapping[tuple[int, int], tuple], added: tuple[int, int] | None) -> dict:
    """What the audit log keeps of an edit: the point, where it was and where it went."""
    ref_index, point_index = added or (edit.ref_index, edit.point_index)
    return {
        "action": edit.action.value,
        "ref_index": ref_index,
        "point_index": point_index,
        "ref_xy": edit.ref_xy,
        "target_xy": edit.target_xy,
        "before": shown.get((ref_index, point_index)),
    }
