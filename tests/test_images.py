import io
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from mosaic_studio.mosaic.images import (
    BBOX_TOLERANCE,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    check_size,
    flatten_alpha,
    load_image,
    preprocess_reference,
    subject_bbox,
)

RED = (220, 20, 20)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR is patched to declare width x height (CRC fixed)."""
    data = bytearray(_png_bytes(Image.new("RGB", (64, 64), RED)))
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _red_box_on_white(size=(200, 120), box=(30, 40, 110, 80)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(RED, box)
    return image


def _box_of(image: Image.Image, colour=RED, tolerance=40):
    """Bounding box of pixels close to `colour`, found independently of the module."""
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    mask = (np.abs(pixels - np.array(colour)) <= tolerance).all(axis=2)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


# --- load_image: accepted inputs -------------------------------------------------------


def test_load_pil_image_returns_loaded_rgb_copy():
    source = Image.new("L", (40, 50), 128)
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (40, 50)
    assert image.getpixel((0, 0)) == (128, 128, 128)
    assert image is not source


def test_load_path_str_and_pathlike_and_closes_file(tmp_path):
    path = tmp_path / "ref.png"
    _red_box_on_white().save(path)
    images = [load_image(str(path)), load_image(path)]
    path.unlink()  # pixels must already be decoded, not read lazily from the file
    for image in images:
        assert image.mode == "RGB" and image.size == (200, 120)
        assert image.getpixel((50, 50)) == RED
        assert getattr(image, "fp", None) is None  # no file handle kept open


def test_load_bytes():
    image = load_image(_png_bytes(_red_box_on_white()))
    assert image.size == (200, 120) and image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(bytearray(_png_bytes(_red_box_on_white()))).size == (200, 120)


@pytest.mark.parametrize("shape, mode", [((40, 60), "RGB"), ((40, 60, 3), "RGB"), ((40, 60, 4), "RGBA")])
def test_load_uint8_arrays(shape, mode):
    array = np.full(shape, 7, dtype=np.uint8)
    image = load_image(array)
    assert image.mode == mode and image.size == (60, 40)
    assert np.asarray(image)[0, 0, 0] == 7


def test_load_float_array_scales_to_uint8():
    array = np.zeros((40, 60, 3), dtype=np.float32)
    array[..., 0] = 1.0
    array[..., 1] = 0.5
    assert load_image(array).getpixel((0, 0)) == (255, 128, 0)


def test_float_array_out_of_range_and_bad_shape_and_dtype():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((40, 40, 3), 2.0))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((40, 40, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="int32"):
        load_image(np.zeros((40, 40, 3), dtype=np.int32))


def test_alpha_kept_and_palette_transparency_becomes_rgba():
    rgba = load_image(Image.new("RGBA", (40, 40), (1, 2, 3, 0)))
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (1, 2, 3, 0)
    palette = Image.new("P", (40, 40), 0)
    palette.info["transparency"] = 0
    assert load_image(_png_bytes(palette)).mode == "RGBA"
    assert load_image(Image.new("LA", (40, 40))).mode == "RGBA"


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), RED).save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (40, 80)


# --- load_image: rejected inputs -------------------------------------------------------


@pytest.mark.parametrize("obj", [42, {"a": 1}, None, [1, 2]])
def test_unsupported_type_is_type_error_naming_argument_and_type(obj):
    with pytest.raises(TypeError, match=rf"ref_2 .*{type(obj).__name__}"):
        load_image(obj, name="ref_2")


def test_text_file_named_png_is_value_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"notes\.png.*not a readable image"):
        load_image(path)


def test_truncated_png_is_value_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png.*not a readable image"):
        load_image(path)
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(data[: len(data) // 2])


def test_missing_file_stays_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")


def test_bomb_over_our_limit_refused_from_header(tmp_path):
    # 8000x8000 = 64 MP: over MAX_IMAGE_PIXELS, under Pillow's own thresholds. The file
    # holds only 64x64 pixels, so decoding would fail as "not readable" instead.
    assert 8000 * 8000 > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(8000, 8000))
    with pytest.raises(ValueError, match=r"bomb\.png' is 8000x8000 .*megapixels"):
        load_image(path)


def test_bomb_over_pillow_warning_threshold_no_warning_leaks():
    # 10000x10000 = 100 MP: Pillow warns (DecompressionBombWarning) but does not raise.
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="10000x10000"):
            load_image(_png_declaring(10000, 10000))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before


def test_bomb_over_pillow_error_threshold_becomes_value_error():
    # 30000x30000 = 900 MP: Pillow raises DecompressionBombError inside Image.open.
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"too large.*900000000 pixels") as info:
        load_image(_png_declaring(30000, 30000), name="ref_1")
    assert "ref_1" in str(info.value)
    assert Image.MAX_IMAGE_PIXELS == before


def test_large_in_memory_inputs_are_refused_too():
    with pytest.raises(ValueError, match="8000x6000"):
        load_image(np.zeros((6000, 8000), dtype=np.uint8))


@pytest.mark.parametrize("size", [(20, 100), (100, MIN_IMAGE_SIDE - 1)])
def test_too_small_is_value_error_naming_size_and_minimum(size):
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*at least {MIN_IMAGE_SIDE}"):
        load_image(Image.new("RGB", size))


def test_exactly_minimum_side_is_accepted():
    assert load_image(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))).size == (32, 32)


# --- flatten_alpha and subject_bbox ----------------------------------------------------


def test_flatten_alpha_composites_on_white():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (10, 10, 20, 20))
    image.paste((0, 0, 0, 128), (30, 30, 40, 40))
    flat = flatten_alpha(image)
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 255, 255)
    assert flat.getpixel((15, 15)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in flat.getpixel((35, 35)))  # half black on white
    assert flatten_alpha(image, (0, 255, 0)).getpixel((0, 0)) == (0, 255, 0)


def test_subject_bbox_on_white_is_exclusive_box():
    assert subject_bbox(_red_box_on_white(box=(30, 40, 110, 80))) == (30, 40, 110, 80)


def test_subject_bbox_tolerance_ignores_near_white_noise():
    image = _red_box_on_white(box=(30, 40, 110, 80))
    image.putpixel((2, 2), (255 - BBOX_TOLERANCE, 255, 255))  # JPEG-like speck
    assert subject_bbox(image) == (30, 40, 110, 80)
    assert subject_bbox(image, tolerance=0) == (2, 2, 110, 80)


def test_subject_bbox_jpeg_box_stays_close():
    buffer = io.BytesIO()
    _red_box_on_white(size=(256, 256), box=(64, 96, 192, 160)).save(buffer, "JPEG", quality=90)
    left, top, right, bottom = subject_bbox(load_image(buffer.getvalue()))
    assert all(abs(a - b) <= 8 for a, b in zip((left, top, right, bottom), (64, 96, 192, 160)))


def test_subject_bbox_whole_image_when_nothing_differs():
    assert subject_bbox(Image.new("RGB", (50, 40), (255, 255, 255))) == (0, 0, 50, 40)


def test_subject_bbox_uses_alpha_for_rgba():
    # A white subject on a transparent black background: colour alone would miss it.
    image = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    image.paste((255, 255, 255, 255), (10, 20, 40, 70))
    assert subject_bbox(image) == (10, 20, 40, 70)


def test_subject_bbox_opaque_rgba_falls_back_to_colour():
    image = _red_box_on_white(box=(30, 40, 110, 80)).convert("RGBA")
    assert subject_bbox(image) == (30, 40, 110, 80)


# --- preprocess_reference --------------------------------------------------------------


@pytest.mark.parametrize("size, fill", [(128, 0.9), (96, 0.5), (64, 1.0)])
def test_preprocess_reference_centres_and_scales_subject(size, fill):
    # Subject 80x40 (wider than tall) placed off-centre.
    out = preprocess_reference(_red_box_on_white(box=(30, 40, 110, 80)), size, fill=fill)
    assert out.mode == "RGB" and out.size == (size, size)
    left, top, right, bottom = _box_of(out)
    assert abs((right - left) - fill * size) <= 2  # longer side fills `fill`
    assert abs((bottom - top) - fill * size / 2) <= 2  # aspect ratio kept
    assert abs((left + right) / 2 - size / 2) <= 1 and abs((top + bottom) / 2 - size / 2) <= 1
    assert out.getpixel((0, 0)) == out.getpixel((size - 1, size - 1)) == (255, 255, 255)


def test_preprocess_reference_rgba_uses_alpha_and_whitens_background():
    image = Image.new("RGBA", (120, 120), (0, 0, 0, 0))
    image.paste(RED + (255,), (10, 10, 40, 100))  # 30x90 subject, transparent black around
    out = preprocess_reference(image, 100)
    left, top, right, bottom = _box_of(out)
    assert abs((bottom - top) - 90) <= 2 and abs((right - left) - 30) <= 2
    assert out.getpixel((2, 2)) == (255, 255, 255)  # transparent became white, not black


def test_preprocess_reference_accepts_path(tmp_path):
    path = tmp_path / "ref.png"
    _red_box_on_white().save(path)
    assert preprocess_reference(path, 64).size == (64, 64)


@pytest.mark.parametrize("size", [0, -8, 64.0, True, "64"])
def test_preprocess_reference_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size must be a positive int"):
        preprocess_reference(_red_box_on_white(), size)


@pytest.mark.parametrize("fill", [0, -0.1, 1.01, float("nan")])
def test_preprocess_reference_rejects_bad_fill(fill):
    with pytest.raises(ValueError, match=r"fill must be in \(0, 1\]"):
        preprocess_reference(_red_box_on_white(), 64, fill=fill)


# --- check_size --------------------------------------------------------------------------


def test_check_size_accepts_valid_including_numpy_ints():
    check_size(512, 768, 16, min_side=256, max_side=2048)
    check_size(np.int64(48), 24, 24, min_side=24, max_side=48)


@pytest.mark.parametrize(
    "height, width, pattern",
    [
        (512.0, 512, r"height must be an int, got 512\.0"),
        (512, "512", r"width must be an int"),
        (512, 500, r"width=500 is not divisible by 16 .*try 496 or 512"),
        (520, 512, r"height=520 is not divisible by 16"),
        (128, 512, r"height=128 is outside \[256, 2048\]"),
        (512, 4096, r"width=4096 is outside \[256, 2048\]"),
    ],
)
def test_check_size_messages_name_the_dimension(height, width, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_size(height, width, 16, min_side=256, max_side=2048)


def test_check_size_uses_the_given_multiple_not_16():
    check_size(24, 48, 24, min_side=8, max_side=64)  # not multiples of 16: fine
    with pytest.raises(ValueError, match="width=32 is not divisible by 24"):
        check_size(24, 32, 24, min_side=8, max_side=64)
