"""Hugging Face Spaces: ZeroGPU's `spaces.GPU` when the `spaces` package is installed.

On a ZeroGPU Space a GPU is attached only while a function decorated with `spaces.GPU` runs;
everywhere else (a local machine, a dedicated-GPU Space, the tests) the package is absent
and the function is returned unchanged. It is never required. `app.py` imports this module
first, because ZeroGPU wants `spaces` imported before anything touches CUDA.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

GPU_SECONDS = 120  # ZeroGPU's time budget per generation: FLUX.1-dev, 28 steps, up to 4 images
SPACE_DATA = Path("/data")  # a Space's persistent storage, when the Space has it

spaces = importlib.import_module("spaces") if importlib.util.find_spec("spaces") is not None else None


def on_gpu(fn, duration: int = GPU_SECONDS):
    """`spaces.GPU(duration=…)(fn)` when `spaces` is installed, else `fn` itself."""
    return fn if spaces is None else spaces.GPU(duration=duration)(fn)


def on_space() -> bool:
    """True inside a Hugging Face Space (it sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))
