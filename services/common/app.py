"""App factory: routes, lifespan (load + warm-up in the background, /health 503 until done), the edge middleware.

Routes only see the Embedder interface; they never import torch or onnxruntime.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import platform
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .batcher import DeadlineExceeded, DynamicBatcher, Overloaded, ShuttingDown, retry_after_for, retry_headers
from .embedder import Embedder
from .errors import (
    ApiError,
    ErrorType,
    error_response,
    error_responses,
    install_error_handlers,
    openai_error_responses,
)
from .inputs import (
    check_dimensions,
    check_model_ids,
    finish_vectors,
    is_token_ids,
    prompt_for,
    token_id_rows,
)
from .metrics import ServiceMetrics
from .schemas import (
    DecodeRequest,
    EmbedRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAIUsage,
    SimpleToken,
    TokenizeRequest,
)
from .settings import ServiceSettings
from .token_ids import TokenIdReader, TokenIdsUnavailable
from .tracing import NO_TRACE, Tracing

log = logging.getLogger("embedding_service")

# POST routes that embed (POST / is /embed, as text-embeddings-inference answers it for an embedding model).
EMBED_ROUTES = ("/embed", "/v1/embeddings", "/")
# Routes behind admission (draining, requests in flight, the queue's wait): tokenizing competes with the model
# for the same cores, so it is shed with the embedding work.
WORK_ROUTES = (*EMBED_ROUTES, "/tokenize", "/decode")
METRIC_ROUTES = (*WORK_ROUTES, "/health", "/info", "/metrics", "/v1/models")
OPEN_ROUTES = ("/health",)  # answered without an API key: probes of orchestrators and load balancers


def _versions(runtime_packages: tuple[str, ...]) -> dict:
    out = {"python": platform.python_version()}
    for name in ("fastapi", "uvicorn", "numpy", "tokenizers", *runtime_packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def public_model_name(source: str) -> str:
    """The model as users know it: a hub id stays, a local folder shows only its name (no file paths)."""
    source = source.rstrip("/")
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
        return source.replace("\\", "/").rsplit("/", 1)[-1]
    return source


@dataclass
class ServingState:
    """What the edge middleware and the routes share: readiness, draining, requests in flight."""

    ready: bool = False
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    batcher: DynamicBatcher | None = None


class EdgeMiddleware:
    """Everything decided before a route runs, cheapest first (pure ASGI, so nothing is parsed on rejection).

    API key (401) -> draining (503) -> requests in flight (429) -> the queue's estimated wait (429, before the
    body is read) -> the body, read with a size limit (413) and a time limit (408). It also counts requests.
    """

    def __init__(self, app, settings: ServiceSettings, state: ServingState, metrics: ServiceMetrics,
                 tracing: Tracing):
        self.app, self.settings, self.state, self.metrics, self.tracing = app, settings, state, metrics, tracing
        self._keys = [key.encode() for key in settings.api_key_list]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = path if path in METRIC_ROUTES else "/v1/models" if path.startswith("/v1/models/") else "other"
        status_seen = []

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        trace = self.tracing.start(scope) if self.tracing.enabled else NO_TRACE
        scope.setdefault("state", {})["trace"] = trace
        trace_token = trace.activate() if trace.enabled else None
        embedding = path in WORK_ROUTES and scope["method"] == "POST"
        if embedding:
            self.state.in_flight += 1
            self.metrics.in_flight.inc()
        try:
            rejection = self._reject_early(scope, path, embedding)
            if rejection is not None:
                await rejection(scope, receive, send_counted)
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                await self._with_body(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            if embedding:
                self.state.in_flight -= 1
                self.metrics.in_flight.dec()
            status = str(status_seen[0]) if status_seen else "disconnected"
            self.metrics.requests.labels(route=route, status=status).inc()
            if route in WORK_ROUTES:
                self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)
            trace.end(status_seen[0] if status_seen else None)
            if trace_token is not None:
                trace.deactivate(trace_token)

    def _reject_early(self, scope, path: str, embedding: bool) -> Response | None:
        if self._keys and path not in OPEN_ROUTES and not self._authorized(scope):
            return error_response(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                ErrorType.UNAUTHORIZED.value,
                {"WWW-Authenticate": "Bearer"},
                path,
            )
        if not embedding:
            return None
        if self.state.draining:
            return error_response(
                503,
                "the service is shutting down; retry on another replica",
                ErrorType.UNHEALTHY.value,
                {"Retry-After": "1", "Connection": "close"},
                path,
            )
        if self.state.in_flight > self.settings.max_concurrent_requests:
            self.metrics.rejected.labels(reason="concurrency").inc()
            wait = self.state.batcher.estimated_wait_s() if self.state.batcher else 0.0
            return error_response(
                429,
                f"overloaded: {self.settings.max_concurrent_requests} requests in flight; retry later",
                ErrorType.OVERLOADED.value,
                retry_headers(retry_after_for(wait)),
                path,
            )
        if self.state.ready and self.state.batcher is not None:
            try:
                self.state.batcher.check_admission()
            except Overloaded as exc:
                return error_response(
                    429,
                    f"overloaded: {exc}; retry later",
                    ErrorType.OVERLOADED.value,
                    retry_headers(exc.retry_after_s),
                    path,
                )
        return None

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every key, in constant time each, so timing says nothing about which was close.
        matches = [hmac.compare_digest(token.strip(), key) for key in self._keys]
        return any(matches)

    async def _with_body(self, scope, receive, send):
        max_bytes = self.settings.max_payload_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await body_too_large(max_bytes, scope["path"])(scope, receive, send)
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                reason = f"the request body took longer than {self.settings.body_timeout_s:g} s"
                return await closing_error(408, reason, ErrorType.TIMEOUT, scope["path"])(scope, receive, send)
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nothing to answer, nothing to log
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                return await body_too_large(max_bytes, scope["path"])(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _client_gone(receive) -> None:
    """Returns once the client has disconnected (the body was already read, so only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def drain(app: FastAPI, grace_s: float, delay_s: float = 0.0) -> dict:
    """Stop taking work and let admitted requests finish; cut off what is left at the grace deadline.

    /health answers 503 at once (load balancers stop sending), new embedding requests get 503, requests in
    flight run on. Returns what happened, for the log.
    """
    state: ServingState = app.state.serving
    started = time.monotonic()
    state.draining = True
    at_start = state.in_flight
    log.info("draining: %d request(s) in flight, grace %.0f s", at_start, grace_s)
    while time.monotonic() - started < grace_s and (state.in_flight > 0 or time.monotonic() - started < delay_s):
        await asyncio.sleep(0.05)
    cut_off = state.in_flight
    if cut_off and state.batcher is not None:
        await state.batcher.stop(ShuttingDown(f"cut off at the shutdown grace deadline ({grace_s:g} s)"))
        # Let the routes send their 503s before the server closes the connections.
        for _ in range(40):
            if state.in_flight == 0:
                break
            await asyncio.sleep(0.05)
    summary = {"in_flight_at_sigterm": at_start, "cut_off": cut_off, "seconds": round(time.monotonic() - started, 2)}
    log.info("drained: %s", summary)
    return summary


def closing_error(status_code: int, message: str, error_type: ErrorType, path: str = "") -> Response:
    """An error answered before the body was read to its end: the connection cannot carry another request."""
    return error_response(status_code, message, error_type.value, {"Connection": "close"}, path)


def body_too_large(max_bytes: int, path: str = "") -> Response:
    return closing_error(413, f"request body is larger than {max_bytes} bytes", ErrorType.TOO_LARGE, path)


def is_valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON allows \\ud800 escapes; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def trace_of(request: Request):
    """The request's trace (set by EdgeMiddleware; NO_TRACE where tracing is off)."""
    return getattr(request.state, "trace", NO_TRACE)


def service_name(settings: ServiceSettings) -> str:
    """torch_api / onnx_api: from the settings' env prefix (TORCH_API_ -> torch_api)."""
    return str(settings.model_config.get("env_prefix", "EMBED_")).rstrip("_").lower() or "embedding_service"


def create_app(settings: ServiceSettings, embedder: Embedder, runtime_packages: tuple[str, ...] = (),
               tracer_provider=None) -> FastAPI:
    """tracer_provider: an OpenTelemetry TracerProvider to trace into (tests); by default one exporting over
    OTLP/HTTP when settings.otlp_endpoint is set, else tracing is off."""
    metrics = ServiceMetrics()
    state = ServingState()
    trace_attributes = {"embedding.runtime": embedder.runtime, "embedding.variant": embedder.variant}
    tracing = (Tracing(tracer_provider, trace_attributes) if tracer_provider is not None else
               Tracing.from_settings(settings.otlp_endpoint, settings.otlp_service_name or service_name(settings),
                                     trace_attributes))
    token_ids = TokenIdReader(settings.token_ids)
    started_at = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = DynamicBatcher(
            embedder.run_batch,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue_wait_ms=settings.max_queue_wait_ms,
        )
        state.batcher = app.state.batcher = batcher
        batcher.start()
        loader = asyncio.create_task(_load_and_warm_up(app, batcher))
        yield
        loader.cancel()
        await batcher.stop()
        await asyncio.to_thread(tracing.shutdown)

    async def _load_and_warm_up(app: FastAPI, batcher: DynamicBatcher) -> None:
        try:
            started = time.perf_counter()
            await asyncio.to_thread(embedder.load)
            await asyncio.to_thread(token_ids.load)
            loaded = time.perf_counter()
            await asyncio.to_thread(embedder.warmup)
            # One timed call of a typical batch, so admission has a measured throughput from the first request.
            await asyncio.to_thread(batcher.calibrate, embedder.tokenize(CALIBRATION_TEXTS))
            app.state.bare_tokens = len(embedder.tokenize([""])[0])
            warm = time.perf_counter()
            state.ready = True
            log.info(
                "model loaded in %.1f s, warmed up in %.1f s: serving %s / %s (dim %d, max %d tokens, "
                "%.0f padded tokens/s measured)",
                loaded - started,
                warm - loaded,
                embedder.runtime,
                embedder.variant,
                embedder.dimension,
                embedder.max_tokens,
                batcher.throughput.padded_tokens_per_s,
            )
        except Exception as exc:  # noqa: BLE001 - reported through /health and the exit code
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s; the service stays unhealthy", state.load_error)
            on_failure = getattr(app.state, "on_load_failure", None)
            if on_failure:
                on_failure()

    app = FastAPI(title=f"Embeddings ({embedder.runtime})", lifespan=lifespan)
    choice = getattr(embedder, "choice", None)
    for candidate in choice.candidates if choice is not None else ():
        metrics.variant_candidates.labels(candidate.name, candidate.precision,
                                          candidate.verdict).set(candidate.texts_per_s or 0)
    app.state.metrics = metrics
    app.state.embedder = embedder
    app.state.serving = state
    app.state.tracing = tracing
    app.state.bare_tokens = 0
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, settings=settings, state=state, metrics=metrics, tracing=tracing)
    model_name = (settings.served_model_name or settings.model_name
                  or public_model_name(str(embedder.info().get("model", ""))))
    default_prompt_name = settings.default_prompt_name or embedder.default_prompt_name

    def require_ready() -> None:
        if state.draining:
            raise ApiError(ErrorType.UNHEALTHY, "the service is shutting down", {"Retry-After": "1"})
        if not state.ready:
            reason = state.load_error or "model is loading and warming up"
            raise ApiError(ErrorType.UNHEALTHY, f"not ready: {reason}", {"Retry-After": "5"})

    def check_count(count: int, param: str, openai: bool = False) -> None:
        limit = settings.max_client_batch_size
        if count > limit:
            # LangChain's OpenAIEmbeddings sends up to chunk_size=1000 inputs per request by default
            hint = f" (LangChain: OpenAIEmbeddings(chunk_size={limit}))" if openai else ""
            raise ApiError(ErrorType.TOO_LARGE, f"{count} inputs is more than the limit of {limit} per request; "
                           f"send at most {limit}{hint}", param=param)

    def checked_texts(inputs: str | list[str], allow_empty: bool = False, openai: bool = False) -> list[str]:
        """The request's texts, within the count limit, each valid Unicode and (unless allowed) not empty."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ApiError(ErrorType.EMPTY, "input is empty: send at least one text", param="input")
        check_count(len(texts), "input", openai)
        for i, text in enumerate(texts):
            if not allow_empty and not text.strip():
                raise ApiError(ErrorType.EMPTY, f"input {i} is an empty string", param="input")
            if not is_valid_unicode(text):
                raise ApiError(
                    ErrorType.INVALID_TEXT,
                    f"input {i} is not valid Unicode (it holds a lone surrogate such as \\ud800)",
                    param="input",
                )
        return texts

    def fitted(ids: list[list[int]], truncate: bool, direction: str = "right") -> list[list[int]]:
        """Rows over the model's limit: cut from the end (right) or the start (left), or 413 without truncate."""
        for i, row in enumerate(ids):
            if len(row) > embedder.max_tokens and not truncate:
                raise ApiError(
                    ErrorType.TOO_LARGE,
                    f"input {i} has {len(row)} tokens, more than the limit of {embedder.max_tokens}; "
                    "send truncate=true to cut it",
                    param="inputs",
                )
        cut = embedder.truncate_left if direction == "left" else embedder.truncate
        return [cut(row) for row in ids]

    async def validated_texts(request: Request, inputs: str | list[str], truncate: bool, direction: str = "right",
                              prompt: str = "", openai: bool = False) -> list[list[int]]:
        """Checks the request's limits and tokenizes it once; returns truncated token ids per text.

        openai: an empty (or invisible) text is embedded as the empty text, as OpenAI-compatible clients
        expect (LangChain sends input="" for an empty document and uses the vector it gets back).
        """
        allow_empty = openai
        texts = checked_texts(inputs, allow_empty, openai)
        tokenize_started = time.perf_counter()
        ids = await asyncio.to_thread(embedder.tokenize, [prompt + text for text in texts])
        trace_of(request).child("tokenize", tokenize_started, time.perf_counter(), **{"embedding.texts": len(ids)})
        if not allow_empty:
            bare = len(embedder.tokenize([prompt])[0]) if prompt else app.state.bare_tokens
            for i, row in enumerate(ids):
                if len(row) <= bare:
                    raise ApiError(ErrorType.EMPTY, f"input {i} has nothing to embed: only invisible or control "
                                   "characters", param="input")
        return fitted(ids, truncate, direction)

    async def embed_texts(request: Request, token_ids: list[list[int]]):
        """Queue the rows and wait for their vectors (raw: not normalized); (None, None) if the client left."""
        batcher = state.batcher
        try:
            job = batcher.submit(token_ids)
        except Overloaded as exc:
            raise ApiError(ErrorType.OVERLOADED, f"overloaded: {exc}; retry later",
                           retry_headers(exc.retry_after_s)) from None
        result_task = asyncio.ensure_future(batcher.wait(job))
        gone_task = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({result_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_task.cancel()
        if not result_task.done():  # the client went away: drop its queued texts
            batcher.cancel(job)
            result_task.cancel()
            return None, None
        try:
            result = result_task.result()
        except DeadlineExceeded as exc:  # load shed from the queue: an overload answer, not a server fault
            raise ApiError(ErrorType.OVERLOADED, f"overloaded: {exc}; retry later",
                           retry_headers(exc.retry_after_s)) from None
        except ShuttingDown as exc:
            raise ApiError(ErrorType.UNHEALTHY, f"not run: {exc}", {"Retry-After": "1"}) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ApiError(ErrorType.BACKEND, f"model call failed: {type(exc).__name__}") from None
        trace = trace_of(request)
        if trace.enabled:
            trace.child("queue", result.enqueued_at, result.started_at,
                        **{"embedding.estimated_queue_ms": round(result.estimated_queue_ms, 2)})
            trace.child("inference", result.started_at, result.finished_at,
                        **{"embedding.variant": embedder.variant, "embedding.batch_size": result.batch_texts})
            trace.set("embedding.batch_size", result.batch_texts)
            trace.set("embedding.texts", len(token_ids))
            trace.set("embedding.tokens", sum(map(len, token_ids)))
        return result.embeddings, result

    def timing_headers(started: float, result) -> dict:
        return {
            "x-total-time": f"{(time.perf_counter() - started) * 1000:.2f}",
            "x-queue-time": f"{result.queue_ms:.2f}",
            "x-estimated-queue-time": f"{result.estimated_queue_ms:.2f}",  # what admission expected
            "x-inference-time": f"{result.inference_ms:.2f}",
        }

    client_gone = Response(status_code=499)  # never reaches the client: it has gone
    tei_errors = error_responses(400, 401, 408, 413, 422, 429, 503)

    async def embed(body: EmbedRequest, request: Request):
        started = time.perf_counter()
        require_ready()
        check_dimensions(body.dimensions, embedder.dimension)
        prompt = prompt_for(embedder, body.prompt_name, default_prompt_name)
        truncate = settings.auto_truncate if body.truncate is None else body.truncate
        token_ids = await validated_texts(request, body.inputs, truncate, body.truncation_direction, prompt)
        vectors, result = await embed_texts(request, token_ids)
        if result is None:
            return client_gone
        vectors = finish_vectors(vectors, body.dimensions, body.normalize)
        return JSONResponse(vectors.tolist(), headers=timing_headers(started, result))

    embed_doc = {"responses": tei_errors, "response_model": list[list[float]]}
    app.post("/embed", summary="Embed texts (text-embeddings-inference compatible)", **embed_doc)(embed)
    # huggingface_hub's InferenceClient(model=<base url>).feature_extraction posts to the root, as TEI answers.
    app.post("/", summary="Embed texts: the same as /embed (text-embeddings-inference answers the root too)",
             **embed_doc)(embed)

    @app.post("/tokenize", summary="Tokens of each text (text-embeddings-inference compatible)",
              responses=tei_errors, response_model=list[list[SimpleToken]])
    async def tokenize(body: TokenizeRequest, request: Request):
        require_ready()
        prompt = prompt_for(embedder, body.prompt_name, default_prompt_name)
        texts = [prompt + text for text in checked_texts(body.inputs, allow_empty=True)]
        started = time.perf_counter()
        rows = await asyncio.to_thread(embedder.tokens, texts, body.add_special_tokens)
        trace_of(request).child("tokenize", started, time.perf_counter(), **{"embedding.texts": len(texts)})
        return JSONResponse([[asdict(token) for token in row] for row in rows])

    @app.post("/decode", summary="Text of token ids (text-embeddings-inference compatible)", responses=tei_errors,
              response_model=list[str])
    async def decode(body: DecodeRequest, request: Request):
        require_ready()
        rows = token_id_rows(body.ids) if body.ids else [[]]
        check_count(len(rows), "ids")
        try:
            return JSONResponse(await asyncio.to_thread(embedder.decode, rows, body.skip_special_tokens))
        except ValueError as exc:
            raise ApiError(ErrorType.INVALID_PARAMETER, str(exc), param="ids") from None
        except NotImplementedError as exc:
            raise ApiError(ErrorType.INVALID_PARAMETER, str(exc), param="ids") from None

    async def openai_token_ids(request: Request, rows: list[list[int]]) -> list[list[int]]:
        """Token-id input: what the ids mean is the TOKEN_IDS setting (services/common/token_ids.py)."""
        check_count(len(rows), "input", openai=True)
        if token_ids.unavailable:
            raise ApiError(ErrorType.INVALID_PARAMETER, token_ids.refusal(), param="input")
        if settings.token_ids == "model":
            check_model_ids(embedder, rows)
            empty = embedder.tokenize([""])[0]
            return fitted([row or empty for row in rows], truncate=True)
        texts = []
        for i, row in enumerate(rows):
            try:
                texts.append(token_ids.decode(row))
            except ValueError as exc:
                raise ApiError(ErrorType.INVALID_PARAMETER, f"input {i}: {exc}", param="input") from None
            except TokenIdsUnavailable as exc:
                raise ApiError(ErrorType.INVALID_PARAMETER, str(exc), param="input") from None
        return await validated_texts(request, texts, truncate=True,
                                     prompt=prompt_for(embedder, None, default_prompt_name), openai=True)

    @app.post("/v1/embeddings", summary="Embed texts or token ids (OpenAI compatible)",
              responses=openai_error_responses(400, 401, 408, 413, 422, 429, 503),
              response_model=OpenAIEmbeddingResponse)
    async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request):
        started = time.perf_counter()
        require_ready()
        check_dimensions(body.dimensions, embedder.dimension)
        if body.model is not None and not is_valid_unicode(body.model):
            # The answer echoes the model name: a lone surrogate could not be written out as JSON.
            raise ApiError(ErrorType.INVALID_TEXT, "model is not valid Unicode (it holds a lone surrogate)",
                           param="model")
        if is_token_ids(body.input):
            token_ids_in = await openai_token_ids(request, token_id_rows(body.input))
        else:
            prompt = prompt_for(embedder, None, default_prompt_name)
            token_ids_in = await validated_texts(request, body.input, truncate=True, prompt=prompt, openai=True)
        vectors, result = await embed_texts(request, token_ids_in)
        if result is None:
            return client_gone
        vectors = finish_vectors(vectors, body.dimensions, embedder.normalize_default)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        tokens = sum(map(len, token_ids_in))
        payload = OpenAIEmbeddingResponse(
            data=[OpenAIEmbedding(index=i, embedding=e) for i, e in enumerate(encoded)],
            model=body.model or model_name,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return JSONResponse(payload.model_dump(), headers=timing_headers(started, result))

    def served_model() -> OpenAIModel:
        return OpenAIModel(id=model_name, created=started_at)

    @app.get("/v1/models", summary="The served model (OpenAI compatible)", response_model=OpenAIModelList,
             responses=openai_error_responses(401))
    async def openai_models():
        return OpenAIModelList(data=[served_model()])

    @app.get("/v1/models/{model_id:path}", summary="The served model by name (OpenAI compatible)",
             response_model=OpenAIModel, responses=openai_error_responses(401, 404))
    async def openai_model(model_id: str):
        if model_id != model_name:
            raise ApiError(ErrorType.NOT_FOUND, f"the model {model_id!r} does not exist here; this service serves "
                           f"{model_name!r}", param="model")
        return served_model()

    @app.get("/health", summary="200 once warmed up; 503 before, and from SIGTERM on", responses=error_responses(503))
    async def health():
        require_ready()
        return {"status": "ok", "variant": embedder.variant}

    @app.get("/info", responses=error_responses(401))
    async def info():
        batcher = state.batcher
        details = {
            **embedder.info(),
            "model": model_name,
            "ready": state.ready,
            "draining": state.draining,
            "batching": {
                "max_client_batch_size": settings.max_client_batch_size,
                "max_batch_size": settings.max_batch_size,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue_wait_ms": settings.max_queue_wait_ms,
                "max_concurrent_requests": settings.max_concurrent_requests,
                "max_payload_bytes": settings.max_payload_bytes,
            },
            "admission": {
                "estimated_queue_wait_s": round(batcher.estimated_wait_s(), 3) if batcher else None,
                "measured_padded_tokens_per_s": round(batcher.throughput.padded_tokens_per_s, 1) if batcher else None,
                "requests_in_flight": state.in_flight,
            },
            "inputs": {
                "auto_truncate": settings.auto_truncate,
                "token_ids": settings.token_ids if not token_ids.unavailable else f"refused ({token_ids.unavailable})",
                "prompts": sorted(embedder.prompts),
                "default_prompt_name": default_prompt_name,
            },
            "tracing": tracing.enabled,
        }
        if settings.show_versions:
            details["versions"] = _versions(runtime_packages)
        return details

    @app.get("/metrics", summary="Prometheus metrics", responses=error_responses(401))
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


# A typical mixed batch for the throughput measurement at warm-up (short questions to a paragraph).
CALIBRATION_TEXTS = [
    "How do I reset my password?",
    "The quarterly report shows revenue growth in every region except the north-east, where sales fell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Which trains run from the airport to the city centre after midnight, and how often do they leave?",
] * 4
