"""Kubernetes manifests in docker/k8s/: the Kubernetes JSON schemas (strict, via kubernetes-validate)
and how the objects fit together and with the image."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DOCKERFILE, K8S_DIR, load_yaml_documents, parse_setting, running_in_ci, setting_env_names

try:
    import kubernetes_validate
except ImportError:
    if running_in_ci():  # CI installs the dev extras: a missing validator is a broken setup
        raise
    pytest.skip("kubernetes-validate is not installed (pip install -e .[dev])", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
APP_LABEL = {"app.kubernetes.io/name": "frlie-serve"}


def _objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for document in load_yaml_documents(path):
            assert document["kind"] not in objects, f"two {document['kind']} objects"
            objects[document["kind"]] = document
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return _objects()


@pytest.fixture(scope="module")
def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def _validate(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        _validate(document)  # raises ValidationError with the offending field


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}), "readinesProbe"),
        (lambda d: d["spec"].update(replicas="two"), "replicas"),
    ],
    ids=["unknown-field", "wrong-type"],
)
def test_the_schema_validation_rejects_broken_manifests(
    objects: dict[str, dict[str, Any]], mutate: Any, field: str
) -> None:
    broken = copy.deepcopy(objects["Deployment"])
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError, match=field):
        _validate(broken)


def test_manifests_cover_deployment_service_and_autoscaler(objects: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(objects)


def test_each_pod_requests_one_nvidia_gpu(container: dict[str, Any]) -> None:
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["FRLIE_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"


def test_probes_use_readyz_and_healthz_on_the_served_port(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert port["containerPort"] == int(env["FRLIE_PORT"]) and env["FRLIE_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}


def test_environment_names_real_settings_with_valid_values(container: dict[str, Any]) -> None:
    known = setting_env_names()
    for item in container["env"]:
        assert item["name"] in known, f"{item['name']} is not a setting of the service"
        if "valueFrom" in item:  # the job store's URL, from a Secret that one-replica installs may lack
            assert item["name"] == "FRLIE_JOB_STORE" and item["valueFrom"]["secretKeyRef"]["optional"] is True
            continue
        parse_setting(known[item["name"]], item["value"])  # raises if the service would reject it


def test_pods_run_as_the_images_non_root_user(objects: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (image_user,) = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_user)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Kubernetes would inject FRLIE_SERVE_* service variables into the FRLIE_ settings namespace.
    assert pod["enableServiceLinks"] is False


def test_scale_in_waits_for_requests_in_flight(objects: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > int(env["FRLIE_GRACEFUL_SHUTDOWN_S"]) + pre_stop


def test_service_routes_to_the_deployment_pods(objects: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items() and service["spec"]["selector"] == APP_LABEL
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_autoscaler_targets_the_deployment_on_inflight_requests(objects: dict[str, dict[str, Any]]) -> None:
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics == ["frlie_inflight_requests"]  # a gauge the service exports (service/metrics.py)


def test_pods_carry_prometheus_scrape_annotations(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
