"""The web app: the page, its static files, and the JSON API under ``/api/`` that the page reads.

:func:`create_app` takes what was loaded at start (checkpoints, the runs folder, the bounds) and
returns a FastAPI app; ``gpt-study serve`` hands it to uvicorn, tests to FastAPI's TestClient.
Routes parse and bound a request, then run the work of :mod:`gpt_study.serve.views` in a worker
thread behind a :class:`~gpt_study.serve.limits.Gate`, so the event loop always stays free to
answer. Every refusal is a 4xx with ``{"error": "<one line>"}``; only a bug in gpt-study is a
500, and it says so. ``docs/serve.md`` documents each route.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from gpt_study import __version__
from gpt_study.config import SampleConfig
from gpt_study.runtime.errors import UserError
from gpt_study.serve.limits import BodyLimit, Busy, Gate, HostCheck, Limits
from gpt_study.serve.registry import Models, NotFound, Runs
from gpt_study.serve.schemas import (
    AttentionRequest,
    CompareRequest,
    GenerateRequest,
    TokensRequest,
    check_text,
)
from gpt_study.serve.stream import Generation
from gpt_study.serve.views import (
    BadRequest,
    attention_view,
    compare_view,
    read_text,
    tokens_view,
)

__all__ = ["STATIC", "create_app"]

STATIC = Path(str(files("gpt_study.serve") / "static"))
# The page loads nothing from elsewhere; the policy makes the browser hold it to that.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
log = logging.getLogger("gpt_study.serve")


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _validation_message(exc: RequestValidationError) -> str:
    """Pydantic's errors as one line: ``temperature: Input should be a valid number; ...``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if where == "body" and err.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("the body must be a JSON object (Content-Type: application/json)")
            continue
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _add_error_handlers(app: FastAPI) -> None:
    async def validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    async def http(req: Request, exc: HTTPException) -> JSONResponse:
        where = f"{req.method} {req.url.path}"
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(404, f"no route {where}: the API is listed at /api/docs")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "another method")
            return _error(405, f"{where} is not allowed: use {allowed}")
        return _error(exc.status_code, str(exc.detail))

    async def bad(_req: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, str(exc))

    async def user(_req: Request, exc: UserError) -> JSONResponse:
        # The library's messages name CLI flags (--temperature); here they are JSON fields.
        return _error(422, " ".join(str(exc).replace("--", "").split()))

    async def not_found(_req: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    async def busy(_req: Request, exc: Busy) -> JSONResponse:
        return _error(429, str(exc), **{"Retry-After": "1"})

    async def bug(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error in gpt-study ({type(exc).__name__}); please report it")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(BadRequest, bad)
    app.add_exception_handler(UserError, user)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(Busy, busy)
    app.add_exception_handler(Exception, bug)


def _sample(base: SampleConfig, body: GenerateRequest, limits: Limits) -> SampleConfig:
    """The checkpoint's sampling settings with the request's on top, within the server's bounds."""
    given = body.model_dump(exclude={"model", "prompt"}, exclude_none=True)
    if given.get("max_new_tokens", 0) > limits.max_new_tokens:
        raise BadRequest(
            f"max_new_tokens {given['max_new_tokens']} is over {limits.max_new_tokens}, the most "
            "this server writes (--max_new_tokens)"
        )
    settings = {**asdict(base), **given}
    if "max_new_tokens" not in given:
        settings["max_new_tokens"] = min(base.max_new_tokens, limits.max_new_tokens)
    return SampleConfig(**settings)


def create_app(
    models: Models,
    runs: Runs | None = None,
    limits: Limits | None = None,
    hosts: list[str] | None = None,
) -> FastAPI:
    """The app serving ``models`` and the runs under ``runs``, within ``limits``.

    ``hosts``: the only ``Host`` names answered (None: any); ``gpt-study serve`` passes
    :func:`~gpt_study.serve.limits.own_names` of the address it listens on, so that a server on
    a loopback address (127.0.0.1, 127.0.0.2, ::1, localhost) cannot be reached by a web page
    elsewhere that points its own domain name at this machine (DNS rebinding).
    """
    runs = runs or Runs(None)
    limits = limits or Limits()
    stopping = threading.Event()  # set on shutdown: running generations stop at their next token

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        stopping.set()

    app = FastAPI(title="gpt-study", version=__version__, lifespan=lifespan, docs_url="/api/docs")
    app.state.models, app.state.runs, app.state.limits = models, runs, limits
    app.state.stopping = stopping  # the server sets it on Ctrl-C, before waiting for streams
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    async def list_models() -> dict[str, Any]:
        return {"version": __version__, "models": models.describe(), "limits": asdict(limits)}

    _add_generate_route(app, models, limits, stopping)
    _add_inspection_routes(app, models, limits)

    @app.get("/api/runs")
    async def list_runs() -> dict[str, Any]:
        return {"runs": await run_in_threadpool(runs.summaries)}

    @app.get("/api/runs/{name:path}")
    async def run_detail(name: str) -> dict[str, Any]:
        return await run_in_threadpool(runs.detail, name)

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if hosts is not None:
        app.add_middleware(HostCheck, names=hosts)
    app.add_middleware(_Headers)
    return app


def _add_generate_route(
    app: FastAPI, models: Models, limits: Limits, stopping: threading.Event
) -> None:
    """``POST /api/generate``: checked here, then streamed from a worker thread."""
    gate = Gate(limits.max_concurrent, limits.max_waiting, "generations")

    @app.post("/api/generate")
    async def generate(body: GenerateRequest) -> StreamingResponse:
        served = models.get(body.model)
        if len(body.prompt) > limits.max_prompt_chars:
            raise BadRequest(
                f"prompt has {len(body.prompt)} characters; this server takes at most "
                f"{limits.max_prompt_chars} (--max_prompt_chars)",
                status=413,
            )
        sample = _sample(served.checkpoint.config.sample, body, limits)
        encoded = await run_in_threadpool(served.encode_prompt, body.prompt)
        gen = Generation(served, body.prompt, encoded, sample, gate, stopping)
        await gate.acquire()  # 429 here, before the stream starts
        try:
            gen.start()  # the thread releases the slot when it stops computing
        except BaseException:
            gate.release()
            raise
        return StreamingResponse(gen.events(), media_type="application/x-ndjson")


def _add_inspection_routes(app: FastAPI, models: Models, limits: Limits) -> None:
    """The token, attention and compare views: bounded here, computed in a worker thread
    (encoding the text included) behind their own gate."""
    gate = Gate(limits.max_concurrent, limits.max_waiting, "inspections")

    async def compute(fn: Callable, *args: Any) -> Any:
        async with gate.slot():
            return await run_in_threadpool(fn, *args)

    def tokens_of(body: TokensRequest) -> dict[str, Any]:
        served = models.get(body.model)
        return tokens_view(served, read_text(served, body.text, body.ids), body.top_k)

    def attention_of(body: AttentionRequest) -> dict[str, Any]:
        served = models.get(body.model)
        ids = read_text(served, body.text, body.ids).ids
        return attention_view(served, ids, body.position, body.top_k)

    def compare_of(body: CompareRequest) -> dict[str, Any]:
        a, b = (models.get(m) for m in body.models)
        return compare_view(a, b, body.text, body.ids)

    @app.post("/api/tokens")
    async def tokens(body: TokensRequest) -> dict[str, Any]:
        check_text(body, limits)
        return await compute(tokens_of, body)

    @app.post("/api/attention")
    async def attention(body: AttentionRequest) -> dict[str, Any]:
        check_text(body, limits)
        return await compute(attention_of, body)

    @app.post("/api/compare")
    async def compare(body: CompareRequest) -> dict[str, Any]:
        check_text(body, limits)
        return await compute(compare_of, body)


class _Headers:
    """ASGI middleware adding :data:`CSP` and ``nosniff`` to every response (streams included)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
