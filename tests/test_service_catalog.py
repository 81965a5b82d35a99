"""services/catalog.py is the one table of services: the settings, the Locust users, and the files that must keep
literal values (Dockerfiles, compose.yaml, the docker-e2e script) agree with it. deploy/k8s: test_deploy_k8s.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from runtime.variants import SERVICE_ENGINES
from services.catalog import SERVICES, service

from .conftest import REPO

ROWS = list(SERVICES.values())


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_settings_and_embedder_follow_the_table(row):
    settings_cls, embedder_cls = row.classes()
    assert settings_cls.model_config["env_prefix"] == row.env_prefix
    assert settings_cls.model_fields["port"].default == row.port
    assert embedder_cls.service == row.name and row.name in SERVICE_ENGINES  # the variant table knows its engines
    assert row.module == settings_cls.__module__.rpartition(".")[0]


def test_rows_are_found_by_name_or_short_name():
    for row in ROWS:
        assert service(row.name) is service(row.short) is row
    with pytest.raises(ValueError, match="service must be one of"):
        service("tensorflow")
    for attribute in ("port", "short", "locust_user"):
        assert len({getattr(r, attribute) for r in ROWS}) == len(ROWS), attribute


def test_compose_ports_and_locust_urls_match_the_table():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for row in ROWS:
        for name in (row.name, f"{row.name}_gpu"):  # the gpu profile publishes other host ports, same container port
            ports = compose[name]["ports"]
            assert [p.rsplit(":", 1)[-1] for p in ports] == [str(row.port)], name
            assert all(var.startswith(row.env_prefix) for var in compose[name]["environment"]), name
        assert compose["locust"]["environment"][row.url_env] == f"${{{row.url_env}:-http://{row.name}:{row.port}}}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_dockerfile_exposes_and_probes_the_table_port(row):
    dockerfile = (REPO / "services" / row.name / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {row.port}$", dockerfile, re.M)
    assert f"{row.env_prefix}PORT={row.port}" in dockerfile
    assert f'"--port-env", "{row.env_prefix}PORT"' in dockerfile
    assert f'"-m", "{row.module}"' in dockerfile


def test_docker_e2e_targets_the_table_ports():
    script = (REPO / "scripts" / "docker_e2e.sh").read_text()
    for row in ROWS:
        assert f"--{row.short}-url {row.local_url()}" in script


def test_locust_users_are_the_tables():
    """locustfile.py defines one user class per row (the load test runs them by the table's name)."""
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = result.stdout.split("Available Users:", 1)[-1].split()
    assert listed == [row.locust_user for row in ROWS]
    # The Locust image runs locustfile.py alone: it must carry the table.
    assert "services/catalog.py" in (REPO / "loadtest" / "Dockerfile").read_text()


def test_memory_limits_are_the_tables_in_compose_and_kubernetes():
    """One measured figure per service (services/catalog.py) caps its container everywhere it is deployed."""
    from .test_deploy_k8s import K8S

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for row in SERVICES.values():
        assert row.memory_limit_mib > 0, row.name
        assert compose[row.name]["mem_limit"] == f"{row.memory_limit_mib}m", row.name
        documents = yaml.safe_load_all((K8S / "base" / f"{row.k8s_name}.yaml").read_text())
        deployment = next(d for d in documents if d["kind"] == "Deployment")
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == row.k8s_name)
        resources = container["resources"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == f"{row.memory_limit_mib}Mi"
