"""The Grafana dashboard (deploy/k8s/base/dashboards/) queries only metrics the service exports, and every k8s
overlay ships it as a ConfigMap (fast lane: fake model, kustomize offline)."""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient

from services.common.app import create_app
from services.common.settings import ServiceSettings

from .conftest import REPO
from .fakes import FakeEmbedder
from .test_deploy_k8s import K8S, OVERLAYS, objects, render

DASHBOARD = K8S / "base" / "dashboards" / "embedding-service.json"
METRIC_NAME = re.compile(r"\b((?:embed|process)_[a-z0-9_]+)\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_names(text: str) -> set[str]:
    """Sample names, and the names a family declares in HELP/TYPE (a labelled family with no sample yet)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_the_dashboard_queries_is_exported():
    with TestClient(create_app(ServiceSettings(), FakeEmbedder())) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.post("/embed", json={"inputs": "one request"}).status_code == 200
        exported = exported_names(client.get("/metrics").text)
    queried = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    assert len(queried) >= 10, queried
    # A histogram is queried as _bucket / _sum / _count, a counter as _total: those are the exported samples.
    missing = {name for name in queried if name not in exported}
    assert not missing, f"the dashboard queries metrics the service does not export: {sorted(missing)}"


def test_the_dashboard_covers_what_operators_ask_for():
    queries = "\n".join(dashboard_queries())
    for needed in (
        "embed_texts_total",
        "embed_admitted_total",
        "embed_rejected_total",
        "embed_estimated_queue_wait_seconds",
        "embed_queue_time_seconds_bucket",
        "embed_model_seconds_total",
        "embed_batch_size_bucket",
        "histogram_quantile(0.95",
        "histogram_quantile(0.5",
    ):
        assert needed in queries, needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_ships_the_dashboard_as_a_configmap(overlay):
    maps = [
        o
        for o in objects(render(K8S / "overlays" / overlay))
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "embedding-service-dashboard"
    ]
    assert len(maps) == 1
    assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(maps[0]["data"]["embedding-service.json"]) == json.loads(DASHBOARD.read_text())
    assert DASHBOARD.is_relative_to(REPO / "deploy")
