"""The review store: round trip, optimistic locking, bad input, audit log, crash safety."""

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import store_dump as dump

from mosaic_studio.annotator.store import (
    PointEdit,
    PointRecord,
    PointStatus,
    ReferenceRecord,
    ReviewStore,
    SampleRecord,
    SampleStatus,
    VersionConflict,
)
from mosaic_studio.annotator.store_schema import MIGRATIONS
from mosaic_studio.annotator.verify import stratum_of

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_sample(sample_id="s0", categories=("chair", "person"), points_per_ref=3):
    references = tuple(
        ReferenceRecord(i, f"refs/{sample_id}-{i}.png", category) for i, category in enumerate(categories)
    )
    points = tuple(
        PointRecord(r, j, (10.0 * j + r, 5.5 + j), (20.0 + j, 30.25 + r), "dift+dino", confidence=0.5 + 0.1 * j)
        for r in range(len(categories))
        for j in range(points_per_ref)
    )
    return SampleRecord(sample_id, f"a {' and a '.join(categories)}", f"targets/{sample_id}.png", references, points)


def all_verdicts(sample, verdict="correct"):
    return {(p.ref_index, p.point_index): verdict for p in sample.points if p.status != PointStatus.DELETED}


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "reviews.db"
    with ReviewStore(path) as store:
        store.add_sample(make_sample("s0"))
        store.add_sample(make_sample("s1", categories=("dog",)))
    return path


@pytest.fixture
def store(store_path):
    with ReviewStore(store_path) as opened:
        yield opened


# --- round trip and schema --------------------------------------------------------------------


def test_round_trip(store):
    original = make_sample("s0")
    loaded = store.get_sample("s0")
    assert loaded.created_at and loaded.updated_at
    assert (loaded.status, loaded.version, loaded.in_sample) == (SampleStatus.PENDING, 0, False)
    assert loaded.references == original.references
    assert loaded.points == tuple(
        dataclasses.replace(p, proposed_ref_xy=p.ref_xy, proposed_target_xy=p.target_xy) for p in original.points
    )
    assert loaded.stratum == stratum_of(["person", "chair"])


def test_add_sample_from_plain_dicts(store):
    record = dataclasses.asdict(make_sample("from-dict", categories=("cat",)))
    store.add_sample(record)
    assert store.get_sample("from-dict").points[0].ref_xy == (0.0, 5.5)
    record["sample_id"], record["colour"] = "other", "red"
    with pytest.raises(ValueError, match="colour"):
        store.add_sample(record)


def test_store_settings_and_migrations(store_path):
    with ReviewStore(store_path) as reopened:  # migrating a current store is a no-op
        assert reopened._conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert reopened.get_sample("s1").version == 0
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="schema version"):
        ReviewStore(store_path)
    with pytest.raises(FileNotFoundError):
        ReviewStore(store_path.with_name("absent.db"), create=False)


# --- reviews ----------------------------------------------------------------------------------


def test_save_review_applies_edits_verdicts_and_audit(store, store_path):
    sample = store.get_sample("s0")
    verdicts = all_verdicts(sample)
    verdicts[(0, 1)] = "wrong"
    verdicts[(1, 2)] = "unsure"
    saved = store.save_review(
        "s0",
        "alice",
        0,
        verdicts=verdicts,
        decision="accepted",
        duration_s=12.5,
        edits=[
            PointEdit.move(0, 1, (1.0, 2.0), (3.0, 4.0)),
            PointEdit.delete(1, 2),
            PointEdit.add(1, (7.0, 8.0), (9.0, 10.0)),
        ],
    )
    assert (saved.version, saved.added) == (1, ((1, 3),))
    after = store.get_sample("s0")
    assert (after.version, after.status) == (1, SampleStatus.ACCEPTED)
    points = {(p.ref_index, p.point_index): p for p in after.points}
    assert points[(0, 1)].status == PointStatus.MOVED and points[(0, 1)].ref_xy == (1.0, 2.0)
    assert points[(0, 1)].proposed_ref_xy == (10.0, 6.5)
    assert points[(1, 2)].status == PointStatus.DELETED
    added = points[(1, 3)]
    assert (added.status, added.source, added.proposed_ref_xy) == (PointStatus.ADDED, "annotator", None)
    assert points[(0, 0)].status == PointStatus.KEPT
    # The next review judges the new point too, and a new add never reuses a deleted index.
    second = store.save_review(
        "s0",
        "bob",
        1,
        verdicts=all_verdicts(after),
        decision="rejected",
        edits=[PointEdit.delete(1, 3), PointEdit.add(1, (0, 0), (0, 0))],
    )
    assert second.added == ((1, 4),)
    with sqlite3.connect(store_path) as conn:
        assert conn.execute(
            "SELECT annotator, decision, num_judged, duration_s FROM reviews ORDER BY id"
        ).fetchall() == [("alice", "accepted", 6, 12.5), ("bob", "rejected", 6, 0.0)]
        assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone() == (12,)
        actions = conn.execute("SELECT actor, action FROM audit_log ORDER BY id").fetchall()
    assert actions[-2:] == [("alice", "review"), ("bob", "review")]


def test_stale_version_conflicts_and_changes_nothing(store_path):
    with ReviewStore(store_path) as alice, ReviewStore(store_path) as bob:
        seen_by_alice, seen_by_bob = alice.get_sample("s1"), bob.get_sample("s1")
        alice.save_review(
            "s1", "alice", seen_by_alice.version, verdicts=all_verdicts(seen_by_alice), decision="accepted"
        )
        before = dump(store_path)
        with pytest.raises(VersionConflict) as conflict:
            bob.save_review(
                "s1",
                "bob",
                seen_by_bob.version,
                verdicts=all_verdicts(seen_by_bob),
                decision="rejected",
                edits=[PointEdit.delete(0, 0)],
            )
        assert dump(store_path) == before
    error = conflict.value
    assert isinstance(error, RuntimeError)
    assert (error.sample_id, error.expected, error.current) == ("s1", 0, 1)
    assert "'s1'" in str(error) and "version 0" in str(error) and "version 1" in str(error)


def good_review():
    verdicts = all_verdicts(make_sample("s0"))
    return {
        "sample_id": "s0",
        "annotator": "alice",
        "expected_version": 0,
        "verdicts": verdicts,
        "decision": "accepted",
        "edits": [],
    }


def with_verdicts(change):
    review = good_review()
    review["verdicts"] = {**review["verdicts"], **change}
    return review


BAD_REVIEWS = {
    "unknown sample": ({**good_review(), "sample_id": "nope"}, "unknown sample"),
    "verdict for missing point": (with_verdicts({(0, 99): "correct"}), "do not exist"),
    "verdict for missing reference": (with_verdicts({(5, 0): "correct"}), "do not exist"),
    "verdict value": (with_verdicts({(0, 0): "maybe"}), "'maybe' is not one of"),
    "missing verdict": ({**good_review(), "verdicts": {(0, 0): "correct"}}, "needs a verdict"),
    "move of missing point": ({**good_review(), "edits": [PointEdit.move(0, 9, (1, 1), (1, 1))]}, r"point \(0, 9\)"),
    "negative coordinate": ({**good_review(), "edits": [PointEdit.move(0, 0, (-1, 1), (1, 1))]}, ">= 0"),
    "add to missing reference": ({**good_review(), "edits": [PointEdit.add(2, (1, 1), (1, 1))]}, "reference 2"),
    "point edited twice": (
        {**good_review(), "edits": [PointEdit.delete(0, 0), PointEdit.move(0, 0, (1, 1), (1, 1))]},
        "twice",
    ),
    "decision": ({**good_review(), "decision": "pending"}, "decision"),
    "annotator": ({**good_review(), "annotator": " "}, "annotator"),
}


@pytest.mark.parametrize("name", BAD_REVIEWS)
def test_bad_review_raises_value_error_and_changes_nothing(store, store_path, name):
    review, message = BAD_REVIEWS[name]
    before = dump(store_path)
    with pytest.raises(ValueError, match=message):
        store.save_review(**review)
    assert dump(store_path) == before
    assert store.get_sample("s0").version == 0


def test_deleted_point_can_no_longer_be_judged_or_edited(store, store_path):
    sample = store.get_sample("s1")
    store.save_review(
        "s1", "alice", 0, verdicts=all_verdicts(sample), decision="accepted", edits=[PointEdit.delete(0, 1)]
    )
    before = dump(store_path)
    with pytest.raises(ValueError, match="deleted"):
        store.save_review("s1", "bob", 1, verdicts=all_verdicts(sample), decision="accepted")
    with pytest.raises(ValueError, match="deleted"):
        store.save_review(
            "s1",
            "bob",
            1,
            verdicts=all_verdicts(store.get_sample("s1")),
            decision="accepted",
            edits=[PointEdit.delete(0, 1)],
        )
    assert dump(store_path) == before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sample_id": "s0"}, "already exists"),
        ({"points": (PointRecord(3, 0, (1, 1), (1, 1), "x"),)}, "no reference 3"),
        ({"points": (PointRecord(0, 0, (1, 1), (1, -2), "x"),)}, ">= 0"),
        ({"points": (PointRecord(0, 0, (1, 1), (1, 1), "x"),) * 2}, "twice"),
        ({"references": ()}, "K >= 1"),
        ({"version": 3}, "unreviewed"),
    ],
)
def test_bad_sample_raises_value_error_and_changes_nothing(store, store_path, change, message):
    before = dump(store_path)
    with pytest.raises(ValueError, match=message):
        store.add_sample(dataclasses.replace(make_sample("new"), **change))
    assert dump(store_path) == before
    with pytest.raises(ValueError, match="unknown sample"):
        store.get_sample("new")


# --- integrity guarantees ---------------------------------------------------------------------


def test_audit_log_is_append_only(store, store_path):
    conn = sqlite3.connect(store_path)
    rows = conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
    assert [row[4] for row in rows] == ["add_sample", "add_sample"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE id = 1")
    conn.rollback()
    store.mark_sampled(["s1"], params={"seed": 0})
    sample = store.get_sample("s1")
    store.save_review("s1", "alice", 0, verdicts=all_verdicts(sample), decision="accepted")
    grown = conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
    assert grown[: len(rows)] == rows and len(grown) == len(rows) + 2
    conn.close()


def test_foreign_keys_are_enforced(store, store_path):
    conn = store._conn  # the store's own connection, where foreign keys are switched on
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO refs VALUES ('ghost', 0, 'a.png', 'dog')")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute(
            "INSERT INTO points (sample_id, ref_index, point_index, ref_x, ref_y, tgt_x,"
            " tgt_y, status, source) VALUES ('s1', 4, 0, 1, 1, 1, 1, 'added', 'x')"
        )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO verdicts VALUES (999, 's1', 0, 0, 'correct', 1, 1, 1, 1)")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("DELETE FROM samples WHERE id = 's1'")
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


# --- queries ----------------------------------------------------------------------------------


def test_queue_stats_and_study_queries(store):
    for i in range(2, 5):
        store.add_sample(make_sample(f"s{i}", categories=("dog",)))
    store.mark_sampled(["s3", "s4"])
    assert store.queue("alice") == ["s3", "s4", "s0", "s1", "s2"]
    first = store.get_sample("s3")
    verdicts = all_verdicts(first)
    verdicts[(0, 0)] = "wrong"
    store.save_review(
        "s3",
        "alice",
        0,
        verdicts=verdicts,
        decision="rejected",
        edits=[PointEdit.move(0, 2, (1, 1), (2, 2)), PointEdit.add(0, (3, 3), (4, 4))],
    )
    assert store.queue("alice", limit=2) == ["s4", "s0"]
    assert store.queue("bob") == ["s4", "s3", "s0", "s1", "s2"]  # unreviewed before second looks
    second = store.get_sample("s3")
    store.save_review("s3", "bob", 1, verdicts=all_verdicts(second, "correct"), decision="accepted")
    rows = store.verdict_rows()
    assert sorted(row.verdict for row in rows) == ["correct", "correct", "wrong"]  # alice's
    # (0, 2) moved and (0, 3) added by alice: bob judged other coordinates, so no pair.
    assert sorted(store.verdict_pairs()) == [("correct", "correct"), ("wrong", "correct")]
    assert store.verdict_rows(sampled_only=False) == rows  # no review outside the sample
    stats = store.stats()
    assert (stats.samples, stats.in_sample, stats.sampled_reviewed, stats.reviews, stats.doubly_reviewed) == (
        5,
        2,
        1,
        2,
        1,
    )
    assert stats.by_status == {"pending": 4, "accepted": 1}
    with pytest.raises(ValueError, match="ghost"):
        store.mark_sampled(["s0", "ghost"])
    assert store.stats().in_sample == 2


# --- crash safety -----------------------------------------------------------------------------

CRASH_SEED = 20250901
RANDOM_KILLS = 3
MAX_KILL_DELAY_S = 0.25  # after the child's first committed save
CHILD_WATCHDOG_S = 30.0  # a hung child is killed so the test fails instead of hanging
CRASH_POINTS_PER_REF = 200  # large saves: ~400 verdict rows each

# A child process saving reviews in a loop. In "stall" mode it stops inside the transaction, after
# every write of the save and before COMMIT, and says so; the parent then kills it.
CHILD = """
import random, sys, time
from mosaic_studio.annotator.store import PointEdit, ReviewStore

class StallingStore(ReviewStore):
    def _audit(self, conn, actor, sample_id, action, payload):
        super()._audit(conn, actor, sample_id, action, payload)
        if action == "review":
            print("IN_TRANSACTION", flush=True)
            time.sleep(60)

path, sample_id, mode = sys.argv[1:]
if mode == "stall":
    store = StallingStore(path)
    # A one-page cache makes SQLite spill uncommitted pages into the WAL mid-transaction, so the
    # kill leaves uncommitted frames on disk that recovery must ignore.
    store._conn.execute("PRAGMA cache_size = 1")
else:
    store = ReviewStore(path)
rng = random.Random()
while True:
    sample = store.get_sample(sample_id)
    live = [p for p in sample.points if p.status != "deleted"]
    doomed, *moved = rng.sample(live, 21)
    edits = [PointEdit.delete(doomed.ref_index, doomed.point_index),
             PointEdit.add(rng.randrange(2), (1.0, 2.0), (3.0, 4.0))]
    edits += [PointEdit.move(p.ref_index, p.point_index, (rng.uniform(0, 64), 1.0), (2.0, 3.0))
              for p in moved]
    verdicts = {(p.ref_index, p.point_index): rng.choice(["correct", "wrong", "unsure"])
                for p in live}
    store.save_review(sample_id, rng.choice(["a", "b", "c"]), sample.version, verdicts=verdicts,
                      decision=rng.choice(["accepted", "rejected"]), edits=edits)
    print("SAVED", flush=True)
"""


def assert_consistent(path):
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert (
            conn.execute(
                "SELECT id, version FROM samples s WHERE version != "
                "(SELECT COUNT(*) FROM reviews r WHERE r.sample_id = s.id)"
            ).fetchall()
            == []
        )
        assert (
            conn.execute(  # every review has all its verdict rows
                "SELECT id FROM reviews r WHERE num_judged = 0 OR num_judged != "
                "(SELECT COUNT(*) FROM verdicts v WHERE v.review_id = r.id)"
            ).fetchall()
            == []
        )
        reviews = conn.execute("SELECT COUNT(*) FROM reviews").fetchone()[0]
        # each save wrote one audit row, added one point and deleted one: all or nothing
        assert conn.execute("SELECT COUNT(*) FROM audit_log WHERE action = 'review'").fetchone()[0] == reviews
        assert conn.execute("SELECT COUNT(*) FROM points WHERE source = 'annotator'").fetchone()[0] == reviews
        assert conn.execute("SELECT COUNT(*) FROM points WHERE status = 'deleted'").fetchone()[0] == reviews
    return reviews


def run_child_until(path, mode, signal_line):
    """Start a child, wait for its first `signal_line`, return (process, watchdog)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "big", mode],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(CHILD_WATCHDOG_S, child.kill)
    watchdog.daemon = True
    watchdog.start()
    line = child.stdout.readline().strip()
    if line != signal_line:
        watchdog.cancel()
        child.kill()
        pytest.fail(f"child said {line!r}, not {signal_line!r}: {child.stderr.read()}")
    return child, watchdog


def kill(child, watchdog):
    child.send_signal(signal.SIGKILL)
    child.wait()
    watchdog.cancel()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    saved_lines = child.stdout.read().split()  # what the child reported before it died
    child.stdout.close()
    child.stderr.close()
    return len(saved_lines)


def test_sigkill_during_saves_leaves_store_consistent(tmp_path):
    path = tmp_path / "crash.db"
    with ReviewStore(path) as store:
        store.add_sample(make_sample("big", points_per_ref=CRASH_POINTS_PER_REF))
    rng = random.Random(CRASH_SEED)

    # 1. Killed inside the transaction, every write done but COMMIT: the save must vanish.
    child, watchdog = run_child_until(path, "stall", "IN_TRANSACTION")
    try:
        assert Path(f"{path}-wal").stat().st_size > 0  # uncommitted frames reached the disk
    finally:
        kill(child, watchdog)
    assert assert_consistent(path) == 0

    # 2. Killed at random moments of a save loop: committed saves stay, a partial one vanishes.
    reviews = 0
    for _ in range(RANDOM_KILLS):
        child, watchdog = run_child_until(path, "loop", "SAVED")
        time.sleep(rng.uniform(0, MAX_KILL_DELAY_S))
        reported = 1 + kill(child, watchdog)
        now = assert_consistent(path)
        assert reviews + reported <= now <= reviews + reported + 1  # +1: committed, not printed
        reviews = now

    # 3. The store is still writable: no lock or half-written page was left behind.
    with ReviewStore(path) as store:
        sample = store.get_sample("big")
        doomed = next(p for p in sample.points if p.status != PointStatus.DELETED)
        store.save_review(
            "big",
            "parent",
            sample.version,
            verdicts=all_verdicts(sample),
            decision="accepted",
            edits=[PointEdit.delete(doomed.ref_index, doomed.point_index), PointEdit.add(0, (1.0, 1.0), (1.0, 1.0))],
        )
    assert assert_consistent(path) == reviews + 1
