"""HTTP service: a FastAPI app around a :class:`~textclf.deploy.predict.Predictor`, with server-side micro-batching.

``textclf serve --model DIR [--backend onnx] [--host 127.0.0.1] [--port 8000]``, or in Python::

    from textclf.deploy.serve import ServeConfig, create_app
    app = create_app(Predictor.from_pretrained("export/int8"), ServeConfig(max_batch_size=64))

Endpoints:

* ``POST /classify`` -- ``{"text": "..."}`` answers one prediction; ``{"texts": ["...", ...]}`` answers
  ``{"predictions": [...]}``; optional ``"top_k"``.
* ``GET /health`` -- ``{"status": "ok"}`` (503 while shutting down). Never needs the API key.
* ``GET /metadata`` -- labels, model, backend, versions and the service's limits.
* ``GET /stats`` -- requests, texts and model calls so far, with the batch-size histogram.
* ``GET /docs``, ``GET /openapi.json`` -- the OpenAPI description.

Micro-batching: each request's texts go into a queue. One worker takes the oldest request, waits up to
``max_wait_ms`` (counted from that request's arrival) for more until ``max_batch_size`` texts are gathered, runs
them as one model call in an inference thread (the event loop keeps accepting requests meanwhile) and answers
every request with its own rows. While a batch runs, new requests pile up and form the next one, so under load
batches fill up by themselves; an idle server answers a lone request after at most ``max_wait_ms``.

Bad requests get a JSON ``{"detail": "...", "errors": [...]}`` answer, never a 500: 422 for malformed JSON,
wrong types, missing or empty texts; 413 for a body over ``max_body_bytes``, a text over ``max_text_chars`` or
more than ``max_texts_per_request`` texts; 401 for a missing or wrong ``X-API-Key`` when a key is configured.

Fail closed: a key that was asked for but is empty, unset or can never match refuses to start (see
:func:`api_key_from_env`), and so do non-finite or out-of-range settings. A client has ``read_timeout`` seconds to
send a request's headers and as long again for its body, else it gets 408 and its connection is closed; more than
``max_connections`` open connections get 503. So stalled clients hold a connection for seconds, not forever. The
body's deadline is in the app; the headers' is in the uvicorn protocol that :func:`uvicorn_config` sets (under
another ASGI server, use its own header timeout).
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the request models defined in
# create_app (string annotations of local classes cannot be resolved).
import asyncio
import collections
import contextlib
import hmac
import logging
import math
import numbers
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Annotated

from .predict import Prediction, Predictor

logger = logging.getLogger("textclf.deploy.serve")

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "TEXTCLF_API_KEY"
# Bytes of one request's headers (llhttp, uvicorn's default parser, sets no bound of its own); beyond it, 431.
MAX_HEADER_BYTES = 64 * 1024
# Beyond a minute the client (or the proxy in front) gives up before a lone request is answered.
MAX_WAIT_MS_LIMIT = 60_000


def _api_key_problem(key: str) -> str | None:
    """Why no request could ever present ``key`` in the X-API-Key header, or None when one can."""
    if not key.strip():
        return "is empty"
    if key != key.strip():
        # HTTP strips whitespace around header values, so the key that arrives would lack it and never match
        return ("has whitespace at its start or end, which HTTP strips from header values, so no request could "
                "match it; remove the whitespace")
    if not (key.isascii() and key.isprintable()):
        # HTTP headers carry ASCII: a key with other characters could never be sent
        return ("holds characters other than printable ASCII, which no HTTP header can carry; use letters, digits "
                "and punctuation")
    return None


def api_key_from_env(var: str | None = None) -> str | None:
    """The API key ``textclf serve`` requires, read from an environment variable; refuses a key that was asked for
    but would leave the service open or locked (fail closed).

    Args:
        var: the variable the user named (``--api-key-env VAR``), or None for the default ``TEXTCLF_API_KEY``.

    Returns:
        the key, or None (serve without a key) only when ``var`` is None and ``TEXTCLF_API_KEY`` is unset.

    Raises:
        ConfigError: the named variable is unset; the variable is set but empty (a typo such as
            ``TEXTCLF_API_KEY=$UNSET_VAR`` must not open the service); the key has whitespace around it or
            characters no HTTP header can carry.
    """
    from ..errors import ConfigError

    name = API_KEY_ENV if var is None else var
    key = os.environ.get(name) if name else None
    if key is None:
        if var is None:
            return None
        raise ConfigError(f"--api-key-env {name}: the environment variable {name!r} is not set, so the service "
                          f"would answer every request without a key; set it to the key (export {name}=...), or "
                          "leave out --api-key-env to serve without a key")
    if not key.strip():
        fix = (f"set it to the key, or unset it (unset {name}) to serve without a key" if var is None
               else f"set it to the key, or leave out --api-key-env (and {API_KEY_ENV}) to serve without a key")
        raise ConfigError(f"{name}: the environment variable holding the API key is set but empty, which would "
                          f"serve every request without a key; {fix}")
    problem = _api_key_problem(key)
    if problem is not None:
        raise ConfigError(f"{name}: the API key in this environment variable {problem}")
    return key


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ServeConfig:
    """Service settings (all have ``textclf serve`` flags of the same name)."""

    # Texts per model call; a single request larger than this still runs as one call.
    max_batch_size: int = 64
    # How long the oldest waiting request may wait for others to join its batch.
    max_wait_ms: float = 5.0
    # False: every request is its own model call (for comparison; same queue and inference thread).
    batching: bool = True
    max_texts_per_request: int = 64
    max_text_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    # When set, /classify, /metadata and /stats need the header X-API-Key with this value.
    api_key: str | None = None
    # Seconds a client has to send a request's headers (from connecting, or from the previous answer on a
    # kept-alive connection), and as long again for its body; then 408 and the connection is closed. A stalled
    # client would otherwise hold its connection for as long as it likes.
    read_timeout: float = 20.0
    # Open connections (idle kept-alive and stalled ones included); a request beyond it gets 503 at once.
    max_connections: int = 512

    def __post_init__(self):
        from ..errors import ConfigError

        for name in ("max_batch_size", "max_texts_per_request", "max_text_chars", "max_body_bytes",
                     "max_connections"):
            value = getattr(self, name)
            # bool is an int to Python; nan and inf compare false with everything and would pass a plain `< 1`
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve.{name}: must be a whole number of at least 1, got {value!r}")
        if not _is_number(self.max_wait_ms) or not 0 <= self.max_wait_ms <= MAX_WAIT_MS_LIMIT:
            # inf or nan: a lone request would wait for company forever and never be answered
            raise ConfigError(f"serve.max_wait_ms: must be a number from 0 to {MAX_WAIT_MS_LIMIT} (a minute), got "
                              f"{self.max_wait_ms!r}")
        if not _is_number(self.read_timeout) or self.read_timeout <= 0:
            raise ConfigError(f"serve.read_timeout: must be a finite number of seconds above 0, got "
                              f"{self.read_timeout!r}")
        if not isinstance(self.batching, bool):
            raise ConfigError(f"serve.batching: must be True or False, got {self.batching!r}")
        if self.api_key is not None:
            problem = "is not a string" if not isinstance(self.api_key, str) else _api_key_problem(self.api_key)
            if problem is not None:
                # None means no key; an empty or unmatchable key would lock every client out (or, once read from
                # an environment variable, open the service), so it is refused rather than guessed at.
                raise ConfigError(f"serve.api_key: the API key (TEXTCLF_API_KEY) {problem}"
                                  + ("; pass None to serve without a key" if problem == "is empty" else ""))

    def public(self) -> dict:
        """The settings without the key itself."""
        settings = asdict(self)
        settings["api_key"] = self.api_key is not None
        return settings


# ==================================================================================================== batching


@dataclass
class _Job:
    texts: list[str]
    top_k: int
    future: asyncio.Future
    arrived: float


class BatchStats:
    """Counters for ``/stats`` (and the tests that check batching really batches)."""

    def __init__(self):
        self.requests = 0
        self.texts = 0
        self.batches = 0
        self.max_batch = 0
        self.histogram: collections.Counter[int] = collections.Counter()  # texts per model call -> count
        self.busy_seconds = 0.0

    def record(self, num_texts: int, num_requests: int, seconds: float) -> None:
        self.requests += num_requests
        self.texts += num_texts
        self.batches += 1
        self.max_batch = max(self.max_batch, num_texts)
        self.histogram[num_texts] += 1
        self.busy_seconds += seconds

    def to_dict(self) -> dict:
        return {"requests": self.requests, "texts": self.texts, "batches": self.batches,
                "mean_batch_size": self.texts / self.batches if self.batches else 0.0,
                "max_batch_size": self.max_batch,
                "batch_size_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
                "inference_seconds": round(self.busy_seconds, 3)}


class MicroBatcher:
    """Gathers concurrent requests into model calls run one at a time in a dedicated inference thread.

    Args:
        predictor: the model.
        max_batch_size: texts per model call (a larger single request still runs whole).
        max_wait_ms: how long the oldest request waits for company.
        enabled: False runs every request as its own call (batching off).
    """

    def __init__(self, predictor: Predictor, max_batch_size: int = 64, max_wait_ms: float = 5.0,
                 enabled: bool = True):
        self.predictor = predictor
        self.max_batch_size = max_batch_size if enabled else 1
        self.max_wait = max_wait_ms / 1000 if enabled else 0.0
        self.stats = BatchStats()
        self.closing = False
        self.submitted = 0  # requests accepted so far (answered or not)
        self.answered = 0  # requests answered (with predictions or an error) or given up by their client
        self._pending: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: model calls never overlap, so each gets all the intra-op threads of the backend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textclf-inference")

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="textclf-batcher")

    async def submit(self, texts: list[str], top_k: int = 1) -> list[Prediction]:
        """Queue ``texts`` and wait for their predictions."""
        if self.closing or self._worker is None:
            raise RuntimeError("the service is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(texts, top_k, loop.create_future(), loop.time())
        self._pending.append(job)
        self._queued_texts += len(texts)
        self.submitted += 1
        job.future.add_done_callback(self._answered)
        self._wakeup.set()
        return await job.future

    def _answered(self, future: asyncio.Future) -> None:
        self.answered += 1

    def idle(self) -> bool:
        """No accepted request is waiting for its answer."""
        return self.answered >= self.submitted

    async def close(self) -> None:
        """Answer everything already queued, then stop the worker and the inference thread."""
        self.closing = True
        if self._worker is not None:
            self._wakeup.set()
            await self._worker
        self._executor.shutdown(wait=True)

    def queue_depth(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self.closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for company until the batch is full or the oldest request has waited max_wait.
            while self._queued_texts < self.max_batch_size and not self.closing:
                remaining = self._pending[0].arrived + self.max_wait - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            jobs = self._take_batch()
            if jobs:
                await self._process(jobs, loop)

    def _take_batch(self) -> list[_Job]:
        jobs, size = [], 0
        while self._pending:
            job = self._pending[0]
            if jobs and size + len(job.texts) > self.max_batch_size:
                break
            self._pending.popleft()
            self._queued_texts -= len(job.texts)
            if job.future.done():  # the client went away while waiting
                continue
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _process(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        texts = [text for job in jobs for text in job.texts]
        top_k = max(job.top_k for job in jobs)
        started = time.perf_counter()
        try:
            predictions = await loop.run_in_executor(self._executor, self._predict, texts, top_k)
        except Exception as exc:  # answer every waiting request with the error instead of hanging them
            logger.exception("inference failed for a batch of %d texts", len(texts))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.stats.record(len(texts), len(jobs), time.perf_counter() - started)
        start = 0
        for job in jobs:
            rows = predictions[start : start + len(job.texts)]
            start += len(job.texts)
            if not job.future.done():
                job.future.set_result([_trim(p, job.top_k) for p in rows])

    def _predict(self, texts: list[str], top_k: int) -> list[Prediction]:
        return self.predictor.predict(texts, top_k=top_k)


def _trim(prediction: Prediction, k: int) -> Prediction:
    """A request's own ``top_k`` out of a micro-batch predicted with the largest one; a multi-label ranking keeps
    every chosen label (it always starts with the label set)."""
    keep = max(k, len(prediction.label) if isinstance(prediction.label, list) else 1)
    if len(prediction.top_k) <= keep:
        return prediction
    return Prediction(prediction.label, prediction.score, prediction.top_k[:keep], prediction.truncated)


# ==================================================================================================== app


class _BodyRules:
    """ASGI middleware for request bodies: 413 for a body over ``max_bytes`` (declared length, or bytes actually
    sent: chunked bodies declare none), and 408 with the connection closed for one that has not arrived within
    ``seconds`` of its headers (uvicorn has no body timeout: a half-sent body would hold its connection and task for
    ever). Both are raised as ``HTTPException``, so the app's error handler answers in its usual JSON."""

    def __init__(self, app, max_bytes: int, seconds: float):
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_json(send, 413, _error_body(
                f"request body of {declared.decode(errors='replace')} bytes is over the limit of "
                f"{self.max_bytes} bytes (max_body_bytes)", "body_too_large"))
        from fastapi import HTTPException

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds  # the app is called as soon as the headers are in
        received, body_done = 0, False

        async def checked_receive():
            nonlocal received, body_done
            if body_done:  # later calls wait for the client to disconnect, which is no reading and has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                # "Connection: close" makes uvicorn close the connection instead of waiting for the rest.
                raise HTTPException(408, f"the request body did not arrive within {self.seconds:g} seconds "
                                         "(read_timeout); send the whole body at once",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body is over the limit of {self.max_bytes} bytes "
                                             "(max_body_bytes)")
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return await self.app(scope, checked_receive, send)


def _http_protocol(read_timeout: float, max_header_bytes: int = MAX_HEADER_BYTES):
    """uvicorn's HTTP protocol class (httptools, else h11) with a deadline on each request's headers.

    uvicorn bounds only the idle time between requests on a kept-alive connection (``timeout_keep_alive``): a
    connection that sends nothing, or half a header, is held for ever and counts against ``limit_concurrency``.
    Here a new connection has ``read_timeout`` seconds until its first request's headers are complete (then
    :class:`_BodyRules` takes over), and so has a kept-alive one from each answer on, else 408 (or, when not a
    byte came, no answer) and the connection is closed; headers over ``max_header_bytes`` get 431. "Headers
    complete" is uvicorn's own mark for both parsers: the request's ``cycle`` exists and has not answered yet.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderDeadlineProtocol(AutoHTTPProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0  # bytes of the next request's unfinished headers

        def _between_requests(self) -> bool:
            """No request of this connection is with the app: what arrives now is the next request's head (or the
            rest of a body the app answered without reading), which the app's deadline does not cover."""
            return self.cycle is None or self.cycle.response_complete

        def _in_head(self) -> bool:
            return self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)

        def _start_header_timer(self) -> None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(read_timeout, self._header_timeout)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._start_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head may already be half here (pipelined), so its clock starts now; an idle
            # connection is closed sooner by uvicorn's timeout_keep_alive.
            if self._header_timer is None and self._between_requests() and not self.transport.is_closing():
                self._start_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.get_protocol() is not self:  # upgraded to a WebSocket: no longer HTTP requests
                self._stop_header_timer()
            elif not self._between_requests():
                self._stop_header_timer()  # headers complete: the app's _BodyRules take over
            elif self._in_head():  # the chunk went wholly into headers that are still unfinished
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self._refuse(431, f"request headers are over the limit of {max_header_bytes} bytes")

        def connection_lost(self, exc):
            self._stop_header_timer()
            super().connection_lost(exc)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self._between_requests() or self.transport.is_closing():
                return
            if self._in_head() and self._header_bytes:
                self._refuse(408, f"request headers did not arrive within {read_timeout:g} seconds (read_timeout)")
            else:  # nothing sent (say, a browser's pre-opened connection) or the rest of an answered body
                self.transport.close()

        def _refuse(self, status: int, message: str) -> None:
            import http

            self._stop_header_timer()
            if self.transport.is_closing():
                return
            body = message.encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, http.HTTPStatus(status).phrase.encode(), len(body), body))
            self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app, config: ServeConfig | None = None, **options):
    """The ``uvicorn.Config`` that serves ``app`` with ``config``'s connection limits: ``read_timeout`` for each
    request's headers (:func:`_http_protocol`; the body's is in the app) and ``max_connections``.

    Args:
        app: from :func:`create_app`.
        config: default: the one the app was created with.
        options: more ``uvicorn.Config`` arguments (host, port, log_level, timeout_graceful_shutdown, ...).
    """
    import uvicorn

    config = config or app.state.config
    # uvicorn answers 503 once the open connections, the asking one included, reach limit_concurrency: +1 lets
    # max_connections connections be served.
    return uvicorn.Config(app, http=_http_protocol(config.read_timeout), limit_concurrency=config.max_connections + 1,
                          **options)


async def _send_json(send, status: int, payload: dict) -> None:
    import json

    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error_body(message: str, kind: str, field: str | None = None) -> dict:
    return {"detail": message, "errors": [{"field": field, "message": message, "type": kind}]}


def _field_name(loc) -> str:
    """``("body", "texts", 3)`` -> ``"texts[3]"``."""
    parts = [p for p in loc if p != "body"]
    if loc and loc[0] == "body" and all(isinstance(p, int) for p in parts):
        return "body"  # a JSON syntax error's character position
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _describe_error(error: dict, config: ServeConfig) -> tuple[int, str]:
    """(status, message) for one pydantic error: limits are 413, everything else 422."""
    kind, field = error.get("type", ""), _field_name(error.get("loc", ()))
    if kind == "json_invalid":
        loc = error.get("loc", ())
        where = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        return 422, f"request body is not valid JSON{where}: {error.get('ctx', {}).get('error', error.get('msg'))}"
    if kind == "string_too_long":
        return 413, f"{field} is longer than the limit of {config.max_text_chars} characters (max_text_chars)"
    if kind == "too_long" and field == "texts":
        return 413, (f"too many texts in one request; the limit is {config.max_texts_per_request} "
                     "(max_texts_per_request)")
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return 422, f"{field} is empty; send text with at least one non-whitespace character"
    if kind == "too_short" and field == "texts":
        return 422, "texts is an empty list; send at least one text"
    if kind == "missing" and field == "body":
        return 422, 'request body is missing; send JSON such as {"text": "..."} or {"texts": ["...", "..."]}'
    if kind in ("model_attributes_type", "dict_type", "model_type") and field == "body":
        return 422, ('request body must be a JSON object such as {"text": "..."} sent with '
                     "Content-Type: application/json")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return 422, f"{field}: {message}" if field != "body" else message


def create_app(predictor: Predictor, config: ServeConfig | None = None):
    """Build the FastAPI app (the model is warmed up and the batcher started at app start-up).

    Args:
        predictor: the loaded model.
        config: limits, batching and API key (default :class:`ServeConfig`).
    """
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__

    config = config or ServeConfig()
    num_labels = len(predictor.label_map)
    batcher = MicroBatcher(predictor, config.max_batch_size, config.max_wait_ms, config.batching)
    # JSON has one number type: 3.0 is an integer to JSON Schema, "3" and true are not.
    TopK = Annotated[int, Strict(), BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer()
                                                    else v)]
    Text = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=config.max_text_chars,
                                            pattern=r"\S")]

    def request_schema(schema: dict) -> None:
        # "Exactly one of text / texts", said in the schema too, so that clients and fuzzers see the rule.
        for name in ("text", "texts"):
            schema["properties"][name].pop("default", None)
        schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
        schema["examples"] = [{"text": "How far is it from Denver to Aspen?"},
                              {"texts": ["What is the capital of China?", "Who wrote Hamlet?"], "top_k": 2}]

    class ClassifyRequest(BaseModel):
        """Either ``text`` (one) or ``texts`` (a list), not both."""

        model_config = ConfigDict(extra="forbid", json_schema_extra=request_schema)
        # Absent means None, but an explicit null is a type error: the fields are not nullable.
        text: Text = Field(None, description="one text to classify")
        texts: list[Text] = Field(None, min_length=1, max_length=config.max_texts_per_request,
                                  description="several texts to classify")
        top_k: TopK = Field(1, ge=1, le=num_labels, description="also list the k most likely labels")

        @model_validator(mode="after")
        def _one_of(self):
            if (self.text is None) == (self.texts is None):
                raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
            return self

    class LabelScore(BaseModel):
        label: str
        score: float

    class PredictionOut(BaseModel):
        label: str | list[str] = Field(description="the predicted label (labels, for a multi-label model)")
        score: float
        top_k: list[LabelScore]
        truncated: bool = Field(description="the text was longer than the model's max_length tokens")

    class PredictionsOut(BaseModel):
        predictions: list[PredictionOut]

    class ErrorItem(BaseModel):
        field: str | None
        message: str
        type: str

    class ErrorOut(BaseModel):
        detail: str
        errors: list[ErrorItem] = []

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    async def check_key(key: str | None = Depends(key_header)) -> None:
        if config.api_key is not None and not (key and hmac.compare_digest(key.encode(), config.api_key.encode())):
            raise HTTPException(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": "ApiKey"})

    protected = [Depends(check_key)] if config.api_key is not None else []
    errors = {413: {"model": ErrorOut, "description": "body, text or text count over the limit"},
              422: {"model": ErrorOut, "description": "malformed JSON, wrong types, missing or empty text"}}
    if config.api_key is not None:
        errors[401] = {"model": ErrorOut, "description": f"missing or wrong {API_KEY_HEADER} header"}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, predictor.predict, ["warm up"])
        await batcher.start()
        logger.info("textclf service ready: %s", predictor.describe().get("model"))
        yield
        # uvicorn has stopped accepting connections and let in-flight requests finish; answer what is queued.
        await batcher.close()

    app = FastAPI(title="textclf", version=__version__, lifespan=lifespan,
                  description='Text classification: POST /classify with {"text": "..."} or {"texts": ["...", ...]}.')
    app.state.batcher = batcher
    app.state.predictor = predictor
    app.state.config = config
    app.add_middleware(_BodyRules, max_bytes=config.max_body_bytes, seconds=config.read_timeout)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        described = [(*_describe_error(e, config), _field_name(e.get("loc", ())), e.get("type", ""))
                     for e in exc.errors()]
        status = 413 if any(item[0] == 413 for item in described) else 422
        first = next(item for item in described if item[0] == status)
        return JSONResponse(status_code=status, content={
            "detail": first[1],
            "errors": [{"field": field, "message": message, "type": kind} for _, message, field, kind in described]})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and request.url.path == "/classify":
            # FastAPI's answer to a body it cannot decode at all (e.g. not UTF-8): malformed JSON, so 422.
            return JSONResponse(status_code=422, content=_error_body(
                "request body is not valid JSON (it must be UTF-8 encoded)", "json_invalid", "body"))
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content=_error_body(str(exc.detail), f"http_{exc.status_code}"))

    @app.post("/classify", response_model=PredictionOut | PredictionsOut, dependencies=protected,
              responses=errors, summary="Classify one text or a list of texts")
    async def classify(request: ClassifyRequest):
        texts = [request.text] if request.text is not None else request.texts
        try:
            predictions = await batcher.submit(texts, request.top_k)
        except RuntimeError as exc:
            if batcher.closing:
                raise HTTPException(503, "the service is shutting down; retry on another instance") from exc
            raise
        if request.text is not None:
            return predictions[0].to_dict()
        return {"predictions": [p.to_dict() for p in predictions]}

    @app.get("/health", summary="Liveness: 200 while serving, 503 while shutting down")
    async def health():
        if batcher.closing:
            return JSONResponse(status_code=503, content={"status": "shutting down"})
        return {"status": "ok"}

    @app.get("/metadata", dependencies=protected, summary="Labels, model, backend, versions and limits",
             responses={k: v for k, v in errors.items() if k == 401})
    async def metadata():
        return {"version": __version__, **predictor.describe(), "service": config.public()}

    @app.get("/stats", dependencies=protected, summary="Requests, texts and model calls; batch-size histogram",
             responses={k: v for k, v in errors.items() if k == 401})
    async def stats():
        return {**batcher.stats.to_dict(), "queue_depth": batcher.queue_depth()}

    return app


def draining_server(app, config, drain_seconds: float = 1.0):
    """A ``uvicorn.Server`` that drains before it stops.

    uvicorn closes its listening socket as soon as SIGTERM/SIGINT arrive, so a request sent a moment later (a load
    balancer that has not yet seen the pod go) gets a connection reset. This server first keeps listening and
    answers new requests with 503 (``/health`` too) for at least ``drain_seconds`` and until every accepted request
    has its answer (at most ``config.timeout_graceful_shutdown``), then stops as uvicorn does. A second signal stops
    at once.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None
        _draining = False

        async def serve(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            if self._draining or self._loop is None:
                return super().handle_exit(sig, frame)
            self._draining = True
            app.state.batcher.closing = True  # from now on: 503 for new requests, queued ones are still answered
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain(sig, frame)))

        async def _drain(self, sig, frame):
            loop = asyncio.get_running_loop()
            start, limit = loop.time(), self.config.timeout_graceful_shutdown or 30.0
            while loop.time() - start < limit and (loop.time() - start < drain_seconds
                                                   or not app.state.batcher.idle()):
                await asyncio.sleep(0.02)
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info", access_log: bool = True, timeout_graceful_shutdown: float = 30.0,
          drain_seconds: float = 1.0) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM; it answers 503 to new requests while in-flight ones are
    answered (see :func:`draining_server`), then exits."""
    app = create_app(predictor, config)
    server = draining_server(app, uvicorn_config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                                 timeout_graceful_shutdown=timeout_graceful_shutdown), drain_seconds)
    server.run()
