"""`preprocess_reference` by default equals the official MOSAIC inference's reference
preprocessing (`utils.process_image(path, target_size=512, pad_color=white, scale=0.9)`),
pixel for pixel. `official` below re-implements it from its description, independently of the
module: numpy for the box, PIL paste-with-mask for the transparency, int() for the new size."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from studio_fixtures import FAST

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.images import (
    REFERENCE_CROP_TOLERANCE,
    TOLERANT_CROP,
    flatten_alpha,
    load_image,
    preprocess_reference,
    subject_bbox,
)
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.examples import EXAMPLES_DIR
from mosaic_studio.studio.generation import Request, generate
from mosaic_studio.studio.references import PREVIEW_SIZE
from mosaic_studio.studio.tabs.generate import crop_tolerance, on_preview

WHITE = (255, 255, 255)


def official(image: Image.Image, target_size: int = 512, scale: float = 0.9) -> Image.Image:
    """The official steps: transparency onto white, box of every pixel not exactly white, crop,
    scale the longer side to target_size·scale with int() truncation (LANCZOS), centre on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, WHITE)
        rgb.paste(rgba, mask=rgba.split()[3])
    else:
        rgb = image.convert("RGB")
    not_white = (np.asarray(rgb) != 255).any(axis=2)  # (H, W)
    if not_white.any():  # an all-white image keeps its whole frame as the box
        rows, cols = np.flatnonzero(not_white.any(axis=1)), np.flatnonzero(not_white.any(axis=0))
        rgb = rgb.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    w, h = rgb.size
    scale_factor = target_size * scale / max(w, h)
    new_w, new_h = int(w * scale_factor), int(h * scale_factor)
    rgb = rgb.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (target_size, target_size), WHITE)
    canvas.paste(rgb, ((target_size - new_w) // 2, (target_size - new_h) // 2))
    return canvas


def preprocess_before_change(image, size: int, fill: float = 0.9) -> Image.Image:
    """`preprocess_reference` as it was before it followed the official code: box from alpha
    when transparency is in use, else colour within 12 of white; new size rounded."""
    image = load_image(image, name="reference")
    subject = flatten_alpha(image).crop(subject_bbox(image, WHITE, 12))
    scale = fill * size / max(subject.size)
    new_size = tuple(max(1, round(side * scale)) for side in subject.size)
    subject = subject.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(subject, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def assert_same(a: Image.Image, b: Image.Image) -> None:
    assert a.mode == b.mode == "RGB" and a.size == b.size
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    assert not diff.any(), f"{np.count_nonzero(diff.any(axis=2))} pixels differ, by up to {diff.max()}"


def reload(image: Image.Image, fmt: str, **params) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out


def shape_on_white(size, colour=(200, 40, 60), box=None) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    box = box or (w // 5, h // 4, w * 3 // 5, h * 4 // 5)
    draw.ellipse(box, fill=colour)
    draw.rectangle((box[0] + 5, box[1] + 5, box[0] + 25, box[1] + 15), fill=(30, 90, 200))
    return image


def jpeg(size, **kw) -> Image.Image:
    """A coloured shape on white through JPEG quality 75: noise and ringing around it."""
    return reload(shape_on_white(size, **kw), "JPEG", quality=75)


def rgba_png(size, seed=0) -> Image.Image:
    """A subject with a soft alpha edge; fully transparent pixels hold non-white colours."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)  # colours anywhere, alpha set below
    yy, xx = np.mgrid[0:h, 0:w]
    distance = np.hypot((xx - w * 0.55) / (w * 0.3), (yy - h * 0.45) / (h * 0.25))
    pixels[..., 3] = np.clip((1.2 - distance) * 600, 0, 255).astype(np.uint8)  # 255 inside, ramp to 0
    return reload(Image.fromarray(pixels, "RGBA"), "PNG")


def palette_with_transparent_index(size) -> Image.Image:
    """A 'P' image whose index 0 is transparent (PNG tRNS) and draws a black backdrop."""
    w, h = size
    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, 200, 40, 60, 30, 90, 200, 250, 250, 250] + [0] * (256 - 4) * 3)
    draw = ImageDraw.Draw(image)
    draw.ellipse((w // 6, h // 3, w * 2 // 3, h * 5 // 6), fill=1)
    draw.rectangle((w // 2, h // 5, w * 5 // 6, h // 2), fill=2)
    draw.line((0, h - 3, w - 1, h - 3), fill=3)  # near-white, not white: inside the box
    reloaded = reload(image, "PNG", transparency=0)
    assert reloaded.mode == "P" and reloaded.info.get("transparency") == 0
    return reloaded


CASES = {
    "jpeg 333x517": lambda: jpeg((333, 517)),
    "jpeg 517x333": lambda: jpeg((517, 333)),
    "jpeg 640x480 small subject": lambda: jpeg((640, 480), box=(300, 200, 371, 260)),
    "jpeg grey (L)": lambda: reload(shape_on_white((300, 257)).convert("L"), "JPEG", quality=75),
    "rgba png 333x517": lambda: rgba_png((333, 517)),
    "rgba png 400x300": lambda: rgba_png((400, 300), seed=1),
    "la png": lambda: reload(rgba_png((201, 333), seed=2).convert("LA"), "PNG"),
    "palette transparent index 333x517": lambda: palette_with_transparent_index((333, 517)),
    "palette transparent index 256x128": lambda: palette_with_transparent_index((256, 128)),
    "all white": lambda: Image.new("RGB", (333, 517), WHITE),
    "all transparent": lambda: Image.new("RGBA", (120, 90), (0, 0, 0, 0)),
    "white subject on transparent": lambda: reload(
        Image.merge(
            "RGBA", (*Image.new("RGB", (90, 60), WHITE).split(), ImageOps.invert(shape_on_white((90, 60)).convert("L")))
        ),
        "PNG",
    ),
    "one off-white pixel": lambda: _one_pixel(),
}


def _one_pixel() -> Image.Image:
    image = Image.new("RGB", (333, 517), WHITE)
    image.putpixel((100, 400), (254, 255, 255))  # exact comparison: this pixel is the whole subject
    return image


@pytest.mark.parametrize("size", [512, 100, 64, 333])
@pytest.mark.parametrize("case", list(CASES))
def test_default_equals_official(case, size):
    image = CASES[case]()
    assert_same(preprocess_reference(image, size), official(image, size))


def test_default_is_the_exact_comparison():
    assert REFERENCE_CROP_TOLERANCE == 0 and TOLERANT_CROP == 12


@pytest.mark.parametrize("reference", sorted(EXAMPLES_DIR.glob("*.png")), ids=lambda path: path.stem)
def test_bundled_references_equal_official(reference):
    assert_same(preprocess_reference(reference, 512), official(Image.open(reference), 512))


def test_size_is_truncated_not_rounded():
    # An 80x40 box at 512: 0.9·512 = 460.8 → 460 (rounding gave 461), 230.4 → 230.
    image = Image.new("RGB", (200, 120), WHITE)
    image.paste((220, 20, 20), (30, 40, 110, 80))
    out = np.asarray(preprocess_reference(image, 512))
    subject = (out != 255).any(axis=2)
    cols, rows = np.flatnonzero(subject.any(axis=0)), np.flatnonzero(subject.any(axis=1))
    assert cols[-1] - cols[0] + 1 <= 460 and rows[-1] - rows[0] + 1 <= 230
    assert (cols[0], rows[0]) >= ((512 - 460) // 2, (512 - 230) // 2)


@pytest.mark.parametrize("case", ["all white", "all transparent", "white subject on transparent"])
def test_nothing_but_white_gives_a_blank_square(case):
    # No pixel differs from white after compositing: the box is the whole image (nothing to
    # crop), and a white image scaled and padded with white stays exactly white.
    out = preprocess_reference(CASES[case](), 512)
    assert out.size == (512, 512) and (np.asarray(out) == 255).all()


def test_exact_crop_keeps_jpeg_noise_tolerant_crop_drops_it():
    image = jpeg((333, 517))
    exact, tolerant = subject_bbox(image, WHITE, 0), subject_bbox(image, WHITE, TOLERANT_CROP)
    assert all(e <= t for e, t in zip(exact[:2], tolerant[:2])) and all(e >= t for e, t in zip(exact[2:], tolerant[2:]))
    assert exact != tolerant  # the noise widens the official box
    assert not np.array_equal(
        np.asarray(preprocess_reference(image, 512)), np.asarray(preprocess_reference(image, 512, crop_tolerance=12))
    )


def test_crop_tolerance_12_reproduces_the_previous_default():
    # The previous default: tolerance 12 and rounded sizes. Sizes now always truncate, so compare
    # where rounding and truncation agree (checked), on a noisy opaque JPEG, its intended use.
    image, size = jpeg((640, 480), box=(300, 200, 371, 260)), 88  # sides 79.2 and 69.3 px
    left, top, right, bottom = subject_bbox(image, WHITE, 12)
    scale = 0.9 * size / max(right - left, bottom - top)
    assert all(round(side * scale) == int(side * scale) for side in (right - left, bottom - top))
    before = preprocess_before_change(image, size)
    assert_same(preprocess_reference(image, size, crop_tolerance=12), before)
    assert not np.array_equal(np.asarray(preprocess_reference(image, size)), np.asarray(before))


@pytest.mark.parametrize("tolerance", [-1, 256, 1.5, True, "12", None])
def test_bad_crop_tolerance_is_refused(tolerance):
    with pytest.raises(ValueError, match=r"crop_tolerance must be an int in \[0, 255\]"):
        preprocess_reference(Image.new("RGB", (64, 64), WHITE), 64, crop_tolerance=tolerance)


# --- the option through the pipeline, the studio and the Generate tab ---------------------


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


@pytest.fixture
def noisy_jpeg(tmp_path):
    path = tmp_path / "noisy.jpg"
    jpeg((333, 517)).save(path, quality=95)  # re-encoded: still noisy
    return str(path)


def test_studio_and_pipeline_pass_the_crop_tolerance_through(pipe, noisy_jpeg, tmp_path, monkeypatch):
    seen = []
    encode = pipe.encode_references

    def spy(images, size, device, dtype, crop_tolerance=REFERENCE_CROP_TOLERANCE):
        seen.append(crop_tolerance)
        return encode(images, size, device, dtype, crop_tolerance)

    monkeypatch.setattr(pipe, "encode_references", spy)
    request = Request("a red box", FAST["height"], FAST["width"], FAST["steps"], 3.5, 1, 1)
    for tolerance in (0, TOLERANT_CROP):
        generation = generate(
            pipe,
            Request(**{**request.__dict__, "reference_crop_tolerance": tolerance}),
            [noisy_jpeg],
            outputs_dir=tmp_path,
        )
        size = generation.settings["reference_size"]
        assert generation.settings["reference_crop_tolerance"] == tolerance  # recorded in the PNGs
        assert_same(generation.reference_images[0], preprocess_reference(noisy_jpeg, size, crop_tolerance=tolerance))
    assert seen == [0, TOLERANT_CROP]


def test_request_refuses_a_bad_crop_tolerance():
    with pytest.raises(ValueError, match="crop_tolerance"):
        Request("a box", 64, 64, 2, 3.5, 1, 1, reference_crop_tolerance=-3).check()


def test_generate_tab_checkbox_sets_the_tolerant_crop(noisy_jpeg):
    assert (crop_tolerance(False), crop_tolerance(True)) == (0, TOLERANT_CROP)
    (exact, _), (tolerant, _) = on_preview([noisy_jpeg], False)[0], on_preview([noisy_jpeg], False, True)[0]
    assert_same(exact, preprocess_reference(noisy_jpeg, PREVIEW_SIZE))
    assert_same(tolerant, preprocess_reference(noisy_jpeg, PREVIEW_SIZE, crop_tolerance=TOLERANT_CROP))


def test_pipeline_refuses_a_bad_crop_tolerance_before_any_work(pipe):
    with pytest.raises(ValueError, match="crop_tolerance"):
        pipe("a box", height=64, width=64, num_inference_steps=1, reference_crop_tolerance=300)
