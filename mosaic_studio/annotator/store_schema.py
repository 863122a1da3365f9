"""Schema migrations of the review store, numbered by SQLite's `user_version` pragma.

MIGRATIONS[i] takes a store from user_version i to i + 1. A migration is history: once released
it never changes (a store in the field already ran it); a schema change is a new entry. That is
also why the CHECK lists spell the status values out instead of reading today's Python enums.
Each entry is a tuple of single statements, run inside one transaction by `ReviewStore`.
"""

_V1_TABLES = (
    """CREATE TABLE samples (
        id          TEXT PRIMARY KEY,
        caption     TEXT NOT NULL,
        num_refs    INTEGER NOT NULL CHECK (num_refs >= 1),
        categories  TEXT NOT NULL,   -- JSON list, one category tag per reference, in order
        stratum     TEXT NOT NULL,   -- verify.stratum_to_text(subject count, sorted categories)
        target_path TEXT NOT NULL,
        status      TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'accepted', 'rejected')),
        version     INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0),  -- = number of reviews
        in_sample   INTEGER NOT NULL DEFAULT 0 CHECK (in_sample IN (0, 1)),
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    )""",
    "CREATE INDEX samples_by_stratum ON samples (stratum)",
    # "references" is an SQL keyword, hence refs.
    """CREATE TABLE refs (
        sample_id  TEXT NOT NULL REFERENCES samples (id),
        ref_index  INTEGER NOT NULL CHECK (ref_index >= 0),
        image_path TEXT NOT NULL,
        category   TEXT NOT NULL,
        PRIMARY KEY (sample_id, ref_index)
    )""",
    # Coordinates are pixels. proposed_* are NULL for points an annotator added; the current
    # position (ref_x …) starts equal to the proposal and changes when a point is moved.
    """CREATE TABLE points (
        sample_id      TEXT NOT NULL,
        ref_index      INTEGER NOT NULL,
        point_index    INTEGER NOT NULL CHECK (point_index >= 0),
        proposed_ref_x REAL, proposed_ref_y REAL, proposed_tgt_x REAL, proposed_tgt_y REAL,
        ref_x REAL NOT NULL, ref_y REAL NOT NULL, tgt_x REAL NOT NULL, tgt_y REAL NOT NULL,
        status     TEXT NOT NULL
                   CHECK (status IN ('proposed', 'kept', 'moved', 'added', 'deleted')),
        source     TEXT NOT NULL,
        confidence REAL,
        PRIMARY KEY (sample_id, ref_index, point_index),
        FOREIGN KEY (sample_id, ref_index) REFERENCES refs (sample_id, ref_index)
    )""",
    # sample_version is the version this review produced: UNIQUE makes "version = number of
    # reviews" a constraint. UNIQUE (id, sample_id) lets verdicts point at both.
    """CREATE TABLE reviews (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        sample_id      TEXT NOT NULL REFERENCES samples (id),
        annotator      TEXT NOT NULL,
        decision       TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
        sample_version INTEGER NOT NULL CHECK (sample_version >= 1),
        num_judged     INTEGER NOT NULL CHECK (num_judged >= 0),  -- verdict rows it owns
        created_at     TEXT NOT NULL,
        duration_s     REAL NOT NULL CHECK (duration_s >= 0),
        UNIQUE (sample_id, sample_version),
        UNIQUE (id, sample_id)
    )""",
    "CREATE INDEX reviews_by_annotator ON reviews (annotator, sample_id)",
    # One row per judged point, with the coordinates it was judged at: agreement between two
    # annotators is only meaningful where they judged the same position.
    """CREATE TABLE verdicts (
        review_id   INTEGER NOT NULL,
        sample_id   TEXT NOT NULL,
        ref_index   INTEGER NOT NULL,
        point_index INTEGER NOT NULL,
        verdict     TEXT NOT NULL CHECK (verdict IN ('correct', 'wrong', 'unsure')),
        ref_x REAL NOT NULL, ref_y REAL NOT NULL, tgt_x REAL NOT NULL, tgt_y REAL NOT NULL,
        PRIMARY KEY (review_id, ref_index, point_index),
        FOREIGN KEY (review_id, sample_id) REFERENCES reviews (id, sample_id),
        FOREIGN KEY (sample_id, ref_index, point_index)
            REFERENCES points (sample_id, ref_index, point_index)
    )""",
    "CREATE INDEX verdicts_by_point ON verdicts (sample_id, ref_index, point_index)",
    # No foreign key on sample_id: the log is history and may mention any id.
    """CREATE TABLE audit_log (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        sample_id TEXT,
        action    TEXT NOT NULL,
        payload   TEXT NOT NULL   -- JSON
    )""",
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1_TABLES,)
