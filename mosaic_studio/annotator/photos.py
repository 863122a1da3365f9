"""Proposal requests from a folder of photos of one's own subjects (`annotator requests`).

Layout (docs/OWN_DATA.md):

    photos/
      mug/              one folder per subject; its name is the subject's label ("_" reads as a space)
        1.jpg 2.jpg     two or more photos of that one subject, each on a plain (white) background
        subject.json    optional: {"category": "object", "label": "mug", "caption": "a photo of a mug"}
      teddy_bear/ ...

A SemAlign-MS sample pairs a reference and a target showing the same subject (as the
Subjects200K pairs do), so every ordered pair of a subject's photos (--pairs all), or each photo
with the next one as its reference (--pairs next), becomes one request folder for `propose`:
request.json, target.png and ref_0.png, named `<subject>-<target>-<reference>`. Photos are read
upright (EXIF orientation), transparency goes onto white, each is padded to a square with its
own border colour (training resizes targets to squares) and reduced to at most `max_side`. A
finished request folder is never rewritten (the command resumes); each is written whole into a
dot-folder first and renamed into place. A request's meta names its subject (`identity`), which
propose and export carry along, so `compose` never puts two photos of one subject in a sample.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mosaic_studio.annotator.compose import IDENTITY_META
from mosaic_studio.annotator.propose_run import REQUEST_JSON
from mosaic_studio.annotator.segment_base import background_colour
from mosaic_studio.files import replace_dir
from mosaic_studio.mosaic.data.semalign import CATEGORIES, PARTIAL_PREFIX, REFERENCE_FILE, TARGET_FILE
from mosaic_studio.mosaic.images import flatten_alpha, load_image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SUBJECT_JSON = "subject.json"
PAIRINGS = ("all", "next")
DEFAULT_MAX_SIDE = 1024  # plenty for FLUX's 512 px training; keeps proposal fast on big photos
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DIR_MODE = 0o755  # mkdtemp makes 0700 folders


@dataclass(frozen=True)
class Subject:
    name: str  # the folder name
    label: str
    category: str
    caption: str
    photos: tuple[Path, ...]  # sorted by name


def _safe(text: str) -> str:
    """`text` as a sample-id part: letters, digits and . _ - only, starting with a letter or digit."""
    return _UNSAFE.sub("_", text).lstrip("._-") or "x"


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def read_subject(folder: Path, category: str) -> Subject:
    """One subject folder; ValueError naming it when it cannot make a sample."""
    settings = {}
    if (folder / SUBJECT_JSON).is_file():
        try:
            settings = json.loads((folder / SUBJECT_JSON).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"subject {folder.name!r}: {SUBJECT_JSON} is not valid JSON ({error})") from None
        if type(settings) is not dict or any(type(settings.get(k, "")) is not str for k in settings):
            raise ValueError(f"subject {folder.name!r}: {SUBJECT_JSON} must be an object of strings")
        unknown = sorted(set(settings) - {"category", "label", "caption"})
        if unknown:
            raise ValueError(f"subject {folder.name!r}: {SUBJECT_JSON} has unknown keys {unknown}")
    category = settings.get("category", category)
    if category not in CATEGORIES:
        raise ValueError(f"subject {folder.name!r}: category {category!r} is not one of {CATEGORIES}")
    label = settings.get("label") or folder.name.replace("_", " ").strip()
    photos = tuple(
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in PHOTO_SUFFIXES
        )
    )
    if len(photos) < 2:
        raise ValueError(
            f"subject {folder.name!r} has {len(photos)} photo(s); a sample needs two photos of the same "
            f"subject (a reference and a target). Photo files end in {', '.join(PHOTO_SUFFIXES)}"
        )
    caption = settings.get("caption") or f"a photo of {_article(label)} {label}"
    return Subject(folder.name, label, category, caption, photos)


def read_subjects(photos: Path, category: str = "object") -> list[Subject]:
    """Every subject folder under `photos`, sorted by name."""
    photos = Path(photos)
    if not photos.is_dir():
        raise FileNotFoundError(f"no photos folder at {photos}")
    folders = sorted(p for p in photos.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{photos} has no subject folders: put each subject's photos in a folder of its own")
    return [read_subject(folder, category) for folder in folders]


def pairs(subject: Subject, pairing: str) -> list[tuple[Path, Path]]:
    """(reference, target) photo pairs of one subject."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairs must be one of {PAIRINGS}, got {pairing!r}")
    photos = subject.photos
    if pairing == "next":
        return [(photos[(j + 1) % len(photos)], photos[j]) for j in range(len(photos))]
    return [(reference, target) for target in photos for reference in photos if reference != target]


def request_name(subject: Subject, reference: Path, target: Path) -> str:
    return f"{_safe(subject.name)}-{_safe(target.stem)}-{_safe(reference.stem)}"


def pad_square(image: Image.Image) -> Image.Image:
    """`image` centred on a square of its border colour: training resizes targets to squares,
    and padding the plain background keeps the subject's proportions where a resize would not."""
    side = max(image.size)
    if image.width == image.height:
        return image
    colour = tuple(int(round(c)) for c in background_colour(np.asarray(image)))
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def load_photo(path: Path, max_side: int) -> Image.Image:
    """An RGB photo, upright, on white where it was transparent, padded square, side at most max_side."""
    image = pad_square(flatten_alpha(load_image(path, name="photo")))  # ValueError naming the file
    if image.width > max_side:
        image = image.resize((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def write_request(folder: Path, subject: Subject, reference: Image.Image, target: Image.Image, meta: dict) -> None:
    """One request folder, written whole beside its destination and renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{folder.name}-", dir=folder.parent))
    try:
        target.save(tmp / TARGET_FILE)
        reference.save(tmp / REFERENCE_FILE.format(0))
        document = {
            "caption": subject.caption,
            "target": TARGET_FILE,
            "references": [{"image": REFERENCE_FILE.format(0), "category": subject.category, "label": subject.label}],
            "meta": meta,
        }
        (tmp / REQUEST_JSON).write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.chmod(_DIR_MODE)
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_requests(
    photos: Path, out: Path, *, category: str = "object", pairing: str = "all", max_side: int = DEFAULT_MAX_SIDE
) -> tuple[int, int]:
    """Request folders under `out` for every photo pair; (written, already there).

    Every subject folder is checked before anything is written; an unreadable photo stops the
    run with its file named (the requests written so far stay, and a rerun resumes).
    """
    from tqdm import tqdm

    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    subjects = read_subjects(photos, category)
    jobs = [(subject, ref, tgt) for subject in subjects for ref, tgt in pairs(subject, pairing)]
    names = [request_name(subject, ref, tgt) for subject, ref, tgt in jobs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"photo names give the same request name twice: {clashes[:5]}; rename the photos")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{PARTIAL_PREFIX}*"):  # leftovers of an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    written = present = 0
    cache: dict[Path, Image.Image] = {}
    for (subject, reference, target), name in tqdm(list(zip(jobs, names)), desc="requests", unit="request"):
        if (out / name / REQUEST_JSON).is_file():
            present += 1
            continue
        if not cache or next(iter(cache)).parent != reference.parent:
            cache.clear()  # one subject's photos at a time
        for path in (reference, target):
            if path not in cache:
                cache[path] = load_photo(path, max_side)
        images = [cache[reference], cache[target]]
        # identity: the photos of one subject show one subject; compose never pairs two of them
        meta = {
            IDENTITY_META: subject.name,
            "photos": {"subject": subject.name, "reference": reference.name, "target": target.name},
        }
        write_request(out / name, subject, images[0], images[1], meta)
        written += 1
    return written, present
