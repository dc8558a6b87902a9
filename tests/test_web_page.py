"""The web page at / in a real browser: Debian's chromium driven by Playwright, a real server on loopback."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import require_tool
from PIL import Image
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    ServerProcess,
    animated_gif,
    dark_image,
    encode_image,
    export_tiny_model,
)

from bench import REPO_ROOT
from model.contract import BUNDLED_MODEL_PATH

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is a dev dependency (pip install -e .[dev])"
)

pytestmark = pytest.mark.timeout(180)
MAX_UPLOAD_BYTES = 400 * 1024
SCREENSHOT = REPO_ROOT / "docs" / "web-page.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The bundled model, as `make serve` runs it: the screenshot shows a real enhancement."""
    running = ServerProcess(
        BUNDLED_MODEL_PATH, tmp_path_factory.mktemp("logs") / "web.log", max_upload_bytes=MAX_UPLOAD_BYTES
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_tool("chromium", "run .ci/install-test-tools.sh (Debian package `chromium`)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@contextmanager
def _open_page(browser: object, server: ServerProcess) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    console_errors: list[str] = []
    opened.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    opened.goto(f"http://127.0.0.1:{server.port}/")
    playwright_api.expect(opened.locator("#status")).to_contain_text("Ready", timeout=30_000)
    yield opened
    context.close()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors


@pytest.fixture()
def page(browser: object, server: ServerProcess) -> Iterator[object]:
    with _open_page(browser, server) as opened:
        yield opened


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny test model in 32 px tiles, one pass: a 600x800 photo is ~500 windows, a few seconds."""
    model = export_tiny_model(tmp_path_factory.getbasetemp())
    running = ServerProcess(model, tmp_path_factory.mktemp("logs") / "jobs.log", tile_size=32, self_ensemble=1)
    yield running.start()
    assert running.stop() in GRACEFUL_EXIT_CODES


@pytest.fixture()
def jobs_page(browser: object, jobs_server: ServerProcess) -> Iterator[object]:
    with _open_page(browser, jobs_server) as opened:
        yield opened


def _photo(tmp_path: Path, data: Path | None) -> Path:
    """A real low-light photo from lol-pairs when FRLIE_DATA is set, else a synthetic dim image."""
    if data is not None:
        source = sorted((data / "val" / "low").glob("*.png"))[0]
        image = np.asarray(Image.open(source).convert("RGB"))[:200, :300]
    else:
        image = dark_image(200, 300, seed=3)
    path = tmp_path / "evening walk.png"
    path.write_bytes(encode_image(image, "PNG"))
    return path


@pytest.fixture()
def lol_data() -> Path | None:
    import os

    value = os.environ.get("FRLIE_DATA")
    return Path(value) if value and (Path(value) / "val" / "low").is_dir() else None


def test_page_and_static_files_carry_security_headers(server: ServerProcess) -> None:
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "img-src 'self' blob: data:" in policy and "default-src 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = server.client.get("/static/app.js")
    assert script.status_code == 200 and script.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text.replace('<script src="static/app.js" defer></script>', "")  # no inline code
    assert "http://" not in page.text and "https://" not in page.text  # nothing from other origins
    assert "content-security-policy" not in server.client.get("/docs").headers  # Swagger UI keeps its CDN


def test_web_ui_can_be_turned_off(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = export_tiny_model(tmp_path_factory.getbasetemp())
    with ServerProcess(model, tmp_path_factory.mktemp("logs") / "off.log", web_ui="false") as running:
        assert running.client.get("/").status_code == 404
        assert running.client.get("/static/app.js").status_code == 404
        assert running.client.get("/healthz").status_code == 200


def test_upload_compare_and_download(
    page: object, server: ServerProcess, tmp_path: Path, lol_data: Path | None
) -> None:
    photo = _photo(tmp_path, lol_data)
    playwright_api.expect(page.locator("#limits")).to_contain_text("400 KB")
    page.set_input_files("#file-input", str(photo))
    playwright_api.expect(page.locator("#file-name")).to_contain_text(photo.name)
    page.click("#enhance")
    playwright_api.expect(page.locator("#result-section")).to_be_visible(timeout=60_000)
    playwright_api.expect(page.locator("#status")).to_contain_text("Done: 300 × 200", timeout=30_000)
    shown = page.evaluate(
        "[document.getElementById('after').naturalWidth, document.getElementById('after').naturalHeight]"
    )
    assert shown == [300, 200]
    before = page.evaluate(
        "[document.getElementById('before').naturalWidth, document.getElementById('before').naturalHeight]"
    )
    assert before == [300, 200]
    details = page.locator("#details").inner_text()
    version = server.readyz()["model_version"]
    assert version in details and "CPU" in details and "Strength applied" in details
    assert "Exposure gain before the model" in details
    assert "Model passes averaged (flipped copies)\n8" in details  # 300 x 200 fits 8 passes in the CPU budget

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == "evening walk-enhanced.png"
    result = Image.open(io.BytesIO(Path(download.path()).read_bytes()))
    assert result.size == (300, 200)
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(result.convert("RGB"), dtype=np.int16) - original).mean() > 1  # it changed

    page.fill("#reveal", "30")
    page.dispatch_event("#reveal", "input")
    assert page.evaluate("document.getElementById('before-clip').style.width") == "30%"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_manual_strength_zero_returns_the_photo(page: object, tmp_path: Path) -> None:
    photo = tmp_path / "dim.png"
    photo.write_bytes(encode_image(dark_image(60, 80, seed=9), "PNG"))
    page.set_input_files("#file-input", str(photo))
    page.uncheck("#strength-auto")
    page.fill("#strength", "0")
    page.dispatch_event("#strength", "input")
    playwright_api.expect(page.locator("#strength-value")).to_have_text("0.00")
    page.click("#enhance")
    playwright_api.expect(page.locator("#details")).to_contain_text("0.000", timeout=30_000)


def test_auto_says_when_a_bright_photo_comes_back_unchanged(page: object, tmp_path: Path) -> None:
    """A well-exposed photo under strength=auto is answered with itself: the page says why."""
    rng = np.random.default_rng(5)
    bright = np.clip(150 + rng.normal(0, 1.5, (60, 80, 3)), 0, 255).astype(np.uint8)  # clean, as well-lit photos are
    photo = tmp_path / "sunny.png"
    photo.write_bytes(encode_image(bright, "PNG"))
    page.set_input_files("#file-input", str(photo))
    page.click("#enhance")
    playwright_api.expect(page.locator("#status")).to_contain_text("came back unchanged", timeout=30_000)
    playwright_api.expect(page.locator("#details")).to_contain_text("0.000")


def test_unsupported_file_shows_a_readable_error(page: object, tmp_path: Path) -> None:
    gif = tmp_path / "<img src=x onerror=alert(1)>.gif"
    gif.write_bytes(animated_gif())
    page.set_input_files("#file-input", str(gif))
    playwright_api.expect(page.locator("#file-name")).to_contain_text("<img src=x onerror=alert(1)>.gif")
    assert page.locator("#file-name img").count() == 0  # shown as text, never parsed as markup
    page.click("#enhance")
    error = page.locator("#error")
    playwright_api.expect(error).to_be_visible(timeout=30_000)
    playwright_api.expect(error).to_contain_text("not supported")
    assert "{" not in error.inner_text()  # a sentence, not a JSON dump


def test_too_large_upload_shows_the_413_message(page: object, tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # PNG ~480 KB
    big = tmp_path / "big.png"
    big.write_bytes(encode_image(noisy, "PNG"))
    assert big.stat().st_size > MAX_UPLOAD_BYTES
    page.set_input_files("#file-input", str(big))
    playwright_api.expect(page.locator("#error")).to_contain_text("accepts up to")  # warned before sending
    page.click("#enhance")
    playwright_api.expect(page.locator("#error")).to_contain_text("too large", timeout=30_000)


def test_a_heic_photo_shows_before_and_after(page: object, tmp_path: Path) -> None:
    """Chromium cannot show HEIC (iPhone's default): the page asks the service for the upload itself
    (strength 0, as PNG) for the "before" side, and the answer comes back as a JPEG."""
    photo = tmp_path / "IMG_0042.HEIC"
    buffer = io.BytesIO()
    Image.fromarray(dark_image(90, 120, seed=11)).save(buffer, format="HEIF", quality=90)
    photo.write_bytes(buffer.getvalue())
    page.set_input_files("#file-input", str(photo))
    page.click("#enhance")
    playwright_api.expect(page.locator("#status")).to_contain_text("Done: 120 × 90", timeout=60_000)
    size = "[document.getElementById('{}').naturalWidth, document.getElementById('{}').naturalHeight]"
    page.wait_for_function(f"{size.format('before', 'before')}.join() === '120,90'", timeout=30_000)
    assert page.evaluate(size.format("after", "after")) == [120, 90]
    assert page.locator("#download").get_attribute("download") == "IMG_0042-enhanced.jpg"


def _job_rows(page: object) -> list[dict[str, object]]:
    """Status, progress bar value and state text of every row of the queue."""
    rows: list[dict[str, object]] = page.evaluate(
        "[...document.querySelectorAll('#queue li')].map(li => ({status: li.dataset.status || '', "
        "value: li.querySelector('progress').value, text: li.querySelector('.job-state').textContent}))"
    )
    return rows


def test_several_photos_are_queued_each_with_its_own_progress(
    jobs_page: object, jobs_server: ServerProcess, tmp_path: Path
) -> None:
    """Three photos dropped at once become three jobs: each row shows its own real progress (model
    windows done, with an ETA) while it runs, another waits queued, and each ends done with its result."""
    photos = []
    for index in range(3):
        photo = tmp_path / f"night {index}.png"
        photo.write_bytes(encode_image(dark_image(600, 800, seed=20 + index), "PNG"))
        photos.append(str(photo))
    jobs_page.set_input_files("#file-input", photos)
    jobs_page.click("#enhance")
    rows = jobs_page.locator("#queue li")
    playwright_api.expect(rows).to_have_count(3)
    for index, row in enumerate(rows.all()):
        playwright_api.expect(row.locator(".job-name")).to_have_text(f"night {index}.png")
    running: dict[str, set[float]] = {}  # per row: the partial progress values its bar showed
    eta_shown = queued_shown = False
    for _ in range(600):  # bounded: about 60 s
        states = _job_rows(jobs_page)
        for index, row in enumerate(states):
            if row["status"] == "running" and 0 < float(row["value"]) < 1:  # type: ignore[arg-type]
                running.setdefault(str(index), set()).add(float(row["value"]))  # type: ignore[arg-type]
                eta_shown |= re.fullmatch(r"enhancing \d+%, about \d+ s left", str(row["text"])) is not None
        queued_shown |= any(row["status"] == "queued" and "queued" in str(row["text"]) for row in states)
        if all(row["status"] == "done" for row in states):
            break
        jobs_page.wait_for_timeout(100)
    states = _job_rows(jobs_page)
    assert [row["status"] for row in states] == ["done"] * 3, states
    assert [row["value"] for row in states] == [1, 1, 1]
    assert eta_shown and queued_shown, (eta_shown, queued_shown)
    assert max(len(values) for values in running.values()) >= 3, running  # a bar moved through several values
    assert jobs_page.locator("#queue .job-show").count() == 3
    playwright_api.expect(jobs_page.locator("#status")).to_contain_text("Done: 800 × 600", timeout=30_000)


def test_cancel_stops_a_running_job(jobs_page: object, jobs_server: ServerProcess, tmp_path: Path) -> None:
    photo = tmp_path / "long night.png"
    photo.write_bytes(encode_image(dark_image(1200, 1600, seed=30), "PNG"))
    jobs_page.set_input_files("#file-input", str(photo))
    jobs_page.click("#enhance")
    row = jobs_page.locator("#queue li").first
    playwright_api.expect(row).to_have_attribute("data-status", "running", timeout=60_000)
    row.locator(".job-cancel").click()
    playwright_api.expect(row).to_have_attribute("data-status", "cancelled", timeout=10_000)
    playwright_api.expect(row.locator(".job-state")).to_have_text("cancelled")
    job = jobs_server.client.get(f"/jobs/{row.get_attribute('data-job-id')}").json()
    assert job["status"] == "cancelled" and job["progress"] < 1
    jobs_server.wait_for_metric("frlie_jobs_running", 0, timeout=10)
