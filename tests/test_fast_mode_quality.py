"""benchmarks/fast_mode_quality.py: exact against fast mode, paired, at toy size (2 held-out cases)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fast_mode_quality.py"


def load_script():
    spec = importlib.util.spec_from_file_location("fast_mode_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def test_the_table_pairs_the_two_modes_and_its_differences_are_those_of_the_records(script, tmp_path):
    path = script.main(["--cases", "2", "--steps", "1", "--threads", "1", "--out", str(tmp_path)])
    table = path.read_text()
    data = json.loads((tmp_path / "fast_mode_quality.json").read_text())
    exact, fast = records(tmp_path / "exact"), records(tmp_path / "fast")
    assert [r["mode"] for r in exact + fast] == ["exact"] * 2 + ["fast"] * 2
    assert [r["case"] for r in exact] == [r["case"] for r in fast] and [r["subjects"] for r in exact] == [1, 2]
    assert data["settings"]["fast"] == {**data["settings"]["exact"], "reference_cache": True}
    assert set(data["comparison"]) == {"fidelity_gain", "presence", "pck"}
    labels = {"fidelity_gain": "fidelity above chance", "presence": "presence", "pck": "attention PCK"}
    for metric, label in labels.items():
        section = table.split(f"| {label}", 1)[1].split("\n\n", 1)[0].splitlines()
        assert "fast − exact [95 % interval]" in section[0]
        assert [line.split(" | ")[0] for line in section[2:]] == ["| K=1", "| K=2", "| **overall**"]
        # Recomputed here from the two records files alone.
        exact_mean, fast_mean = np.mean([r[metric] for r in exact]), np.mean([r[metric] for r in fast])
        overall = data["comparison"][metric]["overall"]
        assert overall["n"] == 2
        assert overall["exact"] == pytest.approx(exact_mean, abs=1e-12)
        assert overall["fast"] == pytest.approx(fast_mean, abs=1e-12)
        d = overall["difference"]
        assert d["mean"] == pytest.approx(fast_mean - exact_mean, abs=1e-12)
        assert d["low"] <= d["mean"] <= d["high"]
        assert f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" in section[-1]
        for k, (a, b) in zip((1, 2), zip(exact, fast)):  # one case per count: its own difference, no interval
            entry = data["comparison"][metric]["by_subjects"][str(k)]
            assert entry["difference"] is None
            assert entry["fast"] - entry["exact"] == pytest.approx(b[metric] - a[metric])
            assert "one case: no interval" in section[1 + k]
    # The default LoRA stage's probe sites (every double block): the note names them.
    assert data["probe_sites"] == [f"transformer_blocks.{i}" for i in range(4)]
    assert "transformer_blocks.0, transformer_blocks.1" in table
    # A rerun resumes both evaluations (same settings) and writes the same table.
    assert script.main(["--cases", "2", "--steps", "1", "--threads", "1", "--out", str(tmp_path)]).read_text() == table


def test_per_subject_rows_get_intervals_from_two_cases_and_mismatched_cases_are_refused(script):
    exact = [{"case": f"c{i}", "subjects": 1 + i % 2, "m": float(i)} for i in range(6)]
    fast = [{**r, "m": r["m"] + (0.5 if r["subjects"] == 1 else -1.0)} for r in exact]
    fast[5]["m"] = None  # undefined in one mode: left out of that count's pairs
    comparison = script.compare(exact, fast, "m")
    assert comparison["overall"]["n"] == 5
    one, two = comparison["by_subjects"][1], comparison["by_subjects"][2]
    assert (one["n"], two["n"]) == (3, 2)
    assert one["difference"]["mean"] == pytest.approx(0.5) and one["fast"] - one["exact"] == pytest.approx(0.5)
    assert two["difference"]["mean"] == pytest.approx(-1.0) and two["exact"] == pytest.approx(2.0)  # cases 1, 3
    with pytest.raises(ValueError, match="same cases"):
        script.compare(exact, fast[::-1], "m")
