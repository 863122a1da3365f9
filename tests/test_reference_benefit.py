"""The reference-benefit diagnostic: its losses against a stock diffusers forward, and what the
references change."""

import numpy as np
import pytest
import torch

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import synthetic_cases
from mosaic_studio.experiments.reference_benefit import case_losses, measure, mode_stage
from mosaic_studio.mosaic.latents import encode_latents
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.transformer import grid_position_ids
from mosaic_studio.train.data import to_pixels


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(str(DEFAULT_MODEL_DIR), device="cpu")


@torch.no_grad()
def test_the_loss_without_references_is_the_stock_flux_forward(pipe):
    samples = [s for s in synthetic_cases(8, 128, pipe.pixels_per_token, 64) if len(s.references) == 2]
    without, with_refs = case_losses(pipe, samples, 0.5, torch.Generator().manual_seed(3), mode_stage())
    # Independently: the same noise draw, the diffusers transformer called as FluxPipeline calls it,
    # with the LoRA off (in MOSAIC it acts on reference tokens only, and there are none).
    x0, grid = encode_latents(pipe, to_pixels([s.target for s in samples]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    prompt, pooled, text_ids = pipe.encode_prompt(
        prompt=[s.caption for s in samples], prompt_2=None, max_sequence_length=64
    )
    t = torch.full((len(x0),), 0.5)
    pipe.disable_lora()
    try:
        prediction = pipe.transformer(
            hidden_states=0.5 * x0 + 0.5 * noise,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=t,
            img_ids=grid_position_ids(*grid),
            txt_ids=text_ids,
            return_dict=False,
        )[0]
    finally:
        pipe.enable_lora()
    expected = (prediction.double() - (noise - x0).double()).pow(2).flatten(1).mean(1).numpy()
    np.testing.assert_allclose(without, expected, rtol=1e-4)
    assert not np.allclose(with_refs, without)  # the references reach the prediction


def test_measure_reports_the_paired_difference_per_level_and_subject_count(pipe):
    report = measure(pipe, cases=6, side=128, ref_side=64, levels=(0.5,))
    level = report["0.5"]
    assert level["benefit"] == pytest.approx(level["without"] - level["with"], abs=1e-6)
    assert set(level["by_subjects"]) == {"1", "2", "3", "4", "5", "6"}  # one case of each count
    assert np.mean(list(level["by_subjects"].values())) == pytest.approx(level["benefit"], abs=1e-6)
    low, high = level["ci95"]
    assert low <= level["benefit"] <= high
