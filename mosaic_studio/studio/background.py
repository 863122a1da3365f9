"""Optional background removal of references, through a segmentation backend when installed.

The backend is `rembg` (`pip install rembg`; it fetches its segmentation model on first use).
Without one the option is shown disabled: MOSAIC's own preprocessing already crops a subject
on a white or transparent background, so removal is only needed for photos.
"""

from __future__ import annotations

import importlib
import importlib.util

from PIL import Image

BACKEND = "rembg"


def backend_name() -> str | None:
    """The installed backend's name, or None."""
    return BACKEND if importlib.util.find_spec(BACKEND) is not None else None


def remove_background(image: Image.Image, *, name: str = "image") -> Image.Image:
    """`image` with a transparent background (RGBA); ValueError naming `name` when it fails."""
    if backend_name() is None:
        raise ValueError(f"background removal needs a segmentation backend: pip install {BACKEND}")
    try:
        cut = importlib.import_module(BACKEND).remove(image.convert("RGB"))
    except Exception as error:  # a backend's own failure (model download, runtime) is named, not raised raw
        raise ValueError(f"background removal of {name} failed ({BACKEND}: {error})") from error
    return cut.convert("RGBA")
