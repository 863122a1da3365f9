"""MOSAIC Studio: multi-subject personalised generation with correspondence-aware attention.

Sub-packages: `mosaic` (the method), `mosaic.data` (SemAlign-MS), `world` (the synthetic world),
`train`, `evaluation`, `experiments` (the scripts behind docs/), `annotator`, `studio` (the app).
Public names are imported lazily, so `import mosaic_studio.mosaic.images` does not pull in diffusers.
"""

from importlib import import_module
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The embedded default: a FLUX-architecture pipeline in diffusers layout, shipped with the package.
DEFAULT_MODEL_DIR = ASSETS_DIR / "tiny-flux"

_EXPORTS = {
    "MosaicPipeline": "mosaic_studio.mosaic.pipeline",
    "MosaicPipelineOutput": "mosaic_studio.mosaic.pipeline",
    "AttentionRecord": "mosaic_studio.mosaic.record",
    "AttentionProbe": "mosaic_studio.mosaic.probe",
    "mosaic_forward": "mosaic_studio.mosaic.transformer",
    "install_mosaic_processors": "mosaic_studio.mosaic.attention",
    "scal_loss": "mosaic_studio.mosaic.losses",
    "mdl_loss": "mosaic_studio.mosaic.losses",
    "mosaic_losses": "mosaic_studio.mosaic.losses",
    "reference_lora_config": "mosaic_studio.mosaic.lora",
}

__all__ = ["ASSETS_DIR", "DEFAULT_MODEL_DIR", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mosaic_studio' has no attribute {name!r}")
