"""Reference uploads: count check, decoding with named errors, optional background removal,
and the preview of what the model sees (the official preprocessing: subject crop, white pad)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from mosaic_studio.mosaic.images import load_image, preprocess_reference
from mosaic_studio.mosaic.pipeline import MAX_REFERENCES

from mosaic_studio.studio.background import remove_background

PREVIEW_SIZE = 256  # pixels: the preview shows the crop and padding, not the model's resolution
DEFAULT_CATEGORY = "object"  # stratum tag of a subject whose category the user did not give


def upload_paths(files) -> list[str]:
    """Paths of a gr.File(file_count="multiple") value: None, a path, or a list of paths/files."""
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [os.fspath(getattr(f, "path", None) or getattr(f, "name", None) or f) for f in files]


def check_count(paths: list[str]) -> None:
    if len(paths) > MAX_REFERENCES:
        raise ValueError(f"{len(paths)} references uploaded; MOSAIC takes at most {MAX_REFERENCES}. "
                         f"Remove {len(paths) - MAX_REFERENCES}.")


def load_references(files, remove_bg: bool = False) -> tuple[list[Image.Image], list[str]]:
    """Decode uploads → (images, file names). ValueError naming the file and the problem."""
    paths = upload_paths(files)
    check_count(paths)
    images, names = [], []
    for i, path in enumerate(paths):
        name = f"reference {i + 1} ({Path(path).name})"
        try:
            image = load_image(path, name=name)
        except FileNotFoundError as error:
            raise ValueError(f"{name} is missing: {error}") from error
        images.append(remove_background(image, name=name) if remove_bg else image)
        names.append(Path(path).name)
    return images, names


def preview(files, remove_bg: bool = False, size: int = PREVIEW_SIZE) -> list[tuple[Image.Image, str]]:
    """(preprocessed reference, caption) per upload, for a gallery."""
    images, names = load_references(files, remove_bg)
    return [(preprocess_reference(image, size), f"{i + 1}: {name}") for i, (image, name) in enumerate(zip(images, names))]


def parse_categories(text: str | None, count: int) -> list[str]:
    """Comma-separated category tags, one per reference; missing ones are DEFAULT_CATEGORY."""
    given = [part.strip() for part in (text or "").split(",")]
    given = [tag for tag in given if tag]
    if len(given) > count:
        raise ValueError(f"{len(given)} categories given for {count} references: {', '.join(given)}")
    return given + [DEFAULT_CATEGORY] * (count - len(given))
