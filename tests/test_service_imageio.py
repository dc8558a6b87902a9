"""Decoding untrusted uploads and encoding results, without a model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    animated_gif,
    dark_image,
    decode_image,
    decompression_bomb_png,
    encode_image,
    exif_rotated_jpeg,
    png16,
    srgb_icc_profile,
)

from service.errors import InvalidImage, InvalidParameters, PayloadTooLarge, UnsupportedFormat
from service.imageio import DecodedImage, OutputFormat, choose_output, decode, encode, is_gray, make_gray

LIMIT = 10_000_000


def test_rgb_png_round_trips_exactly() -> None:
    rgb = dark_image(30, 40)
    decoded = decode(encode_image(rgb, "PNG"), LIMIT)
    assert decoded.source_format == "PNG" and decoded.alpha is None and decoded.icc_profile is None
    np.testing.assert_array_equal(decoded.rgb, rgb)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_accepted_formats_decode(fmt: str) -> None:
    rgb = dark_image(30, 40)
    options = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(decode(encode_image(rgb, fmt, **options), LIMIT).rgb, rgb)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", InvalidImage),
        (b"hello, this is plainly text and not an image\n" * 10, InvalidImage),
        (encode_image(dark_image(64, 64), "PNG")[:300], InvalidImage),  # truncated
        (encode_image(dark_image(64, 64), "JPEG")[:200], InvalidImage),  # truncated
        (decompression_bomb_png(), PayloadTooLarge),
        (animated_gif(), UnsupportedFormat),
        (encode_image(Image.new("P", (8, 8)), "GIF"), UnsupportedFormat),
        (encode_image(dark_image(8, 8), "ICO"), UnsupportedFormat),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "bomb", "animated-gif", "gif", "ico"],
)
def test_bad_uploads_raise_the_right_error(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(payload, LIMIT)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="limit is 1000"):
        decode(encode_image(dark_image(40, 30), "PNG"), max_pixels=1000)


def test_animated_webp_is_refused() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedFormat, match="animated"):
        decode(buffer.getvalue(), LIMIT)


def test_exif_orientation_is_applied() -> None:
    jpeg = exif_rotated_jpeg(dark_image(20, 60), orientation=6)  # stored 60 x 20; 6 = turn 90 clockwise
    decoded = decode(jpeg, LIMIT)
    assert decoded.rgb.shape == (60, 20, 3)
    stored = np.asarray(decode_image(jpeg))
    np.testing.assert_array_equal(decoded.rgb, np.rot90(stored, k=-1))


def test_rgba_keeps_its_alpha() -> None:
    rgba = np.dstack([dark_image(20, 30), np.linspace(0, 255, 600).reshape(20, 30).astype(np.uint8)])
    decoded = decode(encode_image(rgba, "PNG"), LIMIT)
    np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
    np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])


def test_gray_with_alpha_keeps_its_alpha_and_becomes_gray_rgb() -> None:
    la = np.dstack([np.arange(600).reshape(20, 30) % 256, np.full((20, 30), 128)]).astype(np.uint8)
    decoded = decode(encode_image(Image.fromarray(la, "LA"), "PNG"), LIMIT)
    assert (decoded.rgb == la[..., :1]).all() and (decoded.alpha == 128).all()


def test_palette_with_transparency_gets_alpha() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    decoded = decode(encode_image(image, "PNG", transparency=0), LIMIT)
    assert decoded.alpha[0, 0] == 0 and decoded.alpha[5, 5] == 255
    assert decoded.rgb[5, 5].tolist() == [200, 100, 50]


def test_grayscale_becomes_equal_rgb_channels() -> None:
    gray = (np.arange(600).reshape(20, 30) % 256).astype(np.uint8)
    decoded = decode(encode_image(gray, "PNG"), LIMIT)
    assert all((decoded.rgb[..., c] == gray).all() for c in range(3))
    assert decoded.grayscale


def test_black_and_white_photos_are_recognised_in_any_layout() -> None:
    gray = dark_image(300, 40)[..., 0]  # taller than one strip of the check
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    assert decode(encode_image(as_rgb, "PNG"), LIMIT).grayscale
    assert decode(encode_image(as_rgb, "JPEG", quality=90), LIMIT).grayscale  # chroma rounding is tolerated
    assert decode(png16(gray.astype(np.uint16) * 257), LIMIT).grayscale
    assert not decode(encode_image(dark_image(300, 40), "PNG"), LIMIT).grayscale
    one_red_pixel = as_rgb.copy()
    one_red_pixel[290, 7] = [200, 10, 10]  # in the last strip
    assert not decode(encode_image(one_red_pixel, "PNG"), LIMIT).grayscale
    slightly_tinted = as_rgb.copy()
    slightly_tinted[..., 2] = np.clip(slightly_tinted[..., 2].astype(int) + 3, 0, 255)
    assert not is_gray(slightly_tinted, tolerance=2)
    # A very dark colour photo can have channels within a level or two everywhere: as PNG it keeps its colour.
    very_dark_colour = np.rint(dark_image(300, 40, seed=3) * 0.05).astype(np.uint8)
    assert is_gray(very_dark_colour, tolerance=2) and not decode(encode_image(very_dark_colour, "PNG"), LIMIT).grayscale


def test_make_gray_puts_the_luma_in_every_channel() -> None:
    colour = dark_image(300, 50, seed=4)
    expected = np.rint(colour.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    made = colour.copy()
    make_gray(made)
    assert (made[..., 0] == made[..., 1]).all() and (made[..., 1] == made[..., 2]).all()
    assert np.abs(made[..., 0].astype(int) - expected).max() <= 1  # float32 against float64 rounding
    already_gray = np.repeat(colour[..., :1], 3, axis=2)
    unchanged = already_gray.copy()
    make_gray(unchanged)
    np.testing.assert_array_equal(unchanged, already_gray)


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    samples = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    decoded = decode(png16(samples), LIMIT)
    assert decoded.rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_sixteen_bit_rgb_keeps_the_high_byte() -> None:
    samples = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3000
    decoded = decode(png16(samples), LIMIT)
    assert np.abs(decoded.rgb.astype(int) - samples / 257).max() <= 1


def test_cmyk_jpeg_converts_to_the_right_colours() -> None:
    rgb = dark_image(24, 32)
    cmyk_jpeg = encode_image(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    decoded = decode(cmyk_jpeg, LIMIT)
    assert decoded.rgb.shape == rgb.shape
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() < 4  # JPEG loss, not inverted or garbled


def test_rgb_icc_profile_is_kept_and_written_back() -> None:
    icc = srgb_icc_profile()
    decoded = decode(encode_image(dark_image(10, 10), "PNG", icc_profile=icc), LIMIT)
    assert decoded.icc_profile == icc
    for fmt in OutputFormat:
        spec = choose_output(fmt, None, decoded, 90)
        assert decode_image(encode(decoded.rgb, None, decoded.icc_profile, spec)).info.get("icc_profile") == icc


def test_unreadable_icc_profile_is_dropped() -> None:
    decoded = decode(encode_image(dark_image(10, 10), "PNG", icc_profile=b"not a profile"), LIMIT)
    assert decoded.icc_profile is None


def _decoded(source_format: str, alpha: bool) -> DecodedImage:
    rgb = dark_image(4, 4)
    return DecodedImage(rgb, rgb[..., 0] if alpha else None, None, source_format)


def test_output_format_defaults_and_alpha_rule() -> None:
    assert choose_output(None, None, _decoded("JPEG", False), 90).format is OutputFormat.jpeg
    assert choose_output(None, None, _decoded("TIFF", False), 90).format is OutputFormat.png
    assert choose_output(OutputFormat.webp, 40, _decoded("PNG", True), 90).quality == 40
    with pytest.raises(InvalidParameters):
        choose_output(OutputFormat.jpeg, None, _decoded("PNG", True), 90)


def test_encode_reattaches_alpha() -> None:
    decoded = _decoded("PNG", True)
    image = decode_image(encode(decoded.rgb, decoded.alpha, None, choose_output(None, None, decoded, 90)))
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[..., 3], decoded.alpha)
