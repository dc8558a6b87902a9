"""What the numbers were measured on, and the peak FLOP/s they are compared against.

Peaks are estimates from public facts, not measurements: the CPU one assumes two FMA units per
core at the SIMD width the flags advertise and the nominal clock; GPU peaks come from NVIDIA's
datasheets (dense, no sparsity) for the cards listed, otherwise they are reported as unknown.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# FP32 FLOPs per cycle per core: 2 FMA units x lanes x 2 (multiply + add).
SIMD_FP32_FLOPS_PER_CYCLE = (
    ("avx512f", 2 * 16 * 2, "AVX-512"),
    ("avx2", 2 * 8 * 2, "AVX2"),
    ("sse2", 2 * 4 * 2, "SSE2"),
)
# (name pattern, FP32 TFLOP/s, FP16 tensor-core TFLOP/s dense); first match wins.
GPU_PEAKS_TFLOPS = (
    (r"H200", 66.9, 989.4),
    (r"H100.*PCIe", 51.2, 756.5),
    (r"H100", 66.9, 989.4),
    (r"A100", 19.5, 312.0),
    (r"L40S", 91.6, 362.1),
    (r"\bL4\b", 30.3, 121.0),
    (r"\bT4\b", 8.1, 65.0),
)
PACKAGES = ("onnxruntime-gpu", "onnxruntime", "torch", "numpy", "pillow", "fastapi", "uvicorn")


@dataclass(frozen=True)
class Peak:
    """A peak throughput and how it was obtained (always shown next to the fraction it produces)."""

    gflops: float | None
    assumption: str

    def fraction(self, achieved_gflops: float) -> float | None:
        """Achieved / peak, or None when the peak is unknown."""
        return achieved_gflops / self.gflops if self.gflops else None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        entries = (line.split(":", 1) for line in block.splitlines() if ":" in line)
        blocks.append({key.strip(): value.strip() for key, value in entries})
    return blocks


def _usable_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota when there is one."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return count


def _cpu_mhz(cpus: list[dict[str, str]]) -> float | None:
    try:  # the highest clock the kernel knows (turbo), when it exposes it
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000.0
    except (OSError, ValueError):
        pass
    values = [float(cpu["cpu MHz"]) for cpu in cpus if "cpu MHz" in cpu]
    return max(values) if values else None


def _meminfo_kib(field: str) -> int | None:
    """One field of /proc/meminfo (kiB), or None where there is no /proc (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_gb() -> float | None:
    total = _meminfo_kib("MemTotal")
    return None if total is None else total / 1024**2


def available_memory_bytes() -> int | None:
    """MemAvailable now: what a new allocation can use without swapping or the OOM killer."""
    available = _meminfo_kib("MemAvailable")
    return None if available is None else available * 1024


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (no torch or CUDA runtime needed); empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    fields = ("name", "memory.total", "driver_version")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = (line.split(",") for line in out.strip().splitlines() if line)
    return [dict(zip(fields, (value.strip() for value in row), strict=False)) for row in rows]


def _versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


@dataclass(frozen=True)
class Machine:
    """Everything about the machine a reader needs to compare figures."""

    cpu_model: str
    physical_cores: int
    logical_cpus: int
    usable_cpus: int
    cpu_mhz: float | None
    simd: list[str]
    memory_gb: float | None
    gpus: list[dict[str, str]]
    os: str
    python: str
    packages: dict[str, str]
    load_average: tuple[float, float, float] | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        """Back from a results JSON (tables can be re-rendered from stored runs)."""
        load = data.get("load_average")
        return cls(**{**data, "load_average": tuple(load) if load else None})

    @property
    def gpu_name(self) -> str | None:
        return self.gpus[0]["name"] if self.gpus else None

    def summary(self) -> str:
        """One line for table captions."""
        clock = f" @ {self.cpu_mhz / 1000:.2f} GHz" if self.cpu_mhz else ""
        memory = f", {self.memory_gb:.0f} GB RAM" if self.memory_gb else ""
        gpu = ", ".join(g["name"] for g in self.gpus) if self.gpus else "no GPU"
        return (
            f"{self.cpu_model} ({self.usable_cpus} usable of {self.physical_cores} cores{clock}, "
            f"{', '.join(self.simd) or 'no AVX'}){memory}, {gpu}"
        )


def describe() -> Machine:
    """Inspect this machine (Linux /proc and /sys, nvidia-smi; degrades to less detail elsewhere)."""
    cpus = _cpuinfo()
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    cores = {(cpu.get("physical id", "0"), cpu.get("core id", str(i))) for i, cpu in enumerate(cpus)}
    return Machine(
        cpu_model=cpus[0].get("model name", platform.processor()) if cpus else platform.processor(),
        physical_cores=len(cores) or os.cpu_count() or 1,
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=_usable_cpus(),
        cpu_mhz=_cpu_mhz(cpus),
        simd=[name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if name in flags],
        memory_gb=_memory_gb(),
        gpus=gpus(),
        os=platform.platform(),
        python=platform.python_version(),
        packages=_versions(),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )


def cpu_peak(machine: Machine, override_gflops: float | None = None) -> Peak:
    """FP32 peak = cores x clock x FLOPs per cycle; the assumption travels with the number."""
    if override_gflops:
        return Peak(override_gflops, f"{override_gflops:g} GFLOP/s given on the command line")
    if not machine.cpu_mhz:
        return Peak(None, "unknown: the CPU clock is not exposed")
    per_cycle, name = next(
        (n, label) for flag, n, label in SIMD_FP32_FLOPS_PER_CYCLE if flag in machine.simd or flag == "sse2"
    )
    cores = min(machine.physical_cores, machine.usable_cpus)
    return Peak(
        cores * machine.cpu_mhz / 1000.0 * per_cycle,
        f"{cores} cores x {machine.cpu_mhz / 1000:.2f} GHz (the clock the kernel reports; turbo not counted unless "
        f"exposed) x {per_cycle} FP32 FLOP/cycle ({name}: assumes 2 FMA units x {per_cycle // 4} lanes x 2)",
    )


def gpu_peak(name: str | None, precision: str) -> Peak:
    """Datasheet dense peak of a known card: FP32 (CUDA cores) or FP16 (tensor cores)."""
    for pattern, fp32, fp16 in GPU_PEAKS_TFLOPS:
        if name and re.search(pattern, name):
            tflops = fp16 if precision == "fp16" else fp32
            return Peak(tflops * 1000.0, f"{name}: {tflops:g} TFLOP/s {precision} dense (NVIDIA datasheet)")
    return Peak(None, f"unknown: no datasheet peak recorded for {name or 'this GPU'}")


def caption(machine: Machine) -> str:
    """The line above every table: the machine, and how busy it was (figures from a busy machine are low)."""
    load = machine.load_average
    busy = f"; load average {load[0]:.1f} at start" if load else ""
    return f"Measured on: {machine.summary()}{busy}."
