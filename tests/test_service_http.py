"""The service end to end: real uvicorn on loopback, a real ORT session on a tiny exported model."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    TINY_MODEL_VERSION,
    ServerProcess,
    animated_gif,
    dark_image,
    decode_image,
    decompression_bomb_png,
    encode_image,
    exif_rotated_jpeg,
    export_tiny_model,
    png16,
    reference_enhance,
    srgb_icc_profile,
)

from service.tiling import plan_tiles

pytestmark = pytest.mark.timeout(120)
MAX_UPLOAD_BYTES = 1_000_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Batching on, small tiles (so a 600 x 400 image is tiled), small limits (so they are cheap to hit);
    the tiny model carries no calibrated policy, so `auto` answers are the model output itself. One model
    pass per image, so tile and batch counts are the plan's (test_service_ensemble covers the passes)."""
    running = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("logs") / "main.log",
        tile_size=64,
        self_ensemble=1,
        max_batch_size=4,
        max_batch_delay_ms=50,
        queue_size=32,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_pixels=MAX_PIXELS,
        request_timeout_s=60,
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


@pytest.fixture(scope="module")
def strict_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One request at a time, a 1 s timeout, batching off, one model pass per image."""
    running = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("logs") / "strict.log",
        tile_size=64,
        self_ensemble=1,
        queue_size=1,
        request_timeout_s=1.0,
        max_batch_size=1,
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _post(server: ServerProcess, data: bytes, filename: str = "in.png", **fields: str) -> httpx.Response:
    return server.client.post("/enhance", files={"image": (filename, data)}, data=fields)


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["detail"]


# --- operations endpoints -------------------------------------------------------------------


def test_health_readiness_and_docs(server: ServerProcess) -> None:
    assert server.client.get("/healthz").json() == {"status": "alive"}
    ready = server.client.get("/readyz").json()
    assert ready["model_version"] == TINY_MODEL_VERSION
    # CUDA is requested first by default; with no GPU here ORT falls back and the service says so.
    assert ready["execution_provider"] == "CPUExecutionProvider" == ready["providers"][0]
    assert ready["receptive_radius"] == 51 and ready["tile_shape"] == [168, 168]
    assert ready["settings"]["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert server.client.get("/docs").status_code == 200
    spec = server.client.get("/openapi.json").json()["paths"]["/enhance"]["post"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(spec["responses"])
    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert server.metric("frlie_model_info", version=TINY_MODEL_VERSION, provider="CPUExecutionProvider") == 1
    # No siblings beside the tiny model: `auto` has nothing to race and says so, in /readyz and the metric.
    choice = ready["precision_choice"]
    assert choice["mode"] == "auto" and choice["choice"] == "fp32"
    assert choice["race_seconds"] is None and "only eligible" in choice["reason"]
    assert {c["precision"]: c["why"] for c in choice["candidates"]} == {
        "fp32": "",
        "int8": "no such file",
        "fp16": "fp16 files are for CUDAExecutionProvider / TensorrtExecutionProvider, not CPUExecutionProvider",
    }
    assert server.metric("frlie_model_info", precision="fp32", precision_mode="auto") == 1


# --- successful enhancement -----------------------------------------------------------------


def test_tiled_request_matches_the_whole_image_reference(server: ServerProcess, model_path: Path) -> None:
    image = dark_image(400, 600, seed=5)
    response = _post(server, encode_image(image, "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == TINY_MODEL_VERSION
    assert response.headers["x-execution-provider"] == "CPUExecutionProvider"
    assert int(response.headers["x-tile-count"]) == 40
    assert float(response.headers["x-inference-time-ms"]) > 0
    output = decode_image(response.content)
    assert output.mode == "RGB" and output.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(output), reference_enhance(model_path, image, passes=1))


def test_output_format_follows_input_and_parameters(server: ServerProcess) -> None:
    jpeg = encode_image(dark_image(48, 64), "JPEG")
    assert _post(server, jpeg, "in.jpg").headers["content-type"] == "image/jpeg"
    as_webp = server.client.post("/enhance?format=webp&quality=50", files={"image": ("in.jpg", jpeg)})
    assert as_webp.headers["content-type"] == "image/webp"
    assert decode_image(as_webp.content).format == "WEBP"
    small = _post(server, jpeg, "in.jpg", quality="10").content
    large = _post(server, jpeg, "in.jpg", quality="95").content
    assert len(small) < len(large)


def test_exif_rotated_jpeg_comes_back_upright(server: ServerProcess) -> None:
    response = _post(server, exif_rotated_jpeg(dark_image(40, 80), orientation=6), "in.jpg")
    assert response.status_code == 200
    output = decode_image(response.content)
    assert output.size == (40, 80)  # upright: 40 wide, 80 high
    assert output.getexif().get(0x0112) == 1  # the pixels are upright: the tag is reset, not left at 6


def test_rgba_keeps_alpha_and_icc_profile(server: ServerProcess, model_path: Path) -> None:
    rgb = dark_image(48, 64, seed=2)
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    icc = srgb_icc_profile()
    response = _post(server, encode_image(np.dstack([rgb, alpha]), "PNG", icc_profile=icc))
    assert response.status_code == 200
    output = decode_image(response.content)
    assert output.mode == "RGBA" and output.info.get("icc_profile") == icc
    np.testing.assert_array_equal(np.asarray(output)[..., 3], alpha)
    np.testing.assert_array_equal(np.asarray(output)[..., :3], reference_enhance(model_path, rgb, passes=1))


def _gray_of(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of H x W x 3 uint8 in all three channels, rounded (float64, independent of the service)."""
    luma = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=2)


def test_sixteen_bit_png_is_scaled_before_enhancing(server: ServerProcess, model_path: Path) -> None:
    gray8 = dark_image(40, 48)[..., 0]
    response = _post(server, png16(gray8.astype(np.uint16) * 257))
    assert response.status_code == 200
    expected = _gray_of(reference_enhance(model_path, np.repeat(gray8[..., None], 3, axis=2), passes=1))
    assert np.abs(np.asarray(decode_image(response.content)).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("layout", ["L", "RGB"])
def test_black_and_white_photos_come_back_gray(server: ServerProcess, model_path: Path, layout: str) -> None:
    """The network adds a colour cast to photos without one: a gray upload gets the luma of its answer."""
    gray = dark_image(60, 80, seed=9)[..., 1]
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    response = _post(server, encode_image(gray if layout == "L" else as_rgb, "PNG"))
    assert response.status_code == 200, response.text
    output = np.asarray(decode_image(response.content).convert("RGB")).astype(int)
    assert (output[..., 0] == output[..., 1]).all() and (output[..., 1] == output[..., 2]).all()
    colour_answer = reference_enhance(model_path, as_rgb, passes=1)
    assert np.abs(colour_answer[..., 0].astype(int) - colour_answer[..., 2]).max() > 5  # the tint it removes
    assert np.abs(output - _gray_of(colour_answer)).max() <= 1  # float32 in the service, float64 here


def test_cmyk_jpeg_is_enhanced_as_rgb(server: ServerProcess) -> None:
    cmyk = Image.fromarray(dark_image(40, 56)).convert("CMYK")
    response = _post(server, encode_image(cmyk, "JPEG"), "in.jpg")
    assert response.status_code == 200
    output = decode_image(response.content)
    assert output.mode == "RGB" and output.size == (56, 40)


# --- every error path with real malformed bytes --------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fields", "status", "code"),
    [
        (b"", {}, 400, "invalid_image"),
        (b"just some text, definitely not pixels\n" * 20, {}, 400, "invalid_image"),
        (encode_image(dark_image(64, 64), "PNG")[:400], {}, 400, "invalid_image"),
        (decompression_bomb_png(), {}, 413, "payload_too_large"),
        (encode_image(np.zeros((2000, 2500, 3), np.uint8), "PNG"), {}, 413, "payload_too_large"),
        (animated_gif(), {}, 415, "unsupported_format"),
        (encode_image(dark_image(32, 32), "PNG"), {"format": "gif"}, 422, "invalid_parameters"),
        (encode_image(dark_image(32, 32), "PNG"), {"quality": "0"}, 422, "invalid_parameters"),
        (encode_image(dark_image(32, 32), "PNG"), {"quality": "high"}, 422, "invalid_parameters"),
        (encode_image(np.zeros((32, 32, 4), np.uint8), "PNG"), {"format": "jpeg"}, 422, "invalid_parameters"),
    ],
    ids=[
        "zero-bytes",
        "text",
        "truncated-png",
        "bomb-header",
        "huge-dimensions",
        "animated-gif",
        "bad-format",
        "quality-zero",
        "quality-text",
        "jpeg-with-alpha",
    ],
)
def test_malformed_uploads_get_json_errors(
    server: ServerProcess, payload: bytes, fields: dict[str, str], status: int, code: str
) -> None:
    _assert_error(_post(server, payload, **fields), status, code)
    assert server.process.poll() is None


def test_too_many_bytes_is_refused_while_reading(server: ServerProcess) -> None:
    oversized = np.random.default_rng(0).bytes(MAX_UPLOAD_BYTES + 1000)
    _assert_error(_post(server, oversized), 413, "payload_too_large")  # declared Content-Length

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        boundary = b"frlie-test"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for offset in range(0, len(oversized), 65536):
            yield oversized[offset : offset + 65536]
        yield b"\r\n--" + boundary + b"--\r\n"

    response = server.client.post(
        "/enhance", content=chunks(), headers={"content-type": "multipart/form-data; boundary=frlie-test"}
    )
    _assert_error(response, 413, "payload_too_large")


def test_missing_field_wrong_method_and_unknown_route(server: ServerProcess) -> None:
    _assert_error(server.client.post("/enhance", data={"format": "png"}), 422, "invalid_parameters")
    _assert_error(server.client.get("/enhance"), 405, "method_not_allowed")
    _assert_error(server.client.get("/nope"), 404, "not_found")


# --- batching, metrics, disconnects ----------------------------------------------------------


def test_concurrent_requests_share_batches_and_each_gets_its_own_result(
    server: ServerProcess, model_path: Path
) -> None:
    images = [dark_image(64, 96, seed=10 + i) for i in range(8)]
    batches_before = server.metric("frlie_batch_size_count")
    singles_before = server.metric("frlie_batch_size_bucket", le="1.0")

    def send(image: np.ndarray) -> bytes:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post("/enhance", files={"image": ("in.png", encode_image(image, "PNG"))})
        assert response.status_code == 200, response.text
        return response.content

    with ThreadPoolExecutor(len(images)) as pool:
        outputs = list(pool.map(send, images))
    for image, output in zip(images, outputs, strict=True):
        np.testing.assert_array_equal(np.asarray(decode_image(output)), reference_enhance(model_path, image, passes=1))
    batches = server.metric("frlie_batch_size_count") - batches_before
    multi_item_batches = batches - (server.metric("frlie_batch_size_bucket", le="1.0") - singles_before)
    assert batches < len(images) and multi_item_batches >= 1


def test_metrics_move_as_requests_go(server: ServerProcess) -> None:
    def snapshot() -> dict[str, float]:
        return {
            "ok": server.metric("frlie_request_duration_seconds_count", route="/enhance", status="200"),
            "pixels": server.metric("frlie_processed_pixels_total"),
            "tiles": server.metric("frlie_tiles_per_request_sum"),
            "inference": server.metric("frlie_inference_duration_seconds_count"),
            "queue_wait": server.metric("frlie_queue_wait_seconds_count"),
            "bad": server.metric("frlie_errors_total", reason="invalid_image"),
        }

    before = snapshot()
    assert _post(server, encode_image(dark_image(200, 300), "PNG")).status_code == 200
    assert _post(server, b"nope").status_code == 400
    after = snapshot()
    assert after["ok"] == before["ok"] + 1
    assert after["pixels"] == before["pixels"] + 200 * 300
    assert after["tiles"] == before["tiles"] + 8  # 2 rows x 4 columns of 64 px cores
    assert after["inference"] > before["inference"] and after["queue_wait"] >= before["queue_wait"] + 8
    assert after["bad"] == before["bad"] + 1
    assert server.metric("frlie_inflight_requests") == 0 and server.metric("frlie_queue_depth") == 0


def _multipart_request(data: bytes) -> bytes:
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b0undary--\r\n"
    )
    head = (
        "POST /enhance HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_a_client_that_disconnects_leaves_no_work_behind(server: ServerProcess) -> None:
    request = _multipart_request(encode_image(dark_image(1000, 1500, noise=0), "PNG"))
    disconnects_before = server.metric("frlie_errors_total", reason="client_disconnected")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        server.wait_for_metric("frlie_queue_depth", lambda depth: depth > 0)  # decoded; its tiles wait
    server.wait_for_metric("frlie_inflight_requests", 0)
    server.wait_for_metric("frlie_queue_depth", 0)
    server.wait_for_metric("frlie_errors_total", disconnects_before + 1, reason="client_disconnected")


# --- queue limit, timeout, batching off --------------------------------------------------------


# ~2,900 tiles of the tiny model: far more compute than the strict server's 1 s limit.
def _slow_upload() -> bytes:
    return encode_image(dark_image(3000, 4000, noise=0), "PNG")


def test_an_image_too_slow_for_the_deadline_is_refused_before_any_compute(strict_server: ServerProcess) -> None:
    calls_before = strict_server.metric("frlie_batch_size_count")
    response = _post(strict_server, _slow_upload())
    _assert_error(response, 413, "too_slow_for_deadline")
    assert "request limit" in response.json()["detail"]
    assert strict_server.metric("frlie_batch_size_count") == calls_before  # the model never ran
    strict_server.wait_for_metric("frlie_inflight_requests", 0)
    assert _post(strict_server, encode_image(dark_image(40, 40), "PNG")).status_code == 200


@pytest.fixture(scope="module")
def deadline_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A 6 s deadline and room for several requests, so admission is decided by predicted cost."""
    running = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("logs") / "deadline.log",
        tile_size=64,
        queue_size=8,
        request_timeout_s=6.0,
        max_batch_size=1,
    ).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _side_predicted_to_take(server: ServerProcess, seconds: float) -> tuple[int, float]:
    """The square image side whose compute the server now predicts closest to ``seconds``, and that
    prediction: from its current throughput estimate and the exact tile plan it will use."""
    readiness = server.client.get("/readyz").json()
    seconds_per_pixel = readiness["seconds_per_megapixel"] / 1e6

    def predicted(side: int) -> float:
        plan = plan_tiles(
            side,
            side,
            core=readiness["tile_core"],
            receptive_radius=readiness["receptive_radius"],
            multiple=readiness["size_multiple"],
        )
        return plan.computed_pixels * seconds_per_pixel

    side = min(range(64, 4096, 8), key=lambda candidate: abs(math.log(predicted(candidate) / seconds)))
    return side, predicted(side)


def test_work_that_would_miss_the_deadline_gets_503_with_the_predicted_wait(deadline_server: ServerProcess) -> None:
    deadline = 6.0
    # Let the server measure its throughput on this very kind of work, at the size the test uses.
    assert _post(deadline_server, encode_image(dark_image(400, 400, noise=0), "PNG")).status_code == 200
    side, _ = _side_predicted_to_take(deadline_server, 0.5 * deadline)
    assert _post(deadline_server, encode_image(dark_image(side, side, noise=0), "PNG")).status_code == 200
    # The first image is predicted to need half the deadline: admitted alone. The second fits the
    # deadline alone but not behind the first: its predicted time lies halfway (in ratio) between the
    # room the first leaves and the whole deadline, so the estimate may drift ~1.4x either way while
    # the first computes on a shared machine. Both are prepared before any compute.
    side, queued = _side_predicted_to_take(deadline_server, 0.5 * deadline)
    first_upload = encode_image(dark_image(side, side, noise=0), "PNG")
    side, own = _side_predicted_to_take(deadline_server, math.sqrt((deadline - queued) * deadline))
    assert deadline - queued < own < deadline
    second_upload = encode_image(dark_image(side, side, noise=0), "PNG")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, deadline_server, first_upload)
        deadline_server.wait_for_metric("frlie_queue_depth", lambda depth: depth > 0)  # admitted, computing
        refused = _post(deadline_server, second_upload)
        _assert_error(refused, 503, "overloaded")
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= math.ceil(deadline)
        assert first.result().status_code == 200
    assert _post(deadline_server, first_upload).status_code == 200  # the queue drained: admitted again


def test_a_flood_gets_only_answers_200_or_503_and_nothing_is_dropped(deadline_server: ServerProcess) -> None:
    small = encode_image(dark_image(60, 80), "PNG")
    succeeded_before = deadline_server.metric("frlie_request_duration_seconds_count", route="/enhance", status="200")
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: _post(deadline_server, small), range(24)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 8, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
        else:
            assert decode_image(response.content).size == (80, 60)
    succeeded = (
        deadline_server.metric("frlie_request_duration_seconds_count", route="/enhance", status="200")
        - succeeded_before
    )
    assert succeeded == statuses.count(200)  # every admitted request was answered in full


def test_batching_off_runs_one_item_per_call(strict_server: ServerProcess) -> None:
    assert _post(strict_server, encode_image(dark_image(200, 300), "PNG")).status_code == 200
    assert (
        strict_server.metric("frlie_batch_size_count") == strict_server.metric("frlie_batch_size_bucket", le="1.0") > 0
    )


# --- graceful shutdown -------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(model_path: Path, tmp_path: Path) -> None:
    running = ServerProcess(model_path, tmp_path / "graceful.log", tile_size=64).start()
    outcome: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: outcome.setdefault("response", _post(running, encode_image(dark_image(400, 600), "PNG")))
    )
    request.start()
    running.wait_for_metric("frlie_inflight_requests", 1)
    running.process.terminate()  # SIGTERM
    request.join(timeout=60)
    assert running.process.wait(timeout=30) in GRACEFUL_EXIT_CODES
    assert outcome["response"].status_code == 200
    assert decode_image(outcome["response"].content).size == (600, 400)
    running.stop()
