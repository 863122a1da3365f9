"""The served studio under hostile or careless input, through its API (gradio_client, or the raw
queue for the events gradio_client refuses to call): the request limits of studio/limits.py,
who may change the study (admin setting, annotator names, gradio auth), and errors that name
the problem without leaking the server's paths, from the handlers and from start-up options."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import store_dump
from gradio_client import handle_file
from studio_fixtures import HTTP_TIMEOUT_S, box_file, connect, generate_inputs, png_declaring

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio import app, limits, options, references
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.local_server import launched
from mosaic_studio.studio.tabs import generate as generate_tab

REPO = Path(__file__).resolve().parent.parent
LISTED = ("alice", "bob")  # the annotators of the restricted study app
PASSWORD = "pw-for-tests"


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


@contextmanager
def serve(pipe, folder: Path, launch_kwargs=None, **build_kwargs):
    demo = build_demo(pipe, store=folder / "store.db", outputs_dir=folder / "out", **build_kwargs)
    with launched(demo, **(launch_kwargs or {})) as url:
        yield url, folder / "store.db", demo


@pytest.fixture(scope="module")
def open_app(pipe, tmp_path_factory):
    """The defaults: no admin, any annotator name, no auth."""
    with serve(pipe, tmp_path_factory.mktemp("open")) as served:
        yield served


@pytest.fixture(scope="module")
def study_app(pipe, tmp_path_factory):
    """An admin app whose annotators are restricted to LISTED (MOSAIC_ANNOTATORS)."""
    with serve(pipe, tmp_path_factory.mktemp("study"), admin=True, annotators=LISTED) as served:
        yield served


@pytest.fixture(scope="module")
def auth_app(pipe, tmp_path_factory):
    """An admin app behind gradio auth: the logged-in user is the only name."""
    auth = [(name, PASSWORD) for name in LISTED]
    with serve(pipe, tmp_path_factory.mktemp("auth"), launch_kwargs={"auth": auth}, admin=True) as served:
        yield served


def generate(client, files, prompt="a red box"):
    return client.predict(*generate_inputs([handle_file(f) for f in files], prompt), api_name="/generate")


def audit(store_path) -> list[tuple[str, str]]:
    with sqlite3.connect(store_path) as conn:
        return conn.execute("SELECT actor, action FROM audit_log ORDER BY id").fetchall()


def queue_call(url: str, fn_index: int, data: list, files=()) -> dict:
    """One event through the raw queue, as any HTTP client can send it (api_visibility="private"
    only hides an event from the API page and gradio_client); uploads `files` first and passes
    them as data[0]. Returns the process_completed message."""
    with httpx.Client(base_url=url + "gradio_api/", timeout=HTTP_TIMEOUT_S) as http:
        if files:
            uploaded = http.post("upload", files=[("files", open(f, "rb")) for f in files]).json()
            data = [[{"path": p, "meta": {"_type": "gradio.FileData"}} for p in uploaded], *data]
        session = uuid.uuid4().hex
        joined = http.post(
            "queue/join",
            json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
        )
        joined.raise_for_status()
        with http.stream("GET", "queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the queue closed without completing the event")


def preview_indices(demo) -> list[int]:
    return [i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == "on_preview"]


# --- 10. limits -------------------------------------------------------------------------------


def test_an_upload_over_the_file_size_limit_is_refused(open_app, tmp_path):
    url, store_path, _ = open_app
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (limits.MAX_UPLOAD_BYTES + 1))
    before = store_dump(store_path)
    client = connect(url)
    with pytest.raises(Exception, match="exceeds the maximum file size of 20971520 bytes"):  # gradio_client's check
        generate(client, [str(big)])
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:  # a client that does not check: refused as it streams in
        refused = http.post(url + "gradio_api/upload", files=[("files", big.open("rb"))])
    assert refused.status_code == 413 and "maximum allowed size" in refused.text
    # A file that reaches the handler another way (an example, a URL) meets the same limit there
    with pytest.raises(ValueError, match=r"big\.png\) is 20,971,521 bytes; an upload may be at most 20 MB"):
        references.load_references([str(big)])
    gallery, *_ = generate(client, [box_file(tmp_path / "box.png")])  # still serving
    assert len(gallery) == 1 and store_dump(store_path) == before


def test_pixels_are_limited_per_request_before_decoding(open_app, tmp_path):
    url, _, _ = open_app
    client = connect(url)
    # Headers only (no pixel data): each is under the 40 MP per-image limit, together they are over
    side = 5_000
    count = limits.MAX_REQUEST_PIXELS // (side * side) + 1
    assert count <= 6
    files = [png_declaring(tmp_path / f"big{i}.png", side, side) for i in range(count)]
    with pytest.raises(Exception, match=r"hold 75\.0 MP together; one request may hold at most 72 MP"):
        generate(client, files)
    with pytest.raises(Exception, match="not a readable image"):  # one alone fits: it is decoded (and has no pixels)
        generate(client, files[:1])


def test_prompts_longer_than_t5_reads_are_refused_at_once(open_app, tmp_path):
    url, _, _ = open_app
    client = connect(url)
    box = box_file(tmp_path / "box.png")
    with pytest.raises(Exception, match=r"the prompt is 10,000,000 characters; at most 2,000"):
        generate(client, [box], prompt="x" * 10_000_000)
    # Under the character cap but over the embedded model's T5 tokenizer (128 tokens)
    long_prompt = "a red box " * 150
    assert len(long_prompt) <= limits.MAX_PROMPT_CHARS
    with pytest.raises(Exception, match=r"the prompt is \d+ T5 tokens; the model reads at most 128"):
        generate(client, [box], prompt=long_prompt)
    gallery, *_ = generate(client, [box], prompt="a red box " * 10)  # a prompt that fits still runs
    assert len(gallery) == 1


def test_annotator_names_are_limited_in_the_app_and_in_the_store(study_app, tmp_path):
    url, store_path, _ = study_app
    client = connect(url)
    before = store_dump(store_path)
    huge = "n" * 1_000_000
    for call in (
        lambda: client.predict(huge, api_name="/annotate_load"),
        lambda: client.predict(huge, "Select / move", api_name="/annotate_accepted"),
        lambda: client.predict(0.5, 0, huge, api_name="/annotate_mark_sample"),
        lambda: client.predict(1, 0, 3, 4, huge, api_name="/send_to_annotate"),
    ):
        with pytest.raises(Exception, match=r"annotator name is 1,000,000 characters; at most 64"):
            call()
    with pytest.raises(Exception, match="at most 64"):
        client.predict("n" * (limits.MAX_NAME_CHARS + 1), "Select / move", api_name="/annotate_rejected")
    assert store_dump(store_path) == before

    # The store itself refuses such an actor, whoever calls it, and writes nothing
    store_path = tmp_path / "store.db"
    with ReviewStore(store_path) as store:
        store.mark_sampled([], actor="a" * ReviewStore.MAX_ACTOR_CHARS)  # at the limit: fine
        before = store_dump(store_path)
        with pytest.raises(ValueError, match="actor name is 1,000,000 characters; at most 64"):
            store.mark_sampled([], actor=huge)
    assert store_dump(store_path) == before


def test_previews_run_one_at_a_time_even_from_raw_queue_clients(open_app, tmp_path, monkeypatch):
    url, _, demo = open_app
    indices = preview_indices(demo)
    assert len(indices) == 3  # on a new file list, the background checkbox and the tolerant-crop checkbox
    lock, running, most = threading.Lock(), [0], [0]

    def slow_preview(files, remove_bg, crop_tolerance=0):  # counts the previews in progress at once
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.4)
        with lock:
            running[0] -= 1
        return []

    monkeypatch.setattr(generate_tab, "preview", slow_preview)
    box = box_file(tmp_path / "box.png")
    results = []
    callers = [
        threading.Thread(
            target=lambda i=i: results.append(queue_call(url, indices[i % 3], [False, False], files=[box]))
        )
        for i in range(4)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(HTTP_TIMEOUT_S)
    assert len(results) == 4 and all(r["success"] for r in results)
    assert most[0] == limits.PREVIEWS_AT_ONCE
    for i in indices:  # both triggers share the one limit
        assert (demo.fns[i].concurrency_limit, demo.fns[i].concurrency_id) == (
            limits.PREVIEWS_AT_ONCE,
            limits.PREVIEW_CONCURRENCY_ID,
        )


# --- 11. who may change the study ------------------------------------------------------------


def test_redrawing_the_sample_needs_the_admin_setting(open_app):
    url, store_path, _ = open_app
    client = connect(url)
    with pytest.raises(Exception, match="needs the admin setting"):
        client.predict(0.5, 0, "mallory", api_name="/annotate_mark_sample")
    with pytest.raises(Exception, match="needs the admin setting"):  # an anonymous caller no less
        client.predict(0.5, 0, "", api_name="/annotate_mark_sample")
    assert not [row for row in audit(store_path) if row[1] == "mark_sample"]
    # No fallback name either: an empty annotator cannot save
    with pytest.raises(Exception, match="enter your annotator name"):
        client.predict("", "Select / move", api_name="/annotate_accepted")


def test_admin_options_and_annotators_reach_the_app(monkeypatch):
    for variable in ("MOSAIC_ADMIN", "MOSAIC_ANNOTATORS"):
        monkeypatch.delenv(variable, raising=False)
    assert (options.parse_args([]).admin, options.parse_args([]).annotators) == (False, ())
    assert options.parse_args(["--admin", "--annotators", "alice, bob,alice"]).annotators == ("alice", "bob")
    monkeypatch.setenv("MOSAIC_ADMIN", "1")
    monkeypatch.setenv("MOSAIC_ANNOTATORS", "alice,bob")
    args = options.parse_args([])
    assert args.admin is True and args.annotators == LISTED

    built = {}

    class Launched:
        def launch(self, **kwargs):
            built["launch"] = kwargs

    def fake_build_demo(pipe, **kwargs):
        built.update(kwargs)
        return Launched()

    monkeypatch.setattr("mosaic_studio.studio.quantization.load_studio_pipeline", lambda *a, **k: "pipe")
    monkeypatch.setattr(app, "build_demo", fake_build_demo)
    app.main([])
    assert built["admin"] is True and tuple(built["annotators"]) == LISTED


def test_a_restricted_study_takes_only_its_annotators(study_app):
    url, store_path, _ = study_app
    client = connect(url)
    for name in ("mallory", " "):
        with pytest.raises(Exception, match="not one of this study's annotators|enter your annotator name"):
            client.predict(name, "Select / move", api_name="/annotate_accepted")
        with pytest.raises(Exception, match="not one of this study's annotators|enter your annotator name"):
            client.predict(0.5, 0, name, api_name="/annotate_mark_sample")
        with pytest.raises(Exception, match="not one of this study's annotators|enter your annotator name"):
            client.predict(name, api_name="/annotate_load")
    with pytest.raises(Exception, match="enter your annotator name"):  # no "studio" stands in for a name
        client.predict(1, 0, 3, 4, "", api_name="/send_to_annotate")
    # A listed name passes the check: the save then needs an opened sample, the re-draw goes through
    with pytest.raises(Exception, match="open a sample first"):
        client.predict("bob", "Select / move", api_name="/annotate_accepted")
    assert "reviewed by bob" in client.predict(0.5, 0, " bob ", api_name="/annotate_mark_sample")
    assert audit(store_path) == [("bob", "mark_sample")]


def test_under_gradio_auth_the_logged_in_user_is_the_name(auth_app):
    url, store_path, _ = auth_app
    client = connect(url, auth=("alice", PASSWORD))
    with pytest.raises(Exception, match="logged in as 'alice'"):
        client.predict("bob", "Select / move", api_name="/annotate_accepted")
    with pytest.raises(Exception, match="logged in as 'alice'"):
        client.predict(0.5, 0, "bob", api_name="/annotate_mark_sample")
    assert "reviewed by alice" in client.predict(0.5, 0, "", api_name="/annotate_mark_sample")
    assert audit(store_path) == [("alice", "mark_sample")]


# --- 12. errors name the problem, not the server ----------------------------------------------


def test_errors_name_an_upload_by_its_file_name_only(open_app, tmp_path):
    url, _, demo = open_app
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    client = connect(url)
    with pytest.raises(Exception, match=r"reference 1 \(fake\.png\)") as raised:
        generate(client, [str(fake)])
    message = str(raised.value)
    assert "not a readable image" in message and "/tmp" not in message and "gradio/" not in message
    # The preview (raw queue) says the same
    failed = queue_call(url, preview_indices(demo)[0], [False, False], files=[fake])
    shown = json.dumps(failed)
    assert not failed["success"] and "fake.png" in shown and "/tmp" not in shown and "gradio/" not in shown
    # A file that is gone is named, and its folder is not
    with pytest.raises(ValueError, match=r"^reference 1 \(gone\.png\) is missing: upload it again$"):
        references.load_references([str(tmp_path / "gone.png")])


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("MOSAIC_PORT", "abc", "an integer in 1–65535"),
        ("MOSAIC_PORT", "-1", "an integer in 1–65535"),
        ("GRADIO_SERVER_PORT", "99999", "an integer in 1–65535"),
        ("MOSAIC_MAX_QUEUE", "abc", "an integer >= 1"),
        ("MOSAIC_MAX_QUEUE", "-3", "an integer >= 1"),
        ("MOSAIC_QUANTIZE", "2bit", "one of none, int8, 8bit, 4bit"),
        ("MOSAIC_DTYPE", "fp16", "one of float32, bfloat16, float16"),
        ("MOSAIC_SHARE", "maybe", "one of 1, true"),
        ("MOSAIC_ADMIN", "maybe", "one of 1, true"),
        ("MOSAIC_ANNOTATORS", " , ", "comma-separated annotator names"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_it(monkeypatch, capsys, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        options.parse_args([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {variable}: expected {expected}" in err and repr(value.strip()) in err


def test_flags_are_checked_and_win_over_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("MOSAIC_PORT", "abc")
    assert options.parse_args(["--port", "8000"]).port == 8000  # the flag wins: the variable is not read
    for flag in (["--max-queue", "0"], ["--port", "70000"]):
        with pytest.raises(SystemExit) as exited:
            options.parse_args(flag)
        assert exited.value.code == 2 and f"argument {flag[0]}: expected" in capsys.readouterr().err


def test_python_app_py_with_a_bad_port_exits_2_without_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAIC_", "GRADIO_"))}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "app.py")],
        env={**env, "MOSAIC_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=HTTP_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "error: MOSAIC_PORT: expected an integer in 1–65535, got 'abc'" in done.stderr.splitlines()[-1]
