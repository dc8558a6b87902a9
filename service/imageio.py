"""Safe decoding of untrusted uploads and encoding of results.

Decoding checks the format and the pixel count from the header before any pixel is decoded
(so a decompression bomb costs nothing), applies the EXIF orientation, and turns every accepted
pixel layout into 8-bit RGB plus an optional alpha plane: grayscale and palette are expanded,
16-bit samples are scaled (not clipped), CMYK is converted. Black-and-white uploads (a gray layout,
or RGB with equal channels) are marked, so their answer can be made gray again (``make_gray``). An
RGB ICC profile is carried to the output; profiles of other colour spaces (CMYK, gray) cannot
describe RGB pixels and are dropped.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image, ImageCms, ImageOps

from service.errors import InvalidImage, InvalidParameters, PayloadTooLarge, ServiceError, UnsupportedFormat
from service.exposure import LUMA_WEIGHTS

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
# Formats whose compression (usually lossy) smooths away the sensor noise that service.exposure
# reads the digital gain from: even JPEG quality 95 erases a dark capture's noise.
LOSSY_FORMATS = frozenset(("JPEG", "WEBP"))
SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
GRAY_MODES = frozenset(("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I"))
# Gray levels between the channels of a JPEG or WebP upload that is still black and white (chroma
# rounding); a lossless upload must have equal channels, since a very dark colour photo can have
# channels within a level or two of each other everywhere.
LOSSY_GRAY_TOLERANCE = 2
COPY_STRIP_ROWS = 256
# zlib level 3 encodes several times faster than Pillow's default 6 for a few percent more bytes.
PNG_COMPRESS_LEVEL = 3


class OutputFormat(str, Enum):
    """Encodings the service can answer with."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


@dataclass(frozen=True)
class DecodedImage:
    """An upright image as the model needs it, plus what the output must carry back."""

    rgb: np.ndarray  # H x W x 3 uint8
    alpha: np.ndarray | None  # H x W uint8, or None when the input had no transparency
    icc_profile: bytes | None  # an RGB profile, or None
    source_format: str  # Pillow's name: "JPEG", "PNG", ...
    grayscale: bool = False  # a black-and-white photo: gray pixel layout, or RGB with equal channels

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def lossy(self) -> bool:
        """Whether the upload's codec may have erased its noise (see ``LOSSY_FORMATS``)."""
        return self.source_format in LOSSY_FORMATS

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True)
class OutputSpec:
    format: OutputFormat
    quality: int


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode an upload; raises InvalidImage (400), PayloadTooLarge (413) or UnsupportedFormat (415)."""
    if not data:
        raise InvalidImage("the upload is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(str(error)) from error
    except Exception as error:  # Pillow raises many types for garbage; all mean "not an image"
        raise InvalidImage("the upload is not a recognizable image") from error
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise UnsupportedFormat(f"{image.format} is not accepted; send one of {', '.join(ACCEPTED_FORMATS)}")
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}")
        try:
            return _decode_pixels(image)
        except ServiceError:
            raise
        except Exception as error:
            raise InvalidImage(f"the {image.format} image could not be decoded: {error}") from error


def _decode_pixels(image: Image.Image) -> DecodedImage:
    if getattr(image, "n_frames", 1) > 1:
        raise UnsupportedFormat("animated and multi-page images are not supported")
    source_format = image.format or ""
    icc_profile = _rgb_profile_or_none(image.info.get("icc_profile"))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in SIXTEEN_BIT_GRAY_MODES:
        image = _sixteen_bit_gray_to_l(image)
    elif image.mode == "F":
        raise UnsupportedFormat("32-bit floating-point images are not supported")
    gray_layout = image.mode in GRAY_MODES
    alpha = None
    if image.has_transparency_data:
        image = image.convert("RGBA")
        alpha = np.asarray(image.getchannel("A"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    rgb = _rgb_array(image)
    tolerance = LOSSY_GRAY_TOLERANCE if source_format in LOSSY_FORMATS else 0
    return DecodedImage(rgb, alpha, icc_profile, source_format, gray_layout or is_gray(rgb, tolerance))


def is_gray(rgb: np.ndarray, tolerance: int = 0) -> bool:
    """Whether every pixel of H x W x 3 uint8 has its channels within ``tolerance`` gray levels of each
    other: a black-and-white photo stored as RGB."""
    for top in range(0, rgb.shape[0], COPY_STRIP_ROWS):
        strip = rgb[top : top + COPY_STRIP_ROWS].astype(np.int16)
        if np.abs(strip[..., 0] - strip[..., 1]).max(initial=0) > tolerance:
            return False
        if np.abs(strip[..., 1] - strip[..., 2]).max(initial=0) > tolerance:
            return False
    return True


def make_gray(rgb: np.ndarray) -> None:
    """Replace each pixel of H x W x 3 uint8 by its luma in all three channels, in place, in strips.

    The network was trained to remove the colour cast of dark captures; on a black-and-white photo,
    which has none, it adds one, so such uploads are answered in gray."""
    for top in range(0, rgb.shape[0], COPY_STRIP_ROWS):
        strip = rgb[top : top + COPY_STRIP_ROWS]
        strip[...] = np.rint(strip.astype(np.float32) @ LUMA_WEIGHTS)[..., None].clip(0, 255).astype(np.uint8)


def _rgb_array(image: Image.Image) -> np.ndarray:
    """Copy an RGB image into numpy in strips; np.asarray(image) would first build two full-size copies."""
    width, height = image.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, COPY_STRIP_ROWS):
        bottom = min(top + COPY_STRIP_ROWS, height)
        rgb[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return rgb


def _sixteen_bit_gray_to_l(image: Image.Image) -> Image.Image:
    """Scale 0..65535 to 0..255 with rounding; Pillow's own convert would clip everything above 255."""
    samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    return Image.fromarray(((samples * 255 + 32767) // 65535).astype(np.uint8))


def _rgb_profile_or_none(profile: bytes | None) -> bytes | None:
    """Keep an ICC profile only if it describes RGB data (the output is always RGB)."""
    if not profile:
        return None
    try:
        colour_space = ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space
    except Exception:  # a corrupt profile must not fail the request; the pixels are still fine
        log.info("dropping an unreadable ICC profile")
        return None
    return profile if colour_space.strip() == "RGB" else None


def choose_output(
    requested: OutputFormat | None, quality: int | None, decoded: DecodedImage, default_quality: int
) -> OutputSpec:
    """PNG by default, JPEG for JPEG input; JPEG cannot carry alpha, so that combination is refused."""
    output_format = requested or (OutputFormat.jpeg if decoded.source_format == "JPEG" else OutputFormat.png)
    if output_format is OutputFormat.jpeg and decoded.alpha is not None:
        raise InvalidParameters("this image has an alpha channel, which JPEG cannot store; ask for png or webp")
    return OutputSpec(output_format, quality or default_quality)


def encode(rgb: np.ndarray, alpha: np.ndarray | None, icc_profile: bytes | None, spec: OutputSpec) -> bytes:
    """Encode H x W x 3 uint8 (plus alpha) with the input's ICC profile. Quality applies to JPEG and WebP."""
    image = Image.fromarray(rgb)
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if spec.format is OutputFormat.png:
        options["compress_level"] = PNG_COMPRESS_LEVEL
    else:
        options["quality"] = spec.quality
    buffer = io.BytesIO()
    image.save(buffer, format=spec.format.value.upper(), **options)
    return buffer.getvalue()
