"""Ray Serve: the plain service's FastAPI app and Embedder, as replicas of one Serve deployment.

    serve run deploy/ray/serve_config.yaml          # starts a local Ray cluster; http://127.0.0.1:8000
    make ray-serve                                  # the same

Each replica builds the app with `services.common.app.create_app`, exactly as `python -m services.onnx_api`
does, and Ray Serve's HTTP proxy routes requests to the replicas (`@serve.ingress`). What Serve adds:
- placement: a replica reserves `num_cpus = threads`, so Ray never runs replicas x threads > cores;
- autoscaling on ongoing requests per replica (`autoscaling_config` in serve_config.yaml);
- backpressure: a replica takes at most `max_ongoing_requests` at once; the proxy queues up to
  `max_queued_requests` more, then answers 429 with Retry-After: 1, as the plain service does when its
  estimated queue wait is over budget (the app's own 429s still apply inside each replica). 503 while no
  replica is ready (Serve) or while a replica drains (the app);
- replacement: a replica that dies, or whose model failed to load, is replaced by the controller.

Lifespan: Serve (2.60) runs the app's ASGI lifespan in each replica, so the model loads and the batcher
starts exactly as in the plain service. The lifespan only starts the load in the background (the plain
service listens at once and answers /health 503 until warm); here the lifespan's start-up is held until
/health answers 200 (`WarmBeforeReady`), so Serve routes nothing to a replica that is still warming up.

Relative artifact paths are taken from the repository root (replicas may run in another directory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from ray import serve
from ray.serve.config import BackpressureConfig

from services.catalog import service as catalog_service

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("embedding_service")  # the service's logger (Serve quiets its own during start-up)

# Defaults of the deployment; serve_config.yaml's `deployments:` section overrides any of them.
MAX_ONGOING_REQUESTS = 32  # per replica: enough concurrent requests to fill a batch of 32 single texts
MAX_QUEUED_REQUESTS = 64  # waiting in the proxy for a free replica slot; more get 429
SHUTDOWN_GRACE_S = 25  # as the plain service's shutdown_grace_s: in-flight requests may finish


class AppArgs(BaseModel):
    """`args:` of an application in serve_config.yaml (or `serve run deploy.ray.serve_app:build_app k=v`)."""

    service: str = Field("onnx", description="onnx or torch (a services/catalog.py row, by short name or name)")
    artifacts_dir: str = Field("artifacts/all-mpnet-base-v2", description="from build_artifacts")
    threads: int = Field(1, ge=1, description="model threads per replica = CPUs it reserves")
    num_replicas: int | None = Field(None, ge=1, description="fixed replica count (default: autoscaling_config)")
    memory_mb: int | None = Field(
        None,
        ge=1,
        description="memory a replica reserves, so Ray places no more replicas than a node holds: its measured "
        "steady-state RSS with a margin (docs/serving.md, 'Memory'); None reserves none",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="any other service setting (max_wait_ms...)")


def service_classes(service: str):
    """(settings class, embedder class, packages /info reports) of a services/catalog.py row."""
    row = catalog_service(service)
    return *row.classes(), row.runtime_packages


class WarmBeforeReady:
    """ASGI wrapper: the lifespan start-up completes only once the app's /health answers 200.

    Serve marks a replica RUNNING (and routes to it) when the lifespan start-up completes; the app starts its
    model load in the background there. Holding the start-up message until /health is 200 keeps traffic away
    from a warming replica; a load failure fails the start-up, and Serve replaces the replica. Responses
    carry `x-serve-replica` (the replica's id), so a client can see the load spread.
    """

    def __init__(self, app, replica_id: str = "", timeout_s: float = 900):
        self.app, self.timeout_s = app, timeout_s
        self.replica_header = (b"x-serve-replica", replica_id.encode())
        self.load_error: str | None = None
        app.state.on_load_failure = self._on_load_failure

    def __getattr__(self, name):  # Serve calls app.add_exception_handler(...) and reads app.state
        return getattr(self.app, name)

    def _on_load_failure(self) -> None:
        state = self.app.state
        self.load_error = (
            getattr(getattr(state, "serving", None), "load_error", None)
            or getattr(state, "load_error", None)
            or "model failed to load"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":

            async def send_with_replica(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), self.replica_header]}
                await send(message)

            return await self.app(scope, receive, send_with_replica)
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_when_warm(message):
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._wait_healthy()
                except Exception as exc:  # reported as a failed start-up
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        await self.app(scope, receive, send_when_warm)

    async def _wait_healthy(self) -> None:
        import httpx

        started = time.monotonic()
        transport = httpx.ASGITransport(app=self.app)  # in-process: no socket, no lifespan
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            while True:
                if self.load_error:
                    raise RuntimeError(f"model failed to load: {self.load_error}")
                if (await client.get("/health")).status_code == 200:
                    log.info("replica warm after %.1f s", time.monotonic() - started)
                    return
                if time.monotonic() - started > self.timeout_s:
                    raise TimeoutError(f"not warm after {self.timeout_s:.0f} s")
                await asyncio.sleep(0.2)


@serve.deployment(
    name="embeddings",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    graceful_shutdown_timeout_s=SHUTDOWN_GRACE_S,
    health_check_period_s=10,
)
@serve.ingress()
class EmbeddingReplica:
    """One replica: settings + Embedder of the chosen service; the ASGI app comes from create_app."""

    def __init__(self, service: str, settings: dict[str, Any]):
        settings_cls, embedder_cls, self.packages = service_classes(service)
        self.settings = settings_cls(**settings)
        self.embedder = embedder_cls(self.settings)
        self.embedder.verify()  # sha256 of the served files against the manifest, as the plain service
        self.wrapped: WarmBeforeReady | None = None

    def __serve_build_asgi_app__(self):
        from services.common.app import create_app

        # Not `self.app`: that is Serve's read-only property for the ASGI app.
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.wrapped = WarmBeforeReady(create_app(self.settings, self.embedder, self.packages), replica_id)
        return self.wrapped

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose model failed is replaced."""
        if self.wrapped is not None and self.wrapped.load_error:
            raise RuntimeError(self.wrapped.load_error)


def resolve(path: str) -> str:
    candidate = Path(path)
    return str(candidate if candidate.is_absolute() else (REPO / candidate))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for serve_config.yaml (`import_path: deploy.ray.serve_app:build_app`)."""
    return make_app(args)


def make_app(args: dict[str, Any] | AppArgs, **deployment_options) -> serve.Application:
    """The application for Python callers (tests, measure.py): `deployment_options` go to `.options()`,
    e.g. max_ongoing_requests (in a config file, the `deployments:` section does that)."""
    args = args if isinstance(args, AppArgs) else AppArgs(**args)
    service_classes(args.service)  # fail here, in the driver, on a wrong service name
    settings = {**args.settings, "artifacts_dir": resolve(args.artifacts_dir), "threads": args.threads}
    actor: dict[str, Any] = {"num_cpus": args.threads}
    if args.memory_mb:
        actor["memory"] = args.memory_mb * 2**20
    options: dict[str, Any] = {"ray_actor_options": actor, **deployment_options}
    if args.num_replicas is not None:
        options["num_replicas"] = args.num_replicas
    return EmbeddingReplica.options(**options).bind(args.service, settings)
