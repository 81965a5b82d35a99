"""Rewrite the resolved compose config for a machine without a bridge network (this project's CI).

    docker-compose -f compose.yaml config | python scripts/compose_host_mode.py > /tmp/compose.host.yaml

Every service gets `network_mode: host` (and host networking for its build); published ports are dropped
(compose refuses ports with host networking, and an override file cannot remove them); services bind to
127.0.0.1 and Locust targets the loopback ports. compose.yaml itself stays the single, standard file.
"""

from __future__ import annotations

import sys

import yaml

from services.catalog import SERVICES

LOOPBACK_ENV = {
    **{name: {f"{row.env_prefix}HOST": "127.0.0.1"} for name, row in SERVICES.items()},
    "locust": {row.url_env: row.local_url() for row in SERVICES.values()},
}
LOCUST_COMMAND = [
    "/opt/venv/bin/python",
    "-m",
    "locust",
    "-f",
    "loadtest/locustfile.py",
    "--web-host",
    "127.0.0.1",
    "--web-port",
    "8089",
]


def to_host_mode(config: dict) -> dict:
    for name, service in config.get("services", {}).items():
        service.pop("ports", None)
        service.pop("networks", None)
        service["network_mode"] = "host"
        if isinstance(service.get("build"), dict):
            service["build"]["network"] = "host"
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        environment.update(LOOPBACK_ENV.get(name, {}))
        service["environment"] = environment
        if name == "locust":
            service["command"] = LOCUST_COMMAND
    config.pop("networks", None)
    return config


if __name__ == "__main__":
    yaml.safe_dump(to_host_mode(yaml.safe_load(sys.stdin)), sys.stdout, sort_keys=False)
