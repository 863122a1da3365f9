"""Flags and environment variables of `python app.py` (see `python app.py --help`).

Every flag has an environment variable, so a Hugging Face Space (which runs `python app.py`
without arguments) is configured through its Variables and secrets. A flag wins over its
variable; a bad value in either stops the app with one line naming it and what is expected
(exit status 2, as argparse does), before anything is loaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import AUTO, DTYPES
from mosaic_studio.studio.quantization import QUANTIZE_CHOICES
from mosaic_studio.studio.space import SPACE_DATA, on_space

APP_FOLDER = "mosaic-studio"  # under the user data folder: the review store and its images
STORE_NAME = "studio.db"
DEFAULT_PORT = 7860  # Gradio's and Hugging Face Spaces' port
DEFAULT_MAX_QUEUE = 20
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


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


def _integer(low: int, high: int | None = None):
    expected = f"an integer in {low}–{high}" if high is not None else f"an integer >= {low}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


def _choice(choices):
    def convert(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return convert


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in TRUE + FALSE:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TRUE + FALSE)}, got {text!r}")
    return value in TRUE


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated annotator names, got {text!r}")
    return names


_port = _integer(1, 65535)
_queue_size = _integer(1)
_quantize = _choice(QUANTIZE_CHOICES)
_dtype = _choice(tuple(DTYPES))
# Options whose default comes from the environment, resolved (and checked) in parse_args once the
# flags are parsed, so a flag overrides a bad variable: dest → (variables, first set wins; check; default).
_FROM_ENV = {
    "port": (("MOSAIC_PORT", "GRADIO_SERVER_PORT"), _port, DEFAULT_PORT),
    "max_queue": (("MOSAIC_MAX_QUEUE",), _queue_size, DEFAULT_MAX_QUEUE),
    "dtype": (("MOSAIC_DTYPE",), _dtype, None),
    "quantize": (("MOSAIC_QUANTIZE",), _quantize, "none"),
    "cpu_offload": (("MOSAIC_CPU_OFFLOAD",), _boolean, False),
    "share": (("MOSAIC_SHARE",), _boolean, False),
    "admin": (("MOSAIC_ADMIN",), _boolean, False),
    "annotators": (("MOSAIC_ANNOTATORS",), _names, ()),
}


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
        type=_dtype,
        help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU) [MOSAIC_DTYPE]",
    )
    add(
        "--cpu-offload",
        action="store_true",
        default=None,
        help="keep only the running model on the GPU (less memory, slower) [MOSAIC_CPU_OFFLOAD=1]",
    )
    add(
        "--quantize",
        type=_quantize,
        metavar="{" + ",".join(QUANTIZE_CHOICES) + "}",
        help="weight quantization of the transformer and T5: int8 (torchao, CPU or GPU), 8bit or 4bit "
        "(bitsandbytes: `pip install bitsandbytes` and a CUDA GPU); memory: README [MOSAIC_QUANTIZE]",
    )
    add(
        "--host",
        default=env("MOSAIC_HOST", default_host()),
        help="0.0.0.0 to serve the network (default 127.0.0.1; 0.0.0.0 in a Space) [MOSAIC_HOST]",
    )
    add("--port", type=_port, help=f"1–65535 (default {DEFAULT_PORT}) [MOSAIC_PORT, GRADIO_SERVER_PORT]")
    add(
        "--share",
        action="store_true",
        default=None,
        help="a public gradio.live link [MOSAIC_SHARE=1]",
    )
    add(
        "--store",
        default=env("MOSAIC_STORE", str(default_store_path())),
        help="review store (SQLite file) of the Annotate tab; created when missing [MOSAIC_STORE]",
    )
    add(
        "--max-queue",
        type=_queue_size,
        help=f"requests allowed to wait, >= 1 (default {DEFAULT_MAX_QUEUE}; generations run one at a time); "
        "more are refused with a message [MOSAIC_MAX_QUEUE]",
    )
    add(
        "--admin",
        action="store_true",
        default=None,
        help="allow re-drawing the stratified sample from the Annotate tab (it changes the study for every "
        "annotator) [MOSAIC_ADMIN=1]",
    )
    add(
        "--annotators",
        type=_names,
        help="comma-separated names: the only ones reviews are saved under (default: any name; under gradio "
        "auth the logged-in user) [MOSAIC_ANNOTATORS]",
    )
    return parser


def _from_env(parser: argparse.ArgumentParser, variables, convert, default):
    for variable in variables:
        text = os.environ.get(variable, "").strip()  # an empty Space variable counts as unset
        if not text:
            continue
        try:
            return convert(text)
        except argparse.ArgumentTypeError as error:
            # argparse's format, without the usage text: that is about flags, this is the environment
            parser.exit(2, f"{parser.prog}: error: {variable}: {error}\n")
    return default


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for dest, (variables, convert, default) in _FROM_ENV.items():
        if getattr(args, dest) is None:  # the flag was not given
            setattr(args, dest, _from_env(parser, variables, convert, default))
    return args
