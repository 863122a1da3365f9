"""Reliability of opening a review store (audit E).

The store is identified by `PRAGMA application_id` and its schema version; anything else (a
text file, a truncated database, a folder, another program's SQLite database, a newer schema)
is refused with a StoreError naming the path, and never modified. Reading commands open the
store read-only, so a store on a read-only file system or folder can still be reported on.
"""

import os
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import store_dump as dump

from mosaic_studio.annotator import export  # noqa: F401 - imported before a test drops root's rights
from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.store import APPLICATION_ID, ReviewStore, StoreError
from mosaic_studio.annotator.store_schema import MIGRATIONS
from tests.test_store import all_verdicts, make_sample


def make_store(path, samples=2, points_per_ref=3):
    with ReviewStore(path) as store:
        for n in range(samples):
            store.add_sample(make_sample(f"s{n}", points_per_ref=points_per_ref))
        sample = store.get_sample("s0")
        store.save_review("s0", "alice", 0, verdicts=all_verdicts(sample), decision="accepted")
    return path


def cli_error(capsys, *args):
    """Run the CLI; return its stderr, after checking it failed with a one-line message."""
    capsys.readouterr()
    assert main(list(args)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def files_of(path):
    return {p.name: p.read_bytes() for p in Path(path).parent.iterdir() if p.name.startswith(Path(path).name)}


def test_a_new_store_is_stamped(tmp_path):
    path = make_store(tmp_path / "reviews.db")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


def _text_file(path):
    path.write_text("sample_id,caption\ns0,a cat\n")
    return "not an SQLite database"


def _folder(path):
    path.mkdir()
    return "folder"


def _empty_file(path):
    path.write_bytes(b"")
    return "empty"


def _truncated(path):
    make_store(path, samples=60, points_per_ref=20)
    data = path.read_bytes()
    assert len(data) > 3 * 4096
    path.write_bytes(data[: len(data) // 2])
    return "damaged"


def _fifo(path):
    os.mkfifo(path)
    return "not a regular file"


@pytest.mark.parametrize("make", [_text_file, _folder, _empty_file, _truncated, _fifo])
@pytest.mark.parametrize("command", ["report", "sample", "export"])
def test_what_is_not_a_store_gets_a_one_line_error(tmp_path, capsys, make, command):
    path = tmp_path / "reviews.db"
    what = make(path)
    with pytest.raises(StoreError, match=what) as caught:
        ReviewStore(path, create=False)
    assert str(path) in str(caught.value)
    args = {"report": ["report"], "sample": ["sample"], "export": ["export", "--out", str(tmp_path / "out")]}
    err = cli_error(capsys, *args[command], "--store", str(path))
    assert str(path) in err and what in err
    assert not (tmp_path / "out").exists()


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path, capsys):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before = files_of(path)
    for create in (True, False):
        with pytest.raises(StoreError, match="not a review store") as caught:
            ReviewStore(path, create=create)
        assert str(path) in str(caught.value) and "users" in str(caught.value)
    err = cli_error(capsys, "import", "--store", str(path), "--format", "semalign", "--data", str(tmp_path))
    assert "not a review store" in err
    assert files_of(path) == before  # no tables added, not switched to WAL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_another_applications_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with pytest.raises(StoreError, match="application_id"):
        ReviewStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    conn.close()


def test_a_newer_schema_is_refused_with_a_store_error(tmp_path, capsys):
    path = make_store(tmp_path / "reviews.db")
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    before = dump(path)
    with pytest.raises(StoreError, match="schema version"):
        ReviewStore(path)
    err = cli_error(capsys, "report", "--store", str(path))
    assert "schema version" in err and str(path) in err
    assert dump(path) == before


def test_a_store_made_before_the_application_id_still_opens_and_is_stamped(tmp_path):
    path = make_store(tmp_path / "reviews.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id = 0")  # as every store was before this change
    conn.close()
    with ReviewStore(path, create=False, read_only=True) as store:  # reading does not stamp
        assert store.get_sample("s0").version == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (0,)
    conn.close()
    with ReviewStore(path, create=False) as store:
        assert store.get_sample("s0").version == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    conn.close()


def test_read_only_opening_reads_and_never_writes(tmp_path, capsys):
    path = make_store(tmp_path / "reviews.db")
    before = dump(path)
    with ReviewStore(path, create=False, read_only=True) as store:
        assert store.get_sample("s0").version == 1 and store.stats().samples == 2
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.add_sample(make_sample("s9"))
    assert main(["report", "--store", str(path), "--all"]) == 0
    assert "overall" in capsys.readouterr().out
    assert dump(path) == before


def _report_in_read_only_folder(path, out):
    """As a user who cannot write the store or its folder: report, and export elsewhere."""
    codes = [
        main(["report", "--store", str(path), "--all"]),
        main(["export", "--store", str(path), "--out", str(out), "--skip-invalid"]),
    ]
    with ReviewStore(path, create=False, read_only=True) as store:
        codes.append(0 if store.stats().reviews == 1 else 9)
    return codes


def test_a_store_in_a_read_only_folder_can_be_reported(capsys):
    # pytest's tmp_path is private to its owner, so the folders here must be reachable by the
    # unprivileged user the test switches to when it runs as root (chmod does not bind root).
    root = Path(tempfile.mkdtemp(prefix="store-ro-"))
    try:
        os.chmod(root, 0o755)
        folder, out = root / "ro", root / "out"
        folder.mkdir()
        out.mkdir(mode=0o777)
        os.chmod(out, 0o777)
        path = make_store(folder / "reviews.db")
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, 0o555)
        if os.geteuid() != 0:
            codes = _report_in_read_only_folder(path, out / "export")
        else:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, as user nobody
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    os.write(write, bytes(_report_in_read_only_folder(path, out / "export")))
                finally:
                    os._exit(0)
            os.close(write)
            os.waitpid(pid, 0)
            codes = list(os.read(read, 16))
            os.close(read)
        assert codes == [0, 0, 0], capsys.readouterr()
        assert sorted(p.name for p in folder.iterdir()) == ["reviews.db"]  # no -wal or -shm made
    finally:
        os.chmod(root / "ro", 0o755)
        shutil.rmtree(root)
