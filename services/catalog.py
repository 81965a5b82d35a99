"""The services, one row each: what the load test, the Ray app, run_stack, the Locust users, the benchmarks and
the deploy checks need to know about a service.

Standard library only, so every consumer imports it cheaply (no torch, no onnxruntime, not even the service's
own package); `Service.classes()` imports the embedder when a consumer needs it. The Dockerfiles, compose.yaml
and deploy/k8s keep their literal ports and env prefixes; tests/test_service_catalog.py checks them against
this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Service:
    name: str  # its package under services/ and compose service; the key in reports and the variant table
    short: str  # the Ray app's `service:` argument; run_stack's --<short>-port, the load test's --<short>-url
    settings_class: str  # both classes live in services.<name>.embedder
    embedder_class: str
    runtime_packages: tuple[str, ...]  # versions /info reports next to the HTTP stack's
    port: int  # default port (settings, Dockerfile, compose, k8s)
    locust_user: str  # the user class loadtest/locustfile.py defines for it
    # Memory limit of one 2-thread replica serving MPNet-base (compose's mem_limit, the Kubernetes limit, the Ray
    # reservation): the highest steady-state RSS measured under many shapes among the variants it may serve, plus
    # a margin of at least 25% (docs/serving.md, "Memory"; benchmarks/reference/zen4/memory).
    memory_limit_mib: int = 0
    # Settings for a short in-process run (the load test's ceiling, tests): compiling takes minutes on a few cores.
    in_process_settings: dict = field(default_factory=dict)

    @property
    def module(self) -> str:
        """What `python -m` runs."""
        return f"services.{self.name}"

    @property
    def env_prefix(self) -> str:
        return f"{self.name.upper()}_"

    @property
    def url_env(self) -> str:
        """The variable that points the Locust users (and run_stack's) at a running instance."""
        return f"{self.env_prefix}URL"

    @property
    def k8s_name(self) -> str:
        """Its Deployment, Service, PDB and autoscaler in deploy/k8s (DNS names allow no underscore)."""
        return self.name.replace("_", "-")

    def local_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}"

    def classes(self) -> tuple[type, type]:
        """(settings class, embedder class); imports the service's embedder module."""
        module = importlib.import_module(f"{self.module}.embedder")
        return getattr(module, self.settings_class), getattr(module, self.embedder_class)


TORCH_API = Service(
    "torch_api",
    "torch",
    "TorchSettings",
    "TorchEmbedder",
    ("torch", "transformers"),
    8001,
    "TorchApiUser",
    memory_limit_mib=2048,
    in_process_settings={"compile": False},
)
ONNX_API = Service(
    "onnx_api",
    "onnx",
    "OnnxSettings",
    "OnnxEmbedder",
    ("onnxruntime", "openvino"),
    8002,
    "OnnxApiUser",
    memory_limit_mib=1792,
)
#: by name, in the order reports list them
SERVICES = {s.name: s for s in (TORCH_API, ONNX_API)}


def service(key: str) -> Service:
    """A row by name (onnx_api) or short name (onnx); ValueError naming the choices otherwise."""
    for row in SERVICES.values():
        if key in (row.name, row.short):
            return row
    choices = ", ".join(f"{s.short} ({s.name})" for s in SERVICES.values())
    raise ValueError(f"service must be one of {choices}, not {key!r}")


__all__ = ["ONNX_API", "SERVICES", "TORCH_API", "Service", "service"]
