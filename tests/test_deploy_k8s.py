"""deploy/k8s: every overlay renders with kustomize and passes strict, offline schema validation.

No cluster runs here: this proves the manifests are well-formed Kubernetes objects (kubernetes-validate's
bundled schemas, unknown fields rejected) and that they agree with the service (threads = CPU limit,
probes, grace period, the autoscaling metric the service exports), not that a cluster runs them.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.catalog import SERVICES

from .conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# The oldest minor still in mainstream managed-cluster support and the newest bundled schema.
K8S_VERSIONS = ("1.30.0", "1.37.0")
QUEUE_WAIT_METRIC = "embed_estimated_queue_wait_seconds"
# Deployment name -> its row of services/catalog.py (the manifests keep literal ports and prefixes; checked below)
BY_APP = {row.k8s_name: row for row in SERVICES.values()}
PREFIX = {app: row.env_prefix for app, row in BY_APP.items()}


def kustomize_command(directory: Path) -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(directory)]
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(directory)]
    pytest.skip("neither kubectl (kustomize built in) nor kustomize is on PATH: cannot render deploy/k8s")


def render(directory: Path) -> str:
    completed = subprocess.run(kustomize_command(directory), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, f"kustomize failed on {directory}:\n{completed.stderr}"
    return completed.stdout


def validate(manifest: str, tmp_path: Path, version: str) -> tuple[bool, str]:
    """`kubernetes-validate --strict` on the rendered file, offline: (passed, output).

    The CLI only warns, exit code 0, on a kind or apiVersion it has no schema for (a typo, or an API removed
    in that version), so a warning counts as a failure here.
    """
    path = tmp_path / f"rendered-{version}.yaml"
    path.write_text(manifest)
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    return result.returncode == 0 and "WARN" not in output, output


def objects(manifest: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, str]:
    return request.param, render(K8S / "overlays" / request.param)


def test_there_are_cpu_and_gpu_overlays():
    assert {"cpu-small", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_passes_strict_schema_validation(overlay, tmp_path, version):
    name, manifest = overlay
    passed, output = validate(manifest, tmp_path, version)
    assert passed, f"{name} against {version}:\n{output}"
    kinds = {d["kind"] for d in objects(manifest)}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Namespace",
    } <= kinds


@pytest.mark.parametrize(
    ("what", "damage"),
    [
        ("unknown field", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={})),
        ("wrong type", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="forty")),
        ("missing required field", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")),
        ("removed API version", lambda d: d.update(apiVersion="extensions/v1beta1")),
    ],
)
def test_validation_rejects_a_broken_manifest(tmp_path, what, damage):
    manifest = render(K8S / "overlays" / "cpu-small")
    docs = objects(manifest)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    damage(broken)
    passed, output = validate(yaml.safe_dump_all([*docs, broken]), tmp_path, K8S_VERSIONS[-1])
    assert not passed, f"{what} was not caught:\n{output}"
    assert "deployment" in output.lower()


def test_a_broken_overlay_fails_to_render(tmp_path):
    """A patch whose target moved must stop the render, not silently patch nothing."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", tmp_path)],
                "patches": [
                    {
                        "target": {"kind": "Job", "name": "embedding-artifacts"},
                        "patch": "- op: test\n  path: /spec/template/spec/containers/0/args/0\n  value: --nope\n",
                    }
                ],
            }
        )
    )
    completed = subprocess.run(kustomize_command(tmp_path), capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0


def test_deployments_match_the_service(overlay):
    """Threads = whole-core CPU limit, probes that never kill a warming replica, drain fits the grace period."""
    name, manifest = overlay
    docs = objects(manifest)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(BY_APP)
    for app, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == app)
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = PREFIX[app]
        resources = container["resources"]
        threads = int(env[f"{prefix}THREADS"])
        assert str(threads) == str(resources["limits"]["cpu"]) == str(resources["requests"]["cpu"]), (name, app)
        assert resources["limits"]["memory"] == resources["requests"]["memory"], (name, app)  # Guaranteed QoS
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        assert port == BY_APP[app].port, (name, app)  # the service's default port, as everywhere else
        assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert env[f"{prefix}PORT"] == str(port) and env[f"{prefix}HOST"] == "0.0.0.0"
        assert env[f"{prefix}ARTIFACTS_DIR"] == "/artifacts/$(ARTIFACTS_NAME)"

        startup, readiness, liveness = (container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
        # /health: open without an API key, 503 while warming up and from SIGTERM on.
        assert startup["httpGet"]["path"] == readiness["httpGet"]["path"] == liveness["httpGet"]["path"] == "/health"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "startup budget below the warm-up"

        sleep_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace_s = float(env[f"{prefix}SHUTDOWN_GRACE_S"])
        assert pod["terminationGracePeriodSeconds"] >= sleep_s + grace_s + 5, (name, app)
        # Liveness must not kill a draining replica (503 from SIGTERM on) before its grace has run out.
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > sleep_s + grace_s
        assert pod["terminationGracePeriodSeconds"] == 40 and grace_s == 25

        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/artifacts"]["readOnly"] is True and "/tmp" in mounts
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_services_pdbs_and_autoscalers_point_at_the_deployments(overlay):
    name, manifest = overlay
    docs = objects(manifest)
    deployments = by_kind(docs, "Deployment")
    config_maps = set(by_kind(docs, "ConfigMap"))
    for app, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for kind in ("Service", "PodDisruptionBudget"):
            obj = by_kind(docs, kind)[app]
            selector = obj["spec"]["selector"] if kind == "Service" else obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), (name, kind, app)
        hpa = by_kind(docs, "HorizontalPodAutoscaler")[app]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": app}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        metric_names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert metric_names == [QUEUE_WAIT_METRIC], (name, app)
        pod = deployment["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
    job = by_kind(docs, "Job")["embedding-artifacts"]
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(docs, "PersistentVolumeClaim")
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    threads = job_container["args"][job_container["args"].index("--threads") + 1]
    assert threads == job_container["resources"]["limits"]["cpu"]


def test_gpu_overlay_puts_torch_api_on_gpu_nodes():
    docs = objects(render(K8S / "overlays" / "gpu"))
    pod = by_kind(docs, "Deployment")["torch-api"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
    assert env["TORCH_API_DEVICE"] == "cuda" and pod["containers"][0]["image"].endswith(":cuda")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    onnx_pod = by_kind(docs, "Deployment")["onnx-api"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in onnx_pod["containers"][0]["resources"]["limits"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["torch-api"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]  # CPU says little about a GPU replica


def test_the_service_exports_the_autoscaling_metric():
    """The HPA and KEDA scale on a gauge that /metrics must actually expose."""
    from services.common.metrics import ServiceMetrics

    rendered = ServiceMetrics().render().decode()
    assert f"# TYPE {QUEUE_WAIT_METRIC} gauge" in rendered


def test_manifest_settings_exist_in_the_service():
    """Every <PREFIX>_<NAME> variable the manifests set is a real setting (unknown ones are silently ignored)."""
    fields = {app: set(row.classes()[0].model_fields) for app, row in BY_APP.items()}
    for overlay_name in OVERLAYS:
        for app, deployment in by_kind(objects(render(K8S / "overlays" / overlay_name)), "Deployment").items():
            container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == app)
            for var in container["env"]:
                if var["name"].startswith(PREFIX[app]):
                    assert var["name"][len(PREFIX[app]) :].lower() in fields[app], (overlay_name, app, var["name"])


def test_keda_component_replaces_the_hpas(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "cpu-small", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "keda", tmp_path)],
            }
        )
    )
    docs = objects(render(tmp_path))
    assert not by_kind(docs, "HorizontalPodAutoscaler"), "two autoscalers would fight over a Deployment"
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == set(BY_APP)
    for app, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] == app
        queries = [t["metadata"]["query"] for t in obj["spec"]["triggers"] if t["type"] == "prometheus"]
        assert len(queries) == 1 and QUEUE_WAIT_METRIC in queries[0] and f'pod=~"{app}-.*"' in queries[0]
    # Everything but the CRD objects still passes the strict schemas.
    rest = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    passed, output = validate(yaml.safe_dump_all(rest), tmp_path, K8S_VERSIONS[-1])
    assert passed, output
