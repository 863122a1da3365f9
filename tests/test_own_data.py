"""docs/OWN_DATA.md, end to end: photos → requests → propose → import → sample → review → report →
export → compose → train a LoRA → generate, on the embedded default.

The commands are read from the page's bash blocks and run through the same entry points the
installed `mosaic-annotate` / `mosaic-train` scripts call (their `main(argv)`), in the page's
order, so the page cannot drift from what works. The test appends only smaller sizes and step
counts (SMALL). The review step has no command (it is the studio's Annotate tab, `mosaic-studio`
in the page); here the store's library call the tab saves through stands in for the annotator.
The page's Python block (generation) runs as written. Photos are subjects of the synthetic world
drawn on white from two viewpoints, saved as JPEG and PNG.
"""

import csv
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosaic_studio.annotator import cli as annotate
from mosaic_studio.annotator.store import PointEdit, ReviewStore
from mosaic_studio.mosaic.data.semalign import list_sample_dirs, load_sample
from mosaic_studio.train import __main__ as train_cli
from mosaic_studio.world.shapes import make_identity, shade

DOC = Path(__file__).resolve().parents[1] / "docs" / "OWN_DATA.md"
# Test sizes appended to the page's commands (argparse and the trainer keep the last value).
SMALL = {
    ("mosaic-annotate", "propose"): ["--dift-resolution", "128", "--dift-copies", "1"],
    ("mosaic-annotate", "compose"): ["--num", "3", "--size", "64"],
    ("mosaic-train", None): [
        "optim.max_steps=2",
        "optim.batch_size=2",
        "optim.warmup_steps=0",
        "data.target_size=64",
        "data.ref_size=32",
        "model.max_sequence_length=16",
        "loss.points_per_reference=8",
        "run.log_every=1",
        "run.threads=1",
    ],
}
STEPS = [  # the chain the page must keep, in order
    ("mosaic-annotate", "requests"),
    ("mosaic-annotate", "propose"),
    ("mosaic-annotate", "import"),
    ("mosaic-annotate", "sample"),
    ("mosaic-studio", None),
    ("mosaic-annotate", "report"),
    ("mosaic-annotate", "export"),
    ("mosaic-annotate", "compose"),
    ("mosaic-train", None),
]
# folder, synthetic identity id, views as (fill, rotation in degrees, flipped, centre x, centre y)
SUBJECTS = {
    "mug": (0, [(0.75, 0, False, 0.5, 0.5), (0.6, 8, False, 0.45, 0.55)]),
    "teddy_bear": (5, [(0.7, 0, False, 0.5, 0.5), (0.65, -6, False, 0.55, 0.5)]),
    "robot": (4, [(0.8, 0, False, 0.5, 0.5), (0.7, 5, False, 0.5, 0.45)]),
}
SUFFIX = {"mug": ".jpg", "teddy_bear": ".png", "robot": ".jpg"}
SUBJECT_JSON = {"mug": '{"category": "object", "label": "mug"}', "teddy_bear": '{"category": "animal"}'}
PHOTO_SIZE = (200, 150)


def render(identity_id: int, fill: float, rotation: float, flipped: bool, cx: float, cy: float) -> np.ndarray:
    """The identity alone on white, its box's longer side `fill` of the photo's shorter side."""
    width, height = PHOTO_SIZE
    identity = make_identity(identity_id)
    x0, y0, x1, y1 = identity.bounds
    scale = fill * min(width, height) / max(x1 - x0, y1 - y0)
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flipped else 1.0, 1.0])
    inverse = np.linalg.inv(linear)
    ys, xs = np.mgrid[0:height, 0:width]
    dx, dy = xs + 0.5 - cx * width, ys + 0.5 - cy * height
    local_x = inverse[0, 0] * dx + inverse[0, 1] * dy + (x0 + x1) / 2
    local_y = inverse[1, 0] * dx + inverse[1, 1] * dy + (y0 + y1) / 2
    covered, colour = shade(identity, local_x, local_y)
    photo = np.full((height, width, 3), 255, dtype=np.uint8)
    photo[covered] = colour[covered]
    return photo


def make_photos(root: Path) -> None:
    for name, (identity_id, views) in SUBJECTS.items():
        folder = root / "photos" / name
        folder.mkdir(parents=True)
        for n, view in enumerate(views, start=1):
            Image.fromarray(render(identity_id, *view)).save(folder / f"{n}{SUFFIX[name]}", quality=95)
        if name in SUBJECT_JSON:
            (folder / "subject.json").write_text(SUBJECT_JSON[name])


def page_commands() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def page_python() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return block


def step_of(command: list[str]) -> tuple[str, str | None]:
    return (command[0], command[1] if command[0] == "mosaic-annotate" else None)


def review_everything(store_path: str) -> dict:
    """What an annotator does in the Annotate tab: judge every point, delete one, accept all but
    the first sample of the queue, which is rejected."""
    decisions = {}
    with ReviewStore(store_path) as store:
        for n, sample_id in enumerate(store.queue("tester")):
            record = store.get_sample(sample_id)
            verdicts = {(p.ref_index, p.point_index): "correct" for p in record.points}
            edits = [PointEdit.delete(0, record.points[0].point_index)] if n == 1 and record.points else []
            decision = "rejected" if n == 0 else "accepted"
            store.save_review(sample_id, "tester", record.version, verdicts=verdicts, decision=decision, edits=edits)
            decisions[sample_id] = (decision, len(record.points) - len(edits))
    return decisions


def run_step(command: list[str], store: str | None) -> dict | None:
    step = step_of(command)
    argv = command[1:] + SMALL.get(step, [])
    if step[0] == "mosaic-studio":
        return review_everything(store)
    runner = annotate.main if step[0] == "mosaic-annotate" else train_cli.main
    assert runner(argv) == 0, f"{shlex.join(command)} failed"
    return None


def test_the_own_data_page_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the page's paths are relative to the folder holding photos/
    make_photos(tmp_path)
    commands = page_commands()
    assert [step_of(c) for c in commands] == STEPS
    decisions = None
    for command in commands:
        store = command[command.index("--store") + 1] if "--store" in command else None
        decisions = run_step(command, store) or decisions
        output = capsys.readouterr()
        if step_of(command) == ("mosaic-annotate", "requests"):
            assert "wrote 6 requests" in output.out  # 3 subjects x 2 ordered pairs
        if step_of(command) == ("mosaic-annotate", "propose"):
            proposed = [load_sample(p) for p in list_sample_dirs(Path("data/proposed"))]
            assert len(proposed) == 6 and {r.category for s in proposed for r in s.references} == {"object", "animal"}
            assert all(s.meta["proposal"]["extractors"] == ["dift", "sift"] for s in proposed)
            assert sum(len(s.references[0].ref_points) > 0 for s in proposed) >= 3
        if step_of(command) == ("mosaic-annotate", "report"):
            assert "overall" in output.out

    exported = {p.name: load_sample(p) for p in list_sample_dirs(Path("data/train"))}
    accepted = {sid: points for sid, (decision, points) in decisions.items() if decision == "accepted"}
    assert set(exported) == set(accepted)
    assert all(len(exported[sid].references[0].ref_points) == points for sid, points in accepted.items())

    composed = [load_sample(p) for p in list_sample_dirs(Path("data/composed"))]
    assert len(composed) == 3 and all(len(s.references) >= 2 for s in composed)
    used = {subject["source"] for s in composed for subject in s.meta["subjects"]}
    assert used <= {sid for sid, points in accepted.items() if points}  # sources without points are not used
    for sample in composed:  # two photos of one subject never meet in a sample
        shown = [exported[subject["source"]].meta["identity"] for subject in sample.meta["subjects"]]
        assert len(set(shown)) == len(shown)

    with Path("runs/own/log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert Path("runs/own/pipeline/mosaic_lora.safetensors").is_file()

    namespace: dict = {}
    exec(compile(page_python(), str(DOC), "exec"), namespace)  # the page's generation, as written
    with Image.open("mug_and_bear.png") as image:
        assert image.size == (128, 128)
    with pytest.raises(ValueError, match="at most 6"):  # bad input: too many references
        namespace["pipe"]("too many", reference_images=["photos/mug/1.jpg"] * 7, height=128, width=128)


# --- bad input of the steps that add commands or keys -----------------------------------------


def test_requests_name_what_is_wrong(tmp_path, capsys):
    photos = tmp_path / "photos"
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 1
    assert "no photos folder" in capsys.readouterr().err
    (photos / "mug").mkdir(parents=True)
    Image.fromarray(render(0, 0.7, 0, False, 0.5, 0.5)).save(photos / "mug" / "1.png")
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 1
    assert "subject 'mug' has 1 photo(s)" in capsys.readouterr().err
    (photos / "mug" / "2.jpg").write_bytes(b"not a jpeg")
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 1
    assert "2.jpg" in capsys.readouterr().err and not list((tmp_path / "r").glob("mug-*"))
    (photos / "mug" / "2.jpg").unlink()
    Image.fromarray(render(0, 0.6, 5, False, 0.5, 0.5)).save(photos / "mug" / "2.jpg")
    (photos / "mug" / "subject.json").write_text('{"category": "vehicle"}')
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 1
    assert "category 'vehicle'" in capsys.readouterr().err
    (photos / "mug" / "subject.json").unlink()
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 0
    assert annotate.main(["requests", "--photos", str(photos), "--out", str(tmp_path / "r")]) == 0
    assert "wrote 0 requests" in capsys.readouterr().out  # resumed: both already there
    with Image.open(tmp_path / "r" / "mug-1-2" / "target.png") as target:
        assert target.size == (200, 200)  # padded square with the photo's white


def test_sample_and_train_refuse_bad_input(tmp_path, capsys):
    assert annotate.main(["sample", "--store", str(tmp_path / "missing.db")]) == 1
    assert "no review store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["stage=lora", "data.composed_fraction=0.5"])
    assert "data.composed_fraction is 0.5, so data.composed must be a folder" in capsys.readouterr().err
