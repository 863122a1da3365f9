"""The evaluate command end to end on the embedded default (4 held-out cases), its resume, fast
mode, the oracle, and a published case list scored with tiny random CLIP/DINO models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mosaic_studio.evaluation import evaluate as ev
from mosaic_studio.evaluation.report import summarise
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.train.data import collate

QUICK = ["--cases", "4", "--steps", "2", "--seeds", "2", "--diversity-every", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    ev.main(["--out", str(out), *QUICK])
    return out


def test_evaluate_runs_end_to_end_on_the_default_model(default_run):
    out = default_run
    for name in ("evaluation.json", "evaluation.md", "metrics_vs_subjects.png", "records.jsonl", "settings.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "evaluation.json").read_text())
    records = report["records"]
    assert [r["subjects"] for r in records] == [1, 2, 3, 4]  # case i has 1 + i mod 6 subjects
    for r in records:
        assert Image.open(out / r["image"]).size == (128, 128)
        assert len(r["per_subject"]) == r["subjects"]
        assert 0.0 <= r["pck"] <= 1.0 and -1.0 <= r["fidelity"] <= 1.0
        assert r["presence"] + r["missing"] + r["duplicated"] == pytest.approx(1.0)
    # Diversity on every 2nd case only, from 2 seeds: distinct generations are a positive distance.
    assert [r["diversity"] is not None for r in records] == [True, False, True, False]
    assert all(r["diversity"] > 0 for r in records if r["diversity"] is not None)
    assert report["summary"] == json.loads(json.dumps(summarise(records)))
    assert "identity fidelity" in (out / "evaluation.md").read_text()


def test_a_finished_evaluation_resumes_without_generating(default_run, monkeypatch):
    before = (default_run / "records.jsonl").read_text()
    monkeypatch.setattr(ev, "generate", lambda *a, **k: pytest.fail("resume regenerated a finished case"))
    ev.main(["--out", str(default_run), *QUICK])
    assert (default_run / "records.jsonl").read_text() == before
    with pytest.raises(ValueError, match="other settings.*steps"):
        ev.main(["--out", str(default_run), *QUICK[:2], "--steps", "3", *QUICK[4:]])


def test_a_stopped_evaluation_continues_after_the_last_whole_record(default_run, tmp_path, monkeypatch):
    lines = (default_run / "records.jsonl").read_text().splitlines()
    out = tmp_path / "stopped"
    out.mkdir()
    (out / "settings.json").write_text((default_run / "settings.json").read_text())
    (out / "records.jsonl").write_text(lines[0] + "\n" + lines[1][:40])  # case 1 cut mid-write
    (out / "images").mkdir()
    Image.open(default_run / "images" / "0000.png").save(out / "images" / "0000.png")
    calls = []
    real = ev.generate
    monkeypatch.setattr(ev, "generate", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    ev.main(["--out", str(out), *QUICK])
    assert len((out / "records.jsonl").read_text().splitlines()) == 4
    assert calls[0] == 1000  # the cut case 1 ran again, case 0 did not


def test_fast_mode_is_recorded_refused_on_a_flipped_resume_and_generates_other_images(default_run, tmp_path):
    out = tmp_path / "fast"
    fast_args = ["--cases", "2", "--steps", "2", "--diversity-every", "0", "--threads", "1", "--reference-cache"]
    ev.main(["--out", str(out), *fast_args])
    report = json.loads((out / "evaluation.json").read_text())
    assert report["mode"] == "fast" and report["settings"]["reference_cache"] is True
    assert json.loads((out / "settings.json").read_text())["reference_cache"] is True
    fast = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    exact = json.loads((default_run / "evaluation.json").read_text())["records"][:2]
    assert [r["mode"] for r in fast] == ["fast", "fast"] and [r["mode"] for r in exact] == ["exact", "exact"]
    assert "Mode: **fast**" in (out / "evaluation.md").read_text()
    assert "Mode: **exact**" in (default_run / "evaluation.md").read_text()
    for a, b in zip(exact, fast):  # the same case, seed, steps and size: only the mask differs
        assert a["case"] == b["case"]
        image_a, image_b = (np.asarray(Image.open(run / r["image"])) for run, r in ((default_run, a), (out, b)))
        assert image_a.shape == image_b.shape == (128, 128, 3)
        assert image_a.std() > 5 and image_b.std() > 5  # real pictures, not a flat or empty decode
        assert np.abs(image_a.astype(int) - image_b.astype(int)).mean() > 0.5
        assert 0.0 <= b["pck"] <= 1.0  # probed under fast mode's mask (evaluate.probe_attention)
    # A resume with the flag flipped either way fails before any generation, naming the key.
    with pytest.raises(ValueError, match="other settings.*reference_cache"):
        ev.main(["--out", str(out), *fast_args[:-1]])
    with pytest.raises(ValueError, match="other settings.*reference_cache"):
        ev.main(["--out", str(default_run), *QUICK, "--reference-cache"])


def test_a_settings_file_from_before_a_setting_existed_resumes_with_its_default(default_run, tmp_path):
    old = json.loads((default_run / "settings.json").read_text())
    assert old["ref_side"] is None  # no --ref-side: recorded as the default, side // 2
    del old["reference_cache"], old["ref_side"]  # written before these settings existed: their defaults
    (tmp_path / "settings.json").write_text(json.dumps(old))
    assert ev._resume(tmp_path, ev.Settings(**old)) == []
    written = json.loads((tmp_path / "settings.json").read_text())
    assert written["reference_cache"] is False and written["ref_side"] is None
    with pytest.raises(ValueError, match=r"other settings \(reference_cache\)"):
        ev._resume(tmp_path, ev.Settings(**old, reference_cache=True))
    with pytest.raises(ValueError, match=r"other settings \(ref_side\)"):
        ev._resume(tmp_path, ev.Settings(**old, ref_side=64))  # explicit, even where it equals side // 2


def test_ref_side_builds_generates_and_probes_the_references_at_that_size(tmp_path, monkeypatch):
    """--ref-side: the cases' references are drawn at it, the generation is called with it (not
    the model's native 64) and the PCK probe reads them at it; a resume with another value fails."""
    assert ev.Settings().reference_side == 64  # default: side // 2, what runs without it used
    assert ev.Settings(benchmark="uno:cases.json").reference_side is None  # published: the model's native
    generated, probed = [], []
    encode = MosaicPipeline.encode_references
    monkeypatch.setattr(
        MosaicPipeline,
        "encode_references",
        lambda self, images, size, *a, **k: generated.append(size) or encode(self, images, size, *a, **k),
    )
    probe = ev.probe_points
    monkeypatch.setattr(
        ev,
        "probe_points",
        lambda pipe, batch, *a, **k: (
            probed.append(tuple(batch.reference_pixels.shape[-2:])) or probe(pipe, batch, *a, **k)
        ),
    )
    out = tmp_path / "ref32"
    args = ["--cases", "2", "--steps", "1", "--diversity-every", "0", "--threads", "1", "--ref-side", "32"]
    ev.main(["--out", str(out), *args])
    assert json.loads((out / "settings.json").read_text())["ref_side"] == 32
    assert json.loads((out / "evaluation.json").read_text())["settings"]["ref_side"] == 32
    assert generated == [32, 32]  # one generation per case, its references encoded at 32 px
    assert probed == [(32, 32)] * 2 * len(ev.PCK_TIMESTEPS)
    with pytest.raises(ValueError, match=r"other settings \(ref_side\)"):
        ev.main(["--out", str(out), *args[:-1], "48"])
    with pytest.raises(ValueError, match=r"other settings \(ref_side\)"):
        ev.main(["--out", str(out), *args[:-2]])  # no --ref-side: side // 2, not the 32 this run used


def test_probe_under_the_fast_mask_differs_only_past_the_first_block():
    """Eq. 8 rows under the fast-mode mask: the first double block's queries and keys precede any
    attention (the same rows); a later block reads tokens the mask changed."""
    pipe = load_pipeline(device="cpu")
    sample = ev.heldout_sample(2, 3)
    batch = collate([sample], [sample.caption], 8, pipe.pixels_per_token, np.random.default_rng(0))
    for sites, same in ((["transformer_blocks.0"], True), (["transformer_blocks.0", "transformer_blocks.1"], False)):
        rows = [
            ev.probe_attention(pipe, batch, 0.5, sites, torch.Generator().manual_seed(5), 32, reference_cache=fast)
            for fast in (False, True)
        ]
        assert torch.equal(*rows) == same


def test_oracle_refuses_fast_mode(tmp_path):
    with pytest.raises(ValueError, match="--reference-cache"):
        ev.main(["--out", str(tmp_path), "--oracle", "--reference-cache", "--cases", "1", "--threads", "1"])


def test_oracle_scores_the_true_targets_above_chance(tmp_path):
    ev.main(["--out", str(tmp_path), "--oracle", "--cases", "6", "--threads", "1"])
    records = json.loads((tmp_path / "evaluation.json").read_text())["records"]
    assert all(r.get("pck") is None and r["diversity"] is None and r["mode"] == "oracle" for r in records)
    assert np.mean([r["fidelity_gain"] for r in records]) > 0.05
    assert np.mean([r["presence"] for r in records]) > 0.5


def test_published_case_list_gets_clip_and_dino_scores(tmp_path):
    from mosaic_studio.evaluation.published_metrics import PublishedScorer
    from mosaic_studio.evaluation.tiny_scorer_models import save_tiny_scorer_models

    for name, colour in (("dog", (150, 90, 40)), ("cup", (30, 90, 200))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (48, 48), colour).save(tmp_path / name / "00.png")
    cases = [
        {"prompt": "a dog", "image_paths": ["dog/00.png"]},
        {"prompt": "a dog and a cup", "image_paths": ["dog/00.png", "cup/00.png"]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    clip, dino = save_tiny_scorer_models(tmp_path / "scorers")
    pipe = load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    settings = ev.Settings(benchmark=f"uno:{tmp_path / 'cases.json'}", cases=0, side=64, steps=2, diversity_every=0)
    summary = ev.evaluate(pipe, settings, tmp_path / "out", scorer=PublishedScorer(clip, dino), name="tiny")
    assert set(summary["by_subjects"]) == {1, 2}
    assert {"clip_i", "clip_t", "dino"} <= set(summary["overall"])
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert all(-1 <= r[m] <= 1 for r in records for m in ("clip_i", "clip_t", "dino"))
    with pytest.raises(ValueError, match="PublishedScorer"):
        ev.evaluate(pipe, settings, tmp_path / "out2")
    with pytest.raises(ValueError, match="unknown benchmark"):
        ev.load_cases("imagenet:x", 0, 64, 8, None)


def test_probe_reads_the_targets_the_default_lora_stage_trains_on(monkeypatch):
    """The target is encoded as the default LoRA stage's loss.target_latents says (its posterior
    mode), and the choice matters: a posterior sample gives other rows."""
    from mosaic_studio.train.config import LORA_CONFIG, load_config

    pipe = load_pipeline(device="cpu")
    sample = ev.heldout_sample(2, 3)
    batch = collate([sample], [sample.caption], 8, pipe.pixels_per_token, np.random.default_rng(0))
    rows = {
        choice: ev.probe_attention(
            pipe, batch, 0.5, ["transformer_blocks.0"], torch.Generator().manual_seed(5), 32, target_latents=choice
        )
        for choice in ("sample", "mode")
    }
    assert not torch.allclose(rows["sample"], rows["mode"])
    seen = []
    monkeypatch.setattr(ev, "probe_attention", lambda *args, **kwargs: seen.append(args[-1]))
    ev.probe_points(pipe, batch, 0.5)
    assert seen == [load_config(LORA_CONFIG).loss.target_latents] == ["mode"]
