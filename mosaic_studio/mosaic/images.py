"""Input images: loading with clear errors, and MOSAIC's reference preprocessing.

Every image that enters the project (pipeline references, app uploads, annotator files)
goes through `load_image`, so size limits and error messages live in one place.
"""

import io
import os
import struct
import warnings
from numbers import Integral, Real

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse anything larger before decoding: 40 MP is above any real reference or target
# (a 6000x6000 photo is 36 MP) yet an RGBA copy of it stays under ~160 MB. Stricter than
# Pillow's own bomb threshold (~89 MP warning, ~179 MP error), which we translate.
MAX_IMAGE_PIXELS = 40_000_000
# Below 32 px a side an image holds at most 2x2 latent tokens at FLUX's 16 px per token:
# almost certainly a thumbnail or an icon uploaded by mistake.
MIN_IMAGE_SIDE = 32
# Per-channel difference from the background that still counts as background, so JPEG
# noise and ringing on a white backdrop do not inflate the subject's box (the official
# code compares exactly, i.e. tolerance 0). 12/255 still keeps light-grey subjects.
BBOX_TOLERANCE = 12
# The official preprocessing scales the subject's longer side to 0.9 of the canvas.
REFERENCE_FILL = 0.9
# `preprocess_reference`'s default crop compares exactly, as the official inference does, so
# references reach the model as they did in training. A JPEG's noise on a white backdrop then
# widens the box (the subject comes out smaller); TOLERANT_CROP (this module's BBOX_TOLERANCE,
# the app's former default) is the opt-in for such photos.
REFERENCE_CROP_TOLERANCE = 0
TOLERANT_CROP = BBOX_TOLERANCE
WHITE = (255, 255, 255)

# Modes that carry an alpha channel; palette/L/RGB images may instead carry a
# "transparency" entry in `image.info` (PNG tRNS, GIF transparent index).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# What Pillow raises for a file it recognises but cannot decode (corrupt or truncated).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# Modes deeper than 8 bits per sample, with the value range that maps onto 0..255 when the
# pixels lie inside it (see `_deep_to_8_bit`).
_DEEP_MODES = {
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), (0.0, 65535.0)),
    "I": (0.0, 65535.0),
    "F": (0.0, 1.0),
}


def load_image(obj, *, name: str = "image") -> Image.Image:
    """Load a PIL image, path, numpy array (H,W) / (H,W,3) / (H,W,4) or encoded bytes.

    Returns a new, fully loaded image: RGBA when the input carries transparency, else
    RGB. Raises TypeError for an unsupported type and ValueError (naming `name`) for an
    unreadable file or an image outside [MIN_IMAGE_SIDE, MAX_IMAGE_PIXELS].
    """
    if isinstance(obj, Image.Image):
        _check_dimensions(obj.size, name)
        return _to_rgb_or_rgba(_load_pixels(obj, name), name)
    if isinstance(obj, (str, os.PathLike)):
        path = os.fsdecode(obj)
        with open(path, "rb") as fp:  # a missing file stays FileNotFoundError
            return _decode(fp, f"{name} file '{path}'")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(obj)), f"{name} bytes")
    if isinstance(obj, np.ndarray):
        return _to_rgb_or_rgba(_from_array(obj, name))
    raise TypeError(f"{name} must be a PIL image, a path, a numpy array or bytes, got {type(obj).__name__}")


def _decode(fp, label: str) -> Image.Image:
    """Open encoded image data, check its declared size, then decode the pixels."""
    with warnings.catch_warnings():
        # Our limit is stricter than Pillow's warning threshold; its warning would only
        # duplicate the ValueError below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)  # reads the header only
        except Image.DecompressionBombError as err:
            raise ValueError(f"{label} is too large to load: {err} The limit is {MAX_IMAGE_PIXELS:,} pixels.") from None
        except UnidentifiedImageError:
            raise ValueError(f"{label} is not a readable image (unknown format)") from None
        except _DECODE_ERRORS as err:
            raise ValueError(f"{label} is not a readable image ({err})") from None
    with image:
        _check_dimensions(image.size, label)  # before any pixel is decoded
        return _to_rgb_or_rgba(_load_pixels(image, label, upright=True), label)


def _load_pixels(image: Image.Image, label: str, upright: bool = False) -> Image.Image:
    """Decode the pixels; with `upright`, apply the camera's EXIF orientation."""
    try:
        image.load()
        return ImageOps.exif_transpose(image) if upright else image
    except _DECODE_ERRORS as err:
        raise ValueError(f"{label} is not a readable image ({err})") from None


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"{name} array must have shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    _check_dimensions((array.shape[1], array.shape[0]), name)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError(f"{name} float array must hold finite values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"{name} array must be uint8 or float in [0, 1], got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))  # mode L, RGB or RGBA by shape


def _check_dimensions(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{label} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over "
            f"the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"{label} is {width}x{height}; each side must be at least {MIN_IMAGE_SIDE} px")


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)  # numpy ints too


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _to_rgb_or_rgba(image: Image.Image, label: str = "image") -> Image.Image:
    """A new image in RGBA when `image` carries transparency, else RGB."""
    if image.mode in _DEEP_MODES:
        image = _deep_to_8_bit(image, label)
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def _deep_to_8_bit(image: Image.Image, label: str) -> Image.Image:
    """An L (or LA, with PNG's tRNS grey value as alpha) copy of a 16/32-bit integer or float image.

    Pillow's own convert("RGB") clips these modes to 0..255 instead of rescaling, so a 16-bit
    grey PNG (values up to 65535) turns all white. The value range mapped onto 0..255:
      I;16*: 0..65535, the type's range (exact; a mid-grey stays mid-grey).
      I:     0..65535 when every value lies in it: Pillow decodes 16-bit PNG/TIFF/PGM data into
             32-bit I, so this is the source's own range. Otherwise the image's own min..max.
      F:     0..1 when every value lies in it, as for float arrays (`_from_array`); otherwise the
             image's own min..max. NaN/inf cannot be mapped and are refused.
    A constant image outside the nominal range has no min..max to stretch; it is clipped into
    the nominal range instead (e.g. F 7.0 → white).
    """
    values = np.asarray(image).astype(np.float64)  # (H, W); I;16B arrives big-endian, astype normalises
    if not np.isfinite(values).all():
        raise ValueError(f"{label} holds NaN or infinite pixel values (mode {image.mode})")
    low, high = _DEEP_MODES[image.mode]
    if values.size and (values.min() < low or values.max() > high) and values.max() > values.min():
        low, high = float(values.min()), float(values.max())
    grey = np.round((np.clip(values, low, high) - low) * (255.0 / (high - low))).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, Integral) and not isinstance(transparent, bool):
        # PNG tRNS on a 16-bit grey image names one raw value; compare before rescaling
        alpha = np.where(np.asarray(image) == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=2))  # (H, W, 2) uint8: mode LA
    return Image.fromarray(grey)  # (H, W) uint8: mode L


def _check_colour(colour, name: str = "background") -> tuple[int, int, int]:
    values = tuple(colour)
    if len(values) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        raise ValueError(f"{name} must be three ints in [0, 255], got {colour!r}")
    return values


def flatten_alpha(image: Image.Image, background=WHITE) -> Image.Image:
    """Composite `image` over an opaque `background` colour; returns RGB."""
    background = _check_colour(background)
    if not _has_alpha(image):
        return image.convert("RGB")
    canvas = Image.new("RGBA", image.size, background + (255,))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")


def subject_bbox(image: Image.Image, background=WHITE, tolerance: float = BBOX_TOLERANCE) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the subject, right/bottom exclusive as in `crop`.

    With transparency in use (some alpha < 255) the subject is every pixel with alpha > 0.
    Otherwise it is every pixel differing from `background` by more than `tolerance` in
    some channel. Returns the whole image when no pixel qualifies.
    """
    background = _check_colour(background)
    if not (isinstance(tolerance, Real) and 0 <= tolerance):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    alpha = np.asarray(image.convert("RGBA"))[..., 3] if _has_alpha(image) else None
    if alpha is not None and (alpha < 255).any():
        mask = alpha > 0  # (H, W)
    else:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
        mask = (np.abs(pixels - np.array(background)) > tolerance).any(axis=2)  # (H, W)
    if not mask.any():
        return (0, 0, image.width, image.height)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def check_crop_tolerance(crop_tolerance) -> None:
    """Raise ValueError unless `crop_tolerance` is an int in [0, 255] (a per-channel difference)."""
    if not (_is_int(crop_tolerance) and 0 <= crop_tolerance <= 255):
        raise ValueError(f"crop_tolerance must be an int in [0, 255], got {crop_tolerance!r}")


def preprocess_reference(
    image,
    size: int,
    *,
    fill: float = REFERENCE_FILL,
    background=WHITE,
    crop_tolerance: int = REFERENCE_CROP_TOLERANCE,
) -> Image.Image:
    """MOSAIC's reference preprocessing (official inference): a `size`x`size` RGB image.

    1. Composite any transparency onto `background` (white).
    2. Box every pixel of that composite differing from `background` by more than
       `crop_tolerance` in some channel: 0 (default) is the official exact comparison;
       TOLERANT_CROP (12) ignores JPEG noise. The box comes from colour, not alpha, as
       officially: a white subject on a transparent background has no box. With no such
       pixel (an all-white image) the box is the whole image, so the result is a blank square.
    3. Crop, and resize (LANCZOS, aspect kept) by s = `fill`*size / longer side to
       int(w*s) x int(h*s): truncated like the official code (at least 1 px, where the
       official code would fail on a sliver).
    4. Paste at ((size - new_w)//2, (size - new_h)//2) on a `background` square.
    `image` is anything `load_image` accepts.
    """
    if not (_is_int(size) and size > 0):
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not (isinstance(fill, Real) and 0 < fill <= 1):
        raise ValueError(f"fill must be in (0, 1], got {fill!r}")
    check_crop_tolerance(crop_tolerance)
    background = _check_colour(background)
    image = flatten_alpha(load_image(image, name="reference"), background)

    subject = image.crop(subject_bbox(image, background, crop_tolerance))
    scale = fill * size / max(subject.size)  # = official target_size * 0.9 / max(w, h) at the defaults
    new_size = tuple(max(1, int(side * scale)) for side in subject.size)
    subject = subject.resize(new_size, Image.Resampling.LANCZOS)

    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(subject, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def check_size(height, width, multiple: int, *, min_side: int, max_side: int) -> None:
    """Raise ValueError naming the bad dimension unless both are ints in
    [min_side, max_side] divisible by `multiple` (pixels per latent token)."""
    if not (_is_int(multiple) and multiple > 0):
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    for label, value in (("height", height), ("width", width)):
        if not _is_int(value):
            raise ValueError(f"{label} must be an int, got {value!r} ({type(value).__name__})")
        if not min_side <= value <= max_side:
            raise ValueError(f"{label}={value} is outside [{min_side}, {max_side}]")
        if value % multiple:
            lower = value - value % multiple
            raise ValueError(
                f"{label}={value} is not divisible by {multiple} (pixels per latent "
                f"token); try {lower} or {lower + multiple}"
            )
