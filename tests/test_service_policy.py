"""The enhancement policy (service.policy): its calibrated constants travel inside the model file and
decide the network's input gain and whether the model runs at all.

The rule on its own; through a real server with the tiny model and constants written into its file
(the gains and strength it reports, the exact pixels they imply, the finish, a broken record); with
the bundled model: ``training evaluate`` answers what ``POST /enhance`` answers, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from service_helpers import (
    GRACEFUL_EXIT_CODES,
    ServerProcess,
    dark_image,
    decode_image,
    encode_image,
    export_tiny_model,
    reference_enhance,
)

from model.contract import BUNDLED_MODEL_PATH, POLICY, int8_path
from service.exposure import MAX_DIGITAL_GAIN, MIN_SCENE_EXPOSURE, estimate_exposure, noise_ratio
from service.policy import (
    LOSSLESS,
    LOSSY,
    NEVER_UNCHANGED,
    NoiseGainReading,
    Policy,
    PolicyConstants,
    policy_gain,
)
from service.strength import AUTO
from training.calibrate import write_policy
from training.data import list_pairs, load_rgb
from training.evaluate import ServedModel, encode_upload

pytestmark = pytest.mark.timeout(300)

# Constants for the test patterns (dark_image: mean luma ~0.15, noise ratio ~0.39 as PNG and ~0.09
# as JPEG q90; x3: ~0.67 and ~0.75): each kind reads them as native, and x3 as about 3x brightened;
# the reference darkens scenes above 0.2, and scenes from 0.45 come back unchanged.
TEST_CONSTANTS = PolicyConstants(
    {
        LOSSLESS: NoiseGainReading(0.45, ((0.55, 2.0), (0.78, 4.0))),
        LOSSY: NoiseGainReading(0.15, ((0.4, 2.0), (0.8, 4.0))),
    },
    exposure_reference=0.2,
    unchanged_from=0.45,
    calibration={"data": "test constants", "rule": "chosen by hand for the tiny model's test patterns"},
)


def _lifted(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)


# --- the rule ------------------------------------------------------------------------------------


def test_the_noise_reading_is_one_up_to_its_floor_then_follows_its_knots() -> None:
    reading = NoiseGainReading(0.1, ((0.15, 2.0), (0.25, 4.0)))
    assert reading.digital_gain(None) == reading.digital_gain(0.05) == reading.digital_gain(0.1) == 1.0
    assert reading.digital_gain(0.15) == pytest.approx(2.0) and reading.digital_gain(0.25) == pytest.approx(4.0)
    sweep = [reading.digital_gain(r) for r in np.linspace(0.0, 3.0, 200)]
    assert all(b >= a for a, b in itertools.pairwise(sweep))  # never reads a noisier upload as less brightened
    assert 4.0 < reading.digital_gain(0.3) < MAX_DIGITAL_GAIN  # past the last knot: its slope continues
    assert reading.digital_gain(3.0) == MAX_DIGITAL_GAIN
    assert NoiseGainReading(0.0).digital_gain(5.0) == 1.0  # no knots: nothing is ever read
    gated = NoiseGainReading(0.1, ((0.15, 2.0), (0.25, 4.0)), min_exposure=0.07)
    assert gated.digital_gain(0.25, exposure=0.06) == 1.0 and gated.digital_gain(0.25, exposure=0.08) == pytest.approx(
        4.0
    )


@pytest.mark.parametrize("knots", [((0.05, 2.0),), ((0.2, 2.0), (0.15, 4.0)), ((0.2, 4.0), (0.3, 2.0)), ((0.2, 0.5),)])
def test_knots_that_do_not_rise_from_the_floor_are_refused(knots: tuple[tuple[float, float], ...]) -> None:
    with pytest.raises(ValueError, match="rise"):
        NoiseGainReading(0.1, knots)


def test_the_gain_undoes_the_digital_gain_then_darkens_bright_scenes_to_the_reference() -> None:
    assert policy_gain(TEST_CONSTANTS, LOSSLESS, 0.1, 0.3) == (1.0, 1.0)  # a native dark capture
    digital, gain = policy_gain(TEST_CONSTANTS, LOSSLESS, 0.4, 0.78)  # read as 4x: scene 0.1
    assert digital == pytest.approx(4.0) and gain == pytest.approx(0.25)
    digital, gain = policy_gain(TEST_CONSTANTS, LOSSLESS, 0.4, 0.3)  # clean and bright: scene 0.4
    assert digital == 1.0 and gain * 0.4 == pytest.approx(0.2)
    # The same noise ratio means more brightening in a JPEG, whose codec erased part of the noise.
    assert policy_gain(TEST_CONSTANTS, LOSSLESS, 0.1, 0.55)[0] == pytest.approx(2.0)
    assert policy_gain(TEST_CONSTANTS, LOSSY, 0.1, 0.55)[0] > 2.5
    # Never a scene darker than the darkest LOL-style capture.
    digital, _ = policy_gain(TEST_CONSTANTS, LOSSLESS, 0.02, 3.0)
    assert 0.02 / digital == pytest.approx(MIN_SCENE_EXPOSURE)


def test_constants_round_trip_through_json_and_a_record_without_a_kind_is_refused() -> None:
    assert PolicyConstants.from_json(TEST_CONSTANTS.to_json()) == TEST_CONSTANTS
    record = json.loads(TEST_CONSTANTS.to_json())
    del record["readings"][LOSSY]
    with pytest.raises(ValueError, match="lossy"):
        PolicyConstants.from_json(json.dumps(record))


def test_the_plan_runs_the_model_below_the_well_exposed_line_and_leaves_the_rest() -> None:
    policy = Policy(TEST_CONSTANTS)
    dark = dark_image(60, 80, seed=1)
    plan = policy.plan(dark, lossy=False, grayscale=False, strength=AUTO, passes=4)
    assert plan.runs_model and plan.strength == 1.0 and plan.passes == 4 and plan.gain == 1.0
    bright = np.clip(dark.astype(np.int16) * 3 + 60, 0, 255).astype(np.uint8)
    assert estimate_exposure(bright) >= TEST_CONSTANTS.unchanged_from
    kept = policy.plan(bright, lossy=False, grayscale=True, strength=AUTO, passes=4)
    assert not kept.runs_model and kept.passes == 0 and kept.gain == 1.0
    # A number is the blend asked for, whatever the upload looks like.
    asked = policy.plan(bright, lossy=False, grayscale=False, strength=0.3, passes=2)
    assert asked.strength == 0.3 and asked.passes == 2 and asked.gain < 1.0
    with pytest.raises(ValueError, match="strength"):
        policy.plan(dark, lossy=False, grayscale=False, strength=1.5, passes=1)


def test_a_model_without_a_policy_is_the_plain_network() -> None:
    plain = Policy(PolicyConstants.uncalibrated())
    for image in (dark_image(40, 60), _lifted(dark_image(40, 60), 4.0)):
        for lossy in (False, True):
            plan = plain.plan(image, lossy=lossy, grayscale=False, strength=AUTO, passes=1)
            assert (plan.gain, plan.strength, plan.reading.digital_gain) == (1.0, 1.0, 1.0)
    assert PolicyConstants.uncalibrated().unchanged_from == NEVER_UNCHANGED


# --- through the running service -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = export_tiny_model(tmp_path_factory.mktemp("policy-model"))
    assert write_policy(path, TEST_CONSTANTS) == [path]
    return path


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(model_path, tmp_path_factory.mktemp("logs") / "policy.log", tile_size=64).start()
    yield running
    assert running.stop() in GRACEFUL_EXIT_CODES


def _post(server: ServerProcess, data: bytes, name: str, **fields: str) -> tuple[np.ndarray, dict[str, str]]:
    response = server.client.post("/enhance", files={"image": (name, data)}, data={"format": "png", **fields})
    assert response.status_code == 200, response.text
    return np.asarray(decode_image(response.content).convert("RGB")), dict(response.headers)


@pytest.mark.parametrize(("lift", "fmt"), [(1.0, "PNG"), (3.0, "PNG"), (1.0, "JPEG"), (3.0, "JPEG")])
def test_the_service_runs_the_plan_of_the_policy_in_the_model_file(
    server: ServerProcess, model_path: Path, lift: float, fmt: str
) -> None:
    """Dark and brightened uploads, lossless and JPEG: the reported gains are the policy's plan for the
    decoded upload, and the answer is the model run on the upload times that gain."""
    data = encode_image(_lifted(dark_image(80, 120, seed=21), lift), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    decoded = np.asarray(decode_image(data).convert("RGB"))
    plan = Policy(TEST_CONSTANTS).plan(decoded, lossy=fmt == "JPEG", grayscale=False, strength=AUTO, passes=1)
    assert plan.runs_model
    answer, headers = _post(server, data, f"in.{fmt.lower()}")
    assert float(headers["x-exposure-gain"]) == pytest.approx(plan.gain, abs=1e-3)
    assert float(headers["x-digital-gain"]) == pytest.approx(plan.reading.digital_gain, abs=0.01)
    assert headers["x-strength"] == "1.000"
    np.testing.assert_array_equal(answer, reference_enhance(model_path, decoded, gain=plan.gain))
    if lift > 1.0:  # the brightened capture reads as brightened: the model sees it darker
        assert plan.reading.digital_gain > 2.0 and plan.gain < 0.5
    else:
        assert plan.reading.digital_gain == 1.0 and plan.gain == 1.0


def test_a_well_exposed_upload_comes_back_unchanged_without_a_model_run(server: ServerProcess) -> None:
    image = np.clip(dark_image(60, 90, seed=3, noise=0.3).astype(np.int16) * 3 + 60, 0, 255).astype(np.uint8)
    answer, headers = _post(server, encode_image(image, "PNG"), "in.png")
    np.testing.assert_array_equal(answer, image)
    assert headers["x-strength"] == "0.000" and headers["x-ensemble-passes"] == "0" and headers["x-tile-count"] == "0"
    assert headers["x-exposure-gain"] == "1.000"
    # Asked for by number, the model runs on it all the same, darkened to the reference.
    _, asked = _post(server, encode_image(image, "PNG"), "in.png", strength="1")
    assert asked["x-strength"] == "1.000" and float(asked["x-exposure-gain"]) < 1.0


def test_readyz_reports_the_policy_and_where_it_came_from(server: ServerProcess) -> None:
    policy = server.client.get("/readyz").json()["policy"]
    assert PolicyConstants.from_json(json.dumps(policy)) == TEST_CONSTANTS
    assert policy["calibration"]["data"] == "test constants"


class _FailingServer(ServerProcess):
    """A server whose model cannot load: started once /readyz says why (not merely "still loading")."""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = self.client.get("/readyz")
                if ready.status_code != 200 and "still loading" not in ready.text:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the server never said why it is not ready")


def test_a_model_file_with_a_broken_policy_is_not_served_and_says_why(tmp_path: Path) -> None:
    path = export_tiny_model(tmp_path)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {p.key: p.value for p in proto.metadata_props} | {POLICY: '{"readings": {}}'})
    onnx.save(proto, str(path))
    server = _FailingServer(path, tmp_path / "broken.log", tile_size=64).start()
    try:
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and "policy" in ready.json()["detail"]
        refused = server.client.post("/enhance", files={"image": ("in.png", encode_image(dark_image(20, 20), "PNG"))})
        assert refused.status_code == 503
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES


# --- the bundled model: what evaluate measures is what the service answers ---------------------------


def _policy_record(path: Path) -> str | None:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get(POLICY)


def _bundled_constants() -> PolicyConstants:
    record = _policy_record(BUNDLED_MODEL_PATH)
    assert record is not None, "the bundled model carries no policy: run `python -m training calibrate`"
    return PolicyConstants.from_json(record)


def test_the_bundled_model_and_its_int8_sibling_carry_the_same_calibrated_policy() -> None:
    constants = _bundled_constants()
    assert _policy_record(int8_path(BUNDLED_MODEL_PATH)) == constants.to_json()
    assert "train" in constants.calibration["data"] and "val" not in constants.calibration["data"]
    assert constants.unchanged_from < 1.0


@pytest.mark.parametrize("jpeg_quality", [None, 90])
def test_evaluate_answers_exactly_what_the_service_answers(
    lol_pairs: Path, tmp_path: Path, jpeg_quality: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A val low (and the same low x3), through `training evaluate`'s served model and through
    POST /enhance of the bundled model at default settings: the same bytes of pixels. Each process
    races the precisions on its own (service.precision); the served model is held to the file the
    server's race chose, so a close race on this host cannot make the two differ."""
    low = load_rgb(list_pairs(lol_pairs / "val")[0].low)
    server = ServerProcess(BUNDLED_MODEL_PATH, tmp_path / "bundled.log", intra_op_threads=0).start()
    try:
        monkeypatch.setenv("FRLIE_PRECISION", server.readyz()["precision_choice"]["choice"])
        with ServedModel(BUNDLED_MODEL_PATH) as served:
            for image in (low, _lifted(low, 3.0)):
                upload = encode_upload(image, jpeg_quality)
                expected, result = served.answer(upload)
                name = "in.png" if jpeg_quality is None else "in.jpg"
                answer, headers = _post(server, upload, name)
                np.testing.assert_array_equal(answer, expected)
                assert float(headers["x-exposure-gain"]) == pytest.approx(result.exposure_gain, abs=1e-3)
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES


def test_a_brightened_low_light_photo_is_darkened_back_before_the_network(lol_pairs: Path) -> None:
    """With the bundled model's calibrated policy, a val low brightened x4 (PNG) reads as brightened
    and the network sees it at about the low's own brightness."""
    policy = Policy(_bundled_constants())
    ratios = []
    for pair in list_pairs(lol_pairs / "val")[:6]:
        low = load_rgb(pair.low)
        plan = policy.plan(_lifted(low, 4.0), lossy=False, grayscale=False, strength=AUTO, passes=1)
        ratios.append(plan.gain * 4.0)
        assert noise_ratio(low) is not None
    assert 0.5 < float(np.median(ratios)) < 1.5, ratios


def test_a_brightening_reading_stands_only_if_the_answer_to_a_thumbnail_is_bright(
    model_path: Path, tmp_path: Path
) -> None:
    """With a probe threshold no answer reaches, an upload read as brightened gets one thumbnail run
    and then the plan of an upload that was not brightened; the answer is the model at that gain."""
    strict = replace(TEST_CONSTANTS, probe_luma=0.99)
    path = export_tiny_model(tmp_path)
    write_policy(path, strict)
    image = _lifted(dark_image(80, 120, seed=21), 2.6)  # read as brightened; as it is, under the unchanged line
    plan = Policy(strict).plan(image, lossy=False, grayscale=False, strength=AUTO, passes=1)
    assert plan.needs_probe and plan.reading.digital_gain > 2.0
    settled = Policy(strict).settle(plan, 0.5, lossy=False, strength=AUTO)
    assert not settled.needs_probe and settled.reading.digital_gain == 1.0 and settled.gain > plan.gain
    assert settled.runs_model
    server = ServerProcess(path, tmp_path / "probe.log", tile_size=64).start()
    try:
        answer, headers = _post(server, encode_image(image, "PNG"), "in.png")
        assert headers["x-digital-gain"] == "1.00"
        assert float(headers["x-exposure-gain"]) == pytest.approx(settled.gain, abs=1e-3)
        np.testing.assert_array_equal(answer, reference_enhance(path, image, gain=settled.gain))
        # The thumbnail is one more model input than the image's own tiles (strength 1 runs no probe).
        _, plain = _post(server, encode_image(image, "PNG"), "in.png", strength="1")
        assert int(headers["x-tile-count"]) == int(plain["x-tile-count"]) + 1
    finally:
        assert server.stop() in GRACEFUL_EXIT_CODES


def test_the_answer_to_a_dim_clean_photo_is_capped_at_the_well_exposed_line() -> None:
    capped = replace(TEST_CONSTANTS, cap_from=0.25)
    photo = np.clip(dark_image(60, 90, seed=5, noise=0.3).astype(np.int16) * 2 + 20, 0, 255).astype(np.uint8)
    plan = Policy(capped).plan(photo, lossy=False, grayscale=False, strength=AUTO, passes=1)
    assert plan.reading.digital_gain == 1.0 and plan.brightness_cap == capped.unchanged_from
    blown_out = np.full_like(photo, 230)
    applied = Policy.finish(plan, blown_out, photo)
    assert 0.0 < applied < 1.0
    assert estimate_exposure(blown_out) == pytest.approx(capped.unchanged_from, abs=0.01)
    # Without the cap (or asked for by number) the answer is the model's.
    uncapped = Policy(TEST_CONSTANTS).plan(photo, lossy=False, grayscale=False, strength=AUTO, passes=1)
    assert uncapped.brightness_cap is None
