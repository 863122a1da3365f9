"""Reference uploads: count check, decoding with named errors, optional background removal,
and the preview of what the model sees (the official preprocessing: subject crop, white pad)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from mosaic_studio.annotator.records import UNKNOWN_CATEGORY
from mosaic_studio.mosaic.images import MAX_IMAGE_PIXELS, REFERENCE_CROP_TOLERANCE, load_image, preprocess_reference
from mosaic_studio.mosaic.pipeline import MAX_REFERENCES
from mosaic_studio.studio.background import remove_background
from mosaic_studio.studio.limits import MAX_REQUEST_PIXELS, MAX_UPLOAD_BYTES, MAX_UPLOAD_MB

PREVIEW_SIZE = 256  # pixels: the preview shows the crop and padding, not the model's resolution


def upload_paths(files) -> list[str]:
    """Paths of a gr.File(file_count="multiple") value: None, a path, or a list of paths/files."""
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [os.fspath(getattr(f, "path", None) or getattr(f, "name", None) or f) for f in files]


def check_count(paths: list[str]) -> None:
    if len(paths) > MAX_REFERENCES:
        raise ValueError(
            f"{len(paths)} references uploaded; MOSAIC takes at most {MAX_REFERENCES}. "
            f"Remove {len(paths) - MAX_REFERENCES}."
        )


def _label(index: int, path: str) -> str:
    # The file name only: an upload's full path is the server's temporary folder, not the user's.
    return f"reference {index + 1} ({Path(path).name})"


def _load(index: int, path: str) -> Image.Image:
    name = _label(index, path)
    try:
        return load_image(path, name=name)
    except FileNotFoundError as error:
        raise ValueError(f"{name} is missing: upload it again") from error
    except ValueError as error:  # load_image names the file by its full path
        raise ValueError(str(error).replace(path, Path(path).name)) from error


def _declared_pixels(path: str) -> int | None:
    """Width × height from the image header, nothing decoded; None when the header is unreadable
    or declares a decompression bomb (Pillow then refuses to open it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.width * image.height
    except Exception:  # whatever the reason, load_image names it in its own words
        return None


def check_budget(paths: list[str]) -> None:
    """File size per upload, then pixels per request (limits.py), before any upload is decoded:
    gradio's upload limit does not cover files that reach a handler another way (examples, URLs)."""
    for i, path in enumerate(paths):
        size = os.path.getsize(path) if os.path.isfile(path) else 0  # a missing file is named when loading
        if size > MAX_UPLOAD_BYTES:
            raise ValueError(
                f"{_label(i, path)} is {size:,} bytes; an upload may be at most {MAX_UPLOAD_MB} MB "
                f"({MAX_UPLOAD_BYTES:,} bytes)"
            )
    total = 0
    for i, path in enumerate(paths):
        pixels = _declared_pixels(path)
        if pixels is None or pixels > MAX_IMAGE_PIXELS:
            _load(i, path)  # refuses it by name from its header, before the others are decoded
        total += pixels or 0
    if total > MAX_REQUEST_PIXELS:
        raise ValueError(
            f"the references hold {total / 1e6:.1f} MP together; one request may hold at most "
            f"{MAX_REQUEST_PIXELS / 1e6:.0f} MP (e.g. six 12 MP photos): upload smaller or fewer images"
        )


def load_references(files, remove_bg: bool = False) -> tuple[list[Image.Image], list[str]]:
    """Decode uploads → (images, file names). ValueError naming the file (by its name, never
    its server path) and the problem."""
    paths = upload_paths(files)
    check_count(paths)
    check_budget(paths)
    images, names = [], []
    for i, path in enumerate(paths):
        image = _load(i, path)
        images.append(remove_background(image, name=_label(i, path)) if remove_bg else image)
        names.append(Path(path).name)
    return images, names


def preview(
    files, remove_bg: bool = False, size: int = PREVIEW_SIZE, crop_tolerance: int = REFERENCE_CROP_TOLERANCE
) -> list[tuple[Image.Image, str]]:
    """(preprocessed reference, caption) per upload, for a gallery; `crop_tolerance` as the
    generation will use it, so the preview shows the crop the model gets."""
    images, names = load_references(files, remove_bg)
    return [
        (preprocess_reference(image, size, crop_tolerance=crop_tolerance), f"{i + 1}: {name}")
        for i, (image, name) in enumerate(zip(images, names))
    ]


def parse_categories(text: str | None, count: int) -> list[str]:
    """Comma-separated category tags, one per reference; missing ones are UNKNOWN_CATEGORY (the
    Annotate tab then asks for them), never a guess that would put them in the wrong stratum."""
    given = [part.strip() for part in (text or "").split(",")]
    given = [tag for tag in given if tag]
    if len(given) > count:
        raise ValueError(f"{len(given)} categories given for {count} references: {', '.join(given)}")
    return given + [UNKNOWN_CATEGORY] * (count - len(given))
