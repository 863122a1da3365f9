"""Image paths of the review store: relative paths are relative to the store's folder (that is
how "send to Annotate" writes them), absolute ones are used as they are."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mosaic_studio.annotator.store import resolve_stored
from mosaic_studio.mosaic.images import load_image


def display_path(path: str | Path) -> str:
    """`path` as the page shows it: resolved, with the home folder as "~" (the app's folders
    live under it; the account's name is not the page's business)."""
    path = Path(path).resolve()
    home = Path.home().resolve()
    return f"~/{path.relative_to(home).as_posix()}" if path.is_relative_to(home) else path.as_posix()


def store_folder(store_path: str | Path) -> Path:
    return Path(store_path).resolve().parent


def resolve(store_path: str | Path, image_path: str) -> Path:
    return resolve_stored(store_folder(store_path), image_path)


def open_image(store_path: str | Path, image_path: str, name: str) -> Image.Image:
    """RGB image of a store path; ValueError naming `name` and the file when it is unusable."""
    path = resolve(store_path, image_path)
    try:
        return load_image(path, name=name).convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{name} file {path} is missing") from None
