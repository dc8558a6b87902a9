"""Which file of the model runs: the fastest one that passed its quality gate, timed on this host.

A model ships as NAME.onnx (fp32, the reference) with siblings NAME-int8.onnx (for CPUs) and
NAME-fp16.onnx (for GPUs). Whether a sibling is good enough is decided once, at release time: its
quality gate against fp32 is recorded in the file (``training.precision_gate``). Whether it is
*faster* is a property of the host, not of the file: the same int8 file is 1.97x fp32 on a Xeon
with VNNI and AMX and 0.99x on an AVX2 machine without VNNI. So ``FRLIE_PRECISION=auto`` races the
eligible files at start-up, on the provider that will serve, over one representative window, within
``RACE_BUDGET_S``; the fastest wins if it is at least ``MIN_SPEEDUP`` times as fast as fp32, and fp32
runs otherwise. The decision (``choose``) is a pure function of the timings, so it is tested with
injected ones; the race itself only measures.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model import contract

log = logging.getLogger(__name__)

FP32, INT8, FP16 = "fp32", "int8", "fp16"
PRECISIONS = (FP32, INT8, FP16)
# Which kind of provider a reduced-precision file is for: integer kernels are CPU kernels, and ORT's
# CPU provider has no fast fp16 convolution on x86 (it would cast every layer back to float).
PROVIDERS_FOR = {INT8: ("CPUExecutionProvider",), FP16: ("CUDAExecutionProvider", "TensorrtExecutionProvider")}
MIN_SPEEDUP = 1.15  # below this, a timing difference is not worth running a different file
RACE_BUDGET_S = 4.0  # the whole race, warm-up included (start-up waits for it)
MAX_ROUNDS = 5
# The window every candidate runs: a photo-like size (a multiple of every model's size multiple),
# large enough that per-call overhead does not dominate, small enough for several rounds.
CPU_RACE_WINDOW, GPU_RACE_WINDOW = (256, 256), (512, 512)


def sibling_path(model_path: Path, precision: str) -> Path:
    """Where the file of ``precision`` lives beside the fp32 model ``model_path``."""
    if precision == FP32:
        return model_path
    if precision == INT8:
        return contract.int8_path(model_path)
    if precision == FP16:
        return contract.fp16_path(model_path)
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def gate_of(session: ort.InferenceSession) -> str:
    """The quality gate a reduced-precision file records against its fp32 model: passed, failed or none."""
    record = session.get_modelmeta().custom_metadata_map.get(contract.QUANTIZATION)
    if record is None:
        return "none"
    try:
        verdict = json.loads(record).get(contract.QUALITY_GATE)
    except (ValueError, AttributeError):
        return "unreadable"
    return str(verdict) if verdict else "none"


@dataclass
class Candidate:
    """One file of the model and whether it takes part in the race (``why`` says why not)."""

    precision: str
    file: str
    gate: str
    eligible: bool
    why: str = ""
    seconds: float | None = None  # median time of one call on the race window, once raced


@dataclass(frozen=True)
class Choice:
    precision: str
    speedup: float  # fp32's time over the chosen file's (1.0 for fp32 itself)
    reason: str


def choose(seconds: Mapping[str, float], min_speedup: float = MIN_SPEEDUP) -> Choice:
    """The precision to run, from each eligible file's time per call (fp32's must be among them):
    the fastest, if it is at least ``min_speedup`` times as fast as fp32; otherwise fp32."""
    if FP32 not in seconds:
        raise ValueError("the race needs fp32's time: every speed-up is measured against it")
    fastest = min(seconds, key=lambda precision: (seconds[precision], precision != FP32))
    speedup = seconds[FP32] / seconds[fastest] if seconds[fastest] > 0 else float("inf")
    if fastest == FP32:
        return Choice(FP32, 1.0, "fp32 was the fastest file")
    if speedup >= min_speedup:
        return Choice(fastest, speedup, f"{fastest} was {speedup:.2f}x fp32 (>= {min_speedup}x)")
    return Choice(FP32, 1.0, f"{fastest} was only {speedup:.2f}x fp32 (< {min_speedup}x): not worth a different file")


def race(
    runners: Mapping[str, Callable[[], object]],
    budget_s: float = RACE_BUDGET_S,
    max_rounds: int = MAX_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], float]:
    """Median seconds per call of each runner, and the race's own duration.

    Every runner is called once untimed (first calls carry one-off set-up), then in rounds that
    interleave the runners, so a host that slows down mid-race slows every candidate alike. One timed
    round always runs; another starts only while it is expected to end within ``budget_s``.
    """
    started = clock()
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(max_rounds):
        round_started = clock()
        for name, run in runners.items():
            call_started = clock()
            run()
            times[name].append(clock() - call_started)
        round_seconds = clock() - round_started
        if round_index + 1 < max_rounds and clock() - started + round_seconds > budget_s:
            break
    return {name: statistics.median(measured) for name, measured in times.items()}, clock() - started


@dataclass
class PrecisionReport:
    """What /readyz shows about the choice: the mode asked for, every file considered, the race."""

    mode: str
    choice: str
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    race_window: list[int] | None = None
    race_seconds: float | None = None
    speedup: float = 1.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def open_precision(
    model_path: Path,
    mode: str,
    open_session: Callable[[Path], ort.InferenceSession],
    budget_s: float = RACE_BUDGET_S,
) -> tuple[ort.InferenceSession, Path, PrecisionReport]:
    """The session FRLIE_PRECISION asks for (``mode``), the file it runs, and the report.

    An explicit precision opens its file whatever its gate says (the operator decided); ``auto``
    opens fp32 first (its provider is the host's), then every sibling its gate and that provider
    allow, and races them. ``open_session`` opens a file with the service's options and providers.
    """
    if mode != "auto":
        path = sibling_path(model_path, mode)
        session = open_session(path)
        candidate = Candidate(mode, path.name, gate_of(session) if mode != FP32 else "reference", True)
        return session, path, PrecisionReport(mode, mode, f"FRLIE_PRECISION={mode}", [candidate])
    reference = open_session(model_path)
    provider = reference.get_providers()[0]
    sessions: dict[str, ort.InferenceSession] = {FP32: reference}
    candidates = [Candidate(FP32, model_path.name, "reference", True)]
    for precision in (INT8, FP16):
        path = sibling_path(model_path, precision)
        candidate = Candidate(precision, path.name, "not checked", False)
        candidates.append(candidate)
        if provider not in PROVIDERS_FOR[precision]:
            candidate.why = f"{precision} files are for {' / '.join(PROVIDERS_FOR[precision])}, not {provider}"
        elif not path.is_file():
            candidate.why = "no such file"
        else:
            session = open_session(path)
            candidate.gate = gate_of(session)
            if candidate.gate != contract.GATE_PASSED:
                candidate.why = f"quality gate {candidate.gate}"
            elif session.get_providers()[0] != provider:
                candidate.why = f"ORT runs it on {session.get_providers()[0]}, not {provider}"
            else:
                candidate.eligible = True
                sessions[precision] = session
    report = PrecisionReport("auto", FP32, "fp32 is the only eligible file", candidates)
    if len(sessions) > 1:
        height, width = CPU_RACE_WINDOW if provider in PROVIDERS_FOR[INT8] else GPU_RACE_WINDOW
        window = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32) * np.float32(0.3)
        feed = {contract.INPUT_NAME: window}
        runners = {name: partial(session.run, [contract.OUTPUT_NAME], feed) for name, session in sessions.items()}
        seconds, report.race_seconds = race(runners, budget_s)
        for candidate in candidates:
            candidate.seconds = seconds.get(candidate.precision)
        choice = choose(seconds)
        report.choice, report.reason, report.speedup, report.race_window = (
            choice.precision,
            choice.reason,
            choice.speedup,
            [height, width],
        )
    log.info("precision: %s (%s)", report.choice, report.reason)
    return sessions[report.choice], sibling_path(model_path, report.choice), report
