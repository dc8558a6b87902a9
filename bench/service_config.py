"""Service configurations as FRLIE_* variables: one form for the server process and in-process use.

A benchmark states every setting it depends on and ignores FRLIE_* variables of the shell it
runs in, so its figures mean what its table says.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from service.settings import CPU_PROVIDER, CUDA_PROVIDER, ENV_PREFIX, Settings, env_name

DEVICES = ("cpu", "cuda")
QUIET_LOG_LEVEL = "warning"  # no access log line per request: it is not part of the service's work


class DeviceUnavailable(RuntimeError):
    """The device asked for is not what ONNX Runtime runs on (no GPU, driver or CUDA libraries)."""


def check_provider(device: str, active: list[str]) -> None:
    """Benchmarks must not time a CPU fallback and label it CUDA."""
    wanted = CUDA_PROVIDER if device == "cuda" else CPU_PROVIDER
    if not active or active[0] != wanted:
        raise DeviceUnavailable(
            f"asked for {wanted} but ONNX Runtime runs on {active}: no usable GPU, driver or CUDA/cuDNN libraries "
            "(see onnxruntime-gpu's requirements)"
        )


class _ExplicitSettings(Settings):
    """Settings from the given values only (environment and dotenv are not read)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def providers_for(device: str) -> str:
    """The FRLIE_PROVIDERS value that asks for ``device`` (CUDA falls back to CPU only if ORT must)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    return f"{CUDA_PROVIDER},{CPU_PROVIDER}" if device == "cuda" else CPU_PROVIDER


def setting_env(**settings: object) -> dict[str, str]:
    """FRLIE_* variables for settings given by field name (``tile_size=512``, ``max_batch_size=1``)."""
    return {
        env_name(name): str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in settings.items()
    }


def service_env(model_path: Path, device: str, **overrides: object) -> dict[str, str]:
    """FRLIE_* variables for a model on a device; ``overrides`` use setting names (tile_size=512)."""
    defaults = {"model_path": model_path, "providers": providers_for(device), "log_level": QUIET_LOG_LEVEL}
    return setting_env(**(defaults | overrides))


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`FRLIE_TILE_SIZE=512` or `tile_size=512` (command line) -> {"FRLIE_TILE_SIZE": "512"}."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        name = name.strip().upper()
        env[name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name] = value.strip()
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    """The Settings the service would build from exactly these variables."""
    values = {
        name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items() if name.startswith(ENV_PREFIX)
    }
    return _ExplicitSettings(**cast(dict[str, Any], values))
