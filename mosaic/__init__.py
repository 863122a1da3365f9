"""MOSAIC: multi-subject personalised generation with correspondence-aware attention.

Public names are imported lazily, so `import mosaic.images` does not pull in diffusers.
"""

from importlib import import_module
from pathlib import Path

# The embedded default: a FLUX-architecture pipeline in diffusers layout, shipped in assets/.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-flux"

_EXPORTS = {
    "MosaicPipeline": "mosaic.pipeline",
    "MosaicPipelineOutput": "mosaic.pipeline",
    "AttentionRecord": "mosaic.record",
    "AttentionProbe": "mosaic.probe",
    "mosaic_forward": "mosaic.transformer",
    "scal_loss": "mosaic.losses",
    "mdl_loss": "mosaic.losses",
    "mosaic_losses": "mosaic.losses",
    "reference_lora_config": "mosaic.lora",
}

__all__ = ["DEFAULT_MODEL_DIR", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mosaic' has no attribute {name!r}")
