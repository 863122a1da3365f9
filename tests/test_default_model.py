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
    """At the settings the default records for itself (no size, steps or guidance given): a
    real image of the native size, reproducible, with one attention map per reference."""
    assert (DEFAULT_MODEL_DIR / DEFAULT_WEIGHT_NAME).is_file(), (
        "rebuild with: python -m mosaic_studio.train.build_default"
    )
    pipe = load_pipeline(DEFAULT_MODEL_DIR, device="cpu")
    assert "subject" in pipe.transformer.peft_config
    native = pipe.native_settings
    world = WorldConfig(
        target_size=native.height,
        ref_size=native.reference_size,
        token_size=pipe.pixels_per_token,
        min_subjects=3,
        max_subjects=3,
    )
    sample = generate_sample(0, 0, "heldout", world)
    refs = [Image.fromarray(r.image) for r in sample.references]

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return pipe(sample.caption, reference_images=refs, generator=generator, output_type="np", record_attention=True)

    first, again = run(0), run(0)
    image = first.images
    assert image.shape == (1, native.height, native.width, 3) and np.isfinite(image).all()
    assert np.array_equal(image, again.images)
    assert image.std() > 0.02  # a picture, not a flat field
    maps = first.attention.maps()  # (batch, references, reference tokens, target tokens)
    tokens = lambda side: (side // pipe.pixels_per_token) ** 2  # noqa: E731
    assert maps.shape == (1, 3, tokens(native.reference_size), tokens(native.height))
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-4)
    assert sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()) < MAX_BYTES
