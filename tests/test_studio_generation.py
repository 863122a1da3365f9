"""One generation on the embedded model (64×64, 2 steps), the inspector reading its recorded
maps, and the attention-proposed review item."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from studio_fixtures import FAST, box_file, example_references

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio import inspector
from mosaic_studio.studio.generation import Request, generate, record_blocks
from mosaic_studio.studio.metadata import read_settings
from mosaic_studio.studio.proposals import SOURCE, foreground, review_item, subject_point


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


def request(**changes) -> Request:
    values = dict(
        prompt="a blue person, a brown quadruped and a yellow bird",
        height=FAST["height"],
        width=FAST["width"],
        steps=FAST["steps"],
        guidance=3.5,
        seed=5,
        num_images=2,
    )
    return Request(**{**values, **changes})


@pytest.fixture(scope="module")
def generation(pipe, tmp_path_factory):
    steps = []
    result = generate(
        pipe,
        request(),
        example_references(3),
        "human, animal",
        outputs_dir=tmp_path_factory.mktemp("out"),
        on_step=lambda i, n: steps.append((i, n)),
    )
    assert steps == [(1, 2), (2, 2)]  # the progress bar is fed per denoising step
    return result


def model_blocks(transformer) -> list[str]:
    """Every attention block of the model in model order: the double blocks, then the single ones."""
    return [f"transformer_blocks.{i}" for i in range(len(transformer.transformer_blocks))] + [
        f"single_transformer_blocks.{i}" for i in range(len(transformer.single_transformer_blocks))
    ]


def test_generation_keeps_images_references_maps_and_png_metadata(generation, pipe):
    assert len(generation.images) == 2 and generation.images[0].size == (64, 64)
    assert [r.size for r in generation.reference_images] == [(64, 64)] * 3
    assert generation.categories == ["human", "animal", "unknown"]  # a category not given is not guessed
    assert generation.blocks == model_blocks(pipe.transformer)  # all of them: 64² fits the budget
    settings = read_settings(generation.paths[1])
    assert (settings["prompt"], settings["seed"], settings["image"], settings["steps"]) == (
        "a blue person, a brown quadruped and a yellow bird",
        5,
        2,
        2,
    )
    assert settings["references"] == [Path(name).name for name in example_references(3)]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(width=4096), "width=4096 is outside"),
        (dict(num_images=5), "images=5"),
        (dict(seed=-1), "seed=-1"),
        (dict(steps=2, attention_first=3), "attention steps 3"),
    ],
)
def test_bad_requests_are_named(pipe, changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        generate(pipe, request(**changes), [], outputs_dir=tmp_path)


def test_a_side_not_in_whole_tokens_is_named(pipe, tmp_path):
    token = pipe.pixels_per_token
    odd = FAST["height"] + token // 2  # inside the app's limits, not whole tokens for this model
    with pytest.raises(ValueError, match=f"height={odd} is not divisible by {token}"):
        generate(pipe, request(height=odd), [], outputs_dir=tmp_path)


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
    shape = dict(num_images=1, num_refs=3, ref_tokens=16, target_tokens=16, recorded_steps=28)
    per_block = 4 * 1 * 3 * 16 * 16 * (10 + 1)  # float32 maps of one block: 10 step bins and the mean
    every = record_blocks(pipe.transformer, **shape)
    assert every == model_blocks(pipe.transformer) and len(every) > 2
    assert record_blocks(pipe.transformer, **shape, budget=2 * per_block) == [every[0], every[-1]]
    assert record_blocks(pipe.transformer, **shape, budget=2 * per_block - 1) == [every[0]]  # the bins count
    assert record_blocks(pipe.transformer, **shape, budget=1) == [every[0]]
    few_steps = {**shape, "recorded_steps": 2}  # two steps: two bins, not ten
    assert record_blocks(pipe.transformer, **few_steps, budget=2 * 4 * 3 * 16 * 16 * 3) == [every[0], every[-1]]


def test_heatmap_reads_the_recorded_row(generation):
    clicked = inspector.clicked_reference_pixel(generation, 2, 40, 8)
    picture, caption = inspector.heatmap_view(generation, clicked, 2, 0, 1, "magma", 0.5)
    token = generation.record.reference_token(40, 8)
    row = generation.record.maps(generation.blocks[:2])[1, 1, token]
    assert picture.size == (64, 64) and f"token {token}" in caption
    assert f"attention {float(row.max()):.4f}" in caption
    with pytest.raises(ValueError, match="no generated image 3"):
        inspector.heatmap_view(generation, clicked, 3, 0, 1, "magma", 0.5)
    beyond = len(generation.blocks)  # 0-based: one past the last recorded block
    with pytest.raises(ValueError, match=f"block {beyond} was not recorded"):
        inspector.heatmap_view(generation, clicked, 1, 0, beyond, "magma", 0.5)
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
    assert [r.category for r in sample.references] == ["human", "animal", "unknown"]
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


def test_a_reference_point_is_the_token_subject_pixel_nearest_its_centre():
    image = np.full((16, 16, 3), 255, np.uint8)  # 2×2 tokens of 8 px
    image[0:8, 0:2] = image[4:8, 5:8] = 90  # token 0: two "legs", white at its centre (4, 4)
    image[0:8, 8:16] = 90  # token 1: covered
    image[13, 10] = 90  # token 3: one pixel; token 2: white
    subject = foreground(Image.fromarray(image))
    assert subject_point(0, (2, 2), subject) == (6.5, 5.5)  # an inner pixel, not the nearer outline at x=1
    assert subject_point(1, (2, 2), subject) == (12.0, 4.0)  # the centre, on the subject
    assert subject_point(2, (2, 2), subject) == (4.0, 12.0)  # no subject pixel: the centre
    assert subject_point(3, (2, 2), subject) == (10.5, 13.5)


def test_no_references_records_nothing(pipe, tmp_path):
    result = generate(pipe, request(num_images=1), [], outputs_dir=tmp_path)
    assert result.record is None and result.blocks == []
    with pytest.raises(ValueError, match="Generate with at least one reference"):
        inspector.need(result)
