"""One generation on the embedded model (64×64, 2 steps), the inspector reading its recorded
maps, and the attention-proposed review item."""

import numpy as np
import pytest
from PIL import Image

from annotator.store import ReviewStore
from mosaic import DEFAULT_MODEL_DIR
from mosaic.loading import load_pipeline
from studio import inspector
from studio.generation import Request, generate, record_blocks
from studio.metadata import read_settings
from studio.proposals import SOURCE, review_item
from studio_fixtures import FAST, box_file, example_references


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


def request(**changes) -> Request:
    values = dict(prompt="a blue person, a brown quadruped and a yellow bird", height=FAST["height"],
                  width=FAST["width"], steps=FAST["steps"], guidance=3.5, seed=5, num_images=2)
    return Request(**{**values, **changes})


@pytest.fixture(scope="module")
def generation(pipe, tmp_path_factory):
    steps = []
    result = generate(pipe, request(), example_references(3), "human, animal", outputs_dir=tmp_path_factory.mktemp("out"),
                      on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 2), (2, 2)]  # the progress bar is fed per denoising step
    return result


def test_generation_keeps_images_references_maps_and_png_metadata(generation, pipe):
    assert len(generation.images) == 2 and generation.images[0].size == (64, 64)
    assert [r.size for r in generation.references] == [(64, 64)] * 3
    assert generation.categories == ["human", "animal", "object"]
    assert generation.blocks == ["transformer_blocks.0", "transformer_blocks.1",
                                 "single_transformer_blocks.0", "single_transformer_blocks.1"]
    settings = read_settings(generation.paths[1])
    assert (settings["prompt"], settings["seed"], settings["image"], settings["steps"]) == (
        "a blue person, a brown quadruped and a yellow bird", 5, 2, 2)
    assert settings["references"] == ["blue_person.png", "brown_quadruped.png", "yellow_bird.png"]


@pytest.mark.parametrize("changes, message", [
    (dict(height=72), "divisible by 16"), (dict(width=4096), "width=4096 is outside"), (dict(num_images=5), "images=5"),
    (dict(seed=-1), "seed=-1"), (dict(steps=2, attention_first=3), "attention steps 3"),
])  # fmt: skip
def test_bad_requests_are_named(pipe, changes, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, request(**changes), [])


def test_bad_references_are_named(pipe, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    seven = [box_file(tmp_path / f"{i}.png") for i in range(7)]
    with pytest.raises(ValueError, match=r"reference 1 \(notes.png\).*not a readable image"):
        generate(pipe, request(), [str(bad)])
    with pytest.raises(ValueError, match="7 references uploaded; MOSAIC takes at most 6"):
        generate(pipe, request(), seven)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(pipe, request(prompt="  "), [])
    with pytest.raises(ValueError, match="2 categories given for 1 references"):
        generate(pipe, request(), seven[:1], "human, animal")


def test_record_blocks_fits_the_budget(pipe):
    every = record_blocks(pipe.transformer, 1, 3, 16, 16)
    assert len(every) == 4
    two = record_blocks(pipe.transformer, 1, 3, 16, 16, budget=2 * 4 * 3 * 16 * 16)
    assert two == [every[0], every[-1]]
    assert record_blocks(pipe.transformer, 1, 3, 16, 16, budget=1) == [every[0]]


def test_heatmap_reads_the_recorded_row(generation):
    clicked = inspector.clicked_reference_pixel(generation, 2, 40, 8)
    picture, caption = inspector.heatmap_view(generation, clicked, 2, 0, 1, "magma", 0.5)
    token = generation.record.reference_token(40, 8)
    row = generation.record.maps(generation.blocks[:2])[1, 1, token]
    assert picture.size == (64, 64) and f"token {token}" in caption
    assert f"attention {float(row.max()):.4f}" in caption
    with pytest.raises(ValueError, match="no generated image 3"):
        inspector.heatmap_view(generation, clicked, 3, 0, 1, "magma", 0.5)
    with pytest.raises(ValueError, match="block 9 was not recorded"):
        inspector.heatmap_view(generation, clicked, 1, 0, 9, "magma", 0.5)
    with pytest.raises(ValueError, match="outside reference 2"):
        inspector.clicked_reference_pixel(generation, 2, 64, 0)


def test_strip_clicks_map_to_reference_pixels(generation):
    picture, layout = inspector.strip(generation)
    panel = layout.panel("reference", 2)
    assert inspector.clicked_on_strip(generation, *panel.to_canvas((20, 30))) == pytest.approx((2, 20, 30))
    with pytest.raises(ValueError, match="between references"):
        inspector.clicked_on_strip(generation, 0, 0)
    overview, caption = inspector.overview_view(generation, 1, 0, 3, 0.6)
    assert overview.width == 64 and "overlap" in caption


def test_review_item_proposes_subject_points_disjoint_in_the_target(generation, tmp_path):
    sample = review_item(generation, 0, generation.maps(0, 3), tmp_path, per_reference=3)
    assert [r.category for r in sample.references] == ["human", "animal", "object"]
    assert {p.source for p in sample.points} == {SOURCE} and len(sample.points) >= 3
    grid, token = generation.record.target_grid, generation.record.pixels_per_token
    owners = {}
    for point in sample.points:
        reference = np.asarray(Image.open(tmp_path / sample.references[point.ref_index].image_path))
        assert reference[int(point.ref_xy[1]), int(point.ref_xy[0])].min() < 200  # on the subject, not white
        cell = (int(point.target_xy[1] // token), int(point.target_xy[0] // token))
        assert 0 <= cell[0] < grid[0] and owners.setdefault(cell, point.ref_index) == point.ref_index  # Eq. 2
    with ReviewStore(tmp_path / "store.db") as store:
        store.add_sample(sample)
        assert len(store.get_sample(sample.sample_id).points) == len(sample.points)


def test_no_references_records_nothing(pipe, tmp_path):
    result = generate(pipe, request(num_images=1), [], outputs_dir=tmp_path)
    assert result.record is None and result.blocks == []
    with pytest.raises(ValueError, match="Generate with at least one reference"):
        inspector.need(result)
