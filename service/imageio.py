"""Safe decoding of untrusted uploads and encoding of results.

Decoding checks the format and the pixel count from the header before any pixel is decoded
(so a decompression bomb costs nothing), applies the EXIF orientation, and turns every accepted
pixel layout into 8-bit RGB plus an optional alpha plane: grayscale and palette are expanded,
16-bit gray samples are scaled (not clipped), CMYK is converted. Black-and-white uploads (a gray
layout, or RGB with equal channels) are marked, so their answer can be made gray again
(``make_gray``). An RGB ICC profile is carried to the output; profiles of other colour spaces (CMYK,
gray) cannot describe RGB pixels and are dropped.

Formats: JPEG, PNG, WebP, BMP, TIFF, AVIF (Pillow) and HEIC/HEIF (the pillow-heif plugin), which
phones write. A 16-bit RGB PNG or TIFF (what RAW developers export) is also decoded at 16 bits
(``DecodedImage.deep``, through imagecodecs / tifffile: Pillow reads such files at 8 bits), so the
model gets its full precision and a PNG answer keeps 16 bits.

Metadata (``answer_exif``): the answer keeps the upload's EXIF (camera, dates, exposure...), with the
orientation reset (the pixels are upright now) and without the embedded thumbnail (it shows the
unenhanced photo) or, unless asked to keep it, the GPS position: a shared service should not
republish where a photo was taken.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import ModuleType

import numpy as np
import tifffile
from PIL import ExifTags, Image, ImageCms, ImageOps
from pillow_heif import register_heif_opener

from service.errors import InvalidImage, InvalidParameters, PayloadTooLarge, ServiceError, UnsupportedFormat
from service.exposure import LUMA_WEIGHTS

log = logging.getLogger(__name__)

register_heif_opener()  # HEIC / HEIF through Image.open, with Pillow's limits and checks
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
# Formats whose compression (usually lossy) smooths away the sensor noise that service.exposure
# reads the digital gain from: even JPEG quality 95 erases a dark capture's noise.
LOSSY_FORMATS = frozenset(("JPEG", "WEBP", "AVIF", "HEIF"))
DEEP_MAX = 65535.0  # the largest 16-bit sample
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
    avif = "avif"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


@dataclass(frozen=True)
class DecodedImage:
    """An upright image as the model needs it, plus what the output must carry back."""

    rgb: np.ndarray  # H x W x 3 uint8 (what the policy reads, and the pixels of 8-bit uploads)
    alpha: np.ndarray | None  # H x W uint8, or None when the input had no transparency
    icc_profile: bytes | None  # an RGB profile, or None
    source_format: str  # Pillow's name: "JPEG", "PNG", ...
    grayscale: bool = False  # a black-and-white photo: gray pixel layout, or RGB with equal channels
    exif: bytes | None = None  # what the answer carries (``answer_exif``), or None
    deep: np.ndarray | None = None  # H x W x 3 float32 in [0, 1] at 16-bit precision (16-bit uploads)

    @property
    def pixels(self) -> np.ndarray:
        """What the model runs on: the 16-bit pixels where the upload has them, else the 8-bit ones."""
        return self.rgb if self.deep is None else self.deep

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


def open_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Open an upload and check what its header claims (format, pixels) before any pixel is decoded, so
    a job is refused at submission as /enhance would refuse it: InvalidImage (400), PayloadTooLarge
    (413) or UnsupportedFormat (415). The caller closes the image."""
    if not data:
        raise InvalidImage("the upload is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(str(error)) from error
    except Exception as error:  # Pillow raises many types for garbage; all mean "not an image"
        raise InvalidImage("the upload is not a recognizable image") from error
    width, height = image.size
    if image.format not in ACCEPTED_FORMATS:
        image.close()
        raise UnsupportedFormat(f"{image.format} is not accepted; send one of {', '.join(ACCEPTED_FORMATS)}")
    if width * height > max_pixels:
        image.close()
        raise PayloadTooLarge(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}")
    return image


def check_upload(data: bytes, max_pixels: int) -> None:
    """``open_upload``'s checks alone."""
    open_upload(data, max_pixels).close()


def decode(data: bytes, max_pixels: int, keep_gps: bool = False) -> DecodedImage:
    """Decode an upload; raises InvalidImage (400), PayloadTooLarge (413) or UnsupportedFormat (415).
    ``keep_gps`` keeps the GPS position in the EXIF the answer carries (dropped by default)."""
    with open_upload(data, max_pixels) as image:
        try:
            return _decode_pixels(image, data, keep_gps)
        except ServiceError:
            raise
        except Exception as error:
            raise InvalidImage(f"the {image.format} image could not be decoded: {error}") from error


def _decode_pixels(image: Image.Image, data: bytes, keep_gps: bool) -> DecodedImage:
    if getattr(image, "n_frames", 1) > 1:
        raise UnsupportedFormat("animated and multi-page images are not supported")
    source_format = image.format or ""
    icc_profile = _rgb_profile_or_none(image.info.get("icc_profile"))
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    exif = answer_exif(image.getexif(), keep_gps)
    deep = _sixteen_bit_rgb(image, data)
    if deep is not None:
        return _deep_image(upright(deep, orientation), icc_profile, source_format, exif)
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
    return DecodedImage(rgb, alpha, icc_profile, source_format, gray_layout or is_gray(rgb, tolerance), exif)


# IFD0 tags the answer does not carry over: pointers to sub-IFDs (copied as records below), the
# layout of the upload's own pixel data (a TIFF upload's IFD0 is its image directory), its ICC
# profile (carried separately) and XMP (which may hold the GPS position too).
NOT_CARRIED_TAGS = frozenset(
    (
        ExifTags.IFD.Exif,
        ExifTags.IFD.GPSInfo,
        *(256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 338, 339),
        *(513, 514, 530, 531, 532, 700, 34675),
    )
)


def answer_exif(exif: Image.Exif, keep_gps: bool) -> bytes | None:
    """The upload's EXIF as the answer carries it: IFD0 and the Exif sub-IFD (camera, dates, exposure)
    copied into a new record with the orientation reset (the answer's pixels are upright), without the
    thumbnail's IFD1 (it shows the unenhanced photo) and without GPS unless ``keep_gps``.

    A new record rather than edits: Pillow writes back every sub-IFD it has loaded, even one whose
    pointer was deleted."""
    if not exif:
        return None
    answer = Image.Exif()
    for tag, value in exif.items():
        if tag not in NOT_CARRIED_TAGS:
            answer[tag] = value
    answer[ExifTags.Base.Orientation] = 1
    details = dict(exif.get_ifd(ExifTags.IFD.Exif))
    if ExifTags.IFD.Interop in details:  # a pointer into the old record: copy what it points at
        details[ExifTags.IFD.Interop] = dict(exif.get_ifd(ExifTags.IFD.Interop))
    if details:
        answer[ExifTags.IFD.Exif] = details
    gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo)) if keep_gps else {}
    if gps:
        answer[ExifTags.IFD.GPSInfo] = gps
    return answer.tobytes()


def _codecs() -> ModuleType:
    """imagecodecs, imported on the first 16-bit PNG: its 26 MB of codec libraries are not loaded by
    every process that imports the service (the training CLI, the GPU check on a lent machine)."""
    import imagecodecs

    return imagecodecs


def _sixteen_bit_rgb(image: Image.Image, data: bytes) -> np.ndarray | None:
    """The samples of a 16-bit RGB(A) PNG or TIFF, H x W x C uint16 as stored; None for other uploads."""
    if image.format == "PNG" and data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x06"):  # IHDR depth, colour
        samples: np.ndarray = _codecs().png_decode(data)
    elif image.format == "TIFF" and _tiff_sample_bits(image) == (16, 16, 16):
        samples = tifffile.imread(io.BytesIO(data))
    else:
        return None
    if samples.dtype != np.uint16 or samples.ndim != 3 or samples.shape[2] not in (3, 4):
        raise UnsupportedFormat(f"16-bit images must be RGB or RGBA; this one is {samples.dtype} {samples.shape}")
    return samples


def _tiff_sample_bits(image: Image.Image) -> tuple[int, ...]:
    bits = getattr(image, "tag_v2", {}).get(258, ())  # BitsPerSample
    return tuple(bits)[:3] if isinstance(bits, tuple) else (int(bits),)


def _deep_image(samples: np.ndarray, icc_profile: bytes | None, source_format: str, exif: bytes | None) -> DecodedImage:
    """A 16-bit upload: float pixels for the model, 8-bit ones for the policy's readings."""
    deep = samples[..., :3].astype(np.float32) / np.float32(DEEP_MAX)
    rgb = np.rint(deep * np.float32(255.0)).astype(np.uint8)
    alpha = None
    if samples.shape[2] == 4:
        alpha = np.rint(samples[..., 3].astype(np.float32) * np.float32(255.0 / DEEP_MAX)).astype(np.uint8)
    return DecodedImage(rgb, alpha, icc_profile, source_format, is_gray(rgb), exif, deep)


# EXIF orientation -> the array operation that undoes it (as ImageOps.exif_transpose does for images).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    8: lambda a: np.rot90(a, 1),
}


def upright(samples: np.ndarray, orientation: int) -> np.ndarray:
    """H x W x C samples turned as the EXIF ``orientation`` says a viewer shows them."""
    operation = _UPRIGHT.get(orientation)
    return np.ascontiguousarray(samples if operation is None else operation(samples))


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
    """Replace each pixel of H x W x 3 (uint8, or float in [0, 1]) by its luma in all three channels, in
    place, in strips.

    The network was trained to remove the colour cast of dark captures; on a black-and-white photo,
    which has none, it adds one, so such uploads are answered in gray."""
    for top in range(0, rgb.shape[0], COPY_STRIP_ROWS):
        strip = rgb[top : top + COPY_STRIP_ROWS]
        luma = (strip.astype(np.float32) @ LUMA_WEIGHTS)[..., None]
        strip[...] = np.rint(luma).clip(0, 255).astype(np.uint8) if rgb.dtype == np.uint8 else luma


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


# JPEG/WebP/AVIF quality when a request names none: each request can name its own, so this is no setting.
DEFAULT_QUALITY = 90


def choose_output(
    requested: OutputFormat | None, quality: int | None, decoded: DecodedImage, default_quality: int = DEFAULT_QUALITY
) -> OutputSpec:
    """By default the upload's own kind of file: JPEG for JPEG, AVIF for AVIF, JPEG for HEIC (which
    browsers cannot show; PNG where it has transparency), PNG otherwise. JPEG cannot carry alpha, so
    asking for that combination is refused."""
    if requested is None:
        requested = DEFAULT_OUTPUT.get(decoded.source_format, OutputFormat.png)
        if requested is OutputFormat.jpeg and decoded.alpha is not None:
            requested = OutputFormat.png
    if requested is OutputFormat.jpeg and decoded.alpha is not None:
        raise InvalidParameters("this image has an alpha channel, which JPEG cannot store; ask for png, webp or avif")
    return OutputSpec(requested, quality or default_quality)


DEFAULT_OUTPUT = {"JPEG": OutputFormat.jpeg, "AVIF": OutputFormat.avif, "HEIF": OutputFormat.jpeg}


def encode(
    pixels: np.ndarray,
    alpha: np.ndarray | None,
    icc_profile: bytes | None,
    spec: OutputSpec,
    exif: bytes | None = None,
) -> bytes:
    """Encode H x W x 3 pixels (plus alpha) with the input's ICC profile and EXIF. uint8 pixels give an
    8-bit file; float ones (a 16-bit upload's answer, in [0, 1]) a 16-bit PNG, or 8 bits in formats
    without 16-bit samples. Quality applies to JPEG, WebP and AVIF."""
    if pixels.dtype != np.uint8:
        if spec.format is OutputFormat.png:
            return _sixteen_bit_png(pixels, alpha, icc_profile, exif)
        pixels = np.rint(np.clip(pixels, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    image = Image.fromarray(pixels)
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    if spec.format is OutputFormat.png:
        options["compress_level"] = PNG_COMPRESS_LEVEL
    else:
        options["quality"] = spec.quality
    buffer = io.BytesIO()
    image.save(buffer, format=spec.format.value.upper(), **options)
    return buffer.getvalue()


def _sixteen_bit_png(
    pixels: np.ndarray, alpha: np.ndarray | None, icc_profile: bytes | None, exif: bytes | None
) -> bytes:
    """A 16-bit RGB(A) PNG (imagecodecs; Pillow writes 16 bits for gray only) with the profile and
    EXIF added as the PNG chunks iCCP and eXIf, which imagecodecs does not write."""
    samples = np.rint(np.clip(pixels, 0.0, 1.0) * np.float32(DEEP_MAX)).astype(np.uint16)
    if alpha is not None:
        samples = np.dstack([samples, alpha.astype(np.uint16) * np.uint16(257)])
    png = bytes(_codecs().png_encode(samples, level=PNG_COMPRESS_LEVEL))
    chunks = []
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    header_end = 8 + 8 + 13 + 4  # signature, then IHDR (length, type, 13 bytes, CRC): ancillary chunks follow
    return png[:header_end] + b"".join(chunks) + png[header_end:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data (PNG specification, section 5.3)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
