"""Hostile input, shutdown and slow clients against a real uvicorn process (the fake model: no weights, fast lane)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from loadtest.processes import free_port, is_healthy

from .conftest import REPO


@contextlib.contextmanager
def fake_service(*args: str, delay_s: float = 0.0, env: dict | None = None):
    """Yield (base_url, process) of `python -m tests.fake_service`; the test may stop it itself."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_service", "--port", str(port), *args],
        cwd=REPO,
        env={**os.environ, "FAKE_MODEL_DELAY_S": str(delay_s), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not is_healthy(base):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "fake service did not start"
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.fake_service", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--port", "abc"], {}, "port (--port)"),
        (["--port", "70000"], {}, "port (--port)"),
        (["--threads", "0"], {}, "threads (--threads)"),
        ([], {"FAKE_API_MAX_WAIT_MS": "soon"}, "FAKE_API_MAX_WAIT_MS"),
        ([], {"FAKE_API_LOG_LEVEL": "loud"}, "FAKE_API_LOG_LEVEL"),
        (["--max-wait-ms", "50", "--max-queue-wait-ms", "10"], {}, "max_queue_wait_ms"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args, env, names):
    result = _start(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_2_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _start("--port", str(taken.getsockname()[1]))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot serve on 127.0.0.1:")


async def _post_many(base: str, count: int, body: dict, headers: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        return await asyncio.gather(
            *(http.post("/embed", json=body, headers=headers) for _ in range(count)), return_exceptions=True
        )


@pytest.mark.slow  # a real process and seconds of model delay: the slow lane keeps test-fast under a minute
def test_sigterm_drains_admitted_requests_then_exits_0():
    # 6 requests x 0.4 s per model call, one text per call: about 2.4 s of admitted work at SIGTERM.
    with fake_service("--max-batch-size", "1", "--max-wait-ms", "0", "--shutdown-grace-s", "20", delay_s=0.4) as (
        base,
        process,
    ):

        async def scenario():
            in_flight = asyncio.ensure_future(_post_many(base, 6, {"inputs": "drain me"}))
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                health = await http.get("/health")
                refused = await http.post("/embed", json={"inputs": "too late"})
            return health, refused, await in_flight

        health, refused, responses = asyncio.run(scenario())
        assert health.status_code == 503  # still listening, reporting not-ready
        assert refused.status_code == 503 and refused.json()["error_type"] == "unhealthy"
        assert [r.status_code for r in responses] == [200] * 6
        assert process.wait(timeout=20) == 0


@pytest.mark.slow  # a real process and seconds of model delay: the slow lane keeps test-fast under a minute
def test_requests_cut_off_at_the_grace_deadline_get_a_503_json():
    with fake_service("--max-batch-size", "1", "--max-wait-ms", "0", "--shutdown-grace-s", "1", delay_s=0.5) as (
        base,
        process,
    ):

        async def scenario():
            in_flight = asyncio.ensure_future(_post_many(base, 8, {"inputs": "slow"}))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            responses = await in_flight
            return responses, time.monotonic() - started

        responses, seconds = asyncio.run(scenario())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        cut = next(r for r in responses if r.status_code == 503)
        assert cut.json()["error_type"] == "unhealthy" and "grace" in cut.json()["error"]
        assert seconds < 5
        assert process.wait(timeout=10) == 0


def test_slow_clients_are_closed_within_the_header_timeout_while_the_server_keeps_serving():
    with fake_service("--header-timeout-s", "2") as (base, process):
        port = int(base.rsplit(":", 1)[1])
        sockets = []
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            sock.settimeout(5)
            sockets.append(sock)
        opened = time.monotonic()
        started = time.monotonic()
        answer = httpx.post(f"{base}/embed", json={"inputs": "still serving"}, timeout=10)
        serve_ms = (time.monotonic() - started) * 1000
        assert answer.status_code == 200
        closed = 0
        for sock in sockets:
            try:
                closed += sock.recv(1024) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 1 if isinstance(sys.exc_info()[1], ConnectionResetError) else 0
            sock.close()
        closed_within = time.monotonic() - opened
        assert closed == 1000, closed
        assert closed_within < 8
        print(
            f"1000 slow sockets: a request served in {serve_ms:.0f} ms meanwhile; all closed {closed_within:.1f} s "
            "after opening (header timeout 2 s)"
        )


def test_slow_body_gets_408_and_a_half_sent_body_logs_no_error():
    with fake_service("--body-timeout-s", "1", "--log-level", "info") as (base, process):
        port = int(base.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"inputs":'
        )
        slow.settimeout(5)
        answer = b""
        while chunk := slow.recv(4096):  # the server answers, then closes (Connection: close)
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and '"error_type":"timeout"' in answer
        slow.close()
        for _ in range(5):  # half a body, then hang up
            gone = socket.create_connection(("127.0.0.1", port))
            gone.sendall(b'POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inp')
            gone.close()
        time.sleep(0.5)
        assert httpx.post(f"{base}/embed", json={"inputs": "fine"}).status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        assert "ERROR" not in output and "Traceback" not in output, output


def test_api_keys_guard_every_route_but_health_and_the_openai_client_works():
    from openai import AuthenticationError, OpenAI

    with fake_service(env={"FAKE_API_API_KEYS": "first-key, second-key"}) as (base, _):
        assert httpx.get(f"{base}/health").status_code == 200
        for method, path in (
            ("POST", "/embed"),
            ("POST", "/v1/embeddings"),
            ("GET", "/info"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ):
            denied = httpx.request(method, f"{base}{path}", json={"inputs": "x"})
            assert denied.status_code == 401 and denied.json()["error_type"] == "unauthorized", path
            assert denied.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(f"{base}/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.post(f"{base}/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer second-key"})
        assert ok.status_code == 200
        client = OpenAI(base_url=f"{base}/v1", api_key="first-key")
        assert len(client.embeddings.create(input=["a b"], model="m").data[0].embedding) == 8
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="bad", max_retries=0).embeddings.create(input="a", model="m")


def test_info_shows_a_model_name_not_a_path_and_versions_only_when_asked():
    with fake_service() as (base, _):
        info = httpx.get(f"{base}/info").json()
        assert "versions" not in info and info["model"] == "fake-model"
    with fake_service("--show-versions", "--model-name", "my-embedder") as (base, _):
        info = httpx.get(f"{base}/info").json()
        assert "fastapi" in info["versions"] and info["model"] == "my-embedder"
        body = httpx.post(f"{base}/v1/embeddings", json={"input": "x"}).json()
        assert body["model"] == "my-embedder"


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ('{"inputs": "\\ud800"}', 400, "invalid_text"),
        ('{"inputs": ["fine", "\\udfff tail"]}', 400, "invalid_text"),
        ('{"input": "\\ud800"}', 400, "invalid_text"),
        ("{not json", 422, "validation"),
        ("[1, 2", 422, "validation"),
    ],
)
def test_hostile_bodies_get_4xx_json(body, status, error_type):
    from fastapi.testclient import TestClient

    from services.common.app import create_app
    from services.common.settings import ServiceSettings

    from .fakes import FakeEmbedder

    with TestClient(create_app(ServiceSettings(), FakeEmbedder())) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
        path = "/v1/embeddings" if '"input"' in body else "/embed"
        response = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert response.json()["error_type"] == error_type
        not_allowed = client.get("/embed")
        assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
        schema = client.get("/openapi.json").json()["paths"]["/embed"]["post"]["responses"]
        assert {"400", "401", "413", "422", "429", "503"} <= set(schema)


@pytest.mark.slow  # a real process and seconds of model delay: the slow lane keeps test-fast under a minute
def test_a_client_that_hangs_up_while_queued_has_its_texts_dropped():
    """with_cancellation: on both embedding routes, a gone client's queued texts never reach the model."""
    import threading

    with fake_service(delay_s=0.6) as (base, _):
        busy = threading.Thread(target=httpx.post, args=(f"{base}/embed",), kwargs={"json": {"inputs": "a"}})
        busy.start()
        time.sleep(0.15)  # the model is now running that one text for 0.6 s
        for path, field in (("/embed", "inputs"), ("/v1/embeddings", "input")):
            body = json.dumps({field: ["one two", "three", "four five six"]}).encode()
            gone = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            gone.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.05)
            gone.close()
        busy.join()
        metrics = httpx.get(f"{base}/metrics").text
        dropped = [
            line
            for line in metrics.splitlines()
            if line.startswith("embed_dropped_texts_total") and 'reason="disconnected"' in line
        ]
        assert dropped and float(dropped[0].split()[-1]) == 6.0, metrics
        assert httpx.post(f"{base}/embed", json={"inputs": "still serving"}).status_code == 200
