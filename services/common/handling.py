"""The request path as named steps, shared by every route: validate -> tokenize -> admit -> batch -> respond.

Routes (routes.py) are a few lines each over `EmbeddingService`; what is decided before a route runs (API key,
draining, in-flight limit, the body's size and time) is the edge middleware's (edge.py).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from dataclasses import asdict, dataclass
from typing import cast

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from runtime.memory import resident_mb

from .admission import Overloaded
from .batcher import BatchResult, DynamicBatcher, Job, ShuttingDown
from .embedder import Embedder
from .errors import ApiError, ErrorType
from .inputs import check_dimensions, check_model_ids, finish_vectors, is_token_ids, prompt_for, token_id_rows
from .schemas import (
    DecodeRequest,
    EmbedRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIUsage,
    TokenizeRequest,
)
from .settings import ServiceSettings
from .token_ids import TokenIdReader, TokenIdsUnavailable
from .tracing import NO_TRACE

CLIENT_GONE = Response(status_code=499)  # never reaches the client: it has gone


@dataclass
class ServingState:
    """What the edge middleware and the routes share: readiness, draining, requests in flight."""

    ready: bool = False
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    batcher: DynamicBatcher | None = None
    rss_after_warmup_mb: float | None = None


async def _client_gone(receive) -> None:
    """Returns once the client has disconnected (the body was already read, so only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def with_cancellation(handler):
    """Run a route handler against its client's disconnect (as vLLM's `with_cancellation`): a client that hangs
    up cancels the handler, whose queued texts `EmbeddingService.batch` drops, and gets nothing back.

    The one place a gone client is noticed; the handler must take the request as `request=`.
    """

    @functools.wraps(handler)
    async def run_until_gone(*args, **kwargs):
        request: Request = kwargs["request"]
        handler_task = asyncio.ensure_future(handler(*args, **kwargs))
        gone_task = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({handler_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancels the request (shutdown): its handler goes with it
            handler_task.cancel()
            raise
        finally:
            gone_task.cancel()
            if gone_task.done() and not gone_task.cancelled():
                gone_task.exception()  # retrieved, so a failed receive is not logged as never retrieved
        if handler_task.done():
            return handler_task.result()
        handler_task.cancel()
        await asyncio.wait({handler_task})  # never raises: its clean-up (dropping queued texts) has run
        return CLIENT_GONE

    return run_until_gone


async def _in_thread(fn, *args):
    """asyncio.to_thread whose cancellation waits for the thread (which cannot be stopped): a gone client's
    tokenizing keeps its request's in-flight slot until it is done, so the in-flight limit still bounds it."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


def trace_of(request: Request):
    """The request's trace (set by the edge middleware; NO_TRACE where tracing is off)."""
    return getattr(request.state, "trace", NO_TRACE)


def is_valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON allows \\ud800 escapes; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def timing_headers(started: float, result: BatchResult) -> dict:
    """TEI's timing headers, so a load test can tell model time from HTTP and queueing."""
    return {
        "x-total-time": f"{(time.perf_counter() - started) * 1000:.2f}",
        "x-queue-time": f"{result.queue_ms:.2f}",
        "x-estimated-queue-time": f"{result.estimated_queue_ms:.2f}",  # what admission expected
        "x-inference-time": f"{result.inference_ms:.2f}",
    }


class EmbeddingService:
    """One object per app: the steps every embedding route takes, each testable on its own."""

    def __init__(
        self,
        settings: ServiceSettings,
        embedder: Embedder,
        state: ServingState,
        token_ids: TokenIdReader,
        model_name: str,
    ):
        self.settings, self.embedder, self.state, self.token_ids = settings, embedder, state, token_ids
        self.model_name = model_name
        self.default_prompt_name = settings.default_prompt_name or embedder.default_prompt_name
        self.bare_tokens = 0  # tokens of the empty text (special tokens only): set at warm-up
        self.started_at = int(time.time())

    @property
    def batcher(self) -> DynamicBatcher:
        if self.state.batcher is None:
            raise RuntimeError("the app's lifespan has not started: there is no queue")
        return self.state.batcher

    # -- validate ------------------------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.state.draining:
            raise ApiError(ErrorType.UNHEALTHY, "the service is shutting down", {"Retry-After": "1"})
        if not self.state.ready:
            reason = self.state.load_error or "model is loading and warming up"
            raise ApiError(ErrorType.UNHEALTHY, f"not ready: {reason}", {"Retry-After": "5"})

    def check_count(self, count: int, param: str, openai: bool = False) -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            # LangChain's OpenAIEmbeddings sends up to chunk_size=1000 inputs per request by default
            hint = f" (LangChain: OpenAIEmbeddings(chunk_size={limit}))" if openai else ""
            raise ApiError(
                ErrorType.TOO_LARGE,
                f"{count} inputs is more than the limit of {limit} per request; send at most {limit}{hint}",
                param=param,
            )

    def checked_texts(self, inputs: str | list[str], allow_empty: bool = False, openai: bool = False) -> list[str]:
        """The request's texts, within the count limit, each valid Unicode and (unless allowed) not empty."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ApiError(ErrorType.EMPTY, "input is empty: send at least one text", param="input")
        self.check_count(len(texts), "input", openai)
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

    def prompt(self, prompt_name: str | None = None) -> str:
        return prompt_for(self.embedder, prompt_name, self.default_prompt_name)

    # -- tokenize ------------------------------------------------------------------------------------------------
    async def tokenize(
        self,
        request: Request,
        inputs: str | list[str],
        truncate: bool,
        direction: str = "right",
        prompt: str = "",
        openai: bool = False,
    ) -> list[list[int]]:
        """Checks the request's limits and tokenizes it once; returns truncated token ids per text.

        openai: an empty (or invisible) text is embedded as the empty text, as OpenAI-compatible clients
        expect (LangChain sends input="" for an empty document and uses the vector it gets back).
        """
        texts = self.checked_texts(inputs, allow_empty=openai, openai=openai)
        started = time.perf_counter()
        ids = await _in_thread(self.embedder.tokenize, [prompt + text for text in texts])
        trace_of(request).child("tokenize", started, time.perf_counter(), **{"embedding.texts": len(ids)})
        if not openai:
            bare = len(self.embedder.tokenize([prompt])[0]) if prompt else self.bare_tokens
            for i, row in enumerate(ids):
                if len(row) <= bare:
                    raise ApiError(
                        ErrorType.EMPTY,
                        f"input {i} has nothing to embed: only invisible or control characters",
                        param="input",
                    )
        return self.fitted(ids, truncate, direction)

    def fitted(self, ids: list[list[int]], truncate: bool, direction: str = "right") -> list[list[int]]:
        """Rows over the model's limit: cut from the end (right) or the start (left), or 413 without truncate."""
        limit = self.embedder.max_tokens
        for i, row in enumerate(ids):
            if len(row) > limit and not truncate:
                raise ApiError(
                    ErrorType.TOO_LARGE,
                    f"input {i} has {len(row)} tokens, more than the limit of {limit}; send truncate=true to cut it",
                    param="inputs",
                )
        cut = self.embedder.truncate_left if direction == "left" else self.embedder.truncate
        return [cut(row) for row in ids]

    async def token_id_input(self, request: Request, rows: list[list[int]]) -> list[list[int]]:
        """Token-id input: what the ids mean is the TOKEN_IDS setting (services/common/token_ids.py)."""
        self.check_count(len(rows), "input", openai=True)
        if self.token_ids.unavailable:
            raise ApiError(ErrorType.INVALID_PARAMETER, self.token_ids.refusal(), param="input")
        if self.settings.token_ids == "model":
            check_model_ids(self.embedder, rows)
            empty = self.embedder.tokenize([""])[0]
            return self.fitted([row or empty for row in rows], truncate=True)
        texts = []
        for i, row in enumerate(rows):
            try:
                texts.append(self.token_ids.decode(row))
            except ValueError as exc:
                raise ApiError(ErrorType.INVALID_PARAMETER, f"input {i}: {exc}", param="input") from None
            except TokenIdsUnavailable as exc:
                raise ApiError(ErrorType.INVALID_PARAMETER, str(exc), param="input") from None
        return await self.tokenize(request, texts, truncate=True, prompt=self.prompt(), openai=True)

    # -- admit and batch -----------------------------------------------------------------------------------------
    def admit(self, token_ids: list[list[int]]) -> Job:
        """Queue the rows, or 429 where the queue's estimated wait would pass the budget."""
        try:
            return self.batcher.submit(token_ids)
        except Overloaded as exc:
            raise overloaded(exc) from None

    async def batch(self, request: Request, token_ids: list[list[int]]) -> BatchResult:
        """Admit the rows and wait for their vectors (raw: not normalized). A cancelled wait (the client left,
        see with_cancellation) drops the rows still queued."""
        batcher = self.batcher
        job = self.admit(token_ids)
        try:
            # Shielded: a cancelled await would cancel the job's future itself, before cancel() could count and
            # unqueue its texts.
            result = await asyncio.shield(batcher.wait(job))
        except asyncio.CancelledError:
            batcher.cancel(job)
            raise
        except Overloaded as exc:  # shed from the queue past its deadline: an overload answer, not a server fault
            raise overloaded(exc) from None
        except ShuttingDown as exc:
            raise ApiError(ErrorType.UNHEALTHY, f"not run: {exc}", {"Retry-After": "1"}) from None
        except Exception as exc:  # the model's failure, never the client's: a 500 without details
            raise ApiError(ErrorType.BACKEND, f"model call failed: {type(exc).__name__}") from None
        self._trace_batch(request, token_ids, result)
        return result

    def _trace_batch(self, request: Request, token_ids: list[list[int]], result: BatchResult) -> None:
        trace = trace_of(request)
        if not trace.enabled:
            return
        trace.child(
            "queue",
            result.enqueued_at,
            result.started_at,
            **{"embedding.estimated_queue_ms": round(result.estimated_queue_ms, 2)},
        )
        trace.child(
            "inference",
            result.started_at,
            result.finished_at,
            **{"embedding.variant": self.embedder.variant, "embedding.batch_size": result.batch_texts},
        )
        trace.set("embedding.batch_size", result.batch_texts)
        trace.set("embedding.texts", len(token_ids))
        trace.set("embedding.tokens", sum(map(len, token_ids)))

    # -- respond: one method per route kind ----------------------------------------------------------------------
    async def embed(self, request: Request, body: EmbedRequest) -> Response:
        started = time.perf_counter()
        self.require_ready()
        check_dimensions(body.dimensions, self.embedder.dimension)
        prompt = self.prompt(body.prompt_name)
        truncate = self.settings.auto_truncate if body.truncate is None else body.truncate
        token_ids = await self.tokenize(request, body.inputs, truncate, body.truncation_direction, prompt)
        result = await self.batch(request, token_ids)
        vectors = finish_vectors(result.embeddings, body.dimensions, body.normalize)
        return JSONResponse(vectors.tolist(), headers=timing_headers(started, result))

    async def openai_embeddings(self, request: Request, body: OpenAIEmbeddingRequest) -> Response:
        started = time.perf_counter()
        self.require_ready()
        check_dimensions(body.dimensions, self.embedder.dimension)
        if body.model is not None and not is_valid_unicode(body.model):
            # The answer echoes the model name: a lone surrogate could not be written out as JSON.
            raise ApiError(
                ErrorType.INVALID_TEXT, "model is not valid Unicode (it holds a lone surrogate)", param="model"
            )
        if is_token_ids(body.input):
            token_ids = await self.token_id_input(request, token_id_rows(cast(list, body.input)))
        else:
            texts = cast(str | list[str], body.input)
            token_ids = await self.tokenize(request, texts, truncate=True, prompt=self.prompt(), openai=True)
        result = await self.batch(request, token_ids)
        vectors = finish_vectors(result.embeddings, body.dimensions, self.embedder.normalize_default)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        tokens = sum(map(len, token_ids))
        payload = OpenAIEmbeddingResponse(
            data=[OpenAIEmbedding(index=i, embedding=e) for i, e in enumerate(encoded)],
            model=body.model or self.model_name,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return JSONResponse(payload.model_dump(), headers=timing_headers(started, result))

    async def tokens(self, request: Request, body: TokenizeRequest) -> Response:
        self.require_ready()
        prompt = self.prompt(body.prompt_name)
        texts = [prompt + text for text in self.checked_texts(body.inputs, allow_empty=True)]
        started = time.perf_counter()
        rows = await _in_thread(self.embedder.tokens, texts, body.add_special_tokens)
        trace_of(request).child("tokenize", started, time.perf_counter(), **{"embedding.texts": len(texts)})
        return JSONResponse([[asdict(token) for token in row] for row in rows])

    async def decode(self, body: DecodeRequest) -> Response:
        self.require_ready()
        rows = token_id_rows(body.ids) if body.ids else [[]]
        self.check_count(len(rows), "ids")
        try:
            return JSONResponse(await asyncio.to_thread(self.embedder.decode, rows, body.skip_special_tokens))
        except (ValueError, NotImplementedError) as exc:
            raise ApiError(ErrorType.INVALID_PARAMETER, str(exc), param="ids") from None

    def served_model(self, model_id: str | None = None) -> OpenAIModel:
        if model_id is not None and model_id != self.model_name:
            raise ApiError(
                ErrorType.NOT_FOUND,
                f"the model {model_id!r} does not exist here; this service serves {self.model_name!r}",
                param="model",
            )
        return OpenAIModel(id=self.model_name, created=self.started_at)

    def info(self, tracing_enabled: bool, versions: dict | None) -> dict:
        """What /info answers: the model and variant (and why it was chosen), limits, admission, inputs."""
        settings, state, batcher = self.settings, self.state, self.state.batcher
        details = {
            **self.embedder.info(),
            "model": self.model_name,
            "ready": state.ready,
            "draining": state.draining,
            "batching": {
                name: getattr(settings, name)
                for name in (
                    "max_client_batch_size",
                    "max_batch_size",
                    "max_batch_tokens",
                    "max_wait_ms",
                    "max_queue_wait_ms",
                    "max_concurrent_requests",
                    "max_payload_bytes",
                )
            },
            "admission": {
                "estimated_queue_wait_s": round(batcher.estimated_wait_s(), 3) if batcher else None,
                "measured_padded_tokens_per_s": round(batcher.throughput.padded_tokens_per_s, 1) if batcher else None,
                "requests_in_flight": state.in_flight,
            },
            "inputs": {
                "auto_truncate": settings.auto_truncate,
                "token_ids": (
                    settings.token_ids if not self.token_ids.unavailable else f"refused ({self.token_ids.unavailable})"
                ),
                "prompts": sorted(self.embedder.prompts),
                "default_prompt_name": self.default_prompt_name,
            },
            "memory": {
                **self.embedder.memory_info(),
                "rss_mb": resident_mb(),
                "rss_after_warmup_mb": state.rss_after_warmup_mb,
            },
            "tracing": tracing_enabled,
        }
        if versions is not None:
            details["versions"] = versions
        return details


def overloaded(exc: Overloaded) -> ApiError:
    """The one 429 of the request path: the queue would not answer within the budget (or shed the request)."""
    return ApiError(ErrorType.OVERLOADED, f"overloaded: {exc}; retry later", exc.headers)
