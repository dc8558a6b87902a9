"""docker-compose.yml against the Compose specification schema, the Prometheus config and alert rules
under promtool, the Grafana provisioning and dashboard, and the settings table of docs/service.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    ALERT_RULE_TESTS,
    ALERT_RULES,
    COMPOSE_FILE,
    DASHBOARD_FILE,
    GRAFANA_DIR,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    alert_rules,
    dashboard_expressions,
    dashboard_panels,
    grafana_to_promql,
    load_dashboard,
    load_yaml,
    parse_setting,
    require_prometheus_tool,
    require_tool,
    setting_default,
    setting_env_names,
)

pytestmark = pytest.mark.timeout(120)
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "frlie.yml"
SERVICE_VARIANTS = {"gpu": "frlie-gpu", "cpu": "frlie-cpu"}
CONTAINER_PORT = 8000
# Settings that differ from the service's defaults on purpose inside a container.
CONTAINER_SPECIFIC = {"host", "port", "providers"}
DEFAULT_PATTERN = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)  # YAML merge keys resolved, as Compose does


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    validator = require_tool("check-jsonschema", "install the dev extras (`pip install -e .[dev]`)")
    return subprocess.run(
        [validator, "--builtin-schema", "vendor.compose-spec", "--output-format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the Compose specification ------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = _check_jsonschema(COMPOSE_FILE)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["status"] == "ok", json.dumps(report, indent=1)


def test_the_schema_validator_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """Guards the check above: the same validator fails a copy with one typo in the GPU reservation."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("capabilities: [gpu]", "capability: [gpu]", 1))
    result = _check_jsonschema(broken)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["status"] == "fail"
    assert any("capabilit" in error["message"] for error in report["errors"])


def test_gpu_variant_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    service = compose["services"][SERVICE_VARIANTS["gpu"]]
    assert service["profiles"] == ["gpu"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    assert service["environment"]["FRLIE_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert service["build"]["args"]["CUDA_MAJOR"] == "${FRLIE_CUDA_MAJOR:-13}"


def test_cpu_variant_needs_no_gpu(compose: dict[str, Any]) -> None:
    service = compose["services"][SERVICE_VARIANTS["cpu"]]
    assert service["profiles"] == ["cpu"]
    assert "deploy" not in service and "gpus" not in service
    assert service["environment"]["FRLIE_PROVIDERS"] == "CPUExecutionProvider"
    # Monitoring runs with either profile.
    assert all("profiles" not in compose["services"][name] for name in ("prometheus", "grafana"))


@pytest.mark.parametrize("variant", sorted(SERVICE_VARIANTS))
def test_service_has_healthcheck_restart_policy_and_graceful_stop(compose: dict[str, Any], variant: str) -> None:
    service = compose["services"][SERVICE_VARIANTS[variant]]
    assert service["restart"] in {"unless-stopped", "always", "on-failure"}
    assert service["healthcheck"]["test"][:2] == ["CMD", "python"]
    assert service["healthcheck"]["test"][2] == "/usr/local/bin/frlie-healthcheck"  # COPYed by the Dockerfile
    assert service["healthcheck"]["test"][3] in {"/healthz", "/readyz"}
    assert service["ports"] == [f"${{FRLIE_PUBLISH_PORT:-8000}}:{CONTAINER_PORT}"]
    graceful = int(DEFAULT_PATTERN.fullmatch(service["environment"]["FRLIE_GRACEFUL_SHUTDOWN_S"]).group(2))
    assert int(service["stop_grace_period"].rstrip("s")) > graceful


@pytest.mark.parametrize("variant", sorted(SERVICE_VARIANTS))
def test_environment_names_real_settings_with_the_service_defaults(compose: dict[str, Any], variant: str) -> None:
    environment: dict[str, str] = compose["services"][SERVICE_VARIANTS[variant]]["environment"]
    known = setting_env_names()
    assert set(environment) <= set(known), f"not settings of the service: {set(environment) - set(known)}"
    for variable, value in environment.items():
        name = known[variable]
        interpolated = DEFAULT_PATTERN.fullmatch(str(value))
        if name in CONTAINER_SPECIFIC:
            parse_setting(name, str(value))  # still a valid value
            continue
        assert interpolated and interpolated.group(1) == variable, f"{variable} should be ${{{variable}:-default}}"
        assert parse_setting(name, interpolated.group(2)) == setting_default(name), variable
    assert environment["FRLIE_HOST"] == "0.0.0.0" and int(environment["FRLIE_PORT"]) == CONTAINER_PORT


def test_prometheus_scrapes_the_service_alias_and_mounts_the_shipped_files(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "frlie"]
    (targets,) = [group["targets"] for group in job["static_configs"]]
    assert targets == [f"frlie:{CONTAINER_PORT}"] and job.get("metrics_path", "/metrics") == "/metrics"
    for variant in SERVICE_VARIANTS.values():
        assert "frlie" in compose["services"][variant]["networks"]["default"]["aliases"]
    prometheus = compose["services"]["prometheus"]
    mounts = dict(volume.split(":")[:2] for volume in prometheus["volumes"] if volume.startswith("./"))
    # The folder mounted at /etc/prometheus holds the file that --config.file names.
    (config_flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_in_container = Path(config_flag.split("=", 1)[1])
    assert mounts["./docker/prometheus"] == str(config_in_container.parent)
    assert (REPO_ROOT / "docker/prometheus" / config_in_container.name).samefile(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERT_RULES.name]  # relative: resolves beside the config in both places


def test_grafana_mounts_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DASHBOARD_PROVIDER_FILE)["providers"][0]
    assert provider["type"] == "file" and mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(provider["options"]["path"]) and (DASHBOARD_FILE.parent / home.name).is_file()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for source in mounts:
        assert (REPO_ROOT / source).is_dir(), source


# --- promtool -----------------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_prometheus_tool("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_promtool_accepts_the_prometheus_config() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for rule in alert_rules()}
    assert f"{len(alerts)} rules found" in result.stdout + result.stderr
    assert {"FrlieServiceDown", "FrlieHighLatencyP95", "FrlieHighErrorRate", "FrlieQueueSaturated"} <= alerts


def test_alert_rules_fire_on_synthetic_series() -> None:
    """promtool's rule unit tests: each alert fires on the series it is for, and only then."""
    result = _promtool("test", "rules", str(ALERT_RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_dashboard_query_parses_in_prometheus(tmp_path: Path) -> None:
    """The dashboard's PromQL through Prometheus' own parser (as recording rules for promtool)."""
    expressions = dashboard_expressions(load_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)}
                    for n, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout + result.stderr


# --- Grafana ------------------------------------------------------------------------------------


def test_grafana_datasource_points_at_the_compose_prometheus() -> None:
    (source,) = load_yaml(DATASOURCE_FILE)["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["uid"] and source["isDefault"] is True
    assert load_yaml(DATASOURCE_FILE)["apiVersion"] == 1 and load_yaml(DASHBOARD_PROVIDER_FILE)["apiVersion"] == 1


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    datasource_uid = load_yaml(DATASOURCE_FILE)["datasources"][0]["uid"]
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge", "heatmap"}
        assert panel["datasource"]["uid"] == datasource_uid
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == datasource_uid
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource_uid


def test_dashboard_covers_what_operators_watch() -> None:
    """Request rate, p50/p95/p99 latency, queue wait, batch size, tiles, errors and provider."""
    expressions = " ".join(expr for _, expr in dashboard_expressions(load_dashboard()))
    assert "rate(frlie_request_duration_seconds_count" in expressions
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(frlie_request_duration_seconds_bucket" in expressions
        assert f"histogram_quantile({quantile}, sum by (le) (rate(frlie_queue_wait_seconds_bucket" in expressions
    for metric in (
        "frlie_batch_size_",
        "frlie_tiles_per_request_",
        "frlie_errors_total",
        "frlie_model_info",
        "frlie_queue_depth",
        "frlie_inflight_requests",
    ):
        assert metric in expressions, metric


MAX_SETTINGS = 25


# --- README and docs/ ----------------------------------------------------------------------------


def _documented_default(name: str) -> str:
    """How the settings table of docs/service.md writes a setting's default."""
    value = setting_default(name)
    if name == "model_path":
        return "bundled model"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def test_the_operator_has_at_most_25_settings() -> None:
    """FRLIE_* is for the operator's choices (limits, devices, ports); what belongs to the weights is
    calibrated into the model file (service.policy) and benchmark switches are bench options."""
    assert len(setting_env_names()) <= MAX_SETTINGS, sorted(setting_env_names())


def test_settings_table_in_docs_lists_every_setting_with_its_default() -> None:
    service_doc = (REPO_ROOT / "docs" / "service.md").read_text()
    assert "\n## Settings" in service_doc, "docs/service.md needs a Settings section"
    settings = service_doc.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(FRLIE_\w+)` \| `?([^|`]*?)`? \|", settings, flags=re.MULTILINE))
    for variable, name in setting_env_names().items():
        assert variable in rows, f"{variable} is missing from the Settings table of docs/service.md"
        assert rows[variable] == _documented_default(name), f"{variable}: docs/service.md says {rows[variable]!r}"
    assert set(rows) == set(setting_env_names()), f"documented but not settings: {set(rows) - set(setting_env_names())}"
    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for topic in (
        "NVIDIA Container Toolkit",
        "580",
        "docker compose --profile gpu",
        "docker compose --profile cpu",
        "http://localhost:3000",
        "http://localhost:9090",
        "docker/k8s",
    ):
        assert topic in deploy, topic


def test_readme_links_the_docs_pages() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for page in ("docs/service.md", "docs/deploy.md", "docs/training.md", "docs/testing.md"):
        assert f"]({page})" in readme, f"README.md should link {page}"
