"""Process entry point shared by both services: settings, artifact checks, uvicorn."""

from __future__ import annotations

import logging
import sys

from build_artifacts.manifest import ArtifactError

from .app import create_app
from .embedder import Embedder
from .settings import ServiceSettings, parse_settings

log = logging.getLogger("embedding_service")


def serve(settings_cls: type[ServiceSettings], embedder_factory, runtime_packages: tuple[str, ...], prog: str,
          argv: list[str] | None = None) -> int:
    import uvicorn

    settings = parse_settings(settings_cls, argv, prog)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        embedder: Embedder = embedder_factory(settings)
        embedder.verify()
    except ArtifactError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 2
    chosen = embedder.manifest["artifacts"][embedder.variant]["parity"]
    log.info("serving variant %s (%s; requested %s; parity min cosine %.4f) from %s", embedder.variant,
             "fastest of " + "/".join(embedder.variants_fastest_first) + " that passes parity"
             if settings.variant == "auto" else "as requested", settings.variant, chosen["min_cosine"],
             embedder.artifacts_dir)
    app = create_app(settings, embedder, runtime_packages)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level.lower(), timeout_graceful_shutdown=5))

    def stop_on_load_failure() -> None:
        server.should_exit = True

    app.state.on_load_failure = stop_on_load_failure
    server.run()
    if getattr(app.state, "load_error", None):
        print(f"error: model failed to load: {app.state.load_error}", file=sys.stderr)
        return 1
    return 0
