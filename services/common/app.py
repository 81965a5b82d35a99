"""The app factory. The request path: edge.py (before a route) -> routes.py -> handling.py (EmbeddingService,
the named steps) -> admission.py + batcher.py; start and stop in lifecycle.py.

Nothing here imports torch or onnxruntime: each service supplies an Embedder.
"""

from __future__ import annotations

from fastapi import FastAPI

from runtime.host import package_versions
from runtime.manifest import public_model_name

from .edge import EdgeMiddleware
from .embedder import Embedder
from .errors import install_error_handlers
from .handling import EmbeddingService, ServingState
from .lifecycle import lifespan_for
from .metrics import ServiceMetrics
from .routes import add_read_routes, add_work_routes
from .settings import ServiceSettings
from .token_ids import TokenIdReader
from .tracing import Tracing

__all__ = ["create_app"]


def versions(runtime_packages: tuple[str, ...]) -> dict:
    """What /info shows with --show-versions: the serving stack and the service's runtime packages."""
    return package_versions(("fastapi", "uvicorn", "numpy", "tokenizers", *runtime_packages))


def service_name(settings: ServiceSettings) -> str:
    """torch_api / onnx_api: from the settings' env prefix (TORCH_API_ -> torch_api)."""
    return str(settings.model_config.get("env_prefix", "EMBED_")).rstrip("_").lower() or "embedding_service"


def create_app(
    settings: ServiceSettings, embedder: Embedder, runtime_packages: tuple[str, ...] = (), tracer_provider=None
) -> FastAPI:
    """The service's app: the request path (handling.py) behind the edge middleware, with its lifespan.

    tracer_provider: an OpenTelemetry TracerProvider to trace into (tests); by default one exporting over
    OTLP/HTTP when settings.otlp_endpoint is set, else tracing is off.
    """
    metrics = ServiceMetrics()
    trace_attributes = {"embedding.runtime": embedder.runtime, "embedding.variant": embedder.variant}
    tracing = (
        Tracing(tracer_provider, trace_attributes)
        if tracer_provider is not None
        else Tracing.from_settings(
            settings.otlp_endpoint, settings.otlp_service_name or service_name(settings), trace_attributes
        )
    )
    model_name = (
        settings.served_model_name or settings.model_name or public_model_name(str(embedder.info().get("model", "")))
    )
    service = EmbeddingService(settings, embedder, ServingState(), TokenIdReader(settings.token_ids), model_name)

    app = FastAPI(title=f"Embeddings ({embedder.runtime})", lifespan=lifespan_for(settings, service, metrics, tracing))
    choice = getattr(embedder, "choice", None)
    for candidate in choice.candidates if choice is not None else ():
        metrics.variant_candidates.labels(candidate.name, candidate.precision, candidate.verdict).set(
            candidate.texts_per_s or 0
        )
    app.state.metrics, app.state.embedder, app.state.serving = metrics, embedder, service.state
    app.state.tracing, app.state.service = tracing, service
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, settings=settings, state=service.state, metrics=metrics, tracing=tracing)
    add_work_routes(app, service)

    def info() -> dict:
        return service.info(tracing.enabled, versions(runtime_packages) if settings.show_versions else None)

    add_read_routes(app, service, metrics, info)
    return app
