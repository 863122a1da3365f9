"""The README's Python examples: the one for the embedded default runs as written, from a folder
that is not the checkout (the installed package only), at the model's native settings; the
FLUX.1-dev one (GPU, gated weights) at least compiles. Read from README.md each time, so an
edit there that breaks an example fails here."""

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.native import read_native_settings

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TIMEOUT_S = 600  # a 12-step 128 px generation on a busy 2-core machine, model loading included


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))


def the_default_example() -> str:
    blocks = [block for block in python_blocks() if "DEFAULT_MODEL_DIR" in block]
    assert len(blocks) == 1, f"expected one README example on the embedded default, found {len(blocks)}"
    return blocks[0]


def test_the_default_example_runs_from_any_folder_at_native_settings(tmp_path):
    code = the_default_example()
    assert "height=" not in code and "num_inference_steps=" not in code  # the model's own settings
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    native = read_native_settings(DEFAULT_MODEL_DIR)
    with Image.open(tmp_path / "out.png") as image:  # written where it ran
        assert image.size == (native.width, native.height)


def test_every_python_example_compiles():
    blocks = python_blocks()
    assert len(blocks) >= 2 and any("FLUX.1-dev" in block for block in blocks)
    for index, block in enumerate(blocks):
        compile(block, f"README.md python block {index + 1}", "exec")
