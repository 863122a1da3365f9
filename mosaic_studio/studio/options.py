"""Flags and environment variables of `python app.py` (see `python app.py --help`).

Every flag has an environment variable, so a Hugging Face Space (which runs `python app.py`
without arguments) is configured through its Variables and secrets.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import AUTO
from mosaic_studio.studio.quantization import QUANTIZE_CHOICES
from mosaic_studio.studio.space import SPACE_DATA, on_space

APP_FOLDER = "mosaic-studio"  # under the user data folder: the review store and its images
STORE_NAME = "studio.db"
DEFAULT_PORT = 7860  # Gradio's and Hugging Face Spaces' port


def default_store_path() -> Path:
    """$XDG_DATA_HOME/mosaic-studio/studio.db (i.e. ~/.local/share/…), or /data/mosaic-studio/
    studio.db on a Hugging Face Space with persistent storage."""
    if on_space() and SPACE_DATA.is_dir():
        return SPACE_DATA / APP_FOLDER / STORE_NAME
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / APP_FOLDER / STORE_NAME


def default_host() -> str:
    """Local only, except where the platform says otherwise: Gradio's own GRADIO_SERVER_NAME,
    or 0.0.0.0 inside a Space (its proxy must reach the app)."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space() else "127.0.0.1")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="MOSAIC Studio: generate, inspect attention, annotate")
    add = parser.add_argument
    add(
        "--model",
        default=env("MOSAIC_MODEL", str(DEFAULT_MODEL_DIR)),
        help="FLUX folder or hub id, e.g. black-forest-labs/FLUX.1-dev [MOSAIC_MODEL; default: the embedded model]",
    )
    add(
        "--lora",
        default=env("MOSAIC_LORA", AUTO),
        help='"auto" (FLUX.1-dev: ByteDance-FanQie/MOSAIC subject_512.safetensors; a local model: its own '
        'LoRA file), "none", or a LoRA file/folder/hub id [MOSAIC_LORA]',
    )
    add(
        "--lora-weight-name",
        default=env("MOSAIC_LORA_WEIGHT_NAME"),
        help="file inside a LoRA folder/repo [MOSAIC_LORA_WEIGHT_NAME]",
    )
    add("--device", default=env("MOSAIC_DEVICE"), help="cuda, cpu, … (default: cuda when available) [MOSAIC_DEVICE]")
    add(
        "--dtype",
        default=env("MOSAIC_DTYPE"),
        help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU) [MOSAIC_DTYPE]",
    )
    add(
        "--cpu-offload",
        action="store_true",
        default=_flag(env("MOSAIC_CPU_OFFLOAD")),
        help="keep only the running model on the GPU (less memory, slower) [MOSAIC_CPU_OFFLOAD=1]",
    )
    add(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=env("MOSAIC_QUANTIZE", "none"),
        help="bitsandbytes quantization of the transformer and T5 (needs `pip install bitsandbytes` and a GPU; "
        "memory: README) [MOSAIC_QUANTIZE]",
    )
    add(
        "--host",
        default=env("MOSAIC_HOST", default_host()),
        help="0.0.0.0 to serve the network (default 127.0.0.1; 0.0.0.0 in a Space) [MOSAIC_HOST]",
    )
    add(
        "--port",
        type=int,
        default=int(env("MOSAIC_PORT", env("GRADIO_SERVER_PORT", str(DEFAULT_PORT)))),
        help="[MOSAIC_PORT]",
    )
    add(
        "--share",
        action="store_true",
        default=_flag(env("MOSAIC_SHARE")),
        help="a public gradio.live link [MOSAIC_SHARE=1]",
    )
    add(
        "--store",
        default=env("MOSAIC_STORE", str(default_store_path())),
        help="review store (SQLite file) of the Annotate tab; created when missing [MOSAIC_STORE]",
    )
    add(
        "--max-queue",
        type=int,
        default=int(env("MOSAIC_MAX_QUEUE", "20")),
        help="requests allowed to wait (generations run one at a time); more are refused with a message "
        "[MOSAIC_MAX_QUEUE]",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.max_queue < 1:
        raise SystemExit("--max-queue must be >= 1")
    return args
