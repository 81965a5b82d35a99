"""Process entry point shared by both services: settings, artifact checks, uvicorn with drain and slow-client limits."""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from runtime.manifest import ArtifactError

from .app import create_app
from .embedder import Embedder
from .lifecycle import drain
from .logs import configure_logging
from .settings import ServiceSettings, SettingsError, parse_settings

log = logging.getLogger("embedding_service")


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a limit on how long a request's headers may take.

    uvicorn times out idle keep-alive connections but not a client that opens a socket and trickles its
    headers (slowloris): such sockets stay open forever. Here a connection that has not sent complete
    headers `header_timeout_s` after it opened (or after its previous response) is closed.
    """

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and self._header_timer is not None:  # headers complete: a request is running
            self._header_timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._header_timer is None and not self.transport.is_closing():  # the next request's headers
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc):
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: drain (health 503, finish admitted requests within the grace period), then exit 0.

    uvicorn alone stops listening at once, waits 5 s at most, cuts the rest off, and re-raises the signal
    (exit 143). A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, app, settings: ServiceSettings):
        super().__init__(config)
        self._app, self._settings = app, settings
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining or not getattr(self._app.state, "serving", None) or not self.started:
            self.should_exit = True
            if self._draining:
                self.force_exit = True
            return
        self._draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await drain(self._app, self._settings.shutdown_grace_s, self._settings.drain_delay_s)
        self.should_exit = True


def serve(
    settings_cls: type[ServiceSettings],
    embedder_factory,
    runtime_packages: tuple[str, ...],
    prog: str,
    argv: list[str] | None = None,
) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        settings = parse_settings(settings_cls, argv, prog)
        debug = settings.debug
        uvicorn_log_config = configure_logging(settings.log_level, settings.json_output)
        embedder: Embedder = embedder_factory(settings)
        check_prompt_setting(settings, embedder)
        embedder.verify()
    except (SettingsError, ArtifactError) as exc:
        return _fail(f"cannot start: {exc}", debug)
    except Exception as exc:  # any other start-up failure a user can cause: one line, exit 2
        return _fail(f"cannot start: {type(exc).__name__}: {exc} (run with --debug for the traceback)", debug)
    log_start_up(settings, embedder)
    app = create_app(settings, embedder, runtime_packages)
    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        http=HeaderTimeoutProtocol,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        # The drain above already waited; this only bounds closing the connections.
        timeout_graceful_shutdown=5,
        **({"log_config": uvicorn_log_config} if uvicorn_log_config else {}),  # type: ignore[arg-type]
    )
    server = DrainingServer(config, app, settings)

    def stop_on_load_failure() -> None:
        server.should_exit = True

    app.state.on_load_failure = stop_on_load_failure
    try:
        server.run()
    except (OSError, SystemExit) as exc:  # e.g. the port is taken (uvicorn logs it and exits 1)
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        return _fail(f"cannot serve on {settings.host}:{settings.port}: {exc}", debug)
    if not server.started and not getattr(app.state.serving, "load_error", None):
        return _fail(f"cannot serve on {settings.host}:{settings.port} (see the log above)", debug)
    if app.state.serving.load_error:
        print(f"error: model failed to load: {app.state.serving.load_error}", file=sys.stderr)
        return 1
    return 0


def log_start_up(settings: ServiceSettings, embedder: Embedder) -> None:
    """Who may call, the CPU, the candidates and the variant chosen among them, and why."""
    if settings.api_key_list:
        log.info("API keys required on every route but /health (%d key(s))", len(settings.api_key_list))
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without API keys: anyone who reaches it can use it", settings.host)
    choice = getattr(embedder, "choice", None)
    if choice is not None:
        log.info(
            "CPU: %s; artifacts built on: %s",
            choice.host.summary(),
            choice.build_host.summary() if choice.build_host else "not recorded",
        )
        for line in choice.lines():
            log.info("  candidate %s", line)
    log.info(
        "serving variant %s (%s) from %s",
        embedder.variant,
        choice.reason if choice is not None else "as requested",
        embedder.artifacts_dir,
    )


def check_prompt_setting(settings: ServiceSettings, embedder: Embedder) -> None:
    """A default prompt name must be one the model defines: refused at start-up, not on every request."""
    name = settings.default_prompt_name
    if name and name not in embedder.prompts:
        have = ", ".join(sorted(embedder.prompts)) or "none"
        raise SettingsError(
            f"invalid setting: default_prompt_name (--default-prompt-name) = {name!r}: the model's "
            f"sentence-transformers config defines no such prompt (it has: {have})"
        )


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2
