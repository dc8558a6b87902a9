"""`python -m training calibrate`: fit the enhancement policy's constants on the train split and write
them into the model file (service.policy reads them from there).

The policy (service.policy) decides, from what an upload looks like, how much to darken it before the
network. Its constants belong to the weights, so they are fitted here, on lol-pairs **train** only,
never on val, and shipped inside the ONNX metadata with the data and the rule that chose them:

1. **Measure** (the slow part, cached in ``--table``): for a seeded sample of train pairs, every
   upload kind the service sees (PNG, and JPEG q90 as phones send) of every brightening (the low
   itself, x2, x4) gets its features (mean luma, noise ratio) and the PSNR against the normal-light
   image of the network's answer at a ladder of input gains. Each pair's row is appended as soon as
   it is measured, so an interrupted run resumes where it stopped.
2. **Fit** (instant): per upload kind, the noise ratios that a native capture and its x2 / x4
   brightenings have (medians over all train pairs) become the knots of the digital-gain reading;
   the noise floor below which nothing is read and the exposure reference are chosen by grid search
   for the best mean PSNR over the measured uploads, under the do-no-harm rule: no measured low may
   score more than ``HARM_MARGIN_DB`` below the plain network on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model import contract
from service.exposure import estimate_exposure, noise_ratio
from service.policy import LOSSLESS, LOSSY, UPLOAD_KINDS, NoiseGainReading, PolicyConstants, policy_gain, thumbnail
from training.data import EXPOSURE_VARIANTS, list_pairs, load_rgb
from training.errors import TrainingError
from training.evaluate import as_jpeg, resolve_pairs_dir
from training.inference import pad_image
from training.metrics import psnr
from training.onnx_metadata import update_metadata

log = logging.getLogger(__name__)

JPEG_QUALITY = 90  # what phones and browsers send
BRIGHTENINGS = {"low": 1.0, "low x2": 2.0, "low x4": 4.0}
GAIN_STEPS = {1.0: 3, 2.0: 5, 4.0: 7}  # gains 2 ** (-j / 2), j < steps: down to a native capture / sqrt 2
DEFAULT_PAIRS = 64
SEED = 0
HARM_MARGIN_DB = 0.1  # a measured train low may lose at most this much (the shipped test allows 0.2)
FLOOR_QUANTILES = tuple(np.linspace(0.5, 1.0, 21))  # candidate noise floors: quantiles of train lows
GATE_QUANTILES = tuple(np.linspace(0.5, 1.0, 11))  # candidate exposure gates: quantiles of train lows
# The policy darkens an upload only where the network's answer to it as it is, on a thumbnail, is
# brighter than this quantile of its answers to the measured native train lows: a rule, not a search
# (on train the search switches it off), added after val low 315, whose noise is unlike any train
# low's, read as 4x brightened and lost 2-8 dB (model card).
PROBE_QUANTILE = 0.9
REFERENCE_GRID = (0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 1.0)  # candidate exposure references (1: off)


def ladder(brightening: float) -> list[float]:
    """The input gains measured for an upload brightened by ``brightening``."""
    return [2.0 ** (-step / 2.0) for step in range(GAIN_STEPS[brightening])]


@dataclass(frozen=True)
class Upload:
    """One measured upload: what the policy can see of it, and how good each input gain is."""

    pair: str
    kind: str  # service.policy.LOSSLESS or LOSSY
    brightening: float
    exposure: float
    ratio: float | None
    psnr_at: dict[float, float]  # input gain -> PSNR of the network's answer against the high image
    probe_luma: float | None = None  # mean luma of the network's answer to the thumbnail, gain 1

    def psnr(self, gain: float) -> float:
        """PSNR at ``gain``, interpolated linearly in log gain between measured gains."""
        gains = sorted(self.psnr_at)
        logs = [math.log(g) for g in gains]
        return float(np.interp(math.log(min(max(gain, gains[0]), gains[-1])), logs, [self.psnr_at[g] for g in gains]))

    @property
    def plain(self) -> float:
        """The plain network: the upload as it is."""
        return self.psnr_at[1.0]


class OnnxNetwork:
    """The network on whole float images, as the service feeds it (input scaled by the gain in float)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray, gain: float) -> np.ndarray:
        height, width = image.shape[:2]
        padded = pad_image(image).astype(np.float32) * np.float32(gain / 255.0)
        (out,) = self.session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: padded.transpose(2, 0, 1)[None]})
        answer = np.clip(out[0, :, :height, :width].transpose(1, 2, 0), 0.0, 1.0)
        return np.rint(answer * 255.0).astype(np.uint8)


def uploads_of(low: np.ndarray, high: np.ndarray) -> Iterable[tuple[str, float, np.ndarray]]:
    """Every (kind, brightening, upload) the calibration measures for one pair."""
    for name, brightening in BRIGHTENINGS.items():
        image = EXPOSURE_VARIANTS[name](low, high)
        yield LOSSLESS, brightening, image
        yield LOSSY, brightening, as_jpeg(image, JPEG_QUALITY)


def features(kind: str, brightening: float, image: np.ndarray, pair: str) -> dict[str, Any]:
    return {
        "pair": pair,
        "kind": kind,
        "brightening": brightening,
        "exposure": estimate_exposure(image),
        "ratio": noise_ratio(image),
    }


def measure(network: OnnxNetwork, root: Path, count: int, table: Path) -> dict[str, Any]:
    """Features of every train upload, and the PSNR ladder of a seeded sample of ``count`` pairs,
    appended to ``table`` (JSON lines) pair by pair; pairs already there are skipped."""
    pairs = list_pairs(root)
    done: dict[str, list[dict[str, Any]]] = {}
    if table.is_file():
        for line in table.read_text().splitlines():
            row = json.loads(line)
            done.setdefault(row["pair"], []).append(row)
    sample = set(random.Random(SEED).sample([p.name for p in pairs], min(count, len(pairs))))
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("a") as out:
        for pair in tqdm(pairs, desc="calibrate: measure", unit="pair", file=sys.stderr):
            measured = pair.name in sample
            previous = {(row["kind"], row["brightening"]): row for row in done.get(pair.name, [])}
            if previous and (not measured or all(_complete(row) for row in previous.values())):
                continue
            low, high = load_rgb(pair.low), load_rgb(pair.high)
            rows = []
            for kind, brightening, image in uploads_of(low, high):
                row = previous.get((kind, brightening)) or features(kind, brightening, image, pair.name)
                if measured and "psnr_at" not in row:
                    row["psnr_at"] = {str(g): psnr(network(image, g), high) for g in ladder(brightening)}
                if measured and "probe_luma" not in row:  # what the service's probe sees (service.policy)
                    row["probe_luma"] = estimate_exposure(network(thumbnail(image), 1.0))
                rows.append(row)
            out.write("".join(json.dumps(row) + "\n" for row in rows))
            out.flush()
            done[pair.name] = rows
    return {"pairs": len(pairs), "measured": len(sample)}


def _complete(row: dict[str, Any]) -> bool:
    return "psnr_at" in row and "probe_luma" in row


def read_table(table: Path) -> list[dict[str, Any]]:
    """The last row written for each (pair, kind, brightening)."""
    rows: dict[tuple[str, str, float], dict[str, Any]] = {}
    for line in table.read_text().splitlines():
        row = json.loads(line)
        rows[(row["pair"], row["kind"], row["brightening"])] = row
    return list(rows.values())


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def reading_knots(rows: Sequence[dict[str, Any]], kind: str) -> tuple[tuple[float, float], ...]:
    """(median noise ratio, brightening) of the x2 and x4 train uploads of ``kind``."""
    knots = []
    for brightening in sorted(BRIGHTENINGS.values())[1:]:
        ratios = [r["ratio"] for r in rows if r["kind"] == kind and r["brightening"] == brightening and r["ratio"]]
        if ratios:  # images too small or flat for a reading give none
            knots.append((_quantile(ratios, 0.5), brightening))
    return tuple(knots)


@dataclass(frozen=True)
class Candidate:
    constants: PolicyConstants
    mean_psnr: float  # over the measured uploads, each kind and brightening weighted alike
    worst_low_loss: float  # dB below the plain network, worst measured low (negative: a gain)
    rows: dict[str, float]  # mean PSNR per "kind xN" row


def score(
    constants: PolicyConstants,
    uploads: Sequence[Upload],
    unchanged_psnr: dict[tuple[str, str, float], float],
) -> Candidate:
    """Mean PSNR of the policy over ``uploads`` (the mean of the per kind and brightening means, so
    each row counts alike), and its worst loss against the plain network on lows."""
    groups: dict[str, list[float]] = {}
    worst = -math.inf
    for upload in uploads:
        digital, gain = policy_gain(constants, upload.kind, upload.exposure, upload.ratio, upload.probe_luma)
        if upload.exposure / digital >= constants.unchanged_from:
            value = unchanged_psnr[(upload.pair, upload.kind, upload.brightening)]
        else:
            value = upload.psnr(gain)
        groups.setdefault(f"{upload.kind} x{upload.brightening:g}", []).append(value)
        if upload.brightening == 1.0:
            worst = max(worst, upload.plain - value)
    rows = {name: float(np.mean(values)) for name, values in sorted(groups.items())}
    return Candidate(constants, float(np.mean(list(rows.values()))), worst, rows)


def _reading_candidates(rows: Sequence[dict[str, Any]], kind: str) -> list[NoiseGainReading]:
    """Every reading the grid search tries for ``kind``: floors and exposure gates at quantiles of the
    train lows' noise ratios and mean lumas, through the knots above the floor."""
    knots = reading_knots(rows, kind)
    lows = [r for r in rows if r["kind"] == kind and r["brightening"] == 1.0]
    gates = sorted({0.0, *(_quantile([r["exposure"] for r in lows], q) for q in GATE_QUANTILES)})
    return [_reading(floor, knots, gate) for floor in _floor_candidates(rows, kind) for gate in gates]


def fit(
    rows: Sequence[dict[str, Any]],
    high_exposures: Sequence[float],
    unchanged_psnr: dict[tuple[str, str, float], float],
    source: str,
) -> Candidate:
    """The constants with the best mean PSNR over the measured uploads among those that keep every
    measured low within ``HARM_MARGIN_DB`` of the plain network (grid search; see the module doc).

    The kinds do not interact (an upload is one kind), so for each exposure reference each kind's
    reading is chosen on its own uploads, then the reference with the best total wins."""
    uploads = [
        Upload(
            r["pair"],
            r["kind"],
            r["brightening"],
            r["exposure"],
            r["ratio"],
            {float(g): v for g, v in r["psnr_at"].items()},
            r.get("probe_luma"),
        )
        for r in rows
        if r.get("psnr_at")
    ]
    if not uploads:
        raise TrainingError("the calibration table has no measured uploads: run the measurement first")
    unchanged_from = _quantile(high_exposures, 0.5)
    cap_from = max(r["exposure"] for r in rows if r["brightening"] == 1.0)
    candidates = {kind: _reading_candidates(rows, kind) for kind in UPLOAD_KINDS}
    low_probes = [u.probe_luma for u in uploads if u.brightening == 1.0 and u.probe_luma is not None]
    probe = _quantile(low_probes, PROBE_QUANTILE) if low_probes else 0.0
    best: Candidate | None = None
    for reference in REFERENCE_GRID:
        readings: dict[str, NoiseGainReading] = {}
        for kind in UPLOAD_KINDS:
            mine = [u for u in uploads if u.kind == kind]
            scored = [
                score(
                    PolicyConstants(
                        dict.fromkeys(UPLOAD_KINDS, reading),
                        reference,
                        unchanged_from,
                        {},
                        probe,
                        cap_from,
                    ),
                    mine,
                    unchanged_psnr,
                )
                for reading in candidates[kind]
            ]
            allowed = [
                c
                for c in scored
                if c.worst_low_loss <= HARM_MARGIN_DB and not _darkens_a_train_low(c.constants, rows, kind)
            ]
            if not allowed:
                break
            readings[kind] = max(allowed, key=lambda c: c.mean_psnr).constants.readings[kind]
        else:
            constants = PolicyConstants(readings, reference, unchanged_from, {}, probe, cap_from)
            candidate = score(constants, uploads, unchanged_psnr)
            if best is None or candidate.mean_psnr > best.mean_psnr + 1e-9:
                best = candidate
    if best is None:
        raise TrainingError(
            f"no candidate keeps every measured train low within {HARM_MARGIN_DB} dB of the plain network"
        )
    measured = sorted({u.pair for u in uploads})
    calibration = {
        "data": source,
        "pairs_measured": len(measured),
        "seed": SEED,
        "rule": (
            "noise knots: medians of the train x2 / x4 uploads' noise ratios per upload kind (PNG; JPEG q90); "
            "per kind a noise floor (quantiles 0.5-1 of the train lows' noise ratios) and an exposure gate "
            "(quantiles of the train lows' mean luma), and one exposure reference, chosen by grid search for "
            "the best mean PSNR over the measured train uploads (low, x2, x4; PNG and JPEG q90), keeping every "
            f"measured low within {HARM_MARGIN_DB} dB of the plain network and no train low (measured or not) "
            f"darkened at all; probe_luma: quantile {PROBE_QUANTILE} of "
            "the network's answers to the measured train lows' thumbnails (an upload is darkened only when its "
            "answer is brighter); unchanged_from: median mean luma of the train normal-light images; cap_from: "
            "the brightest train low (no low-light capture is capped)"
        ),
        "train_rows_psnr (brightness cap not modelled)": {name: round(value, 3) for name, value in best.rows.items()},
        "worst_low_loss_db_train": round(best.worst_low_loss, 3),
    }
    constants = best.constants
    return Candidate(
        replace(constants, calibration=calibration),
        best.mean_psnr,
        best.worst_low_loss,
        best.rows,
    )


def _darkens_a_train_low(constants: PolicyConstants, rows: Sequence[dict[str, Any]], kind: str) -> bool:
    """Whether the policy (before its probe) would darken any train low of ``kind``, measured or not:
    the PSNR ladder covers a sample, and lows outside it lost up to 9 dB to a policy fitted on it
    alone, so no native train capture may be read as brightened or too bright."""
    return any(
        policy_gain(constants, kind, r["exposure"], r["ratio"])[1] < 1.0
        for r in rows
        if r["kind"] == kind and r["brightening"] == 1.0
    )


def _floor_candidates(rows: Sequence[dict[str, Any]], kind: str) -> list[float]:
    """Quantiles ``FLOOR_QUANTILES`` of the noise ratios of the train lows of ``kind``."""
    ratios = [r["ratio"] or 0.0 for r in rows if r["kind"] == kind and r["brightening"] == 1.0]
    return sorted({_quantile(ratios, q) for q in FLOOR_QUANTILES}) if ratios else [0.0]


def _reading(floor: float, knots: tuple[tuple[float, float], ...], gate: float = 0.0) -> NoiseGainReading:
    """The reading from ``floor`` through the knots above it, for uploads at least ``gate`` bright."""
    kept: list[tuple[float, float]] = []
    for ratio, gain in knots:  # rising from the floor, in ratio and in gain
        if ratio > max([floor, *(r for r, _ in kept)]):
            kept.append((ratio, gain))
    return NoiseGainReading(floor, tuple(kept), gate)


def reference_scores(
    root: Path, rows: Sequence[dict[str, Any]]
) -> tuple[list[float], dict[tuple[str, str, float], float]]:
    """Mean luma of every train normal-light image, and the PSNR of each measured upload left as it is."""
    measured = {r["pair"] for r in rows if r.get("psnr_at")}
    exposures, unchanged = [], {}
    for pair in list_pairs(root):
        high = load_rgb(pair.high)
        exposures.append(estimate_exposure(high))
        if pair.name in measured:
            for kind, brightening, image in uploads_of(load_rgb(pair.low), high):
                unchanged[(pair.name, kind, brightening)] = psnr(image, high)
    return exposures, unchanged


def write_policy(model: Path, constants: PolicyConstants) -> list[Path]:
    """Store ``constants`` in ``model`` and in its quantized siblings (same weights, same policy)."""
    written = []
    for path in (model, contract.int8_path(model), contract.fp16_path(model)):
        if not path.is_file():
            continue
        update_metadata(path, {contract.POLICY: constants.to_json()})
        written.append(path)
    return written


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit the enhancement policy on the train split and store it in the model file"
    )
    parser.add_argument("--model", type=Path, default=contract.BUNDLED_MODEL_PATH, help="ONNX file to calibrate")
    parser.add_argument("--data", required=True, type=Path, help="lol-pairs root (its train/ split is used)")
    parser.add_argument(
        "--table", type=Path, default=Path("../runs/calibration/table.jsonl"), help="measurement cache (resumable)"
    )
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="train pairs whose PSNR ladder is measured")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's choice)")
    parser.add_argument("--dry-run", action="store_true", help="fit and print, but do not write the model file")
    parser.set_defaults(func=run)


def calibrate(
    model: Path, data: Path, table: Path, *, pairs: int = DEFAULT_PAIRS, threads: int = 0, write: bool = True
) -> PolicyConstants:
    """Measure (resuming ``table``), fit on ``data``'s train split, and store the policy in ``model``
    and its quantized siblings (unless ``write`` is false); returns the constants."""
    root = resolve_pairs_dir(data, "train")
    if root.name != "train":
        raise TrainingError(f"calibration fits on a train split; {root} is not one (pass the lol-pairs root)")
    if not model.is_file():
        raise TrainingError(f"model file {model} does not exist")
    measure(OnnxNetwork(model, threads), root, pairs, table)
    rows = read_table(table)
    high_exposures, unchanged = reference_scores(root, rows)
    constants = fit(rows, high_exposures, unchanged, f"lol-pairs/train ({len(high_exposures)} pairs)").constants
    if write:
        for path in write_policy(model, constants):
            log.info("wrote the policy into %s", path)
    return constants


def run(args: argparse.Namespace) -> int:
    constants = calibrate(
        args.model, args.data, args.table, pairs=args.pairs, threads=args.threads, write=not args.dry_run
    )
    print(json.dumps(json.loads(constants.to_json()), indent=2))
    if not args.dry_run:
        print(f"wrote the policy into {args.model} (and its quantized siblings)")
    return 0
