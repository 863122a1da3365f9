"""The bundled examples: `mosaic_studio/assets/examples/examples.json`, written by `make_examples.py` there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mosaic_studio import ASSETS_DIR

EXAMPLES_DIR = ASSETS_DIR / "examples"
EXAMPLES_FILE = EXAMPLES_DIR / "examples.json"


@dataclass(frozen=True)
class Example:
    name: str
    prompt: str
    references: tuple[str, ...]  # absolute paths
    categories: tuple[str, ...]  # one per reference
    width: int
    height: int
    seed: int


def load_examples(path: str | Path = EXAMPLES_FILE) -> list[Example]:
    """Read the examples file; reference paths are relative to its folder."""
    path = Path(path)
    examples = []
    for item in json.loads(path.read_text()):
        references = tuple(str(path.parent / name) for name in item["references"])
        missing = [name for name in references if not Path(name).is_file()]
        if missing or len(item["categories"]) != len(references):
            raise ValueError(
                f"{path}: example {item['name']!r} has missing files {missing} or "
                f"{len(item['categories'])} categories for {len(references)} references"
            )
        examples.append(
            Example(
                item["name"],
                item["prompt"],
                references,
                tuple(item["categories"]),
                int(item["width"]),
                int(item["height"]),
                int(item["seed"]),
            )
        )
    return examples
