"""The tiny trainer setup shared by the training tests: a 4x-VAE model and fast config overrides
(the `tiny_dir` fixture in conftest.py builds it)."""

from mosaic_studio.mosaic.tiny import TinyFluxConfig

TINY = TinyFluxConfig(vae_block_out_channels=(16, 32, 64))  # 4x VAE: 8 px per token
FAST = [
    "data.target_size=64",
    "data.ref_size=32",
    "data.max_subjects=3",
    "optim.batch_size=2",
    "optim.warmup_steps=0",
    "model.max_sequence_length=16",
    "run.log_every=1",
    "loss.points_per_reference=8",
]
