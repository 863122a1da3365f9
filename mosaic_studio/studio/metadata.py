"""Prompt, seed and settings of a generation as PNG text chunks.

Two chunks: "parameters", one human-readable line (the key image viewers and other generation
tools show), and "mosaic", the same settings as JSON for `read_settings`.

Among the settings (`studio.generation`), two change what the model computes and are always
written, so an image can be regenerated as it was made (docs/DESIGN.md §7):
`reference_cache` (fast mode, true/false) and `reference_strengths` (one s_k per reference, in
reference order). A PNG written before they existed was made with false and all 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

TEXT_KEY = "parameters"
JSON_KEY = "mosaic"


def describe(settings: dict) -> str:
    """`prompt` then `key: value` pairs: 'a red vase | seed: 3, steps: 20, …'."""
    rest = ", ".join(f"{key}: {value}" for key, value in settings.items() if key != "prompt")
    return f"{settings.get('prompt', '')} | {rest}"


def save_png(image: Image.Image, path: str | Path, settings: dict) -> Path:
    """Write `image` as PNG with `settings` (JSON-serialisable) in its text chunks."""
    info = PngInfo()
    info.add_itxt(TEXT_KEY, describe(settings))
    info.add_itxt(JSON_KEY, json.dumps(settings, ensure_ascii=False, sort_keys=True))
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_settings(path: str | Path) -> dict:
    """The settings `save_png` wrote; ValueError when the PNG carries none."""
    with Image.open(path) as image:
        text = image.text.get(JSON_KEY) if hasattr(image, "text") else None
    if text is None:
        raise ValueError(f"{path} carries no MOSAIC settings (no {JSON_KEY!r} text chunk)")
    return json.loads(text)
