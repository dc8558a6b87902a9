"""Photos as phones and cameras make them, through a real server: HEIC and AVIF in and out, EXIF kept
(orientation reset, GPS dropped unless asked for), 16-bit PNG and TIFF kept at 16 bits, and the folder
CLI on the same files. Every upload is a real file written by the libraries (Pillow, pillow-heif,
imagecodecs, tifffile), never a hand-made header."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image
from service_helpers import GRACEFUL_EXIT_CODES, ServerProcess, dark_image, export_tiny_model, srgb_icc_profile

from service import cli, imageio

HEIGHT, WIDTH = 72, 96


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(model_path, tmp_path_factory.mktemp("logs") / "formats.log", self_ensemble=1).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _camera_exif(orientation: int = 1) -> Image.Exif:
    """What a phone writes: make, model, date taken, exposure, and where it was."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Canon", "EOS R6"
    exif[ExifTags.Base.Orientation] = orientation
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.DateTimeOriginal] = "2026:11:30 21:14:05"
    details[ExifTags.Base.ExposureTime] = 0.5
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", (48.0, 51.0, 29.0)
    gps[ExifTags.GPS.GPSLongitudeRef], gps[ExifTags.GPS.GPSLongitude] = "E", (2.0, 17.0, 40.0)
    return exif


def _saved(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _post(server: ServerProcess, data: bytes, name: str, **fields: str) -> tuple[Image.Image, dict[str, str]]:
    response = server.client.post("/enhance", files={"image": (name, data)}, data=fields)
    assert response.status_code == 200, response.text
    answer = Image.open(io.BytesIO(response.content))
    answer.load()
    return answer, dict(response.headers)


@pytest.mark.parametrize(
    ("fmt", "name", "answer_format", "media_type"),
    [
        ("HEIF", "IMG_0042.HEIC", "JPEG", "image/jpeg"),  # browsers cannot show HEIC
        ("AVIF", "night.avif", "AVIF", "image/avif"),
        ("JPEG", "night.jpg", "JPEG", "image/jpeg"),
        ("PNG", "night.png", "PNG", "image/png"),
        ("WEBP", "night.webp", "PNG", "image/png"),
    ],
)
def test_each_upload_format_gets_its_default_answer_upright(
    server: ServerProcess, fmt: str, name: str, answer_format: str, media_type: str
) -> None:
    """Stored sideways with EXIF orientation 6 (as phones do): the answer is upright, tagged 1."""
    sideways = dark_image(HEIGHT, WIDTH, seed=4)
    sideways[:8] = 200  # a bright band along the stored top, which is the right edge when upright
    upload = _saved(sideways, fmt, quality=90, exif=_camera_exif(6).tobytes())
    answer, headers = _post(server, upload, name)
    assert answer.format == answer_format and headers["content-type"] == media_type
    assert answer.size == (HEIGHT, WIDTH) and float(headers["x-strength"]) > 0  # upright, and enhanced
    exif = answer.getexif()
    assert exif.get(ExifTags.Base.Orientation, 1) == 1 and exif[ExifTags.Base.Make] == "Canon"  # AVIF drops a 1
    # Strength 0 answers the upload's own pixels: the band is on the right, where a viewer shows it.
    unchanged, _ = _post(server, upload, name, strength="0")
    pixels = np.asarray(unchanged.convert("RGB"), dtype=np.float32)
    assert unchanged.size == (HEIGHT, WIDTH) and pixels[:, -6:].mean() > pixels[:, :-10].mean() + 100


@pytest.mark.parametrize("requested", ["avif", "webp", "jpeg", "png"])
def test_every_answer_format_can_be_asked_for(server: ServerProcess, requested: str) -> None:
    upload = _saved(dark_image(HEIGHT, WIDTH, seed=5), "HEIF", quality=90)
    answer, headers = _post(server, upload, "IMG_0043.heic", format=requested)
    assert answer.format == requested.upper() and headers["content-type"] == f"image/{requested}"
    assert answer.size == (WIDTH, HEIGHT)


def test_exif_is_kept_without_gps_unless_asked(server: ServerProcess) -> None:
    upload = _saved(dark_image(HEIGHT, WIDTH, seed=6), "JPEG", quality=90, exif=_camera_exif().tobytes())
    answer, _ = _post(server, upload, "night.jpg")
    exif = answer.getexif()
    assert exif[ExifTags.Base.Make] == "Canon" and exif[ExifTags.Base.Model] == "EOS R6"
    details = exif.get_ifd(ExifTags.IFD.Exif)
    assert details[ExifTags.Base.DateTimeOriginal] == "2026:11:30 21:14:05"
    assert float(details[ExifTags.Base.ExposureTime]) == 0.5
    assert ExifTags.Base.GPSInfo not in exif and not exif.get_ifd(ExifTags.IFD.GPSInfo)
    kept, _ = _post(server, upload, "night.jpg", keep_gps="true")
    gps = kept.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[ExifTags.GPS.GPSLatitudeRef] == "N" and [float(v) for v in gps[ExifTags.GPS.GPSLatitude]] == [48, 51, 29]


def test_the_answer_carries_no_embedded_thumbnail() -> None:
    """IFD1 (the thumbnail's directory) of the upload is not written back: it shows the unenhanced photo.
    Pillow writes no IFD1, so this upload's EXIF is spelled out: IFD0 (Make) chained to an IFD1."""
    with_thumbnail = bytes.fromhex(  # little-endian TIFF header, IFD0 with Make, then IFD1 with one tag
        "49492a0008000000"
        + "0100"
        + "0f01020006000000"
        + "1a000000"
        + "20000000"
        + "43616e6f6e00"
        + "0100"
        + "0301030001000000"
        + "06000000"
        + "00000000"
    )
    exif = Image.Exif()
    exif.load(with_thumbnail)
    assert exif.get_ifd(ExifTags.IFD.IFD1)  # the upload has one
    written = Image.Exif()
    answer = imageio.answer_exif(exif, keep_gps=True)
    assert answer is not None
    written.load(answer)
    assert written[ExifTags.Base.Make] == "Canon" and not written.get_ifd(ExifTags.IFD.IFD1)


def _gradient16() -> np.ndarray:
    """A dark 16-bit gradient: thousands of levels below 8-bit level 64."""
    ramp = np.linspace(0, 16000, HEIGHT * WIDTH, dtype=np.float64).reshape(HEIGHT, WIDTH)
    return np.stack([ramp, ramp * 0.9, ramp * 0.8], axis=2).astype(np.uint16)


@pytest.mark.parametrize("container", ["PNG", "TIFF"])
def test_sixteen_bit_uploads_come_back_at_sixteen_bits(server: ServerProcess, container: str) -> None:
    samples = _gradient16()
    if container == "PNG":
        upload = bytes(imagecodecs.png_encode(samples))
    else:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, samples, photometric="rgb")
        upload = buffer.getvalue()
    response = server.client.post(
        "/enhance", files={"image": (f"raw.{container.lower()}", upload)}, data={"strength": "1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.content[24] == 16  # IHDR bit depth
    answer = imagecodecs.png_decode(response.content)
    assert answer.dtype == np.uint16 and answer.shape == (HEIGHT, WIDTH, 3)
    assert len(np.unique(answer)) > 256  # more levels than 8 bits can hold
    assert answer.astype(np.float64).mean() > samples.astype(np.float64).mean()  # it was enhanced
    # Strength 0 answers the upload itself, all 16 bits of it.
    unchanged = server.client.post("/enhance", files={"image": ("raw.png", upload)}, data={"strength": "0"})
    np.testing.assert_array_equal(imagecodecs.png_decode(unchanged.content), samples)


def test_sixteen_bit_png_answer_keeps_its_profile_and_exif() -> None:
    profile = srgb_icc_profile()
    exif = _camera_exif().tobytes()
    pixels = _gradient16().astype(np.float32) / 65535
    data = imageio.encode(pixels, None, profile, imageio.OutputSpec(imageio.OutputFormat.png, 90), exif)
    with Image.open(io.BytesIO(data)) as reopened:  # Pillow reads the chunks (at 8 bits)
        assert reopened.info["icc_profile"] == profile
        assert reopened.getexif()[ExifTags.Base.Make] == "Canon"
    np.testing.assert_array_equal(imagecodecs.png_decode(data), _gradient16())


def test_sixteen_bit_orientation_matches_the_eight_bit_path() -> None:
    samples = _gradient16()
    samples[:6] = 60000
    eight_bit = Image.fromarray((samples >> 8).astype(np.uint8))
    for orientation in range(1, 9):
        upright = imageio.upright(samples, orientation)
        expected = np.asarray(_turned_by_pillow(eight_bit, orientation))
        assert np.abs((upright >> 8).astype(int) - expected).max() == 0, orientation


def test_a_tiff_upload_carries_its_camera_tags_not_its_image_layout(server: ServerProcess) -> None:
    """A TIFF's first directory is its image layout as well as its EXIF: only the latter travels."""
    upload = _saved(dark_image(HEIGHT, WIDTH, seed=9), "TIFF", exif=_camera_exif().tobytes())
    assert 273 in Image.open(io.BytesIO(upload)).getexif()  # StripOffsets, in the upload's own record
    answer, _ = _post(server, upload, "scan.tif")
    exif = answer.getexif()
    assert answer.format == "PNG" and exif[ExifTags.Base.Make] == "Canon"
    assert not {256, 257, 258, 273, 279} & set(exif)  # width, height, bits, strips


def _turned_by_pillow(image: Image.Image, orientation: int) -> Image.Image:
    from PIL import ImageOps

    tagged = image.copy()
    tagged.getexif()[ExifTags.Base.Orientation] = orientation
    return ImageOps.exif_transpose(tagged)


def test_folder_cli_takes_heic_and_avif(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "phone"
    photos.mkdir()
    (photos / "IMG_1.HEIC").write_bytes(_saved(dark_image(HEIGHT, WIDTH, seed=7), "HEIF", quality=90))
    (photos / "IMG_2.avif").write_bytes(_saved(dark_image(HEIGHT, WIDTH, seed=8), "AVIF", quality=90))
    monkeypatch.setenv("FRLIE_MODEL_PATH", str(model_path))
    monkeypatch.setenv("FRLIE_PROVIDERS", "CPUExecutionProvider")
    assert cli.main(["enhance", str(photos), "-o", str(tmp_path / "out")]) == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*"))
    assert written == ["IMG_1.jpg", "IMG_2.avif"]
    for path in (tmp_path / "out").iterdir():
        with Image.open(path) as answer:
            assert answer.size == (WIDTH, HEIGHT)
