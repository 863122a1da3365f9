"""The embedded default in mosaic_studio/assets/: trained base + MOSAIC LoRA, loaded offline like the app does."""

import numpy as np
import torch
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.lora_io import DEFAULT_WEIGHT_NAME
from mosaic_studio.world.synthetic import WorldConfig, generate_sample

MAX_BYTES = 30 * 2**20  # the project's size limit for the embedded default, LoRA included


def test_default_loads_offline_with_its_lora_and_generates_with_three_references():
    assert (DEFAULT_MODEL_DIR / DEFAULT_WEIGHT_NAME).is_file(), (
        "rebuild with: python -m mosaic_studio.train.build_default"
    )
    pipe = load_pipeline(DEFAULT_MODEL_DIR, device="cpu")
    assert "subject" in pipe.transformer.peft_config
    size = 8 * pipe.pixels_per_token
    world = WorldConfig(
        target_size=size, ref_size=size // 2, token_size=pipe.pixels_per_token, min_subjects=3, max_subjects=3
    )
    sample = generate_sample(0, 0, "heldout", world)
    refs = [Image.fromarray(r.image) for r in sample.references]

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return pipe(
            sample.caption,
            reference_images=refs,
            height=size,
            width=size,
            num_inference_steps=4,
            generator=generator,
            output_type="np",
        ).images

    first, again = run(0), run(0)
    assert first.shape == (1, size, size, 3) and np.isfinite(first).all() and np.array_equal(first, again)
    assert first.std() > 0.02  # a picture, not a flat field
    assert sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()) < MAX_BYTES
